import assert from "node:assert/strict";
import {
  Bridge,
  Decision,
  describeEgress,
  DROP_DEST_DOWN,
  DROP_HAIRPIN,
  DROP_MALFORMED,
  DROP_MULTICAST_SRC,
  DROP_VLAN,
  EGRESS_KEEP,
  EGRESS_PUSH,
  EGRESS_SET,
  EGRESS_STRIP,
  egressTci,
  NO_DROP,
  type PortVlanConfig,
  STATE_LINK_OFFSET,
} from "../switch/bridge.ts";
import { EgressFrame } from "../ports/port.ts";
import { Fdb } from "../switch/fdb.ts";
import {
  formatMac,
  isMulticastAt,
  macHiAt,
  macLoAt,
  parseMac,
  writeMac,
} from "../ports/ethernet.ts";

const A = "02:00:00:00:00:0a";
const B = "02:00:00:00:00:0b";
const C = "02:00:00:00:00:0c";
const BCAST = "ff:ff:ff:ff:ff:ff";

/** An Ethernet frame with a recognisable payload; `vid` adds an 802.1Q tag. */
function frame(o: { dst: string; src: string; vid?: number; pcp?: number; len?: number }) {
  const len = o.len ?? 64;
  const f = new Uint8Array(len);
  const d = parseMac(o.dst);
  const s = parseMac(o.src);
  writeMac(f, 0, d.hi, d.lo);
  writeMac(f, 6, s.hi, s.lo);
  let at = 12;
  if (o.vid !== undefined) {
    const tci = ((o.pcp ?? 0) << 13) | o.vid;
    f.set([0x81, 0x00, tci >>> 8, tci & 0xff], 12);
    at = 16;
  }
  f.set([0x08, 0x00], at);
  for (let i = at + 2; i < len; i++) f[i] = (i * 7) & 0xff;
  return f;
}

/** The decision on the last frame sent, reused as the datapath reuses one. */
const d = new Decision(16);

/** decide() on a whole buffer; output ports sorted. */
function send(b: Bridge, port: number, f: Uint8Array, now = 0): number[] {
  const n = b.decide(port, f, 0, f.length, now, d);
  assert.equal(d.count, n);
  return Array.from(d.ports.subarray(0, n)).sort((x, y) => x - y);
}

/** The bytes of an egress frame whose tail lies in `src`. */
function bytesOf(src: Uint8Array, f: EgressFrame): number[] {
  return [...f.head.subarray(0, f.headLength), ...src.subarray(f.tailStart, f.tailEnd)];
}

/**
 * What each EGRESS_* op makes of src[off, off + len), written plainly (slices, one piece at a
 * time): the reference the datapath's head + tail description is checked against.
 */
function referenceEgress(src: Uint8Array, off: number, len: number, op: number, tci: number) {
  const frame = Array.from(src.subarray(off, off + len));
  const tag = [0x81, 0x00, (tci >>> 8) & 0xff, tci & 0xff];
  const addrs = frame.slice(0, 12);
  if (op === EGRESS_KEEP) return frame;
  if (op === EGRESS_STRIP) return [...addrs, ...frame.slice(16)];
  if (op === EGRESS_PUSH) return [...addrs, ...tag, ...frame.slice(12)];
  if (op === EGRESS_SET) return [...addrs, ...tag, ...frame.slice(16)];
  throw new RangeError(`unknown egress op ${op}`);
}

function bridge(vlans: (PortVlanConfig | undefined)[], opts: { down?: number[] } = {}) {
  const b = new Bridge({ vlans });
  for (let p = 0; p < vlans.length; p++) b.setLinkUp(p, !opts.down?.includes(p));
  return b;
}

function where(b: Bridge, mac: string, vlan: number): number {
  const { hi, lo } = parseMac(mac);
  return b.fdb.lookup(hi, lo, vlan);
}

Deno.test("learns sources, floods unknown and group destinations, forwards known unicast", () => {
  const b = bridge([undefined, undefined, undefined, undefined]);
  assert.deepEqual(send(b, 0, frame({ dst: B, src: A })), [1, 2, 3]);
  assert.equal(d.dropReason, NO_DROP);
  assert.equal(d.vlan, 0);
  assert.equal(d.ingressTci, -1);
  assert.ok(d.ingressTci < 0, "untagged");
  assert.equal(where(b, A, 0), 0);
  assert.deepEqual(send(b, 2, frame({ dst: A, src: B })), [0]);
  assert.deepEqual(send(b, 0, frame({ dst: B, src: A })), [2]);
  assert.deepEqual(send(b, 1, frame({ dst: BCAST, src: C })), [0, 2, 3]);
  assert.deepEqual(send(b, 1, frame({ dst: "01:00:5e:00:00:01", src: C })), [0, 2, 3]);
  assert.equal(b.portCounters(0).flooded, 1);
  assert.equal(b.portCounters(0).unicast, 1);
  assert.equal(b.portCounters(1).flooded, 2);
  assert.equal(b.portCounters(2).unicast, 1);
});

Deno.test("a frame whose destination is on its ingress port is dropped, never sent back", () => {
  const b = bridge([undefined, undefined]);
  send(b, 0, frame({ dst: BCAST, src: B }));
  assert.deepEqual(send(b, 0, frame({ dst: B, src: A })), []);
  assert.equal(d.dropReason, DROP_HAIRPIN);
  assert.equal(b.portCounters(0).dropHairpin, 1);
});

Deno.test("floods reach only the VLAN's member ports whose link is up", () => {
  const b = bridge([
    { mode: "access", tag: 10 }, // 0
    { mode: "access", tag: 10 }, // 1
    { mode: "access", tag: 20 }, // 2
    { mode: "trunk", allowed: [10] }, // 3
    undefined, // 4: all VLANs
    { mode: "access", tag: 10 }, // 5: down
    { mode: "trunk", allowed: [20, 30] }, // 6
  ], { down: [5] });
  assert.deepEqual(send(b, 0, frame({ dst: BCAST, src: A })), [1, 3, 4]);
  assert.deepEqual(send(b, 2, frame({ dst: BCAST, src: B })), [4, 6]);
  assert.deepEqual(send(b, 4, frame({ dst: BCAST, src: C, vid: 30 })), [6]);
  assert.deepEqual(send(b, 4, frame({ dst: BCAST, src: C })), [], "VLAN 0 has no other member");
  b.setLinkUp(5, true);
  assert.deepEqual(send(b, 3, frame({ dst: B, src: C, vid: 10 })), [0, 1, 4, 5]);
});

Deno.test("link down flushes the port's MACs; a static entry behind a down port drops", () => {
  const b = bridge([undefined, undefined, undefined]);
  b.addStatic(C, 0, 1);
  send(b, 1, frame({ dst: BCAST, src: B }));
  assert.equal(where(b, B, 0), 1);
  b.setLinkUp(1, false);
  assert.equal(where(b, B, 0), -1);
  assert.deepEqual(send(b, 0, frame({ dst: B, src: A })), [2]);
  assert.deepEqual(send(b, 0, frame({ dst: C, src: A })), []);
  assert.equal(d.dropReason, DROP_DEST_DOWN);
  assert.equal(b.portCounters(0).dropDestDown, 1);
  b.setLinkUp(1, true);
  assert.deepEqual(send(b, 0, frame({ dst: C, src: A })), [1]);
});

Deno.test("a multicast source is dropped, counted and not learned", () => {
  const b = bridge([undefined, undefined]);
  assert.deepEqual(send(b, 0, frame({ dst: B, src: "03:00:00:00:00:01" })), []);
  assert.equal(d.dropReason, DROP_MULTICAST_SRC);
  assert.equal(b.fdb.size, 0);
  assert.equal(b.portCounters(0).dropMulticastSrc, 1);
});

Deno.test("access port: untagged and priority-tagged frames join its VLAN, tagged ones drop", () => {
  const b = bridge([{ mode: "access", tag: 10 }, { mode: "access", tag: 10 }, {
    mode: "trunk",
    allowed: [10, 20],
  }]);
  assert.deepEqual(send(b, 0, frame({ dst: BCAST, src: A })), [1, 2]);
  assert.equal(d.vlan, 10);
  assert.equal(where(b, A, 10), 0);
  // OVS: any nonzero VID is dropped on an access port, its own VLAN's included.
  assert.deepEqual(send(b, 0, frame({ dst: BCAST, src: A, vid: 20 })), []);
  assert.equal(d.dropReason, DROP_VLAN);
  assert.deepEqual(send(b, 0, frame({ dst: BCAST, src: A, vid: 10 })), []);
  assert.equal(b.portCounters(0).dropVlan, 2);
  assert.deepEqual(send(b, 0, frame({ dst: BCAST, src: A, vid: 0, pcp: 3 })), [1, 2]);
  assert.equal(d.vlan, 10);
  assert.equal(d.ingressTci, 3 << 13);
  assert.ok(d.ingressTci >= 0, "priority-tagged counts as tagged");
});

Deno.test("trunk port: allowed list, native VLAN, VLAN 0 and config errors", () => {
  const b = bridge([
    { mode: "trunk", allowed: [10, 20] }, // 0: untagged would be VLAN 0, not allowed
    { mode: "trunk", allowed: [10], native: 5 }, // 1
    undefined, // 2
    { mode: "access", tag: 5 }, // 3
  ]);
  assert.deepEqual(send(b, 0, frame({ dst: BCAST, src: A })), []);
  assert.equal(d.dropReason, DROP_VLAN);
  assert.deepEqual(send(b, 0, frame({ dst: BCAST, src: A, vid: 10 })), [1, 2]);
  assert.equal(d.vlan, 10);
  assert.deepEqual(send(b, 0, frame({ dst: BCAST, src: A, vid: 30 })), []);
  assert.equal(b.portCounters(0).dropVlan, 2);
  assert.deepEqual(send(b, 1, frame({ dst: BCAST, src: B })), [2, 3]);
  assert.equal(d.vlan, 5);
  assert.deepEqual(send(b, 1, frame({ dst: BCAST, src: B, vid: 5 })), [2, 3]);
  assert.deepEqual(send(b, 1, frame({ dst: BCAST, src: B, vid: 20 })), []);
  assert.deepEqual(send(b, 2, frame({ dst: BCAST, src: C })), [], "VLAN 0 is only on port 2");
  assert.deepEqual(send(b, 2, frame({ dst: BCAST, src: C, vid: 0 })), []);
  assert.equal(d.vlan, 0);
  assert.equal(d.dropReason, NO_DROP);

  assert.throws(
    () => new Bridge({ vlans: [{ mode: "trunk", allowed: [0, 10], native: 5 }] }),
    /untagged/,
  );
  assert.throws(() => new Bridge({ vlans: [{ mode: "access", tag: 4096 }] }), /port 0: access tag/);
  assert.throws(() => new Bridge({ vlans: [{ mode: "trunk", allowed: [1, -1] }] }), /allowed VLAN/);
  assert.throws(() => new Bridge({ vlans: [{ mode: "hybrid" } as unknown as PortVlanConfig] }));
});

Deno.test("egress ops keep, strip, push or set the tag per output port", () => {
  const b = bridge([
    { mode: "access", tag: 10 }, // 0
    { mode: "trunk", allowed: [10] }, // 1
    { mode: "trunk", native: 10 }, // 2
    undefined, // 3
  ]);
  send(b, 0, frame({ dst: BCAST, src: A }));
  assert.deepEqual([1, 2, 3].map((p) => b.egressOp(d, p)), [EGRESS_PUSH, EGRESS_KEEP, EGRESS_PUSH]);
  assert.equal(egressTci(d), 10);
  send(b, 1, frame({ dst: BCAST, src: B, vid: 10, pcp: 5 }));
  assert.deepEqual([0, 2, 3].map((p) => b.egressOp(d, p)), [
    EGRESS_STRIP,
    EGRESS_STRIP,
    EGRESS_KEEP,
  ]);
  send(b, 0, frame({ dst: BCAST, src: A, vid: 0, pcp: 6 }));
  assert.deepEqual([1, 2].map((p) => b.egressOp(d, p)), [EGRESS_SET, EGRESS_STRIP]);
  assert.equal(egressTci(d), (6 << 13) | 10, "the received priority is kept");
  send(b, 3, frame({ dst: BCAST, src: C, vid: 0 }));
  assert.equal(d.vlan, 0);
  assert.equal(b.egressOp(d, 3), EGRESS_STRIP, "VLAN 0 leaves untagged");
});

Deno.test("egress builds each op's bytes: head from the decided copy, tail from the frame", () => {
  const b = bridge([
    { mode: "access", tag: 10 }, // 0
    { mode: "trunk", allowed: [10, 0x123] }, // 1
    { mode: "trunk", allowed: [0x123] }, // 2
  ]);
  const buf = new Uint8Array(2048);
  const out = new EgressFrame();
  const cases = [
    // [ingress port, frame, egress port, op]
    [0, frame({ dst: BCAST, src: A }), 1, EGRESS_PUSH],
    [0, frame({ dst: BCAST, src: A, vid: 0, pcp: 6 }), 1, EGRESS_SET],
    [1, frame({ dst: BCAST, src: B, vid: 10, pcp: 5 }), 0, EGRESS_STRIP],
    [1, frame({ dst: BCAST, src: B, vid: 0x123, pcp: 1 }), 2, EGRESS_KEEP],
    [1, frame({ dst: BCAST, src: B, vid: 0x123, len: 18 }), 2, EGRESS_KEEP],
    [1, frame({ dst: BCAST, src: B, vid: 10, len: 1514 }), 0, EGRESS_STRIP],
    [0, frame({ dst: BCAST, src: C, len: 14 }), 1, EGRESS_PUSH],
    [0, frame({ dst: BCAST, src: C, len: 15 }), 1, EGRESS_PUSH],
  ] as const;
  for (const [ingress, f, egress, op] of cases) {
    for (const off of [0, 7, 100]) {
      const what = `${f.length} B at ${off}, port ${ingress} -> ${egress}`;
      buf.fill(0xee);
      buf.set(f, off);
      assert.ok(b.decide(ingress, buf, off, f.length, 0, d) > 0, what);
      assert.equal(b.egressOp(d, egress), op, what);
      assert.equal(b.egress(d, egress, out), out);
      const expected = referenceEgress(buf, off, f.length, op, egressTci(d));
      assert.equal(out.length, expected.length, what);
      assert.deepEqual(bytesOf(buf, out), expected, what);
    }
  }
  assert.throws(() => describeEgress(d, 7, out), /egress op/);
});

Deno.test("the frame sent is the frame decided on, whatever its source holds by then", () => {
  // A guest owns the memory its frames sit in and may rewrite them at any moment: after the
  // decision, before (or while) they are copied out. Nothing the decision depended on may be
  // read again: not the tag or EtherType (rewriting them would hop VLANs), nor the addresses.
  const b = bridge([
    { mode: "access", tag: 10 }, // 0
    { mode: "trunk", allowed: [10, 20], native: 10 }, // 1: VLAN 10 leaves untagged
    { mode: "trunk", allowed: [10, 20] }, // 2
    { mode: "access", tag: 20 }, // 3
  ]);
  const out = new EgressFrame();
  const rewrites: [string, (f: Uint8Array) => void][] = [
    ["a VLAN 20 tag written over the EtherType", (f) => f.set([0x81, 0x00, 0x00, 20], 12)],
    ["the tag's VID changed to 20", (f) => f.set([0x00, 20], 14)],
    ["the destination changed", (f) => f.set([2, 0, 0, 0, 0, 0x0d], 0)],
  ];
  const sent = [
    // [ingress port, frame, egress ports]
    [0, frame({ dst: BCAST, src: A }), [1, 2]], // untagged in VLAN 10: kept, pushed
    [2, frame({ dst: BCAST, src: B, vid: 10, pcp: 3 }), [0, 1]], // stripped both ways
    [1, frame({ dst: BCAST, src: C, vid: 10 }), [0, 2]], // native VLAN tagged: strip, keep
  ] as const;
  for (const [ingress, f, egress] of sent) {
    for (const [what, rewrite] of rewrites) {
      const guest = f.slice();
      assert.deepEqual(send(b, ingress, guest), egress);
      const expected = egress.map((p) =>
        referenceEgress(f, 0, f.length, b.egressOp(d, p), egressTci(d))
      );
      rewrite(guest);
      for (const [i, p] of egress.entries()) {
        b.egress(d, p, out);
        assert.deepEqual(bytesOf(guest, out), expected[i], `port ${ingress} -> ${p}, ${what}`);
      }
    }
  }
});

Deno.test("a full FDB evicts to learn; a port at its limit is refused, counted, forwarded", () => {
  const b = new Bridge({ vlans: [undefined, undefined], fdb: Fdb.create({ capacity: 16 }) });
  b.setLinkUp(0, true);
  b.setLinkUp(1, true);
  for (let i = 0; i < 16; i++) {
    send(b, 0, frame({ dst: BCAST, src: formatMac(0x0200, i) }));
  }
  assert.deepEqual(send(b, 0, frame({ dst: BCAST, src: formatMac(0x0200, 16) })), [1]);
  assert.equal(d.dropReason, NO_DROP);
  assert.equal(b.portCounters(0).learnRefused, 0);
  assert.equal(b.fdb.counters().evicted, 1);
  assert.equal(b.fdb.size, 16);
  b.fdb.maxPerPort = 16;
  assert.deepEqual(send(b, 0, frame({ dst: BCAST, src: formatMac(0x0200, 17) })), [1]);
  assert.equal(d.dropReason, NO_DROP);
  assert.deepEqual(b.fdb.portCounters(0), { learned: 16, evicted: 1, refusedLimit: 1 });
});

Deno.test("static MACs from the config are used and never moved by traffic", () => {
  const S = "02:00:00:00:00:99";
  const vlans: PortVlanConfig[] = [{ mode: "access", tag: 10 }, { mode: "access", tag: 10 }, {
    mode: "access",
    tag: 20,
  }];
  const b = new Bridge({ vlans, statics: [{ mac: S, vlan: 10, port: 1 }] });
  for (let p = 0; p < 3; p++) b.setLinkUp(p, true);
  assert.deepEqual(send(b, 0, frame({ dst: BCAST, src: S })), [1]);
  assert.equal(where(b, S, 10), 1);
  assert.deepEqual(send(b, 0, frame({ dst: S, src: A })), [1]);
  assert.deepEqual(b.fdb.entries(0).find((e) => e.mac === S), {
    mac: S,
    vlan: 10,
    port: 1,
    age: 0,
    static: true,
  });
  assert.throws(
    () => new Bridge({ vlans, statics: [{ mac: S, vlan: 10, port: 2 }] }),
    /port 2 is not a member of VLAN 10/,
  );
  assert.throws(() => new Bridge({ vlans, statics: [{ mac: "nope", vlan: 10, port: 1 }] }), /MAC/);
});

Deno.test("runt frames are dropped as malformed; frames may sit at an offset", () => {
  const b = bridge([undefined, undefined]);
  assert.equal(b.decide(0, new Uint8Array(13), 0, 13, 0, d), 0);
  assert.equal(d.dropReason, DROP_MALFORMED);
  const tagged = frame({ dst: B, src: A, vid: 5 });
  assert.equal(b.decide(0, tagged, 0, 17, 0, d), 0);
  assert.equal(d.dropReason, DROP_MALFORMED);
  assert.equal(b.portCounters(0).dropMalformed, 2);
  const buf = new Uint8Array(300);
  buf.set(tagged, 100);
  assert.equal(b.decide(0, buf, 100, 64, 0, d), 1);
  assert.equal(d.ports[0], 1);
  assert.equal(d.vlan, 5);
  assert.equal(where(b, A, 5), 0);
});

Deno.test("threads share link state and the FDB; counters of all writers are summed", () => {
  const vlans = [undefined, undefined];
  const main = new Bridge({ vlans, writers: 2 });
  const other = new Bridge({
    vlans,
    fdb: Fdb.attach(main.fdb.buffer),
    state: main.state,
    writer: 1,
  });
  main.setLinkUp(0, true);
  main.setLinkUp(1, true);
  assert.ok(other.isLinkUp(1));
  send(main, 0, frame({ dst: BCAST, src: A }));
  assert.deepEqual(send(other, 1, frame({ dst: A, src: B })), [0]);
  send(other, 0, frame({ dst: BCAST, src: A }));
  assert.equal(main.portCounters(0).flooded, 2);
  assert.equal(other.portCounters(1).unicast, 1);
  assert.throws(() => new Bridge({ vlans, state: main.state, writer: 2 }), /writer/);
  assert.throws(() => new Bridge({ vlans: [undefined], state: main.state }), /state/);
});

Deno.test("ethernet helpers: MACs as (hi, lo) numbers", () => {
  const m = parseMac("02:00:5E:10:00:01");
  assert.deepEqual(m, { hi: 0x0200, lo: 0x5e100001 });
  assert.deepEqual(parseMac("fe-dc-ba-98-76-54"), { hi: 0xfedc, lo: 0xba987654 });
  assert.equal(formatMac(0xfedc, 0xba987654), "fe:dc:ba:98:76:54");
  assert.equal(formatMac(m.hi, m.lo), "02:00:5e:10:00:01");
  for (
    const bad of [
      "",
      "02:00:5e:10:00",
      "02:00:5e:10:00:01:02",
      "02:00-5e:10:00:01",
      "0g:00:00:00:00:00",
    ]
  ) {
    assert.throws(() => parseMac(bad), /invalid MAC address/);
  }
  const f = frame({ dst: "01:00:5e:7f:ff:fa", src: "fe:dc:ba:98:76:54" });
  assert.equal(macHiAt(f, 6), 0xfedc);
  assert.equal(macLoAt(f, 6), 0xba987654);
  assert.ok(isMulticastAt(f, 0));
  assert.ok(!isMulticastAt(f, 6));
});

Deno.test("the per-port flow cache never outlives an FDB change", () => {
  const b = bridge([undefined, undefined, undefined]);
  const ab = frame({ dst: B, src: A });
  send(b, 1, frame({ dst: A, src: B }), 100); // B on port 1
  const v0 = b.fdb.version;
  for (let i = 0; i < 5; i++) assert.deepEqual(send(b, 0, ab, 100), [1]); // cached after the first
  assert.equal(b.fdb.version, v0 + 1, "only learning A (new) took the lock");
  // Deleted destination: the next frame floods, it does not use the cached port.
  const { hi, lo } = parseMac(B);
  assert.ok(b.fdb.delete(hi, lo, 0));
  assert.deepEqual(send(b, 0, ab, 100), [1, 2]);
  // B moves to port 2: A's frames follow it at once.
  send(b, 2, frame({ dst: A, src: B }), 100);
  assert.deepEqual(send(b, 0, ab, 100), [2]);
  // A moves to port 1 (its port-0 cache entry is stale); back on port 0 it is learned again.
  send(b, 1, frame({ dst: C, src: A }), 100);
  assert.equal(where(b, A, 0), 1);
  assert.deepEqual(send(b, 0, ab, 100), [2]);
  assert.equal(where(b, A, 0), 0);
  // Flushing the port empties the table for its MACs even while cached.
  b.fdb.flush({ port: 0 });
  assert.equal(where(b, A, 0), -1);
  send(b, 0, ab, 100);
  assert.equal(where(b, A, 0), 0, "relearned on the next frame");
});

Deno.test("a cached source is still refreshed once a second, so an active MAC never ages", () => {
  const b = bridge([undefined, undefined]);
  const f = frame({ dst: B, src: A });
  for (let now = 1000; now < 1010; now++) {
    for (let i = 0; i < 3; i++) send(b, 0, f, now);
    assert.equal(b.fdb.age(now, 2), 0, `aged at ${now}`);
  }
  assert.equal(where(b, A, 0), 0);
  // Silent for the aging time: gone, and the next frame learns it again.
  assert.equal(b.fdb.age(1015, 2), 1);
  send(b, 0, f, 1015);
  assert.equal(where(b, A, 0), 0);
});

Deno.test("a frame with the last unicast frame's header takes its decision only while it holds", () => {
  const b = bridge([undefined, undefined, undefined]);
  b.addStatic(C, 0, 1);
  const ac = frame({ dst: C, src: A });
  for (let i = 0; i < 3; i++) assert.deepEqual(send(b, 0, ac, 100), [1]);
  assert.equal(b.portCounters(0).unicast, 3, "every frame counted");
  // In one buffer, after it, the same addresses with a tag (bytes 12-15 differ): VLAN 5, where
  // C is unknown.
  const two = new Uint8Array(128);
  two.set(ac);
  two.set(frame({ dst: C, src: A, vid: 5 }), 64);
  for (let i = 0; i < 2; i++) assert.equal(b.decide(0, two, 0, 64, 100, d), 1);
  assert.equal(b.decide(0, two, 64, 64, 100, d), 2, "flooded in VLAN 5");
  // Each word of the header counts: another destination in bytes 0-3, another source in 8-11.
  for (
    const [what, other] of [["destination", frame({ dst: "06:00:00:00:00:0c", src: A })], [
      "source",
      frame({ dst: C, src: "02:00:01:00:00:0a" }),
    ]] as const
  ) {
    two.set(other, 64);
    for (let i = 0; i < 2; i++) assert.equal(b.decide(0, two, 0, 64, 100, d), 1);
    const learned = b.fdb.version;
    const n = b.decide(0, two, 64, 64, 100, d);
    if (what === "destination") assert.equal(n, 2, "unknown destination flooded");
    else assert.ok(b.fdb.version !== learned, "the other source learned");
  }
  // The destination's link goes down (seen here before setLinkUp's FDB flush, as a worker sees
  // it while the main thread is between the two): the same header now drops.
  const link = new Uint8Array(b.state, STATE_LINK_OFFSET, 3);
  link[1] = 0;
  assert.deepEqual(send(b, 0, ac, 100), []);
  assert.equal(d.dropReason, DROP_DEST_DOWN);
  link[1] = 1;
  assert.deepEqual(send(b, 0, ac, 100), [1]);
  // A VLAN change that takes the destination out of VLAN 0.
  b.setPortVlan(1, { mode: "access", tag: 5 });
  assert.deepEqual(send(b, 0, ac, 100), []);
  assert.equal(d.dropReason, DROP_DEST_DOWN);
  b.setPortVlan(1, undefined);
  assert.deepEqual(send(b, 0, ac, 100), [1]);
  // The same header from the destination's own port is a hairpin there.
  assert.deepEqual(send(b, 1, ac, 100), []);
  assert.equal(d.dropReason, DROP_HAIRPIN);
  // A new second refreshes the source (it must not age while the decision repeats).
  for (let i = 0; i < 3; i++) assert.deepEqual(send(b, 0, ac, 100), [1]);
  assert.deepEqual(send(b, 0, ac, 200), [1]);
  b.fdb.age(450, 300);
  assert.equal(where(b, A, 0), 0, "A refreshed at 200");
  // A source the FDB refuses is asked to learn again with every frame (and counted each time).
  b.fdb.maxPerPort = 1;
  const bc = frame({ dst: C, src: B });
  assert.deepEqual(send(b, 0, bc, 200), [1]);
  assert.deepEqual(send(b, 0, bc, 200), [1]);
  assert.equal(b.fdb.portCounters(0).refusedLimit, 2);
});
