// The user's story end to end, on the shipped examples and the switch run as a user runs it (a
// child process): QEMU guests and a namespace host behind the AF_PACKET uplink ping each other,
// the MAC table is read over real HTTP, VLANs keep guests apart, and a TCP transfer between two
// guests is timed and hash-checked. The lab (demo/lab.ts) is the one `deno task demo` uses.
import assert from "node:assert/strict";
import type { FdbEntry } from "../switch/view.ts";
import { Lab, type LabPlan, labSkipReason } from "../demo/lab.ts";
import { formatPing, HOST, ping, pingAll, type PingResult } from "../demo/ping.ts";
import { transfer } from "../demo/throughput.ts";
import { formatMac } from "../peers/pcap.ts";

const missing = labSkipReason();
if (missing) console.warn(`SKIPPING e2e tests (QEMU guests + namespace): ${missing}`);

const test = (name: string, fn: () => Promise<void>) =>
  Deno.test({
    name,
    ignore: missing !== null,
    sanitizeOps: false, // QEMU's console readers and the switch's pipes span the test
    sanitizeResources: false,
    fn,
  });

const addr = (cidr: string) => cidr.split("/")[0];
const log = (line: string) => console.log(`      ${line}`);
const logIf = Deno.env.get("VSWITCH_TEST_LOG") ? console.log : undefined;

function assertAllAnswered(results: PingResult[], lab: Lab) {
  results.forEach((r) => log(formatPing(r)));
  const bad = results.filter((r) => r.received !== r.sent);
  assert.deepEqual(
    bad.map((r) => `${r.from} -> ${r.to}`),
    [],
    `lost echoes:\n${bad.map((r) => r.output).join("\n")}\n--- switch ---\n${lab.switchLog()}`,
  );
}

/** [mac, port, vlan] triples, sorted, for comparing MAC tables. */
const triples = (entries: FdbEntry[]) => entries.map((e) => `${e.mac} ${e.port} ${e.vlan}`).sort();

const FLAT: LabPlan = {
  example: "three-vms-uplink.json",
  threads: 2, // as the example says; explicit because the test is about two workers
  vms: [
    { port: "vm1", mac: "52:54:00:e2:00:01", ip: "10.0.0.1/24" },
    { port: "vm2", mac: "52:54:00:e2:00:02", ip: "10.0.0.2/24" },
    { port: "vm3", mac: "52:54:00:e2:00:03", ip: "10.0.0.3/24" },
  ],
  hostAddr: "10.0.0.254/24",
  log: logIf,
};

test("e2e: three VMs and a host behind the uplink ping pairwise (2 threads); /fdb; TCP", async () => {
  await using lab = await Lab.up(FLAT);
  const info = await lab.get<{ threads: number }>("/info");
  assert.equal(info.threads, 2);
  for (const vm of FLAT.vms) log(`${vm.port} booted in ${lab.guest(vm.port).bootMs / 1000} s`);

  const stations = [
    ...FLAT.vms.map((vm) => ({ name: vm.port, ip: addr(vm.ip) })),
    { name: HOST, ip: addr(FLAT.hostAddr!) },
  ];
  assertAllAnswered(await pingAll(lab, stations), lab);

  // Over real HTTP, as a client sees it: every station on its port, untagged (VLAN 0).
  const { entries } = await lab.get<{ entries: FdbEntry[] }>("/fdb");
  const hostMac = await lab.hostMac();
  const ours = entries.filter((e) => e.mac === hostMac || FLAT.vms.some((vm) => vm.mac === e.mac));
  assert.deepEqual(
    triples(ours),
    [...FLAT.vms.map((vm) => `${vm.mac} ${vm.port} 0`), `${hostMac} uplink 0`].sort(),
  );
  const uplinkOnly = await lab.get<{ entries: FdbEntry[] }>("/fdb?port=uplink");
  assert.deepEqual(triples(uplinkOnly.entries), [`${hostMac} uplink 0`]);

  const t = await transfer(lab.guest("vm1"), lab.guest("vm2"), addr(FLAT.vms[1].ip), 8);
  log(
    `TCP vm1 -> vm2: ${t.bytes} bytes in ${t.seconds.toFixed(2)} s = ` +
      `${t.mbPerSecond.toFixed(1)} MB/s, sha256 ${t.receivedSha256}`,
  );
  assert.equal(t.bytes, 8 * 2 ** 20);
  assert.equal(t.receivedSha256, t.sentSha256);
});

const VLANS: LabPlan = {
  example: "vlans.json", // vm10a, vm10b: access VLAN 10; vm20: access VLAN 20; uplink: trunk
  vms: [
    { port: "vm10a", mac: "52:54:00:e2:10:0a", ip: "10.10.0.1/24" },
    { port: "vm10b", mac: "52:54:00:e2:10:0b", ip: "10.10.0.2/24" },
    { port: "vm20", mac: "52:54:00:e2:20:01", ip: "10.20.0.1/24" },
  ],
  hostVlans: { 10: "10.10.0.254/24", 20: "10.20.0.254/24" },
  log: logIf,
};

test("e2e: access VLANs 10 and 20 are apart; each reaches the host over the trunk", async () => {
  await using lab = await Lab.up(VLANS);
  log(`namespace VLAN subinterfaces: ${lab.ns!.vlanKind} (${lab.ns!.nsIf}.10, ${lab.ns!.nsIf}.20)`);
  // vm20 also takes an address in VLAN 10's subnet: were the VLANs leaking, its ARP would
  // reach vm10a and the pings below would answer. Only the switch keeps them apart.
  await lab.guest("vm20").check("ip addr add 10.10.0.3/24 dev eth0");

  const reachable = [
    ["vm10a", "vm10b", "10.10.0.2"],
    ["vm10b", "vm10a", "10.10.0.1"],
    ["vm10a", HOST, "10.10.0.254"],
    ["vm10b", HOST, "10.10.0.254"],
    ["vm20", HOST, "10.20.0.254"],
    [HOST, "vm10a", "10.10.0.1"],
    [HOST, "vm20", "10.20.0.1"],
  ];
  const ok = [];
  for (const [from, to, ip] of reachable) ok.push(await ping(lab, from, to, ip));
  assertAllAnswered(ok, lab);

  // Watch vm20's port while the others try it: its own ARP requests show the capture works.
  const captured = await lab.capture("vm20", 6);
  const apart = await Promise.all([
    ping(lab, "vm10a", "vm20", "10.10.0.3", 2, 2),
    ping(lab, "vm20", "vm10a", "10.10.0.1", 2, 2),
    ping(lab, "vm10b", "vm20", "10.10.0.3", 2, 2),
  ]);
  apart.forEach((r) => log(`${formatPing(r)} (different VLANs)`));
  assert.deepEqual(apart.map((r) => r.received), [0, 0, 0], apart.map((r) => r.output).join(""));
  const sources = (await captured()).map((f) => formatMac(f, 6));
  log(`capture on vm20: ${sources.length} frames from ${[...new Set(sources)].join(", ")}`);
  assert.ok(sources.includes("52:54:00:e2:20:01"), "vm20's own frames were not captured");
  assert.ok(!sources.some((mac) => mac.startsWith("52:54:00:e2:10:")), "VLAN 10 frames on vm20");

  const hostMac = await lab.hostMac();
  const ours = (e: FdbEntry) => e.mac === hostMac || VLANS.vms.some((vm) => vm.mac === e.mac);
  const vlan10 = await lab.get<{ entries: FdbEntry[] }>("/fdb?vlan=10");
  const vlan20 = await lab.get<{ entries: FdbEntry[] }>("/fdb?vlan=20");
  assert.deepEqual(
    triples(vlan10.entries.filter(ours)),
    [
      `${hostMac} uplink 10`,
      "52:54:00:e2:10:0a vm10a 10",
      "52:54:00:e2:10:0b vm10b 10",
    ].sort(),
  );
  assert.deepEqual(
    triples(vlan20.entries.filter(ours)),
    [
      `${hostMac} uplink 20`,
      "52:54:00:e2:20:01 vm20 20",
    ].sort(),
  );
  const { entries } = await lab.get<{ entries: FdbEntry[] }>("/fdb");
  assert.equal(entries.filter((e) => ours(e) && e.vlan === 0).length, 0, "untagged leak");
  triples(entries.filter(ours)).forEach((t) => log(`fdb: ${t}`));
});
