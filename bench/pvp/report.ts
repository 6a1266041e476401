// Summaries of the PVP trials: distributions over all measurement periods, ratios taken within
// the same run (absolute rates move by ±30% between runs on this shared host), a text table and
// a gnuplot bar chart.
import type { Trial } from "./loop.ts";

export interface Dist {
  median: number;
  min: number;
  max: number;
  q1: number;
  q3: number;
}

export interface Row {
  config: string;
  size: number;
  /** Measurement periods behind the figures (all rounds). */
  periods: number;
  /** Per direction: 0 -> 1 and 1 -> 0. */
  mpps: [Dist, Dist];
  /** Both directions' per-period mean: the figure the ratios and the plot use. */
  mppsPerDirection: Dist;
  /** Target CPU seconds per million frames forwarded. */
  cpuPerMframe: Dist;
  /** Median CPUs busy with other work on the host during the periods. */
  otherCpus: number;
  /** The same figures over the periods with less other load than the quiet threshold only. */
  quiet: {
    maxOtherCpus: number;
    periods: number;
    mppsPerDirection: number;
    cpuPerMframe: number;
    mppsVsOvs: number | null;
    mppsVsWire: number | null;
  };
  ratios: {
    mppsVsOvs: number | null;
    mppsVsWire: number | null;
    cpuVsOvs: number | null;
    cpuVsWire: number | null;
    /** mppsVsOvs per round (trial medians paired within a round). */
    mppsVsOvsPerRound: number[];
  };
  /** Trials whose loop accounting held, of those that ran; failed trials' errors. */
  checks: { ok: number; of: number; lost: number; drops: number; errors: string[] };
}

export function dist(xs: number[]): Dist {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  const q = (p: number) => {
    if (!s.length) return NaN;
    const i = (s.length - 1) * p;
    const lo = Math.floor(i);
    return s[lo] + (s[Math.min(lo + 1, s.length - 1)] - s[lo]) * (i - lo);
  };
  return {
    median: q(0.5),
    min: s[0] ?? NaN,
    max: s[s.length - 1] ?? NaN,
    q1: q(0.25),
    q3: q(0.75),
  };
}

export function summarize(trials: (Trial & { round: number })[], quietCpus: number): Row[] {
  const keys = [...new Set(trials.map((t) => `${t.size} ${t.config}`))];
  const rows = keys.map((key): Row => {
    const ts = trials.filter((t) => `${t.size} ${t.config}` === key);
    const ps = ts.flatMap((t) => t.periods);
    const qs = ps.filter((p) => p.otherCpus < quietCpus);
    const ran = ts.filter((t) => t.integrity);
    return {
      config: ts[0].config,
      size: ts[0].size,
      periods: ps.length,
      mpps: [dist(ps.map((p) => p.mpps[0])), dist(ps.map((p) => p.mpps[1]))],
      mppsPerDirection: dist(ps.map((p) => (p.mpps[0] + p.mpps[1]) / 2)),
      cpuPerMframe: dist(ps.map((p) => p.cpuPerMframe)),
      otherCpus: dist(ps.map((p) => p.otherCpus)).median,
      quiet: {
        maxOtherCpus: quietCpus,
        periods: qs.length,
        mppsPerDirection: dist(qs.map((p) => (p.mpps[0] + p.mpps[1]) / 2)).median,
        cpuPerMframe: dist(qs.map((p) => p.cpuPerMframe)).median,
        mppsVsOvs: null,
        mppsVsWire: null,
      },
      ratios: {
        mppsVsOvs: null,
        mppsVsWire: null,
        cpuVsOvs: null,
        cpuVsWire: null,
        mppsVsOvsPerRound: [],
      },
      checks: {
        ok: ran.filter((t) => t.integrity!.ok).length,
        of: ran.length,
        lost: ran.reduce((a, t) => a + t.integrity!.lost, 0),
        drops: ran.reduce((a, t) => a + (t.integrity!.targetDrops ?? 0), 0),
        errors: ts.filter((t) => t.error).map((t) => t.error!.split("\n")[0]),
      },
    };
  });
  const trialMedian = (t: Trial) => dist(t.periods.map((p) => (p.mpps[0] + p.mpps[1]) / 2)).median;
  for (const r of rows) {
    // Against the reference on the same ring layout when it ran, else on the split ring.
    const ring = r.config.endsWith("-packed") ? "-packed" : "";
    const find = (c: string) => rows.find((x) => x.size === r.size && x.config === c);
    const ref = (c: string) => find(c + ring) ?? find(c);
    const ratio = (a: number, b: number | undefined) =>
      b && Number.isFinite(a) && Number.isFinite(b) ? a / b : null;
    if (!r.config.startsWith("ovs")) {
      r.ratios.mppsVsOvs = ratio(r.mppsPerDirection.median, ref("ovs")?.mppsPerDirection.median);
      r.ratios.cpuVsOvs = ratio(r.cpuPerMframe.median, ref("ovs")?.cpuPerMframe.median);
      for (const t of trials.filter((t) => t.size === r.size && t.config === r.config)) {
        const o = trials.find((x) =>
          x.round === t.round && x.size === t.size && x.config === ref("ovs")?.config
        );
        const v = o && ratio(trialMedian(t), trialMedian(o));
        if (v) r.ratios.mppsVsOvsPerRound.push(v);
      }
    }
    if (!r.config.startsWith("ovs")) {
      r.quiet.mppsVsOvs = ratio(r.quiet.mppsPerDirection, ref("ovs")?.quiet.mppsPerDirection);
    }
    if (!r.config.startsWith("wire")) {
      r.quiet.mppsVsWire = ratio(r.quiet.mppsPerDirection, ref("wire")?.quiet.mppsPerDirection);
      r.ratios.mppsVsWire = ratio(r.mppsPerDirection.median, ref("wire")?.mppsPerDirection.median);
      r.ratios.cpuVsWire = ratio(r.cpuPerMframe.median, ref("wire")?.cpuPerMframe.median);
    }
  }
  return rows.sort((a, b) => a.size - b.size);
}

const f3 = (x: number) => Number.isFinite(x) ? x.toFixed(3) : "-";
const ratio = (x: number | null) => x === null ? "-" : x.toFixed(2);
// Medians with the interquartile range: min/max (in the JSON) mostly show the other load here.
const range = (d: Dist) => `${f3(d.median)} [${f3(d.q1)}-${f3(d.q3)}]`;

export function formatTable(rows: Row[]): string {
  const head = [
    "config",
    "size",
    "n",
    "Mpps 0->1 med [IQR]",
    "Mpps 1->0 med [IQR]",
    "CPU s/Mfr",
    "Mpps/ovs",
    "Mpps/wire",
    "CPU/ovs",
    "other CPUs",
    "quiet: n Mpps /ovs /wire",
    "loop check",
  ];
  const body = rows.map((r) => [
    r.config,
    `${r.size} B`,
    String(r.periods),
    range(r.mpps[0]),
    range(r.mpps[1]),
    f3(r.cpuPerMframe.median),
    ratio(r.ratios.mppsVsOvs),
    ratio(r.ratios.mppsVsWire),
    ratio(r.ratios.cpuVsOvs),
    r.otherCpus.toFixed(2),
    r.quiet.periods
      ? `${r.quiet.periods} ${f3(r.quiet.mppsPerDirection)} ${ratio(r.quiet.mppsVsOvs)} ` +
        ratio(r.quiet.mppsVsWire)
      : "0",
    (r.checks.of ? `${r.checks.ok}/${r.checks.of} ok, lost ${r.checks.lost}` : "no trial") +
    (r.checks.errors.length ? `, ${r.checks.errors.length} failed` : ""),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}

/** Two panels (Mpps per direction, CPU per Mframe), clusters by frame size, IQR whiskers. */
export async function plot(rows: Row[], png: string, title: string): Promise<string | null> {
  const configs = [...new Set(rows.map((r) => r.config))];
  const sizes = [...new Set(rows.map((r) => r.size))];
  const dir = await Deno.makeTempDir({ prefix: "pvp-plot-" });
  try {
    const data = (pick: (r: Row) => Dist) =>
      sizes.map((s) =>
        [
          `"${s} B"`,
          ...configs.flatMap((c) => {
            const r = rows.find((x) => x.size === s && x.config === c);
            const d = r ? pick(r) : null;
            // gnuplot skips NaN: a configuration missing at one size leaves a gap.
            return (d ? [d.median, d.q1, d.q3] : [NaN, NaN, NaN]).map(String);
          }),
        ].join(" ")
      ).join("\n") + "\n";
    await Deno.writeTextFile(`${dir}/mpps.dat`, data((r) => r.mppsPerDirection));
    await Deno.writeTextFile(`${dir}/cpu.dat`, data((r) => r.cpuPerMframe));
    const bars = (file: string) =>
      configs.map((c, i) =>
        `'${dir}/${file}' using ${2 + 3 * i}:${3 + 3 * i}:${4 + 3 * i}${
          i ? "" : ":xtic(1)"
        } title '${c}'`
      ).join(", ");
    // Median values at the foot of each bar (clear of the whiskers): histogram clusters sit at
    // x = row, bars 1/(N+gap) wide.
    const labels = (file: string) =>
      configs.map((_, i) =>
        `'${dir}/${file}' using ($0+(${i}-${(configs.length - 1) / 2})/${configs.length + 2}):` +
        `(0):(sprintf("%.2f",$${2 + 3 * i})) with labels offset 0,0.6 font ",9" notitle`
      ).join(", ");
    const script = `
set terminal pngcairo size 1400,560 font "Sans,11"
set output '${png}'
set multiplot layout 1,2 title "${title.replaceAll('"', "'")}"
set style data histograms
set style histogram errorbars gap 2 lw 1.5
set style fill solid 0.8 border -1
set grid ytics
set yrange [0:*]
set key top right
set xlabel "frame size (median of all periods; whiskers: interquartile range)"
set title "Mpps per direction (higher is better)"
plot ${bars("mpps.dat")}, ${labels("mpps.dat")}
set title "target CPU seconds per million frames (lower is better)"
plot ${bars("cpu.dat")}, ${labels("cpu.dat")}
unset multiplot
`;
    await Deno.writeTextFile(`${dir}/plot.gp`, script);
    const out = await new Deno.Command("gnuplot", { args: [`${dir}/plot.gp`] }).output();
    if (!out.success) return `gnuplot failed: ${new TextDecoder().decode(out.stderr)}`;
    return null;
  } catch (e) {
    return `cannot plot: ${(e as Error).message}`;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
