import assert from "node:assert/strict";
import {
  type AppOptions,
  createApp,
  type FdbEntry,
  type FdbFilter,
  matchesFdbFilter,
  type PortStatus,
  type SwitchView,
} from "../http/app.ts";

// A test double for the pure HTTP layer: the switch's state as plain data.
class MemoryView implements SwitchView {
  flushes: FdbFilter[] = [];
  entries: FdbEntry[] = [
    { mac: "52:54:00:00:00:01", vlan: 0, port: "vm1", ageSeconds: 3, static: false },
    { mac: "52:54:00:00:00:02", vlan: 0, port: "vm2", ageSeconds: 12, static: false },
    { mac: "52:54:00:00:00:22", vlan: 10, port: "vm2", ageSeconds: 1, static: false },
    { mac: "52:54:00:00:00:99", vlan: 10, port: "vm2", ageSeconds: 0, static: true },
  ];
  readonly portList: PortStatus[] = [
    {
      name: "vm1",
      type: "vhost-user",
      socket: "/tmp/vswitch/vm1.sock",
      mode: "server",
      state: "connected",
      mtu: 1500,
      features: ["VIRTIO_F_VERSION_1", "VIRTIO_NET_F_MRG_RXBUF"],
      queues: [{ index: 0, worker: 0 }],
      counters: { rx_packets: 10, tx_packets: 7, rx_dropped: 0 },
    },
    {
      name: "vm2",
      type: "vhost-user",
      socket: "/tmp/vswitch/vm2.sock",
      mode: "server",
      state: "listening",
      mtu: 1500,
      features: [],
      queues: [{ index: 0, worker: 1 }],
      counters: { rx_packets: 0, tx_packets: 0, rx_dropped: 0 },
    },
    {
      name: "uplink",
      type: "af-packet",
      interface: "vs-uplink0",
      state: "up",
      mtu: 1500,
      features: [],
      queues: [{ index: 0, worker: 0 }],
      counters: { rx_packets: 5, tx_packets: 5 },
    },
  ];
  info() {
    return { name: "br0", version: "0.1.0", uptimeSeconds: 42, threads: 2 };
  }
  ports() {
    return this.portList;
  }
  port(name: string) {
    return this.portList.find((p) => p.name === name);
  }
  fdb() {
    return this.entries;
  }
  flushFdb(filter: FdbFilter) {
    this.flushes.push(filter);
    const before = this.entries.length;
    this.entries = this.entries.filter((e) => e.static || !matchesFdbFilter(e, filter));
    return before - this.entries.length;
  }
}

function setup(options?: AppOptions) {
  const view = new MemoryView();
  return { view, app: createApp(view, options) };
}

async function json(res: Response, status: number): Promise<unknown> {
  assert.equal(res.status, status);
  assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
  return await res.json();
}

const macs = (body: unknown) => (body as { entries: FdbEntry[] }).entries.map((e) => e.mac);

Deno.test("GET /health", async () => {
  const { app } = setup();
  assert.deepEqual(await json(await app.request("/health"), 200), { status: "ok" });
});

Deno.test("GET /info", async () => {
  const { app } = setup();
  assert.deepEqual(await json(await app.request("/info"), 200), {
    name: "br0",
    version: "0.1.0",
    uptimeSeconds: 42,
    threads: 2,
  });
});

Deno.test("GET /ports lists every port with its status", async () => {
  const { app, view } = setup();
  const body = await json(await app.request("/ports"), 200) as { ports: PortStatus[] };
  assert.deepEqual(body.ports.map((p) => [p.name, p.state]), [
    ["vm1", "connected"],
    ["vm2", "listening"],
    ["uplink", "up"],
  ]);
  assert.deepEqual(body.ports, view.portList);
});

Deno.test("GET /ports/:name, and 404 for an unknown port", async () => {
  const { app, view } = setup();
  assert.deepEqual(await json(await app.request("/ports/uplink"), 200), view.portList[2]);
  assert.deepEqual(await json(await app.request("/ports/vm9"), 404), {
    error: 'no port named "vm9"',
  });
});

Deno.test("GET /fdb with filters", async () => {
  const { app } = setup();
  const all = ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:22", "52:54:00:00:00:99"];
  assert.deepEqual(macs(await json(await app.request("/fdb"), 200)), all);
  assert.deepEqual(macs(await json(await app.request("/fdb?port=vm1"), 200)), [all[0]]);
  assert.deepEqual(macs(await json(await app.request("/fdb?vlan=10"), 200)), all.slice(2));
  assert.deepEqual(macs(await json(await app.request("/fdb?port=vm2&vlan=0"), 200)), [all[1]]);
  // MACs are matched in normalised form, whatever the query's case and separator.
  assert.deepEqual(macs(await json(await app.request("/fdb?mac=52-54-00-00-00-2A"), 200)), []);
  assert.deepEqual(macs(await json(await app.request("/fdb?mac=52-54-00-00-00-22"), 200)), [
    all[2],
  ]);
  const entry = (await json(await app.request("/fdb?mac=52:54:00:00:00:99"), 200)) as {
    entries: FdbEntry[];
  };
  assert.deepEqual(entry.entries, [
    { mac: "52:54:00:00:00:99", vlan: 10, port: "vm2", ageSeconds: 0, static: true },
  ]);
});

Deno.test("GET /fdb rejects a bad filter with 400", async () => {
  const { app } = setup();
  const cases: [string, string][] = [
    ["vlan=abc", 'vlan must be an integer from 0 to 4094, got "abc"'],
    ["vlan=4095", 'vlan must be an integer from 0 to 4094, got "4095"'],
    ["mac=52:54:00", 'mac must look like 52:54:00:00:00:01, got "52:54:00"'],
    ["port=vm9", 'no port named "vm9"'],
    ["prot=vm1", 'unknown filter "prot": use port, vlan or mac'],
    ["vlan=1&vlan=2", "give vlan once"],
  ];
  for (const [query, error] of cases) {
    assert.deepEqual(await json(await app.request(`/fdb?${query}`), 400), { error }, query);
  }
});

Deno.test("DELETE /fdb flushes learned entries and keeps static ones", async () => {
  const { app, view } = setup();
  const res = await app.request("/fdb", { method: "DELETE" });
  assert.deepEqual(await json(res, 200), { flushed: 3 });
  assert.deepEqual(view.flushes, [{}]);
  assert.deepEqual(macs(await json(await app.request("/fdb"), 200)), ["52:54:00:00:00:99"]);
});

Deno.test("DELETE /fdb?port= flushes one port", async () => {
  const { app, view } = setup();
  const res = await app.request("/fdb?port=vm2", { method: "DELETE" });
  assert.deepEqual(await json(res, 200), { flushed: 2 });
  assert.deepEqual(view.flushes, [{ port: "vm2" }]);
  assert.deepEqual(macs(await json(await app.request("/fdb"), 200)), [
    "52:54:00:00:00:01",
    "52:54:00:00:00:99",
  ]);
  const bad = await app.request("/fdb?port=nope", { method: "DELETE" });
  assert.deepEqual(await json(bad, 400), { error: 'no port named "nope"' });
  assert.equal(view.flushes.length, 1);
});

Deno.test("readOnly refuses DELETE /fdb with 403 and still serves reads", async () => {
  const { app, view } = setup({ readOnly: true });
  const res = await app.request("/fdb", { method: "DELETE" });
  assert.deepEqual(await json(res, 403), { error: "the HTTP endpoint is read-only" });
  assert.deepEqual(view.flushes, []);
  assert.equal(view.entries.length, 4);
  assert.equal((await app.request("/fdb")).status, 200);
});

Deno.test("a token guards DELETE /fdb with 401 until the right Bearer token is sent", async () => {
  const { app, view } = setup({ token: "s3cret" });
  const del = (headers: Record<string, string> = {}) =>
    app.request("/fdb", { method: "DELETE", headers });

  const missing = await del();
  assert.equal(missing.headers.get("www-authenticate"), 'Bearer realm=""');
  assert.deepEqual(await json(missing, 401), {
    error: "this request needs Authorization: Bearer <token>",
  });
  assert.deepEqual(await json(await del({ Authorization: "Bearer wrong" }), 401), {
    error: "invalid token",
  });
  assert.deepEqual(await json(await del({ Authorization: "Basic czNjcmV0" }), 401), {
    error: "expected Authorization: Bearer <token>",
  });
  assert.deepEqual(view.flushes, []);

  assert.deepEqual(await json(await del({ Authorization: "Bearer s3cret" }), 200), { flushed: 3 });
  // Reads need no token.
  assert.equal((await app.request("/ports")).status, 200);
});

Deno.test("token and readOnly together: authenticated but still refused", async () => {
  const { app } = setup({ token: "s3cret", readOnly: true });
  const headers = { Authorization: "Bearer s3cret" };
  assert.equal((await app.request("/fdb", { method: "DELETE", headers })).status, 403);
  assert.equal((await app.request("/fdb", { method: "DELETE" })).status, 401);
});

Deno.test("unknown routes and view failures are JSON errors", async () => {
  const { app, view } = setup();
  assert.deepEqual(await json(await app.request("/nope"), 404), {
    error: "no route for GET /nope",
  });
  view.fdb = () => {
    throw new Error("fdb unavailable");
  };
  assert.deepEqual(await json(await app.request("/fdb"), 500), { error: "fdb unavailable" });
});
