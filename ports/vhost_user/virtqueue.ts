// The ring operations the virtio-net layer runs on, whatever the ring's layout: split
// (virtio 1.x 2.7, split_queue.ts) or packed (2.8, packed_queue.ts). A ring's type is fixed
// when it starts (virtio_net.ts openQueue), so the datapath never asks which layout it has.
// Facts both layouts share live here: descriptor flags, the reasons a chain is refused, what
// the control plane hands a worker, and the shared state of a ring several workers fill.
import type { GuestMemory } from "./memory.ts";

export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;

/** Why a chain was refused (the frame is dropped and counted under this reason). */
export const CHAIN_BAD_INDEX = -1;
export const CHAIN_TOO_LONG = -2;
export const CHAIN_BAD_ADDRESS = -3;
export const CHAIN_BAD_DIRECTION = -4;
export const CHAIN_BAD_INDIRECT = -5;

/** Where the control plane found the ring's three parts (region index + byte offset). */
export interface QueueSpec {
  index: number;
  size: number;
  /** Packed ring (VIRTIO_F_RING_PACKED): `avail` is the driver area, `used` the device area. */
  packed: boolean;
  /** VIRTIO_F_IN_ORDER: buffers are used in the order they were made available. */
  inOrder: boolean;
  desc: { region: number; offset: number };
  avail: { region: number; offset: number };
  used: { region: number; offset: number };
  /**
   * Where the device resumes: the avail index (split), or, packed, the descriptor position in
   * bits 0-14 and the avail wrap counter in bit 15 (the vhost-user SET_VRING_BASE encoding).
   */
  lastAvail: number;
  eventIdx: boolean;
  callFd: number;
  /** The guest's kick eventfd (-1 in polling-only mode): slept on when the worker is idle. */
  kickFd: number;
  /**
   * For a ring that several workers transmit into: [lock, lastAvail, usedIdx, signalled] as
   * Int32 in shared memory, so every worker continues where the previous one left off.
   */
  shared: SharedArrayBuffer | null;
  /**
   * While the front-end logs dirty pages and asked for this ring's used writes to be logged
   * (VHOST_VRING_F_LOG): guest physical [address, length] pairs of the ring memory the device
   * writes (see logged_queue.ts); otherwise empty.
   */
  ringLog: number[];
}

/**
 * One ring as the datapath uses it. A chain is taken with popAvail (a token the ring
 * understands), walked into segments with walkChain, and given back with putUsed; used
 * elements become visible with storeUsed and the guest hears of them with signal.
 */
export interface VirtQueue {
  readonly size: number;
  readonly kickFd: number;
  callFd: number;
  readonly shared: Int32Array | null;
  /** Set when the guest broke the ring's rules: the ring is not serviced any more. */
  broken: boolean;
  /** Set when a write to the call eventfd blocked and was interrupted: the port is reported. */
  callBlocked: boolean;
  /** Segments of the last walked chain: region index, offset in it, length. */
  readonly segRegion: Int32Array;
  readonly segOffset: Float64Array;
  readonly segLength: Float64Array;
  segCount: number;
  /** Byte and word views of each region (index with segRegion). */
  readonly regionBytes: Uint8Array[];
  readonly regionWords: Uint32Array[];

  /** Chains the guest made available and we have not taken yet (a lower bound for packed). */
  availCount(): number;
  /** Takes the next available chain (only after availCount() said one is there). */
  popAvail(): number;
  /** Walks a taken chain into the seg* arrays; returns the segment count or a CHAIN_* reason. */
  walkChain(token: number, writable: boolean): number;
  /** Remembers where the ring stands, so rewind() can give back what is taken after it. */
  mark(): void;
  /** Gives back every chain taken and every used element put since mark(). */
  rewind(): void;
  /**
   * Records `token`'s chain as used with `len` bytes written; visible after storeUsed(). For
   * a chain the device wrote, call it right after walking and writing that chain: its segments
   * are still in seg*, and a logging ring (logged_queue.ts) marks them from there.
   */
  putUsed(token: number, len: number): void;
  /**
   * Says the device wrote `len` bytes at `offset` in `region` after that chain was put: the
   * num_buffers field of a frame's first buffer, known only when the frame's last buffer is
   * taken. Nothing to do unless the ring logs (a migration's dirty log must name a page after
   * its last write, not before).
   */
  wroteLate(region: number, offset: number, len: number): void;
  /** Records the `n` chains in `tokens` as used with nothing written (TX buffers). */
  putUsedBatch(tokens: Int32Array, n: number): void;
  /** Makes the used elements put so far visible to the guest (no interrupt yet). */
  storeUsed(): void;
  /** Signals the call eventfd if the guest asked to hear of what was stored; true if it did. */
  signal(): boolean;
  /** Reads the next `n` available chains' descriptors ahead of use (see split_queue.ts). */
  touchAvail(n: number): number;
  /** Like touchAvail, and also the first byte of each chain's buffer. */
  touchBuffers(n: number): number;
  /** Asks the guest to kick (or not) when it adds buffers. */
  setGuestKicks(on: boolean): void;
  /** Takes a shared ring's lock and its current positions. */
  acquire(): void;
  /** Stores used elements, hands the positions back and releases the lock. */
  releaseShared(): void;
  /** Where the ring stands, in the encoding of QueueSpec.lastAvail (GET_VRING_BASE). */
  position(): number;
}

// Reading what the guest publishes (avail index, descriptor flags, event fields) needs acquire
// order. On x86-64 a plain load has it (TSO: loads are not reordered with older loads, nor with
// the older locked store Atomics.store compiles to), and V8 neither caches typed-array loads nor
// moves them past one another; Atomics.load is a builtin call costing ~13 ns where a load is ~1.
export const PLAIN_LOADS_ACQUIRE = Deno.build.arch === "x86_64";

export const SHARED_LOCK = 0;
export const SHARED_LAST_AVAIL = 1;
export const SHARED_USED_IDX = 2;
export const SHARED_SIGNALLED = 3;
export const SHARED_RING_WORDS = 4;

/** Shared state for a ring whose avail/used positions start at `base` (QueueSpec.lastAvail). */
export function sharedRingState(base: number): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(4 * SHARED_RING_WORDS);
  const s = new Int32Array(sab);
  s[SHARED_LAST_AVAIL] = s[SHARED_USED_IDX] = s[SHARED_SIGNALLED] = base & 0xffff;
  return sab;
}

/** Where a shared ring's avail position stands (read by the control plane once it stopped). */
export function sharedLastAvail(sab: SharedArrayBuffer): number {
  return Atomics.load(new Int32Array(sab), SHARED_LAST_AVAIL);
}

/** Spins for a shared ring's lock (held for one frame at most). */
export function lockShared(s: Int32Array): void {
  while (Atomics.compareExchange(s, SHARED_LOCK, 0, 1) !== 0) { /* held briefly: spin */ }
}

/** virtio's vring_need_event: did the index move past `eventIdx` going from old to new? */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

/**
 * Appends a buffer that is contiguous in guest memory but spread over adjacent regions to q's
 * segments, one segment per region; returns the new segment count or a CHAIN_* reason.
 */
export function appendSplitSegments(
  q: VirtQueue,
  mem: GuestMemory,
  addr: number,
  len: number,
  n: number,
): number {
  while (len > 0) {
    if (n >= q.size) return CHAIN_TOO_LONG;
    const off = mem.translatePart(addr);
    if (off < 0) return CHAIN_BAD_ADDRESS;
    const part = Math.min(len, mem.partLength);
    q.segRegion[n] = mem.region;
    q.segOffset[n] = off;
    q.segLength[n] = part;
    n++;
    addr += part;
    len -= part;
  }
  return n;
}

/**
 * virtio-net's queue numbering (virtio 1.2, 5.1.2 "Virtqueues"): ring 2N is the guest's
 * receiveq N+1, the ring the switch fills (its transmit), and ring 2N+1 the guest's transmitq
 * N+1, the ring the switch polls (its receive). Every ring index is read through these two.
 */
export function isGuestRxRing(ring: number): boolean {
  return (ring & 1) === 0;
}

/** The queue pair a ring belongs to (rings 2N and 2N+1 are pair N). */
export function queuePairOf(ring: number): number {
  return ring >> 1;
}
