import assert from "node:assert/strict";
import { endpoint } from "../cli/common.ts";
import { formatFdb } from "../cli/fdb.ts";
import { formatPorts } from "../cli/ports.ts";
import { type AppOptions, createApp } from "../http/app.ts";
import type { FdbEntry, PortStatus } from "../switch/view.ts";
import { CAPTURED, MemoryView } from "./helpers/memory_view.ts";
import { decodePcap } from "../peers/pcap.ts";
import {
  parseExposition,
  promtoolCheck,
  promtoolMissing,
  sampleValue,
} from "./helpers/prometheus.ts";

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

// ---- the live page, /stats, /metrics ----

Deno.test("GET / serves the live page, self-contained", async () => {
  const { app } = setup({ token: "s3cret", readOnly: true });
  const res = await app.request("/");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/html; charset=utf-8/i);
  assert.match(res.headers.get("content-security-policy") ?? "", /connect-src 'self'/);
  const html = await res.text();
  for (const path of ["/ports", "/stats", "/fdb", "/info"]) {
    assert.ok(html.includes(`get("${path}")`), `the page fetches ${path}`);
  }
  assert.ok(html.includes("setTimeout(tick, 1000)"), "it refreshes every second");
  // No external assets: every src/href is a local path or a data: URL.
  for (const [, url] of html.matchAll(/(?:src|href)="([^"]*)"/g)) {
    assert.match(url, /^(\/[a-z]*|data:.*)$/, url);
  }
  assert.ok(!/innerHTML/.test(html), "values go into the DOM as text");
  // The script is http/page_script.ts as Deno compiled it: plain JavaScript a browser parses.
  const scripts = [...html.matchAll(/<script>([^]*?)<\/script>/g)].map((m) => m[1]);
  assert.equal(scripts.length, 1);
  assert.doesNotThrow(() => new Function(scripts[0]), "the inline script is valid JavaScript");
  assert.match(scripts[0], /^"use strict";\n\(function liveView\(\)/);
});

Deno.test("GET /stats", async () => {
  const { app, view } = setup();
  assert.deepEqual(await json(await app.request("/stats"), 200), view.stats());
});

Deno.test("GET /metrics is strict Prometheus text 0.0.4 with the switch's values", async () => {
  const { app } = setup();
  const res = await app.request("/metrics");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const text = await res.text();
  const m = parseExposition(text);
  const v = (name: string, labels: Record<string, string> = {}) => sampleValue(m, name, labels);
  assert.equal(v("vswitch_info", { name: "br0", version: "0.1.0" }), 1);
  assert.equal(v("vswitch_uptime_seconds"), 42);
  assert.equal(v("vswitch_port_rx_packets_total", { port: "vm1" }), 10);
  assert.equal(v("vswitch_port_rx_bytes_total", { port: "vm1" }), 1000);
  assert.equal(v("vswitch_port_tx_packets_total", { port: "uplink" }), 5);
  assert.equal(v("vswitch_port_drops_total", { port: "vm1", reason: "too_big" }), 2);
  assert.equal(v("vswitch_port_drops_total", { port: "vm1", reason: "vlan" }), 1);
  assert.equal(v("vswitch_port_up", { port: "vm1" }), 1);
  assert.equal(v("vswitch_port_up", { port: "vm2" }), 0, "listening: no peer");
  assert.equal(v("vswitch_port_up", { port: "uplink" }), 1);
  assert.equal(v("vswitch_port_info", { port: "uplink", type: "af-packet" }), 1);
  assert.equal(v("vswitch_port_mtu_bytes", { port: "vm2" }), 1500);
  assert.equal(v("vswitch_worker_frames_total", { worker: "0" }), 17);
  assert.equal(v("vswitch_worker_busy_ratio", { worker: "0" }), 0.25);
  assert.equal(v("vswitch_worker_sleeps_total", { worker: "1" }), 9);
  assert.equal(v("vswitch_fdb_entries"), 4);
  assert.equal(v("vswitch_fdb_capacity"), 8192);
  assert.equal(v("vswitch_fdb_learned_total"), 9);
  assert.equal(v("vswitch_fdb_refused_full_total"), 0);
  // Every port counter is exported once, under some metric of that port.
  const perPort = [...m.values()].flatMap((f) => f.samples).filter((s) => s.labels.port === "vm1");
  assert.equal(perPort.filter((s) => s.name.endsWith("_total")).length, 5);
  assert.equal(m.get("vswitch_port_rx_packets_total")?.type, "counter");
  assert.equal(m.get("vswitch_fdb_entries")?.type, "gauge");
});

Deno.test({
  name: "GET /metrics passes `promtool check metrics`",
  ignore: promtoolMissing !== null,
  async fn() {
    const text = await (await setup().app.request("/metrics")).text();
    const promtool = await promtoolCheck(text);
    assert.ok(promtool.ok, `promtool check metrics:\n${promtool.output}\n${text}`);
  },
});

Deno.test("GET /metrics escapes label values", async () => {
  const { app, view } = setup();
  const name = 'odd "port" \\ with\na newline';
  view.portList.push({ ...view.portList[1], name, counters: { rx_packets: 3 } });
  const text = await (await app.request("/metrics")).text();
  assert.ok(text.includes('port="odd \\"port\\" \\\\ with\\na newline"'), text);
  assert.equal(
    sampleValue(parseExposition(text), "vswitch_port_rx_packets_total", { port: name }),
    3,
  );
});

// ---- capture ----

async function capture(app: ReturnType<typeof createApp>, query = "", init?: RequestInit) {
  const res = await app.request(`/ports/vm1/capture${query}`, init);
  assert.equal(res.status, 200, await res.clone().text());
  assert.equal(res.headers.get("content-type"), "application/vnd.tcpdump.pcap");
  return decodePcap(new Uint8Array(await res.arrayBuffer()));
}

Deno.test("GET /ports/:name/capture streams the view's pcap", async () => {
  const { app, view } = setup();
  const pcap = await capture(app);
  assert.equal(pcap.linktype, 1);
  assert.deepEqual(pcap.packets.map((p) => p.data), CAPTURED);
  assert.equal(view.captures.length, 1);
  const { port, opts, finished } = view.captures[0];
  assert.deepEqual([port, opts.maxFrames, opts.seconds, finished], ["vm1", 100, 10, true]);
  assert.ok(opts.signal instanceof AbortSignal && !opts.signal.aborted);

  assert.equal((await capture(app, "?count=2&seconds=1.5")).packets.length, 2);
  assert.deepEqual([view.captures[1].opts.maxFrames, view.captures[1].opts.seconds], [2, 1.5]);
  await capture(app, "?count=100000&seconds=3600");
  assert.deepEqual(await json(await app.request("/ports/vm9/capture"), 404), {
    error: 'no port named "vm9"',
  });
});

Deno.test("GET /ports/:name/capture rejects bad bounds with 400", async () => {
  const { app, view } = setup();
  const count = (v: string) => `count must be an integer from 1 to 100000, got "${v}"`;
  const seconds = (v: string) => `seconds must be a number above 0 and at most 3600, got "${v}"`;
  const cases: [string, string][] = [
    ["count=0", count("0")],
    ["count=100001", count("100001")],
    ["count=ten", count("ten")],
    ["count=1.5", count("1.5")],
    ["count=", count("")],
    ["seconds=0", seconds("0")],
    ["seconds=3601", seconds("3601")],
    ["seconds=-1", seconds("-1")],
    ["seconds=1e3", seconds("1e3")],
    ["count=1&count=2", "give count once"],
    ["frames=10", 'unknown parameter "frames": use count or seconds'],
  ];
  for (const [query, error] of cases) {
    const res = await app.request(`/ports/vm1/capture?${query}`);
    assert.deepEqual(await json(res, 400), { error }, query);
  }
  assert.equal(view.captures.length, 0);
});

Deno.test("capture is privileged: 403 when read-only, the token when one is set", async () => {
  const ro = setup({ readOnly: true });
  assert.deepEqual(await json(await ro.app.request("/ports/vm1/capture"), 403), {
    error: "the HTTP endpoint is read-only",
  });
  assert.equal(ro.view.captures.length, 0);

  const { app, view } = setup({ token: "s3cret" });
  assert.equal((await app.request("/ports/vm1/capture")).status, 401);
  const wrong = { headers: { Authorization: "Bearer nope" } };
  assert.equal((await app.request("/ports/vm1/capture", wrong)).status, 401);
  assert.equal(view.captures.length, 0);
  const pcap = await capture(app, "", { headers: { Authorization: "Bearer s3cret" } });
  assert.equal(pcap.packets.length, 3);
  assert.equal((await app.request("/ports/vm1")).status, 200, "reads need no token");
});

Deno.test("a capture ends when the client goes away", async (t) => {
  for (const how of ["cancels the body", "aborts the request"]) {
    await t.step(how, async () => {
      const { app, view } = setup();
      view.endless = true;
      const client = new AbortController();
      const res = await app.request("/ports/vm1/capture?seconds=3600", { signal: client.signal });
      const reader = res.body!.getReader();
      assert.equal((await reader.read()).value?.length, 24, "the pcap header comes first");
      const { opts } = view.captures[0];
      assert.equal(opts.signal?.aborted, false);
      if (how === "cancels the body") await reader.cancel();
      else client.abort();
      assert.equal(opts.signal?.aborted, true);
      if (how === "aborts the request") await reader.cancel().catch(() => {});
      await new Promise((r) => setTimeout(r, 0));
      assert.equal(view.captures[0].finished, true, "the view's iterator was closed");
    });
  }
});

// ---- DELETE /ports/:name/fdb ----

Deno.test("DELETE /ports/:name/fdb flushes that port's learned entries", async () => {
  const { app, view } = setup();
  const res = await app.request("/ports/vm2/fdb", { method: "DELETE" });
  assert.deepEqual(await json(res, 200), { flushed: 2 });
  assert.deepEqual(view.flushes, [{ port: "vm2" }]);
  assert.deepEqual(macs(await json(await app.request("/fdb"), 200)), [
    "52:54:00:00:00:01",
    "52:54:00:00:00:99",
  ]);
  const narrowed = await app.request("/ports/vm1/fdb?vlan=10", { method: "DELETE" });
  assert.deepEqual(await json(narrowed, 200), { flushed: 0 });
  assert.deepEqual(view.flushes[1], { vlan: 10, port: "vm1" });

  const unknown = await app.request("/ports/vm9/fdb", { method: "DELETE" });
  assert.deepEqual(await json(unknown, 404), { error: 'no port named "vm9"' });
  const bad = await app.request("/ports/vm1/fdb?port=vm2", { method: "DELETE" });
  assert.deepEqual(await json(bad, 400), { error: 'unknown filter "port": use vlan or mac' });
  assert.equal(view.flushes.length, 2);
});

Deno.test("DELETE /ports/:name/fdb is guarded like DELETE /fdb", async () => {
  const ro = setup({ readOnly: true });
  assert.equal((await ro.app.request("/ports/vm1/fdb", { method: "DELETE" })).status, 403);
  const { app, view } = setup({ token: "s3cret" });
  assert.equal((await app.request("/ports/vm1/fdb", { method: "DELETE" })).status, 401);
  const headers = { Authorization: "Bearer s3cret" };
  const res = await app.request("/ports/vm1/fdb", { method: "DELETE", headers });
  assert.deepEqual(await json(res, 200), { flushed: 1 });
  assert.equal(ro.view.flushes.length + view.flushes.length, 1);
});

// ---- the terminal views' tables (the live test runs them against a real switch) ----

Deno.test("cli: the fdb and ports tables are aligned", () => {
  const view = new MemoryView();
  assert.equal(
    formatFdb(view.entries),
    [
      "PORT  VLAN  MAC                   AGE",
      "vm1      0  52:54:00:00:00:01       3",
      "vm2      0  52:54:00:00:00:02      12",
      "vm2     10  52:54:00:00:00:22       1",
      "vm2     10  52:54:00:00:00:99  static",
    ].join("\n"),
  );
  assert.equal(
    formatPorts(view.info(), view.ports(), view.stats()),
    [
      "br0: vswitch 0.1.0, up 42s, 2 datapath threads, MAC table 4/8192",
      "PORT    TYPE        STATE       MTU  QUEUES  RX PKTS  RX BYTES  RX/S  TX PKTS  TX BYTES  TX/S  DROPS  SOCKET / INTERFACE",
      "vm1     vhost-user  connected  1500       1       10      1000   0.0        7         0   0.0      3  /tmp/vswitch/vm1.sock (server)",
      "vm2     vhost-user  listening  1500       1        0         0   1.0        0         0   0.5      0  /tmp/vswitch/vm2.sock (server)",
      "uplink  af-packet   up         1500       1        5         0   2.0        5         0   1.0      0  vs-uplink0",
      "vm1 drops: drop_too_big=2 drop_vlan=1",
    ].join("\n"),
  );
});

Deno.test("cli: the endpoint comes from --url, --topology or the default", async () => {
  assert.equal(endpoint({}).base, "http://127.0.0.1:8080");
  assert.equal(endpoint({ url: "http://10.0.0.1:9000/" }).base, "http://10.0.0.1:9000");
  assert.throws(() => endpoint({ url: "10.0.0.1:9000" }), /--url: (not a URL|expected http)/);
  const dir = await Deno.makeTempDir();
  try {
    const topology = (listen: string) => {
      const file = `${dir}/t.json`;
      Deno.writeTextFileSync(
        file,
        JSON.stringify({
          name: "t",
          http: { listen },
          ports: [{ name: "p", type: "vhost-user", socket: "p.sock" }],
        }),
      );
      return endpoint({ topology: file });
    };
    assert.deepEqual(topology("0.0.0.0:9090"), {
      base: "http://127.0.0.1:9090",
      topology: `${dir}/t.json`,
    });
    assert.equal(topology("[::]:9091").base, "http://[::1]:9091");
    assert.equal(topology("[fe80::1]:80").base, "http://[fe80::1]:80");
    assert.throws(() => topology("127.0.0.1:0"), /port 0 .*give --url/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
