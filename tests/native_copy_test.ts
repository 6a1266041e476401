import assert from "node:assert/strict";
import { copyMemory, nativeCopyLoaded } from "../ffi/native_copy.ts";
import { memfdCreate, mmap, munmap, viewMapping } from "../ffi/mem.ts";
import { closeFd } from "../ffi/fd.ts";
import { copyBytes, wordView } from "../ports/copy.ts";

const onX86Linux = Deno.build.arch === "x86_64" && Deno.build.os === "linux";

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

Deno.test("the native copy is the one in use on x86-64 Linux", () => {
  assert.equal(nativeCopyLoaded, onX86Linux);
});

Deno.test({
  name: "the helper library is mapped read+exec and read+write, never both",
  ignore: !onX86Linux,
}, () => {
  const maps = Deno.readTextFileSync("/proc/self/maps").split("\n")
    .filter((l) => l.includes("vswitch-copy.so"));
  assert.ok(maps.length >= 2, maps.join("\n"));
  for (const l of maps) assert.ok(!/^\S+ .wx/.test(l), `writable and executable: ${l}`);
  assert.ok(maps.some((l) => /^\S+ r-x/.test(l)), maps.join("\n"));
  // Without PT_GNU_STACK the loader would have made every thread stack executable.
  const stack = Deno.readTextFileSync("/proc/self/maps").split("\n").find((l) =>
    l.endsWith("[stack]")
  );
  assert.ok(stack !== undefined && !/^\S+ ..x/.test(stack), stack);
});

Deno.test("copies match set(subarray()) at every length, offset and kind of memory", () => {
  const fd = memfdCreate("native-copy-test", 1 << 16);
  const m = mmap(1 << 16, { fd });
  try {
    const mapped = new Uint8Array(viewMapping(m.address, 1 << 16));
    const heap = new Uint8Array(1 << 16);
    const other = new Uint8Array(1 << 15);
    // Sources and destinations never share bytes here (overlaps: the next test).
    const kinds = [
      ["mapped->heap", mapped, heap],
      ["heap->mapped", heap, mapped],
      ["mapped view->mapped view", mapped.subarray(0, 30_000), mapped.subarray(40_000)],
      ["heap view->heap", other.subarray(77), heap],
    ] as const;
    for (const [name, src, dst] of kinds) {
      for (const n of [0, 1, 15, 16, 63, 64, 65, 191, 192, 193, 1514, 1518, 9018]) {
        for (const [sOff, dOff] of [[0, 0], [3, 1], [1000, 17], [src.length - n, 0]]) {
          if (sOff + n > src.length || dOff + n > dst.length) continue;
          src.set(pattern(n, n + sOff), sOff);
          dst.fill(0xa5, 0, Math.min(dst.length, dOff + n + 64));
          copyMemory(dst, dOff, src, sOff, n);
          const what = `${name} n=${n} from ${sOff} to ${dOff}`;
          assert.deepEqual(dst.subarray(dOff, dOff + n), src.subarray(sOff, sOff + n), what);
          if (dOff > 0) assert.equal(dst[dOff - 1], 0xa5, `${what}: byte before`);
          if (dOff + n < dst.length) assert.equal(dst[dOff + n], 0xa5, `${what}: byte after`);
        }
      }
    }
  } finally {
    munmap(m);
    closeFd(fd);
  }
});

Deno.test("overlapping ranges in one buffer copy like memmove", () => {
  const b = pattern(4096, 9);
  const want = b.slice();
  want.copyWithin(100, 50, 50 + 2000);
  copyMemory(b, 100, b, 50, 2000);
  assert.deepEqual(b, want);
});

Deno.test("out-of-range copies throw and leave the destination alone", () => {
  const src = pattern(4096, 1);
  const dst = new Uint8Array(4096);
  const bad: [number, number, number][] = [
    [4000, 0, 97], // past the destination's end
    [0, 4000, 97], // past the source's end
    [-1, 0, 10],
    [0, -8, 10],
    [0, 0, -1],
    [0.5, 0, 10],
    [0, 0, 2 ** 32],
    [2 ** 32 - 1, 0, 2], // wraps in 32 bits
  ];
  for (const [dOff, sOff, n] of bad) {
    assert.throws(() => copyMemory(dst, dOff, src, sOff, n), RangeError, `${dOff} ${sOff} ${n}`);
  }
  assert.ok(dst.every((x) => x === 0));
});

Deno.test("copyBytes (word loop, short, memmove paths) agrees with a byte loop", () => {
  const src = pattern(8192, 4);
  const dst = new Uint8Array(8192);
  const sw = wordView(src);
  const dw = wordView(dst);
  for (const n of [1, 7, 16, 60, 64, 188, 192, 196, 1500, 4000]) {
    for (const [sOff, dOff] of [[0, 0], [4, 8], [1, 2], [12, 3]]) {
      dst.fill(0);
      copyBytes(dst, dw, dOff, src, sw, sOff, n);
      for (let k = 0; k < n; k++) {
        if (dst[dOff + k] !== src[sOff + k]) assert.fail(`n=${n} ${sOff}->${dOff} at ${k}`);
      }
      assert.equal(dst[dOff + n], 0);
    }
  }
});

Deno.test("views of 64 bytes or less (which V8 may keep on its heap) are copied in JS", () => {
  const src = pattern(40, 3);
  const dst = new Uint8Array(64);
  copyMemory(dst, 20, src, 5, 30);
  assert.deepEqual(dst.subarray(20, 50), src.subarray(5, 35));
  assert.equal(dst[19], 0);
  assert.equal(dst[50], 0);
  assert.throws(() => copyMemory(dst, 40, src, 0, 25), RangeError);
});

Deno.test({
  name: "remembered pointers stay valid across compacting collections (V8 keeps buffers in place)",
  ignore: !onX86Linux,
}, async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      "--v8-flags=--expose-gc,--stress-compaction",
      new URL("./native_copy_gc_fixture.ts", import.meta.url).pathname,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  assert.equal(text, "ok");
});
