// Round-trip time figures shared by the latency benchmarks: per-system percentiles of every round
// trip of every round, the loss, and the system's idle CPU, as one table.
import { parseArgs } from "node:util";
import { listOption, numberOption, REPO } from "./options.ts";

export interface RttRow {
  kind: string;
  frames: number;
  lost: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
  /** The highest idle CPU share seen over the rounds (percent of one CPU), if measured. */
  idleCpuPercent: number | null;
}

export interface RttTrial {
  kind: string;
  /** Round trips that completed, in ms. */
  rttMs: number[];
  /** Round trips attempted. */
  sent: number;
  idleCpuPercent: number | null;
}

/** The `p`th percentile of sorted values (nearest rank below). */
export function pct(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** One row per kind, in the order given, over all of that kind's trials. */
export function summarizeRtts(kinds: string[], trials: RttTrial[]): RttRow[] {
  return kinds.map((kind) => {
    const ts = trials.filter((t) => t.kind === kind);
    const all = ts.flatMap((t) => t.rttMs).sort((x, y) => x - y);
    const idle = ts.map((t) => t.idleCpuPercent).filter((x): x is number => x !== null);
    return {
      kind,
      frames: all.length,
      lost: ts.reduce((n, t) => n + t.sent - t.rttMs.length, 0),
      p50: pct(all, 50),
      p90: pct(all, 90),
      p99: pct(all, 99),
      max: all[all.length - 1] ?? NaN,
      mean: all.reduce((x, y) => x + y, 0) / all.length,
      idleCpuPercent: idle.length ? Math.max(...idle) : null,
    };
  });
}

export function formatRtts(rows: RttRow[]): string[] {
  const f = (x: number) => x.toFixed(3).padStart(8);
  const width = Math.max(14, ...rows.map((r) => r.kind.length));
  return [
    `${"system".padEnd(width)}   p50 ms   p90 ms   p99 ms   max ms  mean ms   lost  idle CPU %`,
    ...rows.map((r) =>
      `${r.kind.padEnd(width)} ${f(r.p50)} ${f(r.p90)} ${f(r.p99)} ${f(r.max)} ${f(r.mean)} ${
        String(r.lost).padStart(6)
      }  ${r.idleCpuPercent === null ? "-" : r.idleCpuPercent.toFixed(2)}`
    ),
  ];
}

/**
 * The options both latency benchmarks take: `--only` (of `kinds`, all by default), `--rounds`,
 * `--count`, `--interval` (seconds, at least `minInterval`), `--idle`, `--out`; `--help` prints
 * `usage` and exits.
 */
export function rttOptions<K extends string>(
  kinds: readonly K[],
  usage: string,
  minInterval: number,
) {
  const { values: v } = parseArgs({
    options: {
      help: { type: "boolean", default: false },
      only: { type: "string", default: kinds.join(",") },
      rounds: { type: "string", default: "3" },
      count: { type: "string", default: "1000" },
      interval: { type: "string", default: "0.002" },
      idle: { type: "string", default: "3" },
      out: { type: "string", default: `${REPO}bench/results` },
    },
  });
  if (v.help) {
    console.log(usage);
    Deno.exit(0);
  }
  const only = listOption(v.only) as K[];
  for (const k of only) {
    if (!kinds.includes(k)) throw new Error(`--only: unknown ${k} (one of ${kinds.join(", ")})`);
  }
  return {
    kinds: only,
    rounds: Math.round(numberOption("rounds", v.rounds, 1, 100)),
    count: Math.round(numberOption("count", v.count, 10, 1_000_000)),
    interval: numberOption("interval", v.interval, minInterval, 10),
    idle: numberOption("idle", v.idle, 0, 600),
    out: v.out,
  };
}

/**
 * Prints the table of every kind's round trips under `title` and writes it, with the options
 * (less the output directory) and the load, to `<out>/<file>`.
 */
export async function reportRtts(
  title: string,
  kinds: string[],
  trials: RttTrial[],
  o: { out: string },
  loadavg: string,
  file: string,
): Promise<void> {
  const rows = summarizeRtts(kinds, trials);
  console.log([title, ...formatRtts(rows)].join("\n"));
  await Deno.mkdir(o.out, { recursive: true });
  const json = JSON.stringify(
    { date: new Date().toISOString(), options: { ...o, out: undefined }, loadavg, rows },
    null,
    2, // as deno fmt keeps JSON: a committed result stays clean for `deno task check`
  );
  await Deno.writeTextFile(`${o.out}/${file}`, json + "\n");
}
