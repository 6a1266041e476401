// VMs reach the host's network: a QEMU guest on a vhost-user port and a host in a network
// namespace behind an AF_PACKET uplink (a veth pair) ping each other through the switch.
import assert from "node:assert/strict";
import { createVethNetns, netnsSkipReason } from "../peers/netns.ts";
import { bootGuest, type Guest, guestToolsAvailable } from "../peers/qemu.ts";
import { pingAll } from "./helpers/ping.ts";
import { startSwitch } from "./helpers/switch.ts";

const missing = guestToolsAvailable() ?? netnsSkipReason();
if (missing) console.warn(`SKIPPING uplink test: ${missing}`);

const VM_MAC = "52:54:00:00:09:01";

Deno.test({
  name: "a QEMU guest and a namespace host behind the af-packet uplink ping each other",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using ns = await createVethNetns({ nsAddr: "10.9.0.2/24" });
    await ns.waitOperUp();
    const nsMac = (await ns.exec(["cat", `/sys/class/net/${ns.nsIf}/address`])).trim();
    await using ts = await startSwitch({
      name: "uplink",
      threads: 2,
      http: { listen: "127.0.0.1:0" },
      ports: [
        { name: "vm1", type: "vhost-user", socket: "$DIR/vm1.sock" },
        { name: "uplink", type: "af-packet", interface: ns.hostIf },
      ],
    });
    let guest: Guest | null = null;
    try {
      guest = await bootGuest({
        name: "up1",
        nics: [{ socket: `${ts.dir}/vm1.sock`, mac: VM_MAC }],
        ip: "10.9.0.1/24",
      });
      await pingAll(guest, "10.9.0.2");
      const back = await ns.exec(["busybox", "ping", "-c", "3", "-W", "5", "10.9.0.1"]);
      assert.match(back, /3 packets received/);

      const fdb = ts.sw.fdb();
      assert.deepEqual(
        fdb.filter((e) => e.mac === nsMac || e.mac === VM_MAC).map((e) => [e.mac, e.port]).sort(),
        [[VM_MAC, "vm1"], [nsMac, "uplink"]].sort(),
      );
      const uplink = ts.sw.port("uplink")!;
      assert.equal(uplink.state, "up");
      assert.ok(uplink.counters.rx_packets >= 6 && uplink.counters.tx_packets >= 6);
    } finally {
      await guest?.shutdown();
    }
  },
});
