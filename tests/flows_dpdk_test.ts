// GET /flows against DPDK testpmd (virtio-user front-ends): a known number of frames each way,
// and the flow counts match them exactly.
import assert from "node:assert/strict";
import { createApp } from "../http/app.ts";
import { ethFrame } from "../peers/pcap.ts";
import { exchangeFrames, testpmdAvailable, virtioPort } from "../peers/testpmd.ts";
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

// Three testpmd ports, six directions, each with its own frame count and length (interleaved
// per sender): /flows must show each ordered pair's frames, exactly, and their output flow.
const MACS = ["02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"];
/** [from, to, frames, length]: each sender's total stays below its 256-entry TX ring. */
const PAIRS: [number, number, number, number][] = [
  [0, 1, 150, 128],
  [0, 2, 90, 200],
  [1, 0, 120, 1000],
  [1, 2, 60, 300],
  [2, 0, 30, 64],
  [2, 1, 75, 1514],
];

Deno.test({
  name: "three testpmd ports: /flows counts each ordered pair's frames exactly",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const names = ["p0", "p1", "p2"];
    await using ts = await startSwitch({
      name: "flows-dpdk3",
      http: { listen: "127.0.0.1:0" },
      ports: names.map((name) => ({ name, type: "vhost-user", socket: `$DIR/${name}.sock` })),
    });
    // Each port announces itself (a broadcast), then sends its pairs' frames round-robin.
    const send = MACS.map((src, from) => {
      const mine = PAIRS.filter(([f]) => f === from).map(([, to, n, length]) =>
        Array.from({ length: n }, (_, i) => ethFrame({ src, dst: MACS[to], length, seq: i + 1 }))
      );
      const frames = [ethFrame({ src, dst: "ff:ff:ff:ff:ff:ff", length: 60, seq: 0 })];
      for (let i = 0; mine.some((m) => i < m.length); i++) {
        for (const m of mine) if (i < m.length) frames.push(m[i]);
      }
      return frames;
    });
    const result = await exchangeFrames({
      dir: ts.dir,
      sockets: names.map((n) => `${ts.dir}/${n}.sock`),
      send,
      macs: MACS,
      settleMs: 1000,
    });
    const c = (p: string) => ts.sw.port(p)!.counters;
    const log = () => ts.logs.join("\n");
    // testpmd sent every frame, the switch took every one, and testpmd received all the switch
    // delivered (what did not fit in its receive ring the switch counted as no-buffer drops).
    for (const [i, name] of names.entries()) {
      assert.equal(result.stats[virtioPort(i)].txPackets, send[i].length, log());
      assert.equal(c(name).rx_packets, send[i].length);
      assert.equal(result.received[i].length, c(name).tx_packets);
    }
    const { flows } = await (await createApp(ts.sw).request("/flows?maxIdle=3600")).json() as {
      flows: FlowEntry[];
    };
    const show = JSON.stringify(flows, null, 1);
    for (const [from, to, n, length] of PAIRS) {
      const pair = flows.filter((f) =>
        f.inPort === names[from] && f.src === MACS[from] && f.dst === MACS[to]
      );
      const counted = pair.reduce((a, f) => [a[0] + f.packets, a[1] + f.bytes], [0, 0]);
      assert.deepEqual(counted, [n, n * length], `${names[from]} -> ${names[to]}\n${show}`);
      // Once the destination is learned, the pair's frames go to its port alone.
      assert.ok(
        pair.some((f) => f.actions === `output:${names[to]}` && f.packets > 0),
        `${names[from]} -> ${names[to]}\n${show}`,
      );
      // Frames that reached their destination: all of them, less that port's no-buffer drops.
      const got = result.received[to].filter((f) =>
        macOf(f, 6) === MACS[from] && macOf(f, 0) === MACS[to]
      ).length;
      assert.ok(n - c(names[to]).drop_no_buffer <= got && got <= n, `${got} of ${n}`);
    }
    const broadcasts = flows.filter((f) => f.dst === "ff:ff:ff:ff:ff:ff");
    assert.deepEqual(
      broadcasts.reduce((a, f) => [a[0] + f.packets, a[1] + f.bytes], [0, 0]),
      [3, 180],
    );
  },
});

function macOf(f: Uint8Array, at: number): string {
  return Array.from(f.subarray(at, at + 6), (b) => b.toString(16).padStart(2, "0")).join(":");
}
