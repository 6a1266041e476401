// Split virtqueue operations (virtio 1.x, 2.7): the datapath's view of one ring in guest
// memory. Only ring mechanics live here: walk a descriptor chain into segments, put used
// elements, publish the used index and decide whether the guest wants an interrupt.
// Every chain is bounded by the queue size and every address is translated with a bounds check.
import { signalPeer } from "../peer_eventfd.ts";
import type { GuestMemory } from "./memory.ts";
import { wordView } from "../copy.ts";
import {
  appendSplitSegments,
  CHAIN_BAD_ADDRESS,
  CHAIN_BAD_INDIRECT,
  CHAIN_TOO_LONG,
  lockShared,
  type QueueSpec,
  SHARED_LAST_AVAIL,
  SHARED_LOCK,
  SHARED_SIGNALLED,
  SHARED_USED_IDX,
  type VirtQueue,
  vringNeedEvent,
} from "./virtqueue.ts";
import * as virtqueue from "./virtqueue.ts";

// What the per-frame path tests, as this module's own consts (CONTRIBUTING.md, "The datapath").
const {
  CHAIN_BAD_DIRECTION,
  CHAIN_BAD_INDEX,
  PLAIN_LOADS_ACQUIRE,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
} = virtqueue;

export const VRING_USED_F_NO_NOTIFY = 1;
export const VRING_AVAIL_F_NO_INTERRUPT = 1;

export class SplitQueue implements VirtQueue {
  readonly size: number;
  readonly mask: number;
  readonly eventIdx: boolean;
  readonly inOrder: boolean;
  readonly kickFd: number;
  readonly shared: Int32Array | null;
  callFd: number;
  /** 4 words per descriptor: addr low, addr high, len, flags | next << 16. */
  readonly #desc: Uint32Array;
  /** flags, idx, ring[size], used_event. */
  readonly #avail: Uint16Array;
  /** flags, idx, then (at 2 + 4 * size) avail_event. */
  readonly #used16: Uint16Array;
  /** used ring elements: id at 1 + 2i, len at 2 + 2i. */
  readonly #used32: Uint32Array;
  lastAvail: number;
  usedIdx: number;
  /** The guest's avail index as last read. */
  #availSeen: number;
  /** The used index last stored in the ring, and the one last signalled to the guest. */
  #stored: number;
  #signalled: number;
  /** Set when the guest put an impossible avail index: the ring is not serviced any more. */
  broken = false;
  /** Set when a write to the call eventfd blocked and was interrupted: the port is reported. */
  callBlocked = false;

  /** Segments of the last walked chain: region index, offset in it, length. */
  readonly segRegion: Int32Array;
  /** Byte and word views of each region (index with segRegion). */
  readonly regionBytes: Uint8Array[];
  readonly regionWords: Uint32Array[];
  readonly segOffset: Float64Array;
  readonly segLength: Float64Array;
  segCount = 0;

  constructor(readonly mem: GuestMemory, spec: QueueSpec) {
    const { size } = spec;
    this.size = size;
    this.mask = size - 1;
    this.eventIdx = spec.eventIdx;
    this.inOrder = spec.inOrder;
    this.callFd = spec.callFd;
    this.kickFd = spec.kickFd;
    this.shared = spec.shared ? new Int32Array(spec.shared) : null;
    const buf = (p: { region: number }) => mem.bytes[p.region].buffer;
    this.#desc = new Uint32Array(buf(spec.desc), spec.desc.offset, 4 * size);
    this.#avail = new Uint16Array(buf(spec.avail), spec.avail.offset, 3 + size);
    this.#used16 = new Uint16Array(buf(spec.used), spec.used.offset, 3 + 4 * size);
    this.#used32 = new Uint32Array(buf(spec.used), spec.used.offset, 1 + 2 * size);
    this.lastAvail = spec.lastAvail & 0xffff;
    this.usedIdx = this.lastAvail;
    this.#availSeen = this.lastAvail;
    this.#stored = this.usedIdx;
    this.#signalled = this.usedIdx;
    this.segRegion = new Int32Array(size);
    this.regionBytes = mem.bytes;
    this.regionWords = mem.bytes.map(wordView);
    this.segOffset = new Float64Array(size);
    this.segLength = new Float64Array(size);
  }

  /** Chains the guest made available and we have not taken yet. */
  availCount(): number {
    if (this.broken) return 0;
    // The guest's avail index is re-read only once what we saw last time is used up: one
    // shared-memory read per burst instead of one per frame.
    let n = (this.#availSeen - this.lastAvail) & 0xffff;
    if (n === 0 || n > this.size) {
      this.#availSeen = PLAIN_LOADS_ACQUIRE ? this.#avail[1] : Atomics.load(this.#avail, 1);
      n = (this.#availSeen - this.lastAvail) & 0xffff;
      if (n > this.size) {
        this.broken = true;
        return 0;
      }
    }
    return n;
  }

  /** Takes the next available chain head (call only after availCount() said one is there). */
  popAvail(): number {
    const head = this.#avail[2 + (this.lastAvail & this.mask)];
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    return head;
  }

  /**
   * Reads the head descriptor of each of the next `n` available chains (n <= availCount()) and
   * returns a meaningless value. The guest wrote them from another CPU: touched one after the
   * other in this small loop their cache misses overlap, where walkChain, frame by frame, would
   * wait for each in turn (JS has no prefetch instruction; this is one).
   */
  touchAvail(n: number): number {
    const d = this.#desc;
    let x = 0;
    for (let k = 0; k < n; k++) x ^= d[this.#availHeadWord(k) + 3];
    return x;
  }

  /**
   * Like touchAvail, and also reads the first byte of each head descriptor's buffer: for RX
   * buffers, whose lines the next burst writes (addresses outside guest memory are skipped;
   * walkChain checks them for real later).
   */
  touchBuffers(n: number): number {
    const d = this.#desc;
    const mem = this.mem;
    let x = 0;
    for (let k = 0; k < n; k++) {
      const w = this.#availHeadWord(k);
      const off = mem.translate(d[w] + d[w + 1] * 4294967296, 1);
      if (off >= 0) x ^= this.regionBytes[mem.region][off];
    }
    return x;
  }

  /** Word index in the descriptor table of the head of the k-th chain not yet taken. */
  #availHeadWord(k: number): number {
    return 4 * (this.#avail[2 + ((this.lastAvail + k) & this.mask)] & this.mask);
  }

  #markAvail = 0;
  #markUsed = 0;

  mark(): void {
    this.#markAvail = this.lastAvail;
    this.#markUsed = this.usedIdx;
  }

  /** Gives back what was taken since mark() (a frame that found too little room). */
  rewind(): void {
    this.lastAvail = this.#markAvail;
    this.usedIdx = this.#markUsed;
  }

  position(): number {
    return this.lastAvail;
  }

  /**
   * Walks the chain at `head` into segRegion/segOffset/segLength. `writable` says which
   * direction every descriptor must have (device-writable for RX, device-readable for TX).
   * Returns the number of segments, or a CHAIN_* reason (< 0).
   */
  walkChain(head: number, writable: boolean): number {
    if (head >= this.size) return CHAIN_BAD_INDEX;
    // The common case, kept small so it inlines: one plain descriptor inside one region.
    const d = this.#desc;
    const w0 = 4 * head;
    const fl0 = d[w0 + 3] & 0xffff;
    if ((fl0 & (VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT)) === 0) {
      if ((fl0 & VRING_DESC_F_WRITE) !== (writable ? VRING_DESC_F_WRITE : 0)) {
        return CHAIN_BAD_DIRECTION;
      }
      const len = d[w0 + 2];
      const mem = this.mem;
      const off = mem.translate(d[w0] + d[w0 + 1] * 4294967296, len);
      if (off >= 0) {
        this.segRegion[0] = mem.region;
        this.segOffset[0] = off;
        this.segLength[0] = len;
        this.segCount = 1;
        return 1;
      }
    }
    return this.#walkChainSlow(head, writable);
  }

  /** Chains, indirect tables and descriptors spanning regions. */
  #walkChainSlow(head: number, writable: boolean): number {
    const want = writable ? VRING_DESC_F_WRITE : 0;
    const mem = this.mem;
    let table = this.#desc;
    let tableBase = 0;
    let tableSize = this.size;
    let i = head;
    let n = 0;
    let indirect = false;
    for (let steps = 0;; steps++) {
      if (steps >= tableSize || n >= this.size) return CHAIN_TOO_LONG;
      const w = tableBase + 4 * i;
      const addr = table[w] + table[w + 1] * 4294967296;
      const len = table[w + 2];
      const fl = table[w + 3] & 0xffff;
      if (fl & VRING_DESC_F_INDIRECT) {
        // An indirect table replaces the rest of the chain; it may not nest or be chained.
        if (indirect || (fl & VRING_DESC_F_NEXT) || len === 0 || (len & 15) !== 0) {
          return CHAIN_BAD_INDIRECT;
        }
        const off = mem.translate(addr, len);
        if (off < 0 || (off & 3) !== 0) return CHAIN_BAD_ADDRESS;
        indirect = true;
        table = this.regionWords[mem.region];
        tableBase = off / 4;
        tableSize = len / 16;
        i = 0;
        steps = -1; // the indirect table is bounded by its own length
        continue;
      }
      if ((fl & VRING_DESC_F_WRITE) !== want) return CHAIN_BAD_DIRECTION;
      const off = mem.translate(addr, len);
      if (off >= 0) {
        this.segRegion[n] = mem.region;
        this.segOffset[n] = off;
        this.segLength[n] = len;
        n++;
      } else {
        // Contiguous in guest memory but spread over adjacent regions: one segment per region.
        n = appendSplitSegments(this, mem, addr, len, n);
        if (n < 0) return n;
      }
      if ((fl & VRING_DESC_F_NEXT) === 0) break;
      i = table[w + 3] >>> 16;
      if (i >= tableSize) return CHAIN_BAD_INDEX;
    }
    this.segCount = n;
    return n;
  }

  /** Writes a used element; the guest sees it once storeUsed() stores the index. */
  putUsed(head: number, len: number): void {
    const slot = 1 + 2 * (this.usedIdx & this.mask);
    this.#used32[slot] = head;
    this.#used32[slot + 1] = len;
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
  }

  /**
   * With IN_ORDER the guest frees buffers in the order it made them available, so one used
   * element (the last chain's head) stands for the whole batch (virtio 1.x 2.7.9).
   */
  wroteLate(_region: number, _offset: number, _len: number): void {}

  putUsedBatch(heads: Int32Array, n: number): void {
    if (n === 0) return;
    if (this.inOrder) {
      this.usedIdx = (this.usedIdx + n - 1) & 0xffff;
      this.putUsed(heads[n - 1], 0);
      return;
    }
    for (let k = 0; k < n; k++) this.putUsed(heads[k], 0);
  }

  /** Makes the used elements put so far visible to the guest (no interrupt yet). */
  storeUsed(): void {
    if (this.usedIdx === this.#stored) return;
    // Atomics.store is a full barrier on x86: the used elements are visible before the index.
    Atomics.store(this.#used16, 1, this.usedIdx);
    this.#stored = this.usedIdx;
  }

  /** Signals the call eventfd if the guest asked to hear of what was stored since last time. */
  signal(): boolean {
    const newIdx = this.#stored;
    const old = this.#signalled;
    if (newIdx === old) return false;
    this.#signalled = newIdx;
    let notify: boolean;
    const a = this.#avail;
    if (this.eventIdx) {
      const usedEvent = PLAIN_LOADS_ACQUIRE ? a[2 + this.size] : Atomics.load(a, 2 + this.size);
      notify = vringNeedEvent(usedEvent, newIdx, old);
    } else {
      const flags = PLAIN_LOADS_ACQUIRE ? a[0] : Atomics.load(a, 0);
      notify = (flags & VRING_AVAIL_F_NO_INTERRUPT) === 0;
    }
    if (!notify || this.callFd < 0) return false;
    if (!signalPeer(this.callFd)) {
      // The front-end made its call eventfd block us (ports/peer_eventfd.ts): never again.
      this.callFd = -1;
      this.callBlocked = true;
      return false;
    }
    return true;
  }

  /** Takes a shared ring's lock and its current positions. */
  acquire(): void {
    const s = this.shared!;
    lockShared(s);
    this.lastAvail = s[SHARED_LAST_AVAIL];
    this.usedIdx = this.#stored = s[SHARED_USED_IDX];
    this.#signalled = s[SHARED_SIGNALLED];
  }

  /** Stores the used index, hands the positions back and releases the lock. */
  releaseShared(): void {
    const s = this.shared!;
    this.storeUsed();
    s[SHARED_LAST_AVAIL] = this.lastAvail;
    s[SHARED_USED_IDX] = this.#stored;
    s[SHARED_SIGNALLED] = this.#signalled;
    Atomics.store(s, SHARED_LOCK, 0);
  }

  /**
   * Asks the guest to kick (or not) when it adds buffers. While we busy-poll, kicks are
   * wasted work for the guest; before sleeping on the kick fd we turn them back on.
   */
  setGuestKicks(on: boolean): void {
    if (this.eventIdx) {
      // With EVENT_IDX the guest kicks when its avail index passes avail_event: point it at
      // the next chain to hear of it, or leave it behind so the guest kicks only on wrap.
      if (on) Atomics.store(this.#used16, 2 + 4 * this.size, this.lastAvail);
    } else {
      Atomics.store(this.#used16, 0, on ? 0 : VRING_USED_F_NO_NOTIFY);
    }
  }
}
