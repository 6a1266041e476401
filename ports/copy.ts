// Copying frame bytes between guest buffers, the one copy on the datapath. Measured here:
// for a 64-byte frame a loop over 32-bit words takes ~16 ns, a call to memmove through
// ffi/native_copy.ts ~26 ns and subarray()+set() ~40-80 ns (it also allocates a view); from a
// couple of hundred bytes on, memmove wins (1518 B: ~56 ns, where subarray()+set() takes ~70-100).
import { copyMemory } from "../ffi/native_copy.ts";

/** Up to this many bytes, a copy of whole words is a loop of word loads and stores. */
export const WORDS_UP_TO = 192;
/**
 * Byte offsets below this have word indexes (offset >>> 2) that are exact 32-bit integers: V8
 * then indexes with them directly, where a double index (offset / 4, exact at any offset) costs
 * a conversion and an integrality check per access.
 */
export const WORD_INDEX_LIMIT = 2 ** 32;

const wordViews = new WeakMap<ArrayBufferLike, Uint32Array>();

/**
 * A Uint32Array over the whole buffer of `bytes` (which must start at offset 0), made once; it may
 * be longer than 2^32 bytes (a large guest's RAM region).
 */
export function wordView(bytes: Uint8Array): Uint32Array {
  let w = wordViews.get(bytes.buffer);
  if (w === undefined) {
    w = new Uint32Array(bytes.buffer, 0, Math.floor(bytes.buffer.byteLength / 4));
    wordViews.set(bytes.buffer, w);
  }
  return w;
}

/** Copies n bytes from src[sOff] to dst[dOff]; dw/sw are the word views of the same buffers. */
export function copyBytes(
  dst: Uint8Array,
  dw: Uint32Array,
  dOff: number,
  src: Uint8Array,
  sw: Uint32Array,
  sOff: number,
  n: number,
): void {
  if (n <= WORDS_UP_TO && ((dOff | sOff) & 3) === 0) {
    if (dOff < WORD_INDEX_LIMIT && sOff < WORD_INDEX_LIMIT) {
      const d = dOff >>> 2;
      const s = sOff >>> 2;
      const nw = n >>> 2;
      for (let k = 0; k < nw; k++) dw[d + k] = sw[s + k];
      for (let k = nw << 2; k < n; k++) dst[dOff + k] = src[sOff + k];
      return;
    }
    // Division, not `>>> 2`: offsets in guest memory pass 2^32 (both are multiples of 4 here).
    const d = dOff / 4;
    const s = sOff / 4;
    const nw = n >>> 2;
    for (let k = 0; k < nw; k++) dw[d + k] = sw[s + k];
    for (let k = nw << 2; k < n; k++) dst[dOff + k] = src[sOff + k];
  } else if (n < 16) {
    for (let k = 0; k < n; k++) dst[dOff + k] = src[sOff + k];
  } else {
    copyMemory(dst, dOff, src, sOff, n);
  }
}
