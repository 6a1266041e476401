// One PVP trial: start a target, connect one testpmd with two virtio-user ports to it in `mac`
// forwarding (port 0 -> target -> port 1 -> testpmd -> port 0 ...), seed the loop with one
// tx-first burst per port, warm up, then read the front-end's port counters over fixed periods.

/** txonly bursts (of 32 frames) each port sends into the loop at the start. */
export const TX_FIRST_BURSTS = 4;
// Afterwards the loop is drained in rxonly mode so every frame is accounted for.
import { type PortStats, Testpmd, virtioUserVdev } from "../../peers/testpmd.ts";
import {
  checkInterrupted,
  cpuSeconds,
  DPDK_PREFIX,
  onCleanup,
  shellLine,
  sleep,
  systemBusySeconds,
} from "./proc.ts";
import { startTarget, type TargetCounters, targetLabel, type TargetSpec } from "./targets.ts";

export const MACS = ["02:00:00:00:00:01", "02:00:00:00:00:02"] as const;

export interface TrialOptions {
  /** Wire frame size with FCS: 64 means 60 bytes in the buffer. */
  size: number;
  warmupSeconds: number;
  periods: number;
  periodSeconds: number;
  /** The front-end asks for TX checksum offload, so its virtio-user ports negotiate CSUM. */
  frontendOffloads?: boolean;
  /** Scratch dir for this trial (sockets, topology, OVS db). */
  dir: string;
  tag: string;
  progress: (msg: string) => void;
}

export interface Period {
  seconds: number;
  /** Mpps per direction: port 0 -> 1 (port 1's RX) and 1 -> 0 (port 0's RX). */
  mpps: [number, number];
  /** Target CPU seconds in the period. */
  cpuSeconds: number;
  /** Target CPU seconds per million frames forwarded (both directions). */
  cpuPerMframe: number;
  frontEndCpuSeconds: number;
  /** CPUs' worth of busy time outside the target and the front-end (other work on the host). */
  otherCpus: number;
}

export interface Integrity {
  sent: number;
  received: number;
  /** sent - received: frames that never came back to the front-end. */
  lost: number;
  /** Drops the target counted itself (null when it cannot say). */
  targetDrops: number | null;
  dropDetail: Record<string, number>;
  /** Bytes per frame as counted by the front-end's RX and by the target's RX. */
  frameLen: { expected: number; frontEnd: number; target: number[] };
  /** The target's MAC table after the run (switch only): exactly MAC0 on p0, MAC1 on p1. */
  fdb: string[] | null;
  /** Every check below held. */
  ok: boolean;
  problems: string[];
  extra: Record<string, number>;
}

export interface Trial {
  config: string;
  size: number;
  periods: Period[];
  integrity: Integrity | null;
  commands: string[];
  error?: string;
}

interface Snapshot {
  t: number;
  stats: PortStats[];
  cpu: number;
  feCpu: number;
  busy: number;
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

export async function runTrial(spec: TargetSpec, o: TrialOptions): Promise<Trial> {
  const config = targetLabel(spec);
  const trial: Trial = { config, size: o.size, periods: [], integrity: null, commands: [] };
  let target;
  try {
    checkInterrupted();
    o.progress(`starting ${config}`);
    target = await startTarget(spec, o.dir, o.tag);
  } catch (e) {
    return { ...trial, error: (e as Error).message };
  }
  trial.commands.push(...target.commands);
  let fe: Testpmd | null = null;
  let unkill = () => {};
  try {
    checkInterrupted();
    o.progress("starting the front-end testpmd");
    fe = await Testpmd.launch({
      name: "front-end",
      // The forwarding lcore on CPU 1, the target's busy thread(s) mostly on CPU 0.
      lcores: "0@0,1@1",
      filePrefix: `${DPDK_PREFIX}fe${o.tag}`,
      vdevs: target.sockets.map((path, index) =>
        virtioUserVdev({ index, path, mac: MACS[index], packedVq: spec.packed })
      ),
      args: [
        "--forward-mode=mac",
        `--eth-peer=0,${MACS[1]}`,
        `--eth-peer=1,${MACS[0]}`,
        // testpmd buffers carry no FCS: a 64 B wire frame is 60 bytes here.
        `--txpkts=${o.size - 4}`,
        // RTE_ETH_TX_OFFLOAD_UDP_CKSUM | TCP_CKSUM: DPDK's virtio PMD then negotiates CSUM.
        ...(o.frontendOffloads ? ["--tx-offloads=0xc"] : []),
      ],
    });
    const f = fe;
    unkill = onCleanup(() => f.kill());
    // Interactive mode ignores --tx-first; `start tx_first N` sends N txonly bursts per port.
    // Several bursts keep enough frames in the loop that it measures throughput, not one
    // burst's round trip (which on 2 shared cores is mostly scheduling latency).
    trial.commands.push(shellLine(fe.argv), `testpmd> start tx_first ${TX_FIRST_BURSTS}`);
    await fe.waitLinkUp([0, 1]);
    await target.ready();
    await fe.cmd(`start tx_first ${TX_FIRST_BURSTS}`);
    o.progress(`warming up ${o.warmupSeconds} s`);
    await sleep(o.warmupSeconds * 1000);
    const snap = async (): Promise<Snapshot> => {
      const stats = await f.portStats();
      const t = performance.now();
      const cpu = sum(target.pids.map(cpuSeconds));
      return { t, stats, cpu, feCpu: cpuSeconds(f.pid), busy: systemBusySeconds() };
    };
    let prev = await snap();
    const start = prev.t;
    for (let k = 1; k <= o.periods; k++) {
      // Fixed boundaries: a slow stats query does not stretch the next period.
      await sleep(Math.max(0, start + k * o.periodSeconds * 1000 - performance.now()));
      const cur = await snap();
      const seconds = (cur.t - prev.t) / 1000;
      const rx = [0, 1].map((p) => cur.stats[p].rxPackets - prev.stats[p].rxPackets);
      const cpu = cur.cpu - prev.cpu;
      const feCpu = cur.feCpu - prev.feCpu;
      const period: Period = {
        seconds,
        mpps: [rx[1] / seconds / 1e6, rx[0] / seconds / 1e6],
        cpuSeconds: cpu,
        cpuPerMframe: cpu / (sum(rx) / 1e6),
        frontEndCpuSeconds: feCpu,
        otherCpus: Math.max(0, cur.busy - prev.busy - cpu - feCpu) / seconds,
      };
      trial.periods.push(period);
      const [a, b] = period.mpps.map((x) => x.toFixed(3));
      o.progress(`measuring period ${k}/${o.periods}: 0->1 ${a} Mpps, 1->0 ${b} Mpps`);
      prev = cur;
    }
    if (trial.periods.every((p) => p.mpps[0] + p.mpps[1] === 0)) {
      trial.error = "the loop is dead: no frames moved during the measurement";
    }
    o.progress("draining the loop and checking counters");
    trial.integrity = await drain(
      fe,
      () => target.counters(),
      o.size - 4,
      spec.kind.startsWith("switch"),
    );
  } catch (e) {
    trial.error = (e as Error).message;
  } finally {
    unkill();
    await fe?.quit(5000).catch(() => fe?.kill());
    await target.stop();
  }
  return trial;
}

/**
 * Stops `mac` forwarding and receives whatever is still in flight in rxonly mode. When nothing
 * moves any more, every frame sent is either received or dropped somewhere. (No `set verbose`
 * here: testpmd's forwarding lcore prints frames into the middle of the prompt, which then never
 * parses.) Corruption shows as wrong byte counts per frame, or as extra MACs in the switch's FDB.
 */
async function drain(
  fe: Testpmd,
  counters: () => Promise<TargetCounters>,
  frameLen: number,
  strict: boolean,
): Promise<Integrity> {
  await fe.cmd("stop");
  // flush_rx off: frames waiting in the RX rings are received and counted, not discarded.
  for (const c of ["set fwd rxonly", "set flush_rx off", "start"]) await fe.cmd(c);
  let last = "";
  let still = 0;
  const deadline = Date.now() + 10_000;
  let tc = await counters();
  while (still < 3 && Date.now() < deadline) {
    await sleep(200);
    const st = await fe.portStats();
    tc = await counters();
    const now = JSON.stringify([st.map((s) => s.rxPackets), tc.rxPackets, tc.txPackets]);
    still = now === last ? still + 1 : 0;
    last = now;
  }
  await fe.cmd("stop");
  const st = await fe.portStats();
  tc = await counters();
  const sent = st[0].txPackets + st[1].txPackets;
  const received = st[0].rxPackets + st[1].rxPackets;
  const problems: string[] = [];
  const check = (cond: boolean, what: string) => cond || problems.push(what);
  // Per port: what the front-end sent is what the target received, and back.
  for (const p of [0, 1]) {
    if (!Number.isFinite(tc.rxPackets[p])) continue; // OVS: no per-port counters
    check(
      st[p].txPackets === tc.rxPackets[p],
      `port ${p}: front-end TX ${st[p].txPackets} != target RX ${tc.rxPackets[p]}`,
    );
    check(
      st[p].rxPackets === tc.txPackets[p],
      `port ${p}: front-end RX ${st[p].rxPackets} != target TX ${tc.txPackets[p]}`,
    );
    check(st[p].rxErrors === 0 && st[p].txErrors === 0, `port ${p}: front-end RX/TX errors`);
  }
  check(
    sent === received + tc.drops,
    `sent ${sent} != received ${received} + target drops ${tc.drops}`,
  );
  const feLen = (st[0].rxBytes + st[1].rxBytes) / received;
  const targetLen = [0, 1].map((p) => tc.rxBytes[p] / tc.rxPackets[p]);
  check(feLen === frameLen, `front-end RX frames average ${feLen} bytes, expected ${frameLen}`);
  if (targetLen.some(Number.isFinite)) {
    check(targetLen.every((l) => l === frameLen), `target RX frames average ${targetLen} bytes`);
  }
  if (tc.fdb) {
    const want = [`${MACS[0]} p0`, `${MACS[1]} p1`];
    check(JSON.stringify(tc.fdb) === JSON.stringify(want), `FDB holds ${tc.fdb.join(", ")}`);
  }
  return {
    sent,
    received,
    lost: sent - received,
    targetDrops: tc.drops,
    dropDetail: tc.dropDetail,
    frameLen: { expected: frameLen, frontEnd: feLen, target: targetLen },
    fdb: tc.fdb ?? null,
    // Only the switch is held to exact accounting; OVS and the wire are shown for comparison.
    ok: strict ? problems.length === 0 : true,
    problems,
    extra: tc.extra,
  };
}
