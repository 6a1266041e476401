// Changing a running switch over HTTP: ports added, changed and deleted while vhost-user
// front-ends (tests/helpers/frontend.ts: real sockets, memfd guest memory, eventfds) pass frames;
// static MAC entries; the running configuration and its reload. No root needed.
import assert from "node:assert/strict";
import { createApp } from "../http/app.ts";
import { Switch } from "../switch/switch.ts";
import { checkTopology, loadTopology } from "../switch/topology.ts";
import { VhostFrontend, waitFor } from "../peers/vhost_frontend.ts";
import { BROADCAST, ethFrame } from "./helpers/frontend_harness.ts";

const A = "52:54:00:00:0a:01";
const B = "52:54:00:00:0b:01";
const C = "52:54:00:00:0c:01";

interface Rig {
  sw: Switch;
  dir: string;
  file: string;
  logs: string[];
  // deno-lint-ignore no-explicit-any
  req(method: string, path: string, body?: unknown): Promise<{ status: number; json: any }>;
  attach(name: string, mac: string): Promise<VhostFrontend>;
  [Symbol.asyncDispose](): Promise<void>;
}

async function rig(topology: Record<string, unknown>): Promise<Rig> {
  const dir = await Deno.makeTempDir({ prefix: "vsw-live-" });
  const file = `${dir}/topology.json`;
  await Deno.writeTextFile(file, JSON.stringify(topology).replaceAll("$DIR", dir));
  const logs: string[] = [];
  const sw = await Switch.start(loadTopology(file), (m) => logs.push(m), file);
  const app = createApp(sw);
  const fronts: VhostFrontend[] = [];
  return {
    sw,
    dir,
    file,
    logs,
    async req(method, path, body) {
      const res = await app.request(path, {
        method,
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        headers: { "Content-Type": "application/json" },
      });
      return { status: res.status, json: await res.json() };
    },
    async attach(name, mac) {
      const fe = await VhostFrontend.open(`${dir}/${name}.sock`);
      fronts.push(fe);
      await fe.setup();
      fe.postRxBuffers(64);
      await waitFor(`${name} up`, () => sw.port(name)?.state === "connected");
      // Announce the MAC, so the switch learns it.
      fe.send(ethFrame(BROADCAST, mac, 60));
      return fe;
    },
    async [Symbol.asyncDispose]() {
      for (const fe of fronts) fe.close();
      await sw.stop();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const vm = (name: string, extra: Record<string, unknown> = {}) => ({
  name,
  type: "vhost-user",
  socket: `$DIR/${name}.sock`,
  ...extra,
});

/** Frames `fe` received whose source is `src` (others, e.g. announcements, are left out). */
async function framesFrom(fe: VhostFrontend, src: string, count: number): Promise<Uint8Array[]> {
  const got: Uint8Array[] = [];
  await waitFor(`${count} frames from ${src}`, () => {
    got.push(...fe.receive().filter((f) => macOf(f, 6) === src));
    return got.length >= count;
  });
  return got;
}

function macOf(f: Uint8Array, at: number): string {
  return Array.from(f.subarray(at, at + 6), (b) => b.toString(16).padStart(2, "0")).join(":");
}

/** Sends `n` frames and checks none arrives at `to` within a short while. */
async function noneArrive(from: VhostFrontend, to: VhostFrontend, src: string, dst: string) {
  to.receive();
  for (let i = 0; i < 5; i++) from.send(ethFrame(dst, src, 60, i));
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(to.receive().filter((f) => macOf(f, 6) === src).length, 0);
}

Deno.test("a port added while two others pass frames carries traffic; deleted, its MACs go", async () => {
  await using r = await rig({ name: "live", ports: [vm("vm1"), vm("vm2")] });
  const fe1 = await r.attach("vm1", A);
  const fe2 = await r.attach("vm2", B);
  await framesFrom(fe1, B, 1);

  const added = await r.req("POST", "/ports", {
    name: "vm3",
    type: "vhost-user",
    socket: `${r.dir}/vm3.sock`,
  });
  assert.equal(added.status, 200, JSON.stringify(added.json));
  assert.deepEqual(added.json, {
    changed: [`port vm3 (vhost-user, ${r.dir}/vm3.sock (server)) added as port 2`],
    notApplied: [],
  });
  assert.ok(
    r.logs.some((l) => l === `HTTP POST /ports: ${added.json.changed[0]}`),
    r.logs.join("\n"),
  );

  // While vm1 streams to vm2 (which takes every frame and gives its buffers back), vm3 comes
  // up, is reached, and goes.
  let streamed = 0;
  const got: Uint8Array[] = [];
  const drain = () => {
    const frames = fe2.receive().filter((f) => macOf(f, 6) === A);
    got.push(...frames);
    fe2.postRxBuffers(frames.length);
  };
  const stream = setInterval(() => {
    drain();
    for (let i = 0; i < 8; i++, streamed++) fe1.send(ethFrame(B, A, 60, streamed));
    fe1.reclaimTx();
  }, 5);
  try {
    const fe3 = await r.attach("vm3", C);
    await framesFrom(fe1, C, 1);
    fe1.send(ethFrame(C, A, 100, 7));
    const [f] = await framesFrom(fe3, A, 1);
    assert.equal(macOf(f, 0), C);
    assert.deepEqual(
      (await r.req("GET", `/fdb?mac=${C}`)).json.entries.map((e: { port: string }) => e.port),
      [
        "vm3",
      ],
    );

    const deleted = await r.req("DELETE", "/ports/vm3");
    assert.deepEqual(deleted.json, { changed: ["port vm3 deleted"], notApplied: [] });
    // What it carried to the end stays in the log: its announcement in, the frame from vm1 out.
    assert.ok(
      r.logs.some((l) =>
        /^HTTP DELETE \/ports\/vm3: port vm3's last counters: rx_packets 1, rx_bytes 60, tx_packets 1, tx_bytes 100, (notifications \d+, )?flooded 1$/
          .test(l)
      ),
      r.logs.join("\n"),
    );
    assert.ok(await fe3.waitClosed(), "vm3's front-end is hung up on: its link goes down");
    assert.deepEqual((await r.req("GET", `/fdb?mac=${C}`)).json.entries, []);
    assert.equal((await r.req("GET", "/ports/vm3")).status, 404);
  } finally {
    clearInterval(stream);
  }
  fe1.reclaimTx();
  // Every frame vm1 streamed to vm2 arrived: none lost while vm3 came and went.
  await waitFor(`${streamed} streamed frames`, () => {
    drain();
    return got.length >= streamed;
  }).catch((e) => {
    const c = JSON.stringify(r.sw.port("vm2")?.counters);
    throw new Error(`${e.message}: ${got.length} of ${streamed}; vm2 ${c}`);
  });
  assert.ok(streamed > 100, `streamed ${streamed}`);
  assert.equal(got.length, streamed);
  assert.equal(r.sw.port("vm2")!.counters.drop_no_buffer, 0);
  assert.equal(r.sw.port("vm2")!.counters.drop_link_down, 0);

  // The freed number is given to the next port, counters from zero.
  const again = await r.req("POST", "/ports", {
    name: "vm4",
    type: "vhost-user",
    socket: `${r.dir}/vm4.sock`,
  });
  assert.match(again.json.changed[0], /added as port 2$/);
  assert.equal(r.sw.port("vm4")!.counters.rx_packets, 0);
  assert.equal(r.sw.port("vm4")!.counters.flooded, 0);
});

Deno.test("POST /ports with a bad port: 400 with every problem, as the loader words them", async () => {
  await using r = await rig({ name: "live", ports: [vm("vm1")] });
  const bad = await r.req("POST", "/ports", {
    name: "vm1",
    type: "vhost-user",
    sockt: "x.sock",
    mtu: 10,
    vlan: { mode: "trunk", allowed: [10], native: 20 },
  });
  assert.equal(bad.status, 400);
  assert.deepEqual(bad.json.problems, [
    'POST /ports: ports[1].sockt: unknown key "sockt" (did you mean "socket"?)',
    'POST /ports: ports[1].name: duplicate port name "vm1" (also used by ports[0])',
    "POST /ports: ports[1].mtu: expected an integer from 68 to 9000, got 10",
    "POST /ports: ports[1].vlan.native: native VLAN 20 is not in allowed [10]",
    "POST /ports: ports[1].socket: required key is missing",
  ]);
  assert.equal(bad.json.error, "5 problems: nothing changed");
  assert.deepEqual((await r.req("GET", "/ports")).json.ports.map((p: { name: string }) => p.name), [
    "vm1",
  ]);
  assert.equal((await r.req("POST", "/ports", "{")).status, 400);
  assert.equal((await r.req("DELETE", "/ports/nope")).status, 404);
  assert.equal((await r.req("PATCH", "/ports/nope", { mtu: 1400 })).status, 404);
});

Deno.test("PATCH a port's VLAN: isolation changes at once; what cannot change live is refused", async () => {
  await using r = await rig({ name: "live", ports: [vm("vm1"), vm("vm2")] });
  const fe1 = await r.attach("vm1", A);
  const fe2 = await r.attach("vm2", B);
  fe1.send(ethFrame(BROADCAST, A, 60));
  await framesFrom(fe2, A, 1);

  const patched = await r.req("PATCH", "/ports/vm2", { vlan: { mode: "access", tag: 10 } });
  assert.deepEqual(patched.json, {
    changed: ['port vm2: vlan default -> {"mode":"access","tag":10}'],
    notApplied: [],
  });
  await noneArrive(fe1, fe2, A, BROADCAST);

  await r.req("PATCH", "/ports/vm1", { vlan: { mode: "access", tag: 10 } });
  fe1.send(ethFrame(BROADCAST, A, 60, 99));
  await framesFrom(fe2, A, 1);

  // Back to the default: a trunk of every VLAN.
  const reset = await r.req("PATCH", "/ports/vm2", { vlan: null });
  assert.equal(reset.status, 200);
  fe1.send(ethFrame(BROADCAST, A, 60, 98));
  const [tagged] = await framesFrom(fe2, A, 1);
  assert.deepEqual([tagged[12], tagged[13], tagged[14] & 0x0f, tagged[15]], [0x81, 0, 0, 10]);

  const refused = await r.req("PATCH", "/ports/vm1", {
    socket: `${r.dir}/other.sock`,
    mode: "client",
  });
  assert.equal(refused.status, 400);
  assert.deepEqual(refused.json.problems, [
    "PATCH /ports/vm1: ports[0].socket: cannot change while the port runs (delete the port and add it again)",
    "PATCH /ports/vm1: ports[0].mode: cannot change while the port runs (delete the port and add it again)",
  ]);
  const storm = await r.req("PATCH", "/ports/vm1", { stormControl: { broadcast: 10 } });
  assert.deepEqual(storm.json.changed, [
    'port vm1: stormControl default -> {"broadcast":10,"burstFrames":1}',
  ]);
  assert.equal((await r.req("GET", "/ports/vm1")).json.safety.stormControl.broadcast, 10);
  const mtu = await r.req("PATCH", "/ports/vm1", { mtu: 9000 });
  assert.match(mtu.json.changed[0], /^port vm1: mtu 1500 -> 9000 \(virtio-net tells the guest/);
  assert.equal((await r.req("GET", "/ports/vm1")).json.mtu, 9000);
});

Deno.test("static MACs: PUT /fdb pins one, DELETE /fdb?mac=&vlan= removes it; GET /topology shows the running config", async () => {
  await using r = await rig({
    name: "live",
    fdb: { maxPerPort: 100 },
    ports: [vm("vm1"), vm("vm2")],
  });
  const put = await r.req("PUT", "/fdb", { mac: "52-54-00-00-0C-01", vlan: 0, port: "vm2" });
  assert.deepEqual(put.json.changed, ["static MAC 52:54:00:00:0c:01 VLAN 0 on vm2"]);
  assert.deepEqual((await r.req("GET", `/fdb?mac=${C}`)).json.entries, [
    { mac: C, vlan: 0, port: "vm2", ageSeconds: 0, static: true },
  ]);
  // Replacing it moves it.
  await r.req("PUT", "/fdb", { mac: C, port: "vm1" });
  assert.equal((await r.req("GET", `/fdb?mac=${C}`)).json.entries[0].port, "vm1");
  const bad = await r.req("PUT", "/fdb", { mac: "01:00:5e:00:00:01", vlan: 5000, port: "vm9" });
  assert.deepEqual(bad.json.problems, [
    "PUT /fdb: fdb.static[1].mac: 01:00:5e:00:00:01 is multicast: static entries must be unicast",
    "PUT /fdb: fdb.static[1].vlan: expected an integer from 0 to 4094, got 5000",
    'PUT /fdb: fdb.static[1].port: no port named "vm9" (did you mean "vm1"?)',
  ]);

  const topo = (await r.req("GET", "/topology")).json;
  assert.deepEqual(topo.fdb.static, [{ mac: C, vlan: 0, port: "vm1" }]);
  assert.equal(topo.fdb.maxPerPort, 100);
  // Savable: the loader reads it back as the running topology.
  assert.deepEqual(checkTopology(topo, r.file), r.sw.topology);

  // A read-only endpoint refuses every change.
  const readOnly = createApp(r.sw, { readOnly: true });
  for (const [method, path] of [["POST", "/ports"], ["PATCH", "/ports/vm1"], ["PUT", "/fdb"]]) {
    const res = await readOnly.request(path, { method, body: "{}" });
    assert.equal(res.status, 403, `${method} ${path}`);
  }
  assert.equal((await readOnly.request("/reload", { method: "POST" })).status, 403);
  assert.equal((await readOnly.request("/topology")).status, 200);

  const del = await r.req("DELETE", `/fdb?mac=${C}&vlan=0`);
  assert.deepEqual(del.json, {
    flushed: 1,
    changed: ["static MAC 52:54:00:00:0c:01 VLAN 0 on vm1 removed"],
  });
  assert.deepEqual((await r.req("GET", `/fdb?mac=${C}`)).json.entries, []);
  assert.deepEqual((await r.req("GET", "/topology")).json.fdb.static, []);
});

Deno.test("reload applies the file's difference; an invalid file changes nothing and says why", async () => {
  await using r = await rig({ name: "live", ports: [vm("vm1"), vm("vm2")] });
  const fe1 = await r.attach("vm1", A);
  const fe2 = await r.attach("vm2", B);
  fe1.send(ethFrame(BROADCAST, A, 60));
  await framesFrom(fe2, A, 1);
  const write = (t: unknown) =>
    Deno.writeTextFile(r.file, JSON.stringify(t).replaceAll("$DIR", r.dir));

  await write({
    name: "live",
    http: { listen: "127.0.0.1:0" },
    threads: 2,
    fdb: { maxPerPort: 10 },
    ports: [vm("vm1"), vm("vm2", { vlan: { mode: "access", tag: 20 } }), vm("vm3")],
  });
  const reloaded = await r.req("POST", "/reload");
  assert.deepEqual(reloaded.json, {
    changed: [
      'port vm2: vlan default -> {"mode":"access","tag":20}',
      `port vm3 (vhost-user, ${r.dir}/vm3.sock (server)) added as port 2`,
      "fdb.maxPerPort: 0 -> 10",
    ],
    notApplied: [
      'http.listen: "127.0.0.1:8080" -> "127.0.0.1:0" needs a restart of the switch',
      "threads: 1 -> 2 needs a restart of the switch",
    ],
  });
  // Its queues go to the worker that runs, not to the second one the file asks for.
  assert.equal(r.sw.datapath.pollerOf(1, 0), 0);
  assert.equal(r.sw.datapath.pollerOf(2, 0), 0);
  await noneArrive(fe1, fe2, A, BROADCAST);

  const before = (await r.req("GET", "/topology")).json;
  await write({ name: "live", threads: 0, ports: [vm("vm1", { mtu: 1 }), { name: "x" }] });
  const invalid = await r.req("POST", "/reload");
  assert.equal(invalid.status, 400);
  assert.deepEqual(invalid.json.problems, [
    `${r.file}: threads: expected an integer from 1 to 64, got 0`,
    `${r.file}: ports[0].mtu: expected an integer from 68 to 9000, got 1`,
    `${r.file}: ports[1].type: required key is missing`,
  ]);
  assert.deepEqual((await r.req("GET", "/topology")).json, before);
  await noneArrive(fe1, fe2, A, BROADCAST);
});

Deno.test("a front-end flooding thousands of source MACs: its own entries go, its neighbours' stay", async () => {
  await using r = await rig({
    name: "live",
    fdb: { maxEntries: 256 },
    ports: [vm("vm1"), vm("vm2"), vm("flood")],
  });
  const fe1 = await r.attach("vm1", A);
  await r.attach("vm2", B);
  const fl = await r.attach("flood", "52:54:00:00:ff:ff");
  await waitFor("vm1 and vm2 learned", async () => {
    const ports = (await r.req("GET", "/fdb")).json.entries.map((e: { port: string }) => e.port);
    return ports.includes("vm1") && ports.includes("vm2");
  });
  const flood = async (count: number, base: number) => {
    const start = r.sw.port("flood")!.counters.rx_packets;
    for (let i = 0; i < count; i++) {
      const src = `02:00:00:${((base + i) >> 16 & 0xff).toString(16).padStart(2, "0")}:${
        ((base + i) >> 8 & 0xff).toString(16).padStart(2, "0")
      }:${((base + i) & 0xff).toString(16).padStart(2, "0")}`;
      fl.send(ethFrame(BROADCAST, src, 60, i));
      if (i % 64 === 63) {
        await waitFor(
          `the flood taken (${i})`,
          () => fl.reclaimTx() >= 0 && r.sw.port("flood")!.counters.rx_packets >= start + i + 1,
        ).catch((e) => {
          throw new Error(`${e.message}: ${JSON.stringify(r.sw.port("flood")!.counters)}`);
        });
      }
    }
    await waitFor(
      "the flood received",
      () => r.sw.port("flood")!.counters.rx_packets >= start + count,
    );
    fl.reclaimTx();
  };
  // 5000 source MACs into a 256-entry table: the flooder's own entries are evicted.
  await flood(5000, 1);
  const stats = (await r.req("GET", "/stats")).json.fdb;
  const flooder = r.sw.port("flood")!.counters;
  const byPort = (await r.req("GET", "/fdb")).json.entries.map((e: { port: string }) => e.port);
  assert.ok(byPort.includes("vm1") && byPort.includes("vm2"), "the neighbours' MACs survive");
  assert.equal(flooder.fdb_learned + 2, byPort.length);
  assert.equal(flooder.fdb_learned + flooder.fdb_evicted, 5001, JSON.stringify(flooder));
  assert.equal(stats.evicted, flooder.fdb_evicted);
  assert.equal(r.sw.port("vm1")!.counters.fdb_evicted, 0);
  // vm1 -> vm2 still goes straight to vm2 (not flooded: B is still known).
  const floodedBefore = r.sw.port("vm1")!.counters.flooded;
  fe1.send(ethFrame(B, A, 60, 1));
  await waitFor("vm1's frame", () => r.sw.port("vm1")!.counters.unicast === 1);
  assert.equal(r.sw.port("vm1")!.counters.flooded, floodedBefore);

  // With a per-port limit the flooder is held to it; the rest is refused and counted.
  await r.req("DELETE", "/fdb?port=flood");
  const file = (await r.req("GET", "/topology")).json;
  await Deno.writeTextFile(
    r.file,
    JSON.stringify({ ...file, fdb: { ...file.fdb, maxPerPort: 100 } }),
  );
  assert.deepEqual((await r.req("POST", "/reload")).json.changed, ["fdb.maxPerPort: 0 -> 100"]);
  await flood(1000, 100_000);
  const limited = r.sw.port("flood")!.counters;
  assert.equal(limited.fdb_learned, 100);
  assert.equal(limited.fdb_limit_refused, 900);
});
