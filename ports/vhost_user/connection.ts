// One vhost-user control connection: reads the socket (through the Reactor), reassembles
// messages with their fds, hands them one at a time to the device and writes the replies.
// Whatever the front-end sends, the worst outcome is this connection being closed.
import { closeFd } from "../../ffi/fd.ts";
import type { Reactor } from "../../ffi/epoll.ts";
import { MAX_FDS, recvWithFds, sendWithFds } from "../../ffi/unix.ts";
import * as P from "./protocol.ts";
import type { VhostUserDevice } from "./device.ts";

/** recvmsg calls per readiness event before other fds get their turn. */
const READS_PER_WAKEUP = 16;
/** Messages queued (read, not handled) before we stop reading from that front-end. */
const MAX_QUEUED = 256;
/** Messages handled back to back before the control thread yields to its event loop. */
const YIELD_EVERY = 32;

/** Requests whose reply carries a payload (REPLY_ACK does not apply to them). */
const HAS_REPLY = new Set<number>([
  P.VHOST_USER_GET_FEATURES,
  P.VHOST_USER_GET_PROTOCOL_FEATURES,
  P.VHOST_USER_GET_VRING_BASE,
  P.VHOST_USER_GET_QUEUE_NUM,
  P.VHOST_USER_GET_MAX_MEM_SLOTS,
  P.VHOST_USER_GET_STATUS,
  P.VHOST_USER_GET_CONFIG,
  P.VHOST_USER_SET_LOG_BASE,
]);

export interface ConnectionStats {
  messages: number;
  errors: number;
  lastError: string;
}

export class VhostUserConnection {
  readonly #reader = new P.MessageReader();
  /** Small reads: a front-end's flood of tiny messages arrives a few dozen at a time. */
  readonly #buf = new Uint8Array(new ArrayBuffer(8 * 1024));
  #handled = 0;
  #chain: Promise<void> = Promise.resolve();
  #closed = false;
  /** Messages read but not handled yet, and whether reading is paused because of them. */
  #queued = 0;
  #paused = false;
  readonly stats: ConnectionStats = { messages: 0, errors: 0, lastError: "" };
  readonly closed: Promise<void>;
  #resolveClosed!: () => void;

  constructor(
    readonly fd: number,
    readonly device: VhostUserDevice,
    readonly reactor: Reactor,
    readonly log: (msg: string) => void,
    /** Settles when the previous connection of the port finished tearing its device down. */
    after: Promise<void> = Promise.resolve(),
  ) {
    this.closed = new Promise((r) => (this.#resolveClosed = r));
    this.#chain = after;
    reactor.watch(fd, () => this.#onReadable());
  }

  /** Whether close() was called (its device may still be tearing down). */
  get closing(): boolean {
    return this.#closed;
  }

  #onReadable(): void {
    if (this.#closed) return;
    try {
      // A bounded amount per wake-up, so one busy front-end cannot hold the control thread.
      for (let reads = 0; reads < READS_PER_WAKEUP; reads++) {
        const fds: number[] = [];
        const n = recvWithFds(this.fd, this.#buf, fds);
        if (n < 0) return;
        if (n === 0) {
          for (const fd of fds) closeFd(fd);
          this.close("front-end disconnected");
          return;
        }
        this.#reader.push(this.#buf.subarray(0, n), fds);
        for (const msg of this.#reader.ready.splice(0)) {
          this.#queued++;
          this.#chain = this.#chain.then(() => this.#process(msg))
            // Whatever escaped the handler (a failed reply, a bug) ends this connection only.
            .catch((err) => this.#fail(err, P.requestName(msg.request)))
            .finally(() => this.#dequeued());
        }
        if (this.#reader.pendingFdCount > MAX_FDS) {
          throw new P.ProtocolError(`more than ${MAX_FDS} fds sent with one message`);
        }
        if (this.#queued >= MAX_QUEUED) {
          // The front-end sends faster than we handle its messages: stop reading until the
          // queue drains (it then waits on its socket, not us on our memory).
          this.reactor.unwatch(this.fd);
          this.#paused = true;
          return;
        }
      }
    } catch (err) {
      this.#fail(err, "protocol error");
    }
  }

  #dequeued(): void {
    this.#queued--;
    if (this.#paused && !this.#closed && this.#queued <= MAX_QUEUED / 4) {
      this.#paused = false;
      this.reactor.watch(this.fd, () => this.#onReadable());
    }
  }

  async #process(msg: P.Message): Promise<void> {
    if (this.#closed) {
      for (const fd of msg.fds) closeFd(fd);
      return;
    }
    // Handling runs as a promise chain (microtasks): now and then let the event loop serve
    // other connections, timers and HTTP, however fast this front-end sends.
    if (++this.#handled % YIELD_EVERY === 0) await new Promise((r) => setTimeout(r, 0));
    this.stats.messages++;
    const name = P.requestName(msg.request);
    // Decided before handling: a reset clears the negotiated REPLY_ACK it was asked under.
    const ack = this.#wantsAck(msg);
    try {
      if ((msg.flags & P.VHOST_USER_VERSION_MASK) !== P.VHOST_USER_VERSION) {
        for (const fd of msg.fds) closeFd(fd);
        throw new P.ProtocolError(
          `${name}: unsupported version in flags 0x${msg.flags.toString(16)}`,
        );
      }
      const reply = await this.device.handle(msg);
      if (reply !== null) this.#send(msg.request, reply);
      else if (ack) this.#send(msg.request, P.u64Payload(0n));
    } catch (thrown) {
      const err = thrown instanceof Error ? thrown : new Error(String(thrown));
      this.stats.errors++;
      this.stats.lastError = `${name}: ${err.message}`;
      // A front-end sending nothing but bad requests must not turn into a flood of log lines.
      const n = this.stats.errors;
      if (n <= 10 || (n & (n - 1)) === 0) {
        this.log(`rejected ${name}: ${err.message}${n > 10 ? ` (${n} rejected so far)` : ""}`);
      }
      if (HAS_REPLY.has(msg.request)) {
        // No meaningful reply exists; the front-end would wait forever. Hang up instead.
        this.close(`cannot answer ${name}`);
      } else if (ack) {
        this.#send(msg.request, P.u64Payload(1n));
      }
    }
  }

  #wantsAck(msg: P.Message): boolean {
    return (msg.flags & P.VHOST_USER_NEED_REPLY_MASK) !== 0 && this.device.replyAck &&
      !HAS_REPLY.has(msg.request);
  }

  /** Sends a reply; a front-end that cannot take it (full buffer, EPIPE) is hung up on. */
  #send(request: number, payload: Uint8Array): void {
    if (this.#closed) return;
    const bytes = P.encodeMessage(request, P.VHOST_USER_VERSION | P.VHOST_USER_REPLY_MASK, payload);
    let n: number;
    try {
      n = sendWithFds(this.fd, bytes);
    } catch (err) {
      this.#fail(err, `reply to ${P.requestName(request)}`);
      return;
    }
    if (n !== bytes.length) this.close("front-end is not reading its replies");
  }

  #fail(err: unknown, during = "protocol error"): void {
    const text = err instanceof Error ? err.message : String(err);
    this.stats.errors++;
    this.stats.lastError = text;
    this.close(`${during}: ${text}`);
  }

  /** Closes the socket; the device is reset (datapath stopped, memory freed) in order. */
  close(reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    this.log(`connection closed: ${reason}`);
    if (!this.#paused) this.reactor.unwatch(this.fd);
    closeFd(this.fd);
    // Every fd recvmsg gave us is owned here until a message is handled: the stray ones, and
    // those of messages read but not queued (a framing error in the same read).
    for (const fd of this.#reader.takeStrayFds()) closeFd(fd);
    for (const msg of this.#reader.ready.splice(0)) for (const fd of msg.fds) closeFd(fd);
    this.#chain = this.#chain
      .then(() => this.device.reset())
      .catch((err) => this.log(`reset failed: ${err}`))
      .then(() => this.#resolveClosed());
  }
}
