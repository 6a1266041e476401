// TCP between two network namespaces through two af-packet ports, with the kernel's defaults on
// the veths (checksum offload, TSO, GSO on): this switch, the Linux bridge on the same veths,
// and Open vSwitch's userspace datapath (netdev bridge, the veths as system ports) with
// userspace-tso-enable false and true. The targets alternate within each round (the starting
// one rotates), so all of them see the same host; one iperf3 stream per trial.
//
//   deno run --allow-all bench/tcp.ts [--rounds 3] [--seconds 5] [--targets switch,bridge,...]
//
// With --guests: guest -> guest TCP between two QEMU/TCG guests instead (bench/tcp_guests.ts).
//
// Reports per target the median Gbit/s, retransmits, and the switch's CPU seconds per GB moved
// (its process's user + system time; the Linux bridge's work is softirq time in the senders'
// context and is not counted).
import { parseArgs } from "node:util";
import { netnsSkipReason, run } from "../peers/netns.ts";
import { cpuSeconds, SwitchProcess } from "../peers/switch_process.ts";
import { listOption, numberOption, optionsOrExit, REPO } from "./options.ts";
import { exists, freePort } from "./pvp/proc.ts";
import { GUEST_TARGETS, guestsMain, type GuestTarget } from "./tcp_guests.ts";

const TARGETS = ["switch", "bridge", "ovs-tso-off", "ovs-tso-on"] as const;
type TargetName = typeof TARGETS[number];

const USAGE = "Usage: deno run --allow-all bench/tcp.ts [--rounds N] [--seconds S] " +
  `[--targets ${TARGETS.join(",")}] [--threads T] [--out FILE]\n` +
  "       deno run --allow-all bench/tcp.ts --guests [--rounds N] [--seconds S] " +
  `[--targets ${GUEST_TARGETS.join(",")}] [--out FILE]`;

const opts = optionsOrExit(() => {
  const { values } = parseArgs({
    options: {
      rounds: { type: "string", default: "3" },
      seconds: { type: "string" },
      threads: { type: "string", default: "1" },
      targets: { type: "string" },
      out: { type: "string" },
      guests: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const guests = values.guests ?? false;
  const known: readonly string[] = guests ? GUEST_TARGETS : TARGETS;
  const targets = listOption(values.targets ?? known.join(","));
  const bad = targets.filter((t) => !known.includes(t));
  if (bad.length) throw new Error(`--targets: unknown ${bad.join(", ")}`);
  return {
    guests,
    rounds: numberOption("rounds", values.rounds, 1, 50),
    // TCG guests move tens of Mbit/s: a few seconds per trial, the boots cost more.
    seconds: numberOption("seconds", values.seconds ?? (guests ? "4" : "5"), 1, 60),
    threads: numberOption("threads", values.threads, 1, 2),
    targets,
    out: values.out ??
      `${REPO}bench/results/${guests ? "tcp-guests-latest.json" : "tcp-latest.json"}`,
  };
}, USAGE);

if (opts.guests) {
  Deno.exit(
    await guestsMain({
      rounds: opts.rounds,
      seconds: opts.seconds,
      targets: opts.targets as GuestTarget[],
      out: opts.out,
    }),
  );
}

const skip = netnsSkipReason();
if (skip) {
  console.error(`bench/tcp.ts: ${skip}`);
  Deno.exit(1);
}

const id = `${(Deno.pid % 46656).toString(36)}`;
const NS = [`bt${id}a`, `bt${id}b`];
const HOST_IF = [`bt${id}ah`, `bt${id}bh`];
const NS_IF = "eth0";
const ADDR = ["10.77.0.1", "10.77.0.2"];
const OVS_VSWITCHD = "/usr/sbin/ovs-vswitchd";
/** OVS's bridge: a netdev bridge also makes an internal port of this name in the root namespace. */
const OVS_BR = `bt${id}ovs`;

async function setUp(): Promise<void> {
  for (let i = 0; i < 2; i++) {
    await run("ip", ["netns", "add", NS[i]]);
    await run("ip", [
      "link",
      "add",
      HOST_IF[i],
      "type",
      "veth",
      "peer",
      "name",
      NS_IF,
      "netns",
      NS[i],
    ]);
    await run("ip", ["-n", NS[i], "addr", "add", `${ADDR[i]}/24`, "dev", NS_IF]);
    await run("ip", ["-n", NS[i], "link", "set", NS_IF, "up"]);
    await run("ip", ["-n", NS[i], "link", "set", "lo", "up"]);
    await run("ip", ["link", "set", HOST_IF[i], "up"]);
  }
}

async function tearDown(): Promise<void> {
  for (let i = 0; i < 2; i++) {
    await run("ip", ["link", "del", HOST_IF[i]]).catch(() => {});
    await run("ip", ["netns", "del", NS[i]]).catch(() => {});
  }
}

/** A running target: the pid whose CPU time is its cost (0: not measurable), and stop(). */
interface Running {
  pid: number;
  stop(): Promise<void>;
}

async function startSwitch(dir: string): Promise<Running> {
  const topology = `${dir}/switch.json`;
  await Deno.writeTextFile(
    topology,
    JSON.stringify({
      name: "bench-tcp",
      http: { listen: `127.0.0.1:${freePort()}` },
      threads: opts.threads,
      ports: HOST_IF.map((i, k) => ({ name: `p${k}`, type: "af-packet", interface: i })),
    }),
  );
  const sw = new SwitchProcess(topology);
  await sw.waitForLine(/datapath thread/);
  return { pid: sw.pid, stop: async () => void await sw.stop() };
}

async function startBridge(): Promise<Running> {
  const br = `bt${id}br`;
  await run("ip", ["link", "add", br, "type", "bridge"]);
  for (const i of HOST_IF) await run("ip", ["link", "set", i, "master", br]);
  await run("ip", ["link", "set", br, "up"]);
  return {
    pid: 0,
    stop: async () => {
      for (const i of HOST_IF) await run("ip", ["link", "set", i, "nomaster"]).catch(() => {});
      await run("ip", ["link", "del", br]).catch(() => {});
    },
  };
}

let ovsRuns = 0;

/** OVS with a private database and run directory; tso must be set before vswitchd starts. */
async function startOvs(dir: string, tso: boolean): Promise<Running> {
  const d = `${dir}/ovs-${tso ? "tso" : "plain"}-${ovsRuns++}`;
  await Deno.mkdir(d, { recursive: true });
  const db = `unix:${d}/db.sock`;
  const vsctl = (...args: string[]) => run("ovs-vsctl", [`--db=${db}`, "--timeout=20", ...args]);
  await run("ovsdb-tool", ["create", `${d}/conf.db`, "/usr/share/openvswitch/vswitch.ovsschema"]);
  await run("ovsdb-server", [
    `${d}/conf.db`,
    `--remote=punix:${d}/db.sock`,
    `--pidfile=${d}/ovsdb.pid`,
    `--unixctl=${d}/ovsdb.ctl`,
    `--log-file=${d}/ovsdb.log`,
    "--detach",
  ]);
  await vsctl("--no-wait", "init");
  await vsctl("--no-wait", "set", "Open_vSwitch", ".", `other_config:userspace-tso-enable=${tso}`);
  await run("env", [
    `OVS_RUNDIR=${d}`,
    OVS_VSWITCHD,
    db,
    `--pidfile=${d}/vswitchd.pid`,
    `--unixctl=${d}/vswitchd.ctl`,
    `--log-file=${d}/vswitchd.log`,
    "--detach",
  ]);
  await vsctl("add-br", OVS_BR, "--", "set", "bridge", OVS_BR, "datapath_type=netdev");
  for (const i of HOST_IF) await vsctl("add-port", OVS_BR, i);
  const pid = Number((await Deno.readTextFile(`${d}/vswitchd.pid`)).trim());
  return {
    pid,
    stop: async () => {
      for (const daemon of ["vswitchd", "ovsdb"]) {
        await run("ovs-appctl", ["-t", `${d}/${daemon}.ctl`, "exit"]).catch(async () => {
          const p = Number(await Deno.readTextFile(`${d}/${daemon}.pid`).catch(() => "0"));
          if (p > 0) Deno.kill(p, "SIGKILL");
        });
      }
      // A killed OVS leaves its bridge's internal port (a tap) in the root namespace.
      await run("ip", ["link", "del", OVS_BR]).catch(() => {});
    },
  };
}

interface Trial {
  target: TargetName;
  round: number;
  gbps: number;
  retransmits: number;
  /** CPU seconds of the target's process per GB received (null: not measurable). */
  cpuPerGB: number | null;
  error?: string;
}

async function iperf(
  seconds: number,
): Promise<{ gbps: number; retransmits: number; bytes: number }> {
  const port = String(5201 + Math.floor(Math.random() * 1000));
  const server = new Deno.Command("ip", {
    args: ["netns", "exec", NS[1], "iperf3", "-s", "-1", "-p", port],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    await new Promise((r) => setTimeout(r, 300));
    const out = await run("ip", [
      ...["netns", "exec", NS[0], "iperf3", "-c", ADDR[1], "-p", port],
      ...["-t", String(seconds), "--connect-timeout", "3000", "-J"],
    ]).catch((err) => {
      // iperf3 -J prints its JSON (with "error") and exits non-zero when it cannot connect.
      const text = String(err.message);
      return text.slice(text.indexOf("{"));
    });
    const j = JSON.parse(out);
    if (j.error) throw new Error(j.error);
    return {
      gbps: j.end.sum_received.bits_per_second / 1e9,
      retransmits: j.end.sum_sent.retransmits ?? 0,
      bytes: j.end.sum_received.bytes,
    };
  } finally {
    try {
      server.kill("SIGKILL");
    } catch {
      // already exited
    }
    await server.status;
  }
}

async function trial(dir: string, target: TargetName, round: number): Promise<Trial> {
  let t: Running;
  try {
    t = target === "switch"
      ? await startSwitch(dir)
      : target === "bridge"
      ? await startBridge()
      : await startOvs(dir, target === "ovs-tso-on");
  } catch (err) {
    return { target, round, gbps: 0, retransmits: 0, cpuPerGB: null, error: String(err) };
  }
  try {
    await new Promise((r) => setTimeout(r, 500));
    const cpu0 = t.pid ? cpuSeconds(t.pid) : 0;
    const r = await iperf(opts.seconds);
    const cpu = t.pid ? cpuSeconds(t.pid) - cpu0 : 0;
    return {
      target,
      round,
      gbps: r.gbps,
      retransmits: r.retransmits,
      cpuPerGB: t.pid && r.bytes > 0 ? cpu / (r.bytes / 1e9) : null,
    };
  } catch (err) {
    return { target, round, gbps: 0, retransmits: 0, cpuPerGB: null, error: String(err) };
  } finally {
    await t.stop();
  }
}

const median = (xs: number[]) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function main(): Promise<number> {
  if (opts.targets.some((t) => t.startsWith("ovs")) && !exists(OVS_VSWITCHD)) {
    console.error(`bench/tcp.ts: ${OVS_VSWITCHD} missing (apt-get install openvswitch-switch)`);
    return 1;
  }
  const dir = await Deno.makeTempDir({ prefix: "bench-tcp-" });
  const trials: Trial[] = [];
  const load = () => Deno.loadavg().map((x) => x.toFixed(1)).join(" ");
  const loadBefore = load();
  try {
    await setUp();
    for (let round = 0; round < opts.rounds; round++) {
      const targets = opts.targets as TargetName[];
      const order = targets.map((_, k) => targets[(k + round) % targets.length]);
      for (const target of order) {
        const t = await trial(dir, target, round);
        trials.push(t);
        console.log(
          `round ${round + 1} ${target.padEnd(12)} ${t.gbps.toFixed(2)} Gbit/s, ` +
            `${t.retransmits} retransmits` +
            (t.cpuPerGB === null ? "" : `, ${t.cpuPerGB.toFixed(2)} CPU s/GB`) +
            (t.error ? ` (${t.error})` : ""),
        );
      }
    }
  } finally {
    await tearDown();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const summary = (opts.targets as TargetName[]).map((target) => {
    const ts = trials.filter((t) => t.target === target);
    const cpu = ts.flatMap((t) => t.cpuPerGB === null ? [] : [t.cpuPerGB]);
    return {
      target,
      gbps: median(ts.map((t) => t.gbps)),
      gbpsAll: ts.map((t) => Number(t.gbps.toFixed(2))),
      retransmits: median(ts.map((t) => t.retransmits)),
      cpuPerGB: cpu.length ? median(cpu) : null,
      failed: ts.filter((t) => t.error).length,
    };
  });
  const ovs = summary.find((s) => s.target === "ovs-tso-on");
  const br = summary.find((s) => s.target === "bridge");
  console.log(`\nmedians of ${opts.rounds} rounds x ${opts.seconds} s, load average ${loadBefore}`);
  console.log(
    "target        Gbit/s  [all]                  retrans  CPU s/GB  vs OVS-TSO  vs bridge",
  );
  for (const s of summary) {
    const ratio = (x?: { gbps: number }) => x && x.gbps > 0 ? (s.gbps / x.gbps).toFixed(2) : "-";
    console.log(
      `${s.target.padEnd(12)} ${s.gbps.toFixed(2).padStart(6)}  ${
        JSON.stringify(s.gbpsAll).padEnd(22)
      } ${String(s.retransmits).padStart(7)}  ${
        (s.cpuPerGB === null ? "-" : s.cpuPerGB.toFixed(2)).padStart(8)
      }  ${ratio(ovs).padStart(10)}  ${ratio(br).padStart(9)}${
        s.failed ? `  (${s.failed} failed)` : ""
      }`,
    );
  }
  await Deno.writeTextFile(
    opts.out,
    JSON.stringify({ date: new Date().toISOString(), opts, loadBefore, trials, summary }, null, 2) +
      "\n",
  );
  console.log(`\nwritten to ${opts.out}`);
  return 0;
}

Deno.exit(await main());
