// A 64 KiB TSO super-frame (the headers of one the kernel made, tests/fixtures/offload/super4.pcap,
// its payload grown to the largest IPv4 packet) sent by one test front-end to another through
// vhost-user ports, with the receiving front-end's RX ring in every state that matters:
// - GUEST_TSO4 with mergeable buffers: spread whole over as many buffers as it needs (num_buffers,
//   the GSO header handed on); while too few are posted it is a full-ring drop (drop_no_buffer),
//   not drop_too_big, and it crosses once the guest posted more;
// - a whole ring too small for it, or no MRG_RXBUF and buffers smaller than it: segmented here;
// - no GUEST_TSO4: segmented here.
// Every segment is checked on its own (lengths, sequence numbers, IPv4 and TCP checksums computed
// in this file) and the payloads must add up to the super-frame's. The same frame then goes to a
// real driver, DPDK's virtio-user with LRO (testpmd): whole over its mergeable buffers, and as
// segments when its whole ring is too small.
import assert from "node:assert/strict";
import { readPcapFrames } from "../peers/pcap.ts";
import { Testpmd, testpmdAvailable, virtioUserVdev } from "../peers/testpmd.ts";
import {
  F_CSUM,
  F_GUEST_CSUM,
  F_GUEST_TSO4,
  F_HOST_TSO4,
  type FrontendOptions,
  HDR_LEN,
  VhostFrontend,
} from "../peers/vhost_frontend.ts";
import { macBytes, startSwitch } from "./helpers/frontend_harness.ts";
import { waitFor } from "./helpers/switch.ts";

const MAC_A = "52:54:00:00:0a:0a";
const MAC_B = "52:54:00:00:0b:0b";
const MSS = 1448;
const ETH = 14;

/**
 * A 64 KiB TCP/IPv4 super-frame from A to B: the headers of one the kernel made (IPv4 id, DF,
 * TCP options, the pseudo-header sum in the checksum field), its payload grown to the largest
 * IPv4 packet.
 */
async function superFrame(): Promise<Uint8Array> {
  const frames = await readPcapFrames(
    new URL("./fixtures/offload/super4.pcap", import.meta.url).pathname,
  );
  const kernel = frames.find((f) => f.length > ETH + 1500);
  assert.ok(kernel, "a super-frame in the fixture");
  const end = payloadAt(kernel);
  const f = new Uint8Array(ETH + 0xffff);
  f.set(kernel.subarray(0, end));
  for (let o = end; o < f.length; o += 65536) {
    crypto.getRandomValues(f.subarray(o, Math.min(o + 65536, f.length)));
  }
  f[ETH + 2] = 0xff; // IPv4 total length 65535 (its header checksum is not checked on a GSO frame)
  f[ETH + 3] = 0xff;
  f.set(macBytes(MAC_B), 0);
  f.set(macBytes(MAC_A), 6);
  return f;
}

const u16 = (b: Uint8Array, at: number) => (b[at] << 8) | b[at + 1];
const u32 = (b: Uint8Array, at: number) => (u16(b, at) * 65536 + u16(b, at + 2)) >>> 0;
const l4At = (f: Uint8Array) => ETH + (f[ETH] & 0xf) * 4;
const payloadAt = (f: Uint8Array) => l4At(f) + (f[l4At(f) + 12] >>> 4) * 4;

/** RFC 1071 sum of b[from, to) (odd tail padded), folded to 16 bits. */
function fold(b: Uint8Array, from: number, to: number, sum = 0): number {
  for (let i = from; i + 1 < to; i += 2) sum += u16(b, i);
  if ((to - from) & 1) sum += b[to - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 65536);
  return sum;
}

/** The TSO header A's driver writes: NEEDS_CSUM, GSO_TCPV4, hdr_len, gso_size, csum fields. */
function tsoHeader(f: Uint8Array): Uint8Array {
  const h = new Uint8Array(10);
  const v = new DataView(h.buffer);
  h[0] = 1;
  h[1] = 1;
  v.setUint16(2, payloadAt(f), true);
  v.setUint16(4, MSS, true);
  v.setUint16(6, l4At(f), true);
  v.setUint16(8, 16, true);
  return h;
}

/**
 * Checks that `segs` are the first segments (all of them when `whole`) of the super-frame `sup`
 * cut by TCP segmentation, each frame complete.
 */
function assertSegmentsOf(segs: Uint8Array[], sup: Uint8Array, whole: boolean): void {
  const l4 = l4At(sup);
  const data = payloadAt(sup);
  let payload = 0;
  segs.forEach((s, k) => {
    const what = `segment ${k} of ${segs.length}`;
    assert.ok(s.length <= ETH + 1500, `${what}: ${s.length} bytes fit the MTU`);
    assert.deepEqual(s.subarray(0, ETH), sup.subarray(0, ETH), `${what}: same addresses`);
    assert.equal(u16(s, ETH + 2), s.length - ETH, `${what}: IPv4 total length`);
    assert.equal(fold(s, ETH, l4), 0xffff, `${what}: IPv4 header checksum`);
    assert.equal(u32(s, l4 + 4), (u32(sup, l4 + 4) + payload) >>> 0, `${what}: sequence number`);
    // Pseudo header: addresses, protocol, TCP length.
    const pseudo = fold(s, ETH + 12, ETH + 20) + 6 + (s.length - l4);
    assert.equal(fold(s, l4, s.length, pseudo), 0xffff, `${what}: TCP checksum`);
    assert.deepEqual(
      s.subarray(data),
      sup.subarray(data + payload, data + payload + s.length - data),
      `${what}: payload`,
    );
    payload += s.length - data;
  });
  if (whole) assert.equal(payload, sup.length - data, "the segments carry the whole payload");
}

interface Pair {
  a: VhostFrontend;
  b: VhostFrontend;
  counters(port: string): Record<string, number>;
  close(): Promise<void>;
}

async function pair(bOpts: FrontendOptions): Promise<Pair> {
  const h = await startSwitch([{ name: "a" }, { name: "b" }]);
  // A's super-frame sits past the slots (each holds at most 16 KiB).
  const a = await VhostFrontend.open(h.sock("a"), {
    memBytes: 32 << 20,
    features: [F_CSUM, F_HOST_TSO4],
  });
  const b = await VhostFrontend.open(h.sock("b"), bOpts);
  return {
    a,
    b,
    counters: h.counters,
    close: async () => {
      a.close();
      b.close();
      await h.stop();
    },
  };
}

const SUPER_AT = 24 << 20;

Deno.test("a TSO frame to a guest with GUEST_TSO4 and too few RX buffers is a full-ring drop, then crosses whole", async () => {
  const sup = await superFrame();
  const p = await pair({ features: [F_GUEST_CSUM, F_GUEST_TSO4] });
  try {
    // 8 buffers of 2 KiB: 16 KiB, a quarter of the frame.
    p.b.postRxBuffers(8, 2048);
    p.a.send(sup, { hdr: tsoHeader(sup), at: SUPER_AT });
    await waitFor("the frame to be refused", () => {
      const c = p.counters("b");
      return c.drop_no_buffer + c.drop_too_big + c.tx_packets > 0;
    });
    const c = p.counters("b");
    assert.equal(c.drop_too_big, 0, "not dropped as too big: the guest only lacked buffers");
    assert.equal(c.drop_no_buffer, 1, "a full-ring drop");
    assert.equal(c.gso_segmented + c.tx_packets, 0, "nothing delivered, nothing segmented");
    assert.deepEqual(p.b.receive(), [], "the 8 buffers stay with the guest");
    p.a.reclaimTx();

    // Now enough buffers (the 8 still posted and 40 more): the same frame crosses whole.
    p.b.postRxBuffers(40, 2048);
    p.a.send(sup, { hdr: tsoHeader(sup), at: SUPER_AT });
    const got = await p.b.waitFrames(1);
    assert.equal(got.length, 1);
    assert.deepEqual(got[0], sup, "the super-frame arrives byte for byte");
    const num = Math.ceil((HDR_LEN + sup.length) / 2048);
    assert.equal(p.b.rxNumBuffers.at(-1), num, `spread over ${num} buffers`);
    const hdr = new DataView(p.b.rxHeaders.at(-1)!.buffer);
    assert.equal(hdr.getUint8(0) & 1, 1, "NEEDS_CSUM handed on");
    assert.equal(hdr.getUint8(1), 1, "GSO_TCPV4 handed on");
    assert.equal(hdr.getUint16(4, true), MSS, "gso_size handed on");
    assert.equal(hdr.getUint16(6, true), l4At(sup), "csum_start");
    assert.equal(hdr.getUint16(8, true), 16, "csum_offset");
    const after = p.counters("b");
    assert.equal(after.tx_gso, 1);
    assert.equal(after.drop_too_big + after.gso_segmented, 0);
  } finally {
    await p.close();
  }
});

interface SegmentCase {
  name: string;
  opts: FrontendOptions;
  /** RX buffers posted, and their size. */
  buffers: number;
  size: number;
  /** Segments that fit them (the rest are full-ring drops); all when absent. */
  fit?: number;
}

const SEGMENT_CASES: SegmentCase[] = [
  {
    // 64 buffers of 1 KiB: 64 KiB, less than the frame and its header. Each segment (1514 bytes
    // and the header) takes two of them: the first 32 segments cross.
    name: "a whole ring of mergeable buffers too small for it",
    opts: { features: [F_GUEST_CSUM, F_GUEST_TSO4], queueSize: 64 },
    buffers: 64,
    size: 1024,
    fit: 32,
  },
  {
    name: "no MRG_RXBUF and buffers smaller than it",
    opts: { features: [F_GUEST_CSUM, F_GUEST_TSO4], mrgRxbuf: false },
    buffers: 64,
    size: 2048,
  },
  { name: "no GUEST_TSO4", opts: {}, buffers: 64, size: 2048 },
];

for (const t of SEGMENT_CASES) {
  Deno.test(`a TSO frame to a guest with ${t.name} arrives as segments`, async () => {
    const sup = await superFrame();
    const p = await pair(t.opts);
    try {
      p.b.postRxBuffers(t.buffers, t.size);
      p.a.send(sup, { hdr: tsoHeader(sup), at: SUPER_AT });
      const count = Math.ceil((sup.length - payloadAt(sup)) / MSS);
      const fit = t.fit ?? count;
      const got = await p.b.waitFrames(fit);
      assertSegmentsOf(got, sup, fit === count);
      await waitFor("every segment counted", () => {
        const c = p.counters("b");
        return c.tx_packets + c.drop_no_buffer >= count;
      });
      const c = p.counters("b");
      assert.equal(c.gso_segmented, 1, "segmented once, here");
      assert.equal(c.tx_packets, fit);
      assert.equal(c.drop_no_buffer, count - fit, "segments beyond the ring: full-ring drops");
      assert.equal(c.drop_too_big + c.tx_gso, 0);
      for (const h of p.b.rxHeaders) assert.equal(h[1], 0, "plain frames: no GSO type");
    } finally {
      await p.close();
    }
  });
}

const noTestpmd = testpmdAvailable();

/**
 * DPDK's virtio-user driver (testpmd, rxonly) with LRO on, so it negotiates GUEST_TSO4 and
 * GUEST_CSUM, on port b; the 64 KiB TSO frame from the test front-end on port a. Returns
 * testpmd's RX stats and the switch's counters of port b once the frame was handled.
 */
async function toTestpmd(queueSize: number) {
  const sup = await superFrame();
  const h = await startSwitch([{ name: "a" }, { name: "b" }]);
  try {
    const a = await VhostFrontend.open(h.sock("a"), {
      memBytes: 32 << 20,
      features: [F_CSUM, F_HOST_TSO4],
    });
    try {
      await using fe = await Testpmd.launch({
        name: "lro-receiver",
        lcores: "0@1,1@0",
        vdevs: [virtioUserVdev({
          index: 0,
          path: h.sock("b"),
          mac: MAC_B,
          mrgRxbuf: true,
          queueSize,
        })],
        args: ["--forward-mode=rxonly", "--enable-lro"],
      });
      // GUEST_TSO4 needs GUEST_CSUM, which the driver asks for with TCP checksum offload (the
      // IPv4 header checksum offload --enable-rx-cksum also wants is not virtio's).
      for (const c of ["port stop 0", "port config 0 rx_offload tcp_cksum on", "port start 0"]) {
        await fe.cmd(c);
      }
      await fe.waitLinkUp([0]);
      await fe.start();
      const features = h.sw.port("b")!.features;
      assert.ok(features.includes("GUEST_TSO4") && features.includes("GUEST_CSUM"), `${features}`);
      a.send(sup, { hdr: tsoHeader(sup), at: SUPER_AT });
      await waitFor("the frame to be handled", () => {
        const c = h.counters("b");
        return c.tx_gso + c.gso_segmented + c.drop_too_big + c.drop_no_buffer > 0;
      });
      const rx = await fe.poll(
        async () => {
          const s = (await fe.portStats())[0];
          return s.rxPackets > 0 ? s : undefined;
        },
        "frames at testpmd",
        5000,
      ).catch(() => null);
      return { sup, rx, c: h.counters("b") };
    } finally {
      a.close();
    }
  } finally {
    await h.stop();
  }
}

Deno.test({
  name: "a TSO frame reaches DPDK virtio-user with LRO (GUEST_TSO4, mergeable buffers) whole",
  ignore: noTestpmd !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const { sup, rx, c } = await toTestpmd(256);
    assert.equal(rx?.rxPackets, 1, "one frame");
    assert.equal(rx?.rxBytes, sup.length, "the whole 64 KiB frame");
    assert.equal(c.tx_gso, 1, "handed on whole");
    assert.equal(c.drop_too_big + c.drop_no_buffer + c.gso_segmented, 0);
  },
});

Deno.test({
  name: "a TSO frame for DPDK virtio-user whose whole RX ring cannot hold it is not dropped",
  ignore: noTestpmd !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // 16 buffers of 2 KiB (and the header: DPDK posts the mbuf's room plus 12 bytes), less
    // than half the frame. Segmented here; the driver refills while the segments go in, so how
    // many fit is not fixed, but some cross.
    const { rx, c } = await toTestpmd(16);
    assert.equal(c.drop_too_big, 0, `not dropped as too big: ${JSON.stringify(c)}`);
    assert.equal(c.gso_segmented, 1, "segmented for the guest");
    assert.ok((rx?.rxPackets ?? 0) > 0, "segments reached testpmd");
    assert.equal(c.tx_packets, rx?.rxPackets, "every segment sent arrived");
  },
});
