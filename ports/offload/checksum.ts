// The Internet checksum (RFC 1071) over frame bytes: the ones-complement sum of 16-bit
// big-endian words, folded and complemented. Pure functions on byte arrays; the callers bound
// every range to the frame first.

/**
 * Adds the 16-bit big-endian words of b[start, end) to `sum` (not folded; an odd last byte is
 * the high half of a word). `start` must be at an even distance from where the checksummed
 * region begins. A float64 sum cannot overflow below 2^53: ~2^37 bytes.
 */
export function onesSum(b: Uint8Array, start: number, end: number, sum: number): number {
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
