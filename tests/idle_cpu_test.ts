// An idle switch must not burn a core: with two guests attached and no traffic for a few
// seconds, the switch process (measured from /proc) stays under 5% of one core, and the
// next ping still goes through (the workers wake on the guests' kicks).
import assert from "node:assert/strict";
import { bootGuest, type Guest, guestToolsAvailable } from "./helpers/qemu.ts";
import { cpuSeconds, SwitchProcess } from "./helpers/switch_process.ts";

const missing = guestToolsAvailable();
if (missing) console.warn(`SKIPPING idle CPU test: ${missing}`);

Deno.test({
  name: "idle switch uses under 5% of a core and wakes for the next ping (threads: 2)",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "vswitch-idle-" });
    const topology = {
      name: "idle",
      threads: 2,
      http: { listen: "127.0.0.1:0" },
      poll: { mode: "adaptive", idleAfterMs: 200 },
      ports: [1, 2].map((i) => ({
        name: `vm${i}`,
        type: "vhost-user",
        socket: `${dir}/vm${i}.sock`,
      })),
    };
    await Deno.writeTextFile(`${dir}/topology.json`, JSON.stringify(topology));
    await using sw = new SwitchProcess(`${dir}/topology.json`);
    const guests: Guest[] = [];
    try {
      await sw.waitForLine(/\[vm2\] listening/);
      guests.push(
        ...await Promise.all([1, 2].map((i) =>
          bootGuest({
            name: `idle${i}`,
            nics: [{ socket: `${dir}/vm${i}.sock`, mac: `52:54:00:00:01:0${i}` }],
            ip: `10.0.1.${i}/24`,
          })
        )),
      );
      const first = await guests[0].run("ping -c 2 -W 5 10.0.1.2", 60_000);
      assert.equal(first.code, 0, `first ping failed:\n${first.output}\n${sw.output.join("\n")}`);

      await new Promise((r) => setTimeout(r, 2000)); // the workers notice they are idle
      const before = cpuSeconds(sw.pid);
      await new Promise((r) => setTimeout(r, 3000));
      const used = (cpuSeconds(sw.pid) - before) / 3;
      console.log(`  idle switch CPU: ${(used * 100).toFixed(1)}% of one core`);
      assert.ok(used < 0.05, `idle switch used ${(used * 100).toFixed(1)}% of a core`);

      const after = await guests[1].run("ping -c 2 -W 5 10.0.1.1", 60_000);
      assert.equal(after.code, 0, `ping after idle failed:\n${after.output}`);
    } finally {
      await Promise.allSettled(guests.map((g) => g.shutdown()));
      await sw.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
