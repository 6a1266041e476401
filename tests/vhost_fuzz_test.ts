// Hostile vhost-user front-ends against a running switch, while two well-behaved ports keep
// forwarding. After every attack: the attacker's connection is gone, no fd leaked, the good
// ports still exchange frames byte for byte, and counters show what the switch refused.
import assert from "node:assert/strict";
import { closeFd, eventfdCreate, eventfdWrite } from "../ffi/fd.ts";
import { libc } from "../ffi/libc.ts";
import * as P from "../peers/vhost_wire.ts";
import {
  DESC_F_INDIRECT,
  DESC_F_NEXT,
  DESC_F_WRITE,
  memTablePayload,
  type Region,
  sendWithManyFds,
  UVA_OFFSET,
  VhostFrontend,
  vringAddrPayload,
  waitFor,
} from "../peers/vhost_frontend.ts";
import {
  Arena,
  assertNoLeak,
  ethFrame,
  FD_KINDS,
  G1,
  G2,
  makeFd,
  warmUpFdCount,
} from "./helpers/frontend_harness.ts";

const EVIL = "52:54:00:00:ee:ee";
const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 0x5eed);
const FUZZ_MESSAGES = 3000;

const hex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");

/** mulberry32: a small deterministic PRNG. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const u64 = P.u64Payload;
const state = P.vringStatePayload;
const bytes = (n: number) => new Uint8Array(n);
const region = (gpa: bigint, size: bigint, offset = 0n): Region => ({
  gpa,
  size,
  uva: gpa + BigInt(UVA_OFFSET),
  offset,
});

await warmUpFdCount();

// Each attack is a case of its own on a fresh arena (a switch with two good ports and the
// attacked one), so a failure names its attack and cannot hide behind an earlier one.
let arena: Arena;
let h: Arena["h"], g1: VhostFrontend, g2: VhostFrontend;
const after: Arena["after"] = (...a) => arena.after(...a);
const refused: Arena["refused"] = (...a) => arena.refused(...a);
const hangsUp: Arena["hangsUp"] = (...a) => arena.hangsUp(...a);
const attacker: Arena["attacker"] = () => arena.attacker();
const open: Arena["open"] = (o) => arena.open(o);
const connect: Arena["connect"] = (o) => arena.connect(o);
const goodPortsForward: Arena["goodPortsForward"] = (w) => arena.goodPortsForward(w);

function attack(name: string, fn: () => Promise<void>): void {
  Deno.test(`hostile front-ends: ${name}`, () =>
    Arena.run((a) => {
      arena = a;
      ({ h, g1, g2 } = a);
      return a.guard(fn);
    }));
}

attack("short payloads for every request type", async () => {
  const needs: [number, number][] = [
    [P.VHOST_USER_SET_FEATURES, 8],
    [P.VHOST_USER_SET_MEM_TABLE, 8],
    [P.VHOST_USER_SET_VRING_NUM, 8],
    [P.VHOST_USER_SET_VRING_ADDR, 40],
    [P.VHOST_USER_SET_VRING_BASE, 8],
    [P.VHOST_USER_SET_VRING_KICK, 8],
    [P.VHOST_USER_SET_VRING_CALL, 8],
    [P.VHOST_USER_SET_VRING_ERR, 8],
    [P.VHOST_USER_SET_PROTOCOL_FEATURES, 8],
    [P.VHOST_USER_SET_VRING_ENABLE, 8],
    [P.VHOST_USER_SEND_RARP, 8],
    [P.VHOST_USER_NET_SET_MTU, 8],
    [P.VHOST_USER_SET_BACKEND_REQ_FD, 0],
    [P.VHOST_USER_IOTLB_MSG, 8],
    [P.VHOST_USER_SET_VRING_ENDIAN, 8],
    [P.VHOST_USER_SET_CONFIG, 12],
    [P.VHOST_USER_ADD_MEM_REG, 40],
    [P.VHOST_USER_REM_MEM_REG, 40],
    [P.VHOST_USER_SET_STATUS, 8],
  ];
  // (SET_LOG_FD has no payload: its eventfd is the message, accepted since dirty logging.)
  const fe = await attacker();
  for (const [req, need] of needs) {
    for (const size of new Set([0, need >> 1, Math.max(0, need - 1)])) {
      const what = `${P.requestName(req)} with ${size} payload bytes`;
      await refused(fe, what, req, bytes(size), [eventfdCreate()]);
    }
  }
  // A memory table announcing one region but carrying none.
  await refused(fe, "SET_MEM_TABLE count 1, no region", P.VHOST_USER_SET_MEM_TABLE, u64(1n));
  // Requests without a payload still work, with or without one.
  assert.equal(await fe.getU64(P.VHOST_USER_GET_QUEUE_NUM), 1n);
  assert.equal(await fe.getU64(P.VHOST_USER_GET_MAX_MEM_SLOTS), 32n);
  assert.equal(await fe.getU64(P.VHOST_USER_GET_STATUS), 0n);
  assert.equal(await fe.ack(P.VHOST_USER_SET_OWNER), 0n);
  await after("short payloads", fe);
  // Requests that must be answered with a payload cannot be refused with an ack: hang up.
  for (const req of [P.VHOST_USER_GET_VRING_BASE, P.VHOST_USER_SET_LOG_BASE, 24]) {
    await hangsUp(`short ${P.requestName(req)}`, P.encodeMessage(req, 1, bytes(4)));
  }
});

attack("bad ring indexes, ring sizes and unknown requests", async () => {
  const fe = await attacker();
  for (const index of [2, 3, 255, 256, 0xffffffff]) {
    for (const req of [8, 10, 18]) {
      await refused(fe, `${P.requestName(req)} ring ${index}`, req, state(index, 256));
    }
    await refused(fe, `ADDR ring ${index}`, 9, vringAddrPayload(index, 0n, 0n, 0n));
  }
  for (const req of [12, 13, 14]) {
    for (const index of [2, 255]) {
      const what = `${P.requestName(req)} ring ${index}`;
      await refused(fe, what, req, u64(BigInt(index)), [eventfdCreate()]);
      await refused(fe, `${what} no fd`, req, u64(BigInt(index | 0x100)));
    }
  }
  for (const num of [0, 3, 100, 65535, 65536, 2 ** 32 - 1]) {
    await refused(fe, `SET_VRING_NUM ${num}`, 8, state(0, num));
  }
  await refused(fe, "SET_VRING_BASE 65536", 10, state(0, 65536));
  assert.equal(await fe.ack(8, state(0, 32768)), 0n, "SET_VRING_NUM 32768 is valid");
  await refused(fe, "SET_FEATURES with bits not offered", 2, u64(0xffff_ffff_ffff_ffffn));
  await refused(fe, "NET_SET_MTU 65535", 20, u64(65535n));
  await refused(fe, "unknown request 0", 0, u64(0n));
  await refused(fe, "unknown request 1000", 1000, u64(0n));
  await refused(fe, "REM_MEM_REG without memory", 38, memTablePayload([region(0n, 4096n)]));
  assert.equal(await fe.ack(P.VHOST_USER_SET_FEATURES, u64(1n << 32n), []), 0n);
  await after("bad ring indexes", fe);
  const badVersion = P.encodeMessage(P.VHOST_USER_GET_FEATURES, 0x2, undefined);
  await hangsUp("GET_FEATURES with version 2", badVersion);
  await hangsUp("GET_VRING_BASE ring 255", P.encodeMessage(11, 1, state(255, 0)));
});

attack("absurd memory tables and regions", async () => {
  const fe = await attacker();
  const table = (regions: Region[], fds: number[], what: string, count?: number) =>
    refused(fe, what, P.VHOST_USER_SET_MEM_TABLE, memTablePayload(regions, count), fds);
  const M = 65536n;
  const mem = (size = 65536) => makeFd("memfd", size);
  await table([], [], "0 regions");
  await table([], [mem()], "0 regions, 1 fd");
  const nine = Array.from({ length: 9 }, (_, i) => region(BigInt(i) * M, M));
  await table(nine, nine.map(() => mem()), "9 regions");
  // 2 regions with 1 fd, 1 region with 2 fds: see the BUG test at the end of this file.
  await table([region(0n, M)], [], "1 region, no fd");
  await table([region(0n, 0n)], [mem()], "size 0");
  await table([region(0n, 2n * M)], [mem()], "size larger than the fd");
  await table([region(0n, M, 4096n)], [mem()], "offset + size past the fd");
  await table([region(0n, M), region(M / 2n, M)], [mem(), mem()], "overlapping regions");
  await table([region(2n ** 64n - M, M)], [mem()], "guest address near 2^64");
  await table([{ ...region(0n, M), uva: 2n ** 64n - 4096n }], [mem()], "uva near 2^64");
  await table([region(0n, M, 2n ** 63n)], [mem()], "mmap offset 2^63");
  await table([region(0n, 2n ** 63n)], [mem()], "size 2^63");
  for (const kind of FD_KINDS.filter((k) => k !== "memfd")) {
    await table([region(0n, 4096n)], [makeFd(kind, 4096)], `a ${kind} as memory`);
  }
  const add = (r: Region, fds: number[], what: string) =>
    refused(fe, what, P.VHOST_USER_ADD_MEM_REG, memTablePayload([r], 0), fds);
  await add(region(0n, M), [], "ADD_MEM_REG without fd");
  await add(region(0n, M), [mem(), mem()], "ADD_MEM_REG with 2 fds");
  await add(region(0n, 0n), [mem()], "ADD_MEM_REG size 0");
  await add(region(0n, M), [makeFd("socket")], "ADD_MEM_REG socket");
  // A valid region, then one overlapping it, then removing one that does not exist.
  const ok = mem();
  assert.equal(await fe.ack(37, memTablePayload([region(0n, M)], 0), [ok]), 0n);
  closeFd(ok);
  await add(region(M / 2n, M), [mem()], "ADD_MEM_REG overlapping");
  await refused(fe, "REM_MEM_REG unknown", 38, memTablePayload([region(M, M)], 0));
  await after("memory tables", fe);
});

attack("non-eventfd kick/call/err fds", async () => {
  const fe = await attacker();
  for (const req of [12, 13, 14]) {
    for (const kind of FD_KINDS.filter((k) => k !== "eventfd")) {
      await refused(fe, `${P.requestName(req)} with a ${kind}`, req, u64(0n), [makeFd(kind)]);
    }
  }
  await after("non-eventfd kick/call", fe);
});

attack("rings outside memory or misaligned are not started", async () => {
  const fe = await open({ queueSize: 64 });
  assert.equal(h.sw.port("evil")!.queues.length, 1, "a well-formed ring runs");
  const r = fe.rings[1];
  const uva = (gpa: number) => BigInt(gpa + UVA_OFFSET);
  const end = fe.memSize;
  const cases: [string, bigint, bigint, bigint][] = [
    ["desc outside memory", uva(end + 4096), uva(r.used), uva(r.avail)],
    ["used ring straddling the end", uva(r.desc), uva(end - 64), uva(r.avail)],
    ["avail below memory", uva(r.desc), uva(r.used), BigInt(UVA_OFFSET - 4096)],
    ["desc near 2^64", 2n ** 64n - 16n, uva(r.used), uva(r.avail)],
    ["desc misaligned", uva(r.desc + 8), uva(r.used), uva(r.avail)],
    ["used misaligned", uva(r.desc), uva(r.used + 2), uva(r.avail)],
    ["avail misaligned", uva(r.desc), uva(r.used), uva(r.avail + 1)],
  ];
  for (const [what, desc, used, avail] of cases) {
    assert.equal(await fe.ack(9, vringAddrPayload(1, desc, used, avail)), 0n, what);
    assert.equal(h.sw.port("evil")!.queues.length, 0, `${what}: ring must not run`);
    await goodPortsForward(what);
  }
  await fe.setupRing(1); // the same connection recovers with good addresses
  assert.equal(h.sw.port("evil")!.queues.length, 1);
  await after("bad ring addresses", fe);
});

attack("hostile descriptor chains on the TX ring are dropped and returned", async () => {
  const fe = await open({ queueSize: 64 });
  const N = 64, end = fe.memSize, slot = fe.slot(1, 0), table = fe.indirectTable(1, 0);
  const d = (i: number, addr: number | bigint, len: number, flags = 0, next = 0) =>
    fe.writeDesc(1, i, { addr, len, flags, next });
  const at = (k: number, addr: number | bigint, len: number, flags = 0, next = 0) =>
    fe.writeDescAt(table + 16 * k, { addr, len, flags, next });
  const chains: [string, () => number][] = [
    ["head index >= queue size", () => N],
    ["head index 65535", () => 65535],
    ["buffer outside memory", () => (d(0, end + 4096, 64), 0)],
    ["buffer straddling the end of the region", () => (d(0, end - 16, 100), 0)],
    ["buffer near 2^64", () => (d(0, 2n ** 64n - 32n, 64), 0)],
    ["length 4 GiB - 1", () => (d(0, slot, 0xffffffff), 0)],
    ["loop of two", () => (d(0, slot, 40, DESC_F_NEXT, 1), d(1, slot, 40, DESC_F_NEXT, 0), 0)],
    ["self loop", () => (d(0, slot, 40, DESC_F_NEXT, 0), 0)],
    ["next >= queue size", () => (d(0, slot, 40, DESC_F_NEXT, N + 3), 0)],
    ["device-writable TX buffer", () => (d(0, slot, 80, DESC_F_WRITE), 0)],
    ["indirect + NEXT", () => (d(0, table, 32, DESC_F_INDIRECT | DESC_F_NEXT, 1), 0)],
    ["indirect length 0", () => (d(0, table, 0, DESC_F_INDIRECT), 0)],
    ["indirect length 17", () => (d(0, table, 17, DESC_F_INDIRECT), 0)],
    ["indirect table outside memory", () => (d(0, end - 16, 64, DESC_F_INDIRECT), 0)],
    [
      "nested indirect",
      () => (at(0, table, 16, DESC_F_INDIRECT), d(0, table, 16, DESC_F_INDIRECT), 0),
    ],
    ["indirect loop", () => {
      at(0, slot, 40, DESC_F_NEXT, 1);
      at(1, slot, 40, DESC_F_NEXT, 0);
      return d(0, table, 32, DESC_F_INDIRECT), 0;
    }],
    ["indirect next outside its table", () => {
      at(0, slot, 40, DESC_F_NEXT, 5);
      return d(0, table, 32, DESC_F_INDIRECT), 0;
    }],
    ["indirect chain longer than the queue", () => {
      for (let k = 0; k < 2 * N; k++) {
        at(k, slot + k, 1, k + 1 < 2 * N ? DESC_F_NEXT : 0, k + 1);
      }
      return d(0, table, 16 * 2 * N, DESC_F_INDIRECT), 0;
    }],
  ];
  let used = 0;
  for (const [what, write] of chains) {
    const before = h.counters("evil").drop_bad_descriptor;
    fe.publish(1, [write()]);
    used++;
    await waitFor(`${what}: chain returned`, () => fe.usedIdx(1) === used);
    const [[id, len]] = fe.takeUsed(1);
    assert.equal(len, 0, `${what}: used length`);
    assert.ok(id === 0 || id >= N, `${what}: used id ${id}`);
    assert.equal(h.counters("evil").drop_bad_descriptor, before + 1, `${what}: counted`);
    await goodPortsForward(what);
  }
  // The ring still carries good frames afterwards; runts and giants are counted.
  const c0 = h.counters("evil");
  d(0, slot, 12 + 10);
  fe.publish(1, [0]);
  d(1, slot, 12 + 1600);
  fe.publish(1, [1]);
  await waitFor("runt and giant returned", () => fe.usedIdx(1) === used + 2);
  fe.takeUsed(1);
  const c1 = h.counters("evil");
  assert.equal(c1.drop_runt - c0.drop_runt, 1);
  assert.equal(c1.drop_too_big - c0.drop_too_big, 1);
  const f = ethFrame(G1, EVIL, 200, 77);
  fe.rings[1].free = Array.from({ length: N }, (_, i) => i); // every chain came back
  fe.send(f);
  assert.deepEqual((await g1.waitFrames(1))[0], f, "a good frame after the attack");
  g1.postRxBuffers(1);
  await after("hostile chains", fe);
});

attack("hostile RX buffers break only the attacker's own RX ring", async () => {
  const kinds: [string, (fe: VhostFrontend) => void][] = [
    [
      "read-only RX buffer",
      (fe) => fe.writeDesc(0, 0, { addr: fe.slot(0, 0), len: 2048, flags: 0 }),
    ],
    [
      "RX buffer outside memory",
      (fe) => fe.writeDesc(0, 0, { addr: fe.memSize, len: 2048, flags: DESC_F_WRITE }),
    ],
    [
      "RX buffer shorter than the header",
      (fe) => fe.writeDesc(0, 0, { addr: fe.slot(0, 0), len: 4, flags: DESC_F_WRITE }),
    ],
    [
      "RX descriptor loop",
      (fe) =>
        fe.writeDesc(0, 0, {
          addr: fe.slot(0, 0),
          len: 2048,
          flags: DESC_F_WRITE | DESC_F_NEXT,
          next: 0,
        }),
    ],
  ];
  for (const [what, write] of kinds) {
    const fe = await open({ queueSize: 64 });
    write(fe);
    fe.publish(0, [0]);
    const before = h.counters("evil").drop_bad_descriptor;
    const bc = ethFrame("ff:ff:ff:ff:ff:ff", G1, 100, arena.seed++);
    g1.send(bc); // flooded to g2 and to the attacker
    assert.deepEqual((await g2.waitFrames(1))[0], bc, what);
    g1.reclaimTx();
    g2.postRxBuffers(1);
    await waitFor(`${what}: counted`, () => h.counters("evil").drop_bad_descriptor > before);
    assert.equal(h.counters("evil").drop_bad_descriptor, before + 1, what);
    assert.equal(fe.usedIdx(0), 0, `${what}: nothing written back`);
    await after(what, fe);
  }
});

attack("avail idx jumping by more than the queue size", async () => {
  const fe = await open({ queueSize: 64 });
  const f = ethFrame(G2, EVIL, 100, 5);
  fe.writeDesc(1, 0, { addr: fe.slot(1, 0), len: 12 + f.length, flags: 0 });
  fe.mem.set(f, fe.slot(1, 0) + 12);
  fe.setAvailIdx(1, 64 + 5);
  // The worker passes the attacker's ring on every poll round: after two more round trips
  // between the good ports it has seen the bad index, and must not have taken anything.
  await goodPortsForward("avail jump 1");
  await goodPortsForward("avail jump 2");
  assert.equal(fe.usedIdx(1), 0, "no chain taken from a ring with an impossible index");
  assert.deepEqual(g2.receive(), [], "the attacker's frame was not forwarded");
  await after("avail jump", fe);
});

attack("framing attacks: oversized header, garbage, too many fds, hang-ups", async () => {
  const big = new Uint8Array(12);
  new DataView(big.buffer).setUint32(0, P.VHOST_USER_SET_VRING_CALL, true);
  new DataView(big.buffer).setUint32(4, 1, true);
  new DataView(big.buffer).setUint32(8, 1 << 20, true);
  await hangsUp("1 MiB payload size", big);
  // (The same header with fds attached leaks them: see the BUG test at the end.)
  const rnd = prng(SEED);
  const garbage = Uint8Array.from({ length: 4096 }, () => (rnd() * 256) | 0);
  const g = await attacker();
  await g.sendRaw(garbage);
  assert.ok(await g.waitClosed(), `garbage (seed ${SEED}): the switch should hang up`);
  await after(`garbage bytes (seed ${SEED})`, g);

  // 32 fds on one message: the kernel truncates the control data.
  const fe = await attacker();
  const many = Array.from({ length: 32 }, () => eventfdCreate());
  sendWithManyFds(fe.fd, P.encodeMessage(13, 1, u64(0n)), many);
  many.forEach(closeFd);
  assert.ok(await fe.waitClosed(), "32 fds: the switch should hang up");
  await after("32 fds on one message", fe);
  // 16 + 16 fds on the two halves of one message.
  const split = await attacker();
  const msg = P.encodeMessage(13, 1, u64(0n));
  const fds1 = Array.from({ length: 16 }, () => eventfdCreate());
  const fds2 = Array.from({ length: 16 }, () => eventfdCreate());
  const errors = arena.counters().protocol_errors;
  await split.sendRaw(msg.subarray(0, 6), fds1);
  await split.sendRaw(msg.subarray(6), fds2);
  [...fds1, ...fds2].forEach(closeFd);
  // The reader attaches the second batch to the message it completes: SET_VRING_CALL then
  // refuses 32 fds (or the connection goes), and all of them are closed either way.
  await split.barrier().catch(() => {});
  assert.ok(
    split.peerClosed || arena.counters().protocol_errors === errors + 1,
    "16 + 16 fds: refused",
  );
  await after("16 + 16 fds on one message", split);
  // 16 fds where one is expected is simply refused.
  const r = await attacker();
  const sixteen = Array.from({ length: 16 }, () => eventfdCreate());
  await refused(r, "SET_VRING_CALL with 16 fds", 13, u64(0n), sixteen);
  await after("16 fds on SET_VRING_CALL", r);

  // Hanging up in the middle of a message (header, or payload with fds in flight).
  for (const cut of [5, 12, 30]) {
    const fe = await attacker();
    const table = P.encodeMessage(5, 1, memTablePayload([region(0n, 65536n)]));
    const fds = [makeFd("memfd"), eventfdCreate()];
    await fe.sendRaw(table.subarray(0, cut), fds);
    fds.forEach(closeFd);
    await after(`disconnect after ${cut} bytes`, fe);
  }
  // Hanging up while the rings run and frames flow towards the attacker.
  const running = await open();
  running.postRxBuffers(8);
  const bc = ethFrame("ff:ff:ff:ff:ff:ff", G2, 64, 6);
  g2.send(bc);
  assert.deepEqual((await running.waitFrames(1))[0], bc);
  assert.deepEqual((await g1.waitFrames(1))[0], bc);
  g1.postRxBuffers(1);
  g2.reclaimTx();
  await after("disconnect while running", running);
});

attack(`random messages with random fds (seed ${SEED})`, async () => {
  const rnd = prng(SEED);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];
  const int = (n: number) => Math.floor(rnd() * n);
  const big = () => BigInt(int(2 ** 32)) << BigInt(int(33)) | BigInt(int(2 ** 32));
  const reqs = [...Array.from({ length: 40 }, (_, i) => i + 1), 0, 41, 99, 1 << 16];
  let fe: VhostFrontend | null = null, sent = 0, hangups = 0;
  // The current connection's messages so far, to reproduce a failure by hand.
  let history: string[] = [];
  const where = () =>
    `seed ${SEED}, message ${sent}, ${hangups} hang-ups; this connection: ${
      history.slice(-8).join(", ")
    }`;
  while (sent < FUZZ_MESSAGES) {
    if (!fe) {
      const queueSize = pick([16, 64, 256]), full = rnd() < 0.5;
      fe = connect({ queueSize });
      history = [`${full ? "setup" : "negotiate"} with ${queueSize}-entry rings`];
      await (full ? fe.setup() : fe.negotiate());
    }
    const req = pick(reqs);
    const payload = (() => {
      switch (int(6)) {
        case 0:
          return Uint8Array.from({ length: int(48) }, () => int(256));
        case 1:
          return u64(pick([0n, 1n, 0x100n, 0x101n, 1n << 32n, 1n << 63n, big()]));
        case 2:
          return state(pick([0, 1, 2, 255, int(2 ** 32)]), pick([0, 1, 3, 64, 256, 65536]));
        case 3: {
          const a = () => pick([BigInt(UVA_OFFSET + int(1 << 22)), big(), 0n]);
          return vringAddrPayload(pick([0, 1, 2]), a(), a(), a());
        }
        case 4: {
          const n = pick([0, 1, 1, 2, 8, 9]);
          const rs = Array.from(
            { length: Math.min(n, 9) },
            () =>
              region(
                pick([0n, 4096n, big()]),
                pick([4096n, 65536n, 0n, big()]),
                pick([0n, 7n]),
              ),
          );
          return memTablePayload(rs, rnd() < 0.9 ? n : int(2 ** 32));
        }
        default:
          return bytes(0);
      }
    })();
    const flags = rnd() < 0.95 ? 1 | (rnd() < 0.5 ? 8 : 0) : int(2 ** 32);
    const fds = rnd() < 0.3
      ? Array.from({ length: 1 + int(3) }, () => makeFd(pick(FD_KINDS), pick([0, 4096, 65536])))
      : [];
    history.push(
      `${P.requestName(req)} flags 0x${flags.toString(16)} payload ${hex(payload)} ` +
        `fds ${fds.length}`,
    );
    await fe.sendMessage(req, payload, fds, flags);
    fds.forEach(closeFd);
    sent++;
    // A round trip after every message: whether the switch hung up is then known before
    // the next one, so the same seed always replays the same sequence.
    const alive = await fe.sync().catch((e) => {
      throw new Error(`${where()}: ${e.message}`);
    });
    const hangUp = !alive || rnd() < 0.01;
    if (hangUp) {
      hangups += alive ? 0 : 1;
      fe.close();
      fe = null;
      await h.waitDetached("evil").catch((e) => {
        throw new Error(`${where()}: ${e.message}`);
      });
      await assertNoLeak(arena.baseline, `leak after ${where()}`);
    }
    if (sent % 500 === 0) await goodPortsForward(where());
  }
  fe?.close();
  // The fuzzer must have reached both outcomes, or it is not testing much.
  assert.ok(hangups > 10 && hangups < sent / 4, `hang-ups: ${where()}`);
  await h.waitDetached("evil");
  await assertNoLeak(arena.baseline, `fuzz fd leak (${where()})`);
  await goodPortsForward(`after fuzzing (${where()})`);
});

attack("a well-behaved front-end can use the attacked port afterwards", async () => {
  const fe = await open({ eventIdx: true });
  fe.postRxBuffers(4);
  const f = ethFrame(EVIL, G1, 1000, 99);
  g1.send(f); // EVIL is not learned yet: flooded to g2 as well
  assert.deepEqual((await fe.waitFrames(1))[0], f);
  assert.deepEqual((await g2.waitFrames(1))[0], f);
  g2.postRxBuffers(1);
  g1.reclaimTx();
  const back = ethFrame(G1, EVIL, 1200, 100);
  fe.send(back, { indirect: true, headerSeparate: true });
  assert.deepEqual((await g1.waitFrames(1))[0], back);
  g1.postRxBuffers(1);
  await after("well-behaved", fe);
});

// Regression tests for bugs this fuzzing found.

// SET_MEM_TABLE with N regions but M fds once left the fds open in the switch.
Deno.test({
  name: "SET_MEM_TABLE with a region/fd count mismatch closes the fds",
  fn: () =>
    Arena.run(async (arena) => {
      const fe = await arena.attacker();
      const r = (gpa: bigint) => region(gpa, 65536n);
      const mem = () => makeFd("memfd");
      const payload = memTablePayload([r(0n), r(65536n)]);
      await arena.refused(fe, "2 regions, 1 fd", P.VHOST_USER_SET_MEM_TABLE, payload, [mem()]);
      const one = memTablePayload([r(0n)]);
      await arena.refused(fe, "1 region, 2 fds", P.VHOST_USER_SET_MEM_TABLE, one, [mem(), mem()]);
      await arena.after("count mismatch", fe);
    }),
});

// Fds that came with a header whose size exceeds MAX_PAYLOAD once stayed open after hang-up.
Deno.test({
  name: "fds sent with an oversized message header are closed",
  fn: () =>
    Arena.run(async (arena) => {
      const big = P.encodeMessage(P.VHOST_USER_SET_VRING_CALL, 1);
      new DataView(big.buffer).setUint32(8, 1 << 20, true);
      await arena.hangsUp("1 MiB payload size with an eventfd", big, [eventfdCreate()]);
    }),
});

// A reset clears the negotiated REPLY_ACK: the ack must still be sent for the reset itself.
Deno.test({
  name: "RESET_DEVICE / RESET_OWNER with need_reply are acked",
  fn: () =>
    Arena.run(async (arena) => {
      for (const req of [P.VHOST_USER_RESET_DEVICE, P.VHOST_USER_RESET_OWNER]) {
        const fe = await arena.open();
        assert.equal(await fe.ack(req, undefined, [], 2000), 0n, P.requestName(req));
        await arena.after(P.requestName(req), fe);
      }
    }),
});

// A front-end whose memory cannot be sealed (a memfd made without MFD_ALLOW_SEALING, as DPDK
// makes them) truncates it while the switch has it mapped. The switch's SIGBUS handler
// (ffi/sigbus.ts) turns the lost pages into zero pages; the switch then hangs up on that
// front-end and keeps serving the others. Runs the switch in a child process.
Deno.test({
  name: "a front-end that truncates its guest memory is dropped; the switch survives (SIGBUS)",
  fn: async () => {
    const dir = Deno.makeTempDirSync({ prefix: "vsw-sigbus-" });
    const topology = JSON.stringify({
      name: "sigbus",
      ports: ["evil", "good"].map((n) => ({ name: n, type: "vhost-user", socket: `${dir}/${n}` })),
    });
    const url = (path: string) => new URL(path, import.meta.url).href;
    Deno.writeTextFileSync(
      `${dir}/run.ts`,
      `import { Switch } from "${url("../switch/switch.ts")}";
       import { parseTopology } from "${url("../switch/topology.ts")}";
       await Switch.start(parseTopology(${JSON.stringify(topology)}, "${dir}/t.json"), () => {});
       console.log("ready");`,
    );
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--config",
        new URL("../deno.json", import.meta.url).pathname,
        `${dir}/run.ts`,
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const fes: VhostFrontend[] = [];
    const stdout = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    try {
      const line = await stdout.read();
      assert.match(line.value ?? "", /ready/, "the child switch started");
      const good = await VhostFrontend.open(`${dir}/good`);
      fes.push(good);
      // The switch must take memory it cannot seal (DPDK's memfds are like that): refusing it
      // would shut DPDK front-ends out, and would leave this test nothing to test.
      const evil = VhostFrontend.connect(`${dir}/evil`);
      fes.push(evil);
      await evil.negotiate();
      const refusal = await evil.ack(
        P.VHOST_USER_SET_MEM_TABLE,
        memTablePayload(evil.regionTable()),
        [evil.memfd],
      );
      assert.equal(refusal, 0n, "the switch accepted the unsealable memory table");
      for (const q of [0, 1]) await evil.setupRing(q);
      for (const q of [0, 1]) await evil.set(18, state(q, 1));
      good.postRxBuffers(4);
      evil.postRxBuffers(4);
      evil.send(ethFrame(G1, EVIL, 64));
      await good.waitFrames(1);
      assert.equal(libc.ftruncate(evil.memfd, 0n), 0);
      eventfdWrite(evil.rings[1].kickFd); // (never touch evil.mem again: we would fault too)
      good.send(ethFrame("ff:ff:ff:ff:ff:ff", G1, 64)); // flooded into the truncated RX ring
      await waitFor(
        "the broadcast to be taken, or the switch to die",
        () => good.drain() || good.usedIdx(1) === 1,
      );
      assert.ok(!good.peerClosed, "the switch died");
      await good.barrier();
      assert.ok(await evil.waitClosed(5000), "the switch hung up on the truncating front-end");
      // The good port still forwards: a frame it sends is taken and handed back.
      good.send(ethFrame("ff:ff:ff:ff:ff:ff", G1, 64));
      await waitFor("the good port's next frame to be taken", () => good.usedIdx(1) === 2);
    } finally {
      fes.forEach((fe) => fe.close());
      await stdout.cancel();
      try {
        child.kill();
      } catch { /* already dead */ }
      const status = await child.status;
      Deno.removeSync(dir, { recursive: true });
      assert.notEqual(status.signal, "SIGBUS", "the switch was killed by SIGBUS");
    }
  },
});
