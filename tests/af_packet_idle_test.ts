// An idle worker that polls an AF_PACKET ring: while frames are recent it naps 1 ms at a time (a
// TPACKET_V3 socket wakes a sleeper only when the kernel hands over a block, 4-8 ms here), and two
// seconds after the last frame it sleeps as every idle worker does, so an idle switch costs ~1% of
// a core rather than ~4%. The veth has IPv6 off and no peer that talks: nothing arrives unasked.
import assert from "node:assert/strict";
import { createVethNetns, netnsSkipReason } from "../peers/netns.ts";
import { startSwitch } from "./helpers/switch.ts";

const missing = netnsSkipReason();
if (missing) console.warn(`SKIPPING af-packet idle test: ${missing}`);

Deno.test({
  name: "af-packet: an idle worker naps after a frame, then sleeps",
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
    const sleepsIn = async (ms: number) => {
      const before = ts.sw.stats().workers[0].sleeps;
      await new Promise((r) => setTimeout(r, ms));
      return ts.sw.stats().workers[0].sleeps - before;
    };
    // Quiet from the start: 100 ms sleeps (about 20 in 2 s), not 1 ms naps (~1000 or more).
    await new Promise((r) => setTimeout(r, 2500));
    const quiet = await sleepsIn(2000);
    assert.ok(
      quiet < 200,
      `${quiet} sleeps in 2 s with no traffic (the worker never stopped napping)`,
    );
    // A frame arrives (an ARP request the switch receives on its port): naps resume.
    await ns.exec(["sh", "-c", "busybox arping -c 1 -w 1 -I " + ns.nsIf + " 10.31.0.9 || true"]);
    const recent = await sleepsIn(1000);
    assert.ok(recent >= 30, `${recent} sleeps in the second after a frame`);
    await new Promise((r) => setTimeout(r, 2500));
    const again = await sleepsIn(2000);
    assert.ok(again < 200, `${again} sleeps in 2 s after the naps should have stopped`);
  },
});
