// A worker that polls an AF_PACKET ring sleeps whenever it has nothing to do, with traffic or
// without: the ring's doorbell socket wakes it for every frame (a TPACKET_V3 socket itself
// turns readable only when the kernel hands over a block, 4-8 ms late), so it needs neither
// 1 ms naps while frames are recent nor polling between them. The veth has IPv6 off and no peer
// that talks: nothing arrives unasked.
import assert from "node:assert/strict";
import { createVethNetns, netnsSkipReason, run } from "../peers/netns.ts";
import { startSwitch } from "./helpers/switch.ts";

const missing = netnsSkipReason();
if (missing) console.warn(`SKIPPING af-packet idle test: ${missing}`);

Deno.test({
  name: "af-packet: a worker sleeps between frames and every frame wakes it",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using ns = await createVethNetns({ nsAddr: "10.31.0.2/24" });
    await ns.waitOperUp();
    await using ts = await startSwitch({
      name: "idle",
      threads: 1,
      http: { listen: "127.0.0.1:0" },
      ports: [{ name: "up", type: "af-packet", interface: ns.hostIf }],
    });
    const worker = () => ts.sw.stats().workers[0];
    // Quiet from the start: 100 ms sleeps (about 20 in 2 s).
    await new Promise((r) => setTimeout(r, 2500));
    const before = worker().sleeps;
    await new Promise((r) => setTimeout(r, 2000));
    const quiet = worker().sleeps - before;
    assert.ok(quiet < 200, `${quiet} sleeps in 2 s with no traffic (the worker never slept)`);
    // 40 frames, 50 ms apart, to a MAC nobody has (flooded to no other port). Each wakes the
    // worker from its sleep: a few sleeps per frame (one more when its ring block is handed
    // over), where napping 1 ms at a time, as a worker did without the doorbell, made 500-2000
    // in these 2 s however loaded the host.
    await ns.exec([
      "ip",
      "neigh",
      "replace",
      "10.31.0.9",
      "lladdr",
      "02:00:00:31:00:09",
      "dev",
      ns.nsIf,
    ]);
    const s0 = worker();
    await ns.exec(["sh", "-c", `busybox ping -c 40 -i 0.05 -w 10 10.31.0.9 >/dev/null || true`]);
    const s1 = worker();
    const frames = s1.frames - s0.frames;
    const sleeps = s1.sleeps - s0.sleeps;
    assert.ok(frames >= 40, `the worker moved ${frames} frames of the 40 sent`);
    assert.ok(sleeps >= 20, `${sleeps} sleeps during 40 frames 50 ms apart: the worker polled`);
    assert.ok(sleeps < 300, `${sleeps} sleeps during 40 frames 50 ms apart: the worker napped`);
  },
});

Deno.test({
  name:
    "af-packet: a worker whose interface is deleted goes on sleeping (its socket's error taken)",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using ns = await createVethNetns({ nsAddr: "10.32.0.2/24" });
    await ns.waitOperUp();
    await using ts = await startSwitch({
      name: "gone",
      threads: 1,
      http: { listen: "127.0.0.1:0" },
      ports: [{ name: "up", type: "af-packet", interface: ns.hostIf }],
    });
    const worker = () => ts.sw.stats().workers[0];
    await new Promise((r) => setTimeout(r, 500));
    // The ring's socket now holds ENETDOWN and polls as in error until it is read: a worker
    // that only slept on it would wake at once, thousands of times a second, for good.
    await run("ip", ["link", "del", ns.hostIf]);
    await new Promise((r) => setTimeout(r, 500));
    const before = worker().sleeps;
    await new Promise((r) => setTimeout(r, 2000));
    const sleeps = worker().sleeps - before;
    assert.ok(sleeps < 200, `${sleeps} sleeps in 2 s after the interface went away: it spun`);
  },
});
