// Multi-queue vhost-user ports driven by a real front-end: one DPDK testpmd whose two virtio-user
// ports have two queue pairs each and use both (--rxq=2 --txq=2). Frames enter through pcap ports
// with one input file per queue, so testpmd's io forwarding sends the frames of file q out of
// virtio_user TX queue q, and what virtio_user RX queue q receives lands in output file q: every
// frame's queue is known on both sides.
//
// The switch runs two workers with rxqAffinity [0, 1]: worker 0 polls queue pair 0's TX ring
// (ring 1), worker 1 queue pair 1's (ring 3), and worker w fills the guest RX ring 2w. So a frame
// sent on TX queue q must come out of the other port's RX queue q, byte for byte and in order; a
// switch that never polls ring 3, or never fills ring 2, loses exactly the queue-1 frames. On the
// switch side, each worker's received-frame count (/stats) must equal its queue pair's frames.
import assert from "node:assert/strict";
import { diffFrames, ethFrame, firstDifference, readPcapFrames, writePcap } from "../peers/pcap.ts";
import { type PortStats, Testpmd, testpmdAvailable, virtioUserVdev } from "../peers/testpmd.ts";
import { VhostFrontend } from "../peers/vhost_frontend.ts";
import { startSwitch, type TestSwitch, waitFor } from "./helpers/switch.ts";

const missing = testpmdAvailable({ pcap: true });
if (missing) console.warn(`SKIPPING multi-queue DPDK tests: ${missing}`);

const MAC0 = "02:00:00:00:00:01";
const MAC1 = "02:00:00:00:00:02";
const LENGTHS = [60, 64, 128, 1514, 1518, 2048, 4000, 9018];
const QUEUES = [0, 1];

/** Frames for one (port, queue): distinct sequence numbers so a frame on the wrong queue shows. */
function frames(src: string, dst: string, base: number, repeat = 4): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let r = 0; r < repeat; r++) {
    LENGTHS.forEach((length, i) =>
      out.push(ethFrame({ src, dst, length, seq: base + r * 100 + i }))
    );
  }
  return out;
}

const sum = (fs: Uint8Array[]) => fs.reduce((n, f) => n + f.length, 0);

function pcapPort(index: number, dir: string, tag: string, queues: number): string {
  const files = Array.from({ length: queues }, (_, q) => [
    `rx_pcap=${dir}/${tag}in${index}_q${q}.pcap`,
    `tx_pcap=${dir}/${tag}out${index}_q${q}.pcap`,
  ]).flat();
  return [`net_pcap${index}`, ...files].join(",");
}

async function switchWithTwoQueuePairs(): Promise<TestSwitch> {
  return await startSwitch({
    name: "mq",
    threads: 2,
    http: { listen: "127.0.0.1:0" },
    ports: ["p0", "p1"].map((name) => ({
      name,
      type: "vhost-user",
      socket: `$DIR/${name}.sock`,
      mode: "server",
      mtu: 9000,
      queues: 2,
      rxqAffinity: [0, 1],
    })),
  });
}

/** Runs testpmd forwarding until the pcap ports read every input frame and outputs settle. */
async function forwardUntilSettled(fe: Testpmd, inputs: [number, number]): Promise<PortStats[]> {
  await fe.start();
  let last = "";
  let still = Date.now();
  await fe.poll(
    async () => {
      const st = await fe.portStats();
      const counts = String([st[0].txPackets, st[3].txPackets]);
      const read = st[0].rxPackets === inputs[0] && st[3].rxPackets === inputs[1];
      if (counts !== last) [last, still] = [counts, Date.now()];
      return (read && Date.now() - still >= 1000) || undefined;
    },
    "the pcap ports to read all frames and output to settle",
    30_000,
    50,
  );
  await fe.stop();
  return await fe.portStats();
}

for (const packedVq of [false, true]) {
  Deno.test({
    name:
      `multi-queue: testpmd --rxq=2 --txq=2 sends and receives exact frames on both queue pairs, ${
        packedVq ? "packed" : "split"
      } rings`,
    ignore: missing !== null,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      await using ts = await switchWithTwoQueuePairs();
      // send[port][queue]: frames virtio_user{port} transmits on TX queue `queue`.
      const send = [0, 1].map((p) =>
        QUEUES.map((q) => frames(p ? MAC1 : MAC0, p ? MAC0 : MAC1, 1000 * (2 * p + q + 1)))
      );
      for (const p of [0, 1]) {
        for (const q of QUEUES) await writePcap(`${ts.dir}/ain${p}_q${q}.pcap`, send[p][q]);
      }
      const log = () => `switch log:\n${ts.logs.join("\n")}`;
      let stats: PortStats[];
      {
        await using fe = await Testpmd.launch({
          name: "mq-frontend",
          lcores: "0@1,1@0",
          vdevs: [
            pcapPort(0, ts.dir, "a", 2),
            ...[0, 1].map((i) =>
              virtioUserVdev({
                index: i,
                path: `${ts.dir}/p${i}.sock`,
                mac: i ? MAC1 : MAC0,
                queues: 2,
                mrgRxbuf: true,
                inOrder: false,
                packedVq,
              })
            ),
            pcapPort(1, ts.dir, "a", 2),
          ],
          args: ["--forward-mode=io", "--no-flush-rx", "--rxq=2", "--txq=2"],
        });
        await fe.waitLinkUp([1, 2]);
        // Both queue pairs come up on the switch side (the driver enables the second one through
        // its control queue once the port has started), each polled by its own worker.
        const bothPairs = JSON.stringify([{ index: 0, worker: 0 }, { index: 1, worker: 1 }]);
        await waitFor(
          "both queue pairs of both ports to run",
          () => ts.sw.ports().every((p) => JSON.stringify(p.queues) === bothPairs),
          20_000,
          () => `${JSON.stringify(ts.sw.ports().map((p) => [p.name, p.queues]))}\n${log()}`,
        );
        for (const port of ts.sw.ports()) {
          assert.ok(port.features.includes("MQ"), `${port.name}: ${port.features}`);
          assert.equal(port.features.includes("RING_PACKED"), packedVq, `${port.name}`);
        }
        stats = await forwardUntilSettled(fe, [sum0(send[0]), sum0(send[1])]);
      }
      // testpmd port order: 0 pcap0, 1 virtio_user0, 2 virtio_user1, 3 pcap1. Output file q of
      // pcap0 holds what virtio_user0 received on RX queue q (and pcap1 likewise for port 1).
      for (const p of [0, 1]) {
        for (const q of QUEUES) {
          const got = await readPcapFrames(`${ts.dir}/aout${p ? 0 : 1}_q${q}.pcap`);
          const want = send[p][q];
          assert.equal(
            got.length,
            want.length,
            `virtio_user${1 - p} RX queue ${q} got ${got.length} of the ${want.length} frames ` +
              `virtio_user${p} sent on TX queue ${q}\n${log()}`,
          );
          assert.equal(
            diffFrames(want, got),
            null,
            `virtio_user${1 - p} RX queue ${q}: other bytes`,
          );
        }
      }
      // Switch side: each worker received exactly the frames of the TX rings it polls, queue
      // pair 0 of both ports for worker 0, queue pair 1 of both for worker 1.
      const moved = (await ts.sw.stats()).workers.map((w) => w.frames);
      assert.deepEqual(moved, QUEUES.map((q) => send[0][q].length + send[1][q].length), log());
      const [p0, p1] = ts.sw.ports();
      for (const [port, p] of [[p0, 0], [p1, 1]] as const) {
        const sent = send[p].flat();
        const delivered = send[1 - p].flat();
        const c = port.counters;
        assert.equal(c.rx_packets, sent.length, `${port.name} rx_packets`);
        assert.equal(c.rx_bytes, sum(sent), `${port.name} rx_bytes`);
        assert.equal(c.tx_packets, delivered.length, `${port.name} tx_packets`);
        assert.equal(c.tx_bytes, sum(delivered), `${port.name} tx_bytes`);
        assertNoDrops(port.name, c);
      }
      assert.equal(stats[1].txPackets, send[0].flat().length);
      assert.equal(stats[2].txPackets, send[1].flat().length);
      assert.equal(stats[1].rxPackets, send[1].flat().length);
      assert.equal(stats[2].rxPackets, send[0].flat().length);
    },
  });
}

/** sent = received + drops, with every drop counter at 0: no frame may be lost on either pair. */
function assertNoDrops(name: string, c: Record<string, number>) {
  const drops = Object.entries(c).filter(([k, v]) => k.startsWith("drop_") && v !== 0);
  assert.deepEqual(drops, [], `${name} dropped frames`);
}

function sum0(perQueue: Uint8Array[][]): number {
  return perQueue.reduce((n, fs) => n + fs.length, 0);
}

// The second queue pair comes up while the first already carries traffic, as a driver does when
// it raises the number of queue pairs (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) on a running device. The
// front-end queues its first frames on TX ring 3 before and right after its SET_VRING_ENABLE:
// those frames wait in the ring until the workers take it up and must all be delivered, none
// lost while the rings move between workers.
Deno.test({
  name: "multi-queue: the first frames on a queue pair enabled at run time are all delivered",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using ts = await switchWithTwoQueuePairs();
    const log = () => `switch log:\n${ts.logs.join("\n")}`;
    const opts = { queuePairs: 2, mrgRxbuf: true };
    const fe0 = await VhostFrontend.open(`${ts.dir}/p0.sock`, opts);
    const fe1 = await VhostFrontend.open(`${ts.dir}/p1.sock`, opts);
    try {
      for (const fe of [fe0, fe1]) {
        assert.equal(fe.queuePairs, 2, "the switch offers two queue pairs");
        await fe.setup();
      }
      fe1.postRxBuffers(200);
      const frame = (seq: number, length: number) =>
        ethFrame({ src: MAC0, dst: MAC1, length, seq });
      // Pair 0 alone: its TX ring is polled, every frame lands in the one RX ring there is.
      const first = Array.from({ length: 32 }, (_, i) => frame(i, 60 + 40 * i));
      for (const f of first) fe0.send(f);
      const got0 = await fe1.waitFrames(first.length, 20_000);
      assert.equal(diffFrames(first, got0), null, "pair 0 before the second pair came up");
      fe0.reclaimTx();
      assert.deepEqual(ts.sw.port("p0")?.queues, [{ index: 0, worker: 0 }], log());

      // The receiver raises its pair first, with buffers posted before the ring is enabled.
      fe1.postRxBuffers(200, 2048, 1);
      await fe1.setupPair(1);
      // The sender's first frames on the new pair: half are queued on TX ring 3 before its
      // SET_VRING_ENABLE (they wait in the ring until the switch takes it up), half right after
      // the enable is acknowledged; pair 0 keeps carrying traffic in between.
      const fresh = Array.from({ length: 48 }, (_, i) => frame(1000 + i, 60 + 30 * i));
      const more = Array.from({ length: 48 }, (_, i) => frame(2000 + i, 1514 - 20 * i));
      await fe0.setupPair(1, () => {
        for (let i = 0; i < 24; i++) {
          fe0.send(fresh[i], { pair: 1 });
          fe0.send(more[i]);
        }
      });
      for (let i = 24; i < fresh.length; i++) {
        fe0.send(fresh[i], { pair: 1 });
        fe0.send(more[i]);
      }
      // Each frame arrives once, bytes intact and in its queue's order, on one of the
      // receiver's RX rings (a worker still finishing the old layout fills ring 0).
      const received: Uint8Array[] = [];
      await waitFor(
        `${fresh.length + more.length} frames after the second pair came up`,
        () => {
          received.push(...fe1.receive(0), ...fe1.receive(1));
          return received.length >= fresh.length + more.length;
        },
        20_000,
        () => `got ${received.length}; p0 ${JSON.stringify(ts.sw.port("p0"))}\n${log()}`,
      );
      const fromNew = received.filter((f) => fresh.some((s) => firstDifference(s, f) < 0));
      const fromOld = received.filter((f) => more.some((s) => firstDifference(s, f) < 0));
      assert.equal(diffFrames(fresh, fromNew), null, "the first frames on queue pair 1");
      assert.equal(diffFrames(more, fromOld), null, "pair 0 frames while pair 1 came up");
      assert.equal(fromNew.length + fromOld.length, received.length, "no other frame");
      for (const name of ["p0", "p1"]) {
        assert.deepEqual(
          ts.sw.port(name)?.queues,
          [{ index: 0, worker: 0 }, { index: 1, worker: 1 }],
          `${name}\n${log()}`,
        );
      }
      // Now that both workers have the new layout, pair 1's frames fill the receiver's RX ring
      // 2 (worker 1's), pair 0's RX ring 0 (worker 0's).
      fe0.reclaimTx();
      fe0.reclaimTx(1);
      const late1 = Array.from({ length: 16 }, (_, i) => frame(3000 + i, 200 + i));
      const late0 = Array.from({ length: 16 }, (_, i) => frame(4000 + i, 300 + i));
      for (let i = 0; i < late1.length; i++) {
        fe0.send(late1[i], { pair: 1 });
        fe0.send(late0[i]);
      }
      assert.equal(diffFrames(late1, await fe1.waitFrames(late1.length, 20_000, 1)), null);
      assert.equal(diffFrames(late0, await fe1.waitFrames(late0.length, 20_000, 0)), null);
      assert.deepEqual([fe1.receive(0).length, fe1.receive(1).length], [0, 0], "no extra frame");

      // Worker 1 received exactly the frames of TX ring 3, worker 0 those of ring 1, and the
      // switch returned every one of them to the front-end on the ring it came from. A worker
      // adds a poll round's frames to its counter after the round, so the receiver can hold the
      // last frames a moment before the counters show them: wait for the total, then compare.
      const all = [...first, ...fresh, ...more, ...late1, ...late0];
      const pair0 = first.length + more.length + late0.length;
      let moved: number[] = [];
      await waitFor(
        "the workers' frame counters",
        async () => {
          moved = (await ts.sw.stats()).workers.map((w) => w.frames);
          return moved[0] + moved[1] >= all.length;
        },
        5_000,
        () => `counters ${JSON.stringify(moved)}`,
      );
      assert.deepEqual(moved, [pair0, fresh.length + late1.length], log());
      assert.equal(fe0.usedIdx(1), pair0, "used index of TX ring 1");
      assert.equal(fe0.usedIdx(3), fresh.length + late1.length, "used index of TX ring 3");
      const c0 = ts.sw.port("p0")!.counters, c1 = ts.sw.port("p1")!.counters;
      assert.equal(c0.rx_packets, all.length, "p0 rx_packets");
      assert.equal(c0.rx_bytes, sum(all), "p0 rx_bytes");
      assert.equal(c1.tx_packets, all.length, "p1 tx_packets");
      assert.equal(c1.tx_bytes, sum(all), "p1 tx_bytes");
      assertNoDrops("p0", c0);
      assertNoDrops("p1", c1);
    } finally {
      fe0.close();
      fe1.close();
    }
  },
});
