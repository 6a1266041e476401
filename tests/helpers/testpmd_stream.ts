// A testpmd pair that streams at a bounded rate with exact counts, for tests that change the
// switch while traffic flows. testpmd runs in rxonly mode on two virtio-user ports; each round
// sends one txonly burst per port (`start tx_first 1`) while fewer than `maxInFlight` of that
// port's frames are on their way, lets the forwarding lcore receive, and stops it again. So the
// rate is what the rounds allow (about 10 rounds of 32 frames per port a second on a busy 2-CPU
// host), the receive rings cannot overflow from the stream itself, and testpmd spins only while
// a round runs (about 14% of a CPU).
//
// Every stream frame has the same length in the 1024..1518 size bin; the virtio PMD counts
// received frames per bin, so frames of the stream are told apart from anything else the switch
// delivers to the same port (guests' ARP and pings, floods).
import type { Testpmd } from "../../peers/testpmd.ts";
import { delay } from "../../peers/wait.ts";

/** The virtio PMD's RFC 2819 size bin the stream's frames fall in. */
const BIN = "size_1024_1518_packets";

export interface StreamCounts {
  /** Frames each testpmd port sent (all of them stream frames). */
  sent: [number, number];
  /** Stream-sized frames each testpmd port received. */
  received: [number, number];
  /** Everything each port received (stream frames and whatever else the switch sent it). */
  receivedAll: [number, number];
  /** Frames each port sent whose size is not the stream's (must stay 0: nothing else sends). */
  sentOther: [number, number];
  rounds: number;
}

export interface PacedStreamOptions {
  /**
   * Frames of each port's stream on their way: sent but not yet taken by the switch, plus
   * delivered by the switch to the other port but not yet received there (from the switch's
   * counters). A frame the switch lost is not on its way, so a loss does not stall the stream.
   */
  onTheWay: (c: StreamCounts) => Promise<[number, number]>;
  /** A round sends no more while this many frames of a port are on their way: below the
   * receive ring size (256) minus a burst and what else may arrive there. Default 128. */
  maxInFlight?: number;
  /** Pause between rounds, leaving the CPU to other work. Default 5 ms. */
  pauseMs?: number;
}

/**
 * Streams between testpmd's ports 0 and 1, which must run `--forward-mode=rxonly`, with
 * `--eth-peer` set so each port's frames go to the other's MAC and `--txpkts` giving a length
 * from 1024 to 1518 (the length without FCS).
 */
export class PacedStream implements AsyncDisposable {
  readonly #fe: Testpmd;
  readonly #onTheWay: PacedStreamOptions["onTheWay"];
  readonly #maxInFlight: number;
  readonly #pauseMs: number;
  #running = false;
  #loop: Promise<void> = Promise.resolve();
  #error: unknown = null;
  #counts: StreamCounts = {
    sent: [0, 0],
    received: [0, 0],
    receivedAll: [0, 0],
    sentOther: [0, 0],
    rounds: 0,
  };
  #waiters: (() => void)[] = [];

  constructor(fe: Testpmd, opts: PacedStreamOptions) {
    this.#fe = fe;
    this.#onTheWay = opts.onTheWay;
    this.#maxInFlight = opts.maxInFlight ?? 128;
    this.#pauseMs = opts.pauseMs ?? 5;
  }

  /** The counts after the last round. */
  get counts(): StreamCounts {
    return structuredClone(this.#counts);
  }

  start(): this {
    this.#running = true;
    this.#loop = (async () => {
      try {
        while (this.#running) {
          const way = await this.#onTheWay(this.counts);
          await this.#round(way.every((n) => n < this.#maxInFlight));
          await delay(this.#pauseMs);
        }
      } catch (e) {
        this.#error = e;
        this.#running = false;
        this.#wake();
      }
    })();
    return this;
  }

  /** Waits until each port has sent `frames` more than now; throws if the stream failed. */
  async waitSent(frames: number, timeoutMs = 60_000): Promise<StreamCounts> {
    const base = this.#counts.sent;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.#error) throw this.#error;
      const c = this.#counts;
      if (c.sent[0] - base[0] >= frames && c.sent[1] - base[1] >= frames) return this.counts;
      if (!this.#running) throw new Error("the stream is stopped");
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `timed out after ${timeoutMs} ms waiting for ${frames} more frames per port ` +
            `(from ${JSON.stringify(base)}): ${JSON.stringify(c)}`,
        );
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise<void>((r) => this.#waiters.push(r)),
        new Promise<void>((r) => timer = setTimeout(r, left)),
      ]);
      clearTimeout(timer);
    }
  }

  /**
   * Stops sending, then keeps receiving until `settled(counts)` holds (e.g. the switch delivered
   * nothing that testpmd has not received) or `timeoutMs` passes; returns the last counts.
   */
  async stop(
    settled: (c: StreamCounts) => boolean | Promise<boolean>,
    timeoutMs = 20_000,
  ): Promise<StreamCounts> {
    this.#running = false;
    await this.#loop;
    if (this.#error) throw this.#error;
    const deadline = Date.now() + timeoutMs;
    do {
      await this.#round(false, 20);
    } while (!await settled(this.counts) && Date.now() < deadline);
    return this.counts;
  }

  async #round(send: boolean, receiveMs = 0) {
    await this.#fe.cmd(send ? "start tx_first 1" : "start");
    if (receiveMs) await delay(receiveMs);
    await this.#fe.cmd("stop");
    const [x0, x1] = await Promise.all([this.#fe.xstats(0), this.#fe.xstats(1)]);
    const get = (x: Record<string, number>, key: string) => {
      const v = x[key];
      if (v === undefined) throw new Error(`testpmd xstats have no ${key}: ${JSON.stringify(x)}`);
      return v;
    };
    const sent = (x: Record<string, number>) => get(x, "tx_good_packets");
    this.#counts = {
      sent: [sent(x0), sent(x1)],
      received: [get(x0, `rx_q0_${BIN}`), get(x1, `rx_q0_${BIN}`)],
      receivedAll: [get(x0, "rx_good_packets"), get(x1, "rx_good_packets")],
      sentOther: [sent(x0) - get(x0, `tx_q0_${BIN}`), sent(x1) - get(x1, `tx_q0_${BIN}`)],
      rounds: this.#counts.rounds + 1,
    };
    this.#wake();
  }

  #wake() {
    const w = this.#waiters;
    this.#waiters = [];
    w.forEach((f) => f());
  }

  /** Ends the rounds (without draining); for cleanup when a test failed. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.#running = false;
    await this.#loop;
  }
}
