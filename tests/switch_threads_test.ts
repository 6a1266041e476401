// The switch core on two datapath workers: ports polled by different workers, learning and
// flooding across them, and frames crossing between workers (into guest RX rings that both
// workers fill) without loss.
import assert from "node:assert/strict";
import { VhostFrontend } from "../peers/vhost_frontend.ts";
import { BROADCAST, ethFrame, startSwitch } from "./helpers/frontend_harness.ts";
import { macString, readSeqFrame, seqFrame } from "./helpers/reliability.ts";

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

// Port c has one RX ring and the switch two workers, so both workers fill that ring, each under
// its lock (virtio_net.ts, shared rings). a and b are polled by different workers and send to c
// at the same time, interleaved, as fast as the front-ends can queue: while one worker writes
// c's used ring the other wants to. Every frame must arrive exactly once, intact, in order per
// sender; a lock that did not exclude (two workers at one used slot) loses or repeats frames.
Deno.test("two workers filling one guest RX ring at once: every frame once, intact, in order", async () => {
  const h = await startSwitch([{ name: "a" }, { name: "b" }, { name: "c" }], 2);
  const fes: VhostFrontend[] = [];
  try {
    const open = async (port: string) => {
      const fe = await VhostFrontend.open(h.sock(port), { mrgRxbuf: false });
      fes.push(fe);
      return fe;
    };
    const [a, b, c] = [await open("a"), await open("b"), await open("c")];
    const worker = (p: string) => h.sw.port(p)!.queues[0].worker;
    assert.notEqual(worker("a"), worker("b"), "a and b are polled by different workers");
    const MAC_C = "52:54:00:cc:00:03";
    // c makes itself known, so a's and b's frames go to c alone.
    a.postRxBuffers(4);
    b.postRxBuffers(4);
    c.send(ethFrame(BROADCAST, MAC_C, 60, 0));
    await a.waitFrames(1);
    await b.waitFrames(1);
    const rounds = 20, perSender = 120;
    const next = [0, 0];
    for (let r = 0; r < rounds; r++) {
      c.postRxBuffers(2 * perSender);
      for (let i = 0; i < perSender; i++) {
        a.send(seqFrame(MAC_C, MAC_A, 0, r * perSender + i, 60 + (i * 37) % 1400));
        b.send(seqFrame(MAC_C, MAC_B, 1, r * perSender + i, 60 + (i * 53) % 1400));
      }
      const got = await c.waitFrames(2 * perSender, 20_000);
      assert.equal(got.length, 2 * perSender, `round ${r}: frames at c`);
      for (const f of got) {
        const stream = macString(f, 6) === MAC_A ? 0 : 1;
        const seq = readSeqFrame(f, stream);
        assert.equal(seq, next[stream], `round ${r}: stream ${stream} frame (-2: corrupt)`);
        next[stream]++;
      }
      a.reclaimTx();
      b.reclaimTx();
    }
    assert.deepEqual(next, [rounds * perSender, rounds * perSender]);
    assert.deepEqual(c.receive(), [], "nothing more: no frame twice");
    const cc = h.counters("c");
    assert.equal(cc.tx_packets, 2 * rounds * perSender, "frames the switch put in c's ring");
    assert.equal(cc.drop_no_buffer + cc.drop_bad_descriptor, 0);
  } finally {
    fes.forEach((fe) => fe.close());
    await h.stop();
  }
});
