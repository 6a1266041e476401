// The Internet checksum (RFC 1071) over frame bytes: the ones-complement sum of 16-bit
// big-endian words, folded and complemented. Pure functions on byte arrays; the callers bound
// every range to the frame first. Long ranges are summed by native code where it loads
// (ffi/native_sum.ts), 3x faster than V8 here.
import { nativeSumLE } from "../../ffi/native_sum.ts";

/**
 * Adds the 16-bit big-endian words of b[start, end) to `sum` (not folded; an odd last byte is
 * the high half of a word). `start` must be at an even distance from where the checksummed
 * region begins. A float64 sum cannot overflow below 2^53: ~2^37 bytes.
 */
export function onesSum(b: Uint8Array, start: number, end: number, sum: number): number {
  let i = start;
  if (end - start >= WORDS_FROM && ((b.byteOffset + start) & 1) === 0) {
    // Whole 32-bit words from the first 4-aligned byte (an even distance on), the bytes around
    // them one by one.
    const from = start + ((4 - ((b.byteOffset + start) & 3)) & 3);
    const to = from + ((end - from) & ~3);
    sum = bytesSum(b, start, from, sum) + wordsSum(b, from, to);
    i = to;
  }
  return bytesSum(b, i, end, sum);
}

/** The byte-at-a-time sum (short ranges, the ends of long ones). */
function bytesSum(b: Uint8Array, start: number, end: number, sum: number): number {
  let i = start;
  const even = end - ((end - start) & 1);
  for (; i + 8 <= even; i += 8) {
    sum += ((b[i] << 8) | b[i + 1]) + ((b[i + 2] << 8) | b[i + 3]) +
      ((b[i + 4] << 8) | b[i + 5]) + ((b[i + 6] << 8) | b[i + 7]);
  }
  for (; i < even; i += 2) sum += (b[i] << 8) | b[i + 1];
  if (even !== end) sum += b[even] << 8;
  return sum;
}

/** Ranges at least this long are summed a 32-bit word at a time (3-4x faster in V8 here). */
const WORDS_FROM = 128;
/** 32-bit views of the buffers summed lately (a port's few buffers; made once each). */
const views: Uint32Array[] = [];
const VIEWS_KEPT = 8;

function wordsOf(buffer: ArrayBufferLike): Uint32Array {
  for (let k = 0; k < views.length; k++) if (views[k].buffer === buffer) return views[k];
  const v = new Uint32Array(buffer, 0, buffer.byteLength >>> 2);
  if (views.length === VIEWS_KEPT) views.shift();
  views.push(v);
  return v;
}

/**
 * The sum of b[from, to), 4-aligned in the buffer, read as little-endian 32-bit words: each is
 * two byte-swapped 16-bit words, and a ones-complement sum of byte-swapped words is the swapped
 * sum (RFC 1071, byte order independence), so the folded result is swapped back.
 */
function wordsSum(b: Uint8Array, from: number, to: number): number {
  const native = nativeSumLE(b, from, to - from);
  if (native >= 0) return ((native & 0xff) << 8) | (native >>> 8);
  const w = wordsOf(b.buffer);
  let sum = 0;
  let i = (b.byteOffset + from) >>> 2;
  const stop = (b.byteOffset + to) >>> 2;
  while (i < stop) {
    // Two 31-bit integer sums of 16-bit halves: 32768 words before either could overflow.
    const chunk = Math.min(stop, i + 32768);
    let lo = 0;
    let hi = 0;
    for (; i < chunk; i++) {
      const v = w[i];
      lo = (lo + (v & 0xffff)) | 0;
      hi = (hi + (v >>> 16)) | 0;
    }
    sum += lo + hi;
  }
  const s = fold(sum);
  return ((s & 0xff) << 8) | (s >>> 8);
}

/** Folds a sum to 16 bits (end-around carry). */
export function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
  return sum;
}

/** The checksum field value for a region whose words sum to `sum`. */
export function checksumOf(sum: number): number {
  return ~fold(sum) & 0xffff;
}

export function readU16(b: Uint8Array, at: number): number {
  return (b[at] << 8) | b[at + 1];
}

export function writeU16(b: Uint8Array, at: number, v: number): void {
  b[at] = v >>> 8;
  b[at + 1] = v & 0xff;
}

/** Fills in the header checksum of the option-less IPv4 header at b[ip, ip + 20). */
export function setIpv4HeaderChecksum(b: Uint8Array, ip: number): void {
  writeU16(b, ip + 10, 0);
  writeU16(b, ip + 10, checksumOf(onesSum(b, ip, ip + 20, 0)));
}

/**
 * Completes a checksum left to offload (virtio NEEDS_CSUM, the kernel's CHECKSUM_PARTIAL) in
 * b[0, len): the field at csumStart + csumOffset holds the pseudo-header sum, and the checksum
 * covers b[csumStart, len), as skb_checksum_help() computes it. A UDP result of 0 is sent as
 * 0xffff (RFC 768: 0 means "no checksum"). The caller checked csumStart + csumOffset + 2 <= len.
 */
export function completeChecksum(
  b: Uint8Array,
  len: number,
  csumStart: number,
  csumOffset: number,
): void {
  const at = csumStart + csumOffset;
  let c = checksumOf(onesSum(b, csumStart, len, 0));
  if (c === 0 && csumOffset === UDP_CHECK) c = 0xffff;
  writeU16(b, at, c);
}

/** Where the checksum sits in a TCP and in a UDP header. */
export const TCP_CHECK = 16;
export const UDP_CHECK = 6;
