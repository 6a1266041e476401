// A datapath Worker: busy-polls the receive queues assigned to it in bursts, asks the bridge
// where each frame goes, copies it straight into the destination port (one copy, guest to
// guest) and hands the burst back to the sender. Control messages arrive between bursts.
/// <reference lib="deno.worker" />
import { CounterTable } from "../ports/counters.ts";
import { type DatapathPort, FrameBatch } from "../ports/port.ts";
import { GuestMemory } from "../ports/vhost_user/memory.ts";
import { SplitQueue } from "../ports/vhost_user/split_queue.ts";
import { VirtioNetDatapath } from "../ports/vhost_user/virtio_net.ts";
import { Bridge } from "./bridge.ts";
import { Fdb } from "./fdb.ts";
import { IdleSleeper } from "./idle.ts";
import { TapWriter } from "./tap.ts";
import { createAfPacketDatapath } from "../ports/af_packet/datapath.ts";
import {
  type FromWorker,
  STAT_BUSY_ROUNDS,
  STAT_FRAMES,
  STAT_IDLE_ROUNDS,
  STAT_SLEEPS,
  type ToWorker,
  type WorkerApplyPort,
  type WorkerAttachPacket,
  type WorkerInit,
} from "./worker_protocol.ts";

/** Longest sleep without a wake-up, so a lost kick costs at most this much latency. */
const IDLE_HOUSEKEEPING_MS = 100;

interface PortRuntime {
  datapath: VirtioNetDatapath;
  /** Ring index -> queue, for the rings this worker holds. */
  rings: Map<number, SplitQueue>;
}

class DatapathWorker {
  readonly counters: CounterTable;
  readonly bridge: Bridge;
  readonly ports: (PortRuntime | null)[];
  /** Ports with receive queues on this worker (rebuilt on every apply). */
  polled: { index: number; port: DatapathPort }[] = [];
  readonly targets: (DatapathPort | null)[];
  /** AF_PACKET ports this worker polls, with their socket fd. */
  readonly packets: ({ datapath: DatapathPort; fd: number } | null)[];
  /** Per port, the captures running on it (usually none). */
  readonly taps: TapWriter[][];
  readonly mailbox: Int32Array;
  readonly batch = new FrameBatch();
  readonly out: Int32Array;
  readonly touched: Uint8Array;
  stopping = false;
  readonly sleeper = new IdleSleeper();
  readonly stats: Float64Array;
  readonly busyPoll: boolean;
  readonly idleAfterMs: number;

  constructor(readonly init: WorkerInit) {
    this.counters = new CounterTable(init.counters, init.workers, init.portCount);
    this.bridge = new Bridge({
      vlans: init.bridge.vlans,
      fdb: Fdb.attach(init.bridge.fdb),
      state: init.bridge.state,
      writer: init.worker,
    });
    this.ports = new Array(init.portCount).fill(null);
    this.targets = new Array(init.portCount).fill(null);
    this.packets = new Array(init.portCount).fill(null);
    this.taps = Array.from({ length: init.portCount }, () => []);
    this.touched = new Uint8Array(init.portCount);
    this.out = new Int32Array(init.portCount);
    this.mailbox = new Int32Array(init.mailbox);
    this.stats = new Float64Array(init.stats);
    this.busyPoll = init.busyPoll;
    this.idleAfterMs = init.idleAfterMs;
  }

  /** Sleeps until a guest kicks one of our rings or the control plane wakes us; true if woken. */
  idle(): boolean {
    const rings: SplitQueue[] = [];
    for (const { index } of this.polled) {
      for (const q of this.ports[index]?.datapath.txQueues ?? []) rings.push(q);
    }
    for (const q of rings) q.setGuestKicks(true);
    // Rings without a kick fd (polling-only front-ends) cannot wake us: nap briefly instead.
    const nap = rings.some((q) => q.kickFd < 0) ? 1 : IDLE_HOUSEKEEPING_MS;
    let woken = true;
    if (rings.every((q) => q.availCount() === 0) && Atomics.load(this.mailbox, 0) === 0) {
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
    for (const [ring, q] of old?.rings ?? []) stopped.push([ring, q.lastAvail]);
    let next: PortRuntime | null = null;
    const state = msg.state;
    if (state !== null) {
      const mem = new GuestMemory(state.regions);
      const block = this.counters.block(this.init.worker, msg.port);
      const datapath = new VirtioNetDatapath(state.hdrLen, state.mergeable, state.maxFrame, block);
      const rings = new Map<number, SplitQueue>();
      for (const spec of state.queues) {
        if (!msg.pollRings.includes(spec.index) && spec.index !== msg.fillRing) continue;
        const q = new SplitQueue(mem, spec);
        q.setGuestKicks(false); // while we busy-poll, the guest need not kick us
        rings.set(spec.index, q);
        if (spec.index & 1) datapath.txQueues.push(q);
        else datapath.rxQueue = q;
      }
      next = { datapath, rings };
    }
    this.ports[msg.port] = next;
    this.targets[msg.port] = next?.datapath ?? null;
    this.#refresh();
    return stopped;
  }

  /** Attaches (or, with spec null, detaches) an AF_PACKET port; only its poller receives. */
  attachPacket(msg: WorkerAttachPacket): void {
    const block = this.counters.block(this.init.worker, msg.port);
    const dp = msg.spec ? createAfPacketDatapath(msg.spec, block, this.init.worker) : null;
    this.targets[msg.port] = dp;
    this.packets[msg.port] = dp && msg.poll ? { datapath: dp, fd: msg.spec!.fd } : null;
    this.#refresh();
  }

  /** Rebuilds the list of ports to poll and the fds an idle sleep wakes on. */
  #refresh(): void {
    this.polled = [];
    const wakeOn: number[] = [];
    this.ports.forEach((p, index) => {
      if (!p || p.datapath.txQueues.length === 0) return;
      this.polled.push({ index, port: p.datapath });
      for (const q of p.datapath.txQueues) wakeOn.push(q.kickFd);
    });
    this.packets.forEach((p, index) => {
      if (!p) return;
      this.polled.push({ index, port: p.datapath });
      wakeOn.push(p.fd); // readable once the kernel hands a block of frames to us
    });
    this.sleeper.watch(wakeOn);
  }

  /** One pass over every polled port; returns the frames moved. */
  poll(now: number): number {
    let moved = 0;
    const batch = this.batch;
    const out = this.out;
    const bridge = this.bridge;
    const touched = this.touched;
    const targets = this.targets;
    const taps = this.taps;
    for (let p = 0; p < this.polled.length; p++) {
      const { index, port } = this.polled[p];
      const n = port.receive(batch);
      if (n === 0) {
        port.release(); // chains refused as malformed still go back to the guest
        continue;
      }
      const rxTaps = taps[index];
      for (let i = 0; i < n; i++) {
        const bytes = batch.bytes[i];
        const off = batch.offset[i];
        const len = batch.length[i];
        for (let t = 0; t < rxTaps.length; t++) rxTaps[t].write(bytes, off, len);
        const k = bridge.decide(index, bytes, off, len, now, out);
        for (let j = 0; j < k; j++) {
          const dst = out[j];
          const target = targets[dst];
          if (target === null) continue;
          const frame = bridge.egressFrame(dst, off, len);
          touched[dst] = 1;
          if (!target.transmit(bytes, frame)) continue;
          const txTaps = taps[dst];
          for (let t = 0; t < txTaps.length; t++) txTaps[t].writeEgress(bytes, frame);
        }
      }
      moved += n;
      port.release();
      for (let t = 0; t < touched.length; t++) {
        if (touched[t]) {
          touched[t] = 0;
          targets[t]?.flush();
        }
      }
    }
    return moved;
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
      post({ type: "ready", worker: msg.worker, wakeFd: worker.sleeper.wakeFd });
      run(worker);
      return;
    }
    if (!worker) throw new Error("datapath worker not initialised");
    if (msg.type === "apply") {
      post({ type: "ack", id: msg.id, stopped: worker.apply(msg) });
    } else if (msg.type === "packet") {
      worker.attachPacket(msg);
      post({ type: "ack", id: msg.id, stopped: [] });
    } else if (msg.type === "tap") {
      const taps = worker.taps[msg.port];
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

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const nowSeconds = () => Math.floor((performance.timeOrigin + performance.now()) / 1000);

async function run(w: DatapathWorker): Promise<void> {
  const stats = w.stats;
  let lastWork = performance.now();
  let rounds = 0;
  // How long to keep polling an empty ring before sleeping: it doubles whenever a sleep is cut
  // short by a kick (traffic is flowing) up to idleAfterMs, and halves after each quiet sleep,
  // so sporadic frames cost ~1 ms of polling each while a steady stream keeps us polling.
  let linger = 1;
  while (!w.stopping) {
    if (Atomics.load(w.mailbox, 0) > 0) {
      await sleep(0); // a control message waits: let it in
      continue;
    }
    const now = nowSeconds();
    let moved = 0;
    for (let i = 0; i < 64; i++) moved += w.poll(now);
    stats[moved ? STAT_BUSY_ROUNDS : STAT_IDLE_ROUNDS]++;
    stats[STAT_FRAMES] += moved;
    const t = performance.now();
    if (moved) lastWork = t;
    else if (!w.busyPoll && t - lastWork >= linger) {
      // Blocks until a kick, a control message or the housekeeping timeout.
      const woken = w.idle();
      linger = woken ? Math.min(w.idleAfterMs, linger * 2) : Math.max(1, linger / 2);
    }
    // Let the event loop (timers, messages) run now and then even under load.
    if ((++rounds & 1023) === 0) await sleep(0);
  }
  w.sleeper.close();
}
