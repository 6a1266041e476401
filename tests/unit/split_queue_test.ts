// SplitQueue (ports/vhost_user/split_queue.ts) against a split ring in process memory that the
// test writes as a driver would (tests/helpers/split_ring.ts): chains, hostile chains, the used
// ring, index wrap-around, and interrupt/kick suppression counted on a real call eventfd.
import assert from "node:assert/strict";
import { closeFd, eventfdCreate, eventfdRead } from "../../ffi/fd.ts";
import { SplitQueue } from "../../ports/vhost_user/split_queue.ts";
import {
  CHAIN_BAD_ADDRESS,
  CHAIN_BAD_DIRECTION,
  CHAIN_BAD_INDEX,
  CHAIN_BAD_INDIRECT,
  CHAIN_TOO_LONG,
  sharedRingState,
} from "../../ports/vhost_user/virtqueue.ts";
import {
  AVAIL_F_NO_INTERRUPT,
  DESC_F_INDIRECT,
  DESC_F_NEXT,
  SplitRingDriver,
  USED_F_NO_NOTIFY,
} from "../helpers/split_ring.ts";

const bytes = (n: number, seed = 1) =>
  Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

/** The bytes of the segments walkChain found, concatenated. */
function segments(q: SplitQueue, n: number): Uint8Array {
  const parts = Array.from(
    { length: n },
    (_, s) =>
      q.regionBytes[q.segRegion[s]].subarray(q.segOffset[s], q.segOffset[s] + q.segLength[s]),
  );
  const out = new Uint8Array(parts.reduce((t, p) => t + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, (at += p.length) - p.length);
  return out;
}

Deno.test("a chain the driver offers is seen, taken and walked to its bytes", () => {
  using d = new SplitRingDriver();
  const q = new SplitQueue(d.memory, d.spec());
  const data = bytes(100);
  d.offer(d.addChain([d.buffer(data)]));
  assert.equal(q.availCount(), 0, "nothing before avail.idx is published");
  d.publish();
  assert.equal(q.availCount(), 1);
  const head = q.popAvail();
  assert.equal(q.walkChain(head, false), 1);
  assert.deepEqual(segments(q, 1), data);
  assert.equal(q.availCount(), 0);
});

Deno.test("chained and indirect descriptors walk into their segments in order", () => {
  using d = new SplitRingDriver();
  const q = new SplitQueue(d.memory, d.spec());
  const parts = [bytes(12, 1), bytes(60, 2), bytes(1000, 3)];
  d.offer(d.addChain(parts.map((p) => d.buffer(p))));
  d.offer(d.addChain(parts.map((p) => d.buffer(p)), { indirect: true }));
  d.publish();
  assert.equal(q.availCount(), 2);
  const whole = new Uint8Array([...parts[0], ...parts[1], ...parts[2]]);
  for (const what of ["chained", "indirect"]) {
    assert.equal(q.walkChain(q.popAvail(), false), 3, what);
    assert.deepEqual(segments(q, 3), whole, what);
  }
});

Deno.test("hostile chains are refused with the reason, never followed", async (t) => {
  const cases: [string, (d: SplitRingDriver) => number, number][] = [
    ["head beyond the ring", () => 8, CHAIN_BAD_INDEX],
    ["a loop", (d) => {
      d.writeDesc(0, d.alloc(64), 64, DESC_F_NEXT, 1);
      d.writeDesc(1, d.alloc(64), 64, DESC_F_NEXT, 0);
      return 0;
    }, CHAIN_TOO_LONG],
    ["next beyond the ring", (d) => {
      d.writeDesc(0, d.alloc(64), 64, DESC_F_NEXT, 200);
      return 0;
    }, CHAIN_BAD_INDEX],
    ["a device-writable buffer on a TX ring", (d) => {
      d.writeDesc(0, d.alloc(64), 64, 2);
      return 0;
    }, CHAIN_BAD_DIRECTION],
    ["a buffer outside guest memory", (d) => {
      d.writeDesc(0, d.memBytes - 10, 64, 0);
      return 0;
    }, CHAIN_BAD_ADDRESS],
    ["a buffer at 2^64 - 1", (d) => {
      d.view.setBigUint64(0, 0xffff_ffff_ffff_ffffn, true);
      d.view.setUint32(8, 64, true);
      d.view.setUint16(12, 0, true);
      return 0;
    }, CHAIN_BAD_ADDRESS],
    ["an indirect table inside an indirect table", (d) => {
      const inner = d.alloc(16);
      const outer = d.alloc(16);
      d.writeDesc(0, inner, 16, DESC_F_INDIRECT, 0, outer);
      d.writeDesc(0, outer, 16, DESC_F_INDIRECT);
      return 0;
    }, CHAIN_BAD_INDIRECT],
    ["an indirect table with a length not a multiple of 16", (d) => {
      d.writeDesc(0, d.alloc(32), 24, DESC_F_INDIRECT);
      return 0;
    }, CHAIN_BAD_INDIRECT],
    ["an indirect table that loops", (d) => {
      const table = d.alloc(32);
      d.writeDesc(0, d.alloc(64), 64, DESC_F_NEXT, 1, table);
      d.writeDesc(1, d.alloc(64), 64, DESC_F_NEXT, 0, table);
      d.writeDesc(0, table, 32, DESC_F_INDIRECT);
      return 0;
    }, CHAIN_TOO_LONG],
  ];
  for (const [name, build, want] of cases) {
    await t.step(name, () => {
      using d = new SplitRingDriver();
      const q = new SplitQueue(d.memory, d.spec());
      assert.equal(q.walkChain(build(d), false), want);
    });
  }
});

Deno.test("an avail index more than the ring size ahead stops the ring", () => {
  using d = new SplitRingDriver();
  const q = new SplitQueue(d.memory, d.spec());
  d.publish(9);
  assert.equal(q.availCount(), 0);
  assert.ok(q.broken);
});

Deno.test("used elements become visible only with the used index that follows them", () => {
  using d = new SplitRingDriver();
  const q = new SplitQueue(d.memory, d.spec());
  for (let i = 0; i < 3; i++) d.offer(d.addChain([d.buffer(bytes(64, i))]));
  d.publish();
  const heads = [q.popAvail(), q.popAvail(), q.popAvail()];
  q.putUsed(heads[0], 0);
  q.putUsed(heads[1], 0);
  assert.equal(d.usedIdx, 0, "not stored yet");
  q.storeUsed();
  assert.equal(d.usedIdx, 2);
  assert.deepEqual([d.usedElem(0), d.usedElem(1)], [[heads[0], 0], [heads[1], 0]]);
  q.putUsed(heads[2], 1500);
  q.storeUsed();
  assert.deepEqual([d.usedIdx, d.usedElem(2)], [3, [heads[2], 1500]]);
});

Deno.test("IN_ORDER: one used element stands for a whole batch", () => {
  using d = new SplitRingDriver();
  const q = new SplitQueue(d.memory, d.spec({ inOrder: true }));
  for (let i = 0; i < 4; i++) d.offer(d.addChain([d.buffer(bytes(64, i))]));
  d.publish();
  const heads = Int32Array.from({ length: 4 }, () => q.popAvail());
  q.putUsedBatch(heads, 4);
  q.storeUsed();
  assert.equal(d.usedIdx, 4);
  assert.deepEqual(d.usedElem(3), [heads[3], 0], "the last chain's head in the last slot");
});

Deno.test("the 16-bit ring indexes wrap around 65535", () => {
  using d = new SplitRingDriver(8, 1 << 20, 65533);
  const q = new SplitQueue(d.memory, d.spec());
  const sent: Uint8Array[] = [];
  for (let i = 0; i < 6; i++) {
    sent.push(bytes(64 + i, i));
    d.offer(d.addChain([d.buffer(sent[i])]));
  }
  d.publish();
  assert.equal(d.availIdx, 3, "the driver's index wrapped");
  assert.equal(q.availCount(), 6);
  for (let i = 0; i < 6; i++) {
    const head = q.popAvail();
    assert.equal(q.walkChain(head, false), 1);
    assert.deepEqual(segments(q, 1), sent[i]);
    q.putUsed(head, 0);
  }
  q.storeUsed();
  assert.equal(d.usedIdx, 3);
  assert.equal(q.lastAvail, 3);
});

/** A queue whose call fd is a real eventfd; `calls()` reads how often it was written. */
function withCallFd(d: SplitRingDriver, eventIdx: boolean) {
  const callFd = eventfdCreate();
  const q = new SplitQueue(d.memory, d.spec({ eventIdx, callFd }));
  return { q, calls: () => Number(eventfdRead(callFd)), [Symbol.dispose]: () => closeFd(callFd) };
}

/** Takes and uses `n` chains, stores and signals; returns whether signal() said it wrote. */
function useAndSignal(d: SplitRingDriver, q: SplitQueue, n: number): boolean {
  for (let i = 0; i < n; i++) d.offer(d.addChain([d.buffer(bytes(64, i))]));
  d.publish();
  for (let i = 0; i < n; i++) q.putUsed(q.popAvail(), 0);
  q.storeUsed();
  return q.signal();
}

Deno.test("interrupts: the call eventfd is written unless the driver set NO_INTERRUPT", () => {
  using d = new SplitRingDriver();
  using c = withCallFd(d, false);
  assert.equal(useAndSignal(d, c.q, 2), true);
  assert.equal(c.calls(), 1, "one write for the burst");
  assert.equal(c.q.signal(), false, "nothing new: no interrupt");
  d.availFlags = AVAIL_F_NO_INTERRUPT;
  assert.equal(useAndSignal(d, c.q, 2), false);
  assert.equal(c.calls(), 0, "suppressed");
  d.availFlags = 0;
  assert.equal(useAndSignal(d, c.q, 1), true);
  assert.equal(c.calls(), 1);
});

Deno.test("interrupts with EVENT_IDX: written only when the used index passes used_event", () => {
  using d = new SplitRingDriver(16);
  using c = withCallFd(d, true);
  d.usedEvent = 3; // "interrupt me once used.idx moves past 3"
  assert.equal(useAndSignal(d, c.q, 2), false, "used 0 -> 2: not past 3");
  assert.equal(useAndSignal(d, c.q, 1), false, "2 -> 3: not past 3");
  assert.equal(useAndSignal(d, c.q, 2), true, "3 -> 5 passes 3");
  assert.equal(c.calls(), 1);
  d.availFlags = AVAIL_F_NO_INTERRUPT; // ignored with EVENT_IDX (virtio 1.x 2.7.7.2)
  d.usedEvent = 5;
  assert.equal(useAndSignal(d, c.q, 1), true, "5 -> 6 passes 5");
  assert.equal(c.calls(), 1);
});

Deno.test("kicks: NO_NOTIFY while polling; with EVENT_IDX, avail_event at the next chain", () => {
  using d = new SplitRingDriver();
  const q = new SplitQueue(d.memory, d.spec());
  q.setGuestKicks(false);
  assert.equal(d.usedFlags & USED_F_NO_NOTIFY, USED_F_NO_NOTIFY);
  q.setGuestKicks(true);
  assert.equal(d.usedFlags & USED_F_NO_NOTIFY, 0);

  using e = new SplitRingDriver();
  const qe = new SplitQueue(e.memory, e.spec({ eventIdx: true }));
  useAndSignal(e, qe, 3);
  qe.setGuestKicks(true);
  assert.equal(e.availEvent, 3, "kick me when you make chain 3 available");
});

Deno.test("a shared ring hands its positions from one holder to the next", () => {
  using d = new SplitRingDriver();
  const sab = sharedRingState(0);
  const a = new SplitQueue(d.memory, d.spec({ shared: sab }));
  const b = new SplitQueue(d.memory, d.spec({ shared: sab }));
  for (let i = 0; i < 4; i++) d.offer(d.addChain([{ ...d.buffer(bytes(64)), write: true }]));
  d.publish();
  a.acquire();
  a.putUsed(a.popAvail(), 60);
  a.releaseShared();
  b.acquire();
  assert.equal(b.lastAvail, 1, "b continues after a's chain");
  b.putUsed(b.popAvail(), 70);
  b.releaseShared();
  assert.equal(d.usedIdx, 2);
  assert.deepEqual([d.usedElem(0)[1], d.usedElem(1)[1]], [60, 70]);
});
