// The HTTP endpoint of a real switch, over real HTTP, with real traffic: two vhost-user front-ends
// (tests/helpers/frontend.ts) exchange frames through the switch while every route is called;
// the capture is read by tcpdump, the page by headless Chromium and the MAC table by the CLI.
// Then DPDK testpmd's virtio-user ports do the same for the capture, counters and metrics.
// VSWITCH_SCREENSHOT=/tmp/page.png keeps Chromium's picture of the page.
import assert from "node:assert/strict";
import { createApp } from "../http/app.ts";
import type { FdbEntry, PortStatus, SwitchView } from "../switch/view.ts";
import { dropReason } from "../http/metrics.ts";
import { VhostFrontend } from "../peers/vhost_frontend.ts";
import { decodePcap, ethFrame } from "../peers/pcap.ts";
import { commandMissing, peerPresent } from "./helpers/peers.ts";
import {
  parseExposition,
  promtoolCheck,
  promtoolMissing,
  sampleValue,
} from "./helpers/prometheus.ts";
import { startSwitch, type TestSwitch, waitFor } from "./helpers/switch.ts";
import { exchangeFrames, testpmdAvailable } from "../peers/testpmd.ts";

// ---- the outside tools: tcpdump, Chromium, the CLI ----

const tcpdumpMissing = commandMissing("tcpdump", "tcpdump");
const chromiumMissing = commandMissing("chromium", "chromium");
const decoder = new TextDecoder();

/** Pipes the rest of a pcap stream into `tcpdump -r - -e -n` (when present) and keeps a copy. */
async function tcpdumpStream(head: Uint8Array, rest: ReadableStreamDefaultReader<Uint8Array>) {
  const chunks = [head];
  const child = tcpdumpMissing ? null : new Deno.Command("tcpdump", {
    args: ["-r", "-", "-e", "-n"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdin = child?.stdin.getWriter();
  await stdin?.write(head);
  for (let r = await rest.read(); !r.done; r = await rest.read()) {
    chunks.push(r.value);
    await stdin?.write(r.value);
  }
  await stdin?.close();
  const out = await child?.output();
  const pcap = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  chunks.reduce((off, c) => (pcap.set(c, off), off + c.length), 0);
  return {
    pcap,
    /** tcpdump's one line per frame (hex dumps left out), and its stderr. */
    lines: decoder.decode(out?.stdout).split("\n").filter((l) => /^\d/.test(l)),
    stderr: decoder.decode(out?.stderr),
  };
}

let chromiumRuns = 0;
/** Headless Chromium on `url`, its JS given 3 s of virtual time; returns stdout. */
async function chromium(dir: string, url: string, ...args: string[]): Promise<string> {
  const out = await new Deno.Command("chromium", {
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--disable-dev-shm-usage",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--hide-scrollbars",
      `--user-data-dir=${dir}/chromium-${++chromiumRuns}`,
      "--virtual-time-budget=3000",
      ...args,
      url,
    ],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  }).output();
  assert.ok(out.success, `chromium failed:\n${decoder.decode(out.stderr)}`);
  return decoder.decode(out.stdout);
}

/** `deno run mod.ts <args>` with only network access, as a user runs the views. */
async function runCli(args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net=127.0.0.1", "mod.ts", ...args],
    cwd: new URL("..", import.meta.url).pathname,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

const MAC_A = "52:54:00:aa:00:01";
const MAC_B = "52:54:00:bb:00:02";
const N = 5;

const linux = Deno.build.os === "linux";
if (!linux) console.warn("SKIPPING the live HTTP test: vhost-user needs Linux");
if (tcpdumpMissing) console.warn(`SKIPPING the tcpdump check of the capture: ${tcpdumpMissing}`);
if (chromiumMissing) console.warn(`SKIPPING the page in Chromium: ${chromiumMissing}`);

/** The switch, with each capture's end recorded (the switch removes its tap then). */
function recordingView(sw: SwitchView, ended: string[]): SwitchView {
  return {
    info: () => sw.info(),
    ports: () => sw.ports(),
    port: (name) => sw.port(name),
    fdb: () => sw.fdb(),
    flushFdb: (filter) => sw.flushFdb(filter),
    stats: () => sw.stats(),
    flows: () => sw.flows?.() ?? [],
    capture(port, opts) {
      const frames = sw.capture(port, opts);
      return frames && (async function* () {
        try {
          yield* frames;
        } finally {
          ended.push(port);
        }
      })();
    },
  };
}

/** A switch with two vhost-user ports, its app served over real HTTP, and ways to call it. */
async function liveSwitch(name: string, ports: string[]) {
  const ts = await startSwitch({
    name,
    threads: 2,
    http: { listen: "127.0.0.1:0" },
    ports: ports.map((port) => ({ name: port, type: "vhost-user", socket: `$DIR/${port}.sock` })),
  });
  const ended: string[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    createApp(recordingView(ts.sw, ended)).fetch,
  );
  const base = `http://127.0.0.1:${server.addr.port}`;
  const get = async <T>(path: string, init?: RequestInit): Promise<T> => {
    const res = await fetch(base + path, init);
    const body = await res.json();
    assert.equal(res.status, 200, `${path}: ${JSON.stringify(body)}`);
    return body as T;
  };
  const portsNow = async () =>
    Object.fromEntries((await get<{ ports: PortStatus[] }>("/ports")).ports.map((p) => [
      p.name,
      p,
    ]));
  const fdbNow = async (query = "") =>
    (await get<{ entries: FdbEntry[] }>(`/fdb${query}`)).entries
      .map((e) => [e.mac, e.port, e.vlan, e.static]).sort();
  /** Starts a capture; it runs once this resolves (the pcap header arrived, so `port` is tapped). */
  const capture = async (port: string, count: number) => {
    const res = await fetch(`${base}/ports/${port}/capture?count=${count}&seconds=60`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "application/vnd.tcpdump.pcap");
    const reader = res.body!.getReader();
    const head = await reader.read();
    assert.equal(head.value?.length, 24, "the pcap global header comes first");
    return { done: tcpdumpStream(head.value!, reader) };
  };
  const stop = async (ts: TestSwitch) => {
    await server.shutdown();
    await ts.stop();
  };
  return { ts, base, ended, get, portsNow, fdbNow, capture, [Symbol.asyncDispose]: () => stop(ts) };
}

type Captured = Awaited<ReturnType<typeof tcpdumpStream>>;

/** The capture holds exactly `sent` (in any order), and tcpdump saw each frame's MACs. */
function checkCapture(got: Captured, sent: Uint8Array[]) {
  const key = (f: Uint8Array) => Array.from(f).join(",");
  const frames = decodePcap(got.pcap).packets.map((p) => p.data);
  assert.deepEqual(frames.map(key).sort(), sent.map(key).sort());
  if (!peerPresent(tcpdumpMissing, "tcpdump's reading of the capture")) return;
  assert.match(got.stderr, /reading from file -, link-type EN10MB/);
  const macs = (f: Uint8Array, at: number) =>
    Array.from(f.subarray(at, at + 6), (x) => x.toString(16).padStart(2, "0")).join(":");
  const want = sent.map((f) => `${macs(f, 6)} > ${macs(f, 0)}`).sort();
  const seen = got.lines.map((l) => /^\S+ ([0-9a-f:]{17} > [0-9a-f:]{17}),/.exec(l)?.[1]).sort();
  assert.deepEqual(seen, want, got.lines.join("\n"));
}

/** /metrics parses strictly (and passes promtool) and carries every /ports counter. */
async function checkMetrics(base: string, ports: Record<string, PortStatus>, up: number) {
  const res = await fetch(`${base}/metrics`);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  const text = await res.text();
  const m = parseExposition(text);
  for (const [name, p] of Object.entries(ports)) {
    for (const c of ["rx_packets", "rx_bytes", "tx_packets", "tx_bytes"]) {
      const metric = `vswitch_port_${c}_total`;
      assert.equal(sampleValue(m, metric, { port: name }), p.counters[c], `${metric} ${name}`);
    }
    for (const [c, value] of Object.entries(p.counters)) {
      const reason = dropReason(c);
      if (reason) {
        assert.equal(sampleValue(m, "vswitch_port_drops_total", { port: name, reason }), value);
      }
    }
    assert.equal(sampleValue(m, "vswitch_port_up", { port: name }), up);
  }
  if (peerPresent(promtoolMissing, "promtool check metrics")) {
    const promtool = await promtoolCheck(text);
    assert.ok(promtool.ok, promtool.output);
  }
  return m;
}

Deno.test({
  name: "HTTP endpoint of a live switch: every route, with real frames",
  ignore: !linux,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using live = await liveSwitch("live", ["vm1", "vm2"]);
    const { ts, base, ended, get, portsNow, fdbNow } = live;
    const a = await VhostFrontend.open(`${ts.dir}/vm1.sock`);
    const b = await VhostFrontend.open(`${ts.dir}/vm2.sock`);
    try {
      await waitFor("both ports connected", async () => {
        const ports = await portsNow();
        return ports.vm1.state === "connected" && ports.vm2.state === "connected";
      });
      const before = await portsNow();
      const fromA = Array.from(
        { length: N },
        (_, i) => ethFrame({ src: MAC_A, dst: MAC_B, seq: i, length: 60 + 100 * i }),
      );
      const fromB = Array.from(
        { length: N },
        (_, i) => ethFrame({ src: MAC_B, dst: MAC_A, seq: 100 + i, length: 1514 - i }),
      );

      const captured = (await live.capture("vm1", 2 * N)).done;

      await t.step("frames A -> B and B -> A pass the switch", async () => {
        a.postRxBuffers(32);
        b.postRxBuffers(32);
        fromA.forEach((f) => a.send(f));
        assert.deepEqual(await b.waitFrames(N), fromA);
        fromB.forEach((f) => b.send(f));
        assert.deepEqual(await a.waitFrames(N), fromB);
        a.reclaimTx();
        b.reclaimTx();
      });

      await t.step("GET /ports/vm1/capture: the frames that passed vm1, both ways", async () => {
        checkCapture(await captured, [...fromA, ...fromB]);
        assert.deepEqual(ended, ["vm1"], "the capture ended after count frames");
      });

      await t.step("GET /ports, /ports/:name: counters moved by the frames sent", async () => {
        const now = await portsNow();
        const moved = (port: string, counter: string) =>
          now[port].counters[counter] - before[port].counters[counter];
        const bytes = (fs: Uint8Array[]) => fs.reduce((n, f) => n + f.length, 0);
        assert.deepEqual(
          [moved("vm1", "rx_packets"), moved("vm1", "tx_packets"), moved("vm1", "rx_bytes")],
          [N, N, bytes(fromA)],
        );
        assert.deepEqual(
          [moved("vm2", "rx_packets"), moved("vm2", "tx_packets"), moved("vm2", "tx_bytes")],
          [N, N, bytes(fromA)],
        );
        assert.deepEqual(await get("/ports/vm2"), now.vm2);
        const missing = await fetch(`${base}/ports/vm9`);
        assert.equal(missing.status, 404);
        assert.deepEqual(await missing.json(), { error: 'no port named "vm9"' });
      });

      await t.step("GET /fdb: each peer's MAC on its port", async () => {
        assert.deepEqual(await fdbNow(), [[MAC_A, "vm1", 0, false], [MAC_B, "vm2", 0, false]]);
        assert.deepEqual(await fdbNow("?port=vm2"), [[MAC_B, "vm2", 0, false]]);
        assert.deepEqual(await fdbNow(`?mac=${MAC_A.toUpperCase().replaceAll(":", "-")}`), [[
          MAC_A,
          "vm1",
          0,
          false,
        ]]);
        assert.equal((await fetch(`${base}/fdb?vlan=5000`)).status, 400);
      });

      await t.step("GET /health, /info, /stats", async () => {
        assert.deepEqual(await get("/health"), { status: "ok" });
        const info = await get<{ name: string; threads: number }>("/info");
        assert.deepEqual([info.name, info.threads], ["live", 2]);
        const stats = await get<Awaited<ReturnType<SwitchView["stats"]>>>("/stats");
        const ports = await portsNow();
        assert.deepEqual(stats.ports.map((p) => p.name), ["vm1", "vm2"]);
        for (const p of stats.ports) {
          assert.equal(p.counters.rx_packets, ports[p.name].counters.rx_packets);
          assert.ok(p.rxPerSecond >= 0 && p.txPerSecond >= 0);
        }
        assert.equal(stats.workers.length, 2);
        assert.ok(stats.workers.reduce((n, w) => n + w.frames, 0) >= 2 * N);
        assert.equal(stats.fdb.entries, 2);
        assert.ok(stats.fdb.learned >= 2);
      });

      await t.step("GET /metrics: strict Prometheus text with the /ports counters", async () => {
        const m = await checkMetrics(base, await portsNow(), 1);
        assert.equal(sampleValue(m, "vswitch_fdb_entries"), 2);
        assert.equal(sampleValue(m, "vswitch_info", { name: "live", version: "0.1.0" }), 1);
      });

      await t.step({
        name: "GET /: the page, run by headless Chromium, shows the ports and the MACs",
        ignore: chromiumMissing !== null,
        async fn() {
          const dom = await chromium(ts.dir, `${base}/`, "--dump-dom");
          for (const text of ['data-port="vm1"', 'data-port="vm2"', MAC_A, MAC_B, "connected"]) {
            assert.ok(dom.includes(text), `the page shows ${text}:\n${dom}`);
          }
          assert.ok(dom.includes('<h1 id="name">live</h1>'), "the switch's name");
          // The flow table: the pair's unicast flows.
          assert.match(
            dom,
            /<td class="mono">(output|flood):vm[12]<\/td>/,
            "the flows of the last minute",
          );
          // VSWITCH_SCREENSHOT=page.png keeps the picture, to look at.
          const file = Deno.env.get("VSWITCH_SCREENSHOT") ?? `${ts.dir}/page.png`;
          await chromium(ts.dir, `${base}/`, `--screenshot=${file}`, "--window-size=1280,900");
          const png = await Deno.readFile(file);
          assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47], "a PNG");
        },
      });

      await t.step("the CLI prints the MAC table and the ports", async () => {
        const fdb = await runCli(["fdb", "--url", base]);
        assert.equal(fdb.code, 0, fdb.stderr);
        const rows = fdb.stdout.trim().split("\n").map((l) => l.trim().split(/\s+/));
        assert.deepEqual(rows, [
          ["PORT", "VLAN", "MAC", "AGE"],
          ["vm1", "0", MAC_A, rows[1][3]],
          ["vm2", "0", MAC_B, rows[2][3]],
        ]);
        const one = await runCli(["fdb", "--url", base, "--port", "vm2"]);
        assert.ok(one.stdout.includes(MAC_B) && !one.stdout.includes(MAC_A), one.stdout);
        const ports = await runCli(["ports", "--url", base]);
        assert.equal(ports.code, 0, ports.stderr);
        assert.match(ports.stdout, /^live: vswitch /);
        assert.match(ports.stdout, new RegExp(`\\nvm1 +vhost-user +connected +1500 +1 +${N} `));
        const down = await runCli(["fdb", "--url", "http://127.0.0.1:9"]);
        assert.equal(down.code, 1);
        assert.match(
          down.stderr,
          /no switch answering at http:\/\/127\.0\.0\.1:9; is it running\?/,
        );
      });

      await t.step("a capture ends when its client goes away", async () => {
        const client = new AbortController();
        const res = await fetch(`${base}/ports/vm2/capture?seconds=3600`, {
          signal: client.signal,
        });
        const r = res.body!.getReader();
        assert.equal((await r.read()).value?.length, 24);
        client.abort();
        await waitFor("the switch to end the capture", () => ended.includes("vm2"), 5000);
      });

      await t.step("DELETE /ports/vm1/fdb, then DELETE /fdb", async () => {
        const one = await get("/ports/vm1/fdb", { method: "DELETE" });
        assert.deepEqual(one, { flushed: 1 });
        assert.deepEqual(await fdbNow(), [[MAC_B, "vm2", 0, false]]);
        assert.deepEqual(await get("/fdb", { method: "DELETE" }), { flushed: 1 });
        assert.deepEqual(await fdbNow(), []);
      });
    } finally {
      a.close();
      b.close();
    }
  },
});

const testpmdMissing = linux ? testpmdAvailable({ pcap: true }) : "needs Linux";
if (testpmdMissing) console.warn(`SKIPPING the DPDK testpmd HTTP test: ${testpmdMissing}`);

Deno.test({
  name: "HTTP endpoint with DPDK testpmd front-ends: capture, counters and metrics",
  ignore: testpmdMissing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using live = await liveSwitch("dpdk", ["p0", "p1"]);
    const { ts, base, portsNow, fdbNow, get } = live;
    const [mac0, mac1] = ["02:00:00:00:00:01", "02:00:00:00:00:02"];
    const send: [Uint8Array[], Uint8Array[]] = [
      Array.from({ length: 8 }, (_, i) => ethFrame({ src: mac0, dst: mac1, seq: i, length: 64 })),
      Array.from({ length: 6 }, (_, i) => ethFrame({ src: mac1, dst: mac0, seq: 50 + i })),
    ];
    let captured: Promise<Captured> | undefined;
    const result = await exchangeFrames({
      dir: ts.dir,
      sockets: [`${ts.dir}/p0.sock`, `${ts.dir}/p1.sock`],
      send,
      macs: [mac0, mac1],
      // Both links are up and nothing was forwarded yet: tap p0 for every frame that will pass.
      linked: async () => {
        captured = (await live.capture("p0", 14)).done;
      },
      expect: [send[1].length, send[0].length],
    });
    assert.deepEqual(result.received, [send[1], send[0]]);
    checkCapture(await captured!, [...send[0], ...send[1]]);

    const ports = await portsNow();
    assert.deepEqual(
      [ports.p0.counters.rx_packets, ports.p0.counters.tx_packets, ports.p1.counters.rx_packets],
      [8, 6, 6],
    );
    assert.equal(ports.p0.counters.rx_bytes, 8 * 64);
    // testpmd has quit: the links are down and what was learned on them is gone.
    assert.deepEqual(await fdbNow(), []);
    const m = await checkMetrics(base, ports, 0);
    assert.equal(sampleValue(m, "vswitch_fdb_entries"), 0);
    assert.ok(sampleValue(m, "vswitch_fdb_learned_total") >= 2);
    const stats = await get<{ fdb: { learned: number } }>("/stats");
    assert.equal(stats.fdb.learned, sampleValue(m, "vswitch_fdb_learned_total"));
  },
});
