// A datapath worker whose loop throws: the failure is logged with the port and the cause, that
// port is disconnected, the worker goes on forwarding for the other ports, and /stats counts it.
// The fault is injected by handing the worker a state it must never get (a frame limit beyond
// its gather buffers, as a bug in the control plane would), so that the next long chained frame
// makes the copy throw inside the loop.
import assert from "node:assert/strict";
import { MAX_GSO_FRAME } from "../ports/port.ts";
import { VhostFrontend, waitFor } from "../peers/vhost_frontend.ts";
import { BROADCAST, ethFrame, startSwitch } from "./helpers/frontend_harness.ts";

const MAC_A = "52:54:00:00:0a:01";
const MAC_B = "52:54:00:00:0b:01";

Deno.test({
  name: "a worker that throws logs the port and cause, drops that port and keeps forwarding",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const h = await startSwitch([{ name: "a" }, { name: "b" }, { name: "c" }], 1);
    const a = await VhostFrontend.open(h.sock("a"));
    const b = await VhostFrontend.open(h.sock("b"));
    const c = await VhostFrontend.open(h.sock("c"));
    try {
      await waitFor("port a running", () => h.state("a") === "connected");
      const state = h.sw.portControl.vhostPort("a")!.connection!.device.running!;
      await h.sw.datapath.applyPort(0, { ...state, maxFrame: 1 << 20 });
      // Longer than the worker's gather buffer, in several descriptors: gathering it throws.
      const big = MAX_GSO_FRAME + 2000;
      a.send(ethFrame(BROADCAST, MAC_A, big, 1), { chunk: 16000, at: a.slot(1, 0) });

      const line = await waitFor(
        "a log line naming the failure",
        () => h.logs.find((l) => l.includes("datapath worker 0 failed on port a")),
      );
      assert.match(line!, /RangeError/, "the cause is in the log line");
      await h.waitDetached("a");
      assert.equal(h.sw.stats().workers[0].failures, 1);

      // The worker goes on for the other ports.
      c.postRxBuffers(8);
      const frame = ethFrame(BROADCAST, MAC_B, 200, 2);
      b.send(frame);
      assert.deepEqual((await c.waitFrames(1, 3000))[0], frame);
      // And port a takes a new front-end.
      a.close();
      const again = await VhostFrontend.open(h.sock("a"));
      again.postRxBuffers(8);
      b.send(frame);
      assert.deepEqual((await again.waitFrames(1, 3000))[0], frame);
      again.close();
    } finally {
      for (const fe of [a, b, c]) fe.close();
      await h.stop();
    }
  },
});
