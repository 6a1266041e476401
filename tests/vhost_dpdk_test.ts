// DPDK testpmd virtio-user front-ends on the switch's vhost-user ports. Frames go in through
// pcap files (net_pcap -> net_virtio_user0 -> switch -> net_virtio_user1 -> net_pcap), both
// ways at once, and are compared byte for byte; counters are checked on both sides.
import assert from "node:assert/strict";
import { diffFrames, ethFrame } from "../peers/pcap.ts";
import { exchangeFrames, type ExchangeOptions, testpmdAvailable } from "../peers/testpmd.ts";
import { startSwitch } from "./helpers/switch.ts";

const missing = testpmdAvailable({ pcap: true });
if (missing) console.warn(`SKIPPING DPDK tests: ${missing}`);

const MAC0 = "02:00:00:00:00:01";
const MAC1 = "02:00:00:00:00:02";
/** Frame lengths without FCS: 60 is a 64-byte wire frame, 1514 a 1518-byte one. */
const LENGTHS = [60, 64, 128, 1514, 1518, 2048, 2049, 4000, 9000, 9018];

function frames(src: string, dst: string, base: number): Uint8Array[] {
  const out = LENGTHS.map((length, i) => ethFrame({ src, dst, length, seq: base + i }));
  out.splice(3, 0, ethFrame({ src, dst, length: 1518, vlan: { id: 100, pcp: 5 }, seq: base + 99 }));
  return out;
}

interface Scenario {
  name: string;
  mode: "server" | "client";
  virtio: ExchangeOptions["virtio"];
  args?: string[];
  /** Queue pairs of each switch port. */
  queues?: number;
  /** Largest frame the front-end's RX buffers hold; longer ones must be dropped and counted. */
  maxLen: number;
}

const scenarios: Scenario[] = [
  {
    name: "server mode, mrg_rxbuf=1",
    mode: "server",
    virtio: { mrgRxbuf: true, inOrder: false },
    maxLen: 9018,
  },
  // Without mergeable buffers a frame must fit one 2048-byte mbuf data room.
  {
    name: "server mode, mrg_rxbuf=0",
    mode: "server",
    virtio: { mrgRxbuf: false, inOrder: false },
    maxLen: 2048,
  },
  {
    name: "client mode, mrg_rxbuf=1",
    mode: "client",
    virtio: { mrgRxbuf: true, inOrder: false, server: true },
    maxLen: 9018,
  },
  {
    name: "client mode, mrg_rxbuf=0, 10 KiB mbufs",
    mode: "client",
    virtio: { mrgRxbuf: false, inOrder: false, server: true },
    args: ["--mbuf-size=10240"],
    maxLen: 9018,
  },
  // Packed virtqueues and IN_ORDER, in both modes, with and without mergeable buffers, on
  // 1024-entry rings (more than one wrap of the ring's counters per exchange is not needed:
  // the restart test wraps them).
  {
    name: "server mode, packed_vq=1, in_order=1, mrg_rxbuf=1, queue_size=1024",
    mode: "server",
    virtio: { packedVq: true, inOrder: true, mrgRxbuf: true, queueSize: 1024 },
    maxLen: 9018,
  },
  {
    name: "client mode, packed_vq=1, in_order=0, mrg_rxbuf=0",
    mode: "client",
    virtio: { packedVq: true, inOrder: false, mrgRxbuf: false, server: true },
    maxLen: 2048,
  },
  // Two queue pairs offered and negotiated, but testpmd runs one (--rxq/--txq default to 1), so
  // only pair 0 carries frames here: tests/multiqueue_test.ts drives both pairs.
  {
    name: "client mode, packed_vq=1, mrg_rxbuf=1, queues=2",
    mode: "client",
    virtio: { packedVq: true, inOrder: false, mrgRxbuf: true, server: true, queues: 2 },
    queues: 2,
    maxLen: 9018,
  },
  {
    name: "server mode, split ring, in_order=1, mrg_rxbuf=1",
    mode: "server",
    virtio: { inOrder: true, mrgRxbuf: true },
    maxLen: 9018,
  },
];

for (const sc of scenarios) {
  Deno.test({
    name: `testpmd virtio-user exchanges exact frames through the switch: ${sc.name}`,
    ignore: missing !== null,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      await using ts = await startSwitch({
        name: "dpdk",
        http: { listen: "127.0.0.1:0" },
        ports: ["p0", "p1"].map((name) => ({
          name,
          type: "vhost-user",
          socket: `$DIR/${name}.sock`,
          mode: sc.mode,
          mtu: 9000,
          queues: sc.queues ?? 1,
        })),
      });
      const send: [Uint8Array[], Uint8Array[]] = [frames(MAC0, MAC1, 0), frames(MAC1, MAC0, 1000)];
      const fits = (f: Uint8Array) => f.length <= sc.maxLen;
      const expected: [Uint8Array[], Uint8Array[]] = [send[1].filter(fits), send[0].filter(fits)];
      const result = await exchangeFrames({
        dir: ts.dir,
        sockets: [`${ts.dir}/p0.sock`, `${ts.dir}/p1.sock`],
        send,
        macs: [MAC0, MAC1],
        virtio: sc.virtio,
        args: sc.args,
        expect: [expected[0].length, expected[1].length],
        settleMs: 1000,
        linked: () => {
          // The ring layout and ordering asked for are the ones negotiated.
          for (const port of ts.sw.ports()) {
            const f = port.features;
            assert.equal(f.includes("RING_PACKED"), !!sc.virtio?.packedVq, `${port.name}: ${f}`);
            assert.equal(f.includes("IN_ORDER"), !!sc.virtio?.inOrder, `${port.name}: ${f}`);
          }
          return Promise.resolve();
        },
      });
      const log = () => `switch log:\n${ts.logs.join("\n")}`;
      for (const i of [0, 1]) {
        const got = result.received[i];
        assert.equal(
          got.length,
          expected[i].length,
          `virtio_user${i} received ${got.length}\n${log()}`,
        );
        assert.equal(diffFrames(expected[i], got), null, `virtio_user${i} received other bytes`);
      }
      const [p0, p1] = ts.sw.ports();
      for (
        const [port, sent, delivered] of [[p0, send[0], expected[1]], [
          p1,
          send[1],
          expected[0],
        ]] as const
      ) {
        const c = port.counters;
        assert.equal(c.rx_packets, sent.length, `${port.name} rx_packets`);
        assert.equal(c.rx_bytes, sent.reduce((n, f) => n + f.length, 0), `${port.name} rx_bytes`);
        assert.equal(c.tx_packets, delivered.length, `${port.name} tx_packets`);
        // Every frame the peer could not hold is counted, none vanished: sent = received + drops.
        assert.equal(c.tx_packets + c.drop_too_big, send[port.name === "p0" ? 1 : 0].length);
        assert.equal(c.drop_bad_descriptor, 0);
      }
      // testpmd port order: 0 pcap0, 1 virtio_user0, 2 virtio_user1, 3 pcap1.
      assert.equal(result.stats[1].txPackets, send[0].length);
      assert.equal(result.stats[2].txPackets, send[1].length);
      assert.equal(result.stats[1].rxPackets, expected[0].length);
      assert.equal(result.stats[2].rxPackets, expected[1].length);
      const fdb = ts.sw.fdb().map((e) => [e.mac, e.port]).sort();
      assert.deepEqual(fdb, [], "links went down when testpmd quit: their MACs were flushed");
      assert.ok(ts.logs.some((l) => l.includes("[p0] link up")), log());
    },
  });
}
