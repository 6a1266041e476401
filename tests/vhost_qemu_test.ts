// Two real QEMU guests (Debian kernel, virtio-net driver) on the switch: one on a server-mode
// port (QEMU connects) with a packed virtqueue NIC, one on a client-mode port (QEMU listens, the
// switch connects) with split virtqueues. They ping each other and fetch a 1 MiB file from each
// other over HTTP, checked by its SHA-256 (large frames both ways through both ring layouts).
import assert from "node:assert/strict";
import { bootGuest, type Guest, guestToolsAvailable } from "../peers/qemu.ts";
import { pingAll } from "./helpers/ping.ts";
import { startSwitch } from "./helpers/switch.ts";

const missing = guestToolsAvailable();
if (missing) console.warn(`SKIPPING QEMU tests: ${missing}`);

const MAC1 = "52:54:00:00:00:01";
const MAC2 = "52:54:00:00:00:02";

Deno.test({
  name: "two QEMU guests (packed and split rings) ping and transfer through the switch",
  ignore: missing !== null,
  sanitizeOps: false, // QEMU's console reader and the harness' timers span the test
  sanitizeResources: false,
  async fn() {
    await using ts = await startSwitch({
      name: "qemu",
      http: { listen: "127.0.0.1:0" },
      ports: [
        { name: "vm1", type: "vhost-user", socket: "$DIR/vm1.sock", mode: "server" },
        { name: "vm2", type: "vhost-user", socket: "$DIR/vm2.sock", mode: "client" },
      ],
    });
    const guests: Guest[] = [];
    try {
      guests.push(
        ...await Promise.all([
          bootGuest({
            name: "g1",
            nics: [{ socket: `${ts.dir}/vm1.sock`, mac: MAC1, deviceOpts: "packed=on" }],
            ip: "10.0.0.1/24",
          }),
          bootGuest({
            name: "g2",
            nics: [{ socket: `${ts.dir}/vm2.sock`, mac: MAC2, server: true }],
            ip: "10.0.0.2/24",
          }),
        ]),
      );
      const [g1, g2] = guests;
      await pingAll(g1, "10.0.0.2");
      await pingAll(g2, "10.0.0.1");

      // Each guest serves 1 MiB of random bytes; the other fetches it and hashes what came.
      const served = await Promise.all(guests.map((g) =>
        g.check(
          "mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/f bs=1024 count=1024 2>/dev/null" +
            " && httpd -p 8080 -h /tmp/www && sha256sum /tmp/www/f",
          60_000,
        )
      ));
      for (const [from, to, ip] of [[g2, g1, "10.0.0.1"], [g1, g2, "10.0.0.2"]] as const) {
        const got = await from.check(`wget -q -O - http://${ip}:8080/f | sha256sum`, 120_000);
        const want = served[guests.indexOf(to)];
        assert.equal(
          got.split(" ")[0].trim(),
          want.split(" ")[0].trim(),
          `${from.name} <- ${to.name}`,
        );
      }

      for (const g of guests) {
        const dmesg = await g.dmesg();
        assert.match(dmesg, /eth0 operstate up/, `${g.name}: link not up`);
        assert.doesNotMatch(dmesg, /virtio.*(error|broken|failed)|id \d+ is not a head/i, dmesg);
      }
      const fdb = ts.sw.fdb();
      assert.deepEqual(
        fdb.filter((e) => e.mac === MAC1 || e.mac === MAC2).map((e) => [e.mac, e.port, e.vlan])
          .sort(),
        [[MAC1, "vm1", 0], [MAC2, "vm2", 0]],
      );
      const [vm1, vm2] = ts.sw.ports();
      assert.equal(vm1.state, "connected");
      assert.equal(vm2.state, "connected");
      assert.ok(vm1.features.includes("VERSION_1"), vm1.features.join(","));
      assert.ok(vm1.features.includes("RING_PACKED"), vm1.features.join(","));
      assert.ok(!vm2.features.includes("RING_PACKED"), vm2.features.join(","));
      assert.ok(vm1.counters.rx_packets >= 3 && vm2.counters.rx_packets >= 3);
      assert.equal(vm1.counters.drop_bad_descriptor + vm2.counters.drop_bad_descriptor, 0);
    } finally {
      await Promise.allSettled(guests.map((g) => g.shutdown()));
    }
  },
});
