// virtio-net on top of the ring ops (virtqueue.ts; split or packed, chosen once when a ring
// starts): the 12-byte virtio_net_hdr (10 bytes for a legacy driver without MRG_RXBUF),
// mergeable RX buffers (num_buffers), and frame size limits. The routine that fills the
// guest's RX ring is chosen once per ring too: mergeable, one buffer per frame, or either of
// them under a lock for a ring several workers fill. This is the datapath side of a
// vhost-user port, living in a Worker.
import {
  DROP_BAD_DESCRIPTOR,
  DROP_BAD_OFFLOAD,
  DROP_NO_BUFFER,
  DROP_RUNT,
  DROP_TOO_BIG,
  NOTIFICATIONS,
  RX_BYTES,
  RX_CSUM_PARTIAL,
  RX_GSO,
  RX_PACKETS,
  TX_BYTES,
  TX_GSO,
  TX_PACKETS,
} from "../counters.ts";
import type { DatapathPort, EgressFrame, FrameBatch } from "../port.ts";
import * as port from "../port.ts";
import type { DirtyLog } from "./dirty_log.ts";
import { LoggedPackedQueue, LoggedSplitQueue } from "./logged_queue.ts";
import type { GuestMemory } from "./memory.ts";
import { PackedQueue } from "./packed_queue.ts";
import { SplitQueue } from "./split_queue.ts";
import type { QueueSpec, VirtQueue } from "./virtqueue.ts";
import { copyBytes, wordView } from "../copy.ts";
import * as copy from "../copy.ts";
import { copyMemory } from "../../ffi/native_copy.ts";
import * as ethernet from "../ethernet.ts";
import { OffloadFallback } from "../offload/fallback.ts";
import {
  OFFLOAD_CSUM,
  OFFLOAD_DATA_VALID,
  OFFLOAD_GSO,
  OFFLOAD_GSO_NO_CSUM,
  OFFLOAD_USO,
  readVirtioNetHdr,
  writeVirtioNetHdr,
} from "../offload/virtio_net_hdr.ts";
import * as virtioNetHdr from "../offload/virtio_net_hdr.ts";

// What the per-frame path tests, as this module's own consts (CONTRIBUTING.md, "The datapath").
const { BURST, MAX_GSO_FRAME } = port;
const { WORD_INDEX_LIMIT, WORDS_UP_TO } = copy;
const { ETH_HLEN, VLAN_HLEN } = ethernet;
const { VNET_HDR_LEN } = virtioNetHdr;

const OFFLOAD_GSO_ANY = OFFLOAD_GSO | OFFLOAD_GSO_NO_CSUM;
/** In FrameBatch.offload while receive has not read the frame's header yet (no OFFLOAD_* bit). */
const HDR_UNREAD = 0x80;

export const VIRTIO_NET_HDR_LEN = 12;
export const VIRTIO_NET_HDR_LEN_LEGACY = 10;
/** VIRTIO_NET_HDR_LEN for the per-frame path (an exported const is read through its cell). */
const HDR_LEN = VIRTIO_NET_HDR_LEN;

/**
 * The ring ops for one ring, by the layout negotiated (fixed for the ring's life), and marking
 * what they write in `log` while the front-end migrates the guest (see logged_queue.ts).
 */
export function openQueue(mem: GuestMemory, spec: QueueSpec, log: DirtyLog | null): VirtQueue {
  if (log === null) return spec.packed ? new PackedQueue(mem, spec) : new SplitQueue(mem, spec);
  const q = spec.packed ? new LoggedPackedQueue(mem, spec) : new LoggedSplitQueue(mem, spec);
  q.log = log;
  q.ringLog = spec.ringLog;
  return q;
}

type Fill = (src: Uint8Array, f: EgressFrame) => boolean;

export class VirtioNetDatapath implements DatapathPort {
  /** Guest TX queues this worker polls (frames the guest sends: our receive). */
  txQueues: VirtQueue[] = [];
  /** The guest RX queue this worker fills (our transmit), or null while it is not running. */
  #rxQueue: VirtQueue | null = null;
  /** How a frame goes into the guest's RX ring (see setRxQueue). */
  #fill: Fill;
  readonly #fallback: OffloadFallback;
  /** What transmit hands on as it is (DATA_VALID is a hint: dropped for a guest without it). */
  readonly #accepts: number;
  /** The virtio_net_hdr of the frame being filled, when it carries offloads. */
  readonly #hdr = new Uint8Array(VIRTIO_NET_HDR_LEN);
  #hdrSet = false;
  /** Set by a fill that found the guest's buffers can never hold the GSO frame being filled. */
  #roomless = false;
  #cursor = 0;
  #relQueue: VirtQueue | null = null;
  readonly #relHeads = new Int32Array(BURST);
  #relCount = 0;
  #lastSrc: Uint8Array | null = null;
  #lastSrcWords: Uint32Array = new Uint32Array(0);
  /** Frames (and their bytes) filled into the guest since the last flush, not yet counted. */
  #sentFrames = 0;
  #sentBytes = 0;
  /** Where touchAvail-style reads go so they are not optimised away. */
  touched = 0;

  constructor(
    readonly hdrLen: number,
    readonly mergeable: boolean,
    /** Largest frame accepted or delivered (MTU + Ethernet header + one VLAN tag). */
    readonly maxFrame: number,
    readonly counters: Float64Array,
    /** OFFLOAD_* bits the guest negotiated to take (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN). */
    readonly guestOffloads = 0,
    /**
     * The guest negotiated CSUM or HOST_TSO4/6: the header of each frame it sends is read.
     * Otherwise its driver must send a zeroed one, and it is not read at all: the header was
     * just written by the guest's CPU, often into a cache line of its own ahead of the frame
     * (DPDK prepends it in the mbuf's headroom), and reading it in receive's per-frame loop
     * costs a cache miss per frame.
     */
    readonly hostOffloads = true,
  ) {
    this.#accepts = guestOffloads | OFFLOAD_DATA_VALID;
    this.#fill = this.#noRing;
    this.#fallback = new OffloadFallback(counters);
  }

  get rxQueue(): VirtQueue | null {
    return this.#rxQueue;
  }

  /**
   * Sets the guest RX ring this worker fills and chooses, once, how frames go in: spread over
   * several buffers (MRG_RXBUF) or one buffer per frame, under the ring's lock when other
   * workers fill it too.
   */
  setRxQueue(q: VirtQueue | null): void {
    this.#countSent();
    this.#rxQueue = q;
    if (q === null) {
      this.#fill = this.#noRing;
      return;
    }
    const fill: Fill = this.mergeable
      ? (src, f) => this.#fillFirst(q, src, f) || this.#fillMergeable(q, src, f)
      : (src, f) => this.#fillFirst(q, src, f) || this.#fillOne(q, src, f);
    this.#fill = q.shared === null ? fill : (src, f) => {
      // A ring other workers fill too: hold its lock for this one frame only, so no worker
      // ever waits for one lock while holding another.
      q.acquire();
      const sent = fill(src, f);
      q.releaseShared();
      return sent;
    };
  }

  #noRing: Fill = () => {
    this.counters[DROP_NO_BUFFER]++;
    return false;
  };

  receive(batch: FrameBatch): number {
    batch.count = 0;
    const nq = this.txQueues.length;
    if (nq === 0) return 0;
    const q = this.txQueues[this.#cursor++ % nq];
    let avail = q.availCount();
    if (avail === 0) return 0;
    if (avail > BURST) avail = BURST;
    const c = this.counters;
    const hdr = this.hdrLen;
    this.touched ^= q.touchAvail(avail);
    // Everything the loop reads per frame, in locals: V8 then keeps them in registers.
    const segLength = q.segLength;
    const segOffset = q.segOffset;
    const segRegion = q.segRegion;
    const regionBytes = q.regionBytes;
    const relHeads = this.#relHeads;
    const frames = batch.bytes;
    const offsets = batch.offset;
    const lengths = batch.length;
    const offloads = batch.offload;
    const maxFrame = this.maxFrame;
    const hostOffloads = this.hostOffloads;
    let n = 0;
    let bytes = 0;
    let unread = 0;
    for (let k = 0; k < avail; k++) {
      const head = q.popAvail();
      relHeads[k] = head;
      const segs = q.walkChain(head, false);
      if (segs < 0) {
        c[DROP_BAD_DESCRIPTOR]++;
        continue;
      }
      const first = segLength[0];
      let total = first;
      for (let s = 1; s < segs; s++) total += segLength[s];
      const len = total - hdr;
      if (len < ETH_HLEN) {
        c[DROP_RUNT]++;
        continue;
      }
      // The guest's header (CSUM, HOST_TSO4/6): read once into the batch slot. Linux and DPDK
      // put it whole in the first descriptor; one split over descriptors counts as plain.
      let bits = 0;
      const hb = regionBytes[segRegion[0]];
      const ho = segOffset[0];
      if (!hostOffloads || first < VNET_HDR_LEN) {
        offloads[n] = 0;
      } else if (segs === 1 && len <= maxFrame) {
        // The usual frame: its header is read after this loop with the others (#readHeaders).
        offloads[n] = HDR_UNREAD;
        unread++;
      } else if ((hb[ho] | hb[ho + 1]) === 0) {
        // No flags and no GSO type (what a plain frame's header holds): nothing to read.
        offloads[n] = 0;
      } else {
        bits = readVirtioNetHdr(hb, ho, len, batch, n);
        if (bits < 0) {
          c[DROP_BAD_OFFLOAD]++;
          continue;
        }
      }
      if (len > ((bits & OFFLOAD_GSO_ANY) === 0 ? maxFrame : MAX_GSO_FRAME)) {
        c[DROP_TOO_BIG]++;
        continue;
      }
      if (bits !== 0) {
        if ((bits & OFFLOAD_CSUM) !== 0) c[RX_CSUM_PARTIAL]++;
        if ((bits & OFFLOAD_GSO_ANY) !== 0) c[RX_GSO]++;
      }
      if (segs === 1) {
        frames[n] = hb;
        offsets[n] = ho + hdr;
      } else if (segs === 2 && first === hdr) {
        frames[n] = regionBytes[segRegion[1]];
        offsets[n] = segOffset[1];
      } else {
        gather(q, hdr, batch.scratch[n]);
        frames[n] = batch.scratch[n];
        offsets[n] = 0;
      }
      lengths[n] = len;
      bytes += len;
      n++;
    }
    // The bridge reads every header next: fetch them all at once (see touchAvail).
    let x = 0;
    for (let k = 0; k < n; k++) x ^= frames[k][offsets[k]];
    this.touched ^= x;
    if (unread !== 0) n = this.#readHeaders(batch, n);
    c[RX_PACKETS] += n;
    c[RX_BYTES] += bytes;
    this.#relQueue = q;
    this.#relCount = avail;
    batch.count = n;
    return n;
  }

  /**
   * Reads the headers receive left for later (HDR_UNREAD: whole in the frame's one descriptor,
   * right before it) in a loop of their own: the guest's CPU has just written them, often each
   * in a cache line of its own, and read one after the other here their cache misses overlap,
   * where inside receive's loop each one stalled a frame. A lying header drops its frame
   * (counted, and its bytes taken off rx_bytes, which receive adds for the whole burst); the
   * frames after it move up. Returns the frames kept.
   */
  #readHeaders(batch: FrameBatch, n: number): number {
    const c = this.counters;
    const hdr = this.hdrLen;
    const frames = batch.bytes;
    const offsets = batch.offset;
    const lengths = batch.length;
    const offloads = batch.offload;
    let kept = 0;
    for (let k = 0; k < n; k++) {
      if (offloads[k] === HDR_UNREAD) {
        const hb = frames[k];
        const at = offsets[k] - hdr;
        let bits = 0;
        if ((hb[at] | hb[at + 1]) === 0) offloads[k] = 0;
        else bits = readVirtioNetHdr(hb, at, lengths[k], batch, k);
        if (bits < 0) {
          c[DROP_BAD_OFFLOAD]++;
          c[RX_BYTES] -= lengths[k];
          continue;
        }
        if (bits !== 0) {
          if ((bits & OFFLOAD_CSUM) !== 0) c[RX_CSUM_PARTIAL]++;
          if ((bits & OFFLOAD_GSO_ANY) !== 0) c[RX_GSO]++;
        }
      }
      if (kept !== k) {
        frames[kept] = frames[k];
        offsets[kept] = offsets[k];
        lengths[kept] = lengths[k];
        offloads[kept] = offloads[k];
        batch.csumStart[kept] = batch.csumStart[k];
        batch.csumOffset[kept] = batch.csumOffset[k];
        batch.gsoSize[kept] = batch.gsoSize[k];
      }
      kept++;
    }
    return kept;
  }

  release(): void {
    const q = this.#relQueue;
    if (q === null) return;
    q.putUsedBatch(this.#relHeads, this.#relCount);
    this.#relQueue = null;
    this.#relCount = 0;
    this.#publish(q);
  }

  transmit(src: Uint8Array, f: EgressFrame): boolean {
    // The forwarding loop inlines this: only the plain frame's path, the rest out of line (V8
    // inlines at most 920 bytes of bytecode into one function, and the loop needs them).
    if (f.offload === 0) return this.#fill(src, f);
    return this.#transmitOffloaded(src, f);
  }

  /** A frame with offload bits (from an uplink with the kernel's offloads, or a guest's). */
  #transmitOffloaded(src: Uint8Array, f: EgressFrame): boolean {
    // A checksum-partial or GSO frame the guest cannot take is finished in software: the guest
    // gets complete frames of at most its MTU.
    const bits = f.offload;
    if ((bits & ~this.#accepts) !== 0) {
      return this.#fallback.send(src, f, this, this.maxFrame - VLAN_HLEN);
    }
    // The guest takes what is left to do: its header says so.
    this.#hdrSet = this.#offloadHeader(src, f, bits & this.guestOffloads);
    if (!this.#hdrSet) return false;
    const sent = this.#fill(src, f);
    this.#hdrSet = false;
    if (sent) {
      if ((bits & OFFLOAD_GSO) !== 0) this.counters[TX_GSO]++;
      return true;
    }
    if (!this.#roomless) return false;
    // The guest's buffers can never hold this super-frame whole (no MRG_RXBUF and buffers
    // smaller than it, or a whole ring of mergeable buffers too small): its segments fit them.
    this.#roomless = false;
    return this.#fallback.send(src, f, this, this.maxFrame - VLAN_HLEN);
  }

  /** Builds the header for an offloaded frame the guest takes; false if it lies (counted). */
  #offloadHeader(src: Uint8Array, f: EgressFrame, bits: number): boolean {
    const h = this.#hdr;
    h.fill(0);
    if (bits === 0) return true;
    let hdrLen = 0;
    if ((bits & OFFLOAD_GSO) !== 0) {
      const l4 = f.csumStart;
      hdrLen = (bits & OFFLOAD_USO) !== 0 ? l4 + 8 : l4 + (f.byteAt(src, l4 + 12) >>> 4) * 4;
    }
    if (f.csumStart + f.csumOffset + 2 > f.length || hdrLen > f.length) {
      this.counters[DROP_BAD_OFFLOAD]++;
      return false;
    }
    writeVirtioNetHdr(h, 0, bits, f.csumStart, f.csumOffset, f.gsoSize, hdrLen);
    return true;
  }

  /**
   * A run of plain frames that share one head (the bridge's decision, repeated): the usual ones
   * go through #fillRun, a loop that keeps what the frames share in locals; whatever it leaves
   * (a frame it does not take, or every frame when it cannot run) goes through #fill, frame by
   * frame, which also counts what it drops.
   */
  transmitRun(batch: FrameBatch, from: number, to: number, f: EgressFrame, skip: number): number {
    const q = this.#rxQueue;
    const hl = f.headLength;
    let i = from;
    if (
      q !== null && q.shared === null && !this.#hdrSet && f.offload === 0 &&
      this.hdrLen === HDR_LEN && ((hl | skip) & 3) === 0
    ) {
      i = this.#fillRun(q, batch, from, to, f, skip);
    }
    let sent = i - from;
    for (; i < to; i++) {
      const off = batch.offset[i];
      const len = batch.length[i];
      f.tailStart = off + skip;
      f.tailEnd = off + len;
      f.length = hl + len - skip;
      if (this.#fill(batch.bytes[i], f)) sent++;
    }
    return sent;
  }

  /**
   * #fillFirst for frames [from, to) of a run, as long as each fits the first buffer of the next
   * chain, a buffer of whole words below 4 GiB: the header and the head (the same for every
   * frame) go in as words, each tail a word at a time when it is small and whole words, else
   * through copyBytes. Returns the first frame it did not send; the ring is as that frame found it.
   */
  #fillRun(
    q: VirtQueue,
    batch: FrameBatch,
    from: number,
    to: number,
    f: EgressFrame,
    skip: number,
  ): number {
    const hl = f.headLength;
    const hw = f.headWords;
    const hlw = hl >>> 2;
    const maxFrame = this.maxFrame;
    const frames = batch.bytes;
    const offsets = batch.offset;
    const lengths = batch.length;
    const segLength = q.segLength;
    const segOffset = q.segOffset;
    const segRegion = q.segRegion;
    const regionBytes = q.regionBytes;
    const regionWords = q.regionWords;
    let avail = q.availCount();
    let bytes = 0;
    let i = from;
    for (; i < to && avail > 0; i++, avail--) {
      const ts = offsets[i] + skip;
      const tailLen = lengths[i] - skip;
      const frameLen = hl + tailLen;
      if (frameLen > maxFrame) break;
      const total = HDR_LEN + frameLen;
      q.mark();
      const head = q.popAvail();
      if (q.walkChain(head, true) < 0 || segLength[0] < total) {
        q.rewind();
        break;
      }
      const o = segOffset[0];
      if (o >= WORD_INDEX_LIMIT || (o & 3) !== 0) {
        q.rewind();
        break;
      }
      const r = segRegion[0];
      const src = frames[i];
      const sw = this.#wordsOf(src);
      if (tailLen <= WORDS_UP_TO && ts < WORD_INDEX_LIMIT && ((ts | tailLen) & 3) === 0) {
        writeSmallFrame(regionWords[r], o >>> 2, hw, hlw, sw, ts >>> 2, tailLen >>> 2);
      } else {
        writeSmallFrame(regionWords[r], o >>> 2, hw, hlw, sw, 0, 0);
        copyBytes(regionBytes[r], regionWords[r], o + HDR_LEN + hl, src, sw, ts, tailLen);
      }
      q.putUsed(head, total);
      bytes += frameLen;
    }
    this.#sentFrames += i - from;
    this.#sentBytes += bytes;
    return i;
  }

  transmitPlain(src: Uint8Array, f: EgressFrame): boolean {
    return this.#fill(src, f);
  }

  /**
   * The usual frame, with or without MRG_RXBUF: a plain one that fits the first buffer of the
   * next chain, written there whole. Returns false, with the ring as it was, for anything else
   * (no buffer, an offload header, a frame too big for the first buffer or for the port, a bad
   * chain): #fillMergeable or #fillOne then deal with it, and count what they drop.
   */
  #fillFirst(q: VirtQueue, src: Uint8Array, f: EgressFrame): boolean {
    const frameLen = f.length;
    const hdr = this.hdrLen;
    const total = hdr + frameLen;
    if (this.#hdrSet || frameLen > this.maxFrame || q.availCount() === 0) return false;
    q.mark();
    const head = q.popAvail();
    if (q.walkChain(head, true) < 0 || q.segLength[0] < total) {
      q.rewind();
      return false;
    }
    const r = q.segRegion[0];
    const o = q.segOffset[0];
    const dw = q.regionWords[r];
    const ts = f.tailStart;
    const tailLen = f.tailEnd - ts;
    if (
      o < WORD_INDEX_LIMIT && ts < WORD_INDEX_LIMIT &&
      ((o | ts | f.headLength | tailLen) & 3) === 0 && hdr === HDR_LEN &&
      tailLen <= WORDS_UP_TO
    ) {
      const sw = this.#wordsOf(src);
      writeSmallFrame(dw, o >>> 2, f.headWords, f.headLength >>> 2, sw, ts >>> 2, tailLen >>> 2);
    } else {
      this.#writeWhole(q.regionBytes[r], dw, o, src, f);
    }
    q.putUsed(head, total);
    this.#sentFrames++;
    this.#sentBytes += frameLen;
    return true;
  }

  /** Without MRG_RXBUF: the header and the whole frame go into one chain. */
  #fillOne(q: VirtQueue, src: Uint8Array, f: EgressFrame): boolean {
    const c = this.counters;
    const frameLen = f.length;
    if (
      frameLen > (this.#hdrSet && (f.offload & OFFLOAD_GSO) !== 0 ? MAX_GSO_FRAME : this.maxFrame)
    ) {
      c[DROP_TOO_BIG]++;
      return false;
    }
    if (q.availCount() === 0) {
      c[DROP_NO_BUFFER]++;
      return false;
    }
    const hdr = this.hdrLen;
    const total = hdr + frameLen;
    q.mark();
    const head = q.popAvail();
    const segs = q.walkChain(head, true);
    if (segs < 0 || q.segLength[0] < hdr) return this.#badBuffer(q);
    if (q.segLength[0] >= total) {
      // The common case: header and frame fit the first descriptor.
      const r = q.segRegion[0];
      this.#writeWhole(q.regionBytes[r], q.regionWords[r], q.segOffset[0], src, f);
      q.putUsed(head, total);
    } else {
      if (chainBytes(q, segs) < total) {
        // The guest's buffers are too small for this frame: they stay with the guest (a GSO
        // frame goes to it as segments instead).
        q.rewind();
        if (this.#isGsoFill(f)) this.#roomless = true;
        else c[DROP_TOO_BIG]++;
        return false;
      }
      q.putUsed(head, this.#copyChain(q, segs, 0, total, src, f));
    }
    this.#sentFrames++;
    this.#sentBytes += frameLen;
    return true;
  }

  /** With MRG_RXBUF: as many buffers as the frame needs, their count in num_buffers. */
  #fillMergeable(q: VirtQueue, src: Uint8Array, f: EgressFrame): boolean {
    const c = this.counters;
    const frameLen = f.length;
    if (
      frameLen > (this.#hdrSet && (f.offload & OFFLOAD_GSO) !== 0 ? MAX_GSO_FRAME : this.maxFrame)
    ) {
      c[DROP_TOO_BIG]++;
      return false;
    }
    const hdr = this.hdrLen;
    let remaining = hdr + frameLen;
    let pos = 0; // position in (virtio header ++ frame) written so far
    let buffers = 0;
    let firstBytes: Uint8Array | null = null;
    let firstRegion = 0;
    let firstOffset = 0;
    q.mark();
    while (remaining > 0) {
      if (q.availCount() === 0) {
        // Out of buffers: they stay with the guest. Too few posted right now is a full ring,
        // like any other; only a whole ring's worth too small means the frame never fits (a
        // GSO frame then goes as segments).
        q.rewind();
        if (buffers < q.size) c[DROP_NO_BUFFER]++;
        else if (this.#isGsoFill(f)) this.#roomless = true;
        else c[DROP_TOO_BIG]++;
        return false;
      }
      const head = q.popAvail();
      buffers++;
      const segs = q.walkChain(head, true);
      // A buffer that holds nothing would only make us walk more chains for the same frame
      // (a guest can post thousands): broken like any other impossible buffer.
      if (segs < 0 || (buffers === 1 ? q.segLength[0] < hdr : chainBytes(q, segs) === 0)) {
        return this.#badBuffer(q);
      }
      if (buffers === 1) {
        firstRegion = q.segRegion[0];
        firstBytes = q.regionBytes[firstRegion];
        firstOffset = q.segOffset[0];
        if (q.segLength[0] >= remaining) {
          // The common case: header and frame fit the first buffer.
          this.#writeWhole(firstBytes, q.regionWords[q.segRegion[0]], firstOffset, src, f);
          q.putUsed(head, remaining);
          this.#sentFrames++;
          this.#sentBytes += frameLen;
          return true;
        }
      }
      const put = this.#copyChain(q, segs, pos, remaining, src, f);
      pos += put;
      remaining -= put;
      q.putUsed(head, put);
    }
    // num_buffers sits in the last two bytes of the 12-byte header.
    if (hdr === HDR_LEN) {
      firstBytes![firstOffset + 10] = buffers & 0xff;
      firstBytes![firstOffset + 11] = buffers >>> 8;
      q.wroteLate(firstRegion, firstOffset + 10, 2);
    }
    this.#sentFrames++;
    this.#sentBytes += frameLen;
    return true;
  }

  /** The frame being filled is a GSO super-frame the guest takes whole (its header is set). */
  #isGsoFill(f: EgressFrame): boolean {
    return this.#hdrSet && (f.offload & OFFLOAD_GSO) !== 0;
  }

  /** A guest that hands us broken RX buffers only hurts itself: stop filling its ring. */
  #badBuffer(q: VirtQueue): boolean {
    q.rewind();
    q.broken = true;
    this.counters[DROP_BAD_DESCRIPTOR]++;
    return false;
  }

  /**
   * Copies (virtio header ++ frame) from output position `pos` into the walked chain's
   * segments, at most `remaining` bytes; returns the bytes copied.
   */
  #copyChain(
    q: VirtQueue,
    segs: number,
    pos: number,
    remaining: number,
    src: Uint8Array,
    f: EgressFrame,
  ): number {
    let put = 0;
    for (let s = 0; s < segs && remaining > 0; s++) {
      const dst = q.regionBytes[q.segRegion[s]];
      const dw = q.regionWords[q.segRegion[s]];
      let dOff = q.segOffset[s];
      let room = q.segLength[s];
      while (room > 0 && remaining > 0) {
        const n = this.#copyPiece(dst, dw, dOff, room, pos, src, f);
        dOff += n;
        room -= n;
        pos += n;
        remaining -= n;
        put += n;
      }
    }
    return put;
  }

  /** Header (num_buffers 1) and the whole frame into one buffer at dst[o]. */
  #writeWhole(dst: Uint8Array, dw: Uint32Array, o: number, src: Uint8Array, f: EgressFrame): void {
    const hdr = this.hdrLen;
    if (this.#hdrSet) {
      for (let k = 0; k < VNET_HDR_LEN; k++) dst[o + k] = this.#hdr[k];
      if (hdr === HDR_LEN) {
        dst[o + 10] = 1;
        dst[o + 11] = 0;
      }
    } else if (hdr === HDR_LEN && (o & 3) === 0) {
      const d = o / 4; // exact beyond 4 GiB, where `>>> 2` wraps
      dw[d] = dw[d + 1] = 0;
      dw[d + 2] = 1 << 16; // csum fields 0, num_buffers (bytes 10-11) = 1
    } else {
      dst.fill(0, o, o + hdr);
      if (hdr === HDR_LEN) dst[o + 10] = 1;
    }
    const at = o + hdr;
    const hl = f.headLength;
    if (((at | hl) & 3) === 0) {
      // The head (addresses, tag) is a few whole words: store them here, no call.
      const d = at / 4; // exact beyond 4 GiB, where `>>> 2` wraps
      const hw = f.headWords;
      for (let k = 0, n = hl >>> 2; k < n; k++) dw[d + k] = hw[k];
    } else {
      copyBytes(dst, dw, at, f.head, f.headWords, 0, hl);
    }
    const sw = this.#wordsOf(src);
    copyBytes(dst, dw, at + hl, src, sw, f.tailStart, f.tailEnd - f.tailStart);
  }

  /**
   * Copies the piece of (virtio header ++ frame) that starts at output position `pos` into
   * dst, at most `room` bytes of it; returns the bytes copied.
   */
  #copyPiece(
    dst: Uint8Array,
    dw: Uint32Array,
    dOff: number,
    room: number,
    pos: number,
    src: Uint8Array,
    f: EgressFrame,
  ): number {
    const hdr = this.hdrLen;
    if (pos < hdr && this.#hdrSet) {
      // num_buffers (bytes 10-11) is written once the buffers are counted.
      const n = Math.min(room, hdr - pos);
      for (let k = 0; k < n; k++) dst[dOff + k] = this.#hdr[pos + k];
      return n;
    }
    if (pos < hdr) {
      if (pos === 0 && hdr === HDR_LEN && room >= hdr && (dOff & 3) === 0) {
        const d = dOff / 4;
        dw[d] = dw[d + 1] = dw[d + 2] = 0;
        return hdr;
      }
      const n = Math.min(room, hdr - pos);
      dst.fill(0, dOff, dOff + n);
      return n;
    }
    let p = pos - hdr;
    if (p < f.headLength) {
      const n = Math.min(room, f.headLength - p);
      copyBytes(dst, dw, dOff, f.head, f.headWords, p, n);
      return n;
    }
    p -= f.headLength;
    const n = Math.min(room, f.tailEnd - f.tailStart - p);
    copyBytes(dst, dw, dOff, src, this.#wordsOf(src), f.tailStart + p, n);
    return n;
  }

  /** The word view of a source buffer: a sender's frames nearly always share one. */
  #wordsOf(src: Uint8Array): Uint32Array {
    if (src !== this.#lastSrc) {
      this.#lastSrc = src;
      this.#lastSrcWords = wordView(src);
    }
    return this.#lastSrcWords;
  }

  flush(): void {
    this.#countSent();
    const q = this.#rxQueue;
    if (q === null) return;
    if (q.shared === null) {
      this.#publish(q);
      // The next burst to this guest fills these buffers: fetch them and their descriptors.
      const n = q.availCount();
      this.touched ^= q.touchBuffers(n < BURST ? n : BURST);
      return;
    }
    q.acquire();
    if (q.signal()) this.counters[NOTIFICATIONS]++;
    q.releaseShared();
  }

  /** Adds the frames filled since the last flush to the counters (once per burst, not per frame). */
  #countSent(): void {
    if (this.#sentFrames === 0) return;
    this.counters[TX_PACKETS] += this.#sentFrames;
    this.counters[TX_BYTES] += this.#sentBytes;
    this.#sentFrames = 0;
    this.#sentBytes = 0;
  }

  #publish(q: VirtQueue): void {
    q.storeUsed();
    if (q.signal()) this.counters[NOTIFICATIONS]++;
  }
}

/**
 * A small frame, every piece whole words at offsets below 4 GiB, into the buffer at word `d` of
 * `dw`: the virtio-net header (num_buffers 1), `headWords` words of the head `hw`, then
 * `tailWords` words of `sw` from word `tailWord`. Each word index is a 32-bit integer (no double
 * arithmetic and checks per word), and it inlines: no call is made.
 */
function writeSmallFrame(
  dw: Uint32Array,
  d: number,
  hw: Uint32Array,
  headWords: number,
  sw: Uint32Array,
  tailWord: number,
  tailWords: number,
): void {
  dw[d] = dw[d + 1] = 0;
  dw[d + 2] = 1 << 16; // csum fields 0, num_buffers (bytes 10-11) = 1
  d += 3;
  for (let k = 0; k < headWords; k++) dw[d++] = hw[k];
  for (let w = tailWord, end = w + tailWords; w < end; w++) dw[d++] = sw[w];
}

/** Bytes the last walked chain of `q` holds (its `segs` segments). */
function chainBytes(q: VirtQueue, segs: number): number {
  let n = 0;
  for (let s = 0; s < segs; s++) n += q.segLength[s];
  return n;
}

/** Gathers a frame scattered over several descriptors (after skipping the header) into `out`. */
function gather(q: VirtQueue, skip: number, out: Uint8Array): void {
  let w = 0;
  for (let s = 0; s < q.segCount; s++) {
    let off = q.segOffset[s];
    let len = q.segLength[s];
    if (skip > 0) {
      const k = Math.min(skip, len);
      off += k;
      len -= k;
      skip -= k;
    }
    if (len > 0) {
      copyMemory(out, w, q.regionBytes[q.segRegion[s]], off, len);
      w += len;
    }
  }
}
