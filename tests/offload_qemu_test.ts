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

const missing = guestToolsAvailable() ?? netnsSkipReason();
if (missing) console.warn(`SKIPPING offload QEMU test: ${missing}`);

const MIB = 4;

function sha256Of(text: string): string {
  const m = text.match(/\b([0-9a-f]{64})\b/);
  if (!m) throw new Error(`no sha256 in:\n${text}`);
  return m[1];
}

Deno.test({
  name: "a QEMU guest and a namespace with kernel offloads exchange TCP both ways intact",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
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
        nics: [{ socket: `${ts.dir}/vm1.sock`, mac: "52:54:00:00:0f:01" }],
        ip: "10.9.0.1/24",
        log: Deno.env.get("VSWITCH_TEST_LOG") ? (l) => console.log(`  off1: ${l}`) : undefined,
      });

      // Namespace -> guest. The guest's listener keeps its stdin open (busybox nc half-closes
      // the socket when its stdin ends); it exits when the namespace's nc has sent everything.
      await guest.check(
        "rm -f /tmp/rx /tmp/rx.done; " +
          "( (sleep 300 &) | nc -l -p 5001 >/tmp/rx; echo $? >/tmp/rx.done) >/dev/null 2>&1 &",
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
      assert.ok(vm.gso_segmented > 0, `segmented for the guest (${vm.gso_segmented})`);
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
    } finally {
      await guest?.shutdown();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
