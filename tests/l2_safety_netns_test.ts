// L2 safety with real peers: namespaces behind af-packet ports (ping, iperf3, tcpdump), a Linux
// bridge closing a loop between two uplinks, and a DPDK testpmd front-end flooding broadcasts.
// Needs root (namespaces); iperf3, tcpdump and dpdk-testpmd for the tests that use them.
import assert from "node:assert/strict";
import { createVethNetns, netnsSkipReason, run, type VethNetns } from "../peers/netns.ts";
import { startSwitch, type TestSwitch, waitFor } from "./helpers/switch.ts";
import { commandMissing } from "./helpers/peers.ts";
import { parsePing } from "./helpers/ping.ts";
import { Testpmd, testpmdAvailable, virtioUserVdev } from "../peers/testpmd.ts";

const skip = netnsSkipReason();
const iperfMissing = commandMissing("iperf3", "iperf3");
const tcpdumpMissing = commandMissing("tcpdump", "tcpdump");
const pmdMissing = testpmdAvailable();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function netTest(name: string, missing: (string | null)[], fn: () => Promise<void>) {
  const why = [skip, ...missing].find((m) => m !== null) ?? null;
  Deno.test({ name, ignore: why !== null, sanitizeOps: false, sanitizeResources: false, fn });
}

const addr = (i: number) => `10.21.0.${i + 1}`;

interface Lab {
  nets: VethNetns[];
  sw: TestSwitch;
  counters(port: string): Record<string, number>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * `n` namespaces (10.21.0.1, .2, ...; the last `silent` without an address), each behind an
 * af-packet port p1..pn, plus `extraPorts`, with `portExtra[i]` merged into port i's config.
 */
async function lab(
  n: number,
  o: {
    silent?: number;
    portExtra?: Record<string, unknown>[];
    extraPorts?: Record<string, unknown>[];
    mirrors?: unknown[];
    threads?: number;
  } = {},
): Promise<Lab> {
  const nets: VethNetns[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const silent = i >= n - (o.silent ?? 0);
      nets.push(await createVethNetns({ nsAddr: silent ? null : `${addr(i)}/24` }));
    }
    const sw = await startSwitch({
      name: "l2lab",
      threads: o.threads ?? 1,
      http: { listen: "127.0.0.1:0" },
      ports: [
        ...nets.map((ns, i) => ({
          name: `p${i + 1}`,
          type: "af-packet",
          interface: ns.hostIf,
          ...o.portExtra?.[i],
        })),
        ...(o.extraPorts ?? []),
      ],
      ...(o.mirrors ? { mirrors: o.mirrors } : {}),
    });
    const counters = (port: string) => sw.sw.port(port)!.counters;
    return {
      nets,
      sw,
      counters,
      async [Symbol.asyncDispose]() {
        await sw.stop();
        for (const ns of nets) await ns.close();
      },
    };
  } catch (err) {
    for (const ns of nets) await ns.close();
    throw err;
  }
}

async function ping(ns: VethNetns, to: string, count: number, interval = "0.1") {
  const out = await ns.spawn([
    "busybox",
    "ping",
    "-c",
    `${count}`,
    "-i",
    interval,
    "-W",
    "1",
    to,
  ]).output();
  return parsePing(new TextDecoder().decode(out.stdout));
}

async function rxPackets(ns: VethNetns): Promise<number> {
  return Number(await ns.exec(["cat", `/sys/class/net/${ns.nsIf}/statistics/rx_packets`]));
}

/**
 * iperf3 from `from` to `to` (at `toAddr`) for `seconds`: UDP datagrams of UDP_PAYLOAD bytes at
 * `udp` (e.g. "60M"), or TCP when `udp` is null. Returns the payload rates iperf3 reports.
 */
async function iperf(
  from: VethNetns,
  to: VethNetns,
  toAddr: string,
  udp: string | null,
  seconds: number,
) {
  const port = String(5200 + Math.floor(Math.random() * 700));
  const server = to.spawn(["iperf3", "-s", "-1", "-p", port], "null");
  try {
    await sleep(500);
    const mode = udp ? ["-u", "-b", udp, "-l", `${UDP_PAYLOAD}`] : [];
    const args = ["-c", toAddr, "-p", port, ...mode, "-t", `${seconds}`, "-J"];
    const out = JSON.parse(await from.exec(["iperf3", ...args]));
    if (out.error) throw new Error(`iperf3: ${out.error}`);
    const end = out.end;
    return {
      received: end.sum_received.bits_per_second as number,
      sent: end.sum_sent.bits_per_second as number,
    };
  } finally {
    try {
      server.kill("SIGTERM");
    } catch { /* already gone */ }
    await server.status;
  }
}

const UDP_PAYLOAD = 1400;
/** Ethernet + IPv4 + UDP headers around each datagram: what the policer meters besides payload. */
const L2_PER_DATAGRAM = UDP_PAYLOAD + 8 + 20 + 14;
const toL2 = (payloadBps: number) => payloadBps * L2_PER_DATAGRAM / UDP_PAYLOAD;

/** Bytes the namespace end of `ns` received, as Ethernet frames (the kernel's veth counter). */
async function rxBytes(ns: VethNetns): Promise<number> {
  return Number(await ns.exec(["cat", `/sys/class/net/${ns.nsIf}/statistics/rx_bytes`]));
}

/**
 * iperf3 through a policed port, measured where it arrives: the receiver's veth counts the
 * Ethernet bytes the switch delivered (iperf3's own figure also leaves out what its receiving
 * process was too slow to read on this shared machine).
 */
async function policed(
  from: VethNetns,
  to: VethNetns,
  toAddr: string,
  udp: string | null,
  seconds: number,
) {
  const bytes0 = await rxBytes(to);
  const r = await iperf(from, to, toAddr, udp, seconds);
  const delivered = (await rxBytes(to) - bytes0) * 8 / seconds;
  return {
    offered: udp ? toL2(r.sent) : r.sent,
    delivered,
    iperf: udp ? toL2(r.received) : r.received,
  };
}

netTest(
  "policing: iperf3 UDP and TCP through af-packet ports stay within 10% of the policed rates",
  [iperfMissing],
  async () => {
    const INGRESS = 20_000_000;
    const EGRESS = 30_000_000;
    const TCP = 50_000_000;
    await using l = await lab(4, {
      portExtra: [
        { policing: { ingress: { bitsPerSecond: INGRESS } } },
        {},
        { policing: { egress: { bitsPerSecond: EGRESS } } },
        // TCP backs off at every drop: it fills a policed rate only with a burst that rides
        // out its sawtooth (0.4 s of the rate here; the default tenth of a second gave ~70%).
        { policing: { ingress: { bitsPerSecond: TCP, burstBytes: TCP / 8 * 0.4 } } },
      ],
    });
    const [n1, n2, n3, n4] = l.nets;
    // Teach the switch where everyone is (and fill the ARP caches) before measuring.
    for (const [a, b] of [[n1, 1], [n2, 2], [n3, 0], [n4, 1]] as const) await ping(a, addr(b), 2);
    for (
      const [what, rate, from, to, toAddr, udp, seconds, counter] of [
        ["UDP ingress", INGRESS, n1, n2, addr(1), "60M", 4, () => l.counters("p1").drop_policed],
        [
          "UDP egress",
          EGRESS,
          n2,
          n3,
          addr(2),
          "90M",
          4,
          () => l.counters("p3").drop_egress_policed,
        ],
        // The burst adds 1 MB over 8 s: +2.5%.
        ["TCP ingress", TCP, n4, n2, addr(1), null, 8, () => l.counters("p4").drop_policed],
      ] as const
    ) {
      const r = await policed(from, to, toAddr, udp, seconds);
      console.log(
        `  ${what} policer ${rate / 1e6} Mbit/s: offered ${(r.offered / 1e6).toFixed(1)}, ` +
          `delivered ${(r.delivered / 1e6).toFixed(2)} Mbit/s of Ethernet frames ` +
          `(${((r.delivered / rate - 1) * 100).toFixed(1)}%), iperf3 received ${
            (r.iperf / 1e6).toFixed(2)
          }`,
      );
      if (udp) assert.ok(r.offered > rate * 1.5, `iperf3 offered only ${r.offered}`);
      assert.ok(
        Math.abs(r.delivered - rate) <= rate * 0.1,
        `${what}: delivered ${r.delivered} for ${rate}`,
      );
      assert.ok(counter() > 0, `${what}: drops counted`);
    }
  },
);

netTest("mirror: tcpdump on an af-packet mirror port captures exactly the mirrored port's frames", [
  tcpdumpMissing,
], async () => {
  await using l = await lab(3, {
    silent: 1,
    mirrors: [{ name: "span", ports: ["p1"], direction: "both", output: "p3" }],
  });
  const [n1, n2, n3] = l.nets;
  // The monitor has no address and IPv6 off: everything on its wire is a mirrored copy (its
  // port received nothing, checked below).
  const cap = await n3.capture(100_000);
  // libpcap drains its socket once the filter is in place, a moment after "listening on".
  await sleep(300);
  const pinged = await ping(n1, addr(1), 20, "0.05");
  await ping(n2, addr(0), 5, "0.05");
  await sleep(500);
  const frames = await cap.done(1000);
  const c = l.counters("p1");
  console.log(
    `  p1 rx ${c.rx_packets} tx ${c.tx_packets}, mirrored ${c.mirrored}; tcpdump captured ${frames.length}`,
  );
  assert.equal(await rxPackets(n3), frames.length, "the monitor's kernel saw what tcpdump saw");
  assert.equal(pinged.received, 20);
  assert.equal(frames.length, c.rx_packets + c.tx_packets);
  assert.equal(c.mirrored, frames.length);
  assert.equal(l.counters("p3").tx_packets, frames.length);
  assert.equal(l.counters("p2").mirrored, 0);
  assert.equal(l.counters("p3").rx_packets, 0, "the monitor sent nothing");
});

netTest(
  "loop guard: a Linux bridge joining two uplinks' veths is cut within a second; others keep forwarding",
  [],
  async () => {
    const id = `${(Deno.pid % 1296).toString(36)}${Math.floor(Math.random() * 1296).toString(36)}`;
    const netns = `h21lp-${id}`;
    const ends = [`lg${id}a`, `lg${id}b`];
    await run("ip", ["netns", "add", netns]);
    try {
      for (const end of ends) {
        await run("ip", [
          "link",
          "add",
          `${end}h`,
          "type",
          "veth",
          "peer",
          "name",
          `${end}n`,
          "netns",
          netns,
        ]);
        await Deno.writeTextFile(`/proc/sys/net/ipv6/conf/${end}h/disable_ipv6`, "1");
      }
      await run("ip", ["-n", netns, "link", "add", "br0", "type", "bridge", "stp_state", "0"]);
      await run("ip", [
        "netns",
        "exec",
        netns,
        "sh",
        "-c",
        "for i in /proc/sys/net/ipv6/conf/*/disable_ipv6; do echo 1 > $i; done",
      ]);
      for (const end of ends) {
        await run("ip", ["-n", netns, "link", "set", `${end}n`, "master", "br0", "up"]);
        await run("ip", ["link", "set", `${end}h`, "up"]);
      }
      await run("ip", ["-n", netns, "link", "set", "br0", "up"]);
      await using l = await lab(2, {
        extraPorts: ends.map((end, i) => ({
          name: `up${i + 1}`,
          type: "af-packet",
          interface: `${end}h`,
          loopGuard: true,
        })),
      });
      const [n1, n2] = l.nets;
      await waitFor(
        "both uplinks up",
        () => ["up1", "up2"].every((p) => l.sw.sw.port(p)!.state === "up"),
      );
      // up2 came up last: it is the one loop guard blocks.
      await sleep(200);
      const t0 = performance.now();
      // The first ARP broadcast floods to both uplinks and the Linux bridge sends each copy back.
      const pinging = ping(n1, addr(1), 30, "0.1");
      await waitFor(
        "loop guard to block a port",
        () => l.sw.logs.some((m) => m.includes("loop guard: blocked")),
        5000,
        () => l.sw.logs.join("\n"),
      );
      const ms = performance.now() - t0;
      const line = l.sw.logs.find((m) => m.includes("loop guard: blocked"))!;
      console.log(`  ${line}\n  blocked ${ms.toFixed(0)} ms after the first broadcast`);
      assert.match(line, /^\[up2\] loop guard: blocked: MACs moving between up2 and up1 at \d+\/s/);
      assert.ok(ms < 1000, `loop stopped only after ${ms} ms`);
      assert.deepEqual(l.sw.sw.port("up2")!.safety?.loopGuard?.blocked, true);
      assert.equal(l.sw.sw.port("up1")!.safety?.loopGuard?.blocked, false);
      // The loop is gone: the uplinks stop churning.
      const moved = () => l.counters("up1").mac_moved + l.counters("up2").mac_moved;
      const m0 = moved();
      await sleep(500);
      assert.ok(moved() - m0 < 10, `MACs still moving: ${moved() - m0} in 0.5 s`);
      const first = await pinging;
      const again = await ping(n2, addr(0), 10);
      console.log(
        `  ping during the loop: ${first.received}/${first.transmitted}; after: ${again.received}/${again.transmitted}`,
      );
      assert.ok(first.received >= first.transmitted - 3, `ping through the loop: ${first.output}`);
      assert.equal(again.received, 10);
      const dropped = l.counters("up2").drop_loop;
      assert.ok(dropped > 0, "up2's frames are dropped and counted");
    } finally {
      for (const end of ends) await run("ip", ["link", "del", `${end}h`]).catch(() => {});
      await run("ip", ["netns", "del", netns]).catch(() => {});
    }
  },
);

netTest("storm control: a testpmd broadcast flood is cut to the limit (within 10%); pings pass", [
  pmdMissing,
], async () => {
  const LIMIT = 2000;
  await using l = await lab(2, {
    threads: 2,
    extraPorts: [{
      name: "flood",
      type: "vhost-user",
      socket: "$DIR/flood.sock",
      // A quarter second of burst: the worker may be descheduled for tens of ms on this shared
      // machine (tokens beyond the burst are lost while it is away), and a bucket that starts the
      // 5 s measurement full adds at most 5%.
      stormControl: { broadcast: LIMIT, burstFrames: LIMIT / 4 },
    }],
  });
  const [n1, n2] = l.nets;
  await ping(n1, addr(1), 2);
  await using pmd = await Testpmd.launch({
    name: "h21flood",
    lcores: "0@1,1@0",
    totalNumMbufs: 4096,
    vdevs: [virtioUserVdev({ index: 0, path: `${l.sw.dir}/flood.sock`, mac: "02:00:00:21:00:01" })],
    args: ["--forward-mode=txonly", "--eth-peer=0,ff:ff:ff:ff:ff:ff", "--txpkts=64"],
  });
  await pmd.waitLinkUp([0]);
  await pmd.start();
  try {
    await sleep(2000); // past the initial burst
    // Each reading is stamped with its own time: reading the namespace's counter runs a
    // process, which takes tens of milliseconds on a loaded machine.
    const stamped = async <T>(read: () => T | Promise<T>) => {
      const before = performance.now();
      const value = await read();
      return { value, at: (before + performance.now()) / 2000 };
    };
    const c0 = await stamped(() => l.counters("flood"));
    const r0 = await stamped(() => rxPackets(n2));
    // 5 s: the readings' own timing (a process each, on a loaded machine) weighs little.
    const pinged = await ping(n1, addr(1), 50, "0.1");
    const c1 = await stamped(() => l.counters("flood"));
    const r1 = await stamped(() => rxPackets(n2));
    const switchSeconds = c1.at - c0.at;
    const offered = (c1.value.rx_packets - c0.value.rx_packets) / switchSeconds;
    const passed = (c1.value.flooded - c0.value.flooded) / switchSeconds;
    // n2 also receives the 10/s echo requests (and perhaps an ARP): leave them out.
    const delivered = (r1.value - r0.value - pinged.received) / (r1.at - r0.at);
    console.log(
      `  offered ${offered.toFixed(0)} fps of broadcast, passed ${passed.toFixed(0)}, ` +
        `n2 received ${
          delivered.toFixed(0)
        } fps (limit ${LIMIT}); ping ${pinged.received}/${pinged.transmitted}`,
    );
    assert.ok(offered > LIMIT * 1.5, `testpmd offered only ${offered} fps`);
    assert.ok(Math.abs(delivered - LIMIT) <= LIMIT * 0.1, `delivered ${delivered} fps`);
    assert.ok(pinged.received >= 47, `ping during the storm: ${pinged.output}`);
    assert.ok(l.counters("flood").drop_storm_broadcast > 0);
  } finally {
    await pmd.stop().catch(() => {});
  }
});

netTest(
  "port security: a testpmd front-end flooding with another station's MAC is dropped; the victim keeps its FDB entry and its pings",
  [pmdMissing],
  async () => {
    await using l = await lab(2, {
      threads: 2,
      extraPorts: [{
        name: "tenant",
        type: "vhost-user",
        socket: "$DIR/tenant.sock",
        security: { allowedMacs: ["02:00:00:21:00:02"] },
      }],
    });
    const [n1, n2] = l.nets;
    await ping(n1, addr(1), 2);
    const victim = (await n1.exec(["cat", `/sys/class/net/${n1.nsIf}/address`])).trim();
    const where = () => l.sw.sw.fdb().find((e) => e.mac === victim)?.port;
    assert.equal(where(), "p1");
    // testpmd's port takes the victim's MAC: everything it sends claims to be n1.
    await using pmd = await Testpmd.launch({
      name: "h21spoof",
      lcores: "0@1,1@0",
      totalNumMbufs: 4096,
      vdevs: [virtioUserVdev({ index: 0, path: `${l.sw.dir}/tenant.sock`, mac: victim })],
      args: ["--forward-mode=txonly", `--eth-peer=0,${victim}`, "--txpkts=64"],
    });
    await pmd.waitLinkUp([0]);
    await pmd.start();
    try {
      await sleep(500);
      const pinged = await ping(n2, addr(0), 20, "0.1");
      await pmd.stop();
      await sleep(300); // the last bursts counted on both sides
      const c = l.counters("tenant");
      console.log(
        `  testpmd sent ${c.rx_packets} frames as ${victim}: drop_spoofed ${c.drop_spoofed}; ` +
          `n2 -> n1 ping ${pinged.received}/${pinged.transmitted}; ${victim} on ${where()}`,
      );
      assert.ok(c.rx_packets > 1000, `testpmd sent only ${c.rx_packets}`);
      assert.equal(c.drop_spoofed, c.rx_packets, "every spoofed frame dropped");
      assert.equal(c.flooded + c.unicast, 0, "none forwarded");
      assert.equal(where(), "p1", "the victim's entry never moved");
      assert.equal(pinged.received, 20);
      assert.equal(l.counters("p1").mac_moved, 0);
    } finally {
      await pmd.stop().catch(() => {});
    }
  },
);
