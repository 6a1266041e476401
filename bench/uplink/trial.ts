// One uplink trial: a fresh switch with `io` set on its af-packet uplink, a testpmd virtio-user
// front-end in rxonly on its vhost-user port, and the flood sender in the namespace. After a
// warm-up, fixed periods read testpmd's RX counter, the switch's counters and /proc CPU times.
import { Testpmd, virtioUserVdev } from "../../peers/testpmd.ts";
import type { VethNetns } from "../../peers/netns.ts";
import {
  checkInterrupted,
  cpuSeconds,
  exists,
  freePort,
  onCleanup,
  Proc,
  shellLine,
  sleep,
  systemBusySeconds,
  waitFor,
} from "../pvp/proc.ts";

import { REPO } from "../options.ts";
export const PMD_MAC = "02:00:00:00:00:01";
export type Io = "ring" | "syscall";

export interface TrialOptions {
  io: Io;
  /** Wire size with FCS: 64 is a 60-byte buffer. */
  size: number;
  warmupSeconds: number;
  periods: number;
  periodSeconds: number;
  poll: "adaptive" | "busy";
  /** CPUs for the switch's worker, the sender and testpmd's lcores (null: unpinned). */
  cpus: { switch: number; sender: number; testpmd: number } | null;
  via: "ring" | "send";
  /** testpmd's virtio-user ring size: room for what arrives while testpmd is not scheduled. */
  queueSize: number;
  ns: VethNetns;
  dir: string;
  dpdkPrefix: string;
  progress: (msg: string) => void;
}

export interface Period {
  seconds: number;
  /** Frames per second arriving at testpmd (its RX counter): the figure compared. */
  fps: number;
  /** Frames per second the sender got onto the veth (the offered load). */
  offeredFps: number;
  /** Of those, frames the kernel dropped before any socket saw them (a full backlog queue). */
  backlogDrops: number;
  /** Frames per second the switch took from the uplink socket. */
  uplinkRxFps: number;
  /** Frames the kernel dropped on the switch's socket (ring or receive buffer full). */
  kernelDrops: number;
  /** Frames the switch counted as dropped (every drop* counter of both ports). */
  switchDrops: number;
  /** Poll rounds of the switch's worker that moved frames, of all its rounds: ~1 = saturated. */
  busyFraction: number;
  /** CPUs' worth of time used by the switch process, the sender and testpmd. */
  switchCpus: number;
  senderCpus: number;
  testpmdCpus: number;
  /** Switch CPU microseconds per frame delivered. */
  switchUsPerFrame: number;
  /** Busy CPUs outside the three processes (the other work on the host). */
  otherCpus: number;
}

export interface Trial {
  io: Io;
  size: number;
  periods: Period[];
  commands: string[];
  /** The switch's drop counters at the end, by port and name (non-zero only). */
  dropDetail: Record<string, number>;
  error?: string;
}

type Counters = Record<string, number>;
interface PortJson {
  name: string;
  state: string;
  counters: Counters;
}

const veth = (ifname: string, what: string) =>
  Number(Deno.readTextFileSync(`/sys/class/net/${ifname}/statistics/${what}`));
const taskset = (cpu: number | undefined) =>
  cpu === undefined ? [] : ["taskset", "-c", String(cpu)];

export async function runTrial(o: TrialOptions): Promise<Trial> {
  const trial: Trial = { io: o.io, size: o.size, periods: [], commands: [], dropDetail: {} };
  const socket = `${o.dir}/vm.sock`;
  const listen = `127.0.0.1:${freePort()}`;
  const topology = {
    name: "uplink-bench",
    http: { listen },
    threads: 1,
    poll: { mode: o.poll, ...(o.cpus ? { cpus: [o.cpus.switch] } : {}) },
    // Static: every frame is unicast to testpmd from the first one, nothing is flooded.
    fdb: { static: [{ mac: PMD_MAC, port: "vm" }] },
    ports: [
      { name: "uplink", type: "af-packet", interface: o.ns.hostIf, io: o.io },
      { name: "vm", type: "vhost-user", socket },
    ],
  };
  const topoPath = `${o.dir}/topology.json`;
  await Deno.writeTextFile(topoPath, JSON.stringify(topology, null, 2) + "\n");
  const procs: Proc[] = [];
  let pmd: Testpmd | null = null;
  let unkill = () => {};
  try {
    checkInterrupted();
    o.progress(`starting the switch (io ${o.io})`);
    const swArgv = [Deno.execPath(), "run", "--allow-all", `${REPO}mod.ts`, topoPath];
    const sw = new Proc("switch", swArgv, { cwd: REPO });
    procs.push(sw);
    trial.commands.push(shellLine(swArgv), `# ${topoPath}: ${JSON.stringify(topology)}`);
    const get = async <T>(path: string): Promise<T> => {
      const res = await fetch(`http://${listen}${path}`);
      if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status}: ${await res.text()}`);
      return await res.json();
    };
    const ports = async () => (await get<{ ports: PortJson[] }>("/ports")).ports;
    await waitFor(
      "the switch's HTTP endpoint and socket",
      async () => {
        if (sw.exited) throw new Error(`the switch exited\n${sw.describe()}`);
        const up = await get("/health").then(() => true, () => false);
        return (up && exists(socket)) || undefined;
      },
      30_000,
      () => sw.describe(),
    );
    // The uplink logs its variant when it opens: proof that `io` reached AfPacketPort.open.
    const opened = `opened (${o.io}, `;
    await waitFor(
      `the uplink opened with io ${o.io}`,
      () => sw.describe().includes(opened) || undefined,
      5_000,
      () => sw.describe(),
    );

    o.progress("starting testpmd (virtio-user, rxonly)");
    const lcore = o.cpus?.testpmd;
    pmd = await Testpmd.launch({
      name: "testpmd",
      // The main lcore only reads commands: it may share the forwarding lcore's CPU.
      lcores: lcore === undefined ? "0@0,1@1" : `0@${lcore},1@${lcore}`,
      filePrefix: o.dpdkPrefix,
      vdevs: [virtioUserVdev({ index: 0, path: socket, mac: PMD_MAC, queueSize: o.queueSize })],
      totalNumMbufs: Math.max(16384, 2 * o.queueSize),
      // Without --rxd testpmd posts only 512 of the ring's buffers.
      args: ["--forward-mode=rxonly", `--rxd=${o.queueSize}`],
    });
    const fe = pmd;
    unkill = onCleanup(() => fe.kill());
    trial.commands.push(shellLine(fe.argv), "testpmd> start");
    await fe.waitLinkUp([0]);
    await waitFor(
      "the switch's vm port connected",
      async () => {
        const p = (await ports()).find((p) => p.name === "vm");
        return p?.state === "connected" || undefined;
      },
      20_000,
      () => sw.describe(),
    );
    await fe.start();

    o.progress(`starting the sender (${o.size} B frames via ${o.via})`);
    const sendArgv = [
      "ip",
      "netns",
      "exec",
      o.ns.name,
      ...taskset(o.cpus?.sender),
      Deno.execPath(),
      "run",
      "--allow-all",
      `${REPO}bench/uplink/flood.ts`,
      `--if=${o.ns.nsIf}`,
      `--len=${o.size - 4}`,
      `--dst=${PMD_MAC}`,
      `--via=${o.via}`,
    ];
    // `ip netns exec` and taskset exec the next program: the pid is the sender's own.
    const sender = new Proc("sender", sendArgv, { cwd: REPO });
    procs.push(sender);
    trial.commands.push(shellLine(sendArgv));
    const arrived0 = veth(o.ns.hostIf, "rx_packets");
    await waitFor(
      "frames from the sender",
      () => {
        if (sender.exited) throw new Error(`the sender exited\n${sender.describe()}`);
        return veth(o.ns.hostIf, "rx_packets") > arrived0 + 1000 || undefined;
      },
      20_000,
      () => sender.describe(),
    );
    o.progress(`warming up ${o.warmupSeconds} s`);
    await sleep(o.warmupSeconds * 1000);

    const snap = async () => {
      const st = await fe.portStats();
      const ps = await ports();
      const w = (await get<{ workers: { busyRounds: number; idleRounds: number }[] }>("/stats"))
        .workers[0];
      const t = performance.now();
      return {
        t,
        pmdRx: st[0].rxPackets,
        // veth counts what its peer sent into a full backlog as the receiver's rx_dropped.
        arrived: veth(o.ns.hostIf, "rx_packets"),
        backlog: veth(o.ns.hostIf, "rx_dropped"),
        ports: ps,
        busyRounds: w.busyRounds,
        rounds: w.busyRounds + w.idleRounds,
        cpu: [sw.pid, sender.pid, fe.pid].map(cpuSeconds),
        busy: systemBusySeconds(),
      };
    };
    const drops = (ps: PortJson[]) =>
      ps.reduce(
        (n, p) =>
          n + Object.entries(p.counters).reduce((m, [k, v]) => /^drop/i.test(k) ? m + v : m, 0),
        0,
      );
    const uplink = (ps: PortJson[]) => ps.find((p) => p.name === "uplink")!.counters;
    let prev = await snap();
    const start = prev.t;
    for (let k = 1; k <= o.periods; k++) {
      // Fixed boundaries: a slow stats query does not stretch the next period.
      await sleep(Math.max(0, start + k * o.periodSeconds * 1000 - performance.now()));
      checkInterrupted();
      const cur = await snap();
      const s = (cur.t - prev.t) / 1000;
      const cpu = cur.cpu.map((c, i) => (c - prev.cpu[i]) / s);
      const frames = cur.pmdRx - prev.pmdRx;
      const p: Period = {
        seconds: s,
        fps: frames / s,
        offeredFps: (cur.arrived - prev.arrived + cur.backlog - prev.backlog) / s,
        backlogDrops: cur.backlog - prev.backlog,
        uplinkRxFps: (uplink(cur.ports).rx_packets - uplink(prev.ports).rx_packets) / s,
        kernelDrops: uplink(cur.ports).kernel_drops - uplink(prev.ports).kernel_drops,
        switchDrops: drops(cur.ports) - drops(prev.ports),
        busyFraction: (cur.busyRounds - prev.busyRounds) / (cur.rounds - prev.rounds),
        switchCpus: cpu[0],
        senderCpus: cpu[1],
        testpmdCpus: cpu[2],
        switchUsPerFrame: frames ? (cpu[0] * s * 1e6) / frames : NaN,
        otherCpus: Math.max(0, (cur.busy - prev.busy) / s - cpu[0] - cpu[1] - cpu[2]),
      };
      trial.periods.push(p);
      o.progress(
        `period ${k}/${o.periods}: ${(p.fps / 1e6).toFixed(3)} Mfps at testpmd, offered ` +
          `${
            (p.offeredFps / 1e6).toFixed(3)
          }, kernel drops ${p.kernelDrops} + ${p.backlogDrops}, switch drops ` +
          `${p.switchDrops}, switch ${p.switchCpus.toFixed(2)} CPUs busy ${
            p.busyFraction.toFixed(2)
          }, other ${p.otherCpus.toFixed(2)}`,
      );
      prev = cur;
    }
    for (const port of prev.ports) {
      for (const [k, v] of Object.entries(port.counters)) {
        if (/^drop|^kernel_drops$/i.test(k) && v) trial.dropDetail[`${port.name}.${k}`] = v;
      }
    }
    if (trial.periods.every((p) => p.fps === 0)) {
      trial.error = `no frames reached testpmd\n${sw.describe()}`;
    }
  } catch (e) {
    trial.error = (e as Error).message;
  } finally {
    // The sender first, so nothing is in flight while the rest stops.
    for (const p of procs.slice(1)) await p.stop(2000);
    unkill();
    await pmd?.quit(5000).catch(() => pmd?.kill());
    for (const p of procs.slice(0, 1)) await p.stop();
  }
  return trial;
}
