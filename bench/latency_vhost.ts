// `deno task bench:latency-vhost`: round-trip latency at a low frame rate between two vhost-user
// front-ends through the system under test, the way two guests on one host see it. The
// front-ends (peers/vhost_frontend.ts, driven from this process, so both ends read one clock)
// stamp nothing into the frame: A sends a 60-byte frame to B and notes the time, B sends it back
// as soon as it sees it, A notes when the echo lands. Both ends poll their RX rings only while a
// frame is in flight and kick the system as a guest driver does (unless it asked not to be
// kicked), so a system that sleeps while idle has to wake up on the kick, twice per round trip.
// Between round trips the front-ends wait `--interval` seconds.
//
// Systems: the switch with its default adaptive polling (workers sleep on the kick eventfds when
// idle), the switch busy polling a pinned CPU, OVS-DPDK (`dpdkvhostuser` ports, a busy PMD
// thread) and testpmd's own vhost ports forwarding in io mode (the wire). Configurations alternate
// in every round; each trial also reports the system's CPU use over a few idle seconds.
import { VhostFrontend } from "../peers/vhost_frontend.ts";
import { optionsOrExit } from "./options.ts";
import { ovsMissing } from "./pvp/ovs.ts";
import {
  cleanupAll,
  cpuSeconds,
  finalCleanup,
  isInterrupted,
  onCleanup,
  sleep,
  trapSignals,
} from "./pvp/proc.ts";
import { startTarget, type Target, type TargetSpec } from "./pvp/targets.ts";
import { reportRtts, rttOptions, type RttTrial } from "./rtt.ts";

const USAGE = `Usage: deno task bench:latency-vhost [options]
  --only switch,switch-busy,ovs,wire
                             systems to measure (default all four)
  --rounds R                 alternating rounds (default 3)
  --count N                  round trips per trial (default 1000)
  --interval S               seconds between round trips (default 0.002)
  --idle S                   seconds of idle CPU measured per trial (default 3)
  --out DIR                  where results go (default bench/results)`;

type Kind = "switch" | "switch-busy" | "ovs" | "wire";
const KINDS: Kind[] = ["switch", "switch-busy", "ovs", "wire"];
const SPECS: Record<Kind, TargetSpec> = {
  switch: { kind: "switch", adaptive: true },
  "switch-busy": { kind: "switch" },
  ovs: { kind: "ovs" },
  wire: { kind: "wire" },
};
const MAC_A = [0x52, 0x54, 0x00, 0x1a, 0x7e, 0x01];
const MAC_B = [0x52, 0x54, 0x00, 0x1a, 0x7e, 0x02];
/** IEEE 802 local experimental ethertype: nothing on the way interprets the payload. */
const ETHERTYPE = 0x88b5;
/** A frame that has not come back after this long counts as lost. */
const LOST_AFTER_MS = 500;

const options = () => rttOptions(KINDS, USAGE, 0.0005);

/** A 60-byte frame from `src` to `dst` carrying `seq`. */
function frame(dst: number[], src: number[], seq: number): Uint8Array {
  const f = new Uint8Array(60);
  f.set(dst, 0);
  f.set(src, 6);
  const view = new DataView(f.buffer);
  view.setUint16(12, ETHERTYPE);
  view.setUint32(14, seq);
  return f;
}

const seqOf = (f: Uint8Array) =>
  f.length >= 18 && ((f[12] << 8) | f[13]) === ETHERTYPE
    ? new DataView(f.buffer, f.byteOffset).getUint32(14)
    : -1;

/**
 * Spins on `fe`'s RX ring until the frame carrying `seq` arrives (true) or `deadline` passes;
 * the ring's buffers are posted again as they are used.
 */
function spinFor(fe: VhostFrontend, seq: number, deadline: number): boolean {
  for (;;) {
    const frames = fe.receive();
    if (frames.length) {
      fe.postRxBuffers(frames.length);
      if (frames.some((f) => seqOf(f) === seq)) return true;
    }
    if (performance.now() > deadline) return false;
  }
}

/** Round trips before each trial's idle period, not measured (see trial). */
const WARMUP_ROUND_TRIPS = 300;

/** `count` round trips A -> B -> A, `interval` s apart; the times of those that came back, ms. */
async function roundTrips(
  a: VhostFrontend,
  b: VhostFrontend,
  count: number,
  interval: number,
): Promise<number[]> {
  const rttMs: number[] = [];
  for (let seq = 0; seq < count; seq++) {
    await sleep(interval * 1000);
    const t0 = performance.now();
    a.send(frame(MAC_B, MAC_A, seq));
    if (spinFor(b, seq, t0 + LOST_AFTER_MS)) {
      b.send(frame(MAC_A, MAC_B, seq));
      if (spinFor(a, seq, t0 + LOST_AFTER_MS)) rttMs.push(performance.now() - t0);
    }
    a.reclaimTx();
    b.reclaimTx();
  }
  return rttMs;
}

/** Connects both front-ends and passes frames both ways until each end's MAC is learned. */
async function attach(target: Target): Promise<[VhostFrontend, VhostFrontend]> {
  const ends: VhostFrontend[] = [];
  try {
    for (const path of target.sockets) {
      const fe = await VhostFrontend.open(path);
      ends.push(fe);
      await fe.setup();
      fe.postRxBuffers(128);
    }
    await target.ready();
    const [a, b] = ends;
    // The first frames flood and teach the system both MACs; some systems need a moment after
    // the rings start before they forward (OVS's PMD picks new rings up on its next reload).
    for (let seq = 0x8000_0000, ok = false; !ok; seq++) {
      if (seq - 0x8000_0000 > 100) throw new Error("no frame crossed the system in 100 tries");
      a.send(frame(MAC_B, MAC_A, seq));
      const there = spinFor(b, seq, performance.now() + 100);
      b.send(frame(MAC_A, MAC_B, seq));
      ok = there && spinFor(a, seq, performance.now() + 100);
      a.reclaimTx();
      b.reclaimTx();
      await sleep(20);
    }
    return [a, b];
  } catch (e) {
    for (const fe of ends) fe.close();
    throw e;
  }
}

interface Trial extends RttTrial {
  round: number;
}

async function trial(kind: Kind, round: number, dir: string, o: ReturnType<typeof options>) {
  const target = await startTarget(SPECS[kind], dir, `${round}${kind}`);
  const unregister = onCleanup(() => target.stop());
  let ends: VhostFrontend[] = [];
  try {
    const [a, b] = ends = await attach(target);
    // This process's own round-trip code (the two front-ends, spinFor) is compiled by V8 on its
    // first few hundred round trips, on background threads that take a CPU meanwhile: whichever
    // system ran first in a run had its first round trips cost 4-16 ms for it. Warmed up here,
    // unmeasured, before the idle period (a sleeping system is still woken by the first measured
    // round trip).
    await roundTrips(a, b, WARMUP_ROUND_TRIPS, o.interval);
    let idle: number | null = null;
    if (o.idle > 0) {
      await sleep(500);
      const c0 = target.pids.reduce((n, p) => n + cpuSeconds(p), 0);
      const t0 = performance.now();
      await sleep(o.idle * 1000);
      const used = target.pids.reduce((n, p) => n + cpuSeconds(p), 0) - c0;
      idle = (100 * used) / ((performance.now() - t0) / 1000);
    }
    const rttMs = await roundTrips(a, b, o.count, o.interval);
    return { kind, round, rttMs, sent: o.count, idleCpuPercent: idle };
  } finally {
    for (const fe of ends) fe.close();
    unregister();
    await target.stop();
  }
}

async function main() {
  const o = optionsOrExit(options, USAGE);
  const ovsWhy = ovsMissing();
  if (ovsWhy && o.kinds.includes("ovs")) console.error(`ovs left out: ${ovsWhy}`);
  const kinds = o.kinds.filter((k) => k !== "ovs" || !ovsWhy);
  const untrap = trapSignals();
  finalCleanup();
  const root = await Deno.makeTempDir({ prefix: "latv-" });
  onCleanup(() => Deno.remove(root, { recursive: true }).catch(() => {}));
  const loadavg = (await Deno.readTextFile("/proc/loadavg")).trim();
  const trials: Trial[] = [];
  try {
    for (let round = 1; round <= o.rounds && !isInterrupted(); round++) {
      for (const kind of kinds) {
        const dir = `${root}/${round}-${kind}`;
        await Deno.mkdir(dir);
        console.error(`round ${round}: ${kind}`);
        trials.push(await trial(kind, round, dir, o));
      }
    }
  } finally {
    await cleanupAll();
    untrap();
  }
  if (isInterrupted()) Deno.exit(130);
  await reportRtts(
    `vhost-user round trips, 60 B, one every ${o.interval} s, ${o.count} per trial, ` +
      `${o.rounds} rounds, load average at start ${loadavg}`,
    kinds,
    trials,
    o,
    loadavg,
    "latency-vhost-latest.json",
  );
}

if (import.meta.main) await main();
