// Packed virtqueue operations (VIRTIO_F_RING_PACKED, virtio 1.2 section 2.8): one descriptor
// ring that the driver fills and the device writes back in place. A descriptor is available
// when its AVAIL flag equals the driver's wrap counter and its USED flag does not; the device
// marks a chain used by writing one descriptor with both flags equal to its own wrap counter
// at its next used position and skipping as many positions as the chain had descriptors.
//
// Positions are kept as 16-bit sequence numbers (`seq`): the ring position is seq & mask and
// the wrap counter is 1 for seq in [0, size), 0 for [size, 2 * size), and so on. The ring size
// is a power of two (the control plane refuses others), so 2^16 is a whole number of laps and
// the wrap counter stays right when seq wraps; wrap-around comparisons are vring_need_event's.
//
// This device uses buffers in the order it takes them, so a chain's used descriptor lands in
// the position of its own head. Every chain is bounded by the ring size, every address is
// translated with a bounds check, and nothing is written to the ring before storeUsed(), so a
// frame that gives its buffers back (rewind) leaves the guest's descriptors untouched.
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
  PLAIN_LOADS_ACQUIRE,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
} = virtqueue;

export const VRING_PACKED_DESC_F_AVAIL = 1 << 7;
export const VRING_PACKED_DESC_F_USED = 1 << 15;
/** Event suppression flags (the driver's and the device's area, virtio 1.2 2.8.14). */
export const VRING_PACKED_EVENT_FLAG_ENABLE = 0;
export const VRING_PACKED_EVENT_FLAG_DISABLE = 1;
export const VRING_PACKED_EVENT_FLAG_DESC = 2;

/** How far availCount looks ahead for available chains (a burst and then some). */
const SCAN_CHAINS = 64;

/** The sequence number of a SET_VRING_BASE value: position in bits 0-14, wrap in bit 15. */
export function packedSeqFromBase(base: number, size: number): number {
  const pos = base & 0x7fff;
  return (base & 0x8000) ? pos : pos + size;
}

/** The SET_VRING_BASE encoding of a sequence number (what GET_VRING_BASE returns). */
export function packedBaseFromSeq(seq: number, size: number): number {
  return (seq & (size - 1)) | (wrapOf(seq, size) << 15);
}

/**
 * Where a packed ring really stands, from its descriptors' USED flags, for a ring that starts
 * on a new connection. A front-end that lost its back-end cannot know (QEMU then sends the base
 * it got at the last clean stop, or its initial one): positions the device passed in this lap
 * carry USED = its wrap counter (it wrote them, or the driver already made them available for
 * the next lap), positions ahead carry the other value (written in the previous lap, or made
 * available for this one). That holds while chains have one descriptor each (Linux and DPDK
 * use indirect tables for more), so the flags are trusted only when they show exactly one such
 * edge; otherwise, and when `base` agrees with them, `base` stands.
 */
export function packedResumeBase(usedFlag: (pos: number) => number, size: number, base: number) {
  const u0 = usedFlag(0);
  let edge = size;
  for (let i = 1; i < size; i++) {
    const u = usedFlag(i);
    if (edge === size && u !== u0) edge = i;
    else if (edge !== size && u === u0) return base; // more than one edge: chains, keep base
  }
  // No edge: every position is ahead of the device, which starts a lap at 0.
  const found = edge === size ? (u0 ? 0 : 0x8000) : edge | (u0 ? 0x8000 : 0);
  return found === base ? base : found;
}

/** The wrap counter of a sequence number: 1 in even laps, 0 in odd ones (size a power of two). */
function wrapOf(seq: number, size: number): number {
  return (seq & size) === 0 ? 1 : 0;
}

export class PackedQueue implements VirtQueue {
  readonly size: number;
  readonly mask: number;
  readonly eventIdx: boolean;
  readonly inOrder: boolean;
  readonly kickFd: number;
  readonly shared: Int32Array | null;
  callFd: number;
  broken = false;
  callBlocked = false;
  /** 4 words per descriptor: addr low, addr high, len, id | flags << 16. */
  readonly #desc: Uint32Array;
  /** Driver event suppression (we read): off_wrap, flags. */
  readonly #driverEvent: Uint16Array;
  /** Device event suppression (we write): off_wrap, flags. */
  readonly #deviceEvent: Uint16Array;
  /** Next descriptor to take, and the next used position, as sequence numbers. */
  #availSeq: number;
  #usedSeq: number;
  /** Used positions last made visible, and last signalled. */
  #storedSeq: number;
  #signalledSeq: number;
  /** Chains known available past #availSeq (so the flags are read once per burst). */
  #ahead = 0;
  /** Per head position: descriptors in the chain, and its buffer id (from its last descriptor). */
  readonly #count: Int32Array;
  readonly #ids: Uint16Array;
  /**
   * Used descriptors put but not yet written: position, length, and the word holding the
   * buffer id (bits 0-15) and the flags (bits 16-31), stored as one.
   */
  readonly #pendPos: Int32Array;
  readonly #pendLen: Int32Array;
  readonly #pendWord: Int32Array;
  #pending = 0;
  #markAvail = 0;
  #markUsed = 0;
  #markPending = 0;

  readonly segRegion: Int32Array;
  readonly segOffset: Float64Array;
  readonly segLength: Float64Array;
  segCount = 0;
  readonly regionBytes: Uint8Array[];
  readonly regionWords: Uint32Array[];

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
    this.#driverEvent = new Uint16Array(buf(spec.avail), spec.avail.offset, 2);
    this.#deviceEvent = new Uint16Array(buf(spec.used), spec.used.offset, 2);
    this.#availSeq = packedSeqFromBase(spec.lastAvail, size);
    this.#usedSeq = this.#storedSeq = this.#signalledSeq = this.#availSeq;
    this.#count = new Int32Array(size);
    this.#ids = new Uint16Array(size);
    this.#pendPos = new Int32Array(size);
    this.#pendLen = new Int32Array(size);
    this.#pendWord = new Int32Array(size);
    this.segRegion = new Int32Array(size);
    this.segOffset = new Float64Array(size);
    this.segLength = new Float64Array(size);
    this.regionBytes = mem.bytes;
    this.regionWords = mem.bytes.map(wordView);
  }

  availCount(): number {
    if (this.broken) return 0;
    if (this.#ahead > 0) return this.#ahead;
    return this.#scan();
  }

  /** Counts the chains ahead (out of line: availCount, called per frame, stays small). */
  #scan(): number {
    // Walk the flags of the chains ahead: the driver writes a chain's head flags last, so an
    // available head means its whole chain is there. The word read holds the buffer id too:
    // each chain's length and id are noted here, so popAvail reads nothing from the ring.
    const d = this.#desc;
    const mask = this.mask;
    const size = this.size;
    const bits = VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED;
    let seq = this.#availSeq;
    let n = 0;
    let descs = 0;
    while (n < SCAN_CHAINS && descs < size) {
      const head = seq & mask;
      const w = 4 * head + 3;
      let word = PLAIN_LOADS_ACQUIRE ? d[w] : Atomics.load(d, w);
      // Available: AVAIL equal to the lap's wrap counter and USED not (2.8.1).
      const want = (seq & size) === 0 ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED;
      if (((word >>> 16) & bits) !== want) break;
      let count = 1;
      while ((word >>> 16) & VRING_DESC_F_NEXT) {
        if (descs + count >= size) {
          // A chain that does not end within the ring: the driver broke the ring.
          this.broken = true;
          this.#ahead = n;
          return n;
        }
        word = d[4 * ((seq + count) & mask) + 3];
        count++;
      }
      this.#count[head] = count;
      this.#ids[head] = word & 0xffff;
      seq = (seq + count) & 0xffff;
      descs += count;
      n++;
    }
    this.#ahead = n;
    return n;
  }

  popAvail(): number {
    if (this.#ahead === 0) return this.#popUnscanned();
    const seq = this.#availSeq;
    this.#availSeq = (seq + this.#count[seq & this.mask]) & 0xffff;
    this.#ahead--;
    return seq;
  }

  /** popAvail without a scan before it: walks the chain's NEXT flags here. */
  #popUnscanned(): number {
    const d = this.#desc;
    const mask = this.mask;
    const seq = this.#availSeq;
    let pos = seq & mask;
    let w3 = d[4 * pos + 3];
    let count = 1;
    while ((w3 >>> 16) & VRING_DESC_F_NEXT) {
      if (count >= this.size) {
        // A chain as long as the ring: the driver broke the ring.
        this.broken = true;
        break;
      }
      pos = (pos + 1) & mask;
      w3 = d[4 * pos + 3];
      count++;
    }
    const head = seq & mask;
    this.#count[head] = count;
    this.#ids[head] = w3 & 0xffff;
    this.#availSeq = (seq + count) & 0xffff;
    return seq;
  }

  walkChain(token: number, writable: boolean): number {
    const head = token & this.mask;
    const d = this.#desc;
    const w0 = 4 * head;
    const fl0 = d[w0 + 3] >>> 16;
    // The common case, kept small so it inlines: one plain descriptor inside one region.
    // (NEXT read again here only picks the path: the chain's length stays the scan's.)
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

  /** Chains of several descriptors, indirect tables and buffers spanning regions. */
  #walkChainSlow(head: number, writable: boolean): number {
    const want = writable ? VRING_DESC_F_WRITE : 0;
    const count = this.#count[head];
    let n = 0;
    for (let k = 0; k < count; k++) {
      const w = 4 * ((head + k) & this.mask);
      const d = this.#desc;
      const addr = d[w] + d[w + 1] * 4294967296;
      const len = d[w + 2];
      const fl = d[w + 3] >>> 16;
      if (fl & VRING_DESC_F_INDIRECT) {
        // An indirect table is the chain's only descriptor (virtio 1.2 2.8.19).
        if (count !== 1 || (fl & VRING_DESC_F_NEXT)) return CHAIN_BAD_INDIRECT;
        return this.#walkIndirect(addr, len, want);
      }
      if ((fl & VRING_DESC_F_WRITE) !== want) return CHAIN_BAD_DIRECTION;
      n = this.#append(addr, len, n);
      if (n < 0) return n;
    }
    this.segCount = n;
    return n;
  }

  /** An indirect table: len / 16 packed descriptors, taken in order (no NEXT links). */
  #walkIndirect(addr: number, len: number, want: number): number {
    if (len === 0 || (len & 15) !== 0) return CHAIN_BAD_INDIRECT;
    const mem = this.mem;
    const off = mem.translate(addr, len);
    if (off < 0 || (off & 3) !== 0) return CHAIN_BAD_ADDRESS;
    const t = this.regionWords[mem.region];
    const base = off / 4;
    const entries = len / 16;
    let n = 0;
    for (let k = 0; k < entries; k++) {
      const w = base + 4 * k;
      const fl = t[w + 3] >>> 16;
      if (fl & VRING_DESC_F_INDIRECT) return CHAIN_BAD_INDIRECT;
      // DPDK's virtio PMD (22.11) presets WRITE on every entry of its packed indirect tables
      // and leaves it on the virtio-net header entry of a TX chain: reading a buffer marked
      // device-writable is harmless, so only buffers we write must be marked writable.
      if (want !== 0 && (fl & VRING_DESC_F_WRITE) === 0) return CHAIN_BAD_DIRECTION;
      n = this.#append(t[w] + t[w + 1] * 4294967296, t[w + 2], n);
      if (n < 0) return n;
    }
    this.segCount = n;
    return n;
  }

  #append(addr: number, len: number, n: number): number {
    if (n >= this.size) return CHAIN_TOO_LONG;
    const mem = this.mem;
    const off = mem.translate(addr, len);
    if (off < 0) return appendSplitSegments(this, mem, addr, len, n);
    this.segRegion[n] = mem.region;
    this.segOffset[n] = off;
    this.segLength[n] = len;
    return n + 1;
  }

  mark(): void {
    this.#markAvail = this.#availSeq;
    this.#markUsed = this.#usedSeq;
    this.#markPending = this.#pending;
  }

  rewind(): void {
    this.#availSeq = this.#markAvail;
    this.#usedSeq = this.#markUsed;
    this.#ahead = 0; // counted again from the restored position by the next availCount
    this.#pending = this.#markPending;
  }

  position(): number {
    return packedBaseFromSeq(this.#availSeq, this.size);
  }

  putUsed(token: number, len: number): void {
    const head = token & this.mask;
    this.#putUsed(this.#ids[head], len, this.#count[head]);
  }

  /** One used descriptor covering `count` positions, written out by storeUsed(). */
  #putUsed(id: number, len: number, count: number): void {
    const seq = this.#usedSeq;
    const k = this.#pending++;
    this.#pendPos[k] = seq & this.mask;
    this.#pendLen[k] = len;
    // Used: AVAIL and USED both equal to the used wrap counter; WRITE when we wrote data.
    this.#pendWord[k] = id | (((seq & this.size) === 0 ? 0x8080 : 0) << 16) |
      (len > 0 ? VRING_DESC_F_WRITE << 16 : 0);
    this.#usedSeq = (seq + count) & 0xffff;
  }

  /**
   * With IN_ORDER one used descriptor, carrying the last buffer's id, stands for the whole
   * batch; the driver skips every descriptor of the buffers before it (virtio 1.2 2.8.9).
   */
  wroteLate(_region: number, _offset: number, _len: number): void {}

  putUsedBatch(tokens: Int32Array, n: number): void {
    if (n === 0) return;
    if (this.inOrder) {
      let count = 0;
      for (let k = 0; k < n; k++) count += this.#count[tokens[k] & this.mask];
      this.#putUsed(this.#ids[tokens[n - 1] & this.mask], 0, count);
      return;
    }
    for (let k = 0; k < n; k++) this.putUsed(tokens[k], 0);
  }

  storeUsed(): void {
    const n = this.#pending;
    if (n === 0) return;
    const d = this.#desc;
    // Every descriptor but the first, then the first one's flags last: the driver, reading
    // the first, sees the whole batch at once (and no half-written descriptor). All at the end
    // of the burst: writing each as its frame is done (tried) interleaves our stores with the
    // driver's polling reads of the line it waits on, and cost 5-10% at 1518 B.
    const pos = this.#pendPos;
    const len = this.#pendLen;
    const word = this.#pendWord;
    for (let k = 1; k < n; k++) {
      const w = 4 * pos[k];
      d[w + 2] = len[k];
      d[w + 3] = word[k];
    }
    const w = 4 * pos[0];
    d[w + 2] = len[0];
    // Atomics.store is a full barrier on x86: everything above is visible before this.
    Atomics.store(d, w + 3, word[0]);
    this.#pending = 0;
    this.#storedSeq = this.#usedSeq;
  }

  signal(): boolean {
    const newSeq = this.#storedSeq;
    const old = this.#signalledSeq;
    if (newSeq === old) return false;
    this.#signalledSeq = newSeq;
    const e = this.#driverEvent;
    const flags = PLAIN_LOADS_ACQUIRE ? e[1] : Atomics.load(e, 1);
    let notify = flags !== VRING_PACKED_EVENT_FLAG_DISABLE;
    if (flags === VRING_PACKED_EVENT_FLAG_DESC && this.eventIdx) {
      // The driver wants to hear when the used position passes off_wrap: put that position in
      // sequence numbers, in this lap or (other wrap counter) the one before.
      const offWrap = PLAIN_LOADS_ACQUIRE ? e[0] : Atomics.load(e, 0);
      const lapStart = newSeq - (newSeq & this.mask);
      let event = lapStart + (offWrap & 0x7fff);
      if ((offWrap >>> 15) !== wrapOf(newSeq, this.size)) event -= this.size;
      notify = vringNeedEvent(event & 0xffff, newSeq, old);
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

  /** The chains ahead were read by availCount (flags and descriptor share a cache line). */
  touchAvail(_n: number): number {
    return 0;
  }

  /** Reads the first byte of the next `n` buffers (single-descriptor chains assumed). */
  touchBuffers(n: number): number {
    const d = this.#desc;
    const mem = this.mem;
    let x = 0;
    for (let k = 0; k < n; k++) {
      const w = 4 * ((this.#availSeq + k) & this.mask);
      const off = mem.translate(d[w] + d[w + 1] * 4294967296, 1);
      if (off >= 0) x ^= this.regionBytes[mem.region][off];
    }
    return x;
  }

  setGuestKicks(on: boolean): void {
    Atomics.store(
      this.#deviceEvent,
      1,
      on ? VRING_PACKED_EVENT_FLAG_ENABLE : VRING_PACKED_EVENT_FLAG_DISABLE,
    );
  }

  acquire(): void {
    const s = this.shared!;
    lockShared(s);
    this.#availSeq = packedSeqFromBase(s[SHARED_LAST_AVAIL], this.size);
    this.#usedSeq = this.#storedSeq = packedSeqFromBase(s[SHARED_USED_IDX], this.size);
    this.#signalledSeq = packedSeqFromBase(s[SHARED_SIGNALLED], this.size);
    this.#ahead = 0; // another worker may have taken what we saw
    this.#pending = 0;
  }

  releaseShared(): void {
    const s = this.shared!;
    this.storeUsed();
    s[SHARED_LAST_AVAIL] = packedBaseFromSeq(this.#availSeq, this.size);
    s[SHARED_USED_IDX] = packedBaseFromSeq(this.#storedSeq, this.size);
    s[SHARED_SIGNALLED] = packedBaseFromSeq(this.#signalledSeq, this.size);
    Atomics.store(s, SHARED_LOCK, 0);
  }
}
