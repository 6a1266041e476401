// The control plane's handle on the datapath Workers: starts them, decides which worker
// polls which ring (automatic round robin, or the port's rxqAffinity), and applies a port's
// datapath state on every worker, resolving only when all of them acknowledged.
import { CounterTable } from "../ports/counters.ts";
import type { DatapathState, DeviceDatapath } from "../ports/vhost_user/device.ts";
import {
  isGuestRxRing,
  queuePairOf,
  sharedLastAvail,
  sharedRingState,
} from "../ports/vhost_user/virtqueue.ts";
import { eventfdWrite } from "../ffi/fd.ts";
import { installInterruptHandler, interruptThread, threadAsleep } from "../ffi/signal.ts";
import { createTapBuffer } from "./tap.ts";
import { createFlowBuffer } from "./flows.ts";
import type { PortVlanConfig } from "./bridge.ts";
import { rarpAnnouncement } from "./announce.ts";
import type { AfPacketSpec } from "../ports/af_packet/tpacket.ts";
import type { VxlanSpec } from "../ports/vxlan/vxlan.ts";
import type { SafetyPlan } from "./safety.ts";
import {
  type BridgeShare,
  type FromWorker,
  STAT_BUSY_MS,
  STAT_BUSY_ROUNDS,
  STAT_FAILURES,
  STAT_FRAMES,
  STAT_IDLE_ROUNDS,
  STAT_PEER_WRITE,
  STAT_SLEEPS,
  type ToWorker,
  WORKER_STATS,
  type WorkerAck,
  type WorkerApplyPort,
} from "./worker_protocol.ts";

export interface DatapathOptions {
  threads: number;
  portCount: number;
  bridge: BridgeShare;
  busyPoll: boolean;
  idleAfterMs: number;
  /** Count flows (GET /flows); default true. */
  flowStats?: boolean;
  /** CPU per worker (topology poll.cpus), or null. */
  cpus: number[] | null;
  /** Per port: the worker polling each queue pair, when the topology pins it. */
  affinity: (number[] | undefined)[];
  /** The L2 safety counters (SafetyCounters.buffer), written by the workers. */
  safety: SharedArrayBuffer;
}

/** How often the control plane looks for a worker stuck writing a peer's eventfd. */
const WATCHDOG_MS = 100;
/** A worker that has not acknowledged a request after this long is reported... */
const ACK_WARN_MS = 2000;
/**
 * ...and after this long the switch gives up: the worker may still use guest memory the
 * request was meant to free, and nothing short of ending the process makes that safe.
 */
const ACK_FATAL_MS = 10_000;
/** A worker whose loop failed this often within a minute is not restarted again. */
const MAX_FAILURES_PER_MINUTE = 20;

/** What the datapath tells the control plane about. */
export interface DatapathEvents {
  log(msg: string): void;
  /** A worker stopped signalling a ring whose call eventfd the front-end made blocking. */
  peerBlocked(port: number, ring: number, worker: number): void;
  /** A worker's loop threw while handling `port` (-1: unknown); the worker carries on without it. */
  workerFailed(port: number, worker: number, error: string): void;
  /** The datapath cannot go on safely (a dead or stuck worker): the switch must exit. */
  fatal(msg: string): void;
}

const defaultEvents: DatapathEvents = {
  log: (msg) => console.error(msg),
  peerBlocked: () => {},
  workerFailed: () => {},
  fatal: (msg) => {
    console.error(msg);
    Deno.exit(70);
  },
};

export class Datapath {
  readonly counters: CounterTable;
  readonly #workers: Worker[] = [];
  readonly #mailboxes: Int32Array[] = [];
  readonly #wakeFds: number[] = [];
  readonly #stats: Float64Array[] = [];
  readonly #pending = new Map<number, (ack: WorkerAck) => void>();
  /** Per port: the shared state of guest RX rings that several workers fill. */
  readonly #shared = new Map<number, Map<number, SharedArrayBuffer>>();
  /** Per vhost-user port: the state last applied (for reapplyPort), and the change running. */
  readonly #states = new Map<number, DatapathState>();
  readonly #applying = new Map<number, Promise<unknown>>();
  #nextId = 1;
  /** Each worker's pthread_t, and the peer write it was in at the last watchdog tick. */
  readonly #threads: bigint[] = [];
  readonly #tids: number[] = [];
  readonly #lastPeerWrite: number[] = [];
  readonly #interrupted: number[] = [];
  #watchdog: ReturnType<typeof setInterval> | undefined;
  readonly #failureTimes: number[][] = [];
  #stopping = false;
  /** Where the datapath reports; the switch replaces the defaults. */
  events: DatapathEvents = defaultEvents;

  /** Each worker's flow table (empty when flows are not counted). */
  readonly flowTables: SharedArrayBuffer[] = [];

  private constructor(readonly options: DatapathOptions) {
    if (options.flowStats !== false) {
      for (let w = 0; w < options.threads; w++) this.flowTables.push(createFlowBuffer());
    }
    this.counters = CounterTable.create(options.threads, options.portCount);
  }

  /**
   * A worker found twice in a row in the same write to a peer's eventfd is blocked in it (the
   * write takes a microsecond): interrupt it (ffi/signal.ts), again on every tick it stays.
   */
  #watch(): void {
    for (let w = 0; w < this.#stats.length; w++) {
      const writing = this.#stats[w][STAT_PEER_WRITE];
      // Still in the same write, and asleep in it (not merely waiting for a CPU).
      if (writing !== 0 && writing === this.#lastPeerWrite[w] && threadAsleep(this.#tids[w])) {
        if (this.#interrupted[w] !== writing) {
          this.events.log(
            `datapath worker ${w} is blocked writing a front-end's eventfd: interrupting it`,
          );
        }
        this.#interrupted[w] = writing;
        interruptThread(this.#threads[w]);
      }
      this.#lastPeerWrite[w] = writing;
    }
  }

  #onWorkerMessage(w: number, msg: FromWorker): void {
    if (msg.type === "ack") this.#onAck(msg);
    else if (msg.type === "peer-blocked") this.events.peerBlocked(msg.port, msg.ring, w);
    else if (msg.type === "failed") {
      const now = performance.now();
      const times = (this.#failureTimes[w] ??= []).filter((t) => now - t < 60_000);
      times.push(now);
      this.#failureTimes[w] = times;
      this.events.workerFailed(msg.port, w, msg.error);
      if (times.length > MAX_FAILURES_PER_MINUTE) {
        this.events.fatal(
          `datapath worker ${w} failed ${times.length} times within a minute; last: ${msg.error}`,
        );
      }
    }
  }

  static async start(options: DatapathOptions): Promise<Datapath> {
    installInterruptHandler();
    const dp = new Datapath(options);
    const ready: Promise<void>[] = [];
    for (let w = 0; w < options.threads; w++) {
      const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
      const mailbox = new SharedArrayBuffer(4);
      const stats = new SharedArrayBuffer(8 * WORKER_STATS);
      dp.#workers.push(worker);
      dp.#mailboxes.push(new Int32Array(mailbox));
      dp.#stats.push(new Float64Array(stats));
      ready.push(
        new Promise((resolve, reject) => {
          let started = false;
          worker.onerror = (e) => {
            e.preventDefault();
            // After start-up, a worker whose own error handling failed is gone with the rings
            // it held: no other worker can take them over, so the switch stops, loudly.
            if (started && !dp.#stopping) {
              dp.events.fatal(`datapath worker ${w} died: ${e.message}`);
            }
            reject(new Error(`datapath worker ${w} failed: ${e.message}`));
          };
          worker.onmessage = (e: MessageEvent<FromWorker>) => {
            if (e.data.type === "ready") {
              dp.#wakeFds[w] = e.data.wakeFd;
              dp.#threads[w] = e.data.thread;
              dp.#tids[w] = e.data.tid;
              started = true;
              if (e.data.error) reject(new Error(`datapath worker ${w}: ${e.data.error}`));
              else resolve();
            } else dp.#onWorkerMessage(w, e.data);
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
          safety: options.safety,
          mailbox,
          stats,
          portCount: options.portCount,
          flows: dp.flowTables[w] ?? null,
          busyPoll: options.busyPoll,
          cpu: options.cpus?.[w] ?? -1,
          idleAfterMs: options.idleAfterMs,
        } satisfies ToWorker,
      );
    }
    await Promise.all(ready);
    dp.#watchdog = setInterval(() => dp.#watch(), WATCHDOG_MS);
    Deno.unrefTimer(dp.#watchdog);
    return dp;
  }

  #onAck(ack: WorkerAck): void {
    const resolve = this.#pending.get(ack.id);
    if (!resolve) return;
    this.#pending.delete(ack.id);
    resolve(ack);
  }

  #request(w: number, msg: ToWorker & { id: number }): Promise<WorkerAck> {
    const what = `"${msg.type}"${"port" in msg ? ` for port ${msg.port}` : ""}`;
    const started = performance.now();
    const warn = setTimeout(() => {
      this.events.log(
        `datapath worker ${w} has not acknowledged ${what} after ${ACK_WARN_MS / 1000} s`,
      );
    }, ACK_WARN_MS);
    const fatal = setTimeout(() => {
      if (this.#stopping) return;
      this.events.fatal(
        `datapath worker ${w} has not acknowledged ${what} after ${ACK_FATAL_MS / 1000} s: ` +
          `it may still use guest memory that would be freed; stopping the switch`,
      );
    }, ACK_FATAL_MS);
    return new Promise((resolve) => {
      this.#pending.set(msg.id, (ack) => {
        clearTimeout(warn);
        clearTimeout(fatal);
        const ms = performance.now() - started;
        if (ms >= ACK_WARN_MS) {
          this.events.log(`datapath worker ${w} acknowledged ${what} after ${ms.toFixed(0)} ms`);
        }
        resolve(ack);
      });
      // Raise the mailbox and wake a sleeping worker before posting: once posted, the worker
      // may handle the message (even "stop", which closes the wake fd) at once.
      Atomics.add(this.#mailboxes[w], 0, 1);
      eventfdWrite(this.#wakeFds[w]);
      this.#workers[w].postMessage(msg);
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
    return {
      apply: (state) => this.applyPort(port, state),
      announce: (mac) => this.inject(port, rarpAnnouncement(mac)),
    };
  }

  /** Forwards `frame` as if `port` had received it, on the worker polling its first queue. */
  async inject(port: number, frame: Uint8Array): Promise<void> {
    const w = this.pollerOf(port, 0);
    const ack = await this.#request(w, { type: "inject", id: this.#nextId++, port, frame });
    if (ack.error) throw new Error(`datapath worker ${w}: ${ack.error}`);
  }

  /**
   * Two phases, so no two workers ever touch a ring without agreeing on its position: first
   * every worker lets go of the port and reports where its rings stand; then all get the new
   * state, with those positions. Returns the positions of the rings that stopped.
   */
  applyPort(port: number, state: DatapathState | null): Promise<Map<number, number>> {
    // One change of a port at a time: a device change and a re-apply (new affinity) must not
    // interleave their two phases.
    const run = (this.#applying.get(port) ?? Promise.resolve()).catch(() => {}).then(() =>
      this.#applyPort(port, state)
    );
    this.#applying.set(port, run);
    return run;
  }

  /** Applies a vhost-user port's running state again, e.g. with new queue-to-worker affinity. */
  async reapplyPort(port: number): Promise<void> {
    const state = this.#states.get(port);
    if (state) await this.applyPort(port, state);
  }

  async #applyPort(port: number, state: DatapathState | null): Promise<Map<number, number>> {
    if (state) this.#states.set(port, state);
    else this.#states.delete(port);
    const positions = new Map<number, number>();
    const released = await this.#applyAll(
      port,
      () => ({ state: null, pollRings: [], fillRing: -1 }),
    );
    for (const ack of released) for (const [ring, last] of ack.stopped) positions.set(ring, last);
    for (const [ring, sab] of this.#shared.get(port) ?? []) {
      positions.set(ring, sharedLastAvail(sab));
    }
    this.#shared.delete(port);
    if (state === null) return positions;

    const threads = this.options.threads;
    const rxRings = state.queues.filter((q) => isGuestRxRing(q.index)).map((q) => q.index);
    // Worker w fills guest RX ring w mod n, like OVS's per-PMD transmit queues; when the guest
    // has fewer RX rings than there are workers, the workers sharing one take its lock per frame.
    const shared = new Map<number, SharedArrayBuffer>();
    const queues = state.queues.map((q) => {
      const lastAvail = positions.get(q.index) ?? q.lastAvail;
      const sab = rxRings.includes(q.index) && rxRings.length < threads
        ? sharedRingState(lastAvail)
        : null;
      if (sab) shared.set(q.index, sab);
      return { ...q, lastAvail, shared: sab };
    });
    if (shared.size) this.#shared.set(port, shared);
    const next = { ...state, queues };
    await this.#applyAll(port, (w) => ({
      state: next,
      pollRings: queues
        .filter((q) => !isGuestRxRing(q.index) && this.pollerOf(port, queuePairOf(q.index)) === w)
        .map((q) => q.index),
      fillRing: rxRings.length ? rxRings[w % rxRings.length] : -1,
    }));
    for (const q of queues) positions.delete(q.index);
    return positions;
  }

  async #applyAll(
    port: number,
    what: (w: number) => Pick<WorkerApplyPort, "state" | "pollRings" | "fillRing">,
  ): Promise<WorkerAck[]> {
    return await this.#everyWorker((w) => ({
      type: "apply",
      id: this.#nextId++,
      port,
      ...what(w),
    }));
  }

  /** Sends each worker its message; throws the first error any of them answered with. */
  async #everyWorker(msg: (w: number) => ToWorker & { id: number }): Promise<WorkerAck[]> {
    const acks = await Promise.all(this.#workers.map((_, w) => this.#request(w, msg(w))));
    const failed = acks.find((a) => a.error);
    if (failed) throw new Error(`datapath worker: ${failed.error}`);
    return acks;
  }

  /** Attaches an AF_PACKET port on every worker (each transmits through its own TX ring). */
  async attachPacket(port: number, spec: AfPacketSpec | null): Promise<void> {
    await this.#everyWorker((w) => ({
      type: "packet",
      id: this.#nextId++,
      port,
      spec,
      poll: this.pollerOf(port, 0) === w,
    }));
  }

  /** Attaches a VXLAN port on every worker (each sends on the shared socket; one receives). */
  async attachVxlan(port: number, spec: VxlanSpec | null): Promise<void> {
    await this.#everyWorker((w) => ({
      type: "vxlan",
      id: this.#nextId++,
      port,
      spec,
      poll: this.pollerOf(port, 0) === w,
    }));
  }

  /** Gives every worker the port guards and mirrors to run from now on. */
  async setSafety(plan: SafetyPlan): Promise<void> {
    const acks = await Promise.all(
      this.#workers.map((_, w) => this.#request(w, { type: "safety", id: this.#nextId++, plan })),
    );
    const failed = acks.find((a) => a.error);
    if (failed) throw new Error(`datapath worker: ${failed.error}`);
  }

  /**
   * Changes a port's VLAN config on every worker (null: the port number is free); resolves
   * once all of them apply it, each between two bursts.
   */
  async setVlan(port: number, vlan: PortVlanConfig | undefined | null): Promise<void> {
    const acks = await Promise.all(
      this.#workers.map((_, w) =>
        this.#request(w, { type: "vlan", id: this.#nextId++, port, vlan })
      ),
    );
    const failed = acks.find((a) => a.error);
    if (failed) throw new Error(`datapath worker: ${failed.error}`);
  }

  /** Sets which worker polls each queue pair of `port` (undefined: round robin) from now on. */
  setAffinity(port: number, affinity: number[] | undefined): void {
    this.options.affinity[port] = affinity;
  }

  /** Starts copying the frames passing `port` into one fresh capture ring per worker. */
  async addTap(port: number): Promise<SharedArrayBuffer[]> {
    const rings = this.#workers.map(() => createTapBuffer());
    await Promise.all(
      rings.map((add, w) => this.#request(w, { type: "tap", id: this.#nextId++, port, add })),
    );
    return rings;
  }

  async removeTap(port: number, rings: SharedArrayBuffer[]): Promise<void> {
    await Promise.all(
      rings.map((remove, w) => this.#request(w, { type: "tap", id: this.#nextId++, port, remove })),
    );
  }

  /** Per-worker statistics (busy/idle poll rounds, sleeps, frames), read while it runs. */
  workerStats(): {
    worker: number;
    busyRounds: number;
    /** Times this worker's loop failed (an exception) and went on without the port at fault. */
    failures: number;
    busyMs: number;
    idleRounds: number;
    sleeps: number;
    frames: number;
  }[] {
    return this.#stats.map((s, worker) => ({
      worker,
      busyRounds: s[STAT_BUSY_ROUNDS],
      failures: s[STAT_FAILURES],
      busyMs: s[STAT_BUSY_MS],
      idleRounds: s[STAT_IDLE_ROUNDS],
      sleeps: s[STAT_SLEEPS],
      frames: s[STAT_FRAMES],
    }));
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    clearInterval(this.#watchdog);
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
