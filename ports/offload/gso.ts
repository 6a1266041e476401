// Segmentation in software (what the kernel's skb_gso_segment does for a device without TSO):
// a TCP or UDP super-frame is cut into frames of at most `mss` payload bytes, each with its own
// IP length, IPv4 id and header checksum, TCP sequence number and flags (FIN and PSH only on the
// last segment, CWR only on the first) and a complete L4 checksum. Pure functions on bytes.
import { checksumOf, onesSum, readU16, TCP_CHECK, UDP_CHECK, writeU16 } from "./checksum.ts";
import { ETH_HLEN, VLAN_HLEN } from "../ethernet.ts";
import { copyMemory } from "../../ffi/native_copy.ts";

const ETH_P_IP = 0x0800;
const ETH_P_IPV6 = 0x86dd;
const ETH_P_8021Q = 0x8100;
const ETH_P_8021AD = 0x88a8;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;
const IPV6_HOPOPTS = 0;
const IPV6_DSTOPTS = 60;
const IPV6_HLEN = 40;
/** Extension headers walked before the L4 header; more is refused. */
const MAX_IPV6_EXT = 4;
/** Routing, fragment, ESP, AH, mobility, HIP, shim6: a segment's L4 header is not found past them. */
const IPV6_EXT_NOT_WALKED = [43, 44, 50, 51, 135, 139, 140];
const TCP_FLAG_FIN = 0x01;
const TCP_FLAG_PSH = 0x08;
const TCP_FLAG_CWR = 0x80;

/** Why a super-frame cannot be segmented (the frame is dropped, counted as drop_bad_offload). */
export const GSO_BAD_L2 = -1;
export const GSO_BAD_IP = -2;
/** IPv6 routing or fragment header, or another one not walked: counted, not segmented. */
export const GSO_UNSUPPORTED_EXT = -3;
export const GSO_BAD_L4 = -4;
export const GSO_BAD_MSS = -5;

/** Where the headers of a frame are, as parseHeaders() found them. */
export class FrameHeaders {
  /** Start of the IP header. */
  l3 = 0;
  /** Start of the TCP/UDP header. */
  l4 = 0;
  /** End of the TCP/UDP header: where the payload starts. */
  end = 0;
  ipv6 = false;
  tcp = false;
  /** 802.1Q/802.1ad tags between the MAC addresses and the IP header. */
  tags = 0;
}

/**
 * Finds the IP and TCP/UDP headers of b[0, len) (up to two VLAN tags; IPv6 hop-by-hop and
 * destination options headers). Returns 0, or a GSO_* code naming what is wrong.
 */
export function parseHeaders(b: Uint8Array, len: number, h: FrameHeaders): number {
  let at = ETH_HLEN - 2;
  let tags = 0;
  if (len < ETH_HLEN) return GSO_BAD_L2;
  let type = readU16(b, at);
  while ((type === ETH_P_8021Q || type === ETH_P_8021AD) && tags < 2) {
    at += VLAN_HLEN;
    tags++;
    if (at + 2 > len) return GSO_BAD_L2;
    type = readU16(b, at);
  }
  const l3 = at + 2;
  let l4: number;
  let proto: number;
  if (type === ETH_P_IP) {
    if (l3 + 20 > len || (b[l3] >>> 4) !== 4) return GSO_BAD_IP;
    const ihl = (b[l3] & 0xf) * 4;
    // A fragment (MF or an offset) has no L4 header of its own to segment by.
    if (ihl < 20 || (readU16(b, l3 + 6) & 0x3fff) !== 0) return GSO_BAD_IP;
    l4 = l3 + ihl;
    proto = b[l3 + 9];
    h.ipv6 = false;
  } else if (type === ETH_P_IPV6) {
    if (l3 + IPV6_HLEN > len || (b[l3] >>> 4) !== 6) return GSO_BAD_IP;
    proto = b[l3 + 6];
    l4 = l3 + IPV6_HLEN;
    for (let k = 0; proto === IPV6_HOPOPTS || proto === IPV6_DSTOPTS; k++) {
      if (k === MAX_IPV6_EXT || l4 + 8 > len) return GSO_UNSUPPORTED_EXT;
      proto = b[l4];
      l4 += (b[l4 + 1] + 1) * 8;
    }
    h.ipv6 = true;
  } else {
    return GSO_BAD_IP;
  }
  if (proto === IPPROTO_TCP) {
    if (l4 + 20 > len) return GSO_BAD_L4;
    const doff = (b[l4 + 12] >>> 4) * 4;
    if (doff < 20 || l4 + doff > len) return GSO_BAD_L4;
    h.end = l4 + doff;
    h.tcp = true;
  } else if (proto === IPPROTO_UDP) {
    if (l4 + 8 > len) return GSO_BAD_L4;
    h.end = l4 + 8;
    h.tcp = false;
  } else {
    return h.ipv6 && IPV6_EXT_NOT_WALKED.includes(proto) ? GSO_UNSUPPORTED_EXT : GSO_BAD_L4;
  }
  h.l3 = l3;
  h.l4 = l4;
  h.tags = tags;
  return 0;
}

/** The pseudo-header sum (RFC 793 / RFC 8200 8.1) for an L4 segment of `l4Len` bytes. */
export function pseudoSum(b: Uint8Array, h: FrameHeaders, l4Len: number): number {
  const proto = h.tcp ? IPPROTO_TCP : IPPROTO_UDP;
  if (h.ipv6) return onesSum(b, h.l3 + 8, h.l3 + 40, 0) + proto + l4Len;
  return onesSum(b, h.l3 + 12, h.l3 + 20, 0) + proto + l4Len;
}

/** Where the segments go: called once per segment, seg[0, len) complete and checksummed. */
export interface SegmentSink {
  segment(seg: Uint8Array, len: number): boolean;
  /**
   * Where to build the next segment (room for MAX_FRAME_LEN bytes), when the sink can take it
   * where it lies; null: in the caller's `seg`.
   */
  buffer?(): Uint8Array | null;
  /**
   * Takes a segment whose payload stays where it lies (see SegmentInPlace). Only offered a
   * payload read from a `src` of the caller's, never one gathered into `b`.
   */
  segmentInPlace?: SegmentInPlace;
}

/**
 * A segment whose headers, checksums written, are seg[0, headerLen) and whose payload is
 * src[at, at + n), left where it lies: the taker sends it from there before the burst's buffers
 * go back to their owner. Returns whether it was taken.
 */
export type SegmentInPlace = (
  seg: Uint8Array,
  headerLen: number,
  src: Uint8Array,
  at: number,
  n: number,
) => boolean;

/**
 * Cuts the super-frame b[0, len) with headers `h` into segments of at most `mss` payload bytes,
 * built one at a time in `into` (room for h.end + mss bytes) or where the sink asks, and handed
 * to `sink`. The headers are read from b[0, h.end); payload byte x (x >= h.end) from
 * src[srcBase + x], which is b itself unless the caller gathered only the headers. A payload
 * in a `src` of its own goes to a sink's segmentInPlace() where it lies, unless it starts at
 * an odd address (its sum would go a byte at a time): only the headers are built. Returns the
 * segments handed over (those the sink refused included), or GSO_BAD_MSS.
 */
export function segment(
  b: Uint8Array,
  len: number,
  h: FrameHeaders,
  mss: number,
  into: Uint8Array,
  sink: SegmentSink,
  src: Uint8Array = b,
  srcBase = 0,
): number {
  const end = h.end;
  const payload = len - end;
  if (mss <= 0 || end + Math.min(mss, payload) > into.length) return GSO_BAD_MSS;
  const count = payload <= 0 ? 1 : Math.ceil(payload / mss);
  const l3 = h.l3;
  const l4 = h.l4;
  const seq0 = h.tcp ? readU32(b, l4 + 4) : 0;
  const id0 = h.ipv6 ? 0 : readU16(b, l3 + 4);
  const flags = h.tcp ? b[l4 + 13] : 0;
  const inPlace = src !== b && sink.segmentInPlace !== undefined &&
    ((src.byteOffset + srcBase + end) & 1) === 0 && (mss & 1) === 0;
  // What every segment's checksums share is summed once: the IPv4 header, and the pseudo-header
  // and L4 header, without the fields that change from segment to segment (lengths, id, sequence
  // number, flags, the checksums themselves). Each segment adds its own values and its payload.
  const ipShared = h.ipv6
    ? 0
    : onesSum(b, l3, l4, 0) - readU16(b, l3 + 2) - readU16(b, l3 + 4) - readU16(b, l3 + 10);
  const l4Shared = pseudoSum(b, h, 0) + onesSum(b, l4, end, 0) -
    (h.tcp
      ? readU16(b, l4 + 4) + readU16(b, l4 + 6) + readU16(b, l4 + 12) + readU16(b, l4 + TCP_CHECK)
      : readU16(b, l4 + 4) + readU16(b, l4 + UDP_CHECK));
  const offsetWord = h.tcp ? b[l4 + 12] << 8 : 0; // data offset, the high half of word 12
  for (let k = 0; k < count; k++) {
    const from = end + k * mss;
    const n = Math.max(0, Math.min(mss, len - from));
    const seg = sink.buffer?.() ?? into;
    for (let i = 0; i < end; i++) seg[i] = b[i];
    if (n > 0 && !inPlace) copyMemory(seg, end, src, srcBase + from, n);
    const segLen = end + n;
    const l4Len = segLen - l4;
    if (h.ipv6) {
      writeU16(seg, l3 + 4, segLen - l3 - IPV6_HLEN);
    } else {
      const id = (id0 + k) & 0xffff;
      writeU16(seg, l3 + 2, segLen - l3);
      writeU16(seg, l3 + 4, id);
      writeU16(seg, l3 + 10, checksumOf(ipShared + (segLen - l3) + id));
    }
    let check: number;
    let sum: number;
    if (h.tcp) {
      const seq = (seq0 + k * mss) >>> 0;
      writeU32(seg, l4 + 4, seq);
      let f = flags;
      if (k !== count - 1) f &= ~(TCP_FLAG_FIN | TCP_FLAG_PSH);
      if (k !== 0) f &= ~TCP_FLAG_CWR;
      seg[l4 + 13] = f;
      check = l4 + TCP_CHECK;
      sum = l4Shared + l4Len + (seq >>> 16) + (seq & 0xffff) + (offsetWord | f);
    } else {
      writeU16(seg, l4 + 4, l4Len);
      check = l4 + UDP_CHECK;
      sum = l4Shared + 2 * l4Len; // in the pseudo-header and the UDP header
    }
    let c = checksumOf(
      inPlace
        ? onesSum(src, srcBase + from, srcBase + from + n, sum)
        : onesSum(seg, end, segLen, sum),
    );
    if (c === 0 && !h.tcp) c = 0xffff;
    writeU16(seg, check, c);
    if (inPlace) sink.segmentInPlace!(seg, end, src, srcBase + from, n);
    else sink.segment(seg, segLen);
  }
  return count;
}

function readU32(b: Uint8Array, at: number): number {
  return ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0;
}

function writeU32(b: Uint8Array, at: number, v: number): void {
  b[at] = v >>> 24;
  b[at + 1] = (v >>> 16) & 0xff;
  b[at + 2] = (v >>> 8) & 0xff;
  b[at + 3] = v & 0xff;
}
