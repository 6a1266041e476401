// The VXLAN port's datapath driven directly on this thread against real UDP sockets on the
// loopback network (no root needed): peers on 127.0.0.2 and 127.0.0.3 play remote VTEPs.
import assert from "node:assert/strict";
import dgram from "node:dgram";
import {
  COUNTER_FIELDS,
  CSUM_FILLED,
  DROP_RUNT,
  DROP_TOO_BIG,
  DROP_VNI,
  DROP_VTEP_UNKNOWN,
  DROP_VTEP_UNREACHABLE,
  DROP_VXLAN_HEADER,
  GSO_SEGMENTED,
  RX_COALESCED,
  RX_CSUM_FILLED,
  RX_GSO,
  RX_PACKETS,
  TX_PACKETS,
  TX_TUNNEL_GSO,
  TX_UDP_GSO,
} from "../ports/counters.ts";
import { closeFd, pipe, setNonblocking } from "../ffi/fd.ts";
import { epollCreate } from "../ffi/epoll.ts";
import { libc } from "../ffi/libc.ts";
import { EgressFrame, FrameBatch } from "../ports/port.ts";
import { OFFLOAD_CSUM, OFFLOAD_TSO4, OFFLOAD_USO } from "../ports/offload/virtio_net_hdr.ts";
import { VxlanDatapath } from "../ports/vxlan/datapath.ts";
import { completePartialChecksum } from "../ports/vxlan/inner_checksum.ts";
import { VxlanPort, type VxlanPortConfig } from "../ports/vxlan/vxlan_port.ts";
import { Fdb } from "../switch/fdb.ts";
import { macHiAt, macLoAt } from "../ports/ethernet.ts";
import { FrameHeaders, parseHeaders, segment } from "../ports/offload/gso.ts";
import { firstDifference } from "../peers/pcap.ts";

const VNI = 42;
const A = "02:00:00:00:00:0a";
const B = "02:00:00:00:00:0b";
const BCAST = "ff:ff:ff:ff:ff:ff";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function mac(text: string): number[] {
  return text.split(":").map((x) => parseInt(x, 16));
}

/** An Ethernet frame dst, src, ethertype 0x88b5 (local experimental), then `payload` bytes. */
function frame(dst: string, src: string, payload = 46): Uint8Array {
  const f = new Uint8Array(14 + payload);
  f.set(mac(dst), 0);
  f.set(mac(src), 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  for (let i = 14; i < f.length; i++) f[i] = i & 0xff;
  return f;
}

function vxlan(vni: number, inner: Uint8Array, flags = 0x08): Uint8Array {
  const d = new Uint8Array(8 + inner.length);
  d[0] = flags;
  d[4] = vni >>> 16;
  d[5] = (vni >>> 8) & 0xff;
  d[6] = vni & 0xff;
  d.set(inner, 8);
  return d;
}

/** A UDP socket on `address`:port that keeps what it receives. */
class Peer {
  readonly got: { data: Uint8Array; from: string; port: number }[] = [];
  private constructor(readonly socket: dgram.Socket) {
    socket.on(
      "message",
      (msg, rinfo) =>
        this.got.push({ data: new Uint8Array(msg), from: rinfo.address, port: rinfo.port }),
    );
  }
  static async bind(address: string, port: number): Promise<Peer> {
    const socket = dgram.createSocket("udp4");
    await new Promise<void>((resolve, reject) => {
      socket.once("error", reject);
      socket.bind(port, address, () => resolve());
    });
    return new Peer(socket);
  }
  send(data: Uint8Array, port: number, to = "127.0.0.1"): Promise<void> {
    return new Promise((resolve, reject) =>
      this.socket.send(data, port, to, (err) => err ? reject(err) : resolve())
    );
  }
  async waitFor(n: number, ms = 2000): Promise<void> {
    const end = Date.now() + ms;
    while (this.got.length < n && Date.now() < end) await sleep(5);
    assert.equal(this.got.length, n, `expected ${n} datagrams, got ${this.got.length}`);
  }
  close(): void {
    this.socket.close();
  }
}

interface Rig {
  port: VxlanPort;
  table: Fdb;
  dp: VxlanDatapath;
  c: Float64Array;
  peers: Peer[];
  udpPort: number;
  batch: FrameBatch;
  /** Receives until `n` frames came or a second passed. */
  receive(n: number): Promise<Uint8Array[]>;
  transmit(f: Uint8Array): boolean;
  [Symbol.asyncDispose](): Promise<void>;
}

async function rig(
  opts: Partial<VxlanPortConfig> = {},
  peerAddrs = ["127.0.0.2", "127.0.0.3"],
): Promise<Rig> {
  for (let attempt = 0;; attempt++) {
    const udpPort = 20000 + Math.floor(Math.random() * 40000);
    const table = Fdb.create({ capacity: 64 });
    let port: VxlanPort;
    try {
      port = VxlanPort.open({
        name: "vx",
        vni: VNI,
        local: "127.0.0.1",
        remotes: ["127.0.0.2", "127.0.0.3"],
        udpPort,
        remoteMacs: [],
        strict: false,
        mtu: 1450,
        ...opts,
      }, table);
    } catch (err) {
      if (attempt < 5 && /EADDRINUSE/.test(String(err))) continue;
      throw err;
    }
    const peers = await Promise.all(peerAddrs.map((a) => Peer.bind(a, udpPort)));
    const c = new Float64Array(COUNTER_FIELDS);
    const dp = new VxlanDatapath(port.spec, c, Fdb.attach(table.buffer), true);
    const batch = new FrameBatch();
    const layout = new EgressFrame();
    return {
      port,
      table,
      dp,
      c,
      peers,
      udpPort,
      batch,
      async receive(n) {
        const out: Uint8Array[] = [];
        const end = Date.now() + 1000;
        while (out.length < n && Date.now() < end) {
          const k = dp.receive(batch);
          for (let i = 0; i < k; i++) {
            const o = batch.offset[i];
            out.push(batch.bytes[i].slice(o, o + batch.length[i]));
          }
          dp.release();
          if (k === 0) await sleep(5);
        }
        return out;
      },
      transmit(f) {
        const ok = dp.transmit(f, layout.setWhole(f, 0, f.length));
        dp.flush();
        return ok;
      },
      async [Symbol.asyncDispose]() {
        for (const p of peers) p.close();
        dp.close();
        port.close();
        await sleep(0);
      },
    };
  }
}

Deno.test("vxlan: a datagram's inner frame is received in place, its source learned against the VTEP", async () => {
  await using r = await rig();
  const inner = frame(BCAST, A);
  await r.peers[0].send(vxlan(VNI, inner), r.udpPort);
  const got = await r.receive(1);
  assert.deepEqual(got, [inner]);
  assert.equal(r.c[RX_PACKETS], 1);
  const a = new Uint8Array(mac(A));
  assert.equal(r.table.lookup(macHiAt(a, 0), macLoAt(a, 0), 0), 0);
  assert.equal(r.port.remoteOf(macHiAt(a, 0), macLoAt(a, 0)), "127.0.0.2");
});

// Learning runs once per second for the datagrams that repeat a station and its VTEP (a super-
// frame's segments), which must not hide a change: a station heard from another VTEP moves at
// once, and one whose entry went (aged out, flushed) is learned again by its next datagram.
Deno.test("vxlan: a station that moves to another VTEP, or whose entry went, is learned again at once", async () => {
  await using r = await rig();
  const a = new Uint8Array(mac(A));
  const where = () => r.table.lookup(macHiAt(a, 0), macLoAt(a, 0), 0);
  for (const [k, peer] of [0, 0, 1, 1, 0].map((k) => [k, r.peers[k]] as const)) {
    await peer.send(vxlan(VNI, frame(BCAST, A)), r.udpPort);
    assert.equal((await r.receive(1)).length, 1);
    assert.equal(where(), k, `heard from VTEP ${k}`);
  }
  for (let i = 0; i < 2; i++) {
    assert.ok(r.table.delete(macHiAt(a, 0), macLoAt(a, 0), 0));
    await r.peers[0].send(vxlan(VNI, frame(BCAST, A)), r.udpPort);
    assert.equal((await r.receive(1)).length, 1);
    assert.equal(where(), 0, `learned again after the entry went (${i + 1})`);
  }
});

Deno.test("vxlan: wrong VNI, I flag clear, truncated headers, runts and unknown VTEPs (strict) are dropped and counted", async () => {
  await using r = await rig({ strict: true }, ["127.0.0.2", "127.0.0.9"]);
  const [known, stranger] = r.peers;
  await known.send(vxlan(VNI + 1, frame(BCAST, A)), r.udpPort);
  await known.send(vxlan(VNI, frame(BCAST, A), 0x00), r.udpPort);
  await known.send(vxlan(VNI, frame(BCAST, A)).subarray(0, 5), r.udpPort);
  await known.send(vxlan(VNI, frame(BCAST, A)).subarray(0, 8 + 13), r.udpPort);
  await stranger.send(vxlan(VNI, frame(BCAST, B)), r.udpPort);
  // A good one last: once it arrived, every earlier datagram was looked at.
  await known.send(vxlan(VNI, frame(BCAST, A), 0x08 | 0x80), r.udpPort); // R bits are ignored
  const got = await r.receive(1);
  assert.equal(got.length, 1);
  assert.equal(r.c[DROP_VNI], 1);
  assert.equal(r.c[DROP_VXLAN_HEADER], 2);
  assert.equal(r.c[DROP_RUNT], 1);
  assert.equal(r.c[DROP_VTEP_UNKNOWN], 1);
  assert.equal(r.c[RX_PACKETS], 1);
  const b = new Uint8Array(mac(B));
  assert.equal(
    r.table.lookup(macHiAt(b, 0), macLoAt(b, 0), 0),
    -1,
    "nothing learned from the stranger",
  );
});

Deno.test("vxlan: without strict, a VTEP not configured is learned and answered", async () => {
  await using r = await rig({ remotes: ["127.0.0.2"] }, ["127.0.0.2", "127.0.0.7"]);
  await r.peers[1].send(vxlan(VNI, frame(BCAST, B)), r.udpPort);
  assert.equal((await r.receive(1)).length, 1);
  assert.deepEqual(r.port.remoteAddresses(), ["127.0.0.2", "127.0.0.7"]);
  assert.ok(r.transmit(frame(B, A)));
  await r.peers[1].waitFor(1);
  await sleep(50);
  assert.equal(r.peers[0].got.length, 0, "a learned MAC is not flooded");
});

Deno.test("vxlan: broadcast and unknown unicast go to every remote (head-end replication), a learned MAC to its VTEP", async () => {
  await using r = await rig();
  const [p2, p3] = r.peers;
  const bcast = frame(BCAST, A);
  assert.ok(r.transmit(bcast));
  await p2.waitFor(1);
  await p3.waitFor(1);
  assert.deepEqual(p2.got[0].data, vxlan(VNI, bcast));
  assert.deepEqual(p3.got[0].data, vxlan(VNI, bcast));
  assert.ok(r.transmit(frame(B, A))); // B unknown: flooded
  await p2.waitFor(2);
  await p3.waitFor(2);
  // B answers from 127.0.0.3: from now on frames to B go there only.
  await p3.send(vxlan(VNI, frame(A, B)), r.udpPort);
  assert.equal((await r.receive(1)).length, 1);
  assert.ok(r.transmit(frame(B, A, 100)));
  await p3.waitFor(3);
  await sleep(50);
  assert.equal(p2.got.length, 2);
  assert.equal(p3.got[2].data.length, 8 + 14 + 100);
  assert.equal(r.c[TX_PACKETS], 5, "datagrams sent: 2 + 2 + 1");
});

Deno.test("vxlan: static remoteMacs send to their VTEP without flooding", async () => {
  await using r = await rig({
    remotes: ["127.0.0.2"],
    remoteMacs: [{ mac: B, remote: "127.0.0.3" }],
  });
  assert.ok(r.transmit(frame(B, A)));
  await r.peers[1].waitFor(1);
  await sleep(50);
  assert.equal(r.peers[0].got.length, 0);
  assert.deepEqual(r.port.remoteAddresses(), ["127.0.0.2", "127.0.0.3"]);
});

Deno.test("vxlan: frames longer than the inner MTU are dropped and counted; an empty flood list drops BUM frames", async () => {
  await using r = await rig({ mtu: 100 });
  assert.equal(r.transmit(frame(BCAST, A, 101)), false);
  assert.equal(r.c[DROP_TOO_BIG], 1);
  assert.ok(r.transmit(frame(BCAST, A, 100)));
  await r.peers[0].waitFor(1);
  await using empty = await rig({ remotes: [] }, []);
  assert.equal(empty.transmit(frame(BCAST, A)), false);
  assert.equal(empty.c[DROP_VTEP_UNREACHABLE], 1);
});

/** An IPv4/TCP frame whose checksum field holds `check` (or the pseudo-header sum if null). */
function tcpFrame(check: number | null, payload = 101): Uint8Array {
  const f = frame(B, A, 20 + 20 + payload);
  f[12] = 0x08;
  f[13] = 0x00;
  const ip = 14;
  const total = 20 + 20 + payload;
  f.set(
    [0x45, 0, total >>> 8, total & 0xff, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2],
    ip,
  );
  let ipSum = 0;
  for (let i = ip; i < ip + 20; i += 2) ipSum += (f[i] << 8) | f[i + 1];
  while (ipSum > 0xffff) ipSum = (ipSum & 0xffff) + (ipSum >>> 16);
  f[ip + 10] = (~ipSum >>> 8) & 0xff;
  f[ip + 11] = ~ipSum & 0xff;
  const tcp = ip + 20;
  f.set([0x30, 0x39, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0], tcp);
  let pseudo = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 6 + 20 + payload;
  while (pseudo > 0xffff) pseudo = (pseudo & 0xffff) + (pseudo >>> 16);
  const v = check ?? pseudo;
  f[tcp + 16] = v >>> 8;
  f[tcp + 17] = v & 0xff;
  return f;
}

/** Whether the TCP checksum of tcpFrame()'s layout verifies (sum over pseudo + segment = 0xffff). */
function tcpChecksumOk(f: Uint8Array): boolean {
  let s = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 6 + (f.length - 34);
  if (((f[16] << 8) | f[17]) !== f.length - 14) return false; // IP total length
  for (let i = 34; i < f.length; i += 2) s += (f[i] << 8) | (i + 1 < f.length ? f[i + 1] : 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s === 0xffff;
}

Deno.test("vxlan: an inner TCP checksum left partial by the sending kernel is completed on receive", async () => {
  const partial = tcpFrame(null);
  assert.equal(tcpChecksumOk(partial), false);
  const fixed = partial.slice();
  assert.ok(completePartialChecksum(fixed, 0, fixed.length));
  assert.ok(tcpChecksumOk(fixed));
  const again = fixed.slice();
  assert.equal(
    completePartialChecksum(again, 0, again.length),
    false,
    "a full checksum is left alone",
  );
  assert.deepEqual(again, fixed);

  await using r = await rig();
  await r.peers[0].send(vxlan(VNI, partial), r.udpPort);
  await r.peers[0].send(vxlan(VNI, fixed), r.udpPort);
  const got = await r.receive(2);
  assert.equal(got.length, 2);
  assert.ok(tcpChecksumOk(got[0]) && tcpChecksumOk(got[1]));
  assert.equal(r.c[RX_CSUM_FILLED], 1);
});

Deno.test("vxlan: checksum-partial and GSO frames are finished before encapsulation", async () => {
  await using r = await rig({ mtu: 1450 });
  const peer = r.peers[0];
  // A learned destination: one VTEP, so each frame is one datagram.
  await peer.send(vxlan(VNI, frame(A, B)), r.udpPort);
  assert.equal((await r.receive(1)).length, 1);

  const partial = tcpFrame(null);
  const f = new EgressFrame().setWhole(partial, 0, partial.length);
  f.offload = OFFLOAD_CSUM;
  f.csumStart = 34;
  f.csumOffset = 16;
  assert.ok(r.dp.transmit(partial, f));
  r.dp.flush();
  await peer.waitFor(1);
  assert.ok(tcpChecksumOk(peer.got[0].data.subarray(8)), "checksum completed");
  assert.equal(r.c[CSUM_FILLED], 1);

  const payload = 4000; // a TSO super-frame: 3 segments of at most 1450 - 40 payload bytes
  const big = tcpFrame(null, payload);
  assert.ok(r.dp.transmit(big, superFrame(big, OFFLOAD_TSO4, 16)));
  r.dp.flush();
  await peer.waitFor(4);
  const segments = peer.got.slice(1).map((d) => d.data.subarray(8));
  assert.deepEqual(segments.map((s) => s.length - 54), [1400, 1400, 1200]);
  for (const s of segments) assert.ok(s.length <= 1450 + 14 && tcpChecksumOk(s));
  assert.equal(r.c[GSO_SEGMENTED], 1);
});

Deno.test("vxlan: a super-frame's segments leave as UDP_SEGMENT sends, as many datagrams as one may carry", async () => {
  await using r = await rig({ mtu: 1450 });
  const peer = r.peers[0];
  await peer.send(vxlan(VNI, frame(A, B)), r.udpPort);
  assert.equal((await r.receive(1)).length, 1);

  // 46 segments of 1400 payload bytes: 1462-byte datagrams, 44 to a message (65507 bytes of
  // UDP payload at most), so two sends.
  const payload = 64000;
  const big = tcpFrame(null, payload);
  assert.ok(r.dp.transmit(big, superFrame(big, OFFLOAD_TSO4, 16)));
  r.dp.flush();
  const count = Math.ceil(payload / 1400);
  await peer.waitFor(count);
  assert.equal(r.c[TX_UDP_GSO], 2);
  assert.equal(r.c[TX_PACKETS], count);
  assert.equal(r.c[GSO_SEGMENTED], 1);
  const segments = peer.got.map((d) => d.data.subarray(8));
  segments.forEach((s, k) => {
    assert.equal(s.length - 54, k < count - 1 ? 1400 : payload - 1400 * (count - 1));
    assert.ok(tcpChecksumOk(s), `segment ${k}: checksum`);
    const seq = ((s[38] << 24) | (s[39] << 16) | (s[40] << 8) | s[41]) >>> 0;
    assert.equal(seq, 1 + 1400 * k, `segment ${k}: in order`);
  });
  // They left from the segmentation socket (its own source port), not the port's own.
  assert.equal(new Set(peer.got.map((d) => d.port)).size, 1);
  assert.notEqual(peer.got[0].port, r.udpPort);

  // A plain frame still leaves from udpPort.
  assert.ok(r.transmit(frame(A, B)));
  await peer.waitFor(count + 1);
  assert.equal(peer.got[count].port, r.udpPort);
});

const TAP_MAC = [0x02, 0, 0, 0, 0x7a, 0x01];

/** A transmit-only datapath of the rig's port whose tunnel GSO tap is `fd` (a pipe, say). */
/** What precedes each frame the tap gets: its virtio-net header (24) and the outer headers (50). */
const TAP_PREFIX = 24 + 50;

/**
 * Reads what `count` tap writes of a `frameLen`-byte frame put in the pipe standing in for the
 * tap: exactly those bytes must be there, nothing more.
 */
function readTapWrites(fd: number, frameLen: number, count = 1): Uint8Array {
  const want = count * (TAP_PREFIX + frameLen);
  const got = new Uint8Array(want + 1);
  assert.equal(Number(libc.read(fd, got, BigInt(got.length))), want, "the tap's writes");
  return got.subarray(0, want);
}

function tunnelDatapath(r: Rig, fd: number): VxlanDatapath {
  const spec = { ...r.port.spec, tapFd: fd, tapMac: TAP_MAC };
  return new VxlanDatapath(spec, r.c, Fdb.attach(r.table.buffer), false);
}

Deno.test("vxlan: tunnel GSO writes a super-frame whole, once per VTEP, behind its outer headers", async () => {
  // A pipe stands in for the tap: what is written to it is what the kernel would parse.
  await using r = await rig({ mtu: 1450 });
  const [readFd, writeFd] = pipe();
  const dp = tunnelDatapath(r, writeFd);
  try {
    const payload = 20000; // two writes fit the pipe's 64 KiB
    const big = tcpFrame(null, payload);
    assert.ok(dp.transmit(big, superFrame(big, OFFLOAD_TSO4, 16)));
    dp.flush();
    const wrote = TAP_PREFIX + big.length;
    const got = readTapWrites(readFd, big.length, 2);
    const segments = Math.ceil(payload / 1400);
    assert.equal(r.c[TX_TUNNEL_GSO], 2); // flooded: one per VTEP
    assert.equal(r.c[TX_PACKETS], 2 * segments);
    assert.equal(r.c[GSO_SEGMENTED], 0);
    for (const [k, dst] of [[0, [127, 0, 0, 2]], [1, [127, 0, 0, 3]]] as const) {
      const w = got.subarray(k * wrote, (k + 1) * wrote);
      const le16 = (at: number) => w[at] | (w[at + 1] << 8);
      const be16 = (at: number) => (w[at] << 8) | w[at + 1];
      // virtio_net_hdr_v1_hash_tunnel: NEEDS_CSUM, TCPV4 | UDP_TUNNEL_IPV4, the headers' end,
      // segments for the inner MTU, the inner TCP checksum, the outer UDP and inner IP offsets.
      assert.deepEqual(
        [w[0], w[1], le16(2), le16(4), le16(6), le16(8), le16(20), le16(22)],
        [1, 0x21, 50 + 54, 1400, 50 + 34, 16, 34, 50 + 14],
      );
      const e = 24;
      assert.deepEqual([...w.subarray(e, e + 6)], TAP_MAC, "to the tap");
      assert.equal(be16(e + 12), 0x0800);
      const ip = e + 14;
      assert.deepEqual(
        [w[ip], be16(ip + 2), be16(ip + 6), w[ip + 8], w[ip + 9]],
        [0x45, 36 + big.length, 0x4000, 64, 17],
      );
      assert.deepEqual([...w.subarray(ip + 12, ip + 16)], [127, 0, 0, 1]);
      assert.deepEqual([...w.subarray(ip + 16, ip + 20)], dst);
      let sum = 0;
      for (let i = ip; i < ip + 20; i += 2) sum += be16(i);
      while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
      assert.equal(sum, 0xffff, "outer IPv4 header checksum");
      const u = ip + 20;
      assert.deepEqual(
        [be16(u), be16(u + 2), be16(u + 4), be16(u + 6)],
        [r.udpPort, r.udpPort, 16 + big.length, 0],
      );
      assert.deepEqual([...w.subarray(u + 8, u + 16)], [0x08, 0, 0, 0, 0, 0, VNI, 0]);
      assert.equal(firstDifference(w.subarray(u + 16), big), -1, "the inner frame as it came");
    }
  } finally {
    dp.close();
    closeFd(readFd);
    closeFd(writeFd);
  }
});

Deno.test("vxlan: tunnel GSO of an 802.1Q-tagged super-frame: offsets past the tag", async () => {
  await using r = await rig({ mtu: 1450, remotes: ["127.0.0.2"] }, ["127.0.0.2"]);
  const [readFd, writeFd] = pipe();
  const dp = tunnelDatapath(r, writeFd);
  try {
    const plain = tcpFrame(null, 20000);
    const big = new Uint8Array(plain.length + 4);
    big.set(plain.subarray(0, 12));
    big.set([0x81, 0x00, 0x00, 0x0a], 12); // VLAN 10
    big.set(plain.subarray(12), 16);
    assert.ok(dp.transmit(big, superFrame(big, OFFLOAD_TSO4, 16, 38)));
    dp.flush();
    const w = readTapWrites(readFd, big.length);
    const le16 = (at: number) => w[at] | (w[at + 1] << 8);
    // Headers end after TCP (58 bytes in), the checksum and inner IP header sit 4 bytes later,
    // and a segment may carry 1400 bytes: 1450 + 14 + 4 - 58 = 1410 would fit.
    assert.deepEqual(
      [le16(2), le16(4), le16(6), le16(22)],
      [50 + 58, 1400, 50 + 38, 50 + 18],
    );
    assert.equal(firstDifference(w.subarray(TAP_PREFIX), big), -1);
  } finally {
    dp.close();
    closeFd(readFd);
    closeFd(writeFd);
  }
});

Deno.test("vxlan: a super-frame the tap's kernel refuses, or with a lying TCP header, is cut; the tap stays", async () => {
  await using r = await rig({ mtu: 1450, remotes: ["127.0.0.2"] }, ["127.0.0.2"]);
  // An epoll fd takes no writes (EINVAL), as a tap refuses a header it cannot parse; later the
  // pipe takes its place under the same fd number, as a tap that accepts the next frame.
  const fake = epollCreate();
  const [readFd, writeFd] = pipe();
  setNonblocking(readFd); // a frame that never came fails the test, not hangs it
  const dp = tunnelDatapath(r, fake);
  try {
    const payload = 14000;
    const count = Math.ceil(payload / 1400);
    const refused = tcpFrame(null, payload);
    assert.ok(dp.transmit(refused, superFrame(refused, OFFLOAD_TSO4, 16)));
    dp.flush();
    await r.peers[0].waitFor(count);
    assert.ok(r.peers[0].got.every((d) => tcpChecksumOk(d.data.subarray(8))));
    assert.equal(libc.dup2(writeFd, fake), fake);
    // TCP data offset 0: never handed to the tap (the software path drops it as bad).
    const lying = tcpFrame(null, payload);
    lying[34 + 12] = 0;
    dp.transmit(lying, superFrame(lying, OFFLOAD_TSO4, 16));
    dp.flush();
    assert.equal(r.c[TX_TUNNEL_GSO], 0);
    const good = tcpFrame(null, payload);
    assert.ok(dp.transmit(good, superFrame(good, OFFLOAD_TSO4, 16)));
    dp.flush();
    readTapWrites(readFd, good.length); // through the tap
    assert.equal(r.c[TX_TUNNEL_GSO], 1);
    assert.equal(r.peers[0].got.length, count, "nothing else reached the peer");
  } finally {
    dp.close();
    closeFd(fake);
    closeFd(readFd);
    closeFd(writeFd);
  }
});

Deno.test("vxlan: a tap that refuses a write cuts that super-frame and every later one", async () => {
  await using r = await rig({ mtu: 1450 }, ["127.0.0.2"]);
  // No such fd: writes fail (EBADF), as they do once a tap is gone (EBADFD).
  const dp = tunnelDatapath(r, 0x7fffffff);
  try {
    const payload = 14000;
    const count = Math.ceil(payload / 1400);
    for (let n = 1; n <= 2; n++) {
      const big = tcpFrame(null, payload);
      assert.ok(dp.transmit(big, superFrame(big, OFFLOAD_TSO4, 16)));
      dp.flush();
      await r.peers[0].waitFor(n * count);
    }
    assert.equal(r.c[TX_TUNNEL_GSO], 0);
    assert.equal(r.c[GSO_SEGMENTED], 2);
    assert.ok(r.peers[0].got.every((d) => tcpChecksumOk(d.data.subarray(8))));
  } finally {
    dp.close();
  }
});

Deno.test("vxlan: segments cut straight into datagram slots equal the software segmenter's, past a full set of slots", async () => {
  await using r = await rig({ mtu: 1450 });
  const peer = r.peers[0];
  await peer.send(vxlan(VNI, frame(A, B)), r.udpPort);
  assert.equal((await r.receive(1)).length, 1);
  // Two super-frames of 46 segments before one flush: 92 segments for 64 slots, so the second
  // is cut partly before and partly after the send that empties them.
  const supers = [7, 11].map((k) => {
    const big = tcpFrame(null, 64000);
    for (let i = 54; i < big.length; i++) big[i] = (i * k) & 0xff;
    return big;
  });
  const expected: Uint8Array[] = [];
  for (const big of supers) {
    expected.push(...softwareSegments(big, 1400));
    assert.ok(r.dp.transmit(big, superFrame(big, OFFLOAD_TSO4, 16)));
  }
  r.dp.flush();
  await peer.waitFor(expected.length);
  assert.equal(expected.length, 92);
  peer.got.forEach((d, k) => assert.deepEqual(d.data.subarray(8), expected[k], `segment ${k}`));
});

// A guest may rewrite a buffer it has not had back yet: a cut super-frame's payload is read by
// the kernel at the flush, after its checksum was summed. The rewrite spoils only the segments
// whose bytes it touched (their checksums fail at the far station, which drops them); every
// segment still leaves, headers as cut, and the port goes on sending.
Deno.test("vxlan: a payload rewritten between the cut and the flush spoils only its own segments", async () => {
  await using r = await rig({ mtu: 1450 });
  const peer = r.peers[0];
  await peer.send(vxlan(VNI, frame(A, B)), r.udpPort);
  assert.equal((await r.receive(1)).length, 1);
  const big = tcpFrame(null, 64000);
  for (let i = 54; i < big.length; i++) big[i] = (i * 5) & 0xff;
  const expected = softwareSegments(big, 1400);
  assert.ok(r.dp.transmit(big, superFrame(big, OFFLOAD_TSO4, 16)));
  // The sender writes over the payload of segments 3 and 4 before the burst is flushed.
  const from = 54 + 3 * 1400 + 100;
  big.fill(0xee, from, from + 1400);
  r.dp.flush();
  await peer.waitFor(expected.length);
  let spoiled = 0;
  peer.got.forEach((d, k) => {
    const got = d.data.subarray(8);
    assert.equal(firstDifference(got.subarray(0, 54), expected[k].subarray(0, 54)), -1);
    if (k === 3 || k === 4) spoiled += tcpChecksumOk(got) ? 0 : 1;
    else assert.equal(firstDifference(got, expected[k]), -1, `segment ${k} as cut`);
  });
  // Sent from where it lies, the rewritten segments' checksums no longer match their bytes.
  assert.equal(spoiled, 2);
  assert.ok(r.transmit(frame(A, B)), "the port goes on sending");
  await peer.waitFor(expected.length + 1);
});

// Flooded to 200 VTEPs, a super-frame's first run fills 200 of the 256 messages a send takes:
// the next run must send first, and the segment whose headers were already built in the slot
// segmentBuffer() handed out moves to the first slot; its payload still comes from the frame.
Deno.test("vxlan: a super-frame flooded to 200 VTEPs reaches each whole, across a send mid-cut", async () => {
  const remotes = Array.from({ length: 200 }, (_, k) => `127.0.1.${k + 2}`);
  await using r = await rig({ mtu: 1450, remotes }, remotes);
  const big = tcpFrame(null, 64000); // to B, not learned anywhere: flooded
  for (let i = 54; i < big.length; i++) big[i] = (i * 13) & 0xff;
  const expected = softwareSegments(big, 1400);
  assert.ok(r.dp.transmit(big, superFrame(big, OFFLOAD_TSO4, 16)));
  r.dp.flush();
  assert.equal(expected.length, 46);
  for (const [k, peer] of r.peers.entries()) {
    await peer.waitFor(expected.length);
    peer.got.forEach((d, i) => {
      if (firstDifference(d.data.subarray(8), expected[i]) >= 0) {
        assert.fail(`VTEP ${remotes[k]}: segment ${i} differs`);
      }
    });
  }
  assert.equal(r.c[TX_PACKETS], 200 * expected.length);
});

/** The super-frame's segments as the software segmenter cuts them, `mss` payload bytes each. */
function softwareSegments(big: Uint8Array, mss: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  const h = new FrameHeaders();
  assert.equal(parseHeaders(big, big.length, h), 0);
  const sink = { segment: (seg: Uint8Array, len: number) => !!out.push(seg.slice(0, len)) };
  segment(big, big.length, h, mss, new Uint8Array(2000), sink);
  return out;
}

Deno.test("vxlan: a TCP super-frame received whole (tunnel GSO) is handed on as GSO for the inner MTU", async () => {
  await using r = await rig({ mtu: 1450 });
  const big = tcpFrame(null, 6000);
  await r.peers[0].send(vxlan(VNI, big), r.udpPort);
  const got = await r.receive(1);
  assert.equal(got[0].length, big.length);
  assert.equal(r.batch.offload[0], OFFLOAD_TSO4 | OFFLOAD_CSUM);
  assert.equal(r.batch.csumStart[0], 34);
  assert.equal(r.batch.gsoSize[0], 1450 + 14 - 54);
  assert.equal(r.c[RX_GSO], 1);
});

/**
 * A TCP segment of tcpFrame()'s flow: sequence number `seq`, `payload` bytes that tell where
 * in the stream they are, `flags`, and a full checksum (or `bad` to make it wrong).
 */
function tcpSegment(seq: number, payload: number, flags = 0x10, bad = false): Uint8Array {
  const f = tcpFrame(0, payload);
  for (let i = 0; i < payload; i++) f[54 + i] = (seq + i) * 7 & 0xff;
  f.set([seq >>> 24, (seq >>> 16) & 0xff, (seq >>> 8) & 0xff, seq & 0xff], 38);
  f[47] = flags;
  let sum = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 6 + 20 + payload;
  for (let i = 34; i < f.length; i += 2) sum += (f[i] << 8) | (i + 1 < f.length ? f[i + 1] : 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  const check = (~sum & 0xffff) ^ (bad ? 1 : 0);
  f[50] = check >>> 8;
  f[51] = check & 0xff;
  return f;
}

Deno.test("vxlan: consecutive TCP segments received in one burst are merged into one GSO super-frame", async () => {
  await using r = await rig({ mtu: 1450 });
  const peer = r.peers[0];
  const mss = 1400;
  const sizes = [mss, mss, mss, 600];
  let seq = 1000;
  const segs = sizes.map((n, k) => {
    const s = tcpSegment(seq, n, k === sizes.length - 1 ? 0x18 : 0x10);
    seq += n;
    return s;
  });
  assert.ok(segs.every(tcpChecksumOk));
  for (const s of segs) await peer.send(vxlan(VNI, s), r.udpPort);
  const got = await r.receive(1);
  assert.equal(got.length, 1);
  const m = got[0];
  assert.equal(m.length, 54 + 3 * mss + 600);
  assert.deepEqual(m.subarray(54), new Uint8Array(segs.flatMap((s) => [...s.subarray(54)])));
  assert.equal((m[16] << 8) | m[17], m.length - 14, "IP total length");
  assert.equal(m[47], 0x18, "PSH of the last segment");
  assert.equal(r.batch.offload[0], OFFLOAD_TSO4 | OFFLOAD_CSUM);
  assert.equal(r.batch.csumStart[0], 34);
  assert.equal(r.batch.gsoSize[0], mss);
  // The checksum is left partial (the pseudo-header sum): completing it verifies.
  const done = m.slice();
  assert.ok(completePartialChecksum(done, 0, done.length));
  assert.ok(tcpChecksumOk(done));
  assert.equal(r.c[RX_COALESCED], 3);
  assert.equal(r.c[RX_PACKETS], 4);
});

Deno.test("vxlan: segments that do not follow on, or whose checksum fails, are not merged", async () => {
  await using r = await rig({ mtu: 1450 });
  const peer = r.peers[0];
  // A gap in the sequence: the first two merge, the third stays alone.
  for (const s of [tcpSegment(1, 100), tcpSegment(101, 100), tcpSegment(202, 100)]) {
    await peer.send(vxlan(VNI, s), r.udpPort);
  }
  const gap = await r.receive(2);
  assert.deepEqual(gap.map((f) => f.length - 54), [200, 100]);
  assert.equal(r.c[RX_COALESCED], 1);
  // A corrupted segment is handed on as it came (its destination drops it), merged with nothing.
  const bad = tcpSegment(401, 100, 0x10, true);
  for (const s of [tcpSegment(301, 100), bad, tcpSegment(501, 100)]) {
    await peer.send(vxlan(VNI, s), r.udpPort);
  }
  const got = await r.receive(3);
  assert.equal(got.length, 3);
  assert.deepEqual(got[1], bad);
  assert.equal(r.c[RX_COALESCED], 1);
  // Not ACK alone (SYN, FIN, ...), or no payload: never merged.
  for (const s of [tcpSegment(601, 100, 0x11), tcpSegment(701, 100, 0x10)]) {
    await peer.send(vxlan(VNI, s), r.udpPort);
  }
  assert.equal((await r.receive(2)).length, 2);
  assert.equal(r.c[RX_COALESCED], 1);
});

/** A second VXLAN port on 127.0.0.2 (the rig's own remote), receiving what the rig sends. */
function receiver(r: Rig) {
  const table = Fdb.create({ capacity: 64 });
  const port = VxlanPort.open({
    name: "vx2",
    vni: VNI,
    local: "127.0.0.2",
    remotes: ["127.0.0.1"],
    udpPort: r.udpPort,
    remoteMacs: [],
    strict: false,
    mtu: 1450,
  }, table);
  const c = new Float64Array(COUNTER_FIELDS);
  const dp = new VxlanDatapath(port.spec, c, Fdb.attach(table.buffer), true);
  const batch = new FrameBatch();
  return {
    c,
    batch,
    /** One receive(): the frames it handed out, copied. */
    receiveOnce(): Uint8Array[] {
      const k = dp.receive(batch);
      const out = Array.from({ length: k }, (_, i) => {
        const o = batch.offset[i];
        return batch.bytes[i].slice(o, o + batch.length[i]);
      });
      dp.release();
      return out;
    },
    [Symbol.dispose]() {
      dp.close();
      port.close();
    },
  };
}

/** Sends a GSO super-frame from the rig to the VTEP that learned `dst`. */
function sendSuperFrame(r: Rig, big: Uint8Array, offload: number, csumOffset: number) {
  assert.ok(r.dp.transmit(big, superFrame(big, offload, csumOffset)));
  r.dp.flush();
}

/**
 * `big` as a GSO super-frame with segments of 1400 payload bytes, its checksum partial at
 * `csumStart` (34: after Ethernet and IPv4 at 14; 38 behind an 802.1Q tag).
 */
function superFrame(
  big: Uint8Array,
  offload: number,
  csumOffset: number,
  csumStart = 34,
): EgressFrame {
  const g = new EgressFrame().setWhole(big, 0, big.length);
  g.offload = offload | OFFLOAD_CSUM;
  g.csumStart = csumStart;
  g.csumOffset = csumOffset;
  g.gsoSize = 1400;
  return g;
}

Deno.test("vxlan: a UDP_SEGMENT run arrives as one message (UDP_GRO) and its segments merge into one frame", async () => {
  await using r = await rig({ mtu: 1450 }, ["127.0.0.3"]);
  using rx = receiver(r);
  // The rig learns B behind 127.0.0.2 from a frame the receiver's VTEP sends it.
  const s = dgram.createSocket("udp4");
  await new Promise<void>((ok) => s.bind(0, "127.0.0.2", () => ok()));
  await new Promise<void>((ok, fail) =>
    s.send(vxlan(VNI, frame(A, B)), r.udpPort, "127.0.0.1", (e) => e ? fail(e) : ok())
  );
  s.close();
  assert.equal((await r.receive(1)).length, 1);

  const payload = 64000; // 46 segments: more than one receive burst (32) takes one by one
  const big = tcpFrame(null, payload);
  for (let i = 54; i < big.length; i++) big[i] = (i * 13) & 0xff;
  sendSuperFrame(r, big, OFFLOAD_TSO4, 16);
  assert.equal(r.c[TX_UDP_GSO], 2);
  const got = rx.receiveOnce();
  assert.equal(got.length, 1, "the two runs came whole and merged");
  assert.equal(got[0].length, big.length);
  assert.deepEqual(got[0].subarray(54), big.subarray(54));
  assert.equal(rx.batch.offload[0], OFFLOAD_TSO4 | OFFLOAD_CSUM);
  assert.equal(rx.batch.gsoSize[0], 1400);
  assert.equal(rx.c[RX_PACKETS], 46);
  assert.equal(rx.c[RX_COALESCED], 45);
});

Deno.test("vxlan: a run of more datagrams than a batch takes is handed out over two receives", async () => {
  await using r = await rig({ mtu: 1450 }, ["127.0.0.3"]);
  using rx = receiver(r);
  // Flooded (no MAC learned): to 127.0.0.2 and 127.0.0.3 alike.
  // UDP segments (USO) never merge: 40 datagrams in one message, 32 per receive().
  const count = 40;
  const udp = tcpFrame(null, 8 - 20 + count * 1400);
  udp[23] = 17; // IP protocol UDP
  const l4len = udp.length - 34;
  udp.set([0x30, 0x39, 0x14, 0x51, l4len >>> 8, l4len & 0xff, 0, 0], 34);
  for (let i = 42; i < udp.length; i++) udp[i] = (i * 5) & 0xff;
  // The IPv4 header checksum changed with the protocol: the segments get their own.
  sendSuperFrame(r, udp, OFFLOAD_USO, 6);
  assert.equal(r.c[TX_UDP_GSO], 2, "one run per VTEP");
  const first = rx.receiveOnce();
  const second = rx.receiveOnce();
  assert.deepEqual([first.length, second.length], [32, count - 32]);
  const all = [...first, ...second];
  all.forEach((f, k) => {
    assert.equal(f.length, 42 + 1400);
    assert.deepEqual(f.subarray(42), udp.subarray(42 + 1400 * k, 42 + 1400 * (k + 1)), `${k}`);
  });
  assert.equal(rx.c[RX_PACKETS], count);
  assert.equal(rx.receiveOnce().length, 0);
});
