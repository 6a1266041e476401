// Run by tests/native_copy_test.ts under --expose-gc --stress-compaction: copyMemory remembers
// each view's start pointer (ffi/native_copy.ts), which holds only while V8 never moves an array
// buffer's bytes. This forces compacting collections between copies into remembered views and
// checks that the bytes land where JavaScript reads them. Prints "ok" or what went wrong.
import { copyMemory } from "../ffi/native_copy.ts";

const gc = (globalThis as unknown as { gc?: () => void }).gc;
if (gc === undefined) throw new Error("run with --v8-flags=--expose-gc");

const sizes = [65, 1514, 4096, 1 << 20];
const dsts = sizes.map((n) => new Uint8Array(n));
const srcs = sizes.map((n) => new Uint8Array(n));
const pointers = () => dsts.map((v) => Deno.UnsafePointer.value(Deno.UnsafePointer.of(v)));
const problems: string[] = [];
const first = pointers();
for (let round = 1; round <= 4; round++) {
  // Garbage of every size between the copies, then full (compacting) collections.
  let junk: unknown[] = [];
  for (let i = 0; i < 5_000; i++) junk.push({ i, s: `x${i}`, a: new Uint8Array(i % 300) });
  junk = [];
  gc();
  gc();
  for (const [k, dst] of dsts.entries()) {
    const src = srcs[k];
    src.fill(round);
    copyMemory(dst, 0, src, 0, dst.length); // through the pointer remembered for dst
    const bad = dst.findIndex((b) => b !== round);
    if (bad >= 0) problems.push(`round ${round}: ${dst.length} B view reads ${dst[bad]} at ${bad}`);
  }
}
const last = pointers();
for (const [k, p] of first.entries()) {
  if (p !== last[k]) problems.push(`${sizes[k]} B buffer moved from ${p} to ${last[k]}`);
}
console.log(problems.length ? problems.join("\n") : "ok");
