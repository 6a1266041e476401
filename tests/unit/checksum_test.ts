// The Internet checksum's word-at-a-time path against the byte-at-a-time definition, at every
// alignment of the frame in its buffer and of the range in the frame, short and long ranges
// (long ones go through the native helper on x86-64 Linux).
import assert from "node:assert/strict";
import { fold, onesSum } from "../../ports/offload/checksum.ts";
import {
  nativeSumKind,
  nativeSumLE,
  nativeSumLoaded,
  nativeSumWith,
} from "../../ffi/native_sum.ts";

/** RFC 1071 as written: big-endian 16-bit words, an odd last byte the high half of a word. */
function reference(b: Uint8Array, start: number, end: number, sum: number): number {
  for (let i = start; i < end; i += 2) sum += (b[i] << 8) | (i + 1 < end ? b[i + 1] : 0);
  return sum;
}

Deno.test("onesSum: 32-bit word sums equal the byte-wise sum at any alignment and length", () => {
  const buffer = new ArrayBuffer(20000);
  const all = new Uint8Array(buffer);
  let x = 12345;
  for (let i = 0; i < all.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    all[i] = x >>> 24;
  }
  for (let offset = 0; offset < 8; offset++) {
    const b = new Uint8Array(buffer, offset, 18000);
    for (let start = 0; start < 12; start++) {
      for (const len of [0, 1, 2, 3, 127, 128, 129, 1399, 1400, 1460, 9000, 17000]) {
        const got = fold(onesSum(b, start, start + len, 77));
        assert.equal(got, fold(reference(b, start, start + len, 77)), `${offset}/${start}/${len}`);
      }
    }
  }
  // All ones (every word 0xffff) and all zeros, where folding has its edge cases.
  const ones = new Uint8Array(4096).fill(0xff);
  assert.equal(fold(onesSum(ones, 0, 4096, 0)), fold(reference(ones, 0, 4096, 0)));
  const zeros = new Uint8Array(4096);
  assert.equal(fold(onesSum(zeros, 2, 4000, 0)), 0);
});

Deno.test("long sums go through the native helper on x86-64 Linux, which checks its ranges", () => {
  assert.equal(nativeSumLoaded, Deno.build.arch === "x86_64" && Deno.build.os === "linux");
  const b = new Uint8Array(1 << 17).fill(0xff);
  // Every 64-bit add carries: the end-around carries must all come back in.
  assert.equal(fold(onesSum(b, 0, b.length, 0)), 0xffff);
  assert.equal(fold(onesSum(b, 4, 4 + 65536, 0)), 0xffff);
  b.fill(0x80, 1000, 1004); // two 0x8080 words among 0xffff ones
  assert.equal(
    fold(onesSum(b, 0, 4096, 0)),
    fold(reference(b, 0, 4096, 0)),
  );
  for (const [from, n] of [[-4, 8], [0, 6], [0.5, 8], [b.length - 4, 8], [0, -4]]) {
    assert.throws(() => nativeSumLE(b, from, n), RangeError, `${from}+${n}`);
  }
  if (nativeSumLoaded) assert.equal(nativeSumLE(b, 0, 0), 0);
});

// Both native loops against the definition: the adc loop everywhere the helper loads, the AVX2
// loop where the CPU has it (the one nativeSumLE then takes). Lengths around the loops' steps
// (4, 8, 32, 64 bytes), a segment's, 64 KiB (the most one AVX2 call sums) and past it (summed in
// pieces), at every 4-byte alignment; all-ones, where every lane and carry is at its largest.
Deno.test("the adc and AVX2 sum loops equal the definition, to 64 KiB and past it", () => {
  if (!nativeSumLoaded) return;
  const loops = nativeSumKind === "avx2" ? [0, 1] : [0];
  const b = new Uint8Array(200_000);
  let x = 99;
  for (let i = 0; i < b.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  const ones = new Uint8Array(200_000).fill(0xff);
  const lengths = [0, 4, 8, 28, 32, 36, 60, 64, 68, 96, 124, 128, 1396, 1400, 65532, 65536, 65540];
  for (const avx2 of loops) {
    for (const buf of [b, ones]) {
      for (const from of [0, 4, 8, 12, 1000]) {
        for (const n of [...lengths, 131072 + 12]) {
          // The loops read little-endian words: swapped, that is the big-endian definition.
          const le = nativeSumWith(avx2, buf, from, n);
          const want = fold(reference(buf, from, from + n, 0));
          assert.equal(((le & 0xff) << 8) | (le >>> 8), want, `${avx2}/${from}/${n}`);
        }
      }
    }
  }
  assert.equal(nativeSumWith(0, ones, 0, 65536), 0xffff, "all ones: every carry comes back in");
});
