// Command-line option helpers shared by the benchmarks.
import { fileURLToPath } from "node:url";

/** The repository root (with a trailing slash). */
export const REPO = fileURLToPath(new URL("../", import.meta.url));

/** parseArgs options every benchmark takes: sizes, rounds, measuring periods, output, help. */
export const TRIAL_OPTIONS = {
  sizes: { type: "string", default: "64,1518" },
  rounds: { type: "string", default: "3" },
  periods: { type: "string", default: "4" },
  "period-seconds": { type: "string", default: "2" },
  warmup: { type: "string", default: "2" },
  out: { type: "string", default: `${REPO}bench/results` },
  help: { type: "boolean", short: "h" },
} as const;

/** A number option within [min, max]; throws naming the option otherwise. */
export function numberOption(name: string, value: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < min || n > max) {
    throw new Error(`--${name}: ${value} is not in ${min}..${max}`);
  }
  return n;
}

/** A comma-separated list option, blanks dropped. */
export const listOption = (s: string) => s.split(",").map((x) => x.trim()).filter(Boolean);

/** The parsed options, or (on a bad option) the error and the usage text, and exit status 2. */
export function optionsOrExit<T>(parse: () => T, usage: string): T {
  try {
    return parse();
  } catch (e) {
    console.error(`${(e as Error).message}\n\n${usage}`);
    Deno.exit(2);
  }
}
