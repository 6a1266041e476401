// The L2 safety modules on their own, no root and no peers: token bucket accuracy on a synthetic
// clock, port security verdicts on hand-built ARP/IPv4/IPv6 frames, storm classes, loop guard
// decisions, mirror wrappers, the topology sections, and the forwarder with guards bound.
import assert from "node:assert/strict";
import { Clock, createBucket, TokenBucket } from "../../switch/token_bucket.ts";
import {
  createPinned,
  parseIpv4,
  parseIpv6,
  pinnedMac,
  PortSecurity,
  type PortSecuritySpec,
  SECURITY_BAD_IP,
  SECURITY_BAD_MAC,
  SECURITY_OK,
} from "../../switch/port_security.ts";
import { StormControl } from "../../switch/storm_control.ts";
import { LoopGuard } from "../../switch/loop_guard.ts";
import { frameVlan, MirrorEgress, MirrorIngress } from "../../switch/mirror.ts";
import { IngressGuard, PolicedPort, type PortGuardSpec } from "../../switch/port_guard.ts";
import {
  DROP_EGRESS_POLICED,
  DROP_LOOP,
  DROP_POLICED,
  DROP_SPOOFED,
  DROP_SPOOFED_IP,
  DROP_STORM_BROADCAST,
  DROP_STORM_MULTICAST,
  DROP_STORM_UNKNOWN_UNICAST,
  MIRRORED,
  SAFETY_FIELDS,
} from "../../switch/safety_counters.ts";
import { Bridge } from "../../switch/bridge.ts";
import { Forwarder } from "../../switch/forward.ts";
import { type DatapathPort, EgressFrame, FrameBatch } from "../../ports/port.ts";
import { parseMac } from "../../ports/ethernet.ts";
import { parseTopology, TopologyError } from "../../switch/topology.ts";
import { SafetyPlane } from "../../switch/safety.ts";

const MAC_A = "52:54:00:00:00:0a";
const MAC_B = "52:54:00:00:00:0b";
const BCAST = "ff:ff:ff:ff:ff:ff";
const mac = (s: string) => s.split(":").map((h) => parseInt(h, 16));

function frame(dst: string, src: string, type: number, payload: number[] = [], pad = 60) {
  const bytes = [...mac(dst), ...mac(src), type >> 8, type & 0xff, ...payload];
  while (bytes.length < pad) bytes.push(0);
  return Uint8Array.from(bytes);
}
const ip4 = (s: string) => s.split(".").map(Number);
const ip6 = (s: string) =>
  parseIpv6(s)!.flatMap((w) => [w >>> 24, (w >>> 16) & 255, (w >>> 8) & 255, w & 255]);

function arp(src: string, sha: string, spa: string, tpa: string, op = 2) {
  return frame(BCAST, src, 0x0806, [
    0,
    1,
    8,
    0,
    6,
    4,
    0,
    op,
    ...mac(sha),
    ...ip4(spa),
    0,
    0,
    0,
    0,
    0,
    0,
    ...ip4(tpa),
  ]);
}
function ipv4(src: string, from: string, to: string) {
  return frame(MAC_B, src, 0x0800, [
    0x45,
    0,
    0,
    28,
    0,
    0,
    0,
    0,
    64,
    17,
    0,
    0,
    ...ip4(from),
    ...ip4(to),
  ]);
}
function ipv6(src: string, from: string, to: string, icmp: number[] = []) {
  const next = icmp.length ? 58 : 17;
  return frame(MAC_B, src, 0x86dd, [
    0x60,
    0,
    0,
    0,
    0,
    icmp.length,
    next,
    255,
    ...ip6(from),
    ...ip6(to),
    ...icmp,
  ], 100);
}
const na = (target: string) => [136, 0, 0, 0, 0x60, 0, 0, 0, ...ip6(target)];

function security(o: Partial<Omit<PortSecuritySpec, "macs">> & { macs?: string[] }): PortSecurity {
  return new PortSecurity({
    macs: (o.macs ?? []).flatMap((m) => {
      const { hi, lo } = parseMac(m);
      return [hi, lo | 0];
    }),
    learnOnce: o.learnOnce ?? false,
    pinned: o.pinned ?? createPinned(),
    ipv4: o.ipv4 ?? null,
    ipv6: o.ipv6 ?? null,
  });
}
const check = (s: PortSecurity, f: Uint8Array) => s.check(f, 0, f.length);

Deno.test("token bucket: delivers its rate over 10 s of a synthetic clock, across the 2^32 wrap", () => {
  for (const [rate, burst, step] of [[1000, 10, 37], [12_500_000, 20_000, 3], [7, 1, 1000]]) {
    const start = -5_000_000; // the microsecond clock wraps from 2^31 - 1 to -2^31 in this run
    const spec = createBucket(rate, burst, 0x7fffffff + start);
    const b = new TokenBucket(spec);
    let taken = 0;
    let now = 0x7fffffff + start;
    const cost = rate > 1e6 ? 1500 : 1;
    for (let t = 0; t < 10_000_000; t += step) {
      now = (0x7fffffff + start + t) | 0;
      while (b.take(cost, now)) taken += cost;
    }
    const expected = rate * 10 + burst;
    assert.ok(
      Math.abs(taken - expected) <= expected * 0.01 + cost,
      `rate ${rate}: took ${taken}, expected ${expected}`,
    );
  }
});

Deno.test("token bucket: an empty bucket refuses without taking; burst caps an idle refill", () => {
  const b = new TokenBucket(createBucket(1000, 5, 0));
  for (let i = 0; i < 5; i++) assert.ok(b.take(1, 0));
  assert.equal(b.take(1, 0), false);
  assert.equal(b.tokens, 0);
  assert.ok(b.take(1, 1000)); // 1 ms later: one token
  assert.equal(b.take(1, 1000), false);
  for (let i = 0; i < 5; i++) assert.ok(b.take(1, 60_000_000));
  assert.equal(b.take(1, 60_000_000), false);
});

Deno.test("token bucket: a cost above the burst passes from a full bucket and is repaid", () => {
  const b = new TokenBucket(createBucket(1000, 100, 0));
  assert.equal(b.take(150, 0), true, "a full bucket lets a 150-token frame through");
  assert.equal(b.tokens, -50);
  assert.equal(b.take(1, 0), false);
  assert.equal(b.take(1, 50_000), false, "50 ms: the debt is repaid, nothing more");
  assert.equal(b.take(1, 51_000), true);
  assert.equal(b.take(150, 51_000), false, "not full: the big frame waits");
  assert.equal(b.take(150, 200_000), true);
});

Deno.test("port security: allowedMacs", () => {
  const s = security({ macs: [MAC_A] });
  assert.equal(check(s, frame(MAC_B, MAC_A, 0x88b5)), SECURITY_OK);
  assert.equal(check(s, frame(MAC_A, MAC_B, 0x88b5)), SECURITY_BAD_MAC);
});

Deno.test("port security: learnOnce pins the first source MAC, shared through its buffer", () => {
  const pinned = createPinned();
  const s = security({ learnOnce: true, pinned });
  assert.equal(pinnedMac(pinned), null);
  assert.equal(check(s, frame(MAC_B, MAC_A, 0x88b5)), SECURITY_OK);
  assert.deepEqual(pinnedMac(pinned), [parseMac(MAC_A).hi, parseMac(MAC_A).lo]);
  assert.equal(check(s, frame(MAC_A, MAC_B, 0x88b5)), SECURITY_BAD_MAC);
  // Another worker's view of the same port sees the same pin.
  const other = security({ learnOnce: true, pinned });
  assert.equal(check(other, frame(MAC_A, MAC_B, 0x88b5)), SECURITY_BAD_MAC);
  assert.equal(check(other, frame(MAC_B, MAC_A, 0x88b5)), SECURITY_OK);
});

Deno.test("port security: ARP sender and IPv4 source must be the port's own", () => {
  const s = security({ macs: [MAC_A], ipv4: [parseIpv4("10.0.0.1")!] });
  assert.equal(check(s, arp(MAC_A, MAC_A, "10.0.0.1", "10.0.0.2")), SECURITY_OK);
  assert.equal(check(s, arp(MAC_A, MAC_A, "0.0.0.0", "10.0.0.1", 1)), SECURITY_OK, "ARP probe");
  assert.equal(check(s, arp(MAC_A, MAC_A, "10.0.0.2", "10.0.0.9")), SECURITY_BAD_IP, "claims .2");
  assert.equal(check(s, arp(MAC_A, MAC_B, "10.0.0.1", "10.0.0.9")), SECURITY_BAD_IP, "other SHA");
  assert.equal(
    check(s, arp(MAC_A, MAC_A, "10.0.0.1", "10.0.0.2").subarray(0, 30)),
    SECURITY_BAD_IP,
  );
  assert.equal(check(s, ipv4(MAC_A, "10.0.0.1", "10.0.0.2")), SECURITY_OK);
  assert.equal(check(s, ipv4(MAC_A, "0.0.0.0", "255.255.255.255")), SECURITY_OK, "DHCP");
  assert.equal(check(s, ipv4(MAC_A, "10.0.0.2", "10.0.0.3")), SECURITY_BAD_IP);
  // IPv6 is not checked without an ipv6 list; non-IP frames pass.
  assert.equal(check(s, ipv6(MAC_A, "2001:db8::9", "2001:db8::1")), SECURITY_OK);
  assert.equal(check(s, frame(MAC_B, MAC_A, 0x88b5)), SECURITY_OK);
  // Tagged frames are checked too.
  const tagged = (f: Uint8Array) =>
    Uint8Array.from([...f.subarray(0, 12), 0x81, 0, 0, 10, ...f.subarray(12)]);
  assert.equal(check(s, tagged(ipv4(MAC_A, "10.0.0.2", "10.0.0.3"))), SECURITY_BAD_IP);
  assert.equal(check(s, tagged(ipv4(MAC_A, "10.0.0.1", "10.0.0.3"))), SECURITY_OK);
  // An empty list forbids the family.
  const none = security({ ipv4: [] });
  assert.equal(check(none, ipv4(MAC_A, "10.0.0.1", "10.0.0.2")), SECURITY_BAD_IP);
});

Deno.test("port security: IPv6 source and Neighbor Advertisement target", () => {
  const s = security({ ipv6: parseIpv6("2001:db8::1") });
  assert.equal(check(s, ipv6(MAC_A, "2001:db8::1", "2001:db8::2")), SECURITY_OK);
  assert.equal(check(s, ipv6(MAC_A, "2001:db8::2", "2001:db8::1")), SECURITY_BAD_IP);
  assert.equal(check(s, ipv6(MAC_A, "::", "ff02::1:ff00:1")), SECURITY_OK, "DAD");
  // The EUI-64 link-local of the frame's own MAC is always the port's; another's is not.
  assert.equal(check(s, ipv6(MAC_A, "fe80::5054:ff:fe00:a", "ff02::1")), SECURITY_OK);
  assert.equal(check(s, ipv6(MAC_A, "fe80::5054:ff:fe00:b", "ff02::1")), SECURITY_BAD_IP);
  assert.equal(check(s, ipv6(MAC_A, "2001:db8::1", "ff02::1", na("2001:db8::1"))), SECURITY_OK);
  assert.equal(
    check(s, ipv6(MAC_A, "2001:db8::1", "ff02::1", na("2001:db8::99"))),
    SECURITY_BAD_IP,
    "NA for another's address",
  );
  // The same advertisement behind a hop-by-hop options header (8 bytes, next header ICMPv6).
  const hbh = (icmp: number[]) => {
    const f = ipv6(MAC_A, "2001:db8::1", "ff02::1", [58, 0, 1, 4, 0, 0, 0, 0, ...icmp]);
    f[20] = 0; // IPv6 next header: hop-by-hop options
    return f;
  };
  assert.equal(check(s, hbh(na("2001:db8::99"))), SECURITY_BAD_IP, "NA behind a hop-by-hop header");
  assert.equal(check(s, hbh(na("2001:db8::1"))), SECURITY_OK);
});

Deno.test("address parsing", () => {
  assert.equal(parseIpv4("10.0.0.1"), 0x0a000001);
  assert.equal(parseIpv4("256.0.0.1"), null);
  assert.equal(parseIpv4("10.0.0"), null);
  assert.deepEqual(parseIpv6("2001:db8::1"), [0x20010db8, 0, 0, 1]);
  assert.deepEqual(parseIpv6("::"), [0, 0, 0, 0]);
  assert.deepEqual(parseIpv6("::ffff:10.0.0.1"), [0, 0, 0xffff, 0x0a000001]);
  assert.deepEqual(parseIpv6("fe80::1:2:3:4:5:6"), [0xfe800000 | 0, 0x10002, 0x30004, 0x50006]);
  for (const bad of ["1::2::3", "2001:db8:1", "12345::", "1:2:3:4:5:6:7:8:9", "g::"]) {
    assert.equal(parseIpv6(bad), null, bad);
  }
});

Deno.test("storm control: broadcast, multicast and unknown unicast each have their bucket", () => {
  const spec = {
    broadcast: createBucket(1000, 2, 0),
    multicast: createBucket(1000, 1, 0),
    unknownUnicast: null,
  };
  const s = new StormControl(spec);
  const b = frame(BCAST, MAC_A, 0x88b5);
  const m = frame("01:00:5e:00:00:01", MAC_A, 0x88b5);
  assert.equal(s.group(b, 0, 0), -1);
  assert.equal(s.group(b, 0, 0), -1);
  assert.equal(s.group(b, 0, 0), DROP_STORM_BROADCAST);
  assert.equal(s.group(m, 0, 0), -1);
  assert.equal(s.group(m, 0, 0), DROP_STORM_MULTICAST);
  assert.equal(s.group(b, 0, 1000), -1, "a token 1 ms later");
  assert.equal(s.unknownUnicast(0), -1, "no limit");
  const u = new StormControl({
    broadcast: null,
    multicast: null,
    unknownUnicast: createBucket(10, 1, 0),
  });
  assert.equal(u.unknownUnicast(0), -1);
  assert.equal(u.unknownUnicast(0), DROP_STORM_UNKNOWN_UNICAST);
  assert.equal(u.group(b, 0, 0), -1);
});

Deno.test("loop guard: blocks the later of two flapping ports, lets it back after retrySeconds", () => {
  const cfg = { enabled: true, movesPerSecond: 100, retrySeconds: 30 };
  const g = new LoopGuard([{ ...cfg, enabled: false }, cfg, cfg]);
  g.upSince.splice(0, 3, 0, 5000, 1000);
  assert.deepEqual(g.sample(0, [0, 0, 0]), { block: [], unblock: [] });
  // One VM migrating: one move, nothing.
  assert.deepEqual(g.sample(100, [0, 1, 0]), { block: [], unblock: [] });
  // Only one port churning (e.g. many new stations behind it): not a loop.
  assert.deepEqual(g.sample(200, [0, 500, 0]), { block: [], unblock: [] });
  // Ports 1 and 2 both see thousands of moves: port 1 came up later.
  const d = g.sample(300, [0, 900, 400]);
  assert.deepEqual(d.block, [{ port: 1, moves: 4000, partner: 2 }]);
  assert.ok(g.isBlocked(1));
  assert.deepEqual(g.sample(400, [0, 900, 800]).block, [], "port 1 blocked: port 2 alone");
  assert.deepEqual(g.sample(30_300, [0, 900, 800]), { block: [], unblock: [1] });
  assert.equal(g.isBlocked(1), false);
  // Port 0 (not guarded) flapping with port 2: port 2 is blocked even though port 0 is later.
  g.upSince[0] = 9000;
  assert.deepEqual(g.sample(30_400, [500, 900, 1200]).block, [{
    port: 2,
    moves: 4000,
    partner: 0,
  }]);
});

class FakePort implements DatapathPort {
  frames: Uint8Array[] = [];
  flushes = 0;
  inbox: Uint8Array[] = [];
  constructor(readonly accept = true) {}
  receive(batch: FrameBatch): number {
    const n = Math.min(this.inbox.length, 32);
    for (let i = 0; i < n; i++) {
      const f = this.inbox.shift()!;
      batch.scratch[i].set(f);
      batch.bytes[i] = batch.scratch[i];
      batch.offset[i] = 0;
      batch.length[i] = f.length;
    }
    return n;
  }
  release(): void {}
  transmit(src: Uint8Array, f: EgressFrame): boolean {
    if (!this.accept) return false;
    const out = new Uint8Array(f.length);
    out.set(f.head.subarray(0, f.headLength));
    out.set(src.subarray(f.tailStart, f.tailEnd), f.headLength);
    this.frames.push(out);
    return true;
  }
  flush(): void {
    this.flushes++;
  }
}

Deno.test("mirror wrappers copy received and transmitted frames, one VLAN when asked", () => {
  const out = new FakePort();
  const targets = [null, out];
  const counters = new Float64Array(SAFETY_FIELDS);
  const inner = new FakePort();
  const tag10 = Uint8Array.from([...mac(MAC_B), ...mac(MAC_A), 0x81, 0, 0, 10, 0x88, 0xb5, 1, 2]);
  inner.inbox.push(frame(MAC_B, MAC_A, 0x88b5), tag10);
  const all = new MirrorIngress(inner, [1], [-1], 0, targets, counters);
  const batch = new FrameBatch();
  assert.equal(all.receive(batch), 2);
  all.release();
  assert.equal(out.frames.length, 2);
  assert.equal(out.flushes, 1);
  assert.deepEqual(out.frames[1], tag10);
  assert.equal(counters[MIRRORED], 2);
  inner.inbox.push(frame(MAC_B, MAC_A, 0x88b5), tag10);
  const only10 = new MirrorIngress(inner, [1], [10], 0, targets, counters);
  only10.receive(batch);
  assert.equal(out.frames.length, 3);
  assert.deepEqual(out.frames[2], tag10);
  assert.equal(frameVlan(tag10, 0, tag10.length, 7), 10);
  assert.equal(frameVlan(frame(MAC_B, MAC_A, 0x88b5), 0, 60, 7), 7);

  const decided = { vlan: 20 };
  const egress = new MirrorEgress(new FakePort(), [1], [20], decided, targets, counters);
  const f = frame(MAC_B, MAC_A, 0x88b5);
  const layout = new EgressFrame().setWhole(f, 0, f.length);
  assert.ok(egress.transmit(f, layout));
  decided.vlan = 21;
  assert.ok(egress.transmit(f, layout));
  egress.flush();
  assert.equal(out.frames.length, 4, "only the VLAN 20 frame");
  // A frame the mirrored port itself refused is not mirrored.
  const refused = new MirrorEgress(new FakePort(false), [1], [-1], decided, targets, counters);
  assert.equal(refused.transmit(f, layout), false);
  assert.equal(out.frames.length, 4);
});

function guardSpec(o: Partial<PortGuardSpec>): PortGuardSpec {
  return { blocked: false, security: null, storm: null, ingress: null, egress: null, ...o };
}

Deno.test("forwarder with guards: spoofed frames never reach the FDB, storms and rates are cut", () => {
  const bridge = new Bridge({ vlans: [undefined, undefined, undefined] });
  for (let p = 0; p < 3; p++) bridge.setLinkUp(p, true);
  const ports = [new FakePort(), new FakePort(), new FakePort()];
  const blocks = ports.map(() => new Float64Array(16));
  const fw = new Forwarder(bridge, 3, blocks);
  const safety = ports.map(() => new Float64Array(SAFETY_FIELDS));
  ports.forEach((p, i) => fw.targets[i] = p);
  fw.polled = ports.map((port, index) => ({ index, port }));
  // Port 1 (MAC_B) is learned first.
  ports[1].inbox.push(frame(MAC_A, MAC_B, 0x88b5));
  fw.poll(1);
  const { hi, lo } = parseMac(MAC_B);
  assert.equal(bridge.fdb.lookup(hi, lo, 0), 1);

  fw.guards[0] = new IngressGuard(
    guardSpec({
      security: {
        macs: [parseMac(MAC_A).hi, parseMac(MAC_A).lo | 0],
        learnOnce: false,
        pinned: createPinned(),
        ipv4: null,
        ipv6: null,
      },
      storm: {
        broadcast: createBucket(1, 3, fw.clock.us),
        multicast: null,
        unknownUnicast: createBucket(1, 2, fw.clock.us),
      },
    }),
    safety[0],
    fw.clock,
  );
  fw.timed = true;
  const before = ports[2].frames.length;
  const beforeB = ports[1].frames.length;
  ports[0].inbox.push(frame(BCAST, MAC_B, 0x88b5)); // spoofing port 1's MAC
  for (let i = 0; i < 10; i++) ports[0].inbox.push(frame(BCAST, MAC_A, 0x88b5));
  for (let i = 0; i < 10; i++) ports[0].inbox.push(frame("52:54:00:99:99:99", MAC_A, 0x88b5));
  ports[0].inbox.push(frame(MAC_B, MAC_A, 0x88b5)); // known unicast: not limited
  fw.poll(2);
  assert.equal(safety[0][DROP_SPOOFED], 1);
  assert.equal(bridge.fdb.lookup(hi, lo, 0), 1, "the victim's entry did not move");
  assert.equal(safety[0][DROP_STORM_BROADCAST], 7);
  assert.equal(safety[0][DROP_STORM_UNKNOWN_UNICAST], 8);
  assert.equal(ports[2].frames.length - before, 3 + 2, "3 broadcasts, 2 unknown unicasts");
  assert.equal(ports[1].frames.length - beforeB, 3 + 2 + 1, "and the known unicast");

  // Blocked by loop guard: everything it sends is dropped and counted.
  fw.guards[0] = new IngressGuard(guardSpec({ blocked: true }), safety[0], fw.clock);
  ports[0].inbox.push(frame(MAC_B, MAC_A, 0x88b5));
  fw.poll(3);
  assert.equal(safety[0][DROP_LOOP], 1);
});

Deno.test("policers: ingress counts bytes of frames it drops, egress wraps the port", () => {
  const clock = new Clock();
  const counters = new Float64Array(SAFETY_FIELDS);
  const g = new IngressGuard(
    guardSpec({ ingress: createBucket(1000, 1500, clock.us) }),
    counters,
    clock,
  );
  const f = frame(MAC_B, MAC_A, 0x88b5, [], 1000);
  assert.ok(g.admit(f, 0, f.length));
  assert.equal(g.admit(f, 0, f.length), false);
  assert.equal(counters[DROP_POLICED], 1);
  const inner = new FakePort();
  const p = new PolicedPort(inner, createBucket(1000, 1500, clock.us), counters, clock);
  const layout = new EgressFrame().setWhole(f, 0, f.length);
  assert.ok(p.transmit(f, layout));
  assert.equal(p.transmit(f, layout), false);
  assert.equal(counters[DROP_EGRESS_POLICED], 1);
  assert.equal(inner.frames.length, 1);
  assert.equal(counters[DROP_SPOOFED] + counters[DROP_SPOOFED_IP], 0);
});

const vhost = (name: string, extra: Record<string, unknown> = {}) => ({
  name,
  type: "vhost-user",
  socket: `/tmp/${name}.sock`,
  ...extra,
});

function topologyProblems(t: unknown): string[] {
  try {
    parseTopology(JSON.stringify(t), "F");
  } catch (e) {
    if (e instanceof TopologyError) return e.problems;
    throw e;
  }
  return [];
}

Deno.test("topology: safety sections parse to defaulted values", () => {
  const t = parseTopology(
    JSON.stringify({
      name: "t",
      ports: [
        vhost("vm1", {
          security: { allowedMacs: ["52-54-00-00-00-0A"], ipv4: ["10.0.0.1"], learnOnce: true },
          stormControl: { broadcast: 1000, unknownUnicast: 50 },
          policing: {
            ingress: { bitsPerSecond: 100_000_000 },
            egress: { bitsPerSecond: 8000, burstBytes: 3000 },
          },
        }),
        vhost("up", { loopGuard: true }),
        vhost("mon"),
      ],
      mirrors: [{ ports: ["vm1", "up"], direction: "ingress", vlan: 10, output: "mon" }],
    }),
    "F",
  );
  assert.deepEqual(t.ports[0].safety, {
    security: { allowedMacs: [MAC_A], learnOnce: true, ipv4: ["10.0.0.1"], ipv6: null },
    stormControl: { broadcast: 1000, multicast: null, unknownUnicast: 50, burstFrames: 100 },
    policing: {
      ingress: { bitsPerSecond: 100_000_000, burstBytes: 1_250_000 },
      egress: { bitsPerSecond: 8000, burstBytes: 3000 },
    },
    loopGuard: null,
  });
  assert.deepEqual(t.ports[1].safety.loopGuard, { movesPerSecond: 20, retrySeconds: 30 });
  assert.deepEqual(t.mirrors, [{
    name: "mirror0",
    ports: ["vm1", "up"],
    direction: "ingress",
    vlan: 10,
    output: "mon",
  }]);
  const plane = new SafetyPlane(t.ports, t.mirrors, 2);
  const plan = plane.plan();
  assert.equal(plan.guards[1], null, "loop guard alone needs no per-frame guard");
  assert.equal(plan.guards[2], null);
  assert.deepEqual(plan.mirrors[0].ports, [0, 1]);
  assert.equal(plan.mirrors[0].output, 2);
  assert.ok(plane.isMirrorOutput(2));
  assert.deepEqual(plane.status(2), { mirrorOutputOf: ["mirror0"] });
  assert.equal(plane.status(0).security?.pinnedMac, null);
});

Deno.test("topology: every problem in the safety sections is named", () => {
  assert.deepEqual(
    topologyProblems({
      name: "t",
      ports: [
        vhost("vm1", {
          security: {
            allowedMacs: ["01:00:5e:00:00:01", "nope"],
            ipv4: ["10.0.0.300"],
            ipv6: ["1::2::3"],
            x: 1,
          },
          stormControl: { broadcst: 5 },
          policing: { ingress: { bitsPerSecond: 10 } },
          loopGuard: "yes",
        }),
        vhost("vm2", { security: {} }),
        vhost("mon", { stormControl: { broadcast: 10 } }),
      ],
      fdb: { static: [{ mac: "52:54:00:00:00:01", port: "mon" }] },
      mirrors: [
        { ports: ["vm1", "vm3"], output: "mon", direction: "in" },
        { ports: [], output: "vm2" },
        { ports: ["mon"], output: "mon" },
      ],
    }),
    [
      'F: ports[0].security.x: unknown key "x"',
      "F: ports[0].security.allowedMacs[0]: 01:00:5e:00:00:01 is multicast: not a station address",
      'F: ports[0].security.allowedMacs[1]: expected a MAC address like 52:54:00:00:00:01, got "nope"',
      'F: ports[0].security.ipv4[0]: expected an IPv4 address, got "10.0.0.300"',
      'F: ports[0].security.ipv6[0]: expected an IPv6 address, got "1::2::3"',
      'F: ports[0].stormControl.broadcst: unknown key "broadcst" (did you mean "broadcast"?)',
      "F: ports[0].stormControl: limits nothing: give broadcast, multicast or unknownUnicast (frames per second)",
      "F: ports[0].policing.ingress.bitsPerSecond: expected an integer from 8000 to 400000000000, got 10",
      'F: ports[0].loopGuard: expected an object, got "yes"',
      "F: ports[1].security: checks nothing: give allowedMacs, learnOnce, ipv4 or ipv6",
      'F: mirrors[0].ports[1]: no port named "vm3" (did you mean "vm1"?)',
      'F: mirrors[0].direction: expected one of "ingress", "egress", "both", got "in"',
      "F: mirrors[1].ports: is empty: name the ports to mirror",
      "F: mirrors[2].output: mon cannot mirror itself",
      "F: mirrors[2].ports: mon is a mirror output: it is not mirrored",
      "F: mirrors: output port mon forwards nothing, so stormControl has no effect on it: remove it",
      "F: mirrors: output port vm2 forwards nothing, so security has no effect on it: remove it",
      "F: fdb.static[0].port: mon is a mirror output: it is not part of the bridge",
    ],
  );
});
