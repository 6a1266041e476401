// Which outside programs (peers) a test can use, and what happens when one is missing.
//
// A test whose peer is missing is declared with `ignore: true` (or a step with `ignore: true`),
// never passed by returning early: deno test then counts it as ignored, and `.ci/run`, on a
// machine where every peer is installed, fails the run when anything was ignored. A check in the
// middle of a test that needs a missing peer goes through `peerPresent`, which fails the test
// unless VSWITCH_ALLOW_IGNORED=1 says this machine may lack peers.

/** Set on developers' machines that lack some peers; `.ci/run` reads it too. */
export const allowIgnored = Deno.env.get("VSWITCH_ALLOW_IGNORED") === "1";

/** Null when `bin` is an executable file on PATH, else why not (naming the Debian package). */
export function commandMissing(bin: string, pkg: string): string | null {
  const found = (Deno.env.get("PATH") ?? "").split(":").some((dir) => {
    try {
      const st = Deno.statSync(`${dir}/${bin}`);
      return st.isFile && ((st.mode ?? 0o111) & 0o111) !== 0;
    } catch {
      return false;
    }
  });
  return found ? null : `${bin} not found in PATH (apt-get install ${pkg})`;
}

/**
 * For a check inside a running test that needs a peer: true when it is present. When it is
 * missing, throws (the test fails) unless VSWITCH_ALLOW_IGNORED=1, where it warns and returns
 * false so the caller leaves that one check out.
 */
export function peerPresent(missing: string | null, check: string): boolean {
  if (missing === null) return true;
  const why = `${check} cannot run: ${missing}`;
  if (!allowIgnored) throw new Error(`${why} (VSWITCH_ALLOW_IGNORED=1 allows leaving it out)`);
  console.warn(`LEAVING OUT ${why}`);
  return false;
}
