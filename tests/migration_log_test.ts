// Live-migration support against a real switch and real vhost-user front-ends over sockets:
// the dirty log (VHOST_F_LOG_ALL, SET_LOG_BASE with LOG_SHMFD) marks exactly the guest pages
// the switch writes and nothing else, SEND_RARP moves the guest's MAC and floods the
// announcement, and a bad log set-up ends only that front-end's connection.
import assert from "node:assert/strict";
import { closeFd, eventfdCreate } from "../ffi/fd.ts";
import { type Mapping, memfdCreate, mmap, munmap, viewMapping } from "../ffi/mem.ts";
import { VhostFrontend, waitFor } from "../peers/vhost_frontend.ts";
import {
  assertNoLeak,
  ethFrame,
  type Harness,
  macBytes,
  resources,
  startSwitch,
  warmUpFdCount,
} from "./helpers/frontend_harness.ts";

// Numbers from the vhost-user spec (QEMU docs/interop/vhost-user.rst), written out here so the
// test does not agree with the switch's own tables by construction.
const SET_FEATURES = 2;
const SET_LOG_BASE = 6;
const SET_VRING_ADDR = 9;
const SET_PROTOCOL_FEATURES = 16;
const SEND_RARP = 19;
const VHOST_F_LOG_ALL = 1n << 26n;
const PROTOCOL_F_MQ = 1n << 0n;
const PROTOCOL_F_LOG_SHMFD = 1n << 1n;
const PROTOCOL_F_RARP = 1n << 2n;
const PROTOCOL_F_REPLY_ACK = 1n << 3n;
const VHOST_VRING_F_LOG = 1;
const LOG_PAGE = 4096;
const REPLY_FLAG = 0x4;

const MAC_A = "52:54:00:aa:00:01";
const MAC_B = "52:54:00:bb:00:02";
const MAC_C = "52:54:00:cc:00:03";

await warmUpFdCount();

function u64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}

/** SET_VRING_ADDR's payload with its flags and log address (the spec's vring address). */
function vringAddr(fe: VhostFrontend, q: number, flags: number, log: number): Uint8Array {
  const r = fe.rings[q];
  const b = new Uint8Array(40);
  const v = new DataView(b.buffer);
  v.setUint32(0, q, true);
  v.setUint32(4, flags, true);
  v.setBigUint64(8, fe.uva(r.desc), true);
  v.setBigUint64(16, fe.uva(r.used), true);
  v.setBigUint64(24, fe.uva(r.avail), true);
  v.setBigUint64(32, BigInt(log), true);
  return b;
}

/** A dirty log the way QEMU makes one: a memfd, the bitmap at `offset` in it. */
class Log {
  readonly fd: number;
  readonly bits: Uint8Array;
  readonly #mapping: Mapping;

  constructor(readonly size: number, readonly offset: number) {
    this.fd = memfdCreate("dirty-log", offset + size);
    this.#mapping = mmap(offset + size, { fd: this.fd });
    this.bits = new Uint8Array(viewMapping(this.#mapping.address, offset + size), offset, size);
  }

  /** Guest pages marked, in ascending order. */
  pages(): number[] {
    const out: number[] = [];
    this.bits.forEach((b, i) => {
      for (let k = 0; k < 8; k++) if (b & (1 << k)) out.push(i * 8 + k);
    });
    return out;
  }

  clear(): void {
    this.bits.fill(0);
  }

  close(): void {
    munmap(this.#mapping);
    closeFd(this.fd);
  }
}

/** Pages covering [gpa, gpa + len). */
function pagesOf(gpa: number, len: number): number[] {
  const out: number[] = [];
  for (let p = Math.floor(gpa / LOG_PAGE); p <= Math.floor((gpa + len - 1) / LOG_PAGE); p++) {
    out.push(p);
  }
  return out;
}

/** Asks for protocol features beyond what VhostFrontend.open negotiated. */
async function addProtocolFeatures(fe: VhostFrontend, more: bigint): Promise<void> {
  const want = PROTOCOL_F_MQ | PROTOCOL_F_REPLY_ACK | more;
  await fe.set(SET_PROTOCOL_FEATURES, u64(want));
  fe.protocolFeatures = want;
}

/** SET_LOG_BASE with the log's fd; resolves with the reply's payload size. */
async function setLogBase(fe: VhostFrontend, size: number, offset: number, fd: number) {
  const payload = new Uint8Array(16);
  const v = new DataView(payload.buffer);
  v.setBigUint64(0, BigInt(size), true);
  v.setBigUint64(8, BigInt(offset), true);
  await fe.sendMessage(SET_LOG_BASE, payload, [fd]);
  const reply = await fe.reply("SET_LOG_BASE");
  assert.equal(reply.request, SET_LOG_BASE);
  assert.ok(reply.flags & REPLY_FLAG, "the answer is a reply");
  return reply.payload.byteLength;
}

async function withSwitch(fn: (h: Harness, opened: VhostFrontend[]) => Promise<void>) {
  const baseline = resources();
  const h = await startSwitch([{ name: "a" }, { name: "b" }, { name: "c" }]);
  const opened: VhostFrontend[] = [];
  try {
    await fn(h, opened);
  } finally {
    opened.forEach((fe) => fe.close());
    await h.stop();
  }
  await assertNoLeak(baseline, "after the front-ends closed and the switch stopped");
}

Deno.test("dirty log: while LOG_ALL is on, exactly the pages the switch writes are marked", async () => {
  await withSwitch(async (h, opened) => {
    const a = await VhostFrontend.open(h.sock("a"));
    const b = await VhostFrontend.open(h.sock("b"));
    opened.push(a, b);
    await addProtocolFeatures(a, PROTOCOL_F_LOG_SHMFD);
    // The bitmap sits at an offset that is not page aligned, as the spec allows.
    const log = new Log(Math.ceil(a.memSize / LOG_PAGE / 8), 4096 + 520);
    try {
      assert.equal(await setLogBase(a, log.size, log.offset, log.fd), 0, "an empty reply");
      await a.set(SET_FEATURES, u64(a.features | VHOST_F_LOG_ALL));
      for (const q of [0, 1]) {
        await a.set(SET_VRING_ADDR, vringAddr(a, q, VHOST_VRING_F_LOG, a.rings[q].used));
      }
      await waitFor("logging on", () => h.logs.some((l) => l.includes("dirty logging on")));
      a.postRxBuffers(8);
      log.clear();
      const sizes = [60, 1000, 1514];
      sizes.forEach((len, i) => b.send(ethFrame(MAC_A, MAC_B, len, i)));
      const used: [number, number][] = [];
      await waitFor("3 frames at a", () => {
        used.push(...a.takeUsed(0));
        return used.length >= 3;
      });
      const ring = (q: number) => pagesOf(a.rings[q].used, 6 + 8 * a.rings[q].size);
      const must = new Set([
        ...used.flatMap(([id, len]) => pagesOf(a.slot(0, id), len)),
        ...ring(0),
      ]);
      // The TX ring's used ring may be written too (the notification flags), nothing else.
      const may = new Set([...must, ...ring(1)]);
      const marked = log.pages();
      for (const p of must) assert.ok(marked.includes(p), `page ${p} written but not marked`);
      for (const p of marked) assert.ok(may.has(p), `page ${p} marked, never written`);
      assert.deepEqual(used.map(([, len]) => len), sizes.map((n) => n + 12));
      // The five buffers the switch did not fill stay unmarked.
      const unused = [3, 4, 5, 6, 7].map((i) => Math.floor(a.slot(0, i) / LOG_PAGE));
      assert.ok(unused.every((p) => !marked.includes(p)), "an unused buffer was marked");

      // Logging off: nothing is marked any more.
      await a.set(SET_FEATURES, u64(a.features));
      await waitFor("logging off", () => h.logs.some((l) => l.includes("dirty logging off")));
      log.clear();
      b.send(ethFrame(MAC_A, MAC_B, 200, 9));
      await a.waitFrames(1);
      assert.deepEqual(log.pages(), [], "pages marked with logging off");
    } finally {
      log.close();
    }
  });
});

Deno.test("SEND_RARP floods a RARP from the guest's MAC and moves the MAC to its port", async () => {
  await withSwitch(async (h, opened) => {
    const a = await VhostFrontend.open(h.sock("a"));
    const b = await VhostFrontend.open(h.sock("b"));
    const c = await VhostFrontend.open(h.sock("c"));
    opened.push(a, b, c);
    b.postRxBuffers(8);
    c.postRxBuffers(8);
    // The MAC was last seen on c (the guest's old port), as before a migration.
    c.send(ethFrame(MAC_B, MAC_A, 60));
    await b.waitFrames(1);
    await waitFor("MAC_A on c", () => h.sw.fdb().some((e) => e.mac === MAC_A && e.port === "c"));

    await addProtocolFeatures(a, PROTOCOL_F_RARP);
    const mac = macBytes(MAC_A);
    const payload = new Uint8Array(8);
    payload.set(mac);
    await a.set(SEND_RARP, payload);
    for (const fe of [b, c]) {
      const [frame] = await fe.waitFrames(1);
      assert.equal(frame.length, 60);
      assert.deepEqual([...frame.subarray(0, 6)], [255, 255, 255, 255, 255, 255]);
      assert.deepEqual([...frame.subarray(6, 12)], [...mac]);
      assert.equal((frame[12] << 8) | frame[13], 0x8035, "EtherType RARP");
      assert.equal((frame[20] << 8) | frame[21], 3, "RARP request");
      assert.deepEqual([...frame.subarray(22, 28)], [...mac], "sender hardware address");
    }
    await waitFor(
      "MAC_A moved to a",
      () => h.sw.fdb().some((e) => e.mac === MAC_A && e.port === "a"),
    );
    // Traffic for the guest now goes to its new port only.
    a.postRxBuffers(4);
    b.send(ethFrame(MAC_A, MAC_B, 100, 3));
    const [got] = await a.waitFrames(1);
    assert.equal(got.length, 100);
    assert.deepEqual(c.receive(), [], "the old port got no copy");
  });
});

Deno.test("bad log set-ups end only that front-end's connection, counted", async () => {
  await withSwitch(async (h, opened) => {
    const b = await VhostFrontend.open(h.sock("b"));
    const c = await VhostFrontend.open(h.sock("c"));
    opened.push(b, c);
    c.postRxBuffers(64);
    let frames = 0;
    const stillForwarding = async () => {
      b.send(ethFrame(MAC_C, MAC_B, 80, frames++));
      await c.waitFrames(1);
      b.reclaimTx();
    };
    const cases: [string, (a: VhostFrontend) => Promise<void>][] = [
      ["SET_LOG_BASE without LOG_SHMFD", async (a) => {
        const log = new Log(Math.ceil(a.memSize / LOG_PAGE / 8), 0);
        await a.sendMessage(SET_LOG_BASE, new Uint8Array(16).fill(0, 0), [log.fd]);
        log.close();
      }],
      ["a log too small for the guest's memory", async (a) => {
        await addProtocolFeatures(a, PROTOCOL_F_LOG_SHMFD);
        const log = new Log(1, 0); // covers 32 KiB of guest memory
        const payload = new Uint8Array(16);
        payload[0] = 1;
        await a.sendMessage(SET_LOG_BASE, payload, [log.fd]);
        log.close();
      }],
      ["a log fd that is not shared memory", async (a) => {
        await addProtocolFeatures(a, PROTOCOL_F_LOG_SHMFD);
        const efd = eventfdCreate();
        const payload = new Uint8Array(16);
        payload[1] = 1; // 256 bytes
        await a.sendMessage(SET_LOG_BASE, payload, [efd]);
        closeFd(efd);
      }],
    ];
    for (const [what, attack] of cases) {
      const before = h.counters("a").protocol_errors ?? 0;
      const a = await VhostFrontend.open(h.sock("a"));
      opened.push(a);
      await attack(a);
      assert.ok(
        await a.waitClosed(),
        `${what}: the switch hangs up (the front-end awaits a reply)`,
      );
      await h.waitDetached("a");
      assert.equal(h.counters("a").protocol_errors, before + 1, `${what}: counted`);
      await stillForwarding();
    }
    // SEND_RARP without the RARP protocol feature: refused (REPLY_ACK 1), the connection stays.
    const a = await VhostFrontend.open(h.sock("a"));
    opened.push(a);
    assert.equal(await a.ack(SEND_RARP, u64(0x010000540052n)), 1n);
    assert.ok(await a.sync(), "still connected");
    await stillForwarding();
  });
});
