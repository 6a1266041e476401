// A QEMU guest with 8 GiB of RAM (TCG, memfd-backed and sparse: only the pages it touches cost
// memory). QEMU hands the back-end its RAM above 4 GiB as one region of 5 GiB; the guest is told
// to leave 4..8 GiB alone, so its kernel allocates network buffers from 8 GiB up first, and
// frames are read from and written to offsets beyond 4 GiB into that region. The big guest pings a small one and both send
// each other 2 MiB of random bytes over HTTP, checked with sha256.
import assert from "node:assert/strict";
import { bootGuest, type Guest, guestToolsAvailable } from "../peers/qemu.ts";
import { startSwitch } from "./helpers/switch.ts";

const missing = guestToolsAvailable();
if (missing) console.warn(`SKIPPING QEMU tests: ${missing}`);

const MAC_BIG = "52:54:00:00:08:01";
const MAC_SMALL = "52:54:00:00:08:02";

/** `to` fetches a fresh 2 MiB random file from `from` (busybox httpd at `ip`) over TCP. */
async function transfer(from: Guest, to: Guest, ip: string): Promise<void> {
  const sent = await from.check(
    `mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/f bs=64k count=32 2>/dev/null && ` +
      `sha256sum /tmp/www/f && (httpd -p 8080 -h /tmp/www || true)`,
    60_000,
  );
  const got = await to.run(
    `rm -f /tmp/f && wget -q -O /tmp/f http://${ip}:8080/f && wc -c < /tmp/f && sha256sum /tmp/f`,
    180_000,
  );
  assert.equal(got.code, 0, `${to.name}: wget failed:\n${got.output}`);
  const hash = (s: string) => s.match(/\b([0-9a-f]{64})\b/)?.[1];
  assert.ok(hash(sent), `no hash from ${from.name}: ${sent}`);
  assert.equal(
    hash(got.output),
    hash(sent),
    `${from.name} -> ${to.name}: hashes differ; sent:\n${sent}\nreceived:\n${got.output}`,
  );
}

Deno.test({
  name: "a QEMU guest with 8 GiB of RAM pings and transfers (sha256-checked) through the switch",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using ts = await startSwitch({
      name: "qemu-8g",
      http: { listen: "127.0.0.1:0" },
      ports: [
        { name: "big", type: "vhost-user", socket: "$DIR/big.sock" },
        { name: "small", type: "vhost-user", socket: "$DIR/small.sock" },
      ],
    });
    const guests: Guest[] = [];
    try {
      guests.push(
        ...await Promise.all([
          bootGuest({
            name: "big",
            nics: [{ socket: `${ts.dir}/big.sock`, mac: MAC_BIG }],
            ip: "10.0.8.1/24",
            memMB: 8192,
            // Only RAM from 8 GiB up is left above 4 GiB: the kernel allocates there first, at
            // offsets beyond 4 GiB into QEMU's region that starts at 4 GiB.
            append: "memmap=4G$0x100000000",
            bootTimeoutMs: 180_000,
          }),
          bootGuest({
            name: "small",
            nics: [{ socket: `${ts.dir}/small.sock`, mac: MAC_SMALL }],
            ip: "10.0.8.2/24",
            bootTimeoutMs: 180_000,
          }),
        ]),
      );
      const [big, small] = guests;
      const regions = ts.sw.portControl.vhostPort("big")!.connection!.device.running!.regions
        .map((r) => `0x${r.guestPhys.toString(16)}+0x${r.size.toString(16)}`);
      console.log(`regions of the 8 GiB guest: ${regions.join(" ")}`);
      assert.ok(
        regions.some((r) => /^0x[1-9][0-9a-f]{8}\+0x[1-9][0-9a-f]{8}$/.test(r)),
        `expected a region above 4 GiB larger than 4 GiB: ${regions.join(" ")}`,
      );
      const ping = await big.run("ping -c 3 -W 5 10.0.8.2", 60_000);
      assert.equal(ping.code, 0, `ping failed:\n${ping.output}\n${ts.logs.join("\n")}`);
      await transfer(big, small, "10.0.8.1");
      await transfer(small, big, "10.0.8.2");
      const [b, s] = ts.sw.ports();
      assert.equal(b.counters.drop_bad_descriptor + s.counters.drop_bad_descriptor, 0);
      assert.doesNotMatch(ts.logs.join("\n"), /failed|blocked/);
    } finally {
      await Promise.allSettled(guests.map((g) => g.shutdown()));
    }
  },
});
