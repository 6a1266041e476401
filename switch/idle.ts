// How an idle datapath worker stops burning its core: it asks the guests to kick again, checks
// the rings once more (a frame may have landed in between), then blocks in epoll_wait on the
// kick eventfds and on its own wake eventfd, which the control plane writes with every message.
// The kick eventfds are the guests': they are watched edge-triggered and never read, since a
// front-end can make its fd blocking and drain it between our wake-up and our read, which would
// then block the worker. Sockets are ours and stay readable while frames wait (level-triggered);
// one in error (its interface went away) is reported until its error is taken, and one hung up
// for good is dropped from the set, so that neither keeps the worker from sleeping.
import { closeFd, eventfdCreate, eventfdRead, takeSocketError } from "../ffi/fd.ts";
import {
  EPOLL_EVENT_SIZE,
  epollAdd,
  epollCreate,
  epollDelete,
  EPOLLERR,
  EPOLLET,
  EPOLLHUP,
  EPOLLIN,
  epollWait,
  eventFd,
  eventMask,
} from "../ffi/epoll.ts";

export class IdleSleeper {
  #wakeFd = eventfdCreate();
  #epfd = -1;
  #fds: number[] = [];
  #sockets = new Set<number>();
  readonly #events = new Uint8Array(new ArrayBuffer(32 * EPOLL_EVENT_SIZE));

  get wakeFd(): number {
    return this.#wakeFd;
  }

  /**
   * The fds to wake on: rings' kick eventfds, and sockets (AF_PACKET, UDP) that are readable
   * while frames wait; a fresh epoll set, as old fds may be closed.
   */
  watch(fds: number[], sockets: number[] = []): void {
    closeFd(this.#epfd);
    this.#epfd = epollCreate();
    this.#fds = fds.filter((fd) => fd >= 0);
    this.#sockets = new Set(sockets.filter((fd) => fd >= 0));
    epollAdd(this.#epfd, this.#wakeFd);
    for (const fd of this.#fds) epollAdd(this.#epfd, fd, EPOLLIN | EPOLLET);
    for (const fd of this.#sockets) epollAdd(this.#epfd, fd);
  }

  /** Blocks up to `timeoutMs`; drains the wake fd if it fired. Returns the fds that fired. */
  sleep(timeoutMs: number): number {
    if (this.#wakeFd < 0) return 0;
    if (this.#epfd < 0) this.watch([]);
    const n = epollWait(this.#epfd, this.#events, timeoutMs);
    for (let i = 0; i < n; i++) {
      const fd = eventFd(this.#events, i);
      const mask = eventMask(this.#events, i);
      if (fd === this.#wakeFd) {
        eventfdRead(this.#wakeFd);
      } else if (this.#sockets.has(fd) && (mask & EPOLLHUP) !== 0) {
        epollDelete(this.#epfd, fd);
        this.#sockets.delete(fd);
      } else if (this.#sockets.has(fd) && (mask & EPOLLERR) !== 0) {
        takeSocketError(fd);
      }
    }
    return n;
  }

  /** Idempotent: the worker closes it when told to stop, before it may be terminated. */
  close(): void {
    closeFd(this.#epfd);
    closeFd(this.#wakeFd);
    this.#epfd = this.#wakeFd = -1;
  }
}
