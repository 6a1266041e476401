// VirtioNetDatapath (ports/vhost_user/virtio_net.ts) over split rings in process memory that
// the test fills as a guest driver would (tests/helpers/split_ring.ts): frames the guest sends
// come out as a burst, with the virtio-net header skipped wherever the guest put it; frames for
// the guest land in its RX buffers with their length, num_buffers and one interrupt per burst.
import assert from "node:assert/strict";
import { closeFd, eventfdCreate, eventfdRead } from "../../ffi/fd.ts";
import {
  COUNTER_FIELDS,
  DROP_BAD_DESCRIPTOR,
  DROP_BAD_OFFLOAD,
  DROP_NO_BUFFER,
  DROP_RUNT,
  DROP_TOO_BIG,
  NOTIFICATIONS,
  RX_BYTES,
  RX_CSUM_PARTIAL,
  RX_PACKETS,
  TX_PACKETS,
} from "../../ports/counters.ts";
import { EgressFrame, FrameBatch } from "../../ports/port.ts";
import { openQueue, VirtioNetDatapath } from "../../ports/vhost_user/virtio_net.ts";
import { DESC_F_NEXT, SplitRingDriver } from "../helpers/split_ring.ts";
import { ethFrame } from "../../peers/pcap.ts";
import { OFFLOAD_CSUM, OFFLOAD_DATA_VALID } from "../../ports/offload/virtio_net_hdr.ts";

const HDR = 12;
const MAX_FRAME = 1518;

function datapath(mergeable = true) {
  const counters = new Float64Array(COUNTER_FIELDS);
  return { dp: new VirtioNetDatapath(HDR, mergeable, MAX_FRAME, counters), c: counters };
}

const frame = (length: number, seq = 1) =>
  ethFrame({ dst: "52:54:00:00:00:02", src: "52:54:00:00:00:01", length, seq });

/** The frames of a received burst, copied out. */
const framesOf = (b: FrameBatch) =>
  Array.from(
    { length: b.count },
    (_, i) => b.bytes[i].slice(b.offset[i], b.offset[i] + b.length[i]),
  );

Deno.test("guest TX: the header is skipped wherever the guest put it", () => {
  using g = new SplitRingDriver(16);
  const { dp, c } = datapath();
  dp.txQueues.push(openQueue(g.memory, g.spec(), null));
  const f = [frame(60, 1), frame(1000, 2), frame(1514, 3)];
  const hdr = new Uint8Array(HDR);
  // With the frame in one buffer; header separate; frame scattered over three buffers.
  g.offer(g.addChain([g.buffer(new Uint8Array([...hdr, ...f[0]]))]));
  g.offer(g.addChain([g.buffer(hdr), g.buffer(f[1])]));
  g.offer(g.addChain([
    g.buffer(new Uint8Array([...hdr, ...f[2].subarray(0, 7)])),
    g.buffer(f[2].subarray(7, 700)),
    g.buffer(f[2].subarray(700)),
  ]));
  g.publish();
  const batch = new FrameBatch();
  assert.equal(dp.receive(batch), 3);
  assert.deepEqual(framesOf(batch), f);
  assert.equal(c[RX_PACKETS], 3);
  assert.equal(c[RX_BYTES], 60 + 1000 + 1514);
  assert.equal(g.usedIdx, 0, "the buffers stay with us until release()");
  dp.release();
  assert.equal(g.usedIdx, 3, "all three handed back");
});

Deno.test("guest TX: runts, giants and broken chains are dropped, counted and handed back", () => {
  using g = new SplitRingDriver(16);
  const { dp, c } = datapath();
  dp.txQueues.push(openQueue(g.memory, g.spec(), null));
  g.offer(g.addChain([g.buffer(new Uint8Array(HDR + 13))]));
  g.offer(g.addChain([g.buffer(new Uint8Array(HDR + MAX_FRAME + 1))]));
  g.writeDesc(15, g.alloc(64), 64, DESC_F_NEXT, 15); // a chain that loops
  g.offer(15);
  g.offer(g.addChain([g.buffer(new Uint8Array([...new Uint8Array(HDR), ...frame(64)]))]));
  g.publish();
  const batch = new FrameBatch();
  assert.equal(dp.receive(batch), 1, "only the good frame");
  assert.deepEqual([c[DROP_RUNT], c[DROP_TOO_BIG], c[DROP_BAD_DESCRIPTOR]], [1, 1, 1]);
  dp.release();
  assert.equal(g.usedIdx, 4, "the dropped chains are handed back too");
});

Deno.test("guest TX: the header is read only from a guest that negotiated CSUM or HOST_TSO", () => {
  // NEEDS_CSUM with csum_start past the frame: a lie from a guest that may send offloads (a
  // counted drop), but from one that negotiated none the header is not read: a plain frame.
  const hdr = new Uint8Array(HDR);
  hdr[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
  hdr[6] = 0xff; // csum_start 0x00ff
  const f = frame(60);
  for (const hostOffloads of [true, false]) {
    using g = new SplitRingDriver(16);
    const c = new Float64Array(COUNTER_FIELDS);
    const dp = new VirtioNetDatapath(HDR, true, MAX_FRAME, c, 0, hostOffloads);
    dp.txQueues.push(openQueue(g.memory, g.spec(), null));
    g.offer(g.addChain([g.buffer(new Uint8Array([...hdr, ...f]))]));
    g.publish();
    const batch = new FrameBatch();
    const n = dp.receive(batch);
    if (hostOffloads) {
      assert.equal(n, 0);
      assert.equal(c[DROP_BAD_OFFLOAD], 1);
    } else {
      assert.equal(n, 1);
      assert.deepEqual(framesOf(batch), [f]);
      assert.equal(batch.offload[0], 0, "plain");
      assert.deepEqual([c[DROP_BAD_OFFLOAD], c[RX_CSUM_PARTIAL]], [0, 0]);
    }
    dp.release();
    assert.equal(g.usedIdx, 1);
  }
});

Deno.test("guest TX: headers are read for the whole burst; a lying one drops its frame only", () => {
  using g = new SplitRingDriver(16);
  const { dp, c } = datapath();
  dp.txQueues.push(openQueue(g.memory, g.spec(), null));
  const f = [frame(60, 1), frame(60, 2), frame(60, 3), frame(100, 4), frame(70, 5)];
  const partial = new Uint8Array(HDR);
  partial[0] = 1; // NEEDS_CSUM at 34 + 16: the TCP checksum of an IPv4 frame
  partial[6] = 34;
  partial[8] = 16;
  const lie = partial.slice();
  lie[6] = 0xff; // csum_start past the frame
  const plain = new Uint8Array(HDR);
  g.offer(g.addChain([g.buffer(new Uint8Array([...plain, ...f[0]]))]));
  g.offer(g.addChain([g.buffer(new Uint8Array([...partial, ...f[1]]))]));
  g.offer(g.addChain([g.buffer(new Uint8Array([...lie, ...f[2]]))]));
  g.offer(g.addChain([g.buffer(new Uint8Array([...plain, ...f[3]]))]));
  g.offer(g.addChain([g.buffer(partial), g.buffer(f[4])])); // read in receive's own loop
  g.publish();
  const batch = new FrameBatch();
  assert.equal(dp.receive(batch), 4);
  assert.deepEqual(framesOf(batch), [f[0], f[1], f[3], f[4]]);
  assert.deepEqual([...batch.offload.subarray(0, 4)], [0, OFFLOAD_CSUM, 0, OFFLOAD_CSUM]);
  assert.deepEqual([batch.csumStart[1], batch.csumOffset[1]], [34, 16]);
  assert.deepEqual([batch.csumStart[3], batch.csumOffset[3]], [34, 16]);
  assert.deepEqual([c[DROP_BAD_OFFLOAD], c[RX_CSUM_PARTIAL]], [1, 2]);
  assert.deepEqual([c[RX_PACKETS], c[RX_BYTES]], [4, 60 + 60 + 100 + 70]);
  dp.release();
  assert.equal(g.usedIdx, 5, "every chain handed back");
});

function rxRing(g: SplitRingDriver, buffers: number, size: number, mergeable: boolean) {
  const callFd = eventfdCreate();
  const { dp, c } = datapath(mergeable);
  const addrs: number[] = [];
  for (let i = 0; i < buffers; i++) {
    const addr = g.alloc(size);
    addrs.push(addr);
    g.offer(g.addChain([{ addr, len: size, write: true }]));
  }
  g.publish();
  dp.setRxQueue(openQueue(g.memory, g.spec({ index: 0, callFd }), null));
  return {
    dp,
    c,
    addrs,
    calls: () => Number(eventfdRead(callFd)),
    [Symbol.dispose]: () => closeFd(callFd),
  };
}

const send = (dp: VirtioNetDatapath, f: Uint8Array) =>
  dp.transmit(f, new EgressFrame().setWhole(f, 0, f.length));

Deno.test("guest RX: each frame in one buffer, its length used, one interrupt per burst", () => {
  using g = new SplitRingDriver(16);
  using r = rxRing(g, 4, 2048, false);
  const f = [frame(60, 1), frame(1514, 2), frame(333, 3)];
  for (const x of f) assert.ok(send(r.dp, x));
  assert.equal(g.usedIdx, 0, "nothing visible before flush");
  r.dp.flush();
  assert.equal(g.usedIdx, 3);
  f.forEach((x, i) => {
    const [id, len] = g.usedElem(i);
    assert.equal(len, HDR + x.length);
    const at = r.addrs[id];
    assert.deepEqual(g.bytes.slice(at + HDR, at + HDR + x.length), x, `frame ${i}`);
  });
  assert.equal(r.calls(), 1, "one call eventfd write for the burst");
  assert.equal(r.c[NOTIFICATIONS], 1);
  assert.equal(r.c[TX_PACKETS], 3);
});

Deno.test("guest RX with GUEST_CSUM: a plain frame's header is all zero, DATA_VALID only if said", () => {
  using g = new SplitRingDriver(16);
  const c = new Float64Array(COUNTER_FIELDS);
  const dp = new VirtioNetDatapath(HDR, true, MAX_FRAME, c, OFFLOAD_CSUM | OFFLOAD_DATA_VALID);
  const addrs: number[] = [];
  for (let i = 0; i < 2; i++) {
    const addr = g.alloc(2048);
    g.bytes.fill(0xee, addr, addr + 2048); // what the guest's buffer held before
    addrs.push(addr);
    g.offer(g.addChain([{ addr, len: 2048, write: true }]));
  }
  g.publish();
  dp.setRxQueue(openQueue(g.memory, g.spec({ index: 0 }), null));
  const f = frame(60);
  assert.ok(send(dp, f)); // a plain frame: its source verified nothing
  const verified = new EgressFrame().setWhole(f, 0, f.length);
  verified.offload = OFFLOAD_DATA_VALID;
  assert.ok(dp.transmit(f, verified));
  dp.flush();
  const header = (i: number) => [...g.bytes.slice(addrs[i], addrs[i] + HDR)];
  // flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers 1.
  assert.deepEqual(header(0), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
  assert.deepEqual(header(1), [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "VIRTIO_NET_HDR_F_DATA_VALID");
});

Deno.test("guest RX, mergeable: a frame spreads over buffers, num_buffers says how many", () => {
  using g = new SplitRingDriver(16);
  using r = rxRing(g, 4, 512, true);
  const f = frame(1400);
  assert.ok(send(r.dp, f));
  r.dp.flush();
  assert.equal(g.usedIdx, 3, "12 + 1400 bytes take three 512-byte buffers");
  const used = [0, 1, 2].map((i) => g.usedElem(i));
  assert.deepEqual(used.map(([, len]) => len), [512, 512, HDR + 1400 - 1024]);
  const first = r.addrs[used[0][0]];
  assert.equal(g.view.getUint16(first + 10, true), 3, "num_buffers");
  const got = new Uint8Array([
    ...g.bytes.slice(first + HDR, first + 512),
    ...used.slice(1).flatMap(([id, len]) => [...g.bytes.slice(r.addrs[id], r.addrs[id] + len)]),
  ]);
  assert.deepEqual(got, f);
});

Deno.test("guest RX: no buffer, or buffers too small, drop the frame and keep the buffers", () => {
  using g = new SplitRingDriver(16);
  using r = rxRing(g, 1, 128, false);
  assert.equal(send(r.dp, frame(1000)), false, "does not fit 128 bytes");
  assert.equal(r.c[DROP_TOO_BIG], 1);
  assert.ok(send(r.dp, frame(100)), "the buffer was kept for the next frame");
  assert.equal(send(r.dp, frame(60)), false, "no buffer left");
  assert.equal(r.c[DROP_NO_BUFFER], 1);
  r.dp.flush();
  assert.equal(g.usedIdx, 1);
});

for (const mergeable of [false, true]) {
  Deno.test(`guest RX, a run (mergeable ${mergeable}): each frame is the head and its own tail`, () => {
    // Six frames that share one head, as the forwarder hands a repeated decision on: the small
    // aligned ones go through the run's word loop, the 61-byte one (a tail not whole words) and
    // the 1514-byte one (longer than the word loop takes) through copyBytes; the ring holds five
    // buffers, so the last frame finds none and goes frame by frame, dropped and counted.
    using g = new SplitRingDriver(16);
    using r = rxRing(g, 5, 2048, mergeable);
    const lens = [60, 64, 61, 1514, 72, 60];
    const src = new Uint8Array(lens.length * 2048);
    const batch = new FrameBatch();
    lens.forEach((len, i) => {
      src.set(frame(len, i + 1), i * 2048);
      batch.bytes[i] = src;
      batch.offset[i] = i * 2048;
      batch.length[i] = len;
    });
    const head = new Uint8Array(16).fill(0xab);
    const f = new EgressFrame().setWhole(head, 0, 16);
    assert.equal(r.dp.transmitRun(batch, 0, lens.length, f, 16), 5);
    assert.equal(r.c[DROP_NO_BUFFER], 1);
    r.dp.flush();
    assert.equal(g.usedIdx, 5);
    lens.slice(0, 5).forEach((len, i) => {
      const [id, used] = g.usedElem(i);
      assert.equal(used, HDR + len, `frame ${i}`);
      const at = r.addrs[id];
      assert.deepEqual(
        [...g.bytes.slice(at, at + HDR + len)],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, ...head, ...src.slice(i * 2048 + 16, i * 2048 + len)],
        `frame ${i}`,
      );
    });
    assert.equal(r.c[TX_PACKETS], 5);
  });
}

Deno.test("guest RX, a run: a frame its buffer cannot hold goes the usual way, the rest follow", () => {
  // 128-byte buffers: the 200-byte frame leaves the run's loop. Without MRG_RXBUF it is dropped
  // (too big, counted) and its buffer kept for the next frame; with it, it spreads over two.
  for (const mergeable of [false, true]) {
    using g = new SplitRingDriver(16);
    using r = rxRing(g, 4, 128, mergeable);
    const lens = [60, 200, 64];
    const src = new Uint8Array(lens.length * 256);
    const batch = new FrameBatch();
    lens.forEach((len, i) => {
      src.set(frame(len, i + 1), i * 256);
      batch.bytes[i] = src;
      batch.offset[i] = i * 256;
      batch.length[i] = len;
    });
    const f = new EgressFrame().setWhole(src, 0, 16);
    assert.equal(r.dp.transmitRun(batch, 0, 3, f, 16), mergeable ? 3 : 2);
    r.dp.flush();
    const used = Array.from({ length: g.usedIdx }, (_, i) => g.usedElem(i)[1]);
    if (mergeable) assert.deepEqual(used, [HDR + 60, 128, HDR + 200 - 128, HDR + 64]);
    else {
      assert.deepEqual(used, [HDR + 60, HDR + 64]);
      assert.equal(r.c[DROP_TOO_BIG], 1);
    }
    const last = r.addrs[g.usedElem(used.length - 1)[0]];
    assert.deepEqual(g.bytes.slice(last + HDR, last + HDR + 64), src.slice(512, 576));
  }
});
