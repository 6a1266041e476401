import assert from "node:assert/strict";
import * as F from "../ports/vhost_user/features.ts";
import * as P from "../ports/vhost_user/protocol.ts";
import { concatBytes } from "../switch/tap.ts";
import { memTablePayload, vringAddrPayload } from "../peers/vhost_frontend.ts";
import * as W from "../peers/vhost_wire.ts";

function msgBytes(request: number, payload: Uint8Array = new Uint8Array(0), flags = 1): Uint8Array {
  return P.encodeMessage(request, flags, payload);
}

const concat = (...parts: Uint8Array[]) => concatBytes(parts);

Deno.test("reader reassembles messages split at any byte", () => {
  const stream = concat(
    msgBytes(P.VHOST_USER_GET_FEATURES),
    msgBytes(P.VHOST_USER_SET_FEATURES, P.u64Payload(0x1_4000_8000n)),
    msgBytes(P.VHOST_USER_SET_VRING_NUM, P.vringStatePayload(1, 256)),
  );
  for (let cut = 1; cut < stream.length; cut++) {
    const r = new P.MessageReader();
    r.push(stream.subarray(0, cut), []);
    r.push(stream.subarray(cut), []);
    assert.deepEqual(r.ready.map((m) => m.request), [1, 2, 8], `cut at ${cut}`);
    assert.equal(P.decodeU64(r.ready[1]), 0x1_4000_8000n);
    assert.deepEqual(P.decodeVringState(r.ready[2]), { index: 1, num: 256 });
  }
});

Deno.test("fds that come with a read belong to the last message starting in it", () => {
  const r = new P.MessageReader();
  // As Linux delivers it: fd-less messages glued in front of the one that carried the fd.
  const chunk = concat(
    msgBytes(P.VHOST_USER_SET_VRING_NUM, P.vringStatePayload(0, 256)),
    msgBytes(P.VHOST_USER_SET_VRING_BASE, P.vringStatePayload(0, 0)),
    msgBytes(P.VHOST_USER_SET_VRING_CALL, P.u64Payload(0n)),
  );
  r.push(chunk, [42]);
  assert.deepEqual(r.ready.map((m) => m.fds), [[], [], [42]]);
  assert.deepEqual(P.decodeVringFile(r.ready[2]), { index: 0, fd: 42 });

  // A message whose header arrives with its fds and whose payload comes later.
  const r2 = new P.MessageReader();
  const kick = msgBytes(P.VHOST_USER_SET_VRING_KICK, P.u64Payload(1n));
  r2.push(kick.subarray(0, 5), [7]);
  assert.equal(r2.pendingFdCount, 1);
  r2.push(kick.subarray(5), []);
  assert.deepEqual(r2.ready[0].fds, [7]);
  assert.deepEqual(P.decodeVringFile(r2.ready[0]), { index: 1, fd: 7 });
});

Deno.test("no-fd flag and missing fds in SET_VRING_KICK/CALL", () => {
  const r = new P.MessageReader();
  r.push(msgBytes(P.VHOST_USER_SET_VRING_KICK, P.u64Payload(0x101n)), []);
  r.push(msgBytes(P.VHOST_USER_SET_VRING_CALL, P.u64Payload(0x0n)), []);
  assert.deepEqual(P.decodeVringFile(r.ready[0]), { index: 1, fd: -1 });
  assert.throws(() => P.decodeVringFile(r.ready[1]), /SET_VRING_CALL: expected 1 fd, got 0/);
});

Deno.test("oversized and short payloads are protocol errors", () => {
  const r = new P.MessageReader();
  const header = new Uint8Array(12);
  new DataView(header.buffer).setUint32(8, 1 << 20, true);
  assert.throws(() => r.push(header, []), /payload size 1048576 exceeds 4096/);

  const r2 = new P.MessageReader();
  r2.push(msgBytes(P.VHOST_USER_SET_VRING_ADDR, new Uint8Array(16)), []);
  assert.throws(
    () => P.decodeVringAddr(r2.ready[0]),
    /SET_VRING_ADDR: payload is 16 bytes, needs 40/,
  );
});

Deno.test("memory tables: region count bounds and layout", () => {
  const payload = new Uint8Array(8 + 32 * 2);
  const v = new DataView(payload.buffer);
  v.setUint32(0, 2, true);
  v.setBigUint64(8, 0n, true);
  v.setBigUint64(16, 0xa0000n, true);
  v.setBigUint64(24, 0x7f0000000000n, true);
  v.setBigUint64(32, 0n, true);
  v.setBigUint64(40, 0xc0000n, true);
  v.setBigUint64(48, 0x1000000n, true);
  v.setBigUint64(56, 0x7f00000c0000n, true);
  v.setBigUint64(64, 0xc0000n, true);
  const r = new P.MessageReader();
  r.push(msgBytes(P.VHOST_USER_SET_MEM_TABLE, payload), [3, 4]);
  const regions = P.decodeMemoryTable(r.ready[0]);
  assert.equal(regions.length, 2);
  assert.equal(regions[1].guestPhysAddr, 0xc0000n);
  assert.equal(regions[1].memorySize, 0x1000000n);
  assert.equal(regions[1].mmapOffset, 0xc0000n);
  assert.deepEqual(r.ready[0].fds, [3, 4]);

  v.setUint32(0, 9, true);
  const r2 = new P.MessageReader();
  r2.push(msgBytes(P.VHOST_USER_SET_MEM_TABLE, payload), []);
  assert.throws(() => P.decodeMemoryTable(r2.ready[0]), /9 regions \(1\.\.8\)/);
  v.setUint32(0, 3, true);
  const r3 = new P.MessageReader();
  r3.push(msgBytes(P.VHOST_USER_SET_MEM_TABLE, payload), []);
  assert.throws(() => P.decodeMemoryTable(r3.ready[0]), /needs 104/);
});

// The switch's numbers against the ones the test front-ends take from the specification
// (tests/helpers/vhost_wire.ts): a request code or flag that drifted in protocol.ts would
// otherwise go unnoticed wherever the switch talks only to itself.
Deno.test("request codes, flags and feature bits match the specification", () => {
  const spec = Object.entries(W).filter(([name, v]) =>
    name.startsWith("VHOST_USER_") && typeof v === "number"
  );
  assert.ok(spec.length > 40, `${spec.length} names`);
  // The switch keeps the vhost-user feature bit with the virtio ones (features.ts).
  const ours: Record<string, unknown> = { ...F.VIRTIO_FEATURES, ...P };
  for (const [name, value] of spec) assert.equal(ours[name], value, name);
});

Deno.test("payloads built from the specification decode as meant", () => {
  const msg = (request: number, payload: Uint8Array, fds: number[] = []): P.Message => {
    const r = new P.MessageReader();
    r.push(W.encodeMessage(request, W.VHOST_USER_VERSION, payload), fds);
    assert.equal(r.ready.length, 1);
    return r.ready[0];
  };
  assert.deepEqual(
    P.decodeVringState(msg(W.VHOST_USER_SET_VRING_BASE, W.vringStatePayload(3, 65535))),
    { index: 3, num: 65535 },
  );
  const kick = W.u64Payload(2n | BigInt(W.VHOST_USER_VRING_NOFD_MASK));
  assert.deepEqual(P.decodeVringFile(msg(W.VHOST_USER_SET_VRING_KICK, kick)), {
    index: 2,
    fd: -1,
  });
  assert.deepEqual(P.decodeVringFile(msg(W.VHOST_USER_SET_VRING_CALL, W.u64Payload(1n), [9])), {
    index: 1,
    fd: 9,
  });
  const addr = P.decodeVringAddr(
    msg(W.VHOST_USER_SET_VRING_ADDR, vringAddrPayload(1, 0x1000n, 0x3000n, 0x2000n)),
  );
  assert.deepEqual([addr.index, addr.desc, addr.used, addr.avail], [1, 0x1000n, 0x3000n, 0x2000n]);
  const table = P.decodeMemoryTable(
    msg(
      W.VHOST_USER_SET_MEM_TABLE,
      memTablePayload([{ gpa: 0n, size: 0x100000n, uva: 0x700_0000_0000n, offset: 4096n }]),
      [5],
    ),
  );
  assert.deepEqual(
    table.map((r) => [r.guestPhysAddr, r.memorySize, r.userspaceAddr, r.mmapOffset]),
    [[0n, 0x100000n, 0x700_0000_0000n, 4096n]],
  );
});

Deno.test("names are derived from the one table of each enum", () => {
  assert.equal(P.requestName(W.VHOST_USER_SET_MEM_TABLE), "SET_MEM_TABLE");
  assert.equal(P.requestName(35), "VRING_KICK");
  assert.equal(P.requestName(99), "request 99");
  for (const [name, code] of Object.entries(P.VHOST_USER_REQUESTS)) {
    assert.equal(P.requestName(code), name.slice("VHOST_USER_".length));
  }
  const bits = (...b: number[]) => b.reduce((f, n) => f | (1n << BigInt(n)), 0n);
  assert.deepEqual(
    F.featureNames(bits(15, 28, 29, 30, 32, 34, 2)),
    [
      "bit2",
      "MRG_RXBUF",
      "RING_INDIRECT_DESC",
      "RING_EVENT_IDX",
      "PROTOCOL_FEATURES",
      "VERSION_1",
      "RING_PACKED",
    ],
  );
});
