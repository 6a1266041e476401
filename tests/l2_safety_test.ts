// Port security and mirroring in a real switch, driven by real vhost-user front-ends
// (tests/helpers/frontend.ts) over unix sockets and memfd guest memory; no root needed.
import assert from "node:assert/strict";
import { VhostFrontend } from "../peers/vhost_frontend.ts";
import { BROADCAST, ethFrame, macBytes } from "./helpers/frontend_harness.ts";
import { startSwitch, type TestSwitch } from "./helpers/switch.ts";
import { createApp } from "../http/app.ts";
import { parseExposition, promtoolCheck, sampleValue } from "./helpers/prometheus.ts";
import { commandMissing, peerPresent } from "./helpers/peers.ts";

const MAC_A = "52:54:00:aa:00:01";
const MAC_B = "52:54:00:bb:00:02";
const MAC_C = "52:54:00:cc:00:03";
const settle = () => new Promise((r) => setTimeout(r, 300));

const vhost = (name: string, extra: Record<string, unknown> = {}) => ({
  name,
  type: "vhost-user",
  socket: `$DIR/${name}.sock`,
  ...extra,
});

async function open(sw: TestSwitch, names: string[]): Promise<VhostFrontend[]> {
  const fes = [];
  for (const name of names) {
    const fe = await VhostFrontend.open(`${sw.dir}/${name}.sock`);
    fe.postRxBuffers(64);
    fes.push(fe);
  }
  return fes;
}

/** An ARP reply from `src` claiming `ip` for `sha`. */
function arpReply(src: string, sha: string, ip: number[], to: string, toIp: number[]) {
  const f = new Uint8Array(60);
  f.set(macBytes(to), 0);
  f.set(macBytes(src), 6);
  f.set([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2], 12);
  f.set(macBytes(sha), 22);
  f.set(ip, 28);
  f.set(macBytes(to), 32);
  f.set(toIp, 38);
  return f;
}

const counters = (sw: TestSwitch, port: string) => sw.sw.port(port)!.counters;

Deno.test("port security: spoofed MAC and ARP are dropped and counted, the victim's FDB entry stays", async () => {
  await using sw = await startSwitch({
    name: "sec",
    ports: [
      vhost("a", { security: { allowedMacs: [MAC_A], ipv4: ["10.0.0.1"] } }),
      vhost("b"),
      vhost("c", { loopGuard: true }),
    ],
  });
  const [a, b, c] = await open(sw, ["a", "b", "c"]);
  try {
    // The victim B is known on its port.
    b.send(ethFrame(BROADCAST, MAC_B, 64, 1));
    await c.waitFrames(1);
    a.receive();
    assert.deepEqual(sw.sw.fdb().map((e) => [e.mac, e.port]), [[MAC_B, "b"]]);

    // A sends as B: nobody gets it, B stays on b, A's drop_spoofed counts it.
    a.send(ethFrame(BROADCAST, MAC_B, 64, 2));
    a.send(ethFrame(MAC_C, MAC_B, 64, 3));
    // A claims B's IP in an ARP reply (from its own MAC): refused too.
    a.send(arpReply(MAC_A, MAC_A, [10, 0, 0, 2], MAC_C, [10, 0, 0, 3]));
    // An ARP reply whose sender hardware address is B's, from A's MAC.
    a.send(arpReply(MAC_A, MAC_B, [10, 0, 0, 1], MAC_C, [10, 0, 0, 3]));
    // And a legitimate frame, which passes.
    const own = arpReply(MAC_A, MAC_A, [10, 0, 0, 1], BROADCAST, [10, 0, 0, 3]);
    a.send(own);
    assert.deepEqual(await c.waitFrames(1), [own]);
    await settle();
    assert.deepEqual(b.receive(), [own]);
    assert.deepEqual(c.receive(), []);
    assert.deepEqual(
      sw.sw.fdb().map((e) => [e.mac, e.port]).sort(),
      [[MAC_A, "a"], [MAC_B, "b"]],
    );
    const ca = counters(sw, "a");
    assert.equal(ca.drop_spoofed, 2);
    assert.equal(ca.drop_spoofed_ip, 2);
    assert.equal(ca.rx_packets, 5);
    assert.deepEqual(sw.sw.port("a")!.safety?.security, {
      allowedMacs: [MAC_A],
      learnOnce: false,
      ipv4: ["10.0.0.1"],
      ipv6: null,
      pinnedMac: null,
    });
    assert.equal(sw.sw.port("b")!.safety, undefined, "nothing configured on b");
    // /metrics: drop reasons of their own.
    const text = await (await createApp(sw.sw).request("/metrics")).text();
    const m = parseExposition(text);
    assert.equal(sampleValue(m, "vswitch_port_drops_total", { port: "a", reason: "spoofed" }), 2);
    assert.equal(
      sampleValue(m, "vswitch_port_drops_total", { port: "a", reason: "spoofed_ip" }),
      2,
    );
    assert.equal(sampleValue(m, "vswitch_port_loop_blocked", { port: "c" }), 0);
    assert.equal(sampleValue(m, "vswitch_port_mac_moved_total", { port: "b" }), 0);
    if (peerPresent(commandMissing("promtool", "prometheus"), "promtool check metrics")) {
      const check = await promtoolCheck(text);
      assert.ok(check.ok, check.output);
    }
  } finally {
    for (const fe of [a, b, c]) fe.close();
  }
});

Deno.test("port security: learnOnce pins the first MAC a port sends from", async () => {
  await using sw = await startSwitch({
    name: "pin",
    ports: [vhost("a", { security: { learnOnce: true } }), vhost("b")],
  });
  const [a, b] = await open(sw, ["a", "b"]);
  try {
    const first = ethFrame(BROADCAST, MAC_A, 64, 1);
    a.send(first);
    assert.deepEqual(await b.waitFrames(1), [first]);
    a.send(ethFrame(BROADCAST, MAC_C, 64, 2));
    const again = ethFrame(BROADCAST, MAC_A, 64, 3);
    a.send(again);
    assert.deepEqual(await b.waitFrames(1), [again]);
    assert.equal(counters(sw, "a").drop_spoofed, 1);
    assert.equal(sw.sw.port("a")!.safety?.security?.pinnedMac, MAC_A);
    assert.deepEqual(sw.sw.fdb().map((e) => e.mac), [MAC_A]);
  } finally {
    a.close();
    b.close();
  }
});

Deno.test("mirror: a vhost-user output gets exactly the mirrored port's frames, both ways, and nothing loops back", async () => {
  await using sw = await startSwitch({
    name: "span",
    ports: [vhost("a"), vhost("b"), vhost("c"), vhost("mon")],
    mirrors: [{ name: "span-a", ports: ["a"], direction: "both", output: "mon" }],
  });
  const [a, b, c, mon] = await open(sw, ["a", "b", "c", "mon"]);
  try {
    const sent: Uint8Array[] = [];
    const fromA = ethFrame(BROADCAST, MAC_A, 100, 1);
    a.send(fromA);
    await b.waitFrames(1);
    await c.waitFrames(1);
    const toA = ethFrame(MAC_A, MAC_B, 200, 2);
    b.send(toA);
    await a.waitFrames(1);
    const bToC = ethFrame(MAC_C, MAC_B, 300, 3); // unknown C: flooded to a (mirrored) and c
    b.send(bToC);
    await a.waitFrames(1);
    await c.waitFrames(1);
    const cToB = ethFrame(MAC_B, MAC_C, 300, 4); // not through a: not mirrored
    c.send(cToB);
    await b.waitFrames(1);
    sent.push(fromA, toA, bToC);
    const got = await mon.waitFrames(3);
    await settle();
    assert.deepEqual([...got, ...mon.receive()], sent);
    const ca = counters(sw, "a");
    assert.equal(ca.mirrored, ca.rx_packets + ca.tx_packets);
    assert.equal(counters(sw, "mon").tx_packets, 3);
    // What the monitor sends never enters the bridge.
    mon.send(ethFrame(BROADCAST, "52:54:00:dd:00:04", 64, 5));
    await settle();
    for (const fe of [a, b, c]) assert.deepEqual(fe.receive(), []);
    assert.equal(counters(sw, "mon").drop_vlan, 1);
    assert.ok(!sw.sw.fdb().some((e) => e.port === "mon"));
    assert.deepEqual(sw.sw.port("mon")!.safety, { mirrorOutputOf: ["span-a"] });
    assert.deepEqual(sw.sw.port("a")!.safety, { mirroredBy: ["span-a"] });
  } finally {
    for (const fe of [a, b, c, mon]) fe.close();
  }
});
