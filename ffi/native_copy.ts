// The datapath's one copy per frame, as a call to libc's memmove that needs no view per frame.
//
// In JS a copy between two buffers needs a view of the source piece (`dst.set(src.subarray())`):
// an object allocated per frame, and in the PVP profile (bench/README.md) creating and setting
// it cost more than the memmove itself. An FFI call is cheap only on V8's fast path, which Deno
// gives to symbols of a dlopen'ed library taking typed arrays and 32-bit integers, but not to
// 64-bit addresses or to UnsafeFnPointer (~1 us a call). So this module builds, in memory, the
// smallest ELF shared object holding one function,
//
//   void vs_copy(uint8_t *dst, const uint8_t *src, double dst_off, double src_off, uint32_t n)
//   { memmove(dst + (int64_t)dst_off, src + (int64_t)src_off, n); }
//
// (a tail jump to this process's memmove), writes it to a memfd and dlopens that. Offsets are
// checked against both views here, before the call: the native side trusts them. They travel as
// doubles because guest memory regions exceed 4 GiB (a VM with 8 GiB of RAM has a 6 GiB one)
// and a double holds every integer offset up to 2^53 exactly, where a u32 would wrap; 64-bit
// integer parameters would leave V8's fast call path.
import { libc } from "./libc.ts";
import { closeFd } from "./fd.ts";
import { cString, MAP_SHARED, memfdCreate, mmap, munmap, viewMapping } from "./mem.ts";

const PAGE = 0x1000;
const EHDR = 64;
const PHDR = 56;
const PT_LOAD = 1;
const PT_DYNAMIC = 2;
const PT_GNU_STACK = 0x6474e551;
const PF_X = 1;
const PF_W = 2;
const PF_R = 4;
const DT_NULL = 0;
const DT_HASH = 4;
const DT_STRTAB = 5;
const DT_SYMTAB = 6;
const DT_STRSZ = 10;
const DT_SYMENT = 11;
const SYM_SIZE = 24;
const STB_GLOBAL_STT_FUNC = 0x12;
const SYMBOL = "vs_copy";
/** The memfd name of the helper library (it shows in /proc/PID/maps as /memfd:NAME). */
export const LIBRARY_NAME = "vswitch-copy.so";

/** x86-64 System V: rdi = dst, rsi = src, xmm0 = dst_off, xmm1 = src_off, edx = n. */
function copyCode(memmove: bigint): number[] {
  // deno-fmt-ignore
  return [
    0xf2, 0x48, 0x0f, 0x2c, 0xc0, //   cvttsd2si rax, xmm0   dst_off as an integer
    0x48, 0x01, 0xc7, //               add rdi, rax          dst + dst_off
    0xf2, 0x48, 0x0f, 0x2c, 0xc1, //   cvttsd2si rax, xmm1   src_off as an integer
    0x48, 0x01, 0xc6, //               add rsi, rax          src + src_off
    0x89, 0xd2, //                     mov edx, edx          zero-extend n
    0x48, 0xb8, //                     movabs rax, memmove
    ...new Uint8Array(new BigUint64Array([memmove]).buffer),
    0xff, 0xe0, //                     jmp rax
  ];
}

/**
 * An ELF64 shared object exporting `name` = `code`: one read+exec segment (headers, symbol
 * hash, symbols, strings, code) and one read+write segment for the dynamic section, which
 * the loader relocates in place. PT_GNU_STACK keeps thread stacks non-executable.
 */
export function sharedObject(name: string, code: number[]): Uint8Array {
  const phnum = 4;
  const hashOff = EHDR + PHDR * phnum;
  const hash = [1, 2, 1, 0, 0]; // nbucket 1, nchain 2, bucket[0] = symbol 1, chains end
  const symOff = (hashOff + hash.length * 4 + 7) & ~7;
  const strtab = cString(`\0${name}`); // "\0name\0": the name is at offset 1
  const strOff = symOff + 2 * SYM_SIZE; // symbol 0 is the null symbol
  const codeOff = (strOff + strtab.length + 15) & ~15;
  const textEnd = codeOff + code.length;
  const dynamic = [
    [DT_HASH, hashOff],
    [DT_STRTAB, strOff],
    [DT_SYMTAB, symOff],
    [DT_STRSZ, strtab.length],
    [DT_SYMENT, SYM_SIZE],
    [DT_NULL, 0],
  ];
  const dynOff = PAGE;
  const dynSize = dynamic.length * 16;
  const out = new Uint8Array(dynOff + dynSize);
  const v = new DataView(out.buffer);
  const u64 = (at: number, x: number) => v.setBigUint64(at, BigInt(x), true);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]); // ELF, 64-bit, little-endian, version 1
  v.setUint16(16, 3, true); // ET_DYN
  v.setUint16(18, 62, true); // EM_X86_64
  v.setUint32(20, 1, true); // EV_CURRENT
  u64(32, EHDR); // e_phoff
  v.setUint16(52, EHDR, true); // e_ehsize
  v.setUint16(54, PHDR, true);
  v.setUint16(56, phnum, true);
  v.setUint16(58, 64, true); // e_shentsize (no section headers)
  const phdr = (
    i: number,
    type: number,
    flags: number,
    off: number,
    size: number,
    align: number,
  ) => {
    const at = EHDR + i * PHDR;
    v.setUint32(at, type, true);
    v.setUint32(at + 4, flags, true);
    for (const field of [8, 16, 24]) u64(at + field, off); // p_offset, p_vaddr, p_paddr
    u64(at + 32, size);
    u64(at + 40, size);
    u64(at + 48, align);
  };
  phdr(0, PT_LOAD, PF_R | PF_X, 0, textEnd, PAGE);
  phdr(1, PT_LOAD, PF_R | PF_W, dynOff, dynSize, PAGE);
  phdr(2, PT_DYNAMIC, PF_R | PF_W, dynOff, dynSize, 8);
  phdr(3, PT_GNU_STACK, PF_R | PF_W, 0, 0, 16);
  hash.forEach((x, i) => v.setUint32(hashOff + i * 4, x, true));
  const sym = symOff + SYM_SIZE;
  v.setUint32(sym, 1, true); // st_name
  out[sym + 4] = STB_GLOBAL_STT_FUNC;
  v.setUint16(sym + 6, 1, true); // st_shndx: any defined section
  u64(sym + 8, codeOff);
  u64(sym + 16, code.length);
  out.set(strtab, strOff);
  out.set(code, codeOff);
  dynamic.forEach(([tag, value], i) => {
    u64(dynOff + i * 16, tag);
    u64(dynOff + i * 16 + 8, value);
  });
  return out;
}

const copySymbols = {
  vs_copy: { parameters: ["pointer", "pointer", "f64", "f64", "u32"], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

type NativeCopy = Deno.DynamicLibrary<typeof copySymbols>["symbols"]["vs_copy"];

/**
 * Writes `code` as a one-symbol shared object to a memfd named `library` and dlopens it as
 * `${fdDir}/${fd}`; the loader keeps its own mapping. glibc hands back an already loaded object
 * whose path matches, and fd numbers are reused once closed, so each helper opens through its
 * own directory of fd links (/proc/self/fd, /proc/thread-self/fd): the same path then always
 * means the same helper. Throws where it cannot be done (a policy refusing executable memfds).
 */
export function loadHelper<S extends Deno.ForeignLibraryInterface>(
  library: string,
  fdDir: string,
  symbol: string,
  code: number[],
  symbols: S,
): Deno.DynamicLibrary<S>["symbols"] {
  const image = sharedObject(symbol, code);
  const fd = memfdCreate(library, image.length);
  try {
    const m = mmap(image.length, { fd, flags: MAP_SHARED });
    new Uint8Array(viewMapping(m.address, image.length)).set(image);
    munmap(m);
    return Deno.dlopen(`${fdDir}/${fd}`, symbols).symbols;
  } finally {
    closeFd(fd);
  }
}

/** Builds and loads the helper; null where it cannot run (not x86-64 Linux, or no memmove). */
function loadNativeCopy(): NativeCopy | null {
  if (Deno.build.arch !== "x86_64" || Deno.build.os !== "linux") return null;
  const memmove = libc.dlsym(null, cString("memmove"));
  if (memmove === null) return null;
  const code = copyCode(Deno.UnsafePointer.value(memmove));
  return loadHelper(LIBRARY_NAME, "/proc/self/fd", SYMBOL, code, copySymbols).vs_copy;
}

function tryLoadNativeCopy(): NativeCopy | null {
  try {
    return loadNativeCopy();
  } catch (e) {
    // E.g. a kernel or policy that refuses to map a memfd executable: slower, still correct.
    console.warn(`native copy helper unavailable, copying with TypedArray.set: ${e}`);
    return null;
  }
}

const native = tryLoadNativeCopy();

/** Whether copies go through the native helper (else through `set(subarray())`). */
export const nativeCopyLoaded = native !== null;

// Pointer arguments take V8's fast path (~17 ns a call); typed-array ones cost twice that.
// So each view's start pointer is looked up once and the last one of each side is remembered:
// a burst nearly always copies from one guest's memory into one other guest's.
//
// ASSUMPTION: V8 never moves the bytes of an array buffer once they live outside its heap: mapped
// memory (guest regions, rings) never moves, and V8 allocates the backing store of every buffer
// of more than 64 bytes (typed_array_max_size_in_heap) outside the heap, where the garbage
// collector does not compact. Views of 64 bytes or less may sit on the heap and move, so they
// never get a remembered pointer (copyMemory copies them with set()). Should a V8 release start
// moving external buffers, a remembered pointer would write into freed memory:
// tests/native_copy_test.ts ("remembered pointers stay valid across compacting collections")
// copies through remembered pointers between forced compacting collections and reads back.
const pointers = new WeakMap<Uint8Array, Deno.PointerValue>();
/** Views this long or shorter may live on V8's heap, where they can move: never remembered. */
export const SMALL = 64;
let lastDst: Uint8Array | null = null;
let lastDstPointer: Deno.PointerValue = null;
let lastSrc: Uint8Array | null = null;
let lastSrcPointer: Deno.PointerValue = null;

/** The start of `view`, looked up once per view: valid for good under the ASSUMPTION above. */
export function pointerOf(view: Uint8Array): Deno.PointerValue {
  let p = pointers.get(view);
  if (p === undefined) {
    p = Deno.UnsafePointer.of(view);
    pointers.set(view, p);
  }
  return p;
}

/**
 * memmove(dst + dOff, src + sOff, n) for views of mapped or heap memory. Throws RangeError,
 * copying nothing, when either range is outside its view.
 */
export function copyMemory(
  dst: Uint8Array,
  dOff: number,
  src: Uint8Array,
  sOff: number,
  n: number,
): void {
  // Offsets are exact integers however large (guest regions pass 4 GiB); `!(x >= 0)` also
  // catches NaN, and `x % 1` a fraction.
  if (
    !(dOff >= 0) || !(sOff >= 0) || dOff % 1 !== 0 || sOff % 1 !== 0 || (n >>> 0) !== n ||
    dOff + n > dst.length || sOff + n > src.length
  ) {
    throw new RangeError(
      `copyMemory: ${n} bytes from ${sOff} of ${src.length} to ${dOff} of ${dst.length}`,
    );
  }
  if (native === null || dst.byteLength <= SMALL || src.byteLength <= SMALL) {
    dst.set(src.subarray(sOff, sOff + n), dOff);
    return;
  }
  if (dst !== lastDst) {
    lastDst = dst;
    lastDstPointer = pointerOf(dst);
  }
  if (src !== lastSrc) {
    lastSrc = src;
    lastSrcPointer = pointerOf(src);
  }
  native(lastDstPointer, lastSrcPointer, dOff, sOff, n);
}
