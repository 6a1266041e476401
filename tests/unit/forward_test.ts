// The burst loop between in-memory ports: what leaves each port is what the bridge decided on,
// even when the sender's memory changes while the frame is being copied out.
import assert from "node:assert/strict";
import { type DatapathPort, type EgressFrame, type FrameBatch } from "../../ports/port.ts";
import { parseMac } from "../../ports/ethernet.ts";
import { Bridge } from "../../switch/bridge.ts";
import { Forwarder } from "../../switch/forward.ts";
import { IngressGuard, type PortGuardSpec } from "../../switch/port_guard.ts";
import { createPinned } from "../../switch/port_security.ts";
import { DROP_SPOOFED, SAFETY_FIELDS } from "../../switch/safety_counters.ts";
import { Clock } from "../../switch/token_bucket.ts";
import type { TapWriter } from "../../switch/tap.ts";

/** A port whose receive hands out frames sitting in `memory` (as a guest's TX ring does). */
class MemoryPort implements DatapathPort {
  readonly memory = new Uint8Array(4096);
  readonly sent: number[][] = [];
  pending: { offset: number; length: number }[] = [];
  /** Called after each transmit: what a guest does to its memory meanwhile. */
  onTransmit: () => void = () => {};

  receive(batch: FrameBatch): number {
    const n = this.pending.length;
    this.pending.forEach((f, i) => {
      batch.bytes[i] = this.memory;
      batch.offset[i] = f.offset;
      batch.length[i] = f.length;
    });
    batch.count = n;
    this.pending = [];
    return n;
  }

  /** What the forwarder did to this port, in order (shared between ports when given). */
  constructor(readonly log: string[] = [], readonly name = "") {}

  release(): void {
    this.log.push(`release ${this.name}`);
  }

  transmit(src: Uint8Array, f: EgressFrame): boolean {
    this.sent.push([...f.head.subarray(0, f.headLength), ...src.subarray(f.tailStart, f.tailEnd)]);
    this.onTransmit();
    return true;
  }

  flush(): void {
    this.log.push(`flush ${this.name}`);
  }
}

/** A MemoryPort that also sends runs (as a vhost-user port does), and notes each run. */
class RunPort extends MemoryPort {
  readonly runs: [number, number][] = [];

  transmitRun(batch: FrameBatch, from: number, to: number, f: EgressFrame, skip: number): number {
    this.runs.push([from, to]);
    for (let i = from; i < to; i++) {
      const tail = batch.bytes[i].subarray(
        batch.offset[i] + skip,
        batch.offset[i] + batch.length[i],
      );
      this.sent.push([...f.head.subarray(0, f.headLength), ...tail]);
      this.onTransmit();
    }
    return to - from;
  }
}

Deno.test("a sender rewriting its frame while it is copied out cannot change what leaves", () => {
  // Port 0: access VLAN 10 (the sender); 1 and 2: trunks, VLAN 10 native on 1 only. A broadcast
  // from port 0 goes out untagged on 1 and tagged 10 on 2. Once the first copy is out, the
  // sender writes a VLAN 20 tag over its EtherType and a new destination: the second copy must
  // still be the frame decided on (before the fix it left as a VLAN 20 frame: a VLAN hop).
  const bridge = new Bridge({
    vlans: [
      { mode: "access", tag: 10 },
      { mode: "trunk", allowed: [10, 20], native: 10 },
      { mode: "trunk", allowed: [10, 20] },
    ],
  });
  const ports = [new MemoryPort(), new MemoryPort(), new MemoryPort()];
  const fwd = new Forwarder(bridge, 3, ports.map(() => new Float64Array(64)));
  ports.forEach((p, i) => {
    bridge.setLinkUp(i, true);
    fwd.targets[i] = p;
  });
  fwd.polled = [{ index: 0, port: ports[0] }];

  const frame = new Uint8Array(64);
  frame.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 0x0a, 0x08, 0x00]);
  for (let i = 14; i < 64; i++) frame[i] = i;
  const at = 100;
  const sender = ports[0];
  sender.memory.set(frame, at);
  sender.pending = [{ offset: at, length: 64 }];
  const rewrite = () => {
    sender.memory.set([0x81, 0x00, 0x00, 20], at + 12);
    sender.memory.set([2, 0, 0, 0, 0, 0x0b], at);
  };
  ports[1].onTransmit = rewrite;
  ports[2].onTransmit = rewrite;

  assert.equal(fwd.poll(0), 1);
  const untagged = Array.from(frame);
  const tagged = [...frame.subarray(0, 12), 0x81, 0x00, 0x00, 10, ...frame.subarray(12)];
  assert.deepEqual(ports[1].sent, [untagged]);
  assert.deepEqual(ports[2].sent, [tagged]);
  assert.deepEqual(ports[0].sent, [], "never back out of the ingress port");
});

/** A port guard after whose check the sender rewrites its frame (a guest racing the worker). */
class RacingGuard extends IngressGuard {
  constructor(spec: PortGuardSpec, counters: Float64Array, readonly race: () => void) {
    super(spec, counters, new Clock());
  }
  override admit(frame: Uint8Array, off: number, len: number): boolean {
    const admitted = super.admit(frame, off, len);
    this.race();
    return admitted;
  }
}

Deno.test("a source rewritten after port security admitted the frame is neither learned nor sent", () => {
  // Port 0 may only send from A; B lives on port 1. A frame from A passes the check, then its
  // sender writes B over the source: before the fix the bridge learned B on port 0 (the
  // victim's traffic moved to the spoofer) and sent the spoofed frame on.
  const A = "02:00:00:00:00:0a";
  const B = "02:00:00:00:00:0b";
  const bridge = new Bridge({ vlans: [undefined, undefined, undefined] });
  const ports = [new MemoryPort(), new MemoryPort(), new MemoryPort()];
  const fwd = new Forwarder(bridge, 3, ports.map(() => new Float64Array(64)));
  ports.forEach((p, i) => {
    bridge.setLinkUp(i, true);
    fwd.targets[i] = p;
  });
  fwd.polled = [{ index: 0, port: ports[0] }];
  const b = parseMac(B);
  bridge.fdb.learn(b.hi, b.lo, 0, 1, 0);
  const a = parseMac(A);
  const spec: PortGuardSpec = {
    blocked: false,
    security: {
      macs: [a.hi, a.lo | 0],
      learnOnce: false,
      pinned: createPinned(),
      ipv4: null,
      ipv6: null,
    },
    storm: null,
    ingress: null,
    egress: null,
  };
  const at = 64;
  const sender = ports[0];
  const safety = new Float64Array(SAFETY_FIELDS);
  fwd.guards[0] = new RacingGuard(
    spec,
    safety,
    () => sender.memory.set([2, 0, 0, 0, 0, 0x0b], at + 6),
  );

  const frame = new Uint8Array(64).fill(0xff, 0, 6);
  frame.set([2, 0, 0, 0, 0, 0x0a, 0x88, 0xb5], 6);
  sender.memory.set(frame, at);
  sender.pending = [{ offset: at, length: 64 }];
  assert.equal(fwd.poll(0), 1);
  assert.equal(safety[DROP_SPOOFED], 0, "A was allowed");
  assert.equal(bridge.fdb.lookup(b.hi, b.lo, 0), 1, "B stays on port 1");
  assert.equal(bridge.fdb.lookup(a.hi, a.lo, 0), 0, "A was learned on port 0");
  assert.deepEqual(ports[1].sent, [Array.from(frame)], "sent as checked, from A");
  assert.deepEqual(ports[2].sent, [Array.from(frame)]);
});

for (const Port of [MemoryPort, RunPort]) {
  Deno.test(`frames that repeat a decision leave with their own tails and the right head (${Port.name})`, () => {
    // Port 0: access VLAN 10; port 1: trunk (VLAN 10 tagged); port 2: trunk, VLAN 10 native. B is
    // behind 1, C behind 2. A burst whose frames repeat the decision before them (same header),
    // change only the source (same port out, another head) or change the destination port: each
    // must leave as the reference (tag pushed towards 1), with its own length and payload. The
    // first 16 bytes (what the bridge decides on) are alike for frames of one header. A port that
    // sends runs gets the repeats as runs: the frames between two new decisions.
    const bridge = new Bridge({
      vlans: [
        { mode: "access", tag: 10 },
        { mode: "trunk", allowed: [10] },
        { mode: "trunk", allowed: [10], native: 10 },
      ],
      statics: [
        { mac: "02:00:00:00:00:0b", vlan: 10, port: 1 },
        { mac: "02:00:00:00:00:0c", vlan: 10, port: 2 },
      ],
    });
    const ports = [new Port(), new Port(), new Port()];
    const fwd = new Forwarder(bridge, 3, ports.map(() => new Float64Array(64)));
    ports.forEach((p, i) => {
      bridge.setLinkUp(i, true);
      fwd.targets[i] = p;
    });
    fwd.polled = [{ index: 0, port: ports[0] }];
    // A and D already learned: their first frames are repeatable decisions.
    for (const mac of ["02:00:00:00:00:0a", "02:00:00:00:00:0d"]) {
      const { hi, lo } = parseMac(mac);
      bridge.fdb.learn(hi, lo, 10, 0, 0);
    }
    const burst: [number, number, number][] = [
      [0x0b, 0x0a, 64],
      [0x0b, 0x0a, 80],
      [0x0b, 0x0a, 72],
      [0x0b, 0x0d, 68],
      [0x0b, 0x0d, 64],
      [0x0c, 0x0d, 70],
      [0x0c, 0x0d, 96],
      [0x0b, 0x0d, 76],
    ];
    const expected: number[][][] = [[], [], []];
    let at = 0;
    sendBurst: for (const [i, [dst, src, len]] of burst.entries()) {
      const f = new Uint8Array(len);
      f.set([2, 0, 0, 0, 0, dst, 2, 0, 0, 0, 0, src, 0x08, 0x00, 0x45, 0x00]);
      for (let k = 16; k < len; k++) f[k] = (k * 13 + i) & 0xff;
      ports[0].memory.set(f, at);
      ports[0].pending.push({ offset: at, length: len });
      at += 128;
      if (dst === 0x0c) {
        expected[2].push(Array.from(f));
        continue sendBurst;
      }
      expected[1].push([...f.subarray(0, 12), 0x81, 0x00, 0x00, 10, ...f.subarray(12)]);
    }
    assert.equal(fwd.poll(0), burst.length);
    assert.deepEqual(ports[1].sent, expected[1]);
    assert.deepEqual(ports[2].sent, expected[2]);
    if (ports[1] instanceof RunPort && ports[2] instanceof RunPort) {
      // Frames 0, 3, 5 and 7 are new decisions; 1-2, 4 and 6 repeat the one before them.
      assert.deepEqual(ports[1].runs, [[1, 3], [4, 5]]);
      assert.deepEqual(ports[2].runs, [[6, 7]]);
    }
  });
}

Deno.test("a capture on the destination sees every frame of a run, and the run goes frame by frame", () => {
  const bridge = new Bridge({
    vlans: [undefined, undefined],
    statics: [{ mac: "02:00:00:00:00:0b", vlan: 0, port: 1 }],
  });
  const ports = [new RunPort(), new RunPort()];
  const fwd = new Forwarder(bridge, 2, ports.map(() => new Float64Array(64)));
  ports.forEach((p, i) => {
    bridge.setLinkUp(i, true);
    fwd.targets[i] = p;
  });
  fwd.polled = [{ index: 0, port: ports[0] }];
  const seen: number[] = [];
  fwd.taps[1].push(
    { writeEgress: (_: Uint8Array, f: EgressFrame) => seen.push(f.length) } as unknown as TapWriter,
  );
  for (let i = 0; i < 4; i++) {
    const f = new Uint8Array(64 + i);
    f.set([2, 0, 0, 0, 0, 0x0b, 2, 0, 0, 0, 0, 0x0a, 0x08, 0x00]);
    ports[0].memory.set(f, i * 128);
    ports[0].pending.push({ offset: i * 128, length: f.length });
  }
  assert.equal(fwd.poll(0), 4);
  assert.deepEqual(seen, [64, 65, 66, 67]);
  assert.deepEqual(ports[1].runs, []);
  assert.equal(ports[1].sent.length, 4);
  fwd.taps[1].length = 0;
  for (let i = 0; i < 4; i++) ports[0].pending.push({ offset: i * 128, length: 64 + i });
  assert.equal(fwd.poll(0), 4);
  assert.deepEqual(ports[1].runs, [[1, 4]], "each burst builds its first frame anew");
});

Deno.test("a run from a port whose guard reads frames is sent from the copies it checked", () => {
  // Port security on port 0 (A only) reads each frame, so each is copied before the check; the
  // sender rewrites every frame's source and payload right after its check. The run that takes
  // the repeats must send the copies, not what the sender's memory holds by then.
  const A = "02:00:00:00:00:0a";
  const bridge = new Bridge({
    vlans: [undefined, undefined],
    statics: [{ mac: "02:00:00:00:00:0b", vlan: 0, port: 1 }],
  });
  const ports = [new RunPort(), new RunPort()];
  const fwd = new Forwarder(bridge, 2, ports.map(() => new Float64Array(64)));
  ports.forEach((p, i) => {
    bridge.setLinkUp(i, true);
    fwd.targets[i] = p;
  });
  fwd.polled = [{ index: 0, port: ports[0] }];
  const a = parseMac(A);
  const spec: PortGuardSpec = {
    blocked: false,
    security: {
      macs: [a.hi, a.lo | 0],
      learnOnce: false,
      pinned: createPinned(),
      ipv4: null,
      ipv6: null,
    },
    storm: null,
    ingress: null,
    egress: null,
  };
  const sender = ports[0];
  let checked = 0;
  fwd.guards[0] = new RacingGuard(spec, new Float64Array(SAFETY_FIELDS), () => {
    const at = checked++ * 128;
    sender.memory.set([2, 0, 0, 0, 0, 0x0e], at + 6);
    sender.memory.fill(0xee, at + 16, at + 64);
  });
  const frames: number[][] = [];
  for (let i = 0; i < 5; i++) {
    const f = new Uint8Array(64);
    f.set([2, 0, 0, 0, 0, 0x0b, 2, 0, 0, 0, 0, 0x0a, 0x08, 0x00]);
    f.fill(i + 1, 16);
    sender.memory.set(f, i * 128);
    sender.pending.push({ offset: i * 128, length: 64 });
    frames.push(Array.from(f));
  }
  assert.equal(fwd.poll(0), 5);
  assert.ok(ports[1].runs.length > 0, "the repeats went as a run");
  assert.deepEqual(ports[1].sent, frames);
});

/** Three trunk ports on one bridge, port 0 polled, broadcast frames pending on it. */
function floodRig(log: string[]) {
  const bridge = new Bridge({ vlans: [undefined, undefined, undefined] });
  const ports = [0, 1, 2].map((i) => new MemoryPort(log, String(i)));
  const fwd = new Forwarder(bridge, 3, ports.map(() => new Float64Array(64)));
  ports.forEach((p, i) => {
    bridge.setLinkUp(i, true);
    fwd.targets[i] = p;
  });
  fwd.polled = [{ index: 0, port: ports[0] }];
  const send = () => {
    const frame = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 0x0a, 0x08, 0x00];
    ports[0].memory.set(frame, 0);
    ports[0].pending = [{ offset: 0, length: 60 }];
  };
  return { fwd, ports, send };
}

// A port may send from the received bytes where they lie until its flush (a VXLAN port sends a
// cut super-frame's payload from the guest's memory or the packet ring): the burst goes back to
// its owner only once every port it reached is flushed.
Deno.test("every port a burst reached is flushed before the burst is released", () => {
  const log: string[] = [];
  const { fwd, send } = floodRig(log);
  send();
  assert.equal(fwd.poll(0), 1);
  assert.deepEqual(log, ["flush 1", "flush 2", "release 0"]);
});

// A transmit that throws leaves the burst half forwarded: the worker's recovery has the ports
// already reached flushed (they may still read the received bytes), and they are flushed after
// the next bursts too (a port left marked as reached would never be flushed again).
Deno.test("after a transmit throws mid-burst, the ports reached are flushed, then and later", () => {
  const log: string[] = [];
  const { fwd, ports, send } = floodRig(log);
  ports[2].onTransmit = () => {
    throw new Error("port 2 fails");
  };
  send();
  assert.throws(() => fwd.poll(0), /port 2 fails/);
  assert.deepEqual(log, []);
  fwd.targets[2] = null; // what the worker does with the failed port
  fwd.abandonBurst();
  assert.deepEqual(log, ["flush 1"]);
  log.length = 0;
  send();
  assert.equal(fwd.poll(0), 1);
  assert.deepEqual(log, ["flush 1", "release 0"]);
});
