// Writes to an eventfd a peer shares with us (a guest's call eventfd). However we opened it,
// the peer can make such a write block (it clears O_NONBLOCK on the file description both hold
// and fills the counter). So each write is announced in a word the control plane watches
// (switch/datapath.ts): a write still announced a tick later, by a thread asleep in the kernel,
// is stuck, and the control plane interrupts it with a signal (ffi/signal.ts). The write then reports failure and the caller
// stops writing that fd; the worker reports the port, which is disconnected.
import { eventfdWrite } from "../ffi/fd.ts";

let watch: Float64Array | null = null;
let watchIndex = 0;
let sequence = 0;
let interrupted = 0;

/** Announces this thread's peer writes in `words[index]` (0 while none is in progress). */
export function announcePeerWritesIn(words: Float64Array, index: number): void {
  watch = words;
  watchIndex = index;
}

/** Writes 1 to a peer's eventfd; false if the write blocked and was interrupted. */
export function signalPeer(fd: number): boolean {
  const w = watch;
  if (w === null) return eventfdWrite(fd);
  w[watchIndex] = ++sequence;
  const ok = eventfdWrite(fd);
  w[watchIndex] = 0;
  if (!ok) interrupted++;
  return ok;
}

/** Peer writes interrupted on this thread so far (a change means a port to report). */
export function interruptedPeerWrites(): number {
  return interrupted;
}
