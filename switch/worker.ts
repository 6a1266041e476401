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
import type { FromWorker, ToWorker, WorkerApplyPort, WorkerInit } from "./worker_protocol.ts";

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
  readonly mailbox: Int32Array;
  readonly batch = new FrameBatch();
  readonly out: Int32Array;
  readonly touched: Uint8Array;
  stopping = false;

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
    this.touched = new Uint8Array(init.portCount);
    this.out = new Int32Array(init.portCount);
    this.mailbox = new Int32Array(init.mailbox);
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
    this.polled = [];
    this.ports.forEach((p, index) => {
      if (p && p.datapath.txQueues.length) this.polled.push({ index, port: p.datapath });
    });
    return stopped;
  }

  /** One pass over every polled port; returns the frames moved. */
  poll(now: number): number {
    let moved = 0;
    const batch = this.batch;
    const out = this.out;
    const bridge = this.bridge;
    const touched = this.touched;
    const targets = this.targets;
    for (let p = 0; p < this.polled.length; p++) {
      const { index, port } = this.polled[p];
      const n = port.receive(batch);
      if (n === 0) {
        port.release(); // chains refused as malformed still go back to the guest
        continue;
      }
      for (let i = 0; i < n; i++) {
        const bytes = batch.bytes[i];
        const off = batch.offset[i];
        const len = batch.length[i];
        const k = bridge.decide(index, bytes, off, len, now, out);
        for (let j = 0; j < k; j++) {
          const dst = out[j];
          const target = targets[dst];
          if (target === null) continue;
          target.transmit(bytes, bridge.egressFrame(dst, off, len));
          touched[dst] = 1;
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
      post({ type: "ready", worker: msg.worker });
      run(worker);
      return;
    }
    if (!worker) throw new Error("datapath worker not initialised");
    if (msg.type === "apply") {
      post({ type: "ack", id: msg.id, stopped: worker.apply(msg) });
    } else if (msg.type === "stop") {
      worker.stopping = true;
      post({ type: "ack", id: msg.id, stopped: [] });
    } else {
      post({ type: "ack", id: msg.id, stopped: [] });
    }
  } catch (err) {
    post({ type: "ack", id: "id" in msg ? msg.id : -1, stopped: [], error: String(err) });
  } finally {
    if (worker && msg.type !== "init") Atomics.sub(worker.mailbox, 0, 1);
  }
};

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function run(w: DatapathWorker): Promise<void> {
  let quiet = 0;
  while (!w.stopping) {
    const now = Math.floor(performance.timeOrigin / 1000 + performance.now() / 1000);
    let moved = 0;
    for (let i = 0; i < 256 && Atomics.load(w.mailbox, 0) === 0; i++) moved += w.poll(now);
    if (Atomics.load(w.mailbox, 0) > 0) {
      await sleep(0); // a control message waits: let it in
      continue;
    }
    if (w.polled.length === 0) {
      await sleep(5); // nothing to poll: messages still arrive while we wait
      continue;
    }
    // Let the event loop run now and then even under load.
    quiet = moved === 0 ? quiet + 1 : 0;
    if ((quiet & 1023) === 1023) await sleep(0);
  }
}
