// The AF_PACKET port's datapath, living in a Worker: receives from the TPACKET_V3 RX ring as
// views straight into the blocks, transmits by copying into TX ring slots, and kicks the kernel
// with one send() per burst. Status words are shared with the kernel: read and written with
// Atomics so no load or store moves across them.
import {
  DROP_BAD_OFFLOAD,
  DROP_LINK_DOWN,
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
import { OffloadFallback } from "../offload/fallback.ts";
import {
  OFFLOAD_CSUM,
  OFFLOAD_DATA_VALID,
  OFFLOAD_ECN,
  OFFLOAD_GSO,
  OFFLOAD_GSO_NO_CSUM,
  OFFLOAD_TSO4,
  OFFLOAD_TSO6,
  OFFLOAD_USO,
  readVirtioNetHdr,
  VNET_HDR_LEN,
  writeVirtioNetHdr,
} from "../offload/virtio_net_hdr.ts";
import {
  BURST,
  type DatapathPort,
  type EgressFrame,
  type FrameBatch,
  MAX_GSO_FRAME,
} from "../port.ts";
import { viewMapping } from "../../ffi/mem.ts";
import { recvFrame, sendNow } from "../../ffi/packet.ts";
import { ETH_HLEN, ETH_P_8021Q } from "../ethernet.ts";
import {
  type AfPacketSpec,
  BLOCK_LEN,
  BLOCK_NUM_PKTS,
  BLOCK_OFFSET_TO_FIRST_PKT,
  BLOCK_STATUS,
  copyEgress,
  egressFits,
  egressTagged,
  LinkView,
  TP_LEN,
  TP_MAC,
  TP_NEXT_OFFSET,
  TP_SLL_IFINDEX,
  TP_SNAPLEN,
  TP_STATUS,
  TP_STATUS_AVAILABLE,
  TP_STATUS_KERNEL,
  TP_STATUS_SEND_REQUEST,
  TP_STATUS_USER,
  TP_STATUS_VLAN_TPID_VALID,
  TP_STATUS_VLAN_VALID,
  TP_VLAN_TCI,
  TP_VLAN_TPID,
  TPACKET3_HDR_ALIGNED,
  TX_DATA,
} from "./tpacket.ts";
import { AfPacketSyscallDatapath } from "./syscall_datapath.ts";
import { copyMemory } from "../../ffi/native_copy.ts";

/** What the kernel takes from a virtio_net_hdr (virtio_net_hdr_to_skb). */
const ACCEPTS = OFFLOAD_CSUM | OFFLOAD_TSO4 | OFFLOAD_TSO6 | OFFLOAD_USO | OFFLOAD_ECN |
  OFFLOAD_DATA_VALID;
const OFFLOAD_GSO_ANY = OFFLOAD_GSO | OFFLOAD_GSO_NO_CSUM;
/** Blocks that held at most this many frames are cleared when they go back (see release). */
const PEEK_CLEAR_FRAMES = 16;
/** A GSO frame may carry one tag the kernel took out. */
const GSO_MAX = MAX_GSO_FRAME;

export class AfPacketRingDatapath implements DatapathPort {
  /** The socket whose TX ring this worker fills (its own when it is not worker 0). */
  readonly #txFd: number;
  readonly #link: LinkView;

  readonly #rx: Uint8Array;
  readonly #rx32: Uint32Array;
  readonly #rx16: Uint16Array;
  readonly #rxBlockSize: number;
  readonly #rxBlockNr: number;
  /** The block being read, or the next one to wait for. */
  #rxBlock = 0;
  #rxOpen = false;
  /** Frames of the open block not read yet, and where the next one's header is. */
  #rxLeft = 0;
  #rxNext = 0;
  /** Fully read blocks just before #rxBlock, owed to the kernel at the next release(). */
  #rxDone = 0;
  /**
   * Reading the block the kernel is still filling (see #peekFrame): frames taken from it so
   * far and where the next one's header is; per block, whether it went back to the kernel all
   * zeros past its header, and how far it may hold bytes from earlier laps.
   */
  #rxPeeked = 0;
  #rxPeekNext = 0;
  readonly #rxClean: Uint8Array;
  readonly #rxDirtyEnd: Float64Array;

  readonly #tx: Uint8Array;
  readonly #tx32: Uint32Array;
  readonly #txFrameSize: number;
  readonly #txFramesPerBlock: number;
  readonly #txBlockSize: number;
  readonly #txFrameNr: number;
  readonly #txRoom: number;
  readonly #fallback: OffloadFallback;
  #txHead = 0;
  #txQueued = 0;
  /** Status word index of the last frame queued: still SEND_REQUEST after a kick = retry. */
  #txLast = -1;
  #kickPending = false;
  /** The doorbell socket (AfPacketSpec.wakeFd) a sleeping worker waits on, or -1. */
  readonly wakeFd: number;
  readonly #bell = new Uint8Array(1);

  /** `worker` picks the TX ring (and socket) this worker transmits through. */
  constructor(spec: AfPacketSpec, readonly counters: Float64Array, worker = 0) {
    const { rx } = spec;
    const extra = worker > 0 && spec.txExtra.length
      ? spec.txExtra[(worker - 1) % spec.txExtra.length]
      : null;
    const tx = extra ?? spec.tx;
    if (spec.variant !== "ring" || rx === null || tx === null) {
      throw new Error(`af-packet port ${spec.name}: spec has no rings`);
    }
    this.#txFd = extra?.fd ?? spec.fd;
    this.wakeFd = spec.wakeFd;
    this.#link = new LinkView(spec.link);
    const rxBuf = viewMapping(rx.address, rx.blockSize * rx.blockNr);
    this.#rx = new Uint8Array(rxBuf);
    this.#rx32 = new Uint32Array(rxBuf);
    this.#rx16 = new Uint16Array(rxBuf);
    this.#rxBlockSize = rx.blockSize;
    this.#rxBlockNr = rx.blockNr;
    this.#rxClean = new Uint8Array(rx.blockNr).fill(1); // a fresh mapping is all zeros
    this.#rxDirtyEnd = new Float64Array(rx.blockNr);
    const txBuf = viewMapping(tx.address, tx.blockSize * tx.blockNr);
    this.#tx = new Uint8Array(txBuf);
    this.#tx32 = new Uint32Array(txBuf);
    this.#txFrameSize = tx.frameSize;
    this.#txBlockSize = tx.blockSize;
    this.#txFramesPerBlock = Math.floor(tx.blockSize / tx.frameSize);
    this.#txFrameNr = this.#txFramesPerBlock * tx.blockNr;
    this.#txRoom = tx.frameSize - TX_DATA;
    this.#fallback = new OffloadFallback(counters);
    if (!spec.vnetHdr) throw new Error(`af-packet port ${spec.name}: ring without PACKET_VNET_HDR`);
    this.#link.refresh();
  }

  receive(batch: FrameBatch): number {
    this.#link.refresh();
    if (this.#kickPending && this.#link.up) this.#kick();
    const c = this.counters;
    const rx = this.#rx;
    const w = this.#rx32;
    let n = 0;
    while (n < BURST) {
      let h: number;
      if (this.#rxOpen || this.#openBlock()) {
        h = this.#rxNext;
        this.#rxNext = h + w[(h + TP_NEXT_OFFSET) >> 2];
        if (--this.#rxLeft === 0) this.#closeBlock();
      } else {
        h = this.#peekFrame();
        if (h < 0) break;
      }
      const status = w[(h + TP_STATUS) >> 2];
      const len = w[(h + TP_LEN) >> 2];
      let off = h + this.#rx16[(h + TP_MAC) >> 1];
      const tagged = (status & TP_STATUS_VLAN_VALID) !== 0;
      if (w[(h + TP_SNAPLEN) >> 2] < len) {
        c[DROP_TOO_BIG]++; // truncated: longer than a block holds
        continue;
      }
      if (len < ETH_HLEN) {
        c[DROP_RUNT]++;
        continue;
      }
      // The kernel's virtio_net_hdr sits just before the frame (read before the tag moves in).
      const bits = readVirtioNetHdr(rx, off - VNET_HDR_LEN, len, batch, n);
      if (bits < 0) {
        c[DROP_BAD_OFFLOAD]++;
        continue;
      }
      // Only a GSO frame (the kernel's GSO or GRO) may be longer than the wire allows.
      if (len + (tagged ? 4 : 0) > ((bits & OFFLOAD_GSO_ANY) === 0 ? this.#link.rxMax : GSO_MAX)) {
        c[DROP_TOO_BIG]++;
        continue;
      }
      let flen = len;
      if (tagged) {
        // The kernel took the outer tag out (skb_vlan_untag before the taps): the bridge must
        // see it, so it goes back into the headroom in front of the MAC header.
        const tpid = status & TP_STATUS_VLAN_TPID_VALID
          ? this.#rx16[(h + TP_VLAN_TPID) >> 1]
          : ETH_P_8021Q;
        const tci = w[(h + TP_VLAN_TCI) >> 2];
        if (off - 4 >= h + TPACKET3_HDR_ALIGNED) {
          rx.copyWithin(off - 4, off, off + 12);
          off -= 4;
          batch.bytes[n] = rx;
        } else {
          const s = batch.scratch[n];
          copyMemory(s, 0, rx, off, 12);
          copyMemory(s, 16, rx, off + 12, len - 12);
          off = 0;
          batch.bytes[n] = s;
        }
        const b = batch.bytes[n];
        b[off + 12] = tpid >>> 8;
        b[off + 13] = tpid & 0xff;
        b[off + 14] = (tci >>> 8) & 0xff;
        b[off + 15] = tci & 0xff;
        flen += 4;
        // The kernel counted csum_start from the untagged frame.
        batch.csumStart[n] += 4;
      } else {
        batch.bytes[n] = rx;
      }
      if (bits !== 0) {
        if ((bits & OFFLOAD_CSUM) !== 0) c[RX_CSUM_PARTIAL]++;
        if ((bits & OFFLOAD_GSO_ANY) !== 0) c[RX_GSO]++;
      }
      batch.offset[n] = off;
      batch.length[n] = flen;
      c[RX_BYTES] += flen;
      n++;
    }
    c[RX_PACKETS] += n;
    batch.count = n;
    return n;
  }

  /** Takes the next block if the kernel has handed it over (TP_STATUS_USER). */
  #openBlock(): boolean {
    // Every block read but not yet released: the next one is ours already (a receive() without
    // release()), never read it twice.
    if (this.#rxDone === this.#rxBlockNr) return false;
    const b = this.#rxBlock * this.#rxBlockSize;
    const w = this.#rx32;
    if ((Atomics.load(w, (b + BLOCK_STATUS) >> 2) & TP_STATUS_USER) === 0) return false;
    // Frames already taken while the kernel was filling it are not read again.
    this.#rxLeft = w[(b + BLOCK_NUM_PKTS) >> 2] - this.#rxPeeked;
    this.#rxNext = this.#rxPeeked > 0
      ? this.#rxPeekNext
      : b + w[(b + BLOCK_OFFSET_TO_FIRST_PKT) >> 2];
    this.#rxPeeked = 0;
    this.#rxOpen = true;
    if (this.#rxLeft <= 0) {
      this.#closeBlock();
      return this.#openBlock();
    }
    return true;
  }

  /**
   * The next frame of the block the kernel is still filling, or -1. A TPACKET_V3 block is
   * handed over only when full or when its retire timer (1 ms at least) fires: at a low frame
   * rate every frame would wait for that timer, twice per round trip. The kernel writes a
   * frame's data, then its header fields and the sockaddr_ll after it (tpacket_rcv), each of
   * which is non-zero for a real frame; a block that went back to the kernel all zeros past its
   * header (see release) therefore shows a frame as complete once every field read here is
   * non-zero. Frames taken early stay where they are: the kernel only appends to a block.
   */
  #peekFrame(): number {
    if (this.#rxDone === this.#rxBlockNr || this.#rxClean[this.#rxBlock] === 0) return -1;
    const w = this.#rx32;
    const b = this.#rxBlock * this.#rxBlockSize;
    if (this.#rxPeeked >= w[(b + BLOCK_NUM_PKTS) >> 2]) return -1;
    const h = this.#rxPeeked > 0 ? this.#rxPeekNext : b + w[(b + BLOCK_OFFSET_TO_FIRST_PKT) >> 2];
    if (h + TPACKET3_HDR_ALIGNED + 20 > b + this.#rxBlockSize) return -1;
    const next = w[(h + TP_NEXT_OFFSET) >> 2];
    if (
      (Atomics.load(w, (h + TP_STATUS) >> 2) & TP_STATUS_USER) === 0 || next === 0 ||
      w[(h + TP_LEN) >> 2] === 0 || w[(h + TP_SNAPLEN) >> 2] === 0 ||
      this.#rx16[(h + TP_MAC) >> 1] === 0 || w[(h + TP_SLL_IFINDEX) >> 2] === 0
    ) {
      return -1;
    }
    this.#rxPeeked++;
    this.#rxPeekNext = h + next;
    return h;
  }

  /**
   * Before the worker sleeps: empties the doorbell (so that it rings for the next frame), then
   * says whether a frame receive() can take arrived meanwhile (its ring may have been emptied
   * with the rest): the worker must not sleep then. A frame in a block that cannot be read early
   * (see #peekFrame) waits for its block's hand-over, which makes the ring's socket readable.
   */
  armWake(): boolean {
    if (this.wakeFd < 0) return false;
    for (let i = 0; i < 64 && recvFrame(this.wakeFd, this.#bell) >= 0; i++);
    if (this.#rxOpen) return this.#rxLeft > 0;
    if (this.#rxDone === this.#rxBlockNr) return false;
    const b = this.#rxBlock * this.#rxBlockSize;
    const w = this.#rx32;
    if ((Atomics.load(w, (b + BLOCK_STATUS) >> 2) & TP_STATUS_USER) !== 0) return true;
    return this.#rxClean[this.#rxBlock] === 1 &&
      Atomics.load(w, (b + BLOCK_NUM_PKTS) >> 2) > this.#rxPeeked;
  }

  /** All frames of the open block are in a batch: it goes back once that batch is released. */
  #closeBlock(): void {
    this.#rxOpen = false;
    this.#rxDone++;
    this.#rxBlock = this.#rxBlock + 1 === this.#rxBlockNr ? 0 : this.#rxBlock + 1;
  }

  /** Gives fully read blocks back (TP_STATUS_KERNEL); a partly read block stays ours. */
  release(): void {
    let k = this.#rxDone;
    if (k === 0) return;
    const nr = this.#rxBlockNr;
    let b = (this.#rxBlock - k + nr) % nr;
    const w = this.#rx32;
    for (; k > 0; k--) {
      // A block of a few frames (a low rate, where reading it early matters) goes back all
      // zeros past its header, so #peekFrame can read it while the kernel fills it; clearing
      // the full blocks of a high rate would cost a memset per frame and gain nothing.
      const o = b * this.#rxBlockSize;
      const first = w[(o + BLOCK_OFFSET_TO_FIRST_PKT) >> 2];
      const end = Math.min(
        this.#rxBlockSize,
        Math.max(this.#rxDirtyEnd[b], w[(o + BLOCK_LEN) >> 2]),
      );
      if (w[(o + BLOCK_NUM_PKTS) >> 2] <= PEEK_CLEAR_FRAMES) {
        if (end > first) this.#rx.fill(0, o + first, o + end);
        this.#rxDirtyEnd[b] = 0;
        this.#rxClean[b] = 1;
      } else {
        this.#rxDirtyEnd[b] = end;
        this.#rxClean[b] = 0;
      }
      Atomics.store(w, (o + BLOCK_STATUS) >> 2, TP_STATUS_KERNEL);
      b = b + 1 === nr ? 0 : b + 1;
    }
    this.#rxDone = 0;
  }

  transmit(src: Uint8Array, f: EgressFrame): boolean {
    // A plain frame (at most a DATA_VALID hint, which the kernel has no use for on TX) takes the
    // plain path; checksum-partial and GSO frames are handed to the kernel with their header.
    if ((f.offload & ~OFFLOAD_DATA_VALID) === 0) return this.transmitPlain(src, f);
    return this.#transmitOffload(src, f);
  }

  transmitPlain(src: Uint8Array, f: EgressFrame): boolean {
    const c = this.counters;
    if (!this.#link.up) {
      c[DROP_LINK_DOWN]++;
      return false;
    }
    if (!egressFits(src, f, this.#link.mtu, this.#txRoom)) {
      c[DROP_TOO_BIG]++;
      return false;
    }
    if (f.length < ETH_HLEN) {
      c[DROP_RUNT]++;
      return false;
    }
    const slot = this.#txSlot();
    if (slot < 0) return false;
    // A zero virtio_net_hdr (the slot is reused: clear what the last frame left).
    const v = (slot + TPACKET3_HDR_ALIGNED) >> 2;
    this.#tx32[v] = 0;
    this.#tx32[v + 1] = 0;
    this.#tx[slot + TX_DATA - 2] = 0;
    this.#tx[slot + TX_DATA - 1] = 0;
    copyEgress(this.#tx, slot + TX_DATA, src, f);
    this.#queue(slot, f.length);
    return true;
  }

  /**
   * A frame that needs its checksum filled or its segments cut: the kernel does it (and the
   * device after it) from the header; what the header cannot say goes to the software fallback:
   * a GSO frame without NEEDS_CSUM, or one longer than a slot holds.
   */
  #transmitOffload(src: Uint8Array, f: EgressFrame): boolean {
    const c = this.counters;
    const bits = f.offload;
    const len = f.length;
    if (!this.#link.up) {
      c[DROP_LINK_DOWN]++;
      return false;
    }
    const tagged = egressTagged(src, f);
    const wire = this.#link.mtu + ETH_HLEN + (tagged ? 4 : 0);
    const gso = (bits & OFFLOAD_GSO_ANY) !== 0;
    if ((bits & ~ACCEPTS) !== 0 || (gso && len > this.#txRoom)) {
      return this.#fallback.send(src, f, this, this.#link.mtu + ETH_HLEN);
    }
    if (!gso && len > wire) {
      c[DROP_TOO_BIG]++;
      return false;
    }
    if (len < ETH_HLEN || f.csumStart + f.csumOffset + 2 > len) {
      c[DROP_BAD_OFFLOAD]++;
      return false;
    }
    const slot = this.#txSlot();
    if (slot < 0) return false;
    const at = slot + TX_DATA;
    copyEgress(this.#tx, at, src, f);
    let hdrLen = 0;
    let mss = 0;
    if (gso) {
      // The headers end after the L4 header (TCP: its data offset); segments must fit the MTU.
      const l4 = f.csumStart;
      hdrLen = (bits & OFFLOAD_USO) !== 0 ? l4 + 8 : l4 + (this.#tx[at + l4 + 12] >>> 4) * 4;
      mss = f.gsoSize;
      if (hdrLen + mss > wire) mss = wire - hdrLen;
      if (hdrLen > len || mss <= 0) {
        c[hdrLen > len ? DROP_BAD_OFFLOAD : DROP_TOO_BIG]++;
        return false; // the slot stays AVAILABLE: nothing was queued
      }
      c[TX_GSO]++;
    }
    writeVirtioNetHdr(
      this.#tx,
      slot + TPACKET3_HDR_ALIGNED,
      bits,
      f.csumStart,
      f.csumOffset,
      mss,
      hdrLen,
    );
    this.#queue(slot, len);
    return true;
  }

  /** The head TX slot if the kernel is done with it, else -1 (counted: no buffer). */
  #txSlot(): number {
    const i = this.#txHead;
    const slot = Math.floor(i / this.#txFramesPerBlock) * this.#txBlockSize +
      (i % this.#txFramesPerBlock) * this.#txFrameSize;
    // The kernel frees slots in order as their skbs are destroyed: head busy = ring full.
    if (Atomics.load(this.#tx32, (slot + TP_STATUS) >> 2) !== TP_STATUS_AVAILABLE) {
      this.counters[DROP_NO_BUFFER]++;
      return -1;
    }
    return slot;
  }

  /** Hands the frame in `slot` (its virtio_net_hdr and `len` bytes) to the kernel. */
  #queue(slot: number, len: number): void {
    const st = (slot + TP_STATUS) >> 2;
    this.#tx32[(slot + TP_LEN) >> 2] = VNET_HDR_LEN + len;
    Atomics.store(this.#tx32, st, TP_STATUS_SEND_REQUEST);
    this.#txLast = st;
    const i = this.#txHead;
    this.#txHead = i + 1 === this.#txFrameNr ? 0 : i + 1;
    this.#txQueued++;
    this.counters[TX_PACKETS]++;
    this.counters[TX_BYTES] += len;
  }

  flush(): void {
    if (this.#txQueued > 0 || (this.#kickPending && this.#link.up)) this.#kick();
    // A worker that only transmits here never calls receive(): keep its view of the link fresh.
    this.#link.refresh();
  }

  #kick(): void {
    this.#txQueued = 0;
    this.counters[NOTIFICATIONS]++;
    // EAGAIN (send buffer full), ENOBUFS (driver queue busy with QDISC_BYPASS) or ENETDOWN
    // leave frames at SEND_REQUEST: they go with the next kick, tried on every poll.
    sendNow(this.#txFd);
    this.#kickPending = Atomics.load(this.#tx32, this.#txLast) === TP_STATUS_SEND_REQUEST;
  }

  /** Frames queued in the TX ring the kernel has not taken yet (tests, diagnostics). */
  get kickPending(): boolean {
    return this.#kickPending;
  }
}

/** The datapath object for a spec, in whichever Worker received it. */
export function createAfPacketDatapath(
  spec: AfPacketSpec,
  counters: Float64Array,
  worker = 0,
): AfPacketRingDatapath | AfPacketSyscallDatapath {
  return spec.variant === "ring"
    ? new AfPacketRingDatapath(spec, counters, worker)
    : new AfPacketSyscallDatapath(spec, counters);
}
