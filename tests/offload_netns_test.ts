// TCP and UDP between two network namespaces, each behind a veth pair whose root end is an
// af-packet port of a running switch, with the kernel's defaults (checksum offload, TSO, GSO):
// checksum-partial and GSO frames cross the switch with their virtio_net_hdr, or are finished
// in software for a port that cannot take them. Every transfer is checked by sha256 at both
// ends, and the receivers' checksum error counters must not move.
import assert from "node:assert/strict";
import { createVethNetns, netnsSkipReason, run, type VethNetns } from "../peers/netns.ts";
import { startSwitch, type TestSwitch } from "./helpers/switch.ts";

const skip = netnsSkipReason();
if (skip) console.warn(`SKIPPING offload namespace tests: ${skip}`);
const nsTest = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, ignore: skip !== null, fn });

interface Pair {
  a: VethNetns;
  b: VethNetns;
  sw: TestSwitch;
  /** The second switch of a VLAN trunk pair (b's), or null. */
  sw2: TestSwitch | null;
  /** Addresses of a and b, v4 and v6. */
  addr: { a4: string; b4: string; a6: string; b6: string };
  [Symbol.asyncDispose](): Promise<void>;
}

interface PairOptions {
  /** Port b's af-packet datapath ("syscall": its transmit has no PACKET_VNET_HDR). */
  ioB?: "ring" | "syscall";
  /**
   * Two switches joined by a veth pair that is a trunk port of each: a and b are access ports of
   * VLAN `vlan`, so every frame gets a tag pushed on one switch and popped on the other.
   */
  vlan?: number;
}

let serial = 0;

/** Two namespaces with v4 and v6 addresses, behind ports a and b of a switch (or two). */
async function pair(opts: PairOptions = {}): Promise<Pair> {
  const net = 20 + (serial++ % 200);
  const addr = {
    a4: `10.${net}.0.1`,
    b4: `10.${net}.0.2`,
    a6: `fd00:${net}::1`,
    b6: `fd00:${net}::2`,
  };
  const a = await createVethNetns({ nsAddr: `${addr.a4}/24` });
  const b = await createVethNetns({ nsAddr: `${addr.b4}/24` });
  const cleanup: (() => Promise<void>)[] = [() => a.close(), () => b.close()];
  try {
    for (const [ns, ip] of [[a, addr.a6], [b, addr.b6]] as const) {
      await ns.exec(["sh", "-c", `echo 0 > /proc/sys/net/ipv6/conf/${ns.nsIf}/disable_ipv6`]);
      await ns.exec(["ip", "addr", "add", `${ip}/64`, "dev", ns.nsIf, "nodad"]);
    }
    const port = (name: string, ifname: string, extra: Record<string, unknown> = {}) => ({
      name,
      type: "af-packet",
      interface: ifname,
      ...extra,
    });
    let sw: TestSwitch;
    if (opts.vlan) {
      const trunk = [`${a.hostIf}t`, `${b.hostIf}t`];
      await run("ip", ["link", "add", trunk[0], "type", "veth", "peer", "name", trunk[1]]);
      cleanup.push(() => run("ip", ["link", "del", trunk[0]]).then(() => {}));
      for (const t of trunk) await run("ip", ["link", "set", t, "up"]);
      const access = { vlan: { mode: "access", tag: opts.vlan } };
      const tagged = { vlan: { mode: "trunk", allowed: [opts.vlan] } };
      const sw2 = await startSwitch({
        name: "offload2",
        threads: 1,
        ports: [port("t", trunk[1], tagged), port("b", b.hostIf, access)],
      });
      cleanup.unshift(() => sw2.stop());
      sw = await startSwitch({
        name: "offload",
        threads: 1,
        ports: [port("a", a.hostIf, access), port("t", trunk[0], tagged)],
      });
      cleanup.unshift(() => sw.stop());
      const dispose = async () => {
        for (const c of cleanup) await c().catch(() => {});
      };
      return { a, b, sw, sw2, addr, [Symbol.asyncDispose]: dispose };
    }
    sw = await startSwitch({
      name: "offload",
      threads: 1,
      ports: [port("a", a.hostIf), port("b", b.hostIf, { io: opts.ioB ?? "ring" })],
    });
    cleanup.unshift(() => sw.stop());
    const dispose = async () => {
      for (const c of cleanup) await c().catch(() => {});
    };
    return { a, b, sw, sw2: null, addr, [Symbol.asyncDispose]: dispose };
  } catch (err) {
    for (const c of cleanup) await c().catch(() => {});
    throw err;
  }
}

/** The namespace's checksum error counters (TCP over v4 and v6, UDP, UDP6). */
async function csumErrors(ns: VethNetns): Promise<number> {
  const snmp = await ns.exec(["cat", "/proc/net/snmp", "/proc/net/snmp6"]);
  let sum = 0;
  const lines = snmp.split("\n");
  for (let i = 0; i + 1 < lines.length; i++) {
    const [proto, ...names] = lines[i].split(/\s+/);
    const next = lines[i + 1].split(/\s+/);
    if ((proto === "Tcp:" || proto === "Udp:") && next[0] === proto) {
      const k = names.indexOf("InCsumErrors");
      if (k >= 0) sum += Number(next[k + 1]);
    }
  }
  const v6 = /^Udp6InCsumErrors\s+(\d+)/m.exec(snmp);
  return sum + (v6 ? Number(v6[1]) : 0);
}

const SERVER = `
const [proto, host, port] = Deno.args;
const { createHash } = await import("node:crypto");
const h = createHash("sha256");
let n = 0;
if (proto === "tcp") {
  const l = Deno.listen({ hostname: host, port: Number(port) });
  console.log("READY");
  const c = await l.accept();
  for await (const chunk of c.readable) { h.update(chunk); n += chunk.length; }
} else {
  // Each datagram carries the sha256 of the rest of it: count the intact and the damaged ones.
  const dgram = await import("node:dgram");
  const s = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
  await new Promise((r) => s.bind(Number(port), host, r));
  console.log("READY");
  let good = 0, bad = 0;
  await new Promise((done) => s.on("message", (d) => {
    if (d.length === 0) { s.close(); done(); return; }
    const sum = createHash("sha256").update(d.subarray(32)).digest();
    if (Buffer.compare(sum, d.subarray(0, 32)) === 0) good++; else bad++;
  }));
  console.log("UDP", good, bad);
  Deno.exit(0);
}
console.log(n, h.digest("hex"));
`;

const CLIENT = `
const [proto, host, port, size] = Deno.args;
const { createHash } = await import("node:crypto");
const h = createHash("sha256");
const data = new Uint8Array(Number(size));
for (let o = 0; o < data.length; o += 65536) crypto.getRandomValues(data.subarray(o, o + 65536));
h.update(data);
if (proto === "tcp") {
  const c = await Deno.connect({ hostname: host, port: Number(port) });
  for (let o = 0; o < data.length;) o += await c.write(data.subarray(o));
  c.close();
} else {
  const dgram = await import("node:dgram");
  const s = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
  const send = (d) => new Promise((r) => s.send(d, Number(port), host, r));
  // Datagrams are not acknowledged: pace them so no socket buffer on the way overflows.
  let count = 0;
  for (let o = 0; o + 1400 <= data.length; o += 1400, count++) {
    const d = new Uint8Array(1400);
    d.set(data.subarray(o + 32, o + 1400), 32);
    d.set(createHash("sha256").update(d.subarray(32)).digest(), 0);
    await send(d);
    if (count % 16 === 15) await new Promise((r) => setTimeout(r, 2));
  }
  for (let k = 0; k < 20; k++) {
    await new Promise((r) => setTimeout(r, 20));
    await send(new Uint8Array(0));
  }
  s.close();
  console.log("UDP", count);
  Deno.exit(0);
}
console.log(data.length, h.digest("hex"));
`;

/**
 * Sends `size` random bytes from namespace `from` to `to` (TCP or UDP), returns what each end
 * counted and hashed.
 */
async function transfer(
  from: VethNetns,
  to: VethNetns,
  toAddr: string,
  proto: "tcp" | "udp",
  size: number,
): Promise<{ sent: string; received: string }> {
  const port = String(20000 + Math.floor(Math.random() * 20000));
  const bind = toAddr.includes(":") ? "::" : "0.0.0.0";
  const server = to.spawn([Deno.execPath(), "eval", SERVER, proto, bind, port]);
  const out = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("READY")) {
    const { value, done } = await out.read();
    if (done) {
      throw new Error(`server did not start: ${text} ${await new Response(server.stderr).text()}`);
    }
    text += value;
  }
  const timer = setTimeout(() => server.kill("SIGKILL"), 60_000);
  const errors = new Response(server.stderr).text();
  try {
    const sent = await from.exec([Deno.execPath(), "eval", CLIENT, proto, toAddr, port, `${size}`]);
    for (;;) {
      const { value, done } = await out.read();
      if (done) break;
      text += value;
    }
    const status = await server.status;
    if (!status.success) throw new Error(`server failed: ${await errors}`);
    return { sent: sent.trim(), received: text.replace("READY", "").trim() };
  } finally {
    clearTimeout(timer);
    try {
      server.kill("SIGKILL");
    } catch {
      // already gone
    }
    await server.status;
  }
}

function counters(p: Pair, port: "a" | "b"): Record<string, number> {
  return p.sw.sw.ports().find((x) => x.name === port)!.counters;
}

// Enough for TCP to open its window and send GSO frames, small enough for a fast test.
const SIZE = 2 << 20;

nsTest("TCP both ways over IPv4 and IPv6 with kernel offloads: GSO frames pass whole", async () => {
  await using p = await pair();
  const before = await csumErrors(p.a) + await csumErrors(p.b);
  for (
    const [from, to, addr] of [
      [p.a, p.b, p.addr.b4],
      [p.b, p.a, p.addr.a4],
      [p.a, p.b, p.addr.b6],
      [p.b, p.a, p.addr.a6],
    ] as const
  ) {
    const r = await transfer(from, to, addr, "tcp", SIZE);
    assert.equal(r.received, r.sent, `TCP to ${addr}: same bytes at both ends`);
  }
  const a = counters(p, "a");
  const b = counters(p, "b");
  assert.ok(
    a.rx_gso > 0 && b.rx_gso > 0,
    `GSO frames received both ways (${a.rx_gso}, ${b.rx_gso})`,
  );
  assert.ok(a.tx_gso > 0 && b.tx_gso > 0, "and handed on as GSO frames");
  assert.equal(a.gso_segmented + b.gso_segmented, 0, "nothing segmented in software");
  assert.equal(a.drop_too_big + b.drop_too_big + a.drop_bad_offload + b.drop_bad_offload, 0);
  assert.equal(await csumErrors(p.a) + await csumErrors(p.b) - before, 0, "no checksum errors");
});

nsTest(
  "to a port without PACKET_VNET_HDR the switch fills TCP and UDP checksums, segments GSO frames",
  async () => {
    await using p = await pair({ ioB: "syscall" });
    const before = await csumErrors(p.b);
    for (const addr of [p.addr.b4, p.addr.b6]) {
      const r = await transfer(p.a, p.b, addr, "tcp", SIZE);
      assert.equal(r.received, r.sent, `TCP to ${addr}: same bytes at both ends`);
    }
    for (const addr of [p.addr.b4, p.addr.b6]) {
      const r = await transfer(p.a, p.b, addr, "udp", 1 << 20);
      const [, sent] = r.sent.split(" ").map(Number);
      const [, good, bad] = r.received.split(" ").map(Number);
      assert.equal(bad, 0, `UDP to ${addr}: no damaged datagram`);
      // UDP may lose datagrams to a receiver that falls behind on a busy host; none may be damaged
      // (and b's kernel counted no checksum error: checked below).
      assert.ok(good >= sent / 10, `UDP to ${addr}: ${good} of ${sent} datagrams arrived`);
    }
    const b = counters(p, "b");
    assert.ok(b.gso_segmented > 0, `GSO frames segmented for b (${b.gso_segmented})`);
    assert.ok(b.csum_filled > 0, `checksums filled for b (${b.csum_filled})`);
    assert.ok(b.tx_packets > counters(p, "a").rx_packets, "into more frames than came in");
    assert.equal(await csumErrors(p.b) - before, 0, "b's kernel verified every checksum: none bad");
  },
);

nsTest("across a VLAN trunk between two switches (tag pushed, then popped) TCP works", async () => {
  await using p = await pair({ vlan: 10 });
  const before = await csumErrors(p.a) + await csumErrors(p.b);
  for (
    const [from, to, addr] of [
      [p.a, p.b, p.addr.b4],
      [p.b, p.a, p.addr.a4],
      [p.a, p.b, p.addr.b6],
    ] as const
  ) {
    const r = await transfer(from, to, addr, "tcp", SIZE);
    assert.equal(r.received, r.sent, `TCP to ${addr} over VLAN 10: same bytes at both ends`);
  }
  const t1 = p.sw.sw.ports().find((x) => x.name === "t")!.counters;
  const t2 = p.sw2!.sw.ports().find((x) => x.name === "t")!.counters;
  assert.ok(t1.tx_gso > 0 && t2.rx_gso > 0, "GSO frames crossed the trunk tagged");
  assert.equal(t1.drop_bad_offload + t2.drop_bad_offload + t2.drop_too_big, 0);
  assert.equal(await csumErrors(p.a) + await csumErrors(p.b) - before, 0, "no checksum errors");
});
