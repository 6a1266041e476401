// The software fallback a port uses for a frame that needs an offload it cannot hand on (a guest
// that did not negotiate it, an AF_PACKET socket without PACKET_VNET_HDR) or that is too long
// for it (a GSO frame larger than the port's slots, or with segments longer than its MTU):
// the checksum is completed, or the super-frame is segmented, and the result goes out through
// the port's own plain transmit. Always correct, never the fast path: one extra copy per frame
// (none of a super-frame's payload for a port that sends it from where it lies).
import { CSUM_FILLED, DROP_BAD_OFFLOAD, DROP_TOO_BIG, GSO_SEGMENTED } from "../counters.ts";
import { EgressFrame, MAX_FRAME_LEN, MAX_GSO_FRAME } from "../port.ts";
import { ETH_HLEN, VLAN_HLEN } from "../ethernet.ts";
import { copyMemory } from "../../ffi/native_copy.ts";
import { completeChecksum } from "./checksum.ts";
import {
  FrameHeaders,
  parseHeaders,
  segment,
  type SegmentInPlace,
  type SegmentSink,
} from "./gso.ts";
import {
  OFFLOAD_CSUM,
  OFFLOAD_GSO,
  OFFLOAD_GSO_NO_CSUM,
  OFFLOAD_TSO4,
  OFFLOAD_TSO6,
  OFFLOAD_USO,
} from "./virtio_net_hdr.ts";

/** The port's transmit for a frame that needs nothing done to it. */
export interface PlainTransmit {
  transmitPlain(src: Uint8Array, f: EgressFrame): boolean;
  /**
   * Where to build the next segment of a super-frame being cut so that transmitPlain() takes it
   * without copying (a VXLAN port's datagram slot), or null.
   */
  segmentBuffer?(): Uint8Array | null;
  /**
   * Sends a segment of a super-frame being cut whose payload stays where it lies: the port reads
   * it when it flushes, and the forwarder flushes before it releases the burst.
   */
  transmitSegment?: SegmentInPlace;
}

/** Copies the egress frame f (head ++ tail), or its first `upTo` bytes, to dst[0, ...). */
export function materialize(
  dst: Uint8Array,
  src: Uint8Array,
  f: EgressFrame,
  upTo = f.length,
): void {
  const head = Math.min(f.headLength, upTo);
  for (let k = 0; k < head; k++) dst[k] = f.head[k];
  const tail = Math.min(f.tailEnd - f.tailStart, upTo - head);
  if (tail > 0) copyMemory(dst, head, src, f.tailStart, tail);
}

/**
 * Bytes of a super-frame gathered to find its headers (Ethernet, two tags, IPv6 with a few
 * extension headers, TCP with options); longer headers make the whole frame gathered.
 */
const HEADER_ROOM = 512;

export class OffloadFallback implements SegmentSink {
  readonly #whole = new Uint8Array(MAX_GSO_FRAME);
  readonly #seg = new Uint8Array(MAX_FRAME_LEN);
  readonly #plain = new EgressFrame();
  readonly #h = new FrameHeaders();
  #port: PlainTransmit | null = null;
  #sent = 0;
  /** The sink for a port that sends a segment's payload from where it lies. */
  readonly #inPlace: SegmentSink = {
    segment: (seg, len) => this.segment(seg, len),
    buffer: () => this.buffer(),
    segmentInPlace: (seg, headerLen, src, at, n) => {
      const ok = this.#port!.transmitSegment!(seg, headerLen, src, at, n);
      if (ok) this.#sent++;
      return ok;
    },
  };

  constructor(readonly counters: Float64Array) {}

  /**
   * Sends f through port.transmitPlain with its offloads done here: segments of at most
   * `maxFrame` bytes (4 more when the frame carries a VLAN tag), or the frame with its checksum
   * filled. Returns whether anything was sent; drops are counted.
   */
  send(src: Uint8Array, f: EgressFrame, port: PlainTransmit, maxFrame: number): boolean {
    const c = this.counters;
    const len = f.length;
    if (len > MAX_GSO_FRAME || len < ETH_HLEN) {
      c[DROP_BAD_OFFLOAD]++;
      return false;
    }
    const b = this.#whole;
    const bits = f.offload;
    const gso = (bits & (OFFLOAD_GSO | OFFLOAD_GSO_NO_CSUM)) !== 0;
    // A super-frame's payload is read where it is (segment() copies it once, into each segment),
    // so only its headers are gathered here; the whole frame when they are longer than that.
    const h = this.#h;
    let whole = !gso || len <= HEADER_ROOM;
    if (!whole) {
      materialize(b, src, f, HEADER_ROOM);
      whole = parseHeaders(b, HEADER_ROOM, h) !== 0 || h.end < f.headLength;
    }
    if (whole) materialize(b, src, f);
    if (!gso) {
      // Checksum only (the caller checked csumStart + csumOffset + 2 <= length on receive).
      if ((bits & OFFLOAD_CSUM) !== 0) {
        completeChecksum(b, len, f.csumStart, f.csumOffset);
        c[CSUM_FILLED]++;
      }
      return port.transmitPlain(b, this.#plain.setWhole(b, 0, len));
    }
    if ((whole && parseHeaders(b, len, h) !== 0) || !matchesGsoType(bits, h)) {
      c[DROP_BAD_OFFLOAD]++;
      return false;
    }
    const limit = Math.min(MAX_FRAME_LEN, maxFrame + (h.tags > 0 ? VLAN_HLEN : 0));
    let mss = f.gsoSize;
    if (h.end + mss > limit) mss = limit - h.end;
    if (mss <= 0) {
      c[DROP_TOO_BIG]++;
      return false;
    }
    this.#port = port;
    this.#sent = 0;
    // Payload byte x of the frame: b[x] when whole, else in the tail (h.end >= headLength).
    if (whole) segment(b, len, h, mss, this.#seg, this);
    else {
      const sink = port.transmitSegment !== undefined ? this.#inPlace : this;
      segment(b, len, h, mss, this.#seg, sink, src, f.tailStart - f.headLength);
    }
    this.#port = null;
    c[GSO_SEGMENTED]++;
    return this.#sent > 0;
  }

  buffer(): Uint8Array | null {
    return this.#port!.segmentBuffer?.() ?? null;
  }

  segment(seg: Uint8Array, len: number): boolean {
    const ok = this.#port!.transmitPlain(seg, this.#plain.setWhole(seg, 0, len));
    if (ok) this.#sent++;
    return ok;
  }
}

/** The GSO type the header claimed matches the headers found (TSO4: TCP over IPv4, ...). */
function matchesGsoType(bits: number, h: FrameHeaders): boolean {
  if ((bits & OFFLOAD_TSO4) !== 0) return h.tcp && !h.ipv6;
  if ((bits & OFFLOAD_TSO6) !== 0) return h.tcp && h.ipv6;
  if ((bits & OFFLOAD_USO) !== 0) return !h.tcp;
  return false;
}
