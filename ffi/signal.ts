// Signal handlers written as x86-64 machine code, and thread interrupts. A handler runs on
// whichever thread the signal hits, inside the signal context, where JavaScript cannot run, so
// each is a few instructions in a page of its own, mapped read+exec (never writable and
// executable at once).
//
// Interrupts: a datapath worker writes eventfds a front-end shares with it (the guest's call
// eventfd). O_NONBLOCK is a flag of the open file description, which the front-end holds too
// and may clear; with the counter full, the worker's write then blocks for good. A write cannot
// be made non-blocking per call on an eventfd, so the control plane sends a worker found stuck
// in one SIG_INTERRUPT with pthread_kill: its handler does nothing and is installed without
// SA_RESTART, so the blocked write returns EINTR and the worker carries on.
import { libc } from "./libc.ts";
import { check } from "./errno.ts";
import { MAP_ANONYMOUS, MAP_PRIVATE, mmap, PROT_READ, PROT_WRITE, viewMapping } from "./mem.ts";

const PROT_EXEC = 4;
/** sa_flags bit: the handler takes (sig, siginfo, context). */
export const SA_SIGINFO = 4;
/** struct sigaction (glibc, x86_64): handler 8, sa_mask 128, sa_flags 4 (+4 pad), restorer 8. */
export const SIGACTION_SIZE = 152;
export const SIGACTION_FLAGS = 136;
const PAGE = 4096;

/** Copies `code` into fresh pages made read+exec; returns their address. */
export function executable(code: Uint8Array): bigint {
  const length = Math.ceil(code.length / PAGE) * PAGE;
  const m = mmap(length, { prot: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE | MAP_ANONYMOUS });
  new Uint8Array(viewMapping(m.address, length)).set(code);
  check("mprotect", libc.mprotect(m.pointer, BigInt(length), PROT_READ | PROT_EXEC));
  return m.address;
}

/**
 * Installs the handler at `handler` for `sig` with `flags` (glibc adds its own restorer).
 * Returns the previous struct sigaction (SIGACTION_SIZE bytes).
 */
export function setHandler(sig: number, handler: bigint, flags: number): Uint8Array {
  const act = new Uint8Array(new ArrayBuffer(SIGACTION_SIZE));
  const view = new DataView(act.buffer);
  view.setBigUint64(0, handler, true);
  view.setInt32(SIGACTION_FLAGS, flags, true);
  const old = new Uint8Array(new ArrayBuffer(SIGACTION_SIZE));
  check("sigaction", libc.sigaction(sig, act, old), `signal ${sig}`);
  return old;
}

/**
 * The interrupt signal: SIGRTMIN + 6. glibc's SIGRTMIN is 34 (32 and 33 are its own); Deno and
 * V8 use none of the real-time signals.
 */
export const SIG_INTERRUPT = 40;
let interruptInstalled = false;

/** Installs the do-nothing SIG_INTERRUPT handler, without SA_RESTART (once per process). */
export function installInterruptHandler(): void {
  if (interruptInstalled || Deno.build.arch !== "x86_64") return;
  // deno-fmt-ignore
  const code = Uint8Array.of(
    0xc3, //  ret    being delivered was the point: the blocked call returns EINTR
  );
  setHandler(SIG_INTERRUPT, executable(code), 0);
  interruptInstalled = true;
}

/** The calling thread's pthread_t (a Worker's, when called there). */
export function currentThread(): bigint {
  const p = libc.pthread_self();
  return p === null ? 0n : Deno.UnsafePointer.value(p);
}

/** The calling thread's kernel thread id. */
export function currentThreadId(): number {
  return libc.gettid();
}

/**
 * Whether thread `tid` of this process is asleep in the kernel (state S or D in
 * /proc/self/task/TID/stat), as opposed to running or waiting for a CPU (R): a thread the
 * scheduler merely has not run for a while must not be taken for a blocked one.
 */
export function threadAsleep(tid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/self/task/${tid}/stat`);
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state === "S" || state === "D";
  } catch {
    return false;
  }
}

/** Interrupts whatever blocking call `thread` is in (see installInterruptHandler). */
export function interruptThread(thread: bigint): void {
  if (!interruptInstalled || thread === 0n) return;
  libc.pthread_kill(Deno.UnsafePointer.create(thread), SIG_INTERRUPT);
}
