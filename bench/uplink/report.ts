// Summaries of the uplink trials: medians per frame size and io variant over all periods and
// over the "quiet" ones (other work on the host under QUIET_CPUS), and the ring/syscall ratios.
// A period is "saturated" when the kernel dropped more than 1% of the offered frames (on the
// switch's socket or in the backlog before it): the rate is then the switch's capacity, while a
// switch that keeps up shows the sender's rate. On a loaded host, drops also come from the host
// descheduling the switch, so the ratios' meaning is judged over the quiet periods when any.
import { type Dist, dist } from "../pvp/report.ts";
import type { Io, Period, Trial } from "./trial.ts";

export type RoundTrial = Trial & { round: number };

export const QUIET_CPUS = 0.3;
export const saturated = (p: Period) =>
  (p.kernelDrops + p.backlogDrops) / p.seconds > 0.01 * p.offeredFps;
const quiet = (p: Period) => p.otherCpus < QUIET_CPUS;

interface Figures {
  periods: number;
  saturated: number;
  fps: Dist;
  /** Switch CPU µs per frame delivered. */
  usPerFrame: number;
}

export interface Row {
  size: number;
  io: Io;
  all: Figures;
  quiet: Figures;
  offeredFps: number;
  uplinkRxFps: number;
  kernelDropsPerS: number;
  backlogDropsPerS: number;
  switchDropsPerS: number;
  switchCpus: number;
  senderCpus: number;
  testpmdCpus: number;
  /** Share of the worker's poll rounds that moved frames (rounds, not time: informative only). */
  busyFraction: number;
  otherCpus: number;
  errors: string[];
}

/**
 * "exact": both variants saturated in most periods. "lower bound": the ring variant kept up with
 * the sender (its capacity is higher), the syscall one did not. "unknown": the syscall one kept
 * up too, or no periods.
 */
export type RatioKind = "exact" | "lower bound" | "unknown";

export interface Ratio {
  size: number;
  /** Median frames/s, ring over syscall, over all periods, and per round (A against B). */
  fps: number;
  fpsPerRound: number[];
  /** Over the quiet periods (NaN without any): frames/s and switch CPU per frame. */
  quietFps: number;
  quietKind: RatioKind;
  quietCostPerFrame: number;
  /** What the all-period ratio is worth, by the same rule (less reliable: see the top). */
  allKind: RatioKind;
}

function figures(ps: Period[]): Figures {
  return {
    periods: ps.length,
    saturated: ps.filter(saturated).length,
    fps: dist(ps.map((p) => p.fps)),
    usPerFrame: dist(ps.map((p) => p.switchUsPerFrame)).median,
  };
}

function kind(ring: Figures, sys: Figures): RatioKind {
  const mostly = (f: Figures) => f.periods > 0 && f.saturated * 2 > f.periods;
  if (!mostly(sys)) return "unknown";
  return mostly(ring) ? "exact" : "lower bound";
}

export function summarize(trials: RoundTrial[]): { rows: Row[]; ratios: Ratio[] } {
  const rows: Row[] = [];
  const ratios: Ratio[] = [];
  for (const size of [...new Set(trials.map((t) => t.size))]) {
    for (const io of ["ring", "syscall"] as const) {
      const ts = trials.filter((t) => t.size === size && t.io === io);
      const ps = ts.flatMap((t) => t.periods);
      const med = (f: (p: Period) => number) => dist(ps.map(f)).median;
      rows.push({
        size,
        io,
        all: figures(ps),
        quiet: figures(ps.filter(quiet)),
        offeredFps: med((p) => p.offeredFps),
        uplinkRxFps: med((p) => p.uplinkRxFps),
        kernelDropsPerS: med((p) => p.kernelDrops / p.seconds),
        backlogDropsPerS: med((p) => p.backlogDrops / p.seconds),
        switchDropsPerS: med((p) => p.switchDrops / p.seconds),
        switchCpus: med((p) => p.switchCpus),
        senderCpus: med((p) => p.senderCpus),
        testpmdCpus: med((p) => p.testpmdCpus),
        busyFraction: med((p) => p.busyFraction),
        otherCpus: med((p) => p.otherCpus),
        errors: ts.filter((t) => t.error).map((t) => t.error!.split("\n")[0]),
      });
    }
    const [ring, sys] = rows.slice(-2);
    const trialFps = (t?: Trial) => t ? dist(t.periods.map((p) => p.fps)).median : NaN;
    const pick = (io: Io, round: number) =>
      trials.find((t) => t.size === size && t.io === io && t.round === round);
    ratios.push({
      size,
      fps: ring.all.fps.median / sys.all.fps.median,
      fpsPerRound: [...new Set(trials.map((t) => t.round))]
        .map((r) => trialFps(pick("ring", r)) / trialFps(pick("syscall", r)))
        .filter(Number.isFinite),
      quietFps: ring.quiet.fps.median / sys.quiet.fps.median,
      quietKind: kind(ring.quiet, sys.quiet),
      quietCostPerFrame: ring.quiet.usPerFrame / sys.quiet.usPerFrame,
      allKind: kind(ring.all, sys.all),
    });
  }
  return { rows, ratios };
}

const k = (x: number) => Number.isFinite(x) ? (x / 1e3).toFixed(0) : "-";
const f2 = (x: number) => Number.isFinite(x) ? x.toFixed(2) : "-";
/** "n=12 sat=3: 218 [185-284]": periods, saturated ones, median [interquartile range]. */
const fig = (f: Figures) =>
  `n=${f.periods} sat=${f.saturated}: ` +
  (f.periods ? `${k(f.fps.median)} [${k(f.fps.q1)}-${k(f.fps.q3)}]` : "-");

export function formatTable(rows: Row[], ratios: Ratio[]): string {
  const head = [
    "size",
    "io",
    "kfps at testpmd, all periods",
    "quiet periods",
    "µs/frame all, quiet",
    "offered kfps",
    "kernel drops kfps: socket+backlog",
    "switch drops kfps",
    "switch, sender, testpmd CPUs",
    "other CPUs",
  ];
  const body = rows.map((r) => [
    `${r.size} B`,
    r.io + (r.errors.length ? ` (${r.errors.length} failed)` : ""),
    fig(r.all),
    fig(r.quiet),
    `${f2(r.all.usPerFrame)}, ${f2(r.quiet.usPerFrame)}`,
    k(r.offeredFps),
    `${k(r.kernelDropsPerS)} + ${k(r.backlogDropsPerS)}`,
    k(r.switchDropsPerS),
    `${f2(r.switchCpus)}, ${f2(r.senderCpus)}, ${f2(r.testpmdCpus)}`,
    f2(r.otherCpus),
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(w[i])).join("  ").trimEnd();
  // A lower bound on the rate ratio makes the CPU-per-frame ratio an upper bound.
  const rate = { exact: "", "lower bound": ">= ", unknown: "~" };
  const cost = { exact: "", "lower bound": "<= ", unknown: "~" };
  const notes = ratios.map((q) =>
    `${q.size} B ring/syscall: quiet periods: frames/s ${rate[q.quietKind]}${f2(q.quietFps)} ` +
    `(${q.quietKind}), switch CPU per frame ${cost[q.quietKind]}${f2(q.quietCostPerFrame)}; ` +
    `all periods: frames/s ${rate[q.allKind]}${f2(q.fps)} (${q.allKind}), per round ` +
    q.fpsPerRound.map(f2).join(" ")
  );
  return [line(head), line(w.map((n) => "-".repeat(n))), ...body.map(line), "", ...notes]
    .join("\n");
}
