// The Internet checksum's long sums (RFC 1071) in native code: a TCP segment's payload, once
// when a super-frame is cut for a VXLAN tunnel and once when the far end verifies it before
// merging segments again. In the VXLAN profile those two sums took 15% of the workers' time in
// V8 (~7 GB/s, 32 bits a step). Two loops, one chosen per call: 64 bits a step with the carry
// chained through `adc` (~19 GB/s here), and where the CPU has AVX2, 32 bytes a step, each
// 16-bit word zero-extended into one of sixteen 32-bit lanes (~45 GB/s on 64 KiB, 2x the adc
// loop on a 1400-byte segment). Built and loaded like the copy helper (ffi/native_copy.ts): a
// few hundred bytes of machine code in an in-memory shared object, called on V8's fast path with
// a remembered pointer, offsets checked here before the call.
//
//   uint32_t vs_sum(const uint8_t *base, double off, uint32_t n, uint32_t avx2)
//
// returns the ones-complement sum of base[off, off + n) read as little-endian 16-bit words,
// folded to 16 bits; byte-swapped, that is the big-endian sum (RFC 1071, byte order
// independence), which is what the caller wants. n must be a multiple of 4 and, with avx2, at
// most AVX2_MAX_BYTES: the lanes' total (n / 2 words of at most 0xffff) must fit 32 bits.
import { loadHelper, pointerOf, SMALL } from "./native_copy.ts";

/** The memfd name of the helper library (it shows in /proc/PID/maps as /memfd:NAME). */
export const SUM_LIBRARY_NAME = "vswitch-sum.so";

/** Bytes one AVX2 call may sum: 32768 words of 0xffff still fit the 32-bit lanes' total. */
const AVX2_MAX_BYTES = 65536;

/** x86-64 System V: rdi = base, xmm0 = off, esi = n, edx = avx2; the sum in eax. */
// deno-fmt-ignore
const SUM_CODE = [
  0xf2, 0x48, 0x0f, 0x2c, 0xc0, //      00 cvttsd2si rax, xmm0    off as an integer
  0x85, 0xd2, //                        05 test edx, edx          the AVX2 loop? (ZF kept below)
  0x48, 0x8d, 0x14, 0x07, //            07 lea rdx, [rdi + rax]   p = base + off
  0x89, 0xf1, //                        0b mov ecx, esi           bytes left
  0x75, 0x64, //                        0d jnz avx2 (73)
  0x31, 0xc0, //                        0f xor eax, eax           sum = 0 (and CF = 0)
  0x83, 0xf9, 0x20, //                  11 cmp ecx, 32
  0x72, 0x1f, //                        14 jb words8 (35)
  // loop32: four 64-bit words, each carry added into the next, the last one at the end
  0x48, 0x03, 0x02, //                  16 add rax, [rdx]
  0x48, 0x13, 0x42, 0x08, //            19 adc rax, [rdx + 8]
  0x48, 0x13, 0x42, 0x10, //            1d adc rax, [rdx + 16]
  0x48, 0x13, 0x42, 0x18, //            21 adc rax, [rdx + 24]
  0x48, 0x83, 0xd0, 0x00, //            25 adc rax, 0
  0x48, 0x83, 0xc2, 0x20, //            29 add rdx, 32
  0x83, 0xe9, 0x20, //                  2d sub ecx, 32
  0x83, 0xf9, 0x20, //                  30 cmp ecx, 32
  0x73, 0xe1, //                        33 jae loop32 (16)
  // words8: what is left, 8 bytes at a time (both loops end here)
  0x83, 0xf9, 0x08, //                  35 cmp ecx, 8
  0x72, 0x10, //                        38 jb word4 (4a)
  0x48, 0x03, 0x02, //                  3a add rax, [rdx]
  0x48, 0x83, 0xd0, 0x00, //            3d adc rax, 0
  0x48, 0x83, 0xc2, 0x08, //            41 add rdx, 8
  0x83, 0xe9, 0x08, //                  45 sub ecx, 8
  0xeb, 0xeb, //                        48 jmp words8 (35)
  // word4: a last 32-bit word, if any
  0x85, 0xc9, //                        4a test ecx, ecx
  0x74, 0x09, //                        4c jz fold (57)
  0x8b, 0x32, //                        4e mov esi, [rdx]         zero-extended
  0x48, 0x01, 0xf0, //                  50 add rax, rsi
  0x48, 0x83, 0xd0, 0x00, //            53 adc rax, 0
  // fold: 64 -> 32 -> 16 bits, each carry added back in
  0x48, 0x89, 0xc2, //                  57 mov rdx, rax
  0x48, 0xc1, 0xea, 0x20, //            5a shr rdx, 32
  0x01, 0xd0, //                        5e add eax, edx
  0x83, 0xd0, 0x00, //                  60 adc eax, 0
  0x89, 0xc2, //                        63 mov edx, eax
  0xc1, 0xea, 0x10, //                  65 shr edx, 16
  0x66, 0x01, 0xd0, //                  68 add ax, dx
  0x66, 0x83, 0xd0, 0x00, //            6b adc ax, 0
  0x0f, 0xb7, 0xc0, //                  6f movzx eax, ax
  0xc3, //                              72 ret
  // avx2: two accumulators of eight 32-bit lanes, and a zero register to interleave with
  0xc5, 0xf9, 0xef, 0xc0, //            73 vpxor xmm0, xmm0, xmm0 (the upper halves too)
  0xc5, 0xf1, 0xef, 0xc9, //            77 vpxor xmm1, xmm1, xmm1
  0xc5, 0xd1, 0xef, 0xed, //            7b vpxor xmm5, xmm5, xmm5
  0x83, 0xf9, 0x40, //                  7f cmp ecx, 64
  0x72, 0x35, //                        82 jb vec32 (b9)
  // vec64: 64 bytes; each 16-bit word zero-extended to 32 bits (unpack with zero) and added
  0xc5, 0xfe, 0x6f, 0x12, //            84 vmovdqu ymm2, [rdx]
  0xc5, 0xfe, 0x6f, 0x5a, 0x20, //      88 vmovdqu ymm3, [rdx + 32]
  0xc5, 0xed, 0x61, 0xe5, //            8d vpunpcklwd ymm4, ymm2, ymm5
  0xc5, 0xed, 0x69, 0xd5, //            91 vpunpckhwd ymm2, ymm2, ymm5
  0xc5, 0xfd, 0xfe, 0xc4, //            95 vpaddd ymm0, ymm0, ymm4
  0xc5, 0xf5, 0xfe, 0xca, //            99 vpaddd ymm1, ymm1, ymm2
  0xc5, 0xe5, 0x61, 0xe5, //            9d vpunpcklwd ymm4, ymm3, ymm5
  0xc5, 0xe5, 0x69, 0xdd, //            a1 vpunpckhwd ymm3, ymm3, ymm5
  0xc5, 0xfd, 0xfe, 0xc4, //            a5 vpaddd ymm0, ymm0, ymm4
  0xc5, 0xf5, 0xfe, 0xcb, //            a9 vpaddd ymm1, ymm1, ymm3
  0x48, 0x83, 0xc2, 0x40, //            ad add rdx, 64
  0x83, 0xe9, 0x40, //                  b1 sub ecx, 64
  0x83, 0xf9, 0x40, //                  b4 cmp ecx, 64
  0x73, 0xcb, //                        b7 jae vec64 (84)
  // vec32: one more 32-byte block, if there is one
  0x83, 0xf9, 0x20, //                  b9 cmp ecx, 32
  0x72, 0x1b, //                        bc jb lanes (d9)
  0xc5, 0xfe, 0x6f, 0x12, //            be vmovdqu ymm2, [rdx]
  0xc5, 0xed, 0x61, 0xe5, //            c2 vpunpcklwd ymm4, ymm2, ymm5
  0xc5, 0xed, 0x69, 0xd5, //            c6 vpunpckhwd ymm2, ymm2, ymm5
  0xc5, 0xfd, 0xfe, 0xc4, //            ca vpaddd ymm0, ymm0, ymm4
  0xc5, 0xf5, 0xfe, 0xca, //            ce vpaddd ymm1, ymm1, ymm2
  0x48, 0x83, 0xc2, 0x20, //            d2 add rdx, 32
  0x83, 0xe9, 0x20, //                  d6 sub ecx, 32
  // lanes: the sixteen lanes added into one (below 2^32: see AVX2_MAX_BYTES)
  0xc5, 0xfd, 0xfe, 0xc1, //            d9 vpaddd ymm0, ymm0, ymm1
  0xc4, 0xe3, 0x7d, 0x39, 0xc2, 0x01, //dd vextracti128 xmm2, ymm0, 1
  0xc5, 0xf9, 0xfe, 0xc2, //            e3 vpaddd xmm0, xmm0, xmm2
  0xc5, 0xf9, 0x70, 0xd0, 0x4e, //      e7 vpshufd xmm2, xmm0, 0x4e   swap the 64-bit halves
  0xc5, 0xf9, 0xfe, 0xc2, //            ec vpaddd xmm0, xmm0, xmm2
  0xc5, 0xf9, 0x70, 0xd0, 0xb1, //      f0 vpshufd xmm2, xmm0, 0xb1   swap within them
  0xc5, 0xf9, 0xfe, 0xc2, //            f5 vpaddd xmm0, xmm0, xmm2
  0xc5, 0xf9, 0x7e, 0xc0, //            f9 vmovd eax, xmm0        sum (rax, zero-extended)
  0xc5, 0xf8, 0x77, //                  fd vzeroupper             no AVX state left for SSE code
  0xe9, 0x30, 0xff, 0xff, 0xff, //      100 jmp words8 (35)       the rest as the adc loop does
];

const sumSymbols = {
  vs_sum: { parameters: ["pointer", "f64", "u32", "u32"], result: "u32" },
} as const satisfies Deno.ForeignLibraryInterface;

type NativeSum = Deno.DynamicLibrary<typeof sumSymbols>["symbols"]["vs_sum"];

function tryLoadNativeSum(): NativeSum | null {
  if (Deno.build.arch !== "x86_64" || Deno.build.os !== "linux") return null;
  try {
    return loadHelper(SUM_LIBRARY_NAME, "/proc/thread-self/fd", "vs_sum", SUM_CODE, sumSymbols)
      .vs_sum;
  } catch (e) {
    console.warn(`native checksum helper unavailable, summing in JS: ${e}`);
    return null;
  }
}

const native = tryLoadNativeSum();

/** Whether the CPU (and kernel) offer AVX2: its flag in /proc/cpuinfo. */
function cpuHasAvx2(): boolean {
  try {
    const info = Deno.readTextFileSync("/proc/cpuinfo");
    return /^flags\s*:.*\bavx2\b/m.test(info);
  } catch {
    return false;
  }
}

/** Whether long sums go through the native helper. */
export const nativeSumLoaded = native !== null;

/** Which loop long sums take: "avx2", "adc", or null (summed in JS). */
export const nativeSumKind: "avx2" | "adc" | null = native === null
  ? null
  : cpuHasAvx2()
  ? "avx2"
  : "adc";

const USE_AVX2 = nativeSumKind === "avx2" ? 1 : 0;

let lastView: Uint8Array | null = null;
let lastPointer: Deno.PointerValue = null;

/**
 * The ones-complement sum of b[from, from + n) read as little-endian 16-bit words, folded to
 * 16 bits; -1 when the helper is not loaded or `b` is too short to have a fixed address (then
 * the caller sums in JS). `n` must be a multiple of 4; throws RangeError, reading nothing, when
 * the range is outside `b`.
 */
export function nativeSumLE(b: Uint8Array, from: number, n: number): number {
  return nativeSumWith(USE_AVX2, b, from, n);
}

/**
 * nativeSumLE through the loop chosen by `avx2` (1: the AVX2 loop, which only a CPU with AVX2
 * may run; 0: the adc loop): the tests check both.
 */
export function nativeSumWith(avx2: number, b: Uint8Array, from: number, n: number): number {
  if (
    !(from >= 0) || from % 1 !== 0 || (n >>> 0) !== n || (n & 3) !== 0 || from + n > b.length
  ) {
    throw new RangeError(`nativeSumLE: ${n} bytes from ${from} of ${b.length}`);
  }
  if (native === null || b.byteLength <= SMALL) return -1;
  if (b !== lastView) {
    lastView = b;
    lastPointer = pointerOf(b);
  }
  if (n <= AVX2_MAX_BYTES) return native(lastPointer, from, n, avx2);
  // Longer than one AVX2 call may sum (a range past a 64 KiB frame): in pieces, folded.
  let sum = 0;
  for (let at = from, left = n; left > 0;) {
    const k = Math.min(left, AVX2_MAX_BYTES);
    sum += native(lastPointer, at, k, avx2);
    at += k;
    left -= k;
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}
