// Cross-host TCP over VXLAN: station 1 -> station 2 (iperf3, one stream) through this switch's
// VXLAN ports on both hosts, and through the kernel's VXLAN + Linux bridge on the same path
// (same namespaces, veths, MTU and underlay), alternating within one run. Each transfer also
// reports the whole machine's CPU time per GB received (/proc/stat: stations, kernel and
// switches together) and, for the switch, its datapath workers' own.
//
//   deno run --allow-all bench/vxlan.ts [--rounds 3] [--seconds 5] [--warmup 2] [--threads 1]
//                                        [--offloads on|off] [--tunnel-gso on|off]
//                                        [--far switch|kernel]
//
// --warmup runs an unmeasured transfer of that many seconds first on each fresh lab, for both
// paths, so that the figure is the switch's steady state, not its JIT compiling the datapath
// (0: none). --offloads off turns checksum offload, TSO and GSO off on the stations' veths
// (plain frames only); on (the default) leaves the kernel's defaults. --tunnel-gso on (the
// default) sets the switches' vxlan ports' `tunnelGso` (super-frames leave whole through a tap);
// off cuts them into UDP_SEGMENT runs. --far kernel puts the kernel's VXLAN + bridge on the
// receiving host of the switch's trials (this switch sends to a Linux VTEP; default: switch).
import { relative } from "node:path";
import { parseArgs } from "node:util";
import { netnsSkipReason } from "../peers/netns.ts";
import { type VtepKind, VxlanLab } from "../peers/vxlan_lab.ts";
import { numberOption, optionsOrExit, REPO } from "./options.ts";
import { cpuSeconds, systemSeconds } from "./pvp/proc.ts";

const USAGE =
  "Usage: deno run --allow-all bench/vxlan.ts [--rounds N] [--seconds S] [--warmup S] [--threads T] [--offloads on|off] [--tunnel-gso on|off] [--far switch|kernel]";

const opts = optionsOrExit(() => {
  const { values } = parseArgs({
    options: {
      rounds: { type: "string", default: "3" },
      seconds: { type: "string", default: "5" },
      warmup: { type: "string", default: "2" },
      threads: { type: "string", default: "1" },
      offloads: { type: "string", default: "on" },
      "tunnel-gso": { type: "string", default: "on" },
      far: { type: "string", default: "switch" },
      out: { type: "string", default: `${REPO}bench/results/vxlan-latest.json` },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  if (!["on", "off"].includes(values.offloads)) throw new Error("--offloads: on or off");
  if (!["on", "off"].includes(values["tunnel-gso"])) throw new Error("--tunnel-gso: on or off");
  if (!["switch", "kernel"].includes(values.far)) throw new Error("--far: switch or kernel");
  return {
    rounds: numberOption("rounds", values.rounds, 1, 50),
    seconds: numberOption("seconds", values.seconds, 1, 60),
    warmup: numberOption("warmup", values.warmup, 0, 60),
    threads: numberOption("threads", values.threads, 1, 2),
    offloads: values.offloads === "on",
    tunnelGso: values["tunnel-gso"] === "on",
    far: values.far as "switch" | "kernel",
    out: values.out,
  };
}, USAGE);

const skip = netnsSkipReason();
if (skip) {
  console.error(`bench/vxlan.ts: ${skip}`);
  Deno.exit(1);
}

interface Trial {
  kind: VtepKind;
  round: number;
  gbps: number;
  retransmits: number;
  /** Median ping round trip station to station before the transfer, ms. */
  rttMs: number;
  /** CPU time of the whole machine (every CPU, /proc/stat) per GB received, s. */
  cpuSecondsPerGB: number;
  /** Share of the machine's CPU time busy during the transfer. */
  busy: number;
  /** CPU time of the switches' datapath workers per GB received, s (0 for the kernel). */
  workerSecondsPerGB: number;
}

/** CPU seconds of the datapath worker threads of the lab's switches so far. */
function workerSeconds(lab: VxlanLab): number {
  let sum = 0;
  for (const v of lab.vteps) {
    if (!v.process) continue;
    const dir = `/proc/${v.process.pid}/task`;
    for (const t of Deno.readDirSync(dir)) {
      let comm = "";
      try {
        comm = Deno.readTextFileSync(`${dir}/${t.name}/comm`);
      } catch { /* the thread ended */ }
      // /proc/TID/stat is the thread's own; NaN once it ended.
      const s = comm.startsWith("worker-") ? cpuSeconds(Number(t.name)) : NaN;
      if (s >= 0) sum += s;
    }
  }
  return sum;
}

/** Median round trip of `count` pings from station 1 to station 2, in ms. */
async function pingRtt(lab: VxlanLab, count: number): Promise<number> {
  const out = await lab.exec(lab.vtep(1).station, [
    "busybox",
    "ping",
    "-c",
    String(count),
    "-i",
    "0.2",
    lab.vtep(2).stationIp,
  ]);
  const times = [...out.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  return times.length ? median(times) : NaN;
}

async function iperf(
  lab: VxlanLab,
  seconds: number,
): Promise<
  {
    gbps: number;
    retransmits: number;
    cpuSecondsPerGB: number;
    busy: number;
    workerSecondsPerGB: number;
  }
> {
  const server = new Deno.Command("ip", {
    args: ["netns", "exec", lab.vtep(2).station, "iperf3", "-s", "-1", "-p", "5201"],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    await new Promise((r) => setTimeout(r, 500));
    const m0 = systemSeconds();
    const w0 = workerSeconds(lab);
    const out = await lab.exec(lab.vtep(1).station, [
      "iperf3",
      "-c",
      lab.vtep(2).stationIp,
      "-p",
      "5201",
      "-t",
      String(seconds),
      "-J",
    ]);
    const m1 = systemSeconds();
    const w1 = workerSeconds(lab);
    const j = JSON.parse(out);
    const gb = j.end.sum_received.bytes / 1e9;
    return {
      gbps: j.end.sum_received.bits_per_second / 1e9,
      retransmits: j.end.sum_sent.retransmits ?? 0,
      cpuSecondsPerGB: (m1.busy - m0.busy) / gb,
      busy: (m1.busy - m0.busy) / (m1.total - m0.total),
      workerSecondsPerGB: (w1 - w0) / gb,
    };
  } finally {
    try {
      server.kill("SIGKILL");
    } catch { /* exited after its one test */ }
    await server.status;
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const load = () => Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
const trials: Trial[] = [];
const loadBefore = load();
for (let round = 1; round <= opts.rounds; round++) {
  for (const kind of ["switch", "kernel"] as const) {
    const vxlan = { tunnelGso: opts.tunnelGso };
    const far = kind === "switch" ? opts.far : kind;
    const lab = await VxlanLab.up([
      { kind, flood: [2], threads: opts.threads, vxlan },
      { kind: far, flood: [1], threads: opts.threads, vxlan },
    ], { offloads: opts.offloads });
    try {
      // Learn both stations first: ARP and the first frames are not part of the figure.
      if (await lab.ping(1, 2, 2) === 0) throw new Error(`${kind}: ping failed\n${lab.logs()}`);
      const rttMs = await pingRtt(lab, 10);
      if (opts.warmup > 0) await iperf(lab, opts.warmup);
      const r = await iperf(lab, opts.seconds);
      trials.push({ kind, round, ...r, rttMs });
      const line = `${r.gbps.toFixed(3)} Gbit/s, ${r.retransmits} retransmits, CPU ${
        r.cpuSecondsPerGB.toFixed(2)
      } s/GB (${(r.busy * 100).toFixed(0)}% busy${
        kind === "switch" ? `, workers ${r.workerSecondsPerGB.toFixed(2)} s/GB` : ""
      })`;
      console.log(`round ${round} ${kind.padEnd(6)} ${line}, ping ${rttMs.toFixed(2)} ms`);
    } finally {
      await lab.close();
    }
  }
}
/** The median of one figure over a kind's trials. */
const medianOf = (kind: VtepKind, key: "gbps" | "rttMs" | "cpuSecondsPerGB") =>
  median(trials.filter((t) => t.kind === kind).map((t) => t[key]));
const sw = medianOf("switch", "gbps");
const kernel = medianOf("kernel", "gbps");
const rtt = (kind: VtepKind) => medianOf(kind, "rttMs");
const cpu = (kind: VtepKind) => medianOf(kind, "cpuSecondsPerGB");
const perRound = Array.from(
  { length: opts.rounds },
  (_, i) => trials[2 * i].gbps / trials[2 * i + 1].gbps,
);
const summary = {
  date: new Date().toISOString(),
  // The file relative to the repository: no machine's paths in committed results.
  options: { ...opts, out: relative(REPO, opts.out) },
  loadAverage: { before: loadBefore, after: load() },
  trials,
  medianGbps: { switch: sw, kernel },
  medianPingMs: { switch: rtt("switch"), kernel: rtt("kernel") },
  medianCpuSecondsPerGB: { switch: cpu("switch"), kernel: cpu("kernel") },
  ratio: sw / kernel,
  ratioPerRound: perRound,
};
console.log(
  `median: switch ${sw.toFixed(3)} Gbit/s, kernel VXLAN+bridge ${kernel.toFixed(3)} Gbit/s, ` +
    `ratio ${(sw / kernel).toFixed(2)} (per round ${
      perRound.map((r) => r.toFixed(2)).join(", ")
    }); ` +
    `ping ${rtt("switch").toFixed(2)} vs ${rtt("kernel").toFixed(2)} ms; ` +
    `CPU ${cpu("switch").toFixed(2)} vs ${cpu("kernel").toFixed(2)} s/GB; ` +
    `load ${loadBefore} -> ${summary.loadAverage.after}`,
);
await Deno.writeTextFile(opts.out, JSON.stringify(summary, null, 2) + "\n");
