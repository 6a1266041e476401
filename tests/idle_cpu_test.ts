// An idle switch must not burn a core: with two guests attached and no traffic for a few
// seconds, the switch process (measured from /proc) stays under 5% of one core. And it must
// still wake at once for the next frame: a sleeping worker also wakes every 100 ms on its own
// (the housekeeping period, worker.ts), so "the next ping goes through" would pass even if
// kicks were ignored. Pings half a second apart (the workers fall asleep in between) must come
// back in a small part of that period: ignoring kicks costs each echo and each reply a wait of
// 0-100 ms, a median of 50 ms or more.
import assert from "node:assert/strict";
import type { SwitchInfo } from "../switch/view.ts";
import { medianRtt, pingAll } from "./helpers/ping.ts";
import { bootGuest, type Guest, guestToolsAvailable } from "../peers/qemu.ts";
import { cpuSeconds, SwitchProcess } from "../peers/switch_process.ts";

const missing = guestToolsAvailable();

/** Sleeps of all datapath workers so far, from the switch's /info. */
async function workerSleeps(sw: SwitchProcess): Promise<number> {
  const url = /HTTP on (http:\/\/\S+?)\/?$/.exec(await sw.waitForLine(/HTTP on http:/))![1];
  const info = await (await fetch(`${url}/info`)).json() as SwitchInfo;
  assert.ok(info.workers?.length, "the switch reports its workers");
  return info.workers!.reduce((n, w) => n + w.sleeps, 0);
}
if (missing) console.warn(`SKIPPING idle CPU test: ${missing}`);

Deno.test({
  name: "idle switch uses under 5% of a core and wakes on kicks, not its 100 ms timer (threads: 2)",
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
      await pingAll(guests[0], "10.0.1.2", { count: 2 });

      await new Promise((r) => setTimeout(r, 2000)); // the workers notice they are idle
      const before = cpuSeconds(sw.pid);
      await new Promise((r) => setTimeout(r, 3000));
      const used = (cpuSeconds(sw.pid) - before) / 3;
      console.log(`  idle switch CPU: ${(used * 100).toFixed(1)}% of one core`);
      assert.ok(used < 0.05, `idle switch used ${(used * 100).toFixed(1)}% of a core`);

      const sleepsBefore = await workerSleeps(sw);
      const after = await pingAll(guests[1], "10.0.1.1", { count: 10, intervalSeconds: 0.5 });
      const median = medianRtt(after);
      const slept = (await workerSleeps(sw)) - sleepsBefore;
      console.log(
        `  10 pings 0.5 s apart after idle: median round trip ${median.toFixed(2)} ms ` +
          `(${after.rttsMs.join(", ")}); the workers slept ${slept} times meanwhile`,
      );
      assert.ok(
        slept >= 10,
        `the workers slept only ${slept} times: they did not sleep between pings`,
      );
      assert.ok(
        median < 40,
        `median round trip ${median} ms: woken by the 100 ms housekeeping timer, not by kicks`,
      );
    } finally {
      await Promise.allSettled(guests.map((g) => g.shutdown()));
      await sw.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
