// Round-trip time figures shared by the latency benchmarks: per-system percentiles of every round
// trip of every round, the loss, and the system's idle CPU, as one table.

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
