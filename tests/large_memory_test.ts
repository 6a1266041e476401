// Guest memory beyond 4 GiB: two front-ends whose RAM is one sparse 10 GiB memfd cut into two
// 5 GiB regions (like the RAM above 4 GiB of a large QEMU VM) send frames from many guest
// addresses (low, across 4 GiB, at and across region ends, near the top) into receive buffers
// that also lie above 4 GiB, and every byte that arrives is compared with what was sent. A
// switch that takes any offset modulo 2^32 delivers other guest memory or drops the frame.
import assert from "node:assert/strict";
import { HDR_LEN, VhostFrontend } from "../peers/vhost_frontend.ts";
import { ethFrame, startSwitch } from "./helpers/frontend_harness.ts";

const GiB = 2 ** 30;
const MAC_A = "52:54:00:00:0a:01";
const MAC_B = "52:54:00:00:0b:02";
const SIZES = [60, 61, 250, 1514];

/** Where the (virtio header ++ frame) of a frame of `len` bytes starts, for each case. */
function placements(fe: VhostFrontend, len: number): [string, number][] {
  const bytes = HDR_LEN + len;
  return [
    ["low (its slot)", fe.slot(1, 0)],
    ["across 4 GiB", 4 * GiB - 100],
    ["just above 4 GiB", 4 * GiB + 12345],
    ["4.75 GiB", 4.75 * GiB + 3],
    ["ending at the end of region 0", 5 * GiB - bytes],
    ["across the boundary of regions 0 and 1", 5 * GiB - 40],
    ["start of region 1", 5 * GiB + 7],
    ["9.5 GiB", 9.5 * GiB + 1],
    ["ending at the end of guest memory", 10 * GiB - bytes],
  ];
}

Deno.test({
  name: "frames from and to guest addresses above 4 GiB arrive intact, byte for byte",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const h = await startSwitch([{ name: "a" }, { name: "b" }]);
    const opts = { memBytes: 10 * GiB, regions: 2 };
    // A receives into low buffers; B into buffers 4.5 GiB up, inside a region at an offset
    // beyond 2^32 from the region's start.
    const a = await VhostFrontend.open(h.sock("a"), opts);
    const b = await VhostFrontend.open(h.sock("b"), { ...opts, dataBase: 4.5 * GiB });
    try {
      assert.equal(a.regionTable()[0].size, BigInt(5 * GiB));
      let seed = 0;
      for (const [from, to, src, dst] of [[a, b, MAC_A, MAC_B], [b, a, MAC_B, MAC_A]] as const) {
        for (const len of SIZES) {
          for (const [where, at] of placements(from, len)) {
            const frame = ethFrame(dst, src, len, ++seed);
            to.postRxBuffers(1);
            from.send(frame, { at });
            const what = `${len}-byte frame from ${where} (0x${at.toString(16)}) ` +
              `${from === a ? "a -> b" : "b -> a"}`;
            const [got] = await to.waitFrames(1).catch((e) => {
              throw new Error(`${what}: ${e.message}; switch log:\n${h.logs.join("\n")}`);
            });
            assert.equal(got.length, len, what);
            const bad = got.findIndex((x, i) => x !== frame[i]);
            assert.equal(bad, -1, `${what}: byte ${bad} differs`);
            from.reclaimTx();
          }
        }
      }
      const counters = h.counters("a");
      assert.equal(counters.drop_bad_descriptor ?? 0, 0);
    } finally {
      a.close();
      b.close();
      await h.stop();
    }
  },
});
