// The control plane's handle on the datapath Workers: starts them, decides which worker
// polls which ring (automatic round robin, or the port's rxqAffinity), and applies a port's
// datapath state on every worker, resolving only when all of them acknowledged.
import { CounterTable } from "../ports/counters.ts";
import type { DatapathState, DeviceDatapath } from "../ports/vhost_user/device.ts";
import type { BridgeShare, FromWorker, ToWorker, WorkerAck } from "./worker_protocol.ts";

export interface DatapathOptions {
  threads: number;
  portCount: number;
  bridge: BridgeShare;
  busyPoll: boolean;
  idleAfterMs: number;
  /** Per port: the worker polling each queue pair, when the topology pins it. */
  affinity: (number[] | undefined)[];
}

export class Datapath {
  readonly counters: CounterTable;
  readonly #workers: Worker[] = [];
  readonly #mailboxes: Int32Array[] = [];
  readonly #pending = new Map<number, (ack: WorkerAck) => void>();
  #nextId = 1;

  private constructor(readonly options: DatapathOptions) {
    this.counters = CounterTable.create(options.threads, options.portCount);
  }

  static async start(options: DatapathOptions): Promise<Datapath> {
    const dp = new Datapath(options);
    const ready: Promise<void>[] = [];
    for (let w = 0; w < options.threads; w++) {
      const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
      const mailbox = new SharedArrayBuffer(4);
      dp.#workers.push(worker);
      dp.#mailboxes.push(new Int32Array(mailbox));
      ready.push(
        new Promise((resolve, reject) => {
          worker.onerror = (e) => {
            e.preventDefault();
            reject(new Error(`datapath worker ${w} failed: ${e.message}`));
          };
          worker.onmessage = (e: MessageEvent<FromWorker>) => {
            if (e.data.type === "ready") resolve();
            else dp.#onAck(e.data);
          };
        }),
      );
      worker.postMessage(
        {
          type: "init",
          worker: w,
          workers: options.threads,
          counters: dp.counters.buffer,
          bridge: options.bridge,
          mailbox,
          portCount: options.portCount,
          busyPoll: options.busyPoll,
          idleAfterMs: options.idleAfterMs,
        } satisfies ToWorker,
      );
    }
    await Promise.all(ready);
    return dp;
  }

  #onAck(ack: WorkerAck): void {
    const resolve = this.#pending.get(ack.id);
    if (!resolve) return;
    this.#pending.delete(ack.id);
    resolve(ack);
  }

  #request(w: number, msg: ToWorker & { id: number }): Promise<WorkerAck> {
    return new Promise((resolve) => {
      this.#pending.set(msg.id, resolve);
      this.#workers[w].postMessage(msg);
      Atomics.add(this.#mailboxes[w], 0, 1);
    });
  }

  /** The worker that polls queue pair `pair` of `port`. */
  pollerOf(port: number, pair: number): number {
    const pinned = this.options.affinity[port]?.[pair];
    if (pinned !== undefined) return pinned;
    return (port + pair) % this.options.threads;
  }

  /** The handle a vhost-user device uses to run its datapath. */
  forPort(port: number): DeviceDatapath {
    return { apply: (state) => this.applyPort(port, state) };
  }

  async applyPort(port: number, state: DatapathState | null): Promise<Map<number, number>> {
    const acks = await Promise.all(
      this.#workers.map((_, w) => {
        const pollRings: number[] = [];
        for (const q of state?.queues ?? []) {
          if (q.index & 1 && this.pollerOf(port, q.index >> 1) === w) pollRings.push(q.index);
        }
        // Each worker fills its own guest RX ring. Until rings can be shared under a lock, a
        // worker beyond the guest's ring count does not transmit to it (counted as drops).
        const rxRings = (state?.queues ?? []).filter((q) => (q.index & 1) === 0);
        const fillRing = w < rxRings.length ? rxRings[w].index : -1;
        return this.#request(w, {
          type: "apply",
          id: this.#nextId++,
          port,
          state,
          pollRings,
          fillRing,
        });
      }),
    );
    const stopped = new Map<number, number>();
    for (const ack of acks) {
      if (ack.error) throw new Error(`datapath worker: ${ack.error}`);
      for (const [ring, lastAvail] of ack.stopped) stopped.set(ring, lastAvail);
    }
    return stopped;
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.#workers.map((_, w) =>
        Promise.race([
          this.#request(w, { type: "stop", id: this.#nextId++ }),
          new Promise((r) => setTimeout(r, 1000)),
        ])
      ),
    );
    for (const w of this.#workers) w.terminate();
    this.#pending.clear();
  }
}
