// GET /flows: the flows the datapath used, with exact counts, from real vhost-user front-ends
// (tests/helpers/frontend.ts) on a running switch. No root needed.
import assert from "node:assert/strict";
import { createApp } from "../http/app.ts";
import { Switch } from "../switch/switch.ts";
import { parseTopology } from "../switch/topology.ts";
import { VhostFrontend, waitFor } from "../peers/vhost_frontend.ts";
import { BROADCAST, ethFrame } from "./helpers/frontend_harness.ts";

const A = "52:54:00:00:0a:01";
const B = "52:54:00:00:0b:01";

Deno.test("GET /flows counts every frame of each flow exactly, with its action", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vsw-flows-" });
  const sw = await Switch.start(
    parseTopology(
      JSON.stringify({
        name: "flows",
        threads: 2,
        ports: [
          { name: "vm1", type: "vhost-user", socket: `${dir}/vm1.sock` },
          { name: "vm2", type: "vhost-user", socket: `${dir}/vm2.sock` },
          {
            name: "vm3",
            type: "vhost-user",
            socket: `${dir}/vm3.sock`,
            vlan: { mode: "access", tag: 7 },
          },
        ],
      }),
      `${dir}/t.json`,
    ),
    () => {},
  );
  const app = createApp(sw);
  const flows = async (query = "") =>
    (await (await app.request(`/flows${query}`)).json()).flows as Record<string, unknown>[];
  const fes: VhostFrontend[] = [];
  try {
    for (const name of ["vm1", "vm2", "vm3"]) {
      const fe = await VhostFrontend.open(`${dir}/${name}.sock`);
      fes.push(fe);
      await fe.setup();
      fe.postRxBuffers(256);
      await waitFor(`${name} up`, () => sw.port(name)?.state === "connected");
    }
    const [fe1, fe2, fe3] = fes;
    fe2.send(ethFrame(BROADCAST, B, 60)); // vm1 (and not vm3, VLAN 7) sees it; B is learned
    await fe1.waitFrames(1);
    // 1000 unicast frames of 100 bytes vm1 -> vm2, in bursts of 100, then 3 broadcasts from vm3.
    for (let burst = 0; burst < 10; burst++) {
      for (let i = 0; i < 100; i++) fe1.send(ethFrame(B, A, 100, i));
      await fe2.waitFrames(100);
      fe1.reclaimTx();
      fe2.postRxBuffers(100);
    }
    // vm3 is an access port of VLAN 7: its broadcasts reach the trunks tagged; a frame it sends
    // tagged is dropped.
    for (let i = 0; i < 3; i++) fe3.send(ethFrame(BROADCAST, "52:54:00:00:0c:01", 64, i));
    const tagged = ethFrame(B, "52:54:00:00:0c:01", 64);
    tagged.set([0x81, 0x00, 0x00, 0x05, 0x88, 0xb5], 12);
    fe3.send(tagged);
    await waitFor("vm3's frames counted", () => sw.port("vm3")!.counters.rx_packets === 4);
    await waitFor("the flows", async () => (await flows()).length === 4);
    assert.deepEqual(await flows(), [
      {
        inPort: "vm1",
        vlan: 0,
        src: A,
        dst: B,
        actions: "output:vm2",
        action: "output",
        out: [{ port: "vm2", tag: "" }],
        packets: 1000,
        bytes: 100_000,
        lastUsedSeconds: (await flows())[0].lastUsedSeconds,
      },
      {
        inPort: "vm2",
        vlan: 0,
        src: B,
        dst: BROADCAST,
        actions: "flood:vm1",
        action: "flood",
        out: [{ port: "vm1", tag: "" }],
        packets: 1,
        bytes: 60,
        lastUsedSeconds: (await flows())[1].lastUsedSeconds,
      },
      {
        inPort: "vm3",
        vlan: -1,
        src: "52:54:00:00:0c:01",
        dst: B,
        actions: "drop(vlan)",
        action: "drop",
        out: [],
        dropReason: "vlan",
        packets: 1,
        bytes: 64,
        lastUsedSeconds: (await flows())[2].lastUsedSeconds,
      },
      {
        inPort: "vm3",
        vlan: 7,
        src: "52:54:00:00:0c:01",
        dst: BROADCAST,
        actions: "flood:push_vlan(7),vm1,push_vlan(7),vm2",
        action: "flood",
        out: [{ port: "vm1", tag: "push 7" }, { port: "vm2", tag: "push 7" }],
        packets: 3,
        bytes: 192,
        lastUsedSeconds: (await flows())[3].lastUsedSeconds,
      },
    ]);
    assert.deepEqual((await flows(`?mac=${B}&port=vm2`)).map((f) => f.inPort), ["vm1", "vm2"]);
    assert.deepEqual((await flows("?vlan=7")).map((f) => f.actions), [
      "flood:push_vlan(7),vm1,push_vlan(7),vm2",
    ]);
    assert.equal((await app.request("/flows?vlan=x")).status, 400);
    assert.equal((await app.request("/flows?maxIdle=-1")).status, 400);
  } finally {
    for (const fe of fes) fe.close();
    await sw.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
