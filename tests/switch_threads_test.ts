// The switch core on two datapath workers: ports polled by different workers, learning and
// flooding across them, and frames crossing between workers (into guest RX rings that both
// workers fill) without loss.
import assert from "node:assert/strict";
import { VhostFrontend } from "./helpers/frontend.ts";
import { BROADCAST, ethFrame, startSwitch } from "./helpers/frontend_harness.ts";

const MAC_A = "52:54:00:aa:00:01";
const MAC_B = "52:54:00:bb:00:02";

Deno.test("two workers: learning, flooding and no loss between ports of different workers", async () => {
  const h = await startSwitch([{ name: "a" }, { name: "b" }, { name: "c" }], 2);
  const fes: VhostFrontend[] = [];
  try {
    const open = async (port: string) => {
      const fe = await VhostFrontend.open(h.sock(port));
      fes.push(fe);
      return fe;
    };
    const [a, b, c] = [await open("a"), await open("b"), await open("c")];
    const worker = (p: string) => h.sw.port(p)!.queues[0].worker;
    assert.notEqual(worker("a"), worker("b"), "a and b are polled by different workers");
    for (const fe of [a, b, c]) fe.postRxBuffers(64);

    // Unknown unicast floods to every other port; broadcast too; then only the learned port.
    const unknown = ethFrame(MAC_B, MAC_A, 100, 1);
    a.send(unknown);
    assert.deepEqual(await b.waitFrames(1), [unknown]);
    assert.deepEqual(await c.waitFrames(1), [unknown]);
    const bc = ethFrame(BROADCAST, MAC_B, 60, 2);
    b.send(bc);
    assert.deepEqual(await a.waitFrames(1), [bc]);
    assert.deepEqual(await c.waitFrames(1), [bc]);
    const known = ethFrame(MAC_B, MAC_A, 120, 3);
    a.send(known);
    assert.deepEqual(await b.waitFrames(1), [known]);
    assert.deepEqual(c.receive(), [], "known unicast must reach only its port");
    assert.deepEqual(
      h.sw.fdb().map((e) => [e.mac, e.port]).sort(),
      [[MAC_A, "a"], [MAC_B, "b"]],
    );
    for (const fe of [a, b]) fe.reclaimTx();

    // Both directions at once, at a low rate, in rounds: every frame arrives, in order, intact.
    const rounds = 40;
    const perRound = 25;
    const sentAB: Uint8Array[] = [];
    const sentBA: Uint8Array[] = [];
    const gotA: Uint8Array[] = [];
    const gotB: Uint8Array[] = [];
    for (let r = 0; r < rounds; r++) {
      a.postRxBuffers(perRound);
      b.postRxBuffers(perRound);
      for (let i = 0; i < perRound; i++) {
        const ab = ethFrame(
          MAC_B,
          MAC_A,
          64 + ((r * perRound + i) % 1400),
          1000 + r * perRound + i,
        );
        const ba = ethFrame(MAC_A, MAC_B, 64 + ((r * 7 + i) % 1400), 5000 + r * perRound + i);
        a.send(ab);
        b.send(ba);
        sentAB.push(ab);
        sentBA.push(ba);
      }
      gotB.push(...await b.waitFrames(perRound));
      gotA.push(...await a.waitFrames(perRound));
      a.reclaimTx();
      b.reclaimTx();
    }
    assert.equal(gotB.length, sentAB.length);
    assert.equal(gotA.length, sentBA.length);
    gotB.forEach((f, i) => assert.deepEqual(f, sentAB[i], `a->b frame ${i}`));
    gotA.forEach((f, i) => assert.deepEqual(f, sentBA[i], `b->a frame ${i}`));
    assert.deepEqual(c.receive(), [], "c saw none of the learned unicast");

    const ca = h.counters("a");
    const cb = h.counters("b");
    assert.equal(ca.rx_packets, 2 + rounds * perRound);
    assert.equal(cb.tx_packets, 2 + rounds * perRound);
    assert.equal(ca.drop_no_buffer + cb.drop_no_buffer, 0);
    const stats = h.sw.stats();
    assert.ok(stats.workers.every((w) => w.frames > 0), "both workers moved frames");
  } finally {
    fes.forEach((fe) => fe.close());
    await h.stop();
  }
});
