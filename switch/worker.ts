// A datapath Worker: busy-polls the receive queues assigned to it in bursts, asks the bridge
// where each frame goes, copies it straight into the destination port (one copy, guest to
// guest) and hands the burst back to the sender. Control messages arrive between bursts.
/// <reference lib="deno.worker" />
import { CounterTable } from "../ports/counters.ts";
import type { DatapathPort } from "../ports/port.ts";
import { DirtyLog } from "../ports/vhost_user/dirty_log.ts";
import { GuestMemory } from "../ports/vhost_user/memory.ts";
import { isGuestRxRing, type VirtQueue } from "../ports/vhost_user/virtqueue.ts";
import { openQueue, VirtioNetDatapath } from "../ports/vhost_user/virtio_net.ts";
import { Bridge } from "./bridge.ts";
import { Fdb } from "./fdb.ts";
import { IdleSleeper } from "./idle.ts";
import { pinThreadToCpu } from "../ffi/fd.ts";
import { TapWriter } from "./tap.ts";
import { OneFrame } from "./announce.ts";
import { announcePeerWritesIn, interruptedPeerWrites } from "../ports/peer_eventfd.ts";
import { currentThread, currentThreadId } from "../ffi/signal.ts";
import { FlowCounter } from "./flows.ts";
import { Forwarder, type PolledPort } from "./forward.ts";
import { AfPacketRingDatapath, createAfPacketDatapath } from "../ports/af_packet/datapath.ts";
import { VxlanDatapath } from "../ports/vxlan/datapath.ts";
import { guardsIngress, IngressGuard, PolicedPort } from "./port_guard.ts";
import { MirrorEgress, MirrorIngress } from "./mirror.ts";
import type { SafetyPlan } from "./safety.ts";
import { SafetyCounters } from "./safety_counters.ts";
import {
  type FromWorker,
  STAT_BUSY_MS,
  STAT_BUSY_ROUNDS,
  STAT_FAILURES,
  STAT_FRAMES,
  STAT_IDLE_ROUNDS,
  STAT_PEER_WRITE,
  STAT_SLEEPS,
  type ToWorker,
  type WorkerApplyPort,
  type WorkerAttachPacket,
  type WorkerAttachVxlan,
  type WorkerInit,
  type WorkerInject,
} from "./worker_protocol.ts";

/** Longest sleep without a wake-up, so a lost kick costs at most this much latency. */
const IDLE_HOUSEKEEPING_MS = 100;
interface PortRuntime {
  datapath: VirtioNetDatapath;
  /** Ring index -> queue, for the rings this worker holds. */
  rings: Map<number, VirtQueue>;
}

class DatapathWorker {
  readonly counters: CounterTable;
  readonly bridge: Bridge;
  readonly ports: (PortRuntime | null)[];
  /** AF_PACKET and VXLAN ports this worker polls, with the socket fd that wakes it. */
  readonly packets: ({ datapath: DatapathPort; fd: number } | null)[];
  /** The burst loop, with the ports it polls and sends to (rebuilt on every change). */
  readonly forwarder: Forwarder;
  readonly mailbox: Int32Array;
  stopping = false;
  readonly sleeper = new IdleSleeper();
  readonly stats: Float64Array;
  readonly busyPoll: boolean;
  readonly idleAfterMs: number;
  readonly safety: SafetyCounters;
  /** Every port frames can be sent to, as the port runs it (before guards and mirrors). */
  readonly #raw: (DatapathPort | null)[];
  #plan: SafetyPlan = { guards: [], mirrors: [] };
  /**
   * Whether every port this worker polls is a socket that wakes it when a frame arrives
   * (AF_PACKET with its doorbell, VXLAN's UDP socket) and no guest's ring: see run().
   */
  socketsOnly = false;
  /** The AF_PACKET rings this worker polls: each has a doorbell to empty before a sleep. */
  #rings: AfPacketRingDatapath[] = [];

  constructor(readonly init: WorkerInit) {
    this.counters = new CounterTable(init.counters, init.workers, init.portCount);
    this.bridge = new Bridge({
      vlans: init.bridge.vlans,
      fdb: Fdb.attach(init.bridge.fdb),
      state: init.bridge.state,
      writer: init.worker,
    });
    this.ports = new Array(init.portCount).fill(null);
    this.packets = new Array(init.portCount).fill(null);
    const blocks = Array.from(
      { length: init.portCount },
      (_, p) => this.counters.block(init.worker, p),
    );
    this.forwarder = new Forwarder(this.bridge, init.portCount, blocks);
    if (init.flows) this.forwarder.flows = new FlowCounter(init.flows);
    this.mailbox = new Int32Array(init.mailbox);
    this.stats = new Float64Array(init.stats);
    this.busyPoll = init.busyPoll;
    this.idleAfterMs = init.idleAfterMs;
    this.safety = new SafetyCounters(init.safety, init.workers, init.portCount);
    this.#raw = new Array(init.portCount).fill(null);
    announcePeerWritesIn(this.stats, STAT_PEER_WRITE);
  }

  /**
   * The loop threw: drop the port whose code was running (the one being sent to, else the one
   * being received from), hand the received burst back to its guest if that port is another
   * one, and report it; the loop then goes on with the other ports.
   */
  recover(err: unknown): void {
    const f = this.forwarder;
    const port = f.sending >= 0 ? f.sending : f.polling;
    const receiving = f.polled.find((p) => p.index === f.polling);
    f.sending = f.polling = -1;
    this.stats[STAT_FAILURES]++;
    if (port >= 0) {
      this.ports[port] = null;
      this.packets[port] = null;
      this.#raw[port] = null;
      this.#refresh();
    }
    f.abandonBurst(); // the ports it reached are flushed before the burst goes back
    if (receiving && receiving.index !== port) {
      try {
        receiving.port.release();
      } catch { /* it is reported below if it fails again */ }
    }
    const error = err instanceof Error ? (err.stack ?? err.message) : String(err);
    post({ type: "failed", worker: this.init.worker, port, error });
  }

  /** Interrupted peer writes already looked at. */
  #peerInterrupts = 0;
  readonly #reported = new WeakSet<VirtQueue>();

  /** After a call eventfd write was interrupted: reports each ring it happened on, once. */
  reportBlockedPeers(): void {
    if (interruptedPeerWrites() === this.#peerInterrupts) return;
    this.#peerInterrupts = interruptedPeerWrites();
    this.ports.forEach((p, port) => {
      for (const [ring, q] of p?.rings ?? []) {
        if (!q.callBlocked || this.#reported.has(q)) continue;
        this.#reported.add(q);
        post({ type: "peer-blocked", worker: this.init.worker, port, ring });
      }
    });
  }

  /** Sleeps until a guest kicks one of our rings, a frame arrives or the control plane wakes us. */
  idle(): boolean {
    const rings: VirtQueue[] = [];
    for (const { index } of this.forwarder.polled) {
      for (const q of this.ports[index]?.datapath.txQueues ?? []) rings.push(q);
    }
    for (const q of rings) q.setGuestKicks(true);
    // Rings without a kick fd (polling-only front-ends) cannot wake us: nap briefly instead.
    const nap = rings.some((q) => q.kickFd < 0) ? 1 : IDLE_HOUSEKEEPING_MS;
    // An AF_PACKET ring's own socket turns readable only when the kernel hands over a block
    // (full, or at its retire timer: whole jiffies, 4-8 ms at HZ=250); its doorbell socket rings
    // for every frame once emptied (and a frame that came meanwhile keeps us awake).
    let waiting = false;
    for (const r of this.#rings) waiting = r.armWake() || waiting;
    let woken = true;
    if (
      !waiting && rings.every((q) => q.availCount() === 0) && Atomics.load(this.mailbox, 0) === 0
    ) {
      this.stats[STAT_SLEEPS]++;
      this.bridge.offline(); // a sleeping worker must not hold back FDB compaction
      woken = this.sleeper.sleep(nap) > 0;
    }
    for (const q of rings) q.setGuestKicks(false);
    return woken;
  }

  /** Replaces what this worker runs of one port; returns the rings it let go, with positions. */
  apply(msg: WorkerApplyPort): [number, number][] {
    const old = this.ports[msg.port];
    const stopped: [number, number][] = [];
    for (const [ring, q] of old?.rings ?? []) stopped.push([ring, q.position()]);
    let next: PortRuntime | null = null;
    const state = msg.state;
    if (state !== null) {
      const mem = new GuestMemory(state.regions);
      const block = this.counters.block(this.init.worker, msg.port);
      const log = state.log ? new DirtyLog(state.log, block) : null;
      const datapath = new VirtioNetDatapath(
        state.hdrLen,
        state.mergeable,
        state.maxFrame,
        block,
        state.guestOffloads,
        state.hostOffloads,
      );
      const rings = new Map<number, VirtQueue>();
      for (const spec of state.queues) {
        if (!msg.pollRings.includes(spec.index) && spec.index !== msg.fillRing) continue;
        const q = openQueue(mem, spec, log); // split or packed, for the ring's whole life
        q.setGuestKicks(false); // while we busy-poll, the guest need not kick us
        rings.set(spec.index, q);
        if (isGuestRxRing(spec.index)) datapath.setRxQueue(q);
        else datapath.txQueues.push(q);
      }
      next = { datapath, rings };
    }
    this.ports[msg.port] = next;
    this.#raw[msg.port] = next?.datapath ?? null;
    this.#refresh();
    return stopped;
  }

  /** Forwards one frame as if `msg.port` had received it, through the usual burst loop. */
  inject(msg: WorkerInject): void {
    const polled = this.forwarder.polled;
    this.forwarder.polled = [{ index: msg.port, port: new OneFrame(msg.frame) }];
    try {
      this.forwarder.poll(nowSeconds());
    } catch (err) {
      this.forwarder.abandonBurst();
      throw err;
    } finally {
      this.forwarder.polled = polled;
    }
  }

  /** Attaches (or, with spec null, detaches) an AF_PACKET port; only its poller receives. */
  attachPacket(msg: WorkerAttachPacket): void {
    const block = this.counters.block(this.init.worker, msg.port);
    const dp = msg.spec ? createAfPacketDatapath(msg.spec, block, this.init.worker) : null;
    this.#raw[msg.port] = dp;
    this.packets[msg.port] = dp && msg.poll ? { datapath: dp, fd: msg.spec!.fd } : null;
    this.#refresh();
  }

  /** Attaches (or, with spec null, detaches) a VXLAN port; only its poller receives. */
  attachVxlan(msg: WorkerAttachVxlan): void {
    const old = this.#raw[msg.port];
    if (old instanceof VxlanDatapath) old.close();
    const block = this.counters.block(this.init.worker, msg.port);
    const table = msg.spec ? Fdb.attach(msg.spec.table) : null;
    const dp = msg.spec && table ? new VxlanDatapath(msg.spec, block, table, msg.poll) : null;
    this.#raw[msg.port] = dp;
    this.packets[msg.port] = dp && msg.poll ? { datapath: dp, fd: msg.spec!.fd } : null;
    this.#refresh();
  }

  /** Replaces the port guards and mirrors. */
  setSafety(plan: SafetyPlan): void {
    this.#plan = plan;
    this.#refresh();
  }

  /**
   * Binds each port's safety features once, here, rather than testing for them per frame:
   * a guard per port that has one, egress policing and mirroring as wrappers around the port.
   */
  #bind(): void {
    const { guards, mirrors } = this.#plan;
    const fw = this.forwarder;
    const w = this.init.worker;
    let timed = false;
    for (let p = 0; p < this.#raw.length; p++) {
      const g = guards[p] ?? null;
      const block = this.safety.block(w, p);
      fw.guards[p] = g && guardsIngress(g) ? new IngressGuard(g, block, fw.clock) : null;
      timed ||= g !== null && (g.storm !== null || g.ingress !== null || g.egress !== null);
      let target = this.#raw[p];
      if (target && g?.egress) target = new PolicedPort(target, g.egress, block, fw.clock);
      const out = mirrors.filter((m) => m.egress && m.ports.includes(p));
      if (target && out.length) {
        const outputs = out.map((m) => m.output);
        target = new MirrorEgress(
          target,
          outputs,
          out.map((m) => m.vlan),
          fw.decision,
          fw.targets,
          block,
        );
      }
      fw.targets[p] = target;
    }
    fw.timed = timed;
  }

  /** The port polled for `index`: wrapped when a mirror copies what it receives. */
  #receiver(index: number, port: DatapathPort): DatapathPort {
    const mirrors = this.#plan.mirrors.filter((m) => m.ingress && m.ports.includes(index));
    if (!mirrors.length) return port;
    const untagged = mirrors[0].untaggedVlan[mirrors[0].ports.indexOf(index)];
    return new MirrorIngress(
      port,
      mirrors.map((m) => m.output),
      mirrors.map((m) => m.vlan),
      untagged,
      this.forwarder.targets,
      this.safety.block(this.init.worker, index),
    );
  }

  /** Rebuilds the list of ports to poll and the fds an idle sleep wakes on. */
  #refresh(): void {
    this.#bind();
    const polled: PolledPort[] = [];
    const wakeOn: number[] = [];
    const sockets: number[] = [];
    this.ports.forEach((p, index) => {
      if (!p || p.datapath.txQueues.length === 0) return;
      polled.push({ index, port: this.#receiver(index, p.datapath) });
      for (const q of p.datapath.txQueues) wakeOn.push(q.kickFd);
    });
    this.#rings = [];
    this.packets.forEach((p, index) => {
      if (!p) return;
      polled.push({ index, port: this.#receiver(index, p.datapath) });
      sockets.push(p.fd); // readable once the kernel hands us frames (a ring block, datagrams)
      if (p.datapath instanceof AfPacketRingDatapath) {
        this.#rings.push(p.datapath);
        sockets.push(p.datapath.wakeFd);
      }
    });
    this.forwarder.polled = polled;
    this.socketsOnly = polled.length > 0 && wakeOn.length === 0;
    this.sleeper.watch(wakeOn, sockets);
  }
}

let worker: DatapathWorker | null = null;

function post(msg: FromWorker): void {
  self.postMessage(msg);
}

self.onmessage = (e: MessageEvent<ToWorker>) => {
  const msg = e.data;
  try {
    if (msg.type === "init") {
      worker = new DatapathWorker(msg);
      const thread = currentThread();
      const tid = currentThreadId();
      try {
        if (msg.cpu >= 0) pinThreadToCpu(msg.cpu);
      } catch (err) {
        const error = `cannot pin to CPU ${msg.cpu} (poll.cpus): ${(err as Error).message}`;
        post({
          type: "ready",
          worker: msg.worker,
          thread,
          tid,
          wakeFd: worker.sleeper.wakeFd,
          error,
        });
        return;
      }
      post({ type: "ready", worker: msg.worker, thread, tid, wakeFd: worker.sleeper.wakeFd });
      run(worker);
      return;
    }
    if (!worker) throw new Error("datapath worker not initialised");
    if (msg.type === "apply") {
      post({ type: "ack", id: msg.id, stopped: worker.apply(msg) });
    } else if (msg.type === "packet") {
      worker.attachPacket(msg);
      post({ type: "ack", id: msg.id, stopped: [] });
    } else if (msg.type === "vxlan") {
      worker.attachVxlan(msg);
      post({ type: "ack", id: msg.id, stopped: [] });
    } else if (msg.type === "safety") {
      worker.setSafety(msg.plan);
      post({ type: "ack", id: msg.id, stopped: [] });
    } else if (msg.type === "vlan") {
      worker.bridge.setPortVlan(msg.port, msg.vlan);
      post({ type: "ack", id: msg.id, stopped: [] });
    } else if (msg.type === "inject") {
      worker.inject(msg);
      post({ type: "ack", id: msg.id, stopped: [] });
    } else if (msg.type === "tap") {
      const taps = worker.forwarder.taps[msg.port];
      if (msg.add) taps.push(new TapWriter(msg.add));
      if (msg.remove) taps.splice(taps.findIndex((t) => t.buffer === msg.remove), 1);
      post({ type: "ack", id: msg.id, stopped: [] });
    } else {
      worker.stopping = true;
      worker.sleeper.close();
      post({ type: "ack", id: msg.id, stopped: [] });
    }
  } catch (err) {
    post({ type: "ack", id: "id" in msg ? msg.id : -1, stopped: [], error: String(err) });
  } finally {
    if (worker && msg.type !== "init") Atomics.sub(worker.mailbox, 0, 1);
  }
};

// Letting the event loop run (control messages, timers) without sleeping: `setTimeout(0)` is
// clamped to 4 ms once timers nest (HTML timer rules, which Deno follows) and measured ~2.3 ms a
// call here, a busy worker's whole budget for thousands of frames; a message to ourselves
// through a MessageChannel comes back in ~15 us.
const loopback = new MessageChannel();
let resumeLoop: (() => void) | null = null;
loopback.port1.onmessage = () => {
  const resume = resumeLoop;
  resumeLoop = null;
  resume?.();
};
function yieldToEventLoop(): Promise<void> {
  return new Promise<void>((resolve) => {
    resumeLoop = resolve;
    loopback.port2.postMessage(null);
  });
}
/**
 * How often a worker lets its event loop run when no control message waits. Every message the
 * control plane sends is counted in the mailbox first, and a worker's only timer is the one it
 * waits on while such a message is still on its way (in run()), so this is only a backstop.
 */
const YIELD_EVERY_MS = 1000;
const nowSeconds = () => Math.floor((performance.timeOrigin + performance.now()) / 1000);

async function run(w: DatapathWorker): Promise<void> {
  const stats = w.stats;
  let lastWork = performance.now();
  let lastYield = lastWork;
  let waited = 0;
  // How long to keep polling an empty ring before sleeping: it doubles whenever a sleep is cut
  // short by a kick (traffic is flowing) up to idleAfterMs, and halves after each quiet sleep,
  // so sporadic frames cost ~1 ms of polling each while a steady stream keeps us polling.
  let linger = 1;
  while (!w.stopping) {
    if (Atomics.load(w.mailbox, 0) > 0) {
      // A control message waits: let it in. It is usually there already; while it is still on
      // its way from the control thread, wait on a timer rather than spin through the channel
      // (each turn costs a little memory in Deno's message ports).
      if (waited++ < 4) await yieldToEventLoop();
      else await new Promise((resolve) => setTimeout(resolve, 0));
      lastYield = performance.now();
      continue;
    }
    waited = 0;
    const now = nowSeconds();
    const t0 = performance.now();
    let moved = 0;
    try {
      for (let i = 0; i < 64; i++) {
        const m = w.forwarder.poll(now);
        moved += m;
        if (m === 0 && w.socketsOnly) break;
      }
    } catch (err) {
      w.recover(err);
    }
    stats[moved ? STAT_BUSY_ROUNDS : STAT_IDLE_ROUNDS]++;
    stats[STAT_FRAMES] += moved;
    w.reportBlockedPeers();
    const t = performance.now();
    if (moved) {
      lastWork = t;
      stats[STAT_BUSY_MS] += t - t0;
    } else if (!w.busyPoll && (w.socketsOnly || t - lastWork >= linger)) {
      // Blocks until a kick, a control message or the housekeeping timeout.
      const woken = w.idle();
      linger = woken ? Math.min(w.idleAfterMs, linger * 2) : Math.max(1, linger / 2);
    }
    // Let the event loop (timers, messages) run now and then even under load.
    if (t - lastYield >= YIELD_EVERY_MS) {
      await yieldToEventLoop();
      lastYield = performance.now();
    }
  }
  w.sleeper.close();
  loopback.port1.close();
}
