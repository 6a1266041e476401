// epoll, and the Reactor that lets the control plane wait on many fds without blocking Deno's
// event loop: one epoll_wait at a time runs on Deno's blocking thread pool (a `nonblocking` FFI
// symbol) and resolves when any watched fd is ready; an eventfd wakes it for shutdown.
import { libc } from "./libc.ts";
import { check } from "./errno.ts";
import { closeFd, eventfdCreate, eventfdRead, eventfdWrite } from "./fd.ts";

export const EPOLLIN = 0x1;
export const EPOLLOUT = 0x4;
export const EPOLLERR = 0x8;
export const EPOLLHUP = 0x10;
/** Edge-triggered: reported once per change (for an eventfd, once per write). */
export const EPOLLET = 0x80000000;
const EPOLL_CLOEXEC = 0o2000000;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;
/** struct epoll_event is packed on x86_64: u32 events, u64 data. */
export const EPOLL_EVENT_SIZE = 12;

export function epollCreate(): number {
  return check("epoll_create1", libc.epoll_create1(EPOLL_CLOEXEC));
}

const ctlEvent = new Uint8Array(new ArrayBuffer(EPOLL_EVENT_SIZE));
const ctlView = new DataView(ctlEvent.buffer);

function ctl(epfd: number, op: number, fd: number, events: number, name: string): void {
  ctlView.setUint32(0, events, true);
  ctlView.setUint32(4, fd, true);
  ctlView.setUint32(8, 0, true);
  check("epoll_ctl", libc.epoll_ctl(epfd, op, fd, ctlEvent), `${name} fd ${fd}`);
}

export function epollAdd(epfd: number, fd: number, events = EPOLLIN): void {
  ctl(epfd, EPOLL_CTL_ADD, fd, events, "ADD");
}

export function epollModify(epfd: number, fd: number, events: number): void {
  ctl(epfd, EPOLL_CTL_MOD, fd, events, "MOD");
}

export function epollDelete(epfd: number, fd: number): void {
  ctl(epfd, EPOLL_CTL_DEL, fd, 0, "DEL");
}

/** Waits synchronously (for Workers); returns how many events were written to `events`. */
export function epollWait(epfd: number, events: Uint8Array, timeoutMs: number): number {
  const n = libc.epoll_wait(
    epfd,
    events,
    Math.floor(events.byteLength / EPOLL_EVENT_SIZE),
    timeoutMs,
  );
  return n < 0 ? 0 : n; // EINTR: treat as a timeout, callers loop anyway
}

/** The little-endian 32-bit word at b[at, at + 4), as a signed integer. */
function i32At(b: Uint8Array, at: number): number {
  return b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24);
}

/** The events (EPOLLIN, EPOLLERR, ...) that fired for event `i` (struct epoll_event.events). */
export function eventMask(events: Uint8Array, i: number): number {
  return i32At(events, i * EPOLL_EVENT_SIZE) >>> 0;
}

/** The fd stored in the data field of event `i` (packed struct: data at byte 4). */
export function eventFd(events: Uint8Array, i: number): number {
  return i32At(events, i * EPOLL_EVENT_SIZE + 4);
}

type Handler = (events: number) => void;

export class Reactor {
  readonly #epfd = epollCreate();
  readonly #wakeFd = eventfdCreate();
  readonly #handlers = new Map<number, Handler>();
  readonly #events = new Uint8Array(new ArrayBuffer(64 * EPOLL_EVENT_SIZE));
  #closed = false;
  readonly #done: Promise<void>;

  constructor() {
    epollAdd(this.#epfd, this.#wakeFd);
    this.#done = this.#loop();
  }

  /** Calls `handler` whenever `fd` is ready (level-triggered: it should drain the fd). */
  watch(fd: number, handler: Handler, events = EPOLLIN): void {
    if (this.#handlers.has(fd)) epollModify(this.#epfd, fd, events);
    else epollAdd(this.#epfd, fd, events);
    this.#handlers.set(fd, handler);
  }

  /** Stops watching; call before closing the fd. */
  unwatch(fd: number): void {
    if (!this.#handlers.delete(fd)) return;
    epollDelete(this.#epfd, fd);
  }

  async close(): Promise<void> {
    if (this.#closed) return this.#done;
    this.#closed = true;
    eventfdWrite(this.#wakeFd);
    await this.#done;
    closeFd(this.#epfd);
    closeFd(this.#wakeFd);
    this.#handlers.clear();
  }

  async #loop(): Promise<void> {
    const ev = this.#events;
    const max = ev.byteLength / EPOLL_EVENT_SIZE;
    while (!this.#closed) {
      const n = await libc.epoll_wait_async(this.#epfd, ev, max, -1);
      if (this.#closed) break;
      for (let i = 0; i < n; i++) {
        const fd = eventFd(ev, i);
        const events = eventMask(ev, i);
        if (fd === this.#wakeFd) {
          eventfdRead(fd);
          continue;
        }
        const handler = this.#handlers.get(fd);
        if (!handler) continue;
        try {
          handler(events);
        } catch (err) {
          // A handler's failure belongs to its own connection; the reactor keeps serving the rest.
          console.error(`reactor: handler for fd ${fd} failed:`, err);
        }
      }
    }
  }
}
