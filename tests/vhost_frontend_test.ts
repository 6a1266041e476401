// A real switch in this process, driven by real vhost-user front-ends (tests/helpers/frontend.ts)
// over real sockets and memfd guest memory: what A sends, B receives byte for byte.
import assert from "node:assert/strict";
import * as P from "../peers/vhost_wire.ts";
import {
  FrontendListener,
  type FrontendOptions,
  type SendOptions,
  VhostFrontend,
} from "../peers/vhost_frontend.ts";
import {
  assertNoLeak,
  BROADCAST,
  ethFrame,
  type Harness,
  resources,
  startSwitch,
  warmUpFdCount,
} from "./helpers/frontend_harness.ts";

const MAC_A = "52:54:00:aa:00:01";
const MAC_B = "52:54:00:bb:00:02";
const MAC_C = "52:54:00:cc:00:03";

await warmUpFdCount();

/** Runs `fn` against a fresh switch; afterwards every front-end is closed and no fd is left. */
async function withSwitch(
  fn: (h: Harness, open: (port: string, o?: FrontendOptions) => Promise<VhostFrontend>) => unknown,
): Promise<void> {
  const baseline = resources();
  const h = await startSwitch([
    { name: "a", mtu: 9000 },
    { name: "b", mtu: 9000 },
    { name: "c" },
  ]);
  const opened: VhostFrontend[] = [];
  try {
    await fn(h, async (port, o) => {
      const fe = await VhostFrontend.open(h.sock(port), o);
      opened.push(fe);
      return fe;
    });
  } finally {
    opened.forEach((fe) => fe.close());
    await h.stop();
  }
  await assertNoLeak(baseline, "after the front-ends closed and the switch stopped");
}

async function detach(h: Harness, ...pairs: [string, VhostFrontend][]): Promise<void> {
  for (const [name, fe] of pairs) {
    fe.close();
    await h.waitDetached(name);
  }
}

interface Variant {
  fe: FrontendOptions;
  rxSize: number;
  /** Expected num_buffers of a 64 B, 1518 B and 9000 B frame. */
  buffers: number[];
}

const VARIANTS: Record<string, Variant> = {
  "MRG_RXBUF, no EVENT_IDX": {
    fe: { mrgRxbuf: true, eventIdx: false },
    rxSize: 2048,
    buffers: [1, 1, 5], // 12 + 9000 bytes in 2048-byte buffers
  },
  "MRG_RXBUF + EVENT_IDX": {
    fe: { mrgRxbuf: true, eventIdx: true },
    rxSize: 1024,
    buffers: [1, 2, 9],
  },
  "no MRG_RXBUF, EVENT_IDX": {
    fe: { mrgRxbuf: false, eventIdx: true },
    rxSize: 9100,
    buffers: [1, 1, 1],
  },
  "no MRG_RXBUF, no EVENT_IDX, no REPLY_ACK": {
    fe: { mrgRxbuf: false, eventIdx: false, replyAck: false },
    rxSize: 9100,
    buffers: [1, 1, 1],
  },
};

const LAYOUTS: Record<string, SendOptions> = {
  "one descriptor": {},
  "header in its own descriptor": { headerSeparate: true },
  "chained 512-byte descriptors": { chunk: 512 },
  "indirect": { indirect: true },
  "indirect, header apart, 100-byte pieces": { indirect: true, headerSeparate: true, chunk: 100 },
};

Deno.test("frames from A arrive at B byte-identical, whatever the features and layout", async (t) => {
  await withSwitch(async (h, open) => {
    for (const [name, v] of Object.entries(VARIANTS)) {
      await t.step(name, async () => {
        const before = { a: h.counters("a"), b: h.counters("b") };
        const a = await open("a", v.fe);
        const b = await open("b", v.fe);
        try {
          assert.equal(h.state("a"), "connected");
          assert.deepEqual(h.sw.port("a")!.queues.length, 1);
          const feats = h.sw.port("b")!.features;
          assert.equal(feats.includes("MRG_RXBUF"), v.fe.mrgRxbuf);
          assert.equal(feats.includes("RING_EVENT_IDX"), v.fe.eventIdx);
          assert.ok(
            feats.includes("VERSION_1") && feats.includes("RING_INDIRECT_DESC"),
            `${feats}`,
          );
          assert.equal(b.calls(0), 0n, "no interrupt before any frame");
          const sent: Uint8Array[] = [];
          let seed = 0;
          for (const [layout, so] of Object.entries(LAYOUTS)) {
            b.postRxBuffers(3 * Math.max(...v.buffers), v.rxSize);
            const frames = [64, 1518, 9000].map((len) => ethFrame(MAC_B, MAC_A, len, seed++));
            for (const f of frames) a.send(f, so);
            sent.push(...frames);
            const got = await b.waitFrames(3);
            assert.equal(got.length, 3, layout);
            got.forEach((g, i) => assert.deepEqual(g, frames[i], `${layout}: frame ${i}`));
            assert.deepEqual(b.rxNumBuffers.splice(0), v.buffers, `${layout}: num_buffers`);
            assert.equal(a.reclaimTx(), 3, `${layout}: TX chains returned`);
            // Each ring asked for an interrupt on its next used element (used_event or flags).
            assert.ok(b.calls(0) > 0n, `${layout}: B's RX call eventfd signalled`);
            assert.ok(a.calls(1) > 0n, `${layout}: A's TX call eventfd signalled`);
          }
          const cb = h.counters("b");
          assert.equal(cb.tx_packets - before.b.tx_packets, sent.length);
          assert.equal(cb.tx_bytes - before.b.tx_bytes, sent.reduce((n, f) => n + f.length, 0));
          assert.equal(h.counters("a").rx_packets - before.a.rx_packets, sent.length);
        } finally {
          await detach(h, ["a", a], ["b", b]);
        }
      });
    }
  });
});

Deno.test("MAC learning, unicast to the learned port, broadcast floods", async () => {
  await withSwitch(async (h, open) => {
    const a = await open("a");
    const b = await open("b");
    const c = await open("c");
    for (const fe of [a, b, c]) fe.postRxBuffers(32);

    // Unknown destination: flooded to B and C, never back to A.
    const first = ethFrame(MAC_B, MAC_A, 100, 1);
    a.send(first);
    assert.deepEqual((await b.waitFrames(1))[0], first);
    assert.deepEqual((await c.waitFrames(1))[0], first);
    assert.deepEqual(a.receive(), []);
    const fdb1 = h.sw.fdb().map((e) => [e.mac, e.port, e.vlan]);
    assert.deepEqual(fdb1, [[MAC_A, "a", 0]]);

    // B answers: A is known, so only A gets it; B is learned on "b".
    const reply = ethFrame(MAC_A, MAC_B, 200, 2);
    b.send(reply);
    assert.deepEqual((await a.waitFrames(1))[0], reply);
    const unicast = ethFrame(MAC_B, MAC_A, 300, 3);
    a.send(unicast);
    assert.deepEqual((await b.waitFrames(1))[0], unicast);
    assert.deepEqual(c.receive(), [], "known unicast must not reach C");
    const fdb2 = h.sw.fdb().map((e) => [e.mac, e.port]).sort();
    assert.deepEqual(fdb2, [[MAC_A, "a"], [MAC_B, "b"]]);

    // Broadcast from C: everyone else, and C is learned.
    const bc = ethFrame(BROADCAST, MAC_C, 60, 4);
    c.send(bc);
    assert.deepEqual((await a.waitFrames(1))[0], bc);
    assert.deepEqual((await b.waitFrames(1))[0], bc);
    assert.deepEqual(c.receive(), []);
    assert.deepEqual(h.sw.fdb().find((e) => e.mac === MAC_C)?.port, "c");
    assert.equal(h.counters("c").flooded, 1);

    // A port whose front-end leaves forgets its MACs.
    await detach(h, ["c", c]);
    assert.equal(h.sw.fdb().find((e) => e.mac === MAC_C), undefined);
  });
});

async function vringBase(fe: VhostFrontend, q: number): Promise<[number, number]> {
  const p = await fe.get(P.VHOST_USER_GET_VRING_BASE, P.vringStatePayload(q, 0));
  return [p.getUint32(0, true), p.getUint32(4, true)];
}

Deno.test("GET_VRING_BASE returns where each ring stopped; rings restart from there", async () => {
  await withSwitch(async (h, open) => {
    const a = await open("a");
    const b = await open("b", { mrgRxbuf: true });
    b.postRxBuffers(40, 1024);
    const n = 7;
    const frames = Array.from(
      { length: n },
      (_, i) => ethFrame(MAC_B, MAC_A, i === 3 ? 3000 : 80, i),
    );
    frames.forEach((f) => a.send(f));
    assert.deepEqual(await b.waitFrames(n), frames);
    assert.equal(a.reclaimTx(), n);
    assert.deepEqual(await vringBase(a, 1), [1, n], "A's TX ring: every chain taken");
    // The 3000-byte frame took 3 RX buffers of 1024 (12 + 3000 bytes), the others one each.
    assert.deepEqual(await vringBase(b, 0), [0, n + 2], "B's RX ring: buffers used");
    assert.equal(b.rings[0].lastUsed, n + 2);
    assert.deepEqual(await vringBase(a, 0), [0, 0], "A's RX ring: nothing posted, nothing used");
    assert.equal(h.sw.port("a")!.queues.length, 0, "A's rings are stopped");

    // Restarted where they stopped (as QEMU does after a stop), the rings carry on.
    await a.setupRing(1, n);
    await a.setupRing(0, 0);
    await b.setupRing(0, n + 2);
    const more = [ethFrame(MAC_B, MAC_A, 1500, 20), ethFrame(MAC_B, MAC_A, 64, 21)];
    more.forEach((f) => a.send(f));
    assert.deepEqual(await b.waitFrames(2), more);
    assert.deepEqual(await vringBase(a, 1), [1, n + 2]);
    assert.deepEqual(await vringBase(b, 0), [0, n + 2 + 3]);
  });
});

Deno.test("a new memory table and ring disable/enable while running keep the rings' places", async () => {
  await withSwitch(async (h, open) => {
    const a = await open("a", { eventIdx: true });
    const b = await open("b", { eventIdx: true });
    b.postRxBuffers(64);
    let seed = 0;
    const exchange = async (what: string) => {
      const fs = [64, 700, 1514].map((len) => ethFrame(MAC_B, MAC_A, len, seed++));
      fs.forEach((f) => a.send(f, { chunk: 256 }));
      assert.deepEqual(await b.waitFrames(3), fs, what);
      assert.equal(a.reclaimTx(), 3, what);
    };
    await exchange("before");
    // QEMU resends the table on memory hotplug: the datapath switches over without a hiccup.
    await a.setMemTable();
    await b.setMemTable();
    await exchange("after SET_MEM_TABLE");
    await a.set(P.VHOST_USER_SET_VRING_ENABLE, P.vringStatePayload(1, 0));
    await b.set(P.VHOST_USER_SET_VRING_ENABLE, P.vringStatePayload(0, 0));
    assert.equal(h.sw.port("a")!.queues.length, 0);
    await a.set(P.VHOST_USER_SET_VRING_ENABLE, P.vringStatePayload(1, 1));
    await b.set(P.VHOST_USER_SET_VRING_ENABLE, P.vringStatePayload(0, 1));
    await exchange("after disable/enable");
    assert.deepEqual(await vringBase(a, 1), [1, 9]);
    assert.deepEqual(await vringBase(b, 0), [0, 9]);
  });
});

Deno.test("guest memory in several regions (QEMU's RAM blocks)", async () => {
  await withSwitch(async (_h, open) => {
    const a = await open("a", { regions: 2 });
    const b = await open("b", { regions: 3, mrgRxbuf: true });
    // RX buffers all over B's memory (slots in its 1st and 2nd regions), A's TX slots in its 2nd.
    b.postRxBuffers(200, 1024);
    const fs = Array.from({ length: 30 }, (_, i) => ethFrame(MAC_B, MAC_A, 100 + 97 * i, i));
    for (const f of fs) a.send(f, { indirect: true });
    assert.deepEqual(await b.waitFrames(fs.length), fs);
  });
});

Deno.test("a client-mode port connects to a listening front-end and forwards", async () => {
  const baseline = resources();
  const h = await startSwitch([{ name: "a" }, { name: "d", mode: "client" }]);
  const listener = new FrontendListener(h.sock("d"));
  let a: VhostFrontend | null = null, d: VhostFrontend | null = null;
  try {
    d = await listener.accept({}, 5000);
    await d.setup();
    a = await VhostFrontend.open(h.sock("a"));
    d.postRxBuffers(8);
    a.postRxBuffers(8);
    const ad = ethFrame(MAC_B, MAC_A, 1518, 9);
    a.send(ad);
    assert.deepEqual((await d.waitFrames(1))[0], ad);
    const da = ethFrame(MAC_A, MAC_B, 64, 10);
    d.send(da, { indirect: true });
    assert.deepEqual((await a.waitFrames(1))[0], da);
    assert.equal(h.sw.port("d")!.counters.connections, 1);
  } finally {
    a?.close();
    d?.close();
    listener.close();
    await h.stop();
  }
  await assertNoLeak(baseline, "after the client-mode test");
});

// A buffer contiguous in guest physical memory may cross from one region into the next
// (adjacent RAM blocks): legal virtio, split into one segment per region.
Deno.test({
  name: "a descriptor crossing two adjacent memory regions is delivered",
  fn: () =>
    withSwitch(async (h, open) => {
      const a = await open("a", { regions: 2 });
      const b = await open("b");
      b.postRxBuffers(4);
      const f = ethFrame(MAC_B, MAC_A, 400, 1);
      const boundary = a.memSize / 2;
      const at = boundary - 100; // header and 88 frame bytes in region 0, the rest in region 1
      a.mem.fill(0, at, at + 12);
      a.mem.set(f, at + 12);
      const id = a.rings[1].free.shift()!;
      a.rings[1].chains.set(id, [id]);
      a.writeDesc(1, id, { addr: at, len: 12 + f.length, flags: 0 });
      a.publish(1, [id]);
      const got = await b.waitFrames(1, 2000).catch((e) => {
        const c = h.counters("a");
        throw new Error(`${e.message}; drop_bad_descriptor ${c.drop_bad_descriptor}`);
      });
      assert.deepEqual(got[0], f);
    }),
});
