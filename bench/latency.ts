// `deno task bench:latency`: round-trip latency at a low frame rate through the switch's
// af-packet ports, against the Linux bridge and Open vSwitch's userspace datapath on the same
// set-up. Two namespaces, each behind a veth pair whose root end is a port of the system under
// test; `busybox ping -i 0.002` from one to the other (500 frames/s each way); per-frame RTTs give
// p50/p90/p99. The switch runs with its default adaptive polling, so this is the latency a
// lightly loaded switch adds; its CPU use over a few idle seconds is reported beside it.
// Configurations alternate in every round (A B C A B C ...). Needs root.
import { optionsOrExit, REPO } from "./options.ts";
import { createVethNetns, netnsSkipReason, type VethNetns } from "../peers/netns.ts";
import { cpuSeconds, exists, freePort, onCleanup, Proc, run, sleep, waitFor } from "./pvp/proc.ts";
import { OVS_VSWITCHD, ovsMissing } from "./pvp/ovs.ts";
import { reportRtts, rttOptions } from "./rtt.ts";

const USAGE = `Usage: deno task bench:latency [options]   (as root)
  --only switch,switch-syscall,bridge,ovs
                             systems to measure (default all four)
  --rounds R                 alternating rounds (default 3)
  --count N                  pings per trial (default 1000)
  --interval S               seconds between pings (default 0.002)
  --idle S                   seconds of idle CPU measured per switch trial (default 3)
  --out DIR                  where results go (default bench/results)`;

/** `switch` (TPACKET_V3 rings, the default) or `switch-syscall` (io: "syscall", one recv per
 * frame): the pair shows how long frames wait in an RX block before the kernel hands it over. */
type Kind = "switch" | "switch-syscall" | "bridge" | "ovs";
/** BusyBox's ping (busybox-static, which the guest images need anyway): `-i` takes fractions. */
const PING = ["busybox", "ping"];

const KINDS: readonly Kind[] = ["switch", "switch-syscall", "bridge", "ovs"];
const options = () => rttOptions(KINDS, USAGE, 0.0002);

interface Running {
  stop(): Promise<void>;
  /** The process whose CPU time is the system's own (none for the kernel bridge). */
  pid?: number;
}

async function startSwitch(dir: string, ifs: string[], io: "ring" | "syscall"): Promise<Running> {
  const listen = `127.0.0.1:${freePort()}`;
  const topology = {
    name: "lat",
    http: { listen },
    threads: 1,
    ports: ifs.map((iface, i) => ({ name: `p${i}`, type: "af-packet", interface: iface, io })),
  };
  await Deno.writeTextFile(`${dir}/topology.json`, JSON.stringify(topology));
  const proc = new Proc("switch", [
    Deno.execPath(),
    "run",
    "--allow-all",
    `${REPO}mod.ts`,
    `${dir}/topology.json`,
  ], { cwd: REPO });
  await waitFor("the switch's HTTP endpoint", async () => {
    if (proc.exited) throw new Error(`the switch exited\n${proc.describe()}`);
    return await fetch(`http://${listen}/health`).then((r) => r.ok || undefined, () => undefined);
  }, 30_000);
  return { pid: proc.pid, stop: () => proc.stop() };
}

async function startBridge(tag: string, ifs: string[]): Promise<Running> {
  const br = `lat${tag}`;
  await run(["ip", "link", "add", br, "type", "bridge"]);
  for (const i of ifs) await run(["ip", "link", "set", i, "master", br]);
  await run(["ip", "link", "set", br, "up"]);
  return {
    stop: async () => {
      for (const i of ifs) await run(["ip", "link", "set", i, "nomaster"]).catch(() => {});
      await run(["ip", "link", "del", br]).catch(() => {});
    },
  };
}

/** OVS's userspace (netdev) datapath with the veths as system ports; no DPDK. */
async function startOvs(dir: string, ifs: string[]): Promise<Running> {
  const env = { OVS_RUNDIR: dir, OVS_DBDIR: dir, OVS_LOGDIR: dir, OVS_SYSCONFDIR: dir };
  const db = `unix:${dir}/db.sock`;
  const vsctl = (...a: string[]) => run(["ovs-vsctl", `--db=${db}`, "--timeout=30", ...a], env);
  await run(["ovsdb-tool", "create", `${dir}/conf.db`, "/usr/share/openvswitch/vswitch.ovsschema"]);
  const procs = [
    new Proc("ovsdb-server", [
      "ovsdb-server",
      `${dir}/conf.db`,
      `--remote=punix:${dir}/db.sock`,
      `--unixctl=${dir}/ovsdb.ctl`,
    ], { env }),
  ];
  const stop = async () => {
    for (const p of procs.reverse()) await p.stop();
  };
  try {
    await waitFor("ovsdb-server", () => exists(`${dir}/db.sock`) || undefined, 10_000);
    await vsctl("--no-wait", "init");
    procs.push(
      new Proc("ovs-vswitchd", [OVS_VSWITCHD, db, `--unixctl=${dir}/vswitchd.ctl`], { env }),
    );
    await vsctl(
      ...["add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev"],
      ...ifs.flatMap((i) => ["--", "add-port", "br0", i]),
    );
    return { pid: procs[1].pid, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

interface Result {
  kind: Kind;
  round: number;
  rttMs: number[];
  sent: number;
  idleCpuPercent: number | null;
}

async function trial(
  kind: Kind,
  round: number,
  dir: string,
  a: VethNetns,
  b: VethNetns,
  o: ReturnType<typeof options>,
): Promise<Result> {
  const ifs = [a.hostIf, b.hostIf];
  const sys = kind.startsWith("switch")
    ? await startSwitch(dir, ifs, kind === "switch" ? "ring" : "syscall")
    : kind === "bridge"
    ? await startBridge(`${Deno.pid % 10000}`, ifs)
    : await startOvs(dir, ifs);
  const unregister = onCleanup(() => sys.stop());
  try {
    // Learn both MACs (and ARP) first; then measure.
    await a.exec([...PING, "-c", "20", "-i", "0.01", "-w", "5", "10.66.0.2"]).catch(() => "");
    let idle: number | null = null;
    if (sys.pid && o.idle > 0) {
      await sleep(500);
      const c0 = cpuSeconds(sys.pid);
      const t0 = performance.now();
      await sleep(o.idle * 1000);
      idle = (100 * (cpuSeconds(sys.pid) - c0)) / ((performance.now() - t0) / 1000);
    }
    const out = await a.exec([...PING, "-c", `${o.count}`, "-i", `${o.interval}`, "10.66.0.2"])
      .catch((e: unknown) => String(e));
    const rttMs = [...out.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
    return { kind, round, rttMs, sent: o.count, idleCpuPercent: idle };
  } finally {
    unregister();
    await sys.stop();
  }
}

async function main() {
  const o = optionsOrExit(options, USAGE);
  const why = netnsSkipReason();
  if (why) {
    console.error(`cannot run the latency bench: ${why}`);
    Deno.exit(1);
  }
  const kinds = o.kinds.filter((k) => k !== "ovs" || !ovsMissing());
  const root = await Deno.makeTempDir({ prefix: "lat-" });
  await using a = await createVethNetns({ nsAddr: "10.66.0.1/24" });
  await using b = await createVethNetns({ nsAddr: "10.66.0.2/24" });
  const loadavg = (await Deno.readTextFile("/proc/loadavg")).trim();
  const results: Result[] = [];
  try {
    for (let round = 1; round <= o.rounds; round++) {
      for (const kind of kinds) {
        const dir = `${root}/${round}-${kind}`;
        await Deno.mkdir(dir);
        console.error(`round ${round}: ${kind}`);
        results.push(await trial(kind, round, dir, a, b, o));
      }
    }
  } finally {
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
  await reportRtts(
    `ping -i ${o.interval} -c ${o.count}, ${o.rounds} rounds, load average at start ${loadavg}`,
    kinds,
    results,
    o,
    loadavg,
    "latency-latest.json",
  );
}

if (import.meta.main) await main();
