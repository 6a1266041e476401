// Command-line option helpers shared by the benchmarks.

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
