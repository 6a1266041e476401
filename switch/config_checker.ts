// Reading a JSON config: one Checker collects every problem under its JSON path (so an operator
// fixes them all at once), with typo hints for unknown keys and names.

/** "52-54-00-AB-00-01" → "52:54:00:ab:00:01"; null when not six hex pairs with one separator. */
export function normalizeMac(text: string): string | null {
  if (!/^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$/.test(text)) return null;
  return text.toLowerCase().replaceAll("-", ":");
}

export type Obj = Record<string, unknown>;

/** Collects problems; each reader reports into it and returns undefined when the value is unusable. */
export class Checker {
  list: string[] = [];
  constructor(readonly file: string) {}
  add(at: string, message: string): undefined {
    this.list.push(`${this.file}: ${at || "$"}: ${message}`);
  }
  /** Checks v is an object whose keys are all known; reports each unknown key. */
  object(v: unknown, at: string, keys: string[]): Obj | undefined {
    if (!isObject(v)) return this.add(at, `expected an object, got ${describe(v)}`);
    for (const key of Object.keys(v).filter((k) => !keys.includes(k))) {
      this.add(join(at, key), `unknown key ${JSON.stringify(key)}${closest(key, keys)}`);
    }
    return v;
  }
  /** An optional section: absent means all defaults. */
  section(v: unknown, at: string, keys: string[]): Obj {
    return v === undefined ? {} : this.object(v, at, keys) ?? {};
  }
  /** No default means required. */
  present(v: unknown, at: string, dflt: unknown): boolean {
    if (v === undefined && dflt === undefined) this.add(at, "required key is missing");
    return v !== undefined;
  }
  int(v: unknown, at: string, min: number, max: number, dflt?: number): number | undefined {
    if (!this.present(v, at, dflt)) return dflt;
    if (Number.isInteger(v) && (v as number) >= min && (v as number) <= max) return v as number;
    this.add(at, `expected an integer from ${min} to ${max}, got ${describe(v)}`);
  }
  str<D extends string | null = never>(
    v: unknown,
    at: string,
    dflt?: D,
    re?: RegExp,
    rule?: string,
  ) {
    if (!this.present(v, at, dflt)) return dflt;
    if (typeof v !== "string") return this.add(at, `expected a string, got ${describe(v)}`);
    if (re && !re.test(v)) return this.add(at, `${JSON.stringify(v)} is not valid: ${rule}`);
    return v;
  }
  bool(v: unknown, at: string, dflt: boolean): boolean {
    if (v === undefined || typeof v === "boolean") return v ?? dflt;
    this.add(at, `expected true or false, got ${describe(v)}`);
    return dflt;
  }
  oneOf<T extends string>(v: unknown, at: string, choices: readonly T[], dflt?: T): T | undefined {
    if (!this.present(v, at, dflt)) return dflt;
    if (choices.includes(v as T)) return v as T;
    const hint = typeof v === "string" ? closest(v, choices) : "";
    const list = choices.map((c) => `"${c}"`).join(", ");
    this.add(at, `expected one of ${list}, got ${describe(v)}${hint}`);
  }
}

function join(path: string, key: string): string {
  return path ? `${path}.${key}` : key;
}

export function isObject(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export function describe(v: unknown): string {
  if (Array.isArray(v)) return "an array";
  if (isObject(v)) return "an object";
  return v === undefined ? "nothing" : JSON.stringify(v);
}

/** ` (did you mean "x"?)` when a known name is within a typo's reach (Levenshtein). */
export function closest(word: string, known: readonly string[]): string {
  let best = "", bestD = Infinity;
  for (const k of known) {
    const d = distance(word.toLowerCase(), k.toLowerCase());
    if (d < bestD) [best, bestD] = [k, d];
  }
  const reach = Math.max(1, Math.floor(Math.max(word.length, best.length) / 3));
  return best && bestD <= reach ? ` (did you mean ${JSON.stringify(best)}?)` : "";
}

/** Edit distance counting a swap of two neighbours as one edit ("vlna" → "vlan"). */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}
