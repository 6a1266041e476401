// The Internet checksum's long sums (RFC 1071) in native code: a TCP segment's payload, once
// when a super-frame is cut for a VXLAN tunnel and once when the far end verifies it before
// merging segments again. In the VXLAN profile those two sums took 15% of the workers' time in
// V8 (~7 GB/s, 32 bits a step); this loop adds 64 bits a step with the carry chained through
// `adc` (~20 GB/s here). Built and loaded like the copy helper (ffi/native_copy.ts): a few
// dozen bytes of machine code in an in-memory shared object, called on V8's fast path with a
// remembered pointer, offsets checked here before the call.
//
//   uint32_t vs_sum(const uint8_t *base, double off, uint32_t n)  // n a multiple of 4
//
// returns the ones-complement sum of base[off, off + n) read as little-endian 16-bit words,
// folded to 16 bits; byte-swapped, that is the big-endian sum (RFC 1071, byte order
// independence), which is what the caller wants.
import { loadHelper, pointerOf, SMALL } from "./native_copy.ts";

/** The memfd name of the helper library (it shows in /proc/PID/maps as /memfd:NAME). */
export const SUM_LIBRARY_NAME = "vswitch-sum.so";

/** x86-64 System V: rdi = base, xmm0 = off, esi = n; the sum in eax. */
// deno-fmt-ignore
const SUM_CODE = [
  0xf2, 0x48, 0x0f, 0x2c, 0xc0, //      cvttsd2si rax, xmm0     off as an integer
  0x48, 0x8d, 0x14, 0x07, //            lea rdx, [rdi + rax]    p = base + off
  0x89, 0xf1, //                        mov ecx, esi            bytes left
  0x31, 0xc0, //                        xor eax, eax            sum = 0 (and CF = 0)
  0x83, 0xf9, 0x20, //                  cmp ecx, 32
  0x72, 0x1f, //                        jb words8
  // loop32: four 64-bit words, each carry added into the next, the last one at the end
  0x48, 0x03, 0x02, //                  add rax, [rdx]
  0x48, 0x13, 0x42, 0x08, //            adc rax, [rdx + 8]
  0x48, 0x13, 0x42, 0x10, //            adc rax, [rdx + 16]
  0x48, 0x13, 0x42, 0x18, //            adc rax, [rdx + 24]
  0x48, 0x83, 0xd0, 0x00, //            adc rax, 0
  0x48, 0x83, 0xc2, 0x20, //            add rdx, 32
  0x83, 0xe9, 0x20, //                  sub ecx, 32
  0x83, 0xf9, 0x20, //                  cmp ecx, 32
  0x73, 0xe1, //                        jae loop32
  // words8: what is left, 8 bytes at a time
  0x83, 0xf9, 0x08, //                  cmp ecx, 8
  0x72, 0x10, //                        jb word4
  0x48, 0x03, 0x02, //                  add rax, [rdx]
  0x48, 0x83, 0xd0, 0x00, //            adc rax, 0
  0x48, 0x83, 0xc2, 0x08, //            add rdx, 8
  0x83, 0xe9, 0x08, //                  sub ecx, 8
  0xeb, 0xeb, //                        jmp words8
  // word4: a last 32-bit word, if any
  0x85, 0xc9, //                        test ecx, ecx
  0x74, 0x09, //                        jz fold
  0x8b, 0x32, //                        mov esi, [rdx]          zero-extended
  0x48, 0x01, 0xf0, //                  add rax, rsi
  0x48, 0x83, 0xd0, 0x00, //            adc rax, 0
  // fold: 64 -> 32 -> 16 bits, each carry added back in
  0x48, 0x89, 0xc2, //                  mov rdx, rax
  0x48, 0xc1, 0xea, 0x20, //            shr rdx, 32
  0x01, 0xd0, //                        add eax, edx
  0x83, 0xd0, 0x00, //                  adc eax, 0
  0x89, 0xc2, //                        mov edx, eax
  0xc1, 0xea, 0x10, //                  shr edx, 16
  0x66, 0x01, 0xd0, //                  add ax, dx
  0x66, 0x83, 0xd0, 0x00, //            adc ax, 0
  0x0f, 0xb7, 0xc0, //                  movzx eax, ax
  0xc3, //                              ret
];

const sumSymbols = {
  vs_sum: { parameters: ["pointer", "f64", "u32"], result: "u32" },
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

/** Whether long sums go through the native helper. */
export const nativeSumLoaded = native !== null;

let lastView: Uint8Array | null = null;
let lastPointer: Deno.PointerValue = null;

/**
 * The ones-complement sum of b[from, from + n) read as little-endian 16-bit words, folded to
 * 16 bits; -1 when the helper is not loaded or `b` is too short to have a fixed address (then
 * the caller sums in JS). `n` must be a multiple of 4; throws RangeError, reading nothing, when
 * the range is outside `b`.
 */
export function nativeSumLE(b: Uint8Array, from: number, n: number): number {
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
  return native(lastPointer, from, n);
}
