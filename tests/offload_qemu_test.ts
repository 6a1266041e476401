// TCP between a QEMU guest (vhost-user) and a namespace behind the af-packet uplink, with the
// kernel's defaults on the namespace's veth (checksum offload, TSO): its GSO super-frames and
// checksum-partial frames reach the guest finished by the switch (segmented to the guest's MTU,
// checksums filled), and the guest's frames reach the namespace. 4 MiB each way, hashed with
// sha256 at both ends.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createVethNetns, netnsSkipReason } from "../peers/netns.ts";
import { bootGuest, type Guest, guestToolsAvailable } from "../peers/qemu.ts";
import { startSwitch } from "./helpers/switch.ts";
import { transfer } from "../demo/throughput.ts";

const missing = guestToolsAvailable() ?? netnsSkipReason();
if (missing) console.warn(`SKIPPING offload QEMU test: ${missing}`);

const MIB = 4;

function sha256Of(text: string): string {
  const m = text.match(/\b([0-9a-f]{64})\b/);
  if (!m) throw new Error(`no sha256 in:\n${text}`);
  return m[1];
}

/** QEMU's virtio-net-pci properties that take every checksum and TSO offload away. */
const GUEST_OFFLOADS_OFF = "csum=off,guest_csum=off,host_tso4=off,host_tso6=off," +
  "guest_tso4=off,guest_tso6=off,host_ecn=off,guest_ecn=off";

for (const offloads of [true, false]) {
  Deno.test({
    name: `a QEMU guest (offloads ${offloads ? "on" : "off"}) and a namespace with kernel ` +
      "offloads exchange TCP both ways intact",
    ignore: missing !== null,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: () => guestAndNamespace(offloads),
  });
}

async function guestAndNamespace(offloads: boolean): Promise<void> {
  {
    await using ns = await createVethNetns({ nsAddr: "10.9.0.2/24" });
    await using ts = await startSwitch({
      name: "offload-qemu",
      threads: 1,
      http: { listen: "127.0.0.1:0" },
      ports: [
        { name: "vm1", type: "vhost-user", socket: "$DIR/vm1.sock" },
        { name: "uplink", type: "af-packet", interface: ns.hostIf },
      ],
    });
    let guest: Guest | null = null;
    const dir = await Deno.makeTempDir({ prefix: "offload-qemu-" });
    try {
      guest = await bootGuest({
        name: "off1",
        nics: [{
          socket: `${ts.dir}/vm1.sock`,
          mac: "52:54:00:00:0f:01",
          deviceOpts: offloads ? undefined : GUEST_OFFLOADS_OFF,
        }],
        ip: "10.9.0.1/24",
        log: Deno.env.get("VSWITCH_TEST_LOG") ? (l) => console.log(`  off1: ${l}`) : undefined,
      });

      // Namespace -> guest. The guest's listener keeps its stdin open (busybox nc half-closes
      // the socket when its stdin ends); it exits when the namespace's nc has sent everything.
      await guest.check(
        "rm -f /tmp/rx /tmp/rx.done; " +
          "setsid sh -c '(sleep 300 &) | nc -l -p 5001 >/tmp/rx; echo $? >/tmp/rx.done' >/dev/null 2>&1 &",
      );
      await guest.check(
        "i=0; until netstat -ltn | grep -q ':5001 '; do i=$((i+1)); " +
          "[ $i -ge 100 ] && break; sleep 0.1; done",
      );
      const file = `${dir}/tx`;
      const data = new Uint8Array(MIB << 20);
      for (let o = 0; o < data.length; o += 65536) {
        crypto.getRandomValues(data.subarray(o, o + 65536));
      }
      await Deno.writeFile(file, data);
      const sent = createHash("sha256").update(data).digest("hex");
      await ns.exec(["sh", "-c", `busybox nc -w 10 10.9.0.1 5001 < ${file}`]);
      await guest.check(
        "i=0; until [ -s /tmp/rx.done ]; do i=$((i+1)); [ $i -ge 600 ] && break; sleep 0.1; done",
        90_000,
      );
      const got = await guest.check("cat /tmp/rx.done; wc -c </tmp/rx; sha256sum /tmp/rx");
      await guest.run("kill $(pidof sleep) 2>/dev/null; rm -f /tmp/rx; true");
      const [code, size] = got.trim().split("\n");
      assert.equal(code.trim(), "0", `guest nc: ${got}`);
      assert.equal(Number(size), data.length, "the guest got every byte");
      assert.equal(sha256Of(got), sent, "namespace -> guest: same sha256 at both ends");
      const vm = ts.sw.port("vm1")!.counters;
      const up = ts.sw.port("uplink")!.counters;
      assert.ok(up.rx_gso > 0, `the namespace sent GSO frames (${up.rx_gso})`);
      if (offloads) {
        assert.ok(vm.tx_gso > 0, `handed to the guest whole (${vm.tx_gso})`);
        assert.ok(ts.sw.port("vm1")!.features.includes("GUEST_TSO4"));
      } else {
        assert.ok(vm.gso_segmented > 0, `segmented for the guest (${vm.gso_segmented})`);
        assert.ok(!ts.sw.port("vm1")!.features.includes("GUEST_CSUM"));
      }
      assert.equal(vm.drop_too_big + vm.drop_bad_offload, 0, "nothing dropped on the way");

      // Guest -> namespace: a listener opened inside the namespace, hashing what arrives.
      const listener = ns.inside(() => Deno.listen({ hostname: "10.9.0.2", port: 5002 }));
      const received = (async () => {
        const conn = await listener.accept();
        const h = createHash("sha256");
        let n = 0;
        for await (const chunk of conn.readable) {
          h.update(chunk);
          n += chunk.length;
        }
        return { n, sha: h.digest("hex") };
      })();
      const made = await guest.check(
        `dd if=/dev/urandom of=/tmp/tx bs=1M count=${MIB} 2>/dev/null && sha256sum /tmp/tx`,
        60_000,
      );
      await guest.check("nc 10.9.0.2 5002 </tmp/tx", 120_000);
      const r = await received;
      listener.close();
      assert.equal(r.n, MIB << 20, "the namespace got every byte");
      assert.equal(r.sha, sha256Of(made), "guest -> namespace: same sha256 at both ends");
      if (offloads) {
        const vmRx = ts.sw.port("vm1")!.counters;
        assert.ok(vmRx.rx_csum_partial > 0, "the guest left checksums to offload");
      }
    } finally {
      await guest?.shutdown();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  }
}

Deno.test({
  name: "VM to VM TCP with offloads negotiated crosses the switch as GSO frames, intact",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using ts = await startSwitch({
      name: "offload-vms",
      threads: 1,
      http: { listen: "127.0.0.1:0" },
      ports: [
        { name: "vm1", type: "vhost-user", socket: "$DIR/vm1.sock" },
        { name: "vm2", type: "vhost-user", socket: "$DIR/vm2.sock" },
      ],
    });
    const guests = await Promise.all([1, 2].map((k) =>
      bootGuest({
        name: `offvm${k}`,
        nics: [{ socket: `${ts.dir}/vm${k}.sock`, mac: `52:54:00:00:0f:1${k}` }],
        ip: `10.9.1.${k}/24`,
      })
    ));
    try {
      const r = await transfer(guests[0], guests[1], "10.9.1.2", MIB).catch((err) => {
        const nz = (p: string) =>
          JSON.stringify(
            Object.fromEntries(
              Object.entries(ts.sw.port(p)!.counters).filter(([, v]) => v !== 0),
            ),
          );
        throw new Error(`${err.message}\nvm1 ${nz("vm1")}\nvm2 ${nz("vm2")}`);
      });
      assert.equal(r.bytes, MIB << 20, "every byte arrived");
      assert.equal(r.receivedSha256, r.sentSha256, "same sha256 at both ends");
      const vm1 = ts.sw.port("vm1")!.counters;
      const vm2 = ts.sw.port("vm2")!.counters;
      assert.ok(vm1.rx_gso > 0, `vm1 sent TSO frames (${vm1.rx_gso})`);
      assert.ok(vm2.tx_gso > 0, `handed to vm2 as they are (${vm2.tx_gso})`);
      assert.equal(vm2.gso_segmented + vm2.csum_filled, 0, "nothing finished in software");
      assert.equal(vm1.drop_bad_offload + vm2.drop_too_big, 0);
    } finally {
      await Promise.all(guests.map((g) => g.shutdown()));
    }
  },
});
