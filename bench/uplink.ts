// `deno task bench:uplink`: the af-packet uplink's receive path, `io: "ring"` (TPACKET_V3) against
// `io: "syscall"` (one recv per frame). A sender in a namespace floods fixed-size frames over a
// veth pair into the switch's uplink; the switch forwards them (unicast, static FDB entry) to its
// vhost-user port, where dpdk-testpmd (virtio-user, rxonly) counts them. The two variants
// alternate (A B A B ...) in one run, so drift on this shared 2-CPU host hits both alike.
import { parseArgs } from "node:util";
import { listOption, numberOption, optionsOrExit, TRIAL_OPTIONS } from "./options.ts";
import { createVethNetns, netnsSkipReason } from "../peers/netns.ts";
import { testpmdAvailable } from "../peers/testpmd.ts";
import { cleanupAll, finalCleanup, isInterrupted, onCleanup, trapSignals } from "./pvp/proc.ts";
import { formatTable, type RoundTrial, summarize } from "./uplink/report.ts";
import { runTrial } from "./uplink/trial.ts";

const USAGE = `Usage: deno task bench:uplink [options]   (as root)
  --sizes 64,1518        wire frame sizes in bytes, FCS included (the sender sends size - 4)
  --rounds R             A B rounds (io ring, io syscall) per size (default 3)
  --periods N            measurement periods per trial (default 4)
  --period-seconds S     length of one period (default 2)
  --warmup S             seconds of flooding before the first period (default 2)
  --poll adaptive|busy   the switch's poll.mode (default busy)
  --pin S,F,T            CPUs of the switch's worker, the sender and testpmd (default 0,1,0:
                         the sender gets a CPU of its own, so the switch is the bottleneck);
                         "none": let the kernel place everything
  --rps                  steer the uplink's kernel receive work (softirq) to the switch's CPU
                         (RPS), so that CPU does all of the receive path, kernel half included;
                         without it that half runs on the sender's CPU
  --via ring|send        how the sender transmits (default ring: its own TX ring)
  --queue-size N         testpmd's virtio-user ring and RX descriptors (default 16384: it
                         absorbs the time testpmd waits for its CPU share)
  --out DIR              where results go (default bench/results)`;

function options() {
  const { values: v } = parseArgs({
    options: {
      ...TRIAL_OPTIONS,
      poll: { type: "string", default: "busy" },
      pin: { type: "string", default: "0,1,0" },
      via: { type: "string", default: "ring" },
      rps: { type: "boolean", default: false },
      "queue-size": { type: "string", default: "16384" },
    },
  });
  if (v.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const num = numberOption;
  const oneOf = <T extends string>(name: string, s: string, xs: readonly T[]): T => {
    if (!xs.includes(s as T)) throw new Error(`--${name}: expected one of ${xs.join(", ")}`);
    return s as T;
  };
  const cpus = navigator.hardwareConcurrency;
  const pin = v.pin === "none" ? null : v.pin.split(",").map((c) => num("pin", c, 0, cpus - 1));
  if (pin && pin.length !== 3) throw new Error("--pin: three CPUs (switch, sender, testpmd)");
  if (v.rps && !pin) throw new Error("--rps needs --pin: it steers to the switch's CPU");
  return {
    sizes: listOption(v.sizes).map((s) => num("sizes", s, 64, 1518)),
    rounds: Math.round(num("rounds", v.rounds, 1, 100)),
    periods: Math.round(num("periods", v.periods, 1, 1000)),
    periodSeconds: num("period-seconds", v["period-seconds"], 0.2, 600),
    warmupSeconds: num("warmup", v.warmup, 0, 600),
    poll: oneOf("poll", v.poll, ["adaptive", "busy"] as const),
    cpus: pin && { switch: pin[0], sender: pin[1], testpmd: pin[2] },
    via: oneOf("via", v.via, ["ring", "send"] as const),
    rps: v.rps,
    queueSize: num("queue-size", v["queue-size"], 64, 32768),
    out: v.out,
  };
}

async function main() {
  const o = optionsOrExit(options, USAGE);
  const missing = netnsSkipReason() ?? testpmdAvailable();
  if (missing) {
    console.error(`cannot run the uplink bench: ${missing}`);
    Deno.exit(1);
  }
  const log = (msg: string) => console.error(`${new Date().toISOString().slice(11, 19)} ${msg}`);
  const loadavg = () => Deno.readTextFileSync("/proc/loadavg").trim();
  const total = o.rounds * o.sizes.length * 2;
  const perTrial = 2 + o.warmupSeconds + o.periods * o.periodSeconds;
  log(`${total} trials, about ${Math.ceil((total * perTrial) / 60)} min; load ${loadavg()}`);
  const untrap = trapSignals();
  const startLoad = loadavg();
  const trials: RoundTrial[] = [];
  // Everything set up from here on is undone by cleanupAll, on errors and Ctrl-C too.
  try {
    finalCleanup(); // runs last: kills leftover children, removes this run's DPDK runtime dirs
    const dpdkPrefix = `upl${Deno.pid}-`;
    onCleanup(async () => {
      const dirs = [...Deno.readDirSync("/var/run/dpdk")].map((e) => e.name);
      for (const name of dirs.filter((d) => d.startsWith(dpdkPrefix))) {
        await Deno.remove(`/var/run/dpdk/${name}`, { recursive: true }).catch(() => {});
      }
    });
    const root = await Deno.makeTempDir({ prefix: "uplink-bench-" });
    onCleanup(() => Deno.remove(root, { recursive: true }).catch(() => {}));
    const ns = await createVethNetns({ nsAddr: null });
    onCleanup(() => ns.close());
    log(`veth ${ns.hostIf} (switch uplink) <-> ${ns.nsIf} (netns ${ns.name}, sender)`);
    if (o.rps && o.cpus) {
      const mask = (1n << BigInt(o.cpus.switch)).toString(16);
      await Deno.writeTextFile(`/sys/class/net/${ns.hostIf}/queues/rx-0/rps_cpus`, mask);
    }
    let n = 0;
    rounds: for (let round = 1; round <= o.rounds; round++) {
      for (const size of o.sizes) {
        for (const io of ["ring", "syscall"] as const) {
          n++;
          const dir = `${root}/${n}`;
          await Deno.mkdir(dir);
          const prefix = `[${n}/${total}] round ${round}, ${size} B, io ${io}:`;
          const t = await runTrial({
            ...o,
            io,
            size,
            ns,
            dir,
            dpdkPrefix: `${dpdkPrefix}${n}`,
            progress: (m) => log(`${prefix} ${m}`),
          });
          if (isInterrupted()) break rounds; // the signal handler cleans up and exits
          if (t.error) log(`${prefix} FAILED: ${t.error}`);
          trials.push({ ...t, round });
        }
      }
    }
  } finally {
    await cleanupAll();
    untrap();
  }
  if (isInterrupted()) Deno.exit(130);
  const { rows, ratios } = summarize(trials);
  const text = formatTable(rows, ratios);
  const endLoad = loadavg();
  console.log(text);
  console.log(
    `load average (1, 5, 15 min) at start ${startLoad}; at end ${endLoad}\n` +
      "sat: periods where the kernel dropped > 1% of the offered frames (socket or backlog), so " +
      "the rate is the switch's; quiet: other work on the host used < 0.3 CPUs",
  );
  const date = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19) + "Z";
  const result = {
    date,
    host: {
      cpus: navigator.hardwareConcurrency,
      kernel: Deno.osRelease(),
      deno: Deno.version.deno,
      loadavgStart: startLoad,
      loadavgEnd: endLoad,
    },
    options: { ...o, out: undefined },
    method: "namespace -> veth -> switch af-packet uplink -> vhost-user -> testpmd virtio-user " +
      "rxonly; frames/s from testpmd's RX counter over fixed periods after a warm-up; CPU from " +
      "/proc/PID/stat; io ring and io syscall alternated within the run; ratios of medians. " +
      "Default CPUs: the switch's worker and testpmd share CPU 0, the sender (and the kernel's " +
      "receive work it triggers, unless --rps) has CPU 1. Saturated: kernel drops > 1% of the " +
      "offered frames. Quiet: other work < 0.3 CPUs.",
    summary: rows,
    ratios,
    table: text,
    trials,
  };
  await Deno.mkdir(o.out, { recursive: true });
  const json = JSON.stringify(result, null, 2) + "\n";
  await Deno.writeTextFile(`${o.out}/uplink-${date}.json`, json);
  await Deno.writeTextFile(`${o.out}/uplink-latest.json`, json);
  console.log(`results: ${o.out}/uplink-${date}.json, ${o.out}/uplink-latest.json`);
  if (trials.some((t) => t.error)) Deno.exitCode = 1;
}

if (import.meta.main) await main();
