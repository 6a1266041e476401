// VXLAN against real peers in network namespaces: two instances of this switch ("two hosts")
// and the Linux kernel's own VXLAN + bridge as a third VTEP, on one underlay, stations with the
// kernel's default offloads (checksum offload, TSO, GSO). Stations behind each VTEP ping each
// other and move a hash-checked TCP transfer across the tunnels; each switch learns the
// stations' MACs against the VTEP they sit behind (/fdb remote column). Then Open vSwitch's
// userspace VXLAN port as the peer VTEP.
import assert from "node:assert/strict";
import { netnsSkipReason } from "../peers/netns.ts";
import { commandMissing } from "./helpers/peers.ts";
import { VxlanLab } from "../peers/vxlan_lab.ts";
import type { FdbEntry, PortStatus } from "../switch/view.ts";

const skip = netnsSkipReason() ?? commandMissing("busybox", "busybox-static");
if (skip) console.warn(`SKIPPING VXLAN namespace tests: ${skip}`);

const MIB = 1 << 20;
const noOvs = skip ?? commandMissing("ovs-vswitchd", "openvswitch-switch-dpdk");
if (!skip && noOvs) console.warn(`SKIPPING the Open vSwitch VXLAN test: ${noOvs}`);

Deno.test({
  name:
    "vxlan: two switches and the kernel's VXLAN on one underlay: ping, TCP, learning across tunnels",
  ignore: skip !== null,
  async fn(t) {
    // Host 1 and 2 run this switch, host 3 the kernel's VXLAN (created with `remote 10.20.0.1`,
    // 10.20.0.2 added to its flood list); each floods to the two others.
    await using lab = await VxlanLab.up([
      { kind: "switch", flood: [2, 3] },
      { kind: "switch", flood: [1, 3] },
      { kind: "kernel", flood: [1, 2] },
    ]);
    const fail = (what: string) => `${what}\n${lab.logs()}`;

    await t.step("ping across every tunnel (ARP flooded by head-end replication)", async () => {
      for (const [a, b] of [[1, 2], [1, 3], [2, 3], [3, 1]]) {
        assert.equal(await lab.ping(a, b), 3, fail(`ping ${a} -> ${b}`));
      }
    });

    await t.step("each switch learned the remote stations behind their VTEPs", async () => {
      const macOf = async (n: number) =>
        (await lab.exec(lab.vtep(n).station, ["cat", "/sys/class/net/eth0/address"])).trim();
      const { entries } = await lab.get<{ entries: FdbEntry[] }>(1, "/fdb");
      const on = (mac: string) => entries.find((e) => e.mac === mac);
      assert.deepEqual(
        [on(await macOf(2))?.port, on(await macOf(2))?.remote],
        ["vx42", "10.20.0.2"],
        fail(JSON.stringify(entries)),
      );
      assert.deepEqual([on(await macOf(3))?.port, on(await macOf(3))?.remote], [
        "vx42",
        "10.20.0.3",
      ]);
      assert.equal(on(await macOf(1))?.port, "station");
      assert.equal(on(await macOf(1))?.remote, undefined);
    });

    await t.step(
      "hash-checked TCP: switch <-> switch and switch <-> kernel, both ways",
      async () => {
        for (const [a, b] of [[1, 2], [2, 1], [1, 3], [3, 1]]) {
          const r = await lab.transfer(a, b, 4 * MIB);
          assert.equal(r.received, r.sent, fail(`TCP ${a} -> ${b}: sha256 differs`));
        }
      },
    );

    await t.step("pings 50 ms apart each wake the sleeping workers of both switches", async () => {
      // Both workers poll sockets only (the station's af-packet ring with its doorbell, the
      // tunnel's UDP socket): they sleep between frames and each frame wakes them, with no
      // 1 ms naps (hundreds a second) and no polling between frames (no sleeps at all).
      type Stats = { workers: { sleeps: number }[] };
      const sleeps = async () =>
        (await Promise.all([1, 2].map((n) => lab.get<Stats>(n, "/stats"))))
          .map((s) => s.workers[0].sleeps);
      const before = await sleeps();
      const out = await lab.exec(lab.vtep(1).station, [
        ...["busybox", "ping", "-c", "20", "-i", "0.05", "-w", "10", lab.vtep(2).stationIp],
      ]).catch((e) => String(e));
      const after = await sleeps();
      assert.equal([...out.matchAll(/time=/g)].length, 20, fail(`20 pings 1 -> 2:\n${out}`));
      for (const i of [0, 1]) {
        const n = after[i] - before[i];
        assert.ok(n >= 10 && n < 300, `switch ${i + 1}: ${n} sleeps during 20 pings 50 ms apart`);
      }
    });

    await t.step("nothing dropped on the tunnel ports but what the counters explain", async () => {
      const port = await lab.get<PortStatus>(1, "/ports/vx42");
      const c = port.counters;
      assert.ok(c.rx_packets > 1000 && c.tx_packets > 1000, fail(JSON.stringify(c)));
      for (const k of ["drop_vni", "drop_vxlan_header", "drop_vtep_unknown", "drop_too_big"]) {
        assert.equal(c[k], 0, `${k}: ${JSON.stringify(c)}`);
      }
      assert.equal(port.type === "vxlan" && port.remotes.join(), "10.20.0.2,10.20.0.3");
      // Kernel defaults: the station's TSO super-frames were cut to the inner MTU here.
      assert.ok(c.gso_segmented > 0, `gso_segmented: ${JSON.stringify(c)}`);
      // ... and their segments left as UDP_SEGMENT sends, which both peers took (hash-checked).
      assert.ok(c.tx_udp_gso > 0, `tx_udp_gso: ${JSON.stringify(c)}`);
      // The segments switch 2 sent were merged again on receipt (to the station: one frame).
      assert.ok(c.rx_coalesced > 0, `rx_coalesced: ${JSON.stringify(c)}`);
    });
  },
});

Deno.test({
  name: "vxlan: tunnel GSO: IPv4 and IPv6 super-frames leave whole, to a switch and the kernel",
  ignore: skip !== null,
  async fn() {
    // Hosts 1 and 2 run this switch with tunnelGso, host 3 the kernel's VXLAN; the stations
    // have IPv6 too (the inner header the tap's virtio-net header then names is IPv6).
    const vxlan = { tunnelGso: true };
    await using lab = await VxlanLab.up([
      { kind: "switch", flood: [2, 3], vxlan },
      { kind: "switch", flood: [1, 3], vxlan },
      { kind: "kernel", flood: [1, 2] },
    ], { ipv6: true });
    const fail = (what: string) => `${what}\n${lab.logs()}`;
    for (const [a, b] of [[1, 2], [1, 3]]) {
      assert.equal(await lab.ping(a, b), 3, fail(`ping ${a} -> ${b}`));
    }
    // Loose reverse-path filtering for every interface (systemd's default) on host 1: the
    // tap's frames, from the VTEP's own address, still pass (the tap holds that address).
    await lab.exec(lab.vtep(1).ns, ["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=2"]);
    const counters = async (n: number) => (await lab.get<PortStatus>(n, "/ports/vx42")).counters;
    const runs = [[1, 2], [2, 1], [1, 3], [3, 1]].flatMap(([a, b]) =>
      [false, true].map((ipv6) => ({ a, b, ipv6 }))
    );
    for (const { a, b, ipv6 } of runs) {
      const before = await counters(a === 3 ? b : a);
      const farBefore = b === 3 ? null : await counters(b);
      const r = await lab.transfer(a, b, 4 * MIB, { ipv6 });
      const what = `TCP ${a} -> ${b} over IPv${ipv6 ? 6 : 4}`;
      assert.equal(r.received, r.sent, fail(`${what}: sha256 differs`));
      const after = await counters(a === 3 ? b : a);
      if (a !== 3) {
        // The station's TSO super-frames left whole (the kernel cut none of them for a veth),
        // none cut here.
        const sent = JSON.stringify(after);
        assert.ok(after.tx_tunnel_gso - before.tx_tunnel_gso > 10, fail(`${what}: ${sent}`));
        assert.equal(after.gso_segmented, before.gso_segmented, fail(`${what}: ${sent}`));
      }
      if (farBefore !== null) {
        // ... and arrived whole at the far switch, one datagram each (what the kernel's own
        // VTEP sends too), during this transfer.
        const far = await counters(b);
        assert.ok(
          far.rx_gso - farBefore.rx_gso > 10,
          fail(`${what}: switch ${b}: ${JSON.stringify(far)}`),
        );
      }
    }
    // The tap is the port's own: up, forwarding what it is given, nothing else changed.
    const sysctl = (key: string) => lab.exec(lab.vtep(1).ns, ["sysctl", "-n", key]);
    assert.equal((await sysctl("net.ipv4.conf.vxgvx42.forwarding")).trim(), "1");
    assert.equal((await sysctl("net.ipv4.conf.all.forwarding")).trim(), "0");
  },
});

Deno.test({
  name: "vxlan: interop with Open vSwitch's userspace VXLAN port: ping, hash-checked TCP both ways",
  ignore: noOvs !== null,
  async fn() {
    await using lab = await VxlanLab.up([
      { kind: "switch", flood: [2] },
      { kind: "ovs", flood: [1] },
      // Plain frames: Open vSwitch's userspace datapath here passes the kernel's checksum-
      // partial frames on unfinished (its userspace-tso-enable did not help either).
    ], { offloads: false });
    const fail = (what: string) => `${what}\n${lab.logs()}`;
    assert.equal(await lab.ping(1, 2), 3, fail("ping switch -> OVS"));
    assert.equal(await lab.ping(2, 1), 3, fail("ping OVS -> switch"));
    for (const [a, b] of [[1, 2], [2, 1]]) {
      const r = await lab.transfer(a, b, 4 * MIB);
      assert.equal(r.received, r.sent, fail(`TCP ${a} -> ${b}: sha256 differs`));
    }
    const { entries } = await lab.get<{ entries: FdbEntry[] }>(1, "/fdb");
    const mac = (await lab.exec(lab.vtep(2).station, ["cat", "/sys/class/net/eth0/address"]))
      .trim();
    assert.equal(entries.find((e) => e.mac === mac)?.remote, "10.20.0.2", JSON.stringify(entries));
  },
});
