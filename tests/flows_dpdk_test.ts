// GET /flows against DPDK testpmd (virtio-user front-ends): a known number of frames each way,
// and the flow counts match them exactly.
import assert from "node:assert/strict";
import { createApp } from "../http/app.ts";
import { ethFrame } from "../peers/pcap.ts";
import { exchangeFrames, testpmdAvailable } from "../peers/testpmd.ts";
import type { FlowEntry } from "../switch/view.ts";
import { startSwitch } from "./helpers/switch.ts";

const missing = testpmdAvailable({ pcap: true });
if (missing) console.warn(`SKIPPING DPDK flow test: ${missing}`);

const MAC0 = "02:00:00:00:00:01";
const MAC1 = "02:00:00:00:00:02";

Deno.test({
  name: "testpmd sends 200 and 120 frames: /flows counts exactly those, per direction",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using ts = await startSwitch({
      name: "flows-dpdk",
      http: { listen: "127.0.0.1:0" },
      ports: ["p0", "p1"].map((name) => ({
        name,
        type: "vhost-user",
        socket: `$DIR/${name}.sock`,
      })),
    });
    // Each side announces itself first (a broadcast), so the rest is unicast both ways.
    const frames = (src: string, dst: string, n: number, length: number) => [
      ethFrame({ src, dst: "ff:ff:ff:ff:ff:ff", length: 60, seq: 0 }),
      ...Array.from({ length: n }, (_, i) => ethFrame({ src, dst, length, seq: i + 1 })),
    ];
    const send: [Uint8Array[], Uint8Array[]] = [
      frames(MAC0, MAC1, 200, 128),
      frames(MAC1, MAC0, 120, 1000),
    ];
    const result = await exchangeFrames({
      dir: ts.dir,
      sockets: [`${ts.dir}/p0.sock`, `${ts.dir}/p1.sock`],
      send,
      macs: [MAC0, MAC1],
      settleMs: 1000,
    });
    // testpmd sent every frame (vu0 is its port 1, vu1 its port 2); what it did not take in
    // time (its RX ring holds 256) the switch counted as dropped.
    assert.deepEqual([result.stats[1].txPackets, result.stats[2].txPackets], [201, 121]);
    const c = (p: string) => ts.sw.port(p)!.counters;
    assert.equal(c("p0").rx_packets, 201);
    assert.equal(c("p1").rx_packets, 121);
    assert.equal(result.received[1].length + c("p1").drop_no_buffer, 201);
    assert.equal(result.received[0].length + c("p0").drop_no_buffer, 121);
    const { flows } = await (await createApp(ts.sw).request("/flows?maxIdle=3600")).json() as {
      flows: FlowEntry[];
    };
    const sum = (pred: (f: FlowEntry) => boolean) =>
      flows.filter(pred).reduce((a, f) => [a[0] + f.packets, a[1] + f.bytes], [0, 0]);
    // The first unicast frames may be flooded while the other side is not yet learned: every
    // frame is in exactly one flow of its direction, and all of them are in the flows.
    assert.deepEqual(sum((f) => f.inPort === "p0" && f.src === MAC0 && f.dst === MAC1), [
      200,
      200 * 128,
    ]);
    assert.deepEqual(sum((f) => f.inPort === "p1" && f.src === MAC1 && f.dst === MAC0), [
      120,
      120 * 1000,
    ]);
    assert.deepEqual(sum((f) => f.dst === "ff:ff:ff:ff:ff:ff"), [2, 120]);
    // Once learned, the pair's frames go straight to the other port.
    assert.ok(
      flows.some((f) => f.inPort === "p0" && f.actions === "output:p1" && f.packets > 0),
      JSON.stringify(flows),
    );
  },
});
