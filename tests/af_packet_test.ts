// The AF_PACKET uplink port on a veth pair whose far end sits in a network namespace: the
// datapath object is driven directly on this thread (receive/release/transmit/flush).
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { openFdCount } from "../ffi/fd.ts";
import { viewMapping } from "../ffi/mem.ts";
import { recvFrame, sendFrame } from "../ffi/packet.ts";
import { AfPacketPort, type AfPacketPortOptions } from "../ports/af_packet/af_packet_port.ts";
import { createAfPacketDatapath } from "../ports/af_packet/datapath.ts";
import { BLOCK_STATUS, TP_STATUS_USER } from "../ports/af_packet/tpacket.ts";
import {
  COUNTER_FIELDS,
  DROP_LINK_DOWN,
  DROP_NO_BUFFER,
  DROP_TOO_BIG,
  RX_BYTES,
  RX_CSUM_PARTIAL,
  RX_GSO,
  RX_PACKETS,
  TX_PACKETS,
} from "../ports/counters.ts";
import { type DatapathPort, EgressFrame, FrameBatch } from "../ports/port.ts";
import { OFFLOAD_CSUM, OFFLOAD_TSO4 } from "../ports/offload/virtio_net_hdr.ts";
import { createVethNetns, netnsSkipReason, run, type VethNetns } from "../peers/netns.ts";
import { checkTestFrame, diffFrames, ETHERTYPE_TEST, ethFrame, formatMac } from "../peers/pcap.ts";

const skip = netnsSkipReason();
if (skip) console.warn(`SKIPPING AF_PACKET namespace tests: ${skip}`);
const hasTcpdump = skip === null && (() => {
  try {
    return new Deno.Command("tcpdump", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();
if (skip === null && !hasTcpdump) console.warn("SKIPPING AF_PACKET TX capture tests: no tcpdump");

const NS_MAC = "02:00:00:00:aa:01"; // frames the namespace sends
const SW_MAC = "02:00:00:00:aa:02"; // frames the switch transmits
const BCAST = "ff:ff:ff:ff:ff:ff";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const nsTest = (name: string, fn: () => Promise<void>, ignore = false) =>
  Deno.test({ name, ignore: skip !== null || ignore, fn });

interface Opened {
  port: AfPacketPort;
  dp: DatapathPort;
  c: Float64Array;
  [Symbol.dispose](): void;
}

function openPort(ns: VethNetns, options: AfPacketPortOptions = {}, mtu?: number): Opened {
  const port = AfPacketPort.open(
    { name: "uplink", interface: ns.hostIf, mtu },
    { linkPollMs: 0, ...options },
  );
  const c = new Float64Array(COUNTER_FIELDS);
  return {
    port,
    dp: createAfPacketDatapath(port.spec, c),
    c,
    [Symbol.dispose]: () => port.close(),
  };
}

const isTestFrame = (f: Uint8Array) => {
  let t = (f[12] << 8) | f[13];
  for (let at = 16; (t === 0x8100 || t === 0x88a8) && at + 2 <= f.length; at += 4) {
    t = (f[at] << 8) | f[at + 1];
  }
  return t === ETHERTYPE_TEST;
};

/** Receives (and releases) until `want` frames passing `keep` arrived; copies them out. */
async function receive(
  dp: DatapathPort,
  want: number,
  timeoutMs = 3000,
  keep = isTestFrame,
): Promise<Uint8Array[]> {
  const batch = new FrameBatch();
  const got: Uint8Array[] = [];
  const end = Date.now() + timeoutMs;
  while (got.length < want && Date.now() < end) {
    const n = dp.receive(batch);
    for (let i = 0; i < n; i++) {
      const f = batch.bytes[i].slice(batch.offset[i], batch.offset[i] + batch.length[i]);
      if (keep(f)) got.push(f);
    }
    dp.release();
    if (n === 0) await sleep(1);
  }
  return got;
}

/** Frames with our test ethertype read from a plain socket (`want` of them, or a timeout). */
async function capture(fd: number, want: number, timeoutMs = 2000): Promise<Uint8Array[]> {
  const buf = new Uint8Array(16384);
  const got: Uint8Array[] = [];
  const end = Date.now() + timeoutMs;
  while (got.length < want && Date.now() < end) {
    const n = recvFrame(fd, buf);
    if (n > 0 && n <= buf.length && isTestFrame(buf.subarray(0, n))) got.push(buf.slice(0, n));
    else if (n < 0) await sleep(1);
  }
  return got;
}

/** An egress frame that sends `f` unchanged. */
const whole = (f: Uint8Array): EgressFrame => new EgressFrame().setWhole(f, 0, f.length);

function sendAll(fd: number, frames: Uint8Array[]): void {
  for (const f of frames) assert.equal(sendFrame(fd, f, f.length), f.length, "send in namespace");
}

Deno.test("a missing interface is a clear error naming it", () => {
  assert.throws(
    () => AfPacketPort.open({ name: "uplink", interface: "nosuch-afp0" }),
    (err: Error) => {
      assert.match(err.message, /af-packet port "uplink" on interface "nosuch-afp0"/);
      assert.match(err.message, /does not exist.*`ip link`.*ENODEV/);
      return true;
    },
  );
});

Deno.test("without CAP_NET_RAW the error says to run as root or grant it", async () => {
  const open = () => {
    try {
      AfPacketPort.open({ name: "uplink", interface: "lo" }).close();
      return "opened";
    } catch (err) {
      return (err as Error).message;
    }
  };
  const expected = /socket AF_PACKET \(the switch needs root or CAP_NET_RAW\): EPERM/;
  if (Deno.uid() !== 0) {
    assert.match(open(), expected);
    return;
  }
  // Root without CAP_NET_RAW in its bounding set: execve leaves it out of the new process.
  const module = new URL("../ports/af_packet/af_packet_port.ts", import.meta.url);
  const code = `import { AfPacketPort } from "${module}";
    try { AfPacketPort.open({ name: "uplink", interface: "lo" }); console.log("opened"); }
    catch (e) { console.log(e.message); }`;
  const out = await run("setpriv", ["--bounding-set=-net_raw", Deno.execPath(), "eval", code]);
  assert.match(out, expected);
});

nsTest("receive: frames from the wire arrive byte-exact, VLAN tags restored", async () => {
  await using ns = await createVethNetns({ mtu: 9200 });
  using p = openPort(ns);
  const fd = ns.socket();
  const frames = [60, 61, 64, 128, 1514, 9014].map((length, seq) =>
    ethFrame({ dst: BCAST, src: NS_MAC, length, seq })
  );
  frames.push(
    ethFrame({ dst: BCAST, src: NS_MAC, vlan: { id: 100, pcp: 5 }, length: 200, seq: 6 }),
  );
  frames.push(ethFrame({ dst: BCAST, src: NS_MAC, vlan: 0, length: 70, seq: 7 })); // priority tag
  // QinQ: the kernel strips only the outer 802.1ad tag (TP_STATUS_VLAN_TPID_VALID says 88a8).
  const qinq = ethFrame({ dst: BCAST, src: NS_MAC, vlan: 42, length: 300, seq: 8 });
  const outer = new Uint8Array(qinq.length + 4);
  outer.set(qinq.subarray(0, 12));
  outer.set([0x88, 0xa8, 0x00, 0x07], 12);
  outer.set(qinq.subarray(12), 16);
  frames.push(outer);
  sendAll(fd, frames);
  const got = await receive(p.dp, frames.length);
  assert.equal(diffFrames(frames, got), null);
  // A 9100-byte frame is over MAX_FRAME_LEN: dropped and counted, the next one still arrives.
  const next = ethFrame({ dst: BCAST, src: NS_MAC, length: 100, seq: 9 });
  sendAll(fd, [ethFrame({ dst: BCAST, src: NS_MAC, length: 9100, seq: 10 }), next]);
  assert.equal(diffFrames([next], await receive(p.dp, 1)), null);
  assert.equal(p.c[DROP_TOO_BIG], 1);
  assert.ok(p.c[RX_PACKETS] >= frames.length + 1);
  assert.ok(p.c[RX_BYTES] >= frames.reduce((n, f) => n + f.length, 0));
});

nsTest(
  "receive: frames are read before the kernel hands their block over (low-rate latency)",
  async () => {
    await using ns = await createVethNetns();
    const fd = ns.socket();
    // A retire timer far longer than the wait below: only reading the open block gets the frame.
    using p = openPort(ns, { geometry: { rxBlockNr: 4, rxRetireMs: 2000 } });
    for (let round = 0; round < 3; round++) {
      const t0 = performance.now();
      sendAll(fd, [ethFrame({ dst: BCAST, src: NS_MAC, seq: round })]);
      const got = await receive(p.dp, 1, 500);
      const ms = performance.now() - t0;
      assert.equal(got.length, 1, `round ${round}: the frame came in ${ms.toFixed(1)} ms`);
      assert.equal(checkTestFrame(got[0]).seq, round);
    }
    assert.equal(p.c[RX_PACKETS], 3);
  },
);

nsTest(
  "receive: a block goes back to the kernel only once all its frames were released",
  async () => {
    await using ns = await createVethNetns();
    const fd = ns.socket();
    {
      // A slow retire timer, so the 40 frames surely share block 0.
      using p = openPort(ns, { geometry: { rxBlockNr: 4, rxRetireMs: 300 } });
      const frames = Array.from(
        { length: 40 },
        (_, seq) => ethFrame({ dst: BCAST, src: NS_MAC, seq }),
      );
      sendAll(fd, frames);
      const status = new Uint32Array(viewMapping(p.port.spec.rx!.address, 4096));
      const batch = new FrameBatch();
      let n = 0;
      for (let i = 0; i < 2000 && n === 0; i++) {
        n = p.dp.receive(batch);
        if (n === 0) {
          await sleep(1);
        }
      }
      assert.equal(n, 32, "a full burst out of a 40-frame block");
      p.dp.release();
      // The burst was read while the kernel still filled the block; once its retire timer
      // hands it over, it stays ours until its last 8 frames were read and released.
      for (let i = 0; i < 200 && !(Atomics.load(status, BLOCK_STATUS / 4) & TP_STATUS_USER); i++) {
        await sleep(10);
      }
      p.dp.release();
      assert.ok(Atomics.load(status, BLOCK_STATUS / 4) & TP_STATUS_USER, "block 0 still ours");
      for (let i = 0; i < 32; i++) {
        const f = batch.bytes[i].subarray(batch.offset[i], batch.offset[i] + batch.length[i]);
        assert.equal(checkTestFrame(f).seq, i, "released burst's frames are intact");
      }
      assert.equal(p.dp.receive(batch), 8);
      p.dp.release();
      assert.equal(Atomics.load(status, BLOCK_STATUS / 4), 0, "block 0 back with the kernel");
    }
    // Many times the 4-block ring (256 KiB), in waves: every frame arrives, in order, none lost.
    using p = openPort(ns, { geometry: { rxBlockNr: 4 } });
    const got: number[] = [];
    for (let wave = 0; wave < 20; wave++) {
      const burst = Array.from(
        { length: 100 },
        (_, i) => ethFrame({ dst: BCAST, src: NS_MAC, length: 1000, seq: 1000 + wave * 100 + i }),
      );
      sendAll(fd, burst);
      for (const f of await receive(p.dp, 100)) got.push(checkTestFrame(f).seq);
    }
    assert.deepEqual(got, Array.from({ length: 2000 }, (_, i) => 1000 + i));
    assert.equal(p.port.kernelStats().drops, 0);
  },
);

nsTest("transmit: frames reach the wire byte-identical, tags pushed and popped", async () => {
  await using ns = await createVethNetns();
  using p = openPort(ns);
  const plain = [60, 1514].map((length, seq) => ethFrame({ dst: BCAST, src: SW_MAC, length, seq }));
  const tagged = ethFrame({ dst: BCAST, src: SW_MAC, vlan: 7, length: 1518, seq: 2 });
  const untagged = ethFrame({ dst: BCAST, src: SW_MAC, length: 300, seq: 3 });
  const tag = Uint8Array.from([0x81, 0x00, 0x20, 0x07]);
  /** Egress frames as the bridge builds them: addresses (+ tag) + EtherType in the head. */
  const egress = (head: ArrayLike<number>, f: Uint8Array, tailStart: number): EgressFrame => {
    const e = new EgressFrame();
    e.head.set(head);
    e.headLength = head.length;
    e.tailStart = tailStart;
    e.tailEnd = f.length;
    e.length = head.length + f.length - tailStart;
    return e;
  };
  const push = (f: Uint8Array) =>
    egress([...f.subarray(0, 12), ...tag, ...f.subarray(12, 16)], f, 16);
  const pop = (f: Uint8Array) => egress(f.subarray(0, 12), f, 16);
  const expected = [
    ...plain,
    tagged,
    Uint8Array.from([...untagged.subarray(0, 12), ...tag, ...untagged.subarray(12)]),
    Uint8Array.from([...tagged.subarray(0, 12), ...tagged.subarray(16)]),
  ];
  const cap = await ns.capture(expected.length, ["ether", "src", SW_MAC]);
  for (const f of plain) assert.ok(p.dp.transmit(f, whole(f)));
  assert.ok(p.dp.transmit(tagged, whole(tagged)), "1518 B with an 802.1Q tag fits MTU 1500");
  assert.ok(p.dp.transmit(untagged, push(untagged)));
  assert.ok(p.dp.transmit(tagged, pop(tagged)));
  p.dp.flush();
  assert.equal(diffFrames(expected, await cap.done()), null);
  assert.equal(p.c[TX_PACKETS], expected.length);
});

nsTest("transmit: frames over the MTU are dropped and counted", async () => {
  await using ns = await createVethNetns();
  using p = openPort(ns);
  const fd = ns.socket();
  const over = ethFrame({ dst: BCAST, src: SW_MAC, length: 1515, seq: 1 });
  const overTagged = ethFrame({ dst: BCAST, src: SW_MAC, vlan: 5, length: 1519, seq: 2 });
  const fits = ethFrame({ dst: BCAST, src: SW_MAC, length: 1514, seq: 3 });
  assert.equal(p.dp.transmit(over, whole(over)), false);
  assert.equal(p.dp.transmit(overTagged, whole(overTagged)), false);
  assert.ok(p.dp.transmit(fits, whole(fits)));
  p.dp.flush();
  assert.equal(p.c[DROP_TOO_BIG], 2);
  assert.equal(p.c[TX_PACKETS], 1);
  // A configured MTU below the interface's is what the port enforces.
  using small = openPort(ns, {}, 1000);
  assert.equal(small.port.mtu, 1000);
  assert.equal(small.dp.transmit(fits, whole(fits)), false);
  assert.equal(diffFrames([fits], await capture(fd, 2, 300)), null);
});

nsTest("neither the switch's own frames nor the host's outgoing ones are received", async () => {
  await using ns = await createVethNetns({ hostAddr: "10.9.0.1/24" });
  using p = openPort(ns);
  const nsMac = (await ns.exec(["cat", `/sys/class/net/${ns.nsIf}/address`])).trim();
  for (let seq = 0; seq < 20; seq++) {
    const f = ethFrame({ dst: BCAST, src: SW_MAC, seq });
    assert.ok(p.dp.transmit(f, whole(f)));
  }
  p.dp.flush();
  // The host stack sends UDP to a closed port in the namespace: its ARP request and datagrams
  // leave through the uplink, the ARP reply and ICMP port unreachables come in.
  const udp = dgram.createSocket("udp4");
  for (let i = 0; i < 3; i++) {
    await new Promise((resolve) => udp.send("x", 9, "10.9.0.2", resolve));
    await sleep(20);
  }
  await new Promise<void>((resolve) => udp.close(resolve));
  const seen = await receive(p.dp, 1000, 300, () => true);
  const sources = new Set(seen.map((f) => formatMac(f, 6)));
  assert.ok(sources.has(nsMac), `replies from the namespace arrive (saw ${[...sources]})`);
  assert.ok(!sources.has(p.port.mac), "the host's outgoing requests are not received");
  assert.ok(!sources.has(SW_MAC), "the switch's transmitted frames are not received");
});

nsTest("link down and up are reported; the port keeps working across them", async () => {
  await using ns = await createVethNetns();
  using p = openPort(ns);
  // IFF_RUNNING follows the operstate, which linkwatch updates a moment after the change.
  const settle = async (want: string) => {
    for (let i = 0; i < 200 && p.port.pollLink() !== want; i++) await sleep(10);
    return p.port.state;
  };
  const f = ethFrame({ dst: BCAST, src: SW_MAC, seq: 1 });
  assert.equal(p.port.state, "up");
  await ns.setLink("host", false);
  assert.equal(p.port.pollLink(), "down", "IFF_UP is cleared at once");
  p.dp.receive(new FrameBatch()); // the datapath reads the link state once per burst
  assert.equal(p.dp.transmit(f, whole(f)), false);
  assert.equal(p.c[DROP_LINK_DOWN], 1);
  await ns.setLink("host", true);
  assert.equal(await settle("up"), "up");
  await ns.setLink("ns", false); // no carrier on our end: up but not running
  assert.equal(await settle("down"), "down");
  await ns.setLink("ns", true);
  assert.equal(await settle("up"), "up");
  await ns.waitOperUp();
  // A socket's first send after its link went down fails once with ENETDOWN (sk_err): the
  // datapath's kick is retried on the next poll, so the frame still goes out.
  const fd = ns.socket();
  const back = ethFrame({ dst: BCAST, src: SW_MAC, seq: 4 });
  p.dp.receive(new FrameBatch());
  assert.ok(p.dp.transmit(back, whole(back)));
  p.dp.flush();
  sendAll(fd, [ethFrame({ dst: BCAST, src: NS_MAC, seq: 2 })]);
  assert.equal((await receive(p.dp, 1)).length, 1, "receiving again after the link came back");
  assert.equal(diffFrames([back], await capture(fd, 1)), null, "transmitting again");

  // The interface vanishes and is recreated under the same name: the socket follows it.
  await run("ip", ["link", "del", ns.hostIf]);
  assert.equal(p.port.pollLink(), "missing");
  await ns.addVeth();
  assert.equal(await settle("up"), "up");
  const fd2 = ns.socket();
  const again = ethFrame({ dst: BCAST, src: NS_MAC, seq: 3 });
  sendAll(fd2, [again]);
  assert.equal(diffFrames([again], await receive(p.dp, 1)), null);
});

nsTest("a port opened on a down interface reports down, then comes up and works", async () => {
  await using ns = await createVethNetns();
  await ns.setLink("host", false);
  using p = openPort(ns);
  assert.equal(p.port.state, "down");
  await ns.setLink("host", true);
  for (let i = 0; i < 200 && p.port.pollLink() !== "up"; i++) await sleep(10);
  assert.equal(p.port.state, "up");
  await ns.waitOperUp();
  const fd = ns.socket();
  const f = ethFrame({ dst: BCAST, src: NS_MAC, seq: 1 });
  sendAll(fd, [f]);
  assert.equal(diffFrames([f], await receive(p.dp, 1)), null);
  const out = ethFrame({ dst: BCAST, src: SW_MAC, seq: 2 });
  assert.ok(p.dp.transmit(out, whole(out)));
  p.dp.flush();
  p.dp.receive(new FrameBatch()); // retries the kick a pending ENETDOWN (from bind) refused
  assert.equal(diffFrames([out], await capture(fd, 1)), null);
});

nsTest(
  "TCP from a TSO/GSO peer arrives as GSO frames with their virtio_net_hdr facts, none dropped",
  async () => {
    await using ns = await createVethNetns({ hostAddr: "10.9.0.1/24" });
    using p = openPort(ns);
    const listener = Deno.listen({ hostname: "10.9.0.1", port: 0 });
    const { port } = listener.addr as Deno.NetAddr;
    const server = (async () => {
      const conn = await listener.accept();
      let n = 0;
      for await (const chunk of conn.readable) n += chunk.length;
      return n;
    })();
    // A real TCP sender in the namespace: veth has TSO on, so its segments cross unsplit.
    const code = `const c = await Deno.connect({ hostname: "10.9.0.1", port: ${port} });
    const b = new Uint8Array(1 << 20);
    for (let o = 0; o < b.length;) o += await c.write(b.subarray(o));
    c.close();`;
    let exited = false;
    const client = ns.exec([Deno.execPath(), "eval", code]).finally(() => exited = true);
    const batch = new FrameBatch();
    let longest = 0;
    let gso = 0;
    const problems: string[] = [];
    for (let quiet = 0; quiet < 50;) {
      const n = p.dp.receive(batch);
      for (let i = 0; i < n; i++) {
        const len = batch.length[i];
        longest = Math.max(longest, len);
        if ((batch.offload[i] & OFFLOAD_TSO4) === 0) continue;
        gso++;
        // IPv4 without options: the TCP header (and its checksum field) at 34 + 16.
        const wrong = (batch.offload[i] & OFFLOAD_CSUM) === 0 || batch.csumStart[i] !== 34 ||
          batch.csumOffset[i] !== 16 || batch.gsoSize[i] !== 1448;
        if (wrong) problems.push(`${len} B: ${batch.csumStart[i]}+${batch.csumOffset[i]}`);
      }
      p.dp.release();
      if (exited && n === 0) quiet++;
      await sleep(0);
    }
    await client;
    assert.equal(await server, 1 << 20);
    listener.close();
    assert.equal(p.c[DROP_TOO_BIG], 0, "no frame dropped as too big");
    assert.ok(longest > 1500 + 26, `frames longer than the wire came as they are (${longest})`);
    assert.ok(gso > 0 && p.c[RX_GSO] === gso, `GSO frames counted (${gso}, ${p.c[RX_GSO]})`);
    assert.deepEqual(problems, [], "each with csum_start at TCP, gso_size the MSS");
    assert.ok(p.c[RX_CSUM_PARTIAL] > 0, "and their checksums were left to offload");
  },
);

nsTest("a full TX ring drops and counts; flushing frees it", async () => {
  await using ns = await createVethNetns();
  using p = openPort(ns, { geometry: { txBlockNr: 7 } }); // 7 slots of 64 KiB
  const frames = Array.from({ length: 10 }, (_, seq) => ethFrame({ dst: BCAST, src: SW_MAC, seq }));
  const cap = await ns.capture(7 + 7, ["ether", "src", SW_MAC]);
  const sent = frames.map((f) => p.dp.transmit(f, whole(f)));
  assert.deepEqual(sent, [...Array(7).fill(true), false, false, false]);
  assert.equal(p.c[DROP_NO_BUFFER], 3);
  p.dp.flush();
  await sleep(20); // slots come back as the skbs are freed
  assert.ok(frames.slice(3).every((f) => p.dp.transmit(f, whole(f))), "slots free again");
  p.dp.flush();
  const got = await cap.done();
  assert.equal(diffFrames([...frames.slice(0, 7), ...frames.slice(3)], got), null);
}, !hasTcpdump);

nsTest("the per-frame syscall variant moves the same bytes", async () => {
  await using ns = await createVethNetns();
  using p = openPort(ns, { variant: "syscall" });
  assert.equal(p.port.spec.rx, null);
  const fd = ns.socket();
  const frames = [60, 1514].map((length, seq) =>
    ethFrame({ dst: BCAST, src: NS_MAC, length, seq })
  );
  sendAll(fd, frames);
  assert.equal(diffFrames(frames, await receive(p.dp, 2)), null);
  const out = ethFrame({ dst: BCAST, src: SW_MAC, length: 700, seq: 9 });
  assert.ok(p.dp.transmit(out, whole(out)));
  assert.equal(diffFrames([out], await capture(fd, 1)), null);
});

nsTest("closing leaks no fd and no mapping", async () => {
  await using ns = await createVethNetns();
  const ringMaps = () =>
    Deno.readTextFileSync("/proc/self/maps").split("\n").filter((l) => l.includes("socket:["))
      .length;
  const fds = openFdCount();
  const maps = ringMaps();
  for (let i = 0; i < 5; i++) {
    const ring = AfPacketPort.open({ name: "uplink", interface: ns.hostIf }, { linkPollMs: 10 });
    const plain = AfPacketPort.open({ name: "uplink2", interface: ns.hostIf }, {
      variant: "syscall",
    });
    assert.equal(ringMaps(), maps + 1);
    await sleep(15); // let the link timer run once
    ring.close();
    plain.close();
  }
  assert.equal(openFdCount(), fds);
  assert.equal(ringMaps(), maps);
});
