// The one small interface every kind of port offers the datapath (Snabb's pull/push, in
// bursts): receive a burst, transmit frames, flush once per burst, then release the burst.
import { ETH_ADDRS_LEN, ETH_HLEN, VLAN_HLEN } from "./ethernet.ts";

/** Largest frame (without virtio header) any port accepts: 9000 MTU + Ethernet + 2 VLAN tags. */
export const MAX_FRAME_LEN = 9000 + 14 + 8 + 4;
export const BURST = 32;
/**
 * Largest GSO frame (a TCP/UDP super-frame segmented later): an IP datagram's 16-bit length
 * limit plus an Ethernet header and two VLAN tags.
 */
export const MAX_GSO_FRAME = 0xffff + ETH_HLEN + 2 * VLAN_HLEN;

/**
 * How many of a frame's first bytes the bridge decides on and sends from its own copy: both MAC
 * addresses and the 802.1Q tag (or the EtherType and two bytes after it: 16 keeps the rest of the
 * frame as word-aligned in the output as it was in the input).
 */
export const HEADER_COPY_LEN = ETH_ADDRS_LEN + VLAN_HLEN;
/** The longest head: the copied header with a tag pushed in front of the EtherType. */
const MAX_HEAD_LEN = HEADER_COPY_LEN + VLAN_HLEN;

/**
 * A frame to send, as head[0, headLength) ++ src[tailStart, tailEnd). The head is private to the
 * switch (the addresses and the tag as sent, built from the bytes the bridge decided on, never
 * read from guest memory again); the tail is copied straight from the source buffer. VLAN tags
 * are pushed, rewritten or stripped in the head, so the frame is never edited in place.
 */
export class EgressFrame {
  readonly head: Uint8Array;
  /** The head as 32-bit words (the same bytes), for word copies into aligned buffers. */
  readonly headWords: Uint32Array;
  headLength = 0;
  tailStart = 0;
  tailEnd = 0;
  /** Total output length: headLength + tailEnd - tailStart. */
  length = 0;
  /** OFFLOAD_* bits (ports/offload/virtio_net_hdr.ts): 0 for a plain frame. */
  offload = 0;
  /** With OFFLOAD_CSUM: where the checksummed bytes start (in this frame, tags included). */
  csumStart = 0;
  /** With OFFLOAD_CSUM: where the checksum field sits, from csumStart. */
  csumOffset = 0;
  /** With a GSO bit: the payload bytes of each segment. */
  gsoSize = 0;

  constructor() {
    const buffer = new ArrayBuffer(MAX_HEAD_LEN);
    this.head = new Uint8Array(buffer);
    this.headWords = new Uint32Array(buffer);
  }

  /** The byte at output position `p`, whose tail lies in `src`. */
  byteAt(src: Uint8Array, p: number): number {
    return p < this.headLength ? this.head[p] : src[this.tailStart + p - this.headLength];
  }

  /** Sets this to src[off, off + len) sent as it is, a plain frame (senders besides the bridge). */
  setWhole(src: Uint8Array, off: number, len: number): this {
    const n = Math.min(len, HEADER_COPY_LEN);
    for (let i = 0; i < n; i++) this.head[i] = src[off + i];
    this.headLength = n;
    this.tailStart = off + n;
    this.tailEnd = off + len;
    this.length = len;
    this.offload = 0;
    return this;
  }
}

/**
 * A burst of received frames, as views: frame i is bytes[i][offset[i] .. offset[i]+length[i]).
 * Frames usually point straight into guest memory (no copy); a frame the peer scattered over
 * several buffers is gathered into the slot's scratch buffer. offload[i] holds the frame's
 * OFFLOAD_* bits (0: a plain frame, and then the other offload fields are stale); the receiving
 * port writes it for every frame.
 */
export class FrameBatch {
  count = 0;
  readonly bytes: Uint8Array[];
  readonly offset = new Float64Array(BURST);
  readonly length = new Int32Array(BURST);
  readonly offload = new Uint8Array(BURST);
  readonly csumStart = new Int32Array(BURST);
  readonly csumOffset = new Int32Array(BURST);
  readonly gsoSize = new Int32Array(BURST);
  readonly scratch: Uint8Array[];

  constructor() {
    this.scratch = Array.from({ length: BURST }, () => new Uint8Array(MAX_GSO_FRAME));
    this.bytes = this.scratch.slice();
  }
}

export interface DatapathPort {
  /** Fills `batch` with up to BURST frames; they stay valid until release(). */
  receive(batch: FrameBatch): number;
  /** Hands the buffers of the last receive back to the peer. */
  release(): void;
  /**
   * Sends one frame out (copied, or read where it lies until flush(): the forwarder flushes
   * every port it sent to before it releases the burst); false if it was dropped (and counted).
   */
  transmit(src: Uint8Array, frame: EgressFrame): boolean;
  /** Makes what was transmitted visible to the peer and notifies it, once per burst. */
  flush(): void;
  /**
   * Sends frames [from, to) of `batch`, each as f.head ++ its bytes after the first `skip`
   * (the header the bridge decided on, the same for the whole run); returns the frames sent.
   * Optional: the forwarder sends frame by frame through transmit() to a port without it.
   */
  transmitRun?(batch: FrameBatch, from: number, to: number, f: EgressFrame, skip: number): number;
}
