// VhostUserDevice (ports/vhost_user/device.ts): the negotiation and ring state machine, driven
// message by message with payloads built from the specification (tests/helpers/vhost_wire.ts)
// and a fake datapath in place of the workers, which records every state it is asked to run.
import assert from "node:assert/strict";
import { eventfdCreate, isEventFd } from "../../ffi/fd.ts";
import { memfdCreate } from "../../ffi/mem.ts";
import {
  type DatapathState,
  type DeviceDatapath,
  VhostUserDevice,
} from "../../ports/vhost_user/device.ts";
import {
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_ECN,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_HOST_ECN,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_RING_F_EVENT_IDX,
} from "../../ports/vhost_user/features.ts";
import { type Message, ProtocolError } from "../../ports/vhost_user/protocol.ts";
import { memTablePayload, vringAddrPayload } from "../../peers/vhost_frontend.ts";
import * as W from "../../peers/vhost_wire.ts";

const bit = (n: number) => 1n << BigInt(n);
const MEM = 1 << 20;
const UVA = 0x7f00_0000_0000n;
/** Ring r's parts: descriptors, avail, used, 16 KiB apart per ring. */
const ringAt = (r: number) => ({
  desc: UVA + BigInt(r * 0x4000),
  avail: UVA + BigInt(r * 0x4000 + 0x1000),
  used: UVA + BigInt(r * 0x4000 + 0x2000),
});

/** The workers, faked: records each state; a ring that stops reports `stopAt` as its position. */
class FakeDatapath implements DeviceDatapath {
  readonly applied: (DatapathState | null)[] = [];
  stopAt = 0;
  #running: DatapathState | null = null;
  apply(state: DatapathState | null): Promise<Map<number, number>> {
    this.applied.push(state);
    const stopped = new Map<number, number>();
    for (const q of this.#running?.queues ?? []) {
      if (!state?.queues.some((n) => n.index === q.index)) stopped.set(q.index, this.stopAt);
    }
    this.#running = state;
    return Promise.resolve(stopped);
  }
  readonly announced: Uint8Array[] = [];
  announce(mac: Uint8Array): Promise<void> {
    this.announced.push(mac);
    return Promise.resolve();
  }
  get running(): number[] {
    return this.#running?.queues.map((q) => q.index) ?? [];
  }
}

function setup(queuePairs = 1, offloads = true) {
  const dp = new FakeDatapath();
  const logs: string[] = [];
  const dev = new VhostUserDevice(
    { name: "t", queuePairs, mtu: 1500, packedRing: true, offloads },
    dp,
    (m) => logs.push(m),
  );
  const send = (request: number, payload: Uint8Array = new Uint8Array(0), fds: number[] = []) => {
    const m: Message = {
      request,
      flags: W.VHOST_USER_VERSION,
      payload: new DataView(payload.slice().buffer),
      fds,
    };
    return dev.handle(m);
  };
  const u64 = (reply: Uint8Array | null) => new DataView(reply!.buffer).getBigUint64(0, true);
  return { dp, dev, logs, send, u64 };
}

type Rig = ReturnType<typeof setup>;

async function memory(rig: Rig) {
  const fd = memfdCreate("device-test", MEM);
  await rig.send(
    W.VHOST_USER_SET_MEM_TABLE,
    memTablePayload([{ gpa: 0n, size: BigInt(MEM), uva: UVA, offset: 0n }]),
    [fd],
  );
}

/** Everything a ring needs except what `skip` names, in the order QEMU sends it. */
async function ring(rig: Rig, r: number, skip: string[] = []) {
  const a = ringAt(r);
  if (!skip.includes("num")) {
    await rig.send(W.VHOST_USER_SET_VRING_NUM, W.vringStatePayload(r, 256));
  }
  if (!skip.includes("base")) {
    await rig.send(W.VHOST_USER_SET_VRING_BASE, W.vringStatePayload(r, 0));
  }
  if (!skip.includes("addr")) {
    await rig.send(W.VHOST_USER_SET_VRING_ADDR, vringAddrPayload(r, a.desc, a.used, a.avail));
  }
  await rig.send(W.VHOST_USER_SET_VRING_CALL, W.u64Payload(BigInt(r)), [eventfdCreate()]);
  if (!skip.includes("kick")) {
    await rig.send(W.VHOST_USER_SET_VRING_KICK, W.u64Payload(BigInt(r)), [eventfdCreate()]);
  }
  if (!skip.includes("enable")) {
    await rig.send(W.VHOST_USER_SET_VRING_ENABLE, W.vringStatePayload(r, 1));
  }
}

async function negotiate(rig: Rig, features: bigint) {
  const offered = rig.u64(await rig.send(W.VHOST_USER_GET_FEATURES));
  assert.equal(offered & features, features, "offered");
  await rig.send(W.VHOST_USER_SET_FEATURES, W.u64Payload(features));
}

const BASE = bit(VIRTIO_F_VERSION_1) | bit(W.VHOST_USER_F_PROTOCOL_FEATURES);

Deno.test("features: the offer; a bit that was not offered is refused, naming the value", async () => {
  const rig = setup();
  const offered = rig.u64(await rig.send(W.VHOST_USER_GET_FEATURES));
  for (const b of [VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX]) {
    assert.ok(offered & bit(b), `bit ${b} offered`);
  }
  assert.equal(offered & bit(VIRTIO_NET_F_MQ), 0n, "MQ only with more than one queue pair");
  await assert.rejects(
    rig.send(W.VHOST_USER_SET_FEATURES, W.u64Payload(offered | bit(63))),
    (e: Error) =>
      e instanceof ProtocolError &&
      /SET_FEATURES: 0x[0-9a-f]+ has bits not offered/.test(e.message),
  );
  const multi = setup(2);
  assert.ok(multi.u64(await multi.send(W.VHOST_USER_GET_FEATURES)) & bit(VIRTIO_NET_F_MQ));
  assert.equal(multi.u64(await multi.send(W.VHOST_USER_GET_QUEUE_NUM)), 2n);
});

Deno.test("a ring runs only once memory, size, address, kick and enable are all there", async (t) => {
  for (const missing of ["num", "addr", "kick", "enable"]) {
    await t.step(`not without ${missing}`, async () => {
      const rig = setup();
      await negotiate(rig, BASE);
      await memory(rig);
      await ring(rig, 1, [missing]);
      assert.deepEqual(rig.dp.running, [], `ring 1 runs without ${missing}`);
    });
  }
  await t.step("not without memory", async () => {
    const rig = setup();
    await negotiate(rig, BASE);
    await ring(rig, 1);
    assert.deepEqual(rig.dp.running, []);
    await memory(rig);
    assert.deepEqual(rig.dp.running, [1], "and at once when the memory comes");
  });
  await t.step("without protocol features, no enable is needed", async () => {
    const rig = setup();
    await negotiate(rig, bit(VIRTIO_F_VERSION_1));
    await memory(rig);
    await ring(rig, 1, ["enable"]);
    assert.deepEqual(rig.dp.running, [1]);
  });
});

Deno.test("features: the offloads are offered unless the port's offloads option is off", async () => {
  const offloads = [
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_ECN,
  ];
  for (const on of [true, false]) {
    const rig = setup(1, on);
    const offered = rig.u64(await rig.send(W.VHOST_USER_GET_FEATURES));
    for (const b of offloads) assert.equal((offered & bit(b)) !== 0n, on, `bit ${b}`);
    assert.ok(offered & bit(VIRTIO_NET_F_MRG_RXBUF), "the rest is offered either way");
  }
});

Deno.test("the running state says whether the guest may send offloads (CSUM, HOST_TSO)", async () => {
  for (const [extra, want] of [[0n, false], [bit(VIRTIO_NET_F_CSUM), true]] as const) {
    const rig = setup();
    await negotiate(rig, BASE | extra);
    await memory(rig);
    await ring(rig, 0);
    await ring(rig, 1);
    assert.equal(rig.dev.running!.hostOffloads, want);
  }
});

Deno.test("the running state carries the negotiated features and the ring's place", async () => {
  const rig = setup();
  await negotiate(rig, BASE | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_RING_F_EVENT_IDX));
  await memory(rig);
  await ring(rig, 0);
  await ring(rig, 1);
  const s = rig.dev.running!;
  assert.equal(s.mergeable, true);
  assert.equal(s.hdrLen, 12);
  assert.equal(s.maxFrame, 1500 + 14 + 4);
  assert.deepEqual(s.queues.map((q) => [q.index, q.size, q.eventIdx, q.packed]), [
    [0, 256, true, false],
    [1, 256, true, false],
  ]);
  assert.deepEqual(s.queues[1].desc, { region: 0, offset: 0x4000 });
  assert.deepEqual(s.queues[1].avail, { region: 0, offset: 0x5000 });
  assert.deepEqual(s.queues[1].used, { region: 0, offset: 0x6000 });
  assert.ok(isEventFd(s.queues[1].kickFd) && isEventFd(s.queues[1].callFd));
  assert.equal(s.queues[0].packed, false);
  assert.ok(!(rig.dev.features & bit(VIRTIO_F_RING_PACKED)));
});

Deno.test("GET_VRING_BASE stops the ring and answers where the datapath stopped", async () => {
  const rig = setup();
  await negotiate(rig, BASE);
  await memory(rig);
  await ring(rig, 1);
  rig.dp.stopAt = 1234;
  const reply = await rig.send(W.VHOST_USER_GET_VRING_BASE, W.vringStatePayload(1, 0));
  const v = new DataView(reply!.buffer);
  assert.deepEqual([v.getUint32(0, true), v.getUint32(4, true)], [1, 1234]);
  assert.deepEqual(rig.dp.running, []);
  assert.equal(rig.dev.rings[1].kickFd, -1, "the kick fd is closed");
});

Deno.test("impossible requests are protocol errors naming the field", async (t) => {
  const cases: [string, (rig: Rig) => Promise<unknown>, RegExp][] = [
    [
      "ring index out of range",
      (rig) => rig.send(W.VHOST_USER_SET_VRING_NUM, W.vringStatePayload(2, 256)),
      /SET_VRING_NUM: ring 2 out of range \(2 rings\)/,
    ],
    [
      "ring size not a power of 2",
      (rig) => rig.send(W.VHOST_USER_SET_VRING_NUM, W.vringStatePayload(0, 100)),
      /ring size 100 is not a power of 2/,
    ],
    [
      "base beyond 16 bits",
      (rig) => rig.send(W.VHOST_USER_SET_VRING_BASE, W.vringStatePayload(0, 70000)),
      /SET_VRING_BASE: base 70000 > 65535/,
    ],
    [
      "a kick fd that is not an eventfd",
      (rig) =>
        rig.send(W.VHOST_USER_SET_VRING_KICK, W.u64Payload(0n), [memfdCreate("not-an-eventfd", 0)]),
      /SET_VRING_KICK: fd is not an eventfd/,
    ],
    [
      "an MTU below 68",
      (rig) => rig.send(W.VHOST_USER_NET_SET_MTU, W.u64Payload(67n)),
      /NET_SET_MTU: 67 not in 68..9000/,
    ],
    [
      "REM_MEM_REG without memory",
      (rig) =>
        rig.send(
          W.VHOST_USER_REM_MEM_REG,
          memTablePayload([{ gpa: 0n, size: 4096n, uva: UVA, offset: 0n }], 0),
        ),
      /REM_MEM_REG: no memory table/,
    ],
  ];
  for (const [name, run, want] of cases) {
    await t.step(name, async () => {
      await assert.rejects(
        run(setup()),
        (e: Error) => e instanceof ProtocolError && want.test(e.message),
      );
    });
  }
});

Deno.test("a reset stops the datapath and forgets features and memory", async () => {
  const rig = setup();
  await negotiate(rig, BASE);
  await memory(rig);
  await ring(rig, 1);
  assert.deepEqual(rig.dp.running, [1]);
  await rig.send(W.VHOST_USER_RESET_DEVICE);
  assert.deepEqual(rig.dp.running, []);
  assert.equal(rig.dev.features, 0n);
  assert.deepEqual(rig.dev.rings.map((r) => [r.kickFd, r.callFd, r.num]), [[-1, -1, 0], [
    -1,
    -1,
    0,
  ]]);
});
