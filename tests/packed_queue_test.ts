// The packed virtqueue's ring mechanics against a driver written from the virtio 1.2 spec
// (2.8), in memfd memory, no vhost-user connection: wrap counters over many laps, used
// descriptors and buffer ids, IN_ORDER batches, rewinding a frame's buffers, event suppression,
// chains and indirect tables, hostile chains, and where a restarted ring resumes.
import assert from "node:assert/strict";
import { closeFd, eventfdCreate, eventfdRead } from "../ffi/fd.ts";
import { memfdCreate, mmap } from "../ffi/mem.ts";
import { GuestMemory } from "../ports/vhost_user/memory.ts";
import {
  PackedQueue,
  packedResumeBase,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
} from "../ports/vhost_user/packed_queue.ts";
import {
  CHAIN_BAD_INDIRECT,
  sharedLastAvail,
  sharedRingState,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
} from "../ports/vhost_user/virtqueue.ts";

const DESC = 0;
const DRIVER_EVENT = 4096;
const DEVICE_EVENT = 4160;
const INDIRECT = 8192;
const BUFFERS = 65536;
const BUF = 256;
const MEM = BUFFERS + 64 * BUF;
const AVAIL = 1 << 7;
const USED = 1 << 15;

/** The driver side of one packed ring, as the spec describes it. */
class Driver {
  readonly bytes: Uint8Array;
  readonly mem: GuestMemory;
  readonly view: DataView;
  availPos = 0;
  availWrap = 1;
  usedPos = 0;
  usedWrap = 1;
  /** Descriptors per buffer id, to skip them when the id comes back used. */
  readonly chainLen = new Map<number, number>();
  /** Buffer ids in the order they were made available. */
  readonly posted: number[] = [];

  constructor(readonly size: number) {
    const fd = memfdCreate("packed-test", MEM);
    const map = mmap(MEM, { fd });
    closeFd(fd);
    this.mem = new GuestMemory([{
      guestPhys: 0,
      size: MEM,
      userAddr: 0,
      mapAddress: map.address,
      mapLength: MEM,
      dataOffset: 0,
    }]);
    this.bytes = this.mem.bytes[0];
    this.view = new DataView(this.bytes.buffer);
  }

  queue(opts: { inOrder?: boolean; eventIdx?: boolean; base?: number; callFd?: number } = {}) {
    return new PackedQueue(this.mem, {
      index: 1,
      size: this.size,
      packed: true,
      inOrder: opts.inOrder ?? false,
      desc: { region: 0, offset: DESC },
      avail: { region: 0, offset: DRIVER_EVENT },
      used: { region: 0, offset: DEVICE_EVENT },
      lastAvail: opts.base ?? 0x8000,
      eventIdx: opts.eventIdx ?? false,
      callFd: opts.callFd ?? -1,
      kickFd: -1,
      shared: null,
      ringLog: [],
    });
  }

  /** A queue on this ring for a worker that shares it (positions in `shared`). */
  queueShared(shared: SharedArrayBuffer) {
    return new PackedQueue(this.mem, {
      index: 0,
      size: this.size,
      packed: true,
      inOrder: false,
      desc: { region: 0, offset: DESC },
      avail: { region: 0, offset: DRIVER_EVENT },
      used: { region: 0, offset: DEVICE_EVENT },
      lastAvail: 0x8000,
      eventIdx: false,
      callFd: -1,
      kickFd: -1,
      shared,
      ringLog: [],
    });
  }

  flags(pos: number): number {
    return this.view.getUint16(DESC + 16 * pos + 14, true);
  }

  /** Makes one buffer available: `parts` descriptors (addr, len, extra flags), head flags last. */
  post(id: number, parts: [number, number, number][]): void {
    const head = this.availPos;
    let headFlags = 0;
    parts.forEach(([addr, len, fl], k) => {
      const d = DESC + 16 * this.availPos;
      this.view.setBigUint64(d, BigInt(addr), true);
      this.view.setUint32(d + 8, len, true);
      this.view.setUint16(d + 12, id, true);
      const flags = fl | (k < parts.length - 1 ? VRING_DESC_F_NEXT : 0) |
        (this.availWrap ? AVAIL : USED);
      if (this.availPos === head) headFlags = flags;
      else this.view.setUint16(d + 14, flags, true);
      if (++this.availPos === this.size) {
        this.availPos = 0;
        this.availWrap ^= 1;
      }
    });
    this.view.setUint16(DESC + 16 * head + 14, headFlags, true);
    this.chainLen.set(id, parts.length);
    this.posted.push(id);
  }

  /** Takes every used descriptor: [id, len] each; with IN_ORDER one id stands for all before it. */
  reclaim(inOrder = false): [number, number][] {
    const out: [number, number][] = [];
    for (;;) {
      const fl = this.flags(this.usedPos);
      const used = this.usedWrap ? AVAIL | USED : 0;
      if ((fl & (AVAIL | USED)) !== used) return out;
      const d = DESC + 16 * this.usedPos;
      const id = this.view.getUint16(d + 12, true);
      const len = this.view.getUint32(d + 8, true);
      const ids = inOrder ? this.posted.splice(0, this.posted.indexOf(id) + 1) : [id];
      if (!inOrder) this.posted.splice(this.posted.indexOf(id), 1);
      for (const i of ids) {
        this.usedPos += this.chainLen.get(i)!;
        if (this.usedPos >= this.size) {
          this.usedPos -= this.size;
          this.usedWrap ^= 1;
        }
        out.push([i, i === id ? len : 0]);
      }
    }
  }
}

Deno.test("packed ring: device-readable buffers over many laps, wrap counters and ids", () => {
  const drv = new Driver(8);
  const q = drv.queue();
  let nextId = 0;
  for (let burst = 0; burst < 20; burst++) {
    const n = 1 + (burst % 3);
    for (let k = 0; k < n; k++) {
      const id = (nextId++ * 5) % 16; // ids need not follow positions
      drv.post(id, [[BUFFERS + id * BUF, 60 + id, 0]]);
    }
    assert.equal(q.availCount(), n);
    const tokens = new Int32Array(n);
    for (let k = 0; k < n; k++) {
      tokens[k] = q.popAvail();
      assert.equal(q.walkChain(tokens[k], false), 1);
      const id = drv.posted[k];
      assert.equal(q.segOffset[0], BUFFERS + id * BUF);
      assert.equal(q.segLength[0], 60 + id);
    }
    assert.equal(q.availCount(), 0);
    const before = drv.posted.slice();
    q.putUsedBatch(tokens, n);
    assert.deepEqual(drv.reclaim(), [], "nothing is visible before storeUsed");
    q.storeUsed();
    assert.deepEqual(drv.reclaim().map(([id]) => id), before);
    // GET_VRING_BASE: the driver's next position and wrap counter.
    assert.equal(q.position(), drv.availPos | (drv.availWrap << 15));
  }
  assert.ok(nextId > 8 * 4, "the ring wrapped several times");
});

Deno.test("packed ring: IN_ORDER writes one used descriptor per batch", () => {
  const drv = new Driver(8);
  const q = drv.queue({ inOrder: true });
  for (let lap = 0; lap < 6; lap++) {
    for (let id = 0; id < 3; id++) drv.post(id, [[BUFFERS + id * BUF, 100, 0]]);
    const tokens = new Int32Array(3);
    for (let k = 0; k < 3; k++) tokens[k] = q.popAvail();
    const firstPos = drv.usedPos;
    q.putUsedBatch(tokens, 3);
    q.storeUsed();
    // Only the first position changed hands: it carries the last buffer's id.
    assert.equal(drv.view.getUint16(DESC + 16 * firstPos + 12, true), 2);
    assert.deepEqual(drv.reclaim(true).map(([id]) => id), [0, 1, 2]);
  }
});

Deno.test("packed ring: writable buffers, lengths, rewind leaves the ring untouched", () => {
  const drv = new Driver(4);
  const q = drv.queue();
  for (let lap = 0; lap < 5; lap++) {
    for (let id = 0; id < 4; id++) drv.post(id, [[BUFFERS + id * BUF, BUF, VRING_DESC_F_WRITE]]);
    const snapshot = drv.bytes.slice(DESC, DESC + 64);
    // A frame that found too little room gives its buffers back.
    q.mark();
    assert.equal(q.walkChain(q.popAvail(), true), 1);
    q.putUsed(q.popAvail(), 10);
    q.rewind();
    q.storeUsed();
    assert.deepEqual(drv.bytes.slice(DESC, DESC + 64), snapshot);
    assert.equal(q.availCount(), 4);
    for (let k = 0; k < 4; k++) {
      const t = q.popAvail();
      assert.equal(q.walkChain(t, false), -4, "a device-writable buffer is not readable");
      assert.equal(q.walkChain(t, true), 1);
      q.putUsed(t, 20 + k);
    }
    q.storeUsed();
    const got = drv.reclaim();
    assert.deepEqual(got, [[0, 20], [1, 21], [2, 22], [3, 23]]);
    assert.equal(drv.flags(0) & VRING_DESC_F_WRITE, VRING_DESC_F_WRITE, "written: WRITE set");
  }
});

Deno.test("packed ring: frames put before a rewound one are used, the rewound one is taken again", () => {
  const drv = new Driver(8);
  const q = drv.queue();
  for (let lap = 0; lap < 4; lap++) {
    for (let id = 0; id < 4; id++) drv.post(id, [[BUFFERS + id * BUF, BUF, VRING_DESC_F_WRITE]]);
    const third = DESC + 16 * ((drv.usedPos + 2) % 8);
    const untouched = drv.bytes.slice(third, third + 16);
    // Three frames, one buffer each, as the fill path takes them; the third gives its back.
    for (let f = 0; f < 3; f++) {
      q.mark();
      const t = q.popAvail();
      assert.equal(q.walkChain(t, true), 1);
      q.putUsed(t, 40 + f);
    }
    q.rewind();
    assert.deepEqual(drv.reclaim(), [], "nothing is visible before storeUsed");
    assert.deepEqual(drv.bytes.slice(third, third + 16), untouched, "the rewound one untouched");
    q.storeUsed();
    assert.deepEqual(drv.reclaim(), [[0, 40], [1, 41]]);
    // The given-back buffer and the last one are taken again, in order.
    assert.equal(q.availCount(), 2);
    for (let f = 0; f < 2; f++) q.putUsed(q.popAvail(), 50 + f);
    q.storeUsed();
    assert.deepEqual(drv.reclaim(), [[2, 50], [3, 51]]);
  }
});

Deno.test("packed ring: chains, indirect tables and hostile chains", () => {
  const drv = new Driver(8);
  const q = drv.queue();
  drv.post(7, [[BUFFERS, 12, 0], [BUFFERS + BUF, 100, 0], [BUFFERS + 2 * BUF, 50, 0]]);
  // An indirect table of two entries (no NEXT inside: entries are taken in order).
  for (const [k, [addr, len]] of [[BUFFERS + 3 * BUF, 12], [BUFFERS + 4 * BUF, 70]].entries()) {
    drv.view.setBigUint64(INDIRECT + 16 * k, BigInt(addr), true);
    drv.view.setUint32(INDIRECT + 16 * k + 8, len, true);
    drv.view.setUint16(INDIRECT + 16 * k + 14, 0, true);
  }
  drv.post(9, [[INDIRECT, 32, VRING_DESC_F_INDIRECT]]);
  drv.post(10, [[INDIRECT, 24, VRING_DESC_F_INDIRECT]]); // not a multiple of 16
  assert.equal(q.availCount(), 3);
  const a = q.popAvail();
  assert.equal(q.walkChain(a, false), 3);
  assert.deepEqual([...q.segLength.subarray(0, 3)], [12, 100, 50]);
  const b = q.popAvail();
  assert.equal(q.walkChain(b, false), 2);
  assert.deepEqual([...q.segOffset.subarray(0, 2)], [BUFFERS + 3 * BUF, BUFFERS + 4 * BUF]);
  const c = q.popAvail();
  assert.equal(q.walkChain(c, false), CHAIN_BAD_INDIRECT);
  for (const t of [a, b, c]) q.putUsed(t, 0);
  q.storeUsed();
  assert.deepEqual(drv.reclaim().map(([id]) => id), [7, 9, 10]);

  // Every descriptor chained to the next, around the whole ring: refused, ring not serviced.
  const bad = new Driver(4);
  const r = bad.queue();
  for (let pos = 0; pos < 4; pos++) {
    bad.view.setUint16(DESC + 16 * pos + 14, AVAIL | VRING_DESC_F_NEXT, true);
  }
  // The count of chains ahead already finds it: nothing is offered, and the ring is broken.
  assert.equal(r.availCount(), 0);
  assert.equal(r.broken, true);

  // The same chain after two good buffers: those two are still offered (and served) first.
  const late = new Driver(8);
  const l = late.queue();
  late.post(1, [[BUFFERS, 60, 0]]);
  late.post(2, [[BUFFERS + BUF, 60, 0]]);
  for (let pos = 2; pos < 8; pos++) {
    late.view.setUint16(DESC + 16 * pos + 14, AVAIL | VRING_DESC_F_NEXT, true);
  }
  assert.equal(l.availCount(), 2);
  assert.equal(l.broken, true);
  assert.equal(l.walkChain(l.popAvail(), false), 1);
  assert.equal(l.walkChain(l.popAvail(), false), 1);
  assert.equal(l.availCount(), 0);
});

Deno.test("packed ring: event suppression both ways", () => {
  const drv = new Driver(8);
  const call = eventfdCreate();
  try {
    const q = drv.queue({ eventIdx: true, callFd: call });
    const round = (n: number) => {
      for (let k = 0; k < n; k++) drv.post(k, [[BUFFERS, 60, 0]]);
      const tokens = new Int32Array(n);
      for (let k = 0; k < n; k++) tokens[k] = q.popAvail();
      q.putUsedBatch(tokens, n);
      q.storeUsed();
      drv.reclaim();
      return q.signal();
    };
    const setDriver = (flags: number, offWrap = 0) => {
      drv.view.setUint16(DRIVER_EVENT, offWrap, true);
      drv.view.setUint16(DRIVER_EVENT + 2, flags, true);
    };
    setDriver(VRING_PACKED_EVENT_FLAG_DISABLE);
    assert.equal(round(3), false);
    setDriver(VRING_PACKED_EVENT_FLAG_ENABLE);
    assert.equal(round(3), true);
    assert.equal(eventfdRead(call), 1n);
    // Used positions are now 6 (wrap 1): ask to hear once position 2 of the next lap is used.
    setDriver(VRING_PACKED_EVENT_FLAG_DESC, 2 | (0 << 15));
    assert.equal(round(3), false, "used up to position 1 of the next lap: not yet");
    assert.equal(round(3), true, "position 2 passed");
    // The device asks for kicks only while it is about to sleep.
    q.setGuestKicks(false);
    assert.equal(drv.view.getUint16(DEVICE_EVENT + 2, true), VRING_PACKED_EVENT_FLAG_DISABLE);
    q.setGuestKicks(true);
    assert.equal(drv.view.getUint16(DEVICE_EVENT + 2, true), VRING_PACKED_EVENT_FLAG_ENABLE);
  } finally {
    closeFd(call);
  }
});

Deno.test("packed ring: where a restarted ring resumes, from the descriptors' USED flags", () => {
  const flags = (bits: number[]) => (i: number) => bits[i];
  // Fresh ring (nothing written, or buffers made available in lap 1): position 0, wrap 1.
  assert.equal(packedResumeBase(flags([0, 0, 0, 0]), 4, 0x8000), 0x8000);
  // Device at position 2 in lap 1: positions 0-1 used (USED=1), 2-3 ahead (USED=0). A stale
  // base (QEMU resends its initial 0x8000 after losing its back-end) is corrected.
  assert.equal(packedResumeBase(flags([1, 1, 0, 0]), 4, 0x8000), 0x8002);
  // Device at position 1 in lap 2 (wrap 0): 0 used in lap 2 (USED=0), 1-3 from lap 1 (USED=1).
  assert.equal(packedResumeBase(flags([0, 1, 1, 1]), 4, 0x8000), 0x0001);
  // Every position used in lap 1: the device starts lap 2 at 0.
  assert.equal(packedResumeBase(flags([1, 1, 1, 1]), 4, 0x8000), 0x0000);
  // More than one edge (multi-descriptor chains): the flags cannot tell, the base stands.
  assert.equal(packedResumeBase(flags([1, 0, 1, 0]), 4, 0x8003), 0x8003);
});

Deno.test("packed ring: a queue resumes where another stopped, mid-lap and wrapped", () => {
  const drv = new Driver(8);
  let q = drv.queue();
  for (let i = 0; i < 13; i++) {
    drv.post(i % 8, [[BUFFERS, 60, 0]]);
    const t = q.popAvail();
    q.putUsed(t, 0);
    q.storeUsed();
    drv.reclaim();
    if (i % 4 === 3) q = drv.queue({ base: q.position() }); // a worker hand-over or restart
  }
  assert.equal(q.position(), 5, "13 buffers: position 5 in the second lap (wrap 0)");
  drv.post(3, [[BUFFERS, 60, 0]]);
  assert.equal(q.availCount(), 1);
});

Deno.test("packed ring: two workers filling one ring take turns under its shared state", () => {
  const drv = new Driver(8);
  const shared = sharedRingState(0x8000);
  // The same ring seen by two workers, as when a guest has fewer RX rings than there are workers.
  const a = drv.queueShared(shared);
  const b = drv.queueShared(shared);
  let id = 0;
  const lens: number[] = [];
  for (let frame = 0; frame < 40; frame++) {
    if (drv.posted.length < 4) {
      for (let k = 0; k < 4; k++) drv.post(id++ % 16, [[BUFFERS, BUF, VRING_DESC_F_WRITE]]);
    }
    const q = frame % 3 === 0 ? a : b;
    q.acquire();
    // What the other worker took since is not counted again.
    assert.equal(q.availCount(), drv.posted.length, `frame ${frame}: the other's progress seen`);
    const t = q.popAvail();
    assert.equal(q.walkChain(t, true), 1);
    q.putUsed(t, 100 + frame);
    q.releaseShared();
    lens.push(...drv.reclaim().map(([, len]) => len));
  }
  assert.deepEqual(lens, Array.from({ length: 40 }, (_, f) => 100 + f), "every frame, in order");
  // 40 buffers taken from an 8-entry ring: five laps, so position 0 with wrap counter 0.
  assert.equal(sharedLastAvail(shared), 0x0000);
});
