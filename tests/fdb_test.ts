import assert from "node:assert/strict";
import {
  Fdb,
  LEARN_MOVED,
  LEARN_NEW,
  LEARN_REFRESHED,
  LEARN_REFUSED_FULL,
  LEARN_REFUSED_PORT_LIMIT,
  LEARN_STATIC,
} from "../switch/fdb.ts";
import { parseMac } from "../ports/ethernet.ts";
import type { Control, JobResult, LearnJob, LookupJob } from "./fdb_worker_fixture.ts";

const A = parseMac("02:00:00:00:00:0a");
const B = parseMac("02:00:00:00:00:0b");
const C = parseMac("fe:dc:ba:98:76:54"); // macLo above 2^31: must survive the int32 storage

Deno.test("learn, lookup, refresh and per-VLAN keys", () => {
  const fdb = Fdb.create({ capacity: 64 });
  assert.equal(fdb.lookup(A.hi, A.lo, 1), -1);
  assert.equal(fdb.learn(A.hi, A.lo, 1, 3, 100), LEARN_NEW);
  assert.equal(fdb.learn(C.hi, C.lo, 1, 4, 100), LEARN_NEW);
  assert.equal(fdb.lookup(A.hi, A.lo, 1), 3);
  assert.equal(fdb.lookup(C.hi, C.lo, 1), 4);
  assert.equal(fdb.lookup(A.hi, A.lo, 2), -1, "same MAC in another VLAN is another key");
  assert.equal(fdb.lookup(B.hi, B.lo, 1), -1);
  assert.equal(fdb.learn(A.hi, A.lo, 1, 3, 150), LEARN_REFRESHED);
  assert.equal(fdb.learn(A.hi, A.lo, 2, 5, 150), LEARN_NEW);
  assert.equal(fdb.lookup(A.hi, A.lo, 2), 5);
  assert.equal(fdb.size, 3);
  assert.deepEqual(fdb.entries(160), [
    { mac: "02:00:00:00:00:0a", vlan: 1, port: 3, age: 10, static: false },
    { mac: "fe:dc:ba:98:76:54", vlan: 1, port: 4, age: 60, static: false },
    { mac: "02:00:00:00:00:0a", vlan: 2, port: 5, age: 10, static: false },
  ]);
  assert.equal(fdb.counters().learned, 3);
});

Deno.test("a MAC seen on another port moves", () => {
  const fdb = Fdb.create({ capacity: 64 });
  fdb.learn(A.hi, A.lo, 0, 1, 10);
  assert.equal(fdb.learn(A.hi, A.lo, 0, 2, 11), LEARN_MOVED);
  assert.equal(fdb.lookup(A.hi, A.lo, 0), 2);
  assert.equal(fdb.learn(A.hi, A.lo, 0, 2, 12), LEARN_REFRESHED);
  assert.equal(fdb.size, 1);
  assert.deepEqual(fdb.counters(), {
    learned: 1,
    moved: 1,
    refusedFull: 0,
    aged: 0,
    flushed: 0,
    compactions: 0,
    compactionsDeferred: 0,
    evicted: 0,
    refusedPortLimit: 0,
  });
});

Deno.test("aging with an injected clock removes only idle learned entries", () => {
  const fdb = Fdb.create({ capacity: 64 });
  fdb.learn(A.hi, A.lo, 0, 1, 100);
  fdb.learn(B.hi, B.lo, 0, 2, 200);
  fdb.addStatic(C.hi, C.lo, 0, 3);
  assert.equal(fdb.age(399, 300), 0, "A is 299 s old");
  assert.equal(fdb.age(400, 300), 1, "A reaches 300 s");
  assert.equal(fdb.lookup(A.hi, A.lo, 0), -1);
  assert.equal(fdb.lookup(B.hi, B.lo, 0), 2);
  fdb.learn(B.hi, B.lo, 0, 2, 450); // refreshed: ages from 450 now
  assert.equal(fdb.age(700, 300), 0);
  assert.equal(fdb.age(750, 300), 1);
  assert.equal(fdb.age(1_000_000, 1), 0, "static entries never age");
  assert.equal(fdb.lookup(C.hi, C.lo, 0), 3);
  assert.equal(fdb.size, 1);
  assert.equal(fdb.counters().aged, 2);
});

Deno.test("static entries are never moved by learning", () => {
  const fdb = Fdb.create({ capacity: 64 });
  fdb.learn(A.hi, A.lo, 5, 1, 10);
  fdb.addStatic(A.hi, A.lo, 5, 7); // overrides the learned entry
  fdb.addStatic(B.hi, B.lo, 5, 8);
  assert.equal(fdb.learn(A.hi, A.lo, 5, 1, 11), LEARN_STATIC);
  assert.equal(fdb.learn(B.hi, B.lo, 5, 2, 11), LEARN_STATIC);
  assert.equal(fdb.learn(B.hi, B.lo, 5, 8, 11), LEARN_STATIC);
  assert.equal(fdb.lookup(A.hi, A.lo, 5), 7);
  assert.equal(fdb.lookup(B.hi, B.lo, 5), 8);
  assert.equal(fdb.counters().moved, 0);
  assert.deepEqual(fdb.entries(50).map((e) => [e.mac, e.port, e.static, e.age]), [
    ["02:00:00:00:00:0a", 7, true, 0],
    ["02:00:00:00:00:0b", 8, true, 0],
  ]);
  assert.throws(() => fdb.addStatic(A.hi, A.lo, 4096, 1), /VLAN/);
  assert.throws(() => fdb.addStatic(A.hi, A.lo, 1, 70000), /port/);
});

Deno.test("a full table evicts the oldest entries of the port holding the most", () => {
  const fdb = Fdb.create({ capacity: 16 });
  // Port 1: 10 entries seen at 0..9; port 2: 6 entries seen at 100.
  for (let i = 0; i < 10; i++) assert.equal(fdb.learn(0x0200, i, 0, 1, i), LEARN_NEW);
  for (let i = 0; i < 6; i++) assert.equal(fdb.learn(0x0300, i, 0, 2, 100), LEARN_NEW);
  assert.equal(fdb.learn(0x0200, 3, 0, 1, 200), LEARN_REFRESHED, "3 is now port 1's newest");
  // A new MAC on port 2 evicts port 1's least recently seen entry, not port 2's.
  assert.equal(fdb.learn(0x0300, 6, 0, 2, 201), LEARN_NEW);
  assert.equal(fdb.lookup(0x0200, 0, 0), -1, "port 1's oldest went");
  assert.equal(fdb.size, 16);
  for (let i = 1; i < 10; i++) assert.equal(fdb.lookup(0x0200, i, 0), 1);
  // Port 1 and 2 hold 9 and 7 now: the next evictions take 1 and 2 (oldest), then 4 ...
  assert.equal(fdb.learn(0x0400, 0, 0, 3, 202), LEARN_NEW);
  assert.equal(fdb.lookup(0x0200, 1, 0), -1);
  assert.equal(fdb.learn(0x0400, 1, 0, 3, 202), LEARN_NEW); // 8 and 7: port 1 again
  assert.equal(fdb.lookup(0x0200, 2, 0), -1);
  assert.equal(fdb.lookup(0x0200, 3, 0), 1, "refreshed at 200: survives");
  assert.deepEqual(fdb.portCounters(1), { learned: 7, evicted: 3, refusedLimit: 0 });
  assert.deepEqual(fdb.portCounters(2), { learned: 7, evicted: 0, refusedLimit: 0 });
  assert.deepEqual(fdb.portCounters(3), { learned: 2, evicted: 0, refusedLimit: 0 });
  assert.equal(fdb.counters().evicted, 3);
  assert.equal(fdb.counters().refusedFull, 0);
  // A static entry in a full table evicts a learned one too.
  fdb.addStatic(0x0500, 1, 0, 4);
  assert.equal(fdb.size, 16);
  assert.equal(fdb.counters().evicted, 4);
});

Deno.test("a table full of static entries refuses new MACs and counts it", () => {
  const fdb = Fdb.create({ capacity: 16 });
  for (let i = 0; i < 16; i++) fdb.addStatic(0x0200, i, 0, 1);
  assert.equal(fdb.learn(0x0200, 16, 0, 1, 0), LEARN_REFUSED_FULL);
  assert.equal(fdb.lookup(0x0200, 16, 0), -1);
  assert.equal(fdb.counters().refusedFull, 1);
  assert.throws(() => fdb.addStatic(0x0200, 99, 0, 1), /full/);
});

Deno.test("MAC flood from one port: its own entries are evicted, other ports' survive", () => {
  const fdb = Fdb.create({ capacity: 1024 });
  for (let i = 0; i < 100; i++) fdb.learn(0x0200, i, 0, 1, 0); // a quiet neighbour, long idle
  for (let i = 0; i < 20_000; i++) fdb.learn(0x0666, i, 0, 2, 10 + (i >> 10));
  for (let i = 0; i < 100; i++) assert.equal(fdb.lookup(0x0200, i, 0), 1, `neighbour ${i}`);
  // Evicted a batch (1/64 of the table) at a time: the table refills to within a batch of full.
  assert.ok(fdb.size > 1024 - 16 && fdb.size <= 1024, `size ${fdb.size}`);
  const flooder = fdb.portCounters(2);
  assert.equal(flooder.learned, fdb.size - 100);
  assert.equal(
    flooder.learned + flooder.evicted,
    20_000,
    "every flooded MAC learned, then evicted",
  );
  assert.equal(fdb.counters().evicted, flooder.evicted);
  assert.deepEqual(fdb.portCounters(1), { learned: 100, evicted: 0, refusedLimit: 0 });
  assert.equal(fdb.lookup(0x0666, 19_999, 0), 2, "the newest MAC is in");
});

Deno.test("per-port limit on learned MACs: refused beyond it, counted, changeable live", () => {
  const fdb = Fdb.create({ capacity: 64, maxPerPort: 4 });
  for (let i = 0; i < 4; i++) assert.equal(fdb.learn(0x0200, i, 0, 1, 0), LEARN_NEW);
  assert.equal(fdb.learn(0x0200, 4, 0, 1, 0), LEARN_REFUSED_PORT_LIMIT);
  assert.equal(fdb.learn(0x0200, 0, 0, 1, 1), LEARN_REFRESHED, "known MACs still refresh");
  assert.equal(fdb.learn(0x0300, 0, 0, 2, 0), LEARN_NEW, "other ports have their own count");
  fdb.addStatic(0x0200, 9, 0, 1);
  assert.equal(fdb.portCounters(1).learned, 4, "static entries do not count");
  assert.equal(fdb.learn(0x0300, 0, 0, 1, 2), LEARN_REFUSED_PORT_LIMIT, "no move onto a full port");
  assert.equal(fdb.lookup(0x0300, 0, 0), 2);
  assert.equal(fdb.delete(0x0200, 1, 0), true);
  assert.equal(fdb.learn(0x0200, 4, 0, 1, 3), LEARN_NEW, "room after a delete");
  assert.deepEqual(fdb.portCounters(1), { learned: 4, evicted: 0, refusedLimit: 2 });
  assert.equal(fdb.counters().refusedPortLimit, 2);
  fdb.maxPerPort = 0;
  assert.equal(fdb.learn(0x0200, 5, 0, 1, 3), LEARN_NEW, "no limit");
  assert.equal(fdb.flush({ port: 1 }), 5);
  assert.equal(fdb.portCounters(1).learned, 0);
  assert.throws(() => (fdb.maxPerPort = -1), RangeError);
});

Deno.test("flush by port, by VLAN, by both; statics only on request", () => {
  const fdb = Fdb.create({ capacity: 64 });
  for (let i = 0; i < 12; i++) fdb.learn(0x0200, i, i % 3, i % 4, 0); // vlan 0..2, port 0..3
  fdb.addStatic(0x0300, 1, 0, 1);
  assert.equal(fdb.flush({ port: 1 }), 3);
  assert.equal(fdb.lookup(0x0200, 1, 1), -1);
  assert.equal(fdb.lookup(0x0300, 1, 0), 1, "static survives a port flush");
  assert.equal(fdb.flush({ vlan: 2 }), 3); // i = 2, 8, 11 (5 went with port 1)
  assert.equal(fdb.flush({ port: 0, vlan: 0 }), 1); // i = 0
  assert.equal(fdb.size, 5 + 1);
  assert.equal(fdb.flush(), 5);
  assert.equal(fdb.size, 1);
  assert.equal(fdb.flush({ static: true }), 1);
  assert.equal(fdb.size, 0);
  assert.equal(fdb.counters().flushed, 3 + 3 + 1 + 5 + 1);
});

/** Deterministic PRNG so a failure reproduces. */
function rng(seed: number): () => number {
  return () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed >>> 8;
  };
}

/** After a learn into a full table: what went are the oldest of the port that held the most. */
function evictedAsExpected(
  fdb: Fdb,
  model: Map<string, { port: number; stamp: number }>,
  step: number,
): void {
  const perPort = new Map<number, number>();
  for (const m of model.values()) perPort.set(m.port, (perPort.get(m.port) ?? 0) + 1);
  const most = Math.max(...perPort.values());
  const gone: { port: number; stamp: number }[] = [];
  for (const [k, m] of model) {
    const [hi, lo, vlan] = k.split("/").map(Number);
    if (fdb.lookup(hi, lo, vlan) === -1) {
      gone.push(m);
      model.delete(k);
    }
  }
  assert.ok(gone.length >= 1 && gone.length <= 3, `step ${step}: evicted ${gone.length}`);
  const victim = gone[0].port;
  assert.equal(perPort.get(victim), most, `step ${step}: evicted from a port with fewer`);
  const newestGone = Math.max(...gone.map((g) => g.stamp));
  for (const g of gone) assert.equal(g.port, victim, `step ${step}`);
  for (const m of model.values()) {
    if (m.port === victim) assert.ok(m.stamp >= newestGone, `step ${step}: a newer one went`);
  }
}

Deno.test("random learn/delete/age churn agrees with a reference map across compactions", () => {
  const fdb = Fdb.create({ capacity: 200 });
  const model = new Map<string, { port: number; stamp: number }>();
  const next = rng(7);
  let now = 0;
  for (let step = 0; step < 40_000; step++) {
    const hi = 0x0200 | (next() & 3);
    const lo = next() & 511;
    const vlan = next() & 1;
    const key = `${hi}/${lo}/${vlan}`;
    const op = next() % 10;
    if (op < 6) {
      const port = next() & 3;
      const r = fdb.learn(hi, lo, vlan, port, now);
      const m = model.get(key);
      const expected = m === undefined
        ? LEARN_NEW
        : (m.port === port ? LEARN_REFRESHED : LEARN_MOVED);
      assert.equal(r, expected, `step ${step}`);
      if (m === undefined && model.size === 200) evictedAsExpected(fdb, model, step);
      model.set(key, { port, stamp: now });
    } else if (op < 9) {
      assert.equal(fdb.delete(hi, lo, vlan), model.delete(key), `step ${step}`);
    } else {
      now += 1 + (next() & 3);
      let expired = 0;
      for (const [k, m] of model) if (now - m.stamp >= 20) model.delete(k) && expired++;
      assert.equal(fdb.age(now, 20), expired, `step ${step}`);
    }
    const probe = model.get(key)?.port ?? -1;
    assert.equal(fdb.lookup(hi, lo, vlan), probe, `step ${step}`);
  }
  assert.equal(fdb.size, model.size);
  for (const [k, m] of model) {
    const [hi, lo, vlan] = k.split("/").map(Number);
    assert.equal(fdb.lookup(hi, lo, vlan), m.port);
  }
  assert.ok(fdb.counters().compactions > 10, "the churn must have exercised compaction");
});

Deno.test("attach views the same table; a foreign buffer is refused", () => {
  const fdb = Fdb.create({ capacity: 32 });
  const other = Fdb.attach(fdb.buffer);
  other.learn(A.hi, A.lo, 9, 4, 1);
  assert.equal(fdb.lookup(A.hi, A.lo, 9), 4);
  assert.equal(fdb.size, 1);
  assert.equal(other.capacity, 32);
  assert.throws(() => Fdb.attach(new SharedArrayBuffer(4096)), /Fdb.create/);
  assert.throws(() => Fdb.create({ capacity: 0 }), RangeError);
});

function control(words: number): Control {
  const sab = () => new SharedArrayBuffer(4 * words);
  return { ready: sab(), done: sab(), stop: sab(), rounds: sab() };
}

async function runWorkers(jobs: (LearnJob | LookupJob)[], whileRunning?: () => void) {
  const workers = jobs.map(() =>
    new Worker(new URL("./fdb_worker_fixture.ts", import.meta.url).href, { type: "module" })
  );
  try {
    const results = workers.map((w, i) =>
      new Promise<JobResult>((resolve, reject) => {
        w.onmessage = (e: MessageEvent<JobResult>) => resolve(e.data);
        w.onerror = (e) => {
          e.preventDefault();
          reject(new Error(`worker ${i}: ${e.message}`));
        };
        w.postMessage(jobs[i]);
      })
    );
    whileRunning?.();
    return await Promise.all(results);
  } finally {
    for (const w of workers) w.terminate();
  }
}

Deno.test("two Workers learn thousands of MACs at once: none lost, none duplicated", async () => {
  const fdb = Fdb.create({ capacity: 16384 });
  const ctrl = control(2);
  const count = 6000;
  const sharedCount = 500;
  const job = (me: number): LearnJob => ({
    mode: "learn",
    fdb: fdb.buffer,
    reader: me === 0 ? 0 : undefined, // one datapath reader, one seqlock reader
    ctrl,
    workers: 2,
    myHi: 0x0210 + me,
    myPort: 1 + me,
    peerHi: 0x0211 - me,
    peerPort: 2 - me,
    count,
    sharedHi: 0x02ff,
    sharedCount,
  });
  const results = await runWorkers([job(0), job(1)]);
  for (const r of results) assert.deepEqual(r, { wrong: 0, unexpected: 0, rounds: 1 });

  assert.equal(fdb.size, 2 * count + sharedCount);
  const entries = fdb.entries(1000);
  assert.equal(entries.length, 2 * count + sharedCount);
  const seen = new Set<string>();
  for (const e of entries) {
    assert.ok(!seen.has(e.mac), `duplicate entry ${e.mac}`);
    seen.add(e.mac);
    const hi = parseMac(e.mac).hi;
    if (hi === 0x02ff) assert.ok(e.port === 1 || e.port === 2);
    else assert.equal(e.port, hi === 0x0210 ? 1 : 2, e.mac);
  }
  for (let i = 0; i < count; i++) {
    assert.equal(fdb.lookup(0x0210, i, 0), 1);
    assert.equal(fdb.lookup(0x0211, i, 0), 2);
  }
  const c = fdb.counters();
  assert.equal(c.learned, 2 * count + sharedCount);
  assert.equal(c.refusedFull, 0);
});

for (const readers of [true, false]) {
  const kind = readers ? "datapath reader slots" : "seqlock-checked views";
  Deno.test(`aging and flushes never make a lookup wrong (Workers with ${kind})`, async () => {
    // A small table, so that churn compacts it often and table switches come fast.
    const fdb = Fdb.create({ capacity: 128 });
    const vlan = 7;
    const now = 1_000_000;
    const stableCount = 40;
    const stable: [number, number][] = [[0x0220, 1], [0x0221, 2]];
    for (const [hi, port] of stable) {
      for (let i = 0; i < stableCount; i++) fdb.learn(hi, i, vlan, port, now);
    }
    const churnHi = 0x0222;
    const churnCount = 40;
    const ctrl = control(2);
    const job = (index: number): LookupJob => ({
      mode: "lookup",
      fdb: fdb.buffer,
      reader: readers ? index : undefined,
      ctrl,
      workers: 2,
      index,
      vlan,
      stable,
      stableCount,
      churnHi,
      churnPort: 3,
      churnCount,
      now,
    });
    // Reader slots make compactions wait for the workers' CPU time: fewer, slower rounds.
    const target = readers ? 10_000 : 50_000;
    const roundsDone = new Int32Array(ctrl.rounds);
    const nap = new Int32Array(new SharedArrayBuffer(4));
    let churnRounds = 0;
    let mainWrong = 0;
    let lastDeferred = 0;
    const results = await runWorkers([job(0), job(1)], () => {
      // Busy main thread: the workers run meanwhile. Go on until enough compactions happened
      // and both workers did enough rounds (bounded, in case compactions stall).
      while (
        churnRounds < 300_000 &&
        (fdb.counters().compactions < target || Atomics.load(roundsDone, 0) < 1000 ||
          Atomics.load(roundsDone, 1) < 1000)
      ) {
        // A deferred compaction waits for a reader that may not have a CPU (3 threads, maybe 2
        // cores): let it have ours for a moment.
        const deferred = fdb.counters().compactionsDeferred;
        if (deferred > lastDeferred) Atomics.wait(nap, 0, 0, 0.05);
        lastDeferred = deferred;
        let learned = 0;
        for (let i = 0; i < churnCount; i++) {
          // Refused while a compaction waits for a reader to move on: fine, nothing to remove.
          if (fdb.learn(churnHi, i, vlan, 3, 0) === LEARN_NEW) learned++;
        }
        // Churn entries are `now` seconds old, stable ones are from the future: only churn goes.
        const removed = churnRounds % 2 === 0 ? fdb.age(500, 300) : fdb.flush({ port: 3 });
        if (removed !== learned) mainWrong++;
        if (fdb.lookup(0x0220, churnRounds % stableCount, vlan) !== 1) mainWrong++;
        churnRounds++;
      }
      Atomics.store(new Int32Array(ctrl.stop), 0, 1);
    });
    assert.equal(mainWrong, 0);
    for (const r of results) {
      assert.equal(r.wrong, 0);
      assert.equal(r.unexpected, 0);
      assert.ok(r.rounds >= 1000);
    }
    assert.equal(fdb.size, 2 * stableCount);
    assert.ok(fdb.counters().compactions >= target);
  });
}

Deno.test("a compaction waits until every online reader slot has moved on", () => {
  const fdb = Fdb.create({ capacity: 16 }); // 32 slots: compacts past 4 tombstones, full at 24
  const reader = Fdb.attach(fdb.buffer, { reader: 5 });
  const fill = (first: number, n: number) => {
    for (let i = first; i < first + n; i++) assert.equal(fdb.learn(0x0200, i, 0, 1, 0), LEARN_NEW);
  };
  fill(0, 16);
  assert.equal(reader.lookup(0x0200, 3, 0), 1); // the reader is online, at GEN 0
  assert.equal(fdb.age(1000, 300), 16);
  assert.equal(fdb.counters().compactions, 1, "the reader had seen the current GEN");
  fill(100, 16);
  assert.equal(fdb.age(2000, 300), 16);
  assert.deepEqual([fdb.counters().compactions, fdb.counters().compactionsDeferred], [1, 1]);
  fill(200, 8); // 16 tombstones + 8 live: no room left until a compaction
  assert.equal(fdb.learn(0x0200, 300, 0, 1, 0), LEARN_REFUSED_FULL);
  assert.equal(fdb.size, 8);
  assert.equal(reader.lookup(0x0200, 200, 0), 1); // the reader moves on to the current GEN
  assert.equal(fdb.learn(0x0200, 300, 0, 1, 0), LEARN_NEW);
  assert.equal(fdb.counters().compactions, 2);
  reader.offline();
  assert.equal(fdb.flush(), 9);
  assert.equal(fdb.counters().compactions, 3, "an offline reader does not hold compactions back");
  assert.throws(() => Fdb.attach(fdb.buffer, { reader: 64 }), /reader/);
});
