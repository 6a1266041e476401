// The release this tree is (CHANGELOG.md lists what each one changed).
export const VERSION = "0.1.0";
