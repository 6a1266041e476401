// DPDK virtio-user with a large -m: its memory is one memfd region of 4.25 GiB, and DPDK's allocator
// carves the rings and the mbuf pool from the top of it, beyond 4 GiB. Frames of every size go
// through the switch both ways and are compared byte for byte.
import assert from "node:assert/strict";
import { diffFrames, ethFrame } from "../peers/pcap.ts";
import { exchangeFrames, testpmdAvailable } from "../peers/testpmd.ts";
import { startSwitch } from "./helpers/switch.ts";

const missing = testpmdAvailable({ pcap: true });
if (missing) console.warn(`SKIPPING DPDK tests: ${missing}`);

const MAC0 = "02:00:00:00:00:01";
const MAC1 = "02:00:00:00:00:02";
const LENGTHS = [60, 64, 128, 190, 200, 1514];
const MEM_MB = 4352;

const frames = (src: string, dst: string, base: number) =>
  LENGTHS.map((length, i) => ethFrame({ src, dst, length, seq: base + i }));

Deno.test({
  name:
    `testpmd virtio-user with -m ${MEM_MB} (rings and mbufs above 4 GiB) exchanges exact frames`,
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using ts = await startSwitch({
      name: "dpdk-large",
      http: { listen: "127.0.0.1:0" },
      ports: ["p0", "p1"].map((name) => ({
        name,
        type: "vhost-user",
        socket: `$DIR/${name}.sock`,
      })),
    });
    const send: [Uint8Array[], Uint8Array[]] = [frames(MAC0, MAC1, 0), frames(MAC1, MAC0, 100)];
    let beyond4G = false;
    const result = await exchangeFrames({
      dir: ts.dir,
      sockets: [`${ts.dir}/p0.sock`, `${ts.dir}/p1.sock`],
      send,
      macs: [MAC0, MAC1],
      virtio: { mrgRxbuf: true },
      testpmd: { memMb: MEM_MB, startTimeoutMs: 120_000 },
      expect: [send[1].length, send[0].length],
      settleMs: 1000,
      linked: () => {
        for (const name of ["p0", "p1"]) {
          const state = ts.sw.portControl.vhostPort(name)!.connection!.device.running!;
          assert.ok(state.regions.some((r) => r.size > 2 ** 32), `${name}: no region > 4 GiB`);
          // The rings' offsets in their region: DPDK allocates from the top.
          beyond4G ||= state.queues.some((q) => q.desc.offset >= 2 ** 32);
        }
        return Promise.resolve();
      },
    });
    assert.ok(beyond4G, "expected rings beyond 4 GiB into DPDK's region");
    for (const i of [0, 1]) {
      const expected = send[1 - i];
      assert.equal(result.received[i].length, expected.length, ts.logs.join("\n"));
      assert.equal(diffFrames(expected, result.received[i]), null, `virtio_user${i}: other bytes`);
    }
    for (const port of ts.sw.ports()) assert.equal(port.counters.drop_bad_descriptor, 0);
  },
});
