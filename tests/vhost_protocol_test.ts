import assert from "node:assert/strict";
import * as P from "../ports/vhost_user/protocol.ts";
import { concatBytes } from "../switch/tap.ts";

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
