// The systems under test. Each one serves two vhost-user sockets that the front-end testpmd's
// virtio-user ports connect to (the front-end is a client in every case, so all three see the
// same front-end) and forwards between them.
import { Testpmd, vhostVdev } from "../../peers/testpmd.ts";
import { startOvs } from "./ovs.ts";
import {
  DPDK_PREFIX,
  exists,
  freePort,
  onCleanup,
  Proc,
  removeDpdkRuntime,
  shellLine,
  sleep,
  waitFor,
} from "./proc.ts";

import { REPO } from "../options.ts";

/** "switch-noflows": the switch with flow counting off (poll.flowStats false), for its cost. */
export type TargetKind = "switch" | "switch-noflows" | "ovs" | "wire";

export interface TargetSpec {
  kind: TargetKind;
  /** Datapath threads (switch only). */
  threads?: number;
  /** The front-end's ring layout (virtio-user packed_vq); split unless asked. */
  packed?: boolean;
  /** Another checkout of the switch to run instead of this one (an A/B baseline). */
  repo?: string;
  /** The switch with its default adaptive polling instead of busy polling on pinned CPUs. */
  adaptive?: boolean;
}

export const targetLabel = (s: TargetSpec) =>
  (s.kind === "switch"
    ? `${s.repo ? "base" : "switch"}-t${s.threads ?? 1}`
    : s.kind === "switch-noflows"
    ? `switch-t${s.threads ?? 1}-noflows`
    : s.kind) +
  (s.packed ? "-packed" : "");

/** Per-port counters as the target sees them (index = front-end port). */
export interface TargetCounters {
  rxPackets: [number, number];
  txPackets: [number, number];
  rxBytes: [number, number];
  /** Frames received from both ports, when the target cannot tell them apart (OVS). */
  rxTotal?: number;
  /** Learned MACs as "mac port", sorted (switch only). */
  fdb?: string[];
  /** Every counted drop, all ports. */
  drops: number;
  /** Non-zero drop counters by port and name, for the report. */
  dropDetail: Record<string, number>;
  /** Anything else worth showing (e.g. flooded vs unicast). */
  extra: Record<string, number>;
}

export interface Target {
  sockets: [string, string];
  /** Processes whose CPU time is charged to the target. */
  pids: number[];
  /** The exact command lines that started it. */
  commands: string[];
  /** Resolves once the target forwards both ways (after the front-end connected). */
  ready(): Promise<unknown>;
  counters(): Promise<TargetCounters>;
  stop(): Promise<void>;
}

export function startTarget(spec: TargetSpec, dir: string, tag: string): Promise<Target> {
  if (spec.kind === "switch" || spec.kind === "switch-noflows") {
    return startSwitch(
      dir,
      spec.threads ?? 1,
      spec.repo ?? REPO,
      spec.kind === "switch",
      spec.adaptive ?? false,
    );
  }
  if (spec.kind === "ovs") return startOvs(dir, `${DPDK_PREFIX}ovs${tag}`);
  return startWire(dir, `${DPDK_PREFIX}wire${tag}`);
}

/** The switch as its own process, exactly as `deno task start` runs it. */
async function startSwitch(
  dir: string,
  threads: number,
  repo: string,
  flowStats: boolean,
  adaptive: boolean,
): Promise<Target> {
  const listen = `127.0.0.1:${freePort()}`;
  const sockets: [string, string] = [`${dir}/p0.sock`, `${dir}/p1.sock`];
  const topology = {
    name: "pvp",
    http: { listen },
    threads,
    // Busy polling on pinned CPUs, like an OVS PMD thread (pmd-cpu-mask 0x1 in ovs.ts): the
    // first worker on CPU 0, opposite the front-end's forwarding lcore on CPU 1. Adaptive: the
    // defaults a user gets (workers sleep on the guests' kicks when idle, no pinning).
    poll: {
      ...(adaptive ? {} : { mode: "busy", cpus: Array.from({ length: threads }, (_, w) => w % 2) }),
      ...(flowStats ? {} : { flowStats: false }),
    },
    ports: sockets.map((socket, i) => ({ name: `p${i}`, type: "vhost-user", socket })),
  };
  const topoPath = `${dir}/topology.json`;
  await Deno.writeTextFile(topoPath, JSON.stringify(topology, null, 2) + "\n");
  // PVP_V8_FLAGS=--prof profiles the switch in the loop (bench/README.md, bench/ticks.ts).
  const v8Flags = Deno.env.get("PVP_V8_FLAGS");
  const argv = [Deno.execPath(), "run", "--allow-all"];
  if (v8Flags) argv.push(`--v8-flags=${v8Flags}`);
  argv.push(`${repo}mod.ts`, topoPath);
  const proc = new Proc("switch", argv, { cwd: repo });
  const get = async (path: string) => {
    const res = await fetch(`http://${listen}${path}`).catch((e) => {
      throw new Error(`GET ${path}: ${e.message} (${e.cause ?? "no cause"})\n${proc.describe()}`);
    });
    if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status}: ${await res.text()}`);
    return await res.json();
  };
  const ports = async (): Promise<{ state: string; counters: Record<string, number> }[]> =>
    (await get("/ports")).ports;
  try {
    await waitFor(
      "the switch's HTTP endpoint and sockets",
      async () => {
        if (proc.exited) throw new Error(`the switch exited\n${proc.describe()}`);
        const up = await get("/health").then(() => true, () => false);
        return (up && sockets.every(exists)) || undefined;
      },
      30_000,
      () => proc.describe(),
    );
  } catch (e) {
    await proc.stop();
    throw e;
  }
  return {
    sockets,
    pids: [proc.pid],
    commands: [shellLine(argv), `# ${topoPath}: ${JSON.stringify(topology)}`],
    ready: () =>
      waitFor(
        "both switch ports connected",
        async () => {
          if (proc.exited) throw new Error(`the switch exited\n${proc.describe()}`);
          return (await ports()).every((p) => p.state === "connected") || undefined;
        },
        20_000,
        () => proc.describe(),
      ),
    async counters() {
      const ps = await ports();
      const c: TargetCounters = {
        rxPackets: [0, 0],
        txPackets: [0, 0],
        rxBytes: [0, 0],
        drops: 0,
        dropDetail: {},
        extra: {},
        fdb: (await get("/fdb")).entries.map((e: { mac: string; port: string }) =>
          `${e.mac} ${e.port}`
        )
          .sort(),
      };
      ps.forEach((p, i) => {
        c.rxPackets[i] = p.counters.rx_packets;
        c.txPackets[i] = p.counters.tx_packets;
        c.rxBytes[i] = p.counters.rx_bytes;
        // Drop counters are named drop_* (port) and drop* (bridge): take them all.
        for (const [k, v] of Object.entries(p.counters)) {
          if (/^drop/i.test(k)) c.drops += v;
          if (/^drop/i.test(k) && v) c.dropDetail[`p${i}.${k}`] = v;
          if (k === "flooded" || k === "unicast") c.extra[`p${i}.${k}`] = v;
        }
      });
      return c;
    },
    stop: () => proc.stop(),
  };
}

/** DPDK's own vhost back-end forwarding port 0 <-> port 1 in io mode: the wire, an upper bound. */
async function startWire(dir: string, prefix: string): Promise<Target> {
  const sockets: [string, string] = [`${dir}/w0.sock`, `${dir}/w1.sock`];
  const opts = {
    name: "wire",
    // The forwarding lcore on CPU 0; the front-end forwards on CPU 1.
    lcores: "0@1,1@0",
    filePrefix: prefix,
    vdevs: sockets.map((iface, index) => vhostVdev({ index, iface })),
    args: ["--forward-mode=io"],
  };
  const unregister = onCleanup(() => removeDpdkRuntime(prefix));
  const be = await Testpmd.launch(opts);
  const unkill = onCleanup(() => be.kill());
  await be.start();
  const stats = async (): Promise<TargetCounters> => {
    const s = await be.portStats();
    // io mode sends what port i receives out of port 1-i; what it could not send is lost there.
    const drops = Math.max(0, s[0].rxPackets - s[1].txPackets) +
      Math.max(0, s[1].rxPackets - s[0].txPackets);
    return {
      rxPackets: [s[0].rxPackets, s[1].rxPackets],
      txPackets: [s[0].txPackets, s[1].txPackets],
      rxBytes: [s[0].rxBytes, s[1].rxBytes],
      drops,
      dropDetail: drops ? { "rx-not-forwarded": drops } : {},
      extra: {},
    };
  };
  return {
    sockets,
    pids: [be.pid],
    commands: [shellLine(be.argv), "testpmd> start"],
    ready: () => sleep(300),
    counters: stats,
    async stop() {
      unkill();
      await be.quit(5000);
      await removeDpdkRuntime(prefix);
      unregister();
    },
  };
}
