// Behaviour the README and the topology file promise, each through its public interface (a
// topology file, real HTTP, real vhost-user front-ends, /proc): static FDB entries and aging
// at run time, busy vs adaptive polling, CPU pinning, the HTTP token and read-only mode end to
// end, and memory sealing against a front-end that would shrink its memory.
import assert from "node:assert/strict";
import { libc } from "../ffi/libc.ts";
import { VhostFrontend } from "../peers/vhost_frontend.ts";
import { http, seqFrame, SwitchRig } from "./helpers/reliability.ts";
import { startSwitch, waitFor } from "./helpers/switch.ts";

const MAC_A = "52:54:00:be:00:0a";
const MAC_B = "52:54:00:be:00:0b";
const MAC_S = "52:54:00:be:00:5e"; // static, on b; never sends anything itself

const threePorts = (extra: Record<string, unknown>) => ({
  name: "behaviour",
  ...extra,
  ports: ["a", "b", "c"].map((n) => ({ name: n, type: "vhost-user", socket: `$DIR/${n}.sock` })),
});

async function frontends(dir: string, names: string[]) {
  const fes = await Promise.all(names.map((n) => VhostFrontend.open(`${dir}/${n}.sock`)));
  for (const fe of fes) fe.postRxBuffers(32);
  return fes;
}

Deno.test("fdb.static: frames go only to the static port, and learning cannot move it", async () => {
  await using ts = await startSwitch(threePorts({
    fdb: { static: [{ mac: MAC_S, port: "b" }] },
  }));
  const [a, b, c] = await frontends(ts.dir, ["a", "b", "c"]);
  try {
    const toS = seqFrame(MAC_S, MAC_A, 0, 1, 100);
    a.send(toS);
    assert.deepEqual(await b.waitFrames(1), [toS], "b has the static MAC");
    // A spoofed frame from c claiming to be S must not move it.
    c.send(seqFrame(MAC_A, MAC_S, 0, 2, 100));
    await a.waitFrames(1);
    const again = seqFrame(MAC_S, MAC_A, 0, 3, 100);
    a.send(again);
    assert.deepEqual(await b.waitFrames(1), [again], "still only b");
    assert.deepEqual(c.receive(), [], "c never got a frame for the static MAC");
    const entry = ts.sw.fdb().find((e) => e.mac === MAC_S);
    assert.equal(entry?.port, "b");
    assert.equal(entry?.static, true);
  } finally {
    [a, b, c].forEach((fe) => fe.close());
  }
});

Deno.test("fdb.agingSeconds: an idle learned MAC is forgotten and floods again", async () => {
  await using ts = await startSwitch(threePorts({ fdb: { agingSeconds: 10 } }));
  const [a, b, c] = await frontends(ts.dir, ["a", "b", "c"]);
  try {
    b.send(seqFrame(MAC_A, MAC_B, 0, 1, 80)); // learn B on b (flooded to a and c)
    await a.waitFrames(1);
    await c.waitFrames(1);
    a.send(seqFrame(MAC_B, MAC_A, 0, 2, 80));
    await b.waitFrames(1);
    assert.deepEqual(c.receive(), [], "known: not flooded");
    const t0 = performance.now();
    await waitFor(
      "B to age out of the MAC table",
      () => !ts.sw.fdb().some((e) => e.mac === MAC_B),
      40_000,
      () => JSON.stringify(ts.sw.fdb()),
    );
    const agedMs = performance.now() - t0;
    console.log(`  B aged out ${(agedMs / 1000).toFixed(1)} s after its last frame`);
    assert.ok(agedMs >= 9_000, `aged out after ${agedMs} ms, before 10 s`);
    const after = seqFrame(MAC_B, MAC_A, 0, 3, 80);
    a.send(after);
    assert.deepEqual(await c.waitFrames(1), [after], "unknown again: flooded to c");
  } finally {
    [a, b, c].forEach((fe) => fe.close());
  }
});

for (const mode of ["busy", "adaptive"] as const) {
  Deno.test(`poll.mode ${mode}: an idle worker ${mode === "busy" ? "never sleeps" : "sleeps"}`, async () => {
    await using ts = await startSwitch(threePorts({ poll: { mode, idleAfterMs: 5 } }));
    const [a, b] = await frontends(ts.dir, ["a", "b"]);
    try {
      a.send(seqFrame(MAC_B, MAC_A, 0, 1, 80));
      await b.waitFrames(1);
      const before = ts.sw.stats().workers[0];
      // Until it slept once, or polled an idle ring 10000 times without sleeping.
      await waitFor("the worker to sleep or go through 10000 idle poll rounds", () => {
        const w = ts.sw.stats().workers[0];
        return w.sleeps > before.sleeps || w.idleRounds >= before.idleRounds + 10_000;
      }, 30_000);
      const after = ts.sw.stats().workers[0];
      const sleeps = after.sleeps - before.sleeps;
      const rounds = after.idleRounds - before.idleRounds;
      console.log(`  ${mode}: ${sleeps} sleeps in ${rounds} idle poll rounds`);
      if (mode === "busy") assert.equal(sleeps, 0, "a busy-polling worker slept");
      else assert.ok(sleeps > 0, "an adaptive worker kept polling an idle ring");
    } finally {
      [a, b].forEach((fe) => fe.close());
    }
  });
}

/** CPUs each thread of `pid` may run on (Cpus_allowed_list), by thread id. */
function threadCpus(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  for (const t of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      const status = Deno.readTextFileSync(`/proc/${pid}/task/${t.name}/status`);
      out.set(Number(t.name), status.match(/^Cpus_allowed_list:\s+(\S+)/m)![1]);
    } catch { /* the thread ended meanwhile */ }
  }
  return out;
}

Deno.test({
  name: "poll.cpus pins each worker thread to its CPU",
  ignore: navigator.hardwareConcurrency < 2,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using rig = await SwitchRig.start({
      name: "pinned",
      threads: 2,
      poll: { cpus: [1, 0] },
      ports: [{ name: "a", type: "vhost-user", socket: "$DIR/a.sock" }],
    });
    const all = navigator.hardwareConcurrency > 1 ? `0-${navigator.hardwareConcurrency - 1}` : "0";
    let cpus = threadCpus(rig.pid);
    await waitFor(
      "both workers pinned",
      () => {
        cpus = threadCpus(rig.pid);
        const single = [...cpus.values()].filter((c) => c !== all).sort();
        return single.join() === "0,1";
      },
      20_000,
      () => JSON.stringify([...cpus]),
    );
    const pinned = [...cpus.values()].filter((c) => c !== all);
    assert.deepEqual(pinned.sort(), ["0", "1"], "one thread on CPU 0, one on CPU 1");
  },
});

Deno.test({
  name: "http.token and http.readOnly, end to end over real HTTP",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    for (const readOnly of [false, true]) {
      await t.step(
        readOnly ? "read-only: even the token cannot change state" : "token",
        async () => {
          await using rig = await SwitchRig.start({
            name: "guarded",
            http: { listen: "127.0.0.1:0", token: "s3cret.token", readOnly },
            ports: [{ name: "a", type: "vhost-user", socket: "$DIR/a.sock" }],
          });
          const del = (auth?: string) =>
            http(`${rig.url}/fdb`, {
              method: "DELETE",
              headers: auth ? { Authorization: auth } : {},
            });
          assert.equal((await http(`${rig.url}/ports`)).status, 200, "reads need no token");
          assert.equal((await del()).status, 401, "no token");
          assert.equal((await del("Bearer wrong")).status, 401, "wrong token");
          assert.equal((await del("Basic s3cret.token")).status, 401, "not a bearer token");
          const ok = await del("Bearer s3cret.token");
          assert.equal(ok.status, readOnly ? 403 : 200, ok.body);
        },
      );
    }
  },
});

const F_GET_SEALS = 1034;
const F_SEAL_SHRINK = 0x2;

Deno.test("guest memory that can be sealed is sealed against shrinking", async () => {
  await using ts = await startSwitch(threePorts({}));
  const fe = await VhostFrontend.open(`${ts.dir}/a.sock`, { sealable: true });
  try {
    assert.ok(ts.sw.port("a")!.queues.length > 0, "the port runs on that memory");
    const seals = libc.fcntl(fe.memfd, F_GET_SEALS, 0);
    assert.ok(seals >= 0 && (seals & F_SEAL_SHRINK) !== 0, `seals 0x${seals.toString(16)}`);
    assert.equal(libc.ftruncate(fe.memfd, 0n), -1, "the front-end can no longer shrink it");
  } finally {
    fe.close();
  }
});

Deno.test("interrupt suppression: NO_INTERRUPT and EVENT_IDX, counted on the call eventfd", async (t) => {
  await using ts = await startSwitch(threePorts({}));
  const send = async (a: VhostFrontend, b: VhostFrontend, n: number, seq: number) => {
    const start = b.usedIdx(0);
    for (let i = 0; i < n; i++) a.send(seqFrame(MAC_B, MAC_A, 0, seq + i, 80));
    // Wait on the used index, not receive(): reading would move used_event again.
    await waitFor(`${n} frames in b's RX ring`, () => ((b.usedIdx(0) - start) & 0xffff) >= n);
    a.reclaimTx();
  };
  await t.step("NO_INTERRUPT: no call eventfd write while set, then one per burst", async () => {
    const [a, b] = await frontends(ts.dir, ["a", "b"]);
    try {
      b.postRxBuffers(100);
      b.send(seqFrame(MAC_A, MAC_B, 0, 0, 80)); // b is learned: a's frames go to b only
      await a.waitFrames(1);
      b.calls(0);
      b.setAvailFlags(0, 1);
      await send(a, b, 40, 1);
      assert.equal(b.calls(0), 0n, "interrupted although NO_INTERRUPT was set");
      b.setAvailFlags(0, 0);
      await send(a, b, 5, 100);
      assert.ok(b.calls(0) > 0n, "not interrupted once NO_INTERRUPT was cleared");
      assert.equal(b.receive().length, 45);
    } finally {
      [a, b].forEach((fe) => fe.close());
    }
  });
  await t.step("EVENT_IDX: one write, when the used index passes used_event", async () => {
    const a = await VhostFrontend.open(`${ts.dir}/a.sock`);
    const b = await VhostFrontend.open(`${ts.dir}/b.sock`, { eventIdx: true });
    try {
      a.postRxBuffers(8);
      b.postRxBuffers(100);
      b.send(seqFrame(MAC_A, MAC_B, 0, 0, 80));
      await a.waitFrames(1);
      b.calls(0);
      const start = b.usedIdx(0);
      b.setUsedEvent(0, start + 19); // "interrupt me after the 20th buffer"
      await send(a, b, 19, 1);
      assert.equal(b.calls(0), 0n, "interrupted before used_event was passed");
      await send(a, b, 11, 100);
      assert.equal(b.calls(0), 1n, "exactly one interrupt for passing used_event");
    } finally {
      [a, b].forEach((fe) => fe.close());
    }
  });
});
