// A vhost-user port added and deleted while a DPDK testpmd pair streams through the switch: a
// QEMU guest attaches to the new port and pings a guest on a port that was there from the start;
// the port is deleted mid-ping and mid-stream. Port 1 streams to port 0's MAC (learned: one
// output port); port 0 streams to a MAC no one has, so each of its frames is flooded to every
// port that is up, the new one too until it goes. The pair loses nothing: every frame testpmd
// sent on one port reached the other, by testpmd's own counters, and the switch counted no drop
// on either port of the pair. (Copies flooded to the deleted port as it went, and g1's replies to
// g3 still on their way, may be dropped: those are counted on vm3 and vm1, not on the pair's
// ports.) The stream runs during the whole attach of the new guest (negotiation, memory table,
// rings), its pings and the delete; about a minute here, most of it the guests booting.
import assert from "node:assert/strict";
import { createApp } from "../http/app.ts";
import { bootGuest, type Guest, guestToolsAvailable } from "../peers/qemu.ts";
import { Testpmd, testpmdAvailable, virtioUserVdev } from "../peers/testpmd.ts";
import type { FlowEntry } from "../switch/view.ts";
import { startSwitch, waitFor } from "./helpers/switch.ts";
import { PacedStream, type StreamCounts } from "./helpers/testpmd_stream.ts";

const missing = guestToolsAvailable() ?? testpmdAvailable();
if (missing) console.warn(`SKIPPING live port test with testpmd: ${missing}`);

const PMD0 = "02:00:00:00:17:00";
const PMD1 = "02:00:00:00:17:01";
const MAC1 = "52:54:00:00:17:01";
const MAC3 = "52:54:00:00:17:03";
/** Port 0 streams to a MAC no one has: the switch floods every such frame to every port. */
const NOBODY = "02:00:00:00:17:99";
/** Stream frame length (without FCS): in the virtio PMD's 1024..1518 size bin, which no guest
 * frame of this test reaches (ARP, 98-byte pings, IPv6 neighbour discovery). */
const FRAME = 1100;
/** Frames per port streamed before the add, between add and delete, and after the delete. */
const PHASE = 500;
/** Two TCG guests booting side by side took 41-65 s here at a load average of 7-12, 134-159 s at 15-16. */
const BOOT_MS = 300_000;

const dropsOf = (counters: Record<string, number>) =>
  Object.fromEntries(Object.entries(counters).filter(([k, v]) => k.startsWith("drop_") && v));

Deno.test({
  name: "a port added and deleted while testpmd streams: its guest pings, the pair loses nothing",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using ts = await startSwitch({
      name: "live-dpdk",
      http: { listen: "127.0.0.1:0" },
      ports: ["p0", "p1", "vm1"].map((name) => ({
        name,
        type: "vhost-user",
        socket: `$DIR/${name}.sock`,
      })),
    });
    const app = createApp(ts.sw);
    // deno-lint-ignore no-explicit-any
    const req = async (method: string, path: string, body?: unknown): Promise<any> => {
      const res = await app.request(path, {
        method,
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        headers: { "Content-Type": "application/json" },
      });
      return { status: res.status, json: await res.json() };
    };
    const counters = async (port: string): Promise<Record<string, number>> => {
      const r = await req("GET", `/ports/${port}`);
      assert.equal(r.status, 200, JSON.stringify(r.json));
      return r.json.counters;
    };

    await using fe = await Testpmd.launch({
      name: "pair",
      lcores: "0@1,1@0",
      vdevs: [PMD0, PMD1].map((mac, index) =>
        virtioUserVdev({ index, path: `${ts.dir}/p${index}.sock`, mac })
      ),
      args: [
        "--forward-mode=rxonly",
        `--eth-peer=0,${NOBODY}`,
        `--eth-peer=1,${PMD0}`,
        `--txpkts=${FRAME}`,
        // `start` would otherwise drain (and count) what arrived while forwarding was stopped.
        "--no-flush-rx",
      ],
    });
    await fe.waitLinkUp([0, 1]);
    const t0 = performance.now();
    const mark = (what: string) =>
      console.log(`  ${((performance.now() - t0) / 1000).toFixed(1)} s: ${what}`);
    // Direction 0 -> 1: frames testpmd's port 0 sent that the switch has not taken yet, and
    // frames the switch delivered to port 1 that testpmd has not received yet; and the reverse.
    const onTheWay = async (c: StreamCounts): Promise<[number, number]> => {
      const [s0, s1] = [await counters("p0"), await counters("p1")];
      return [
        c.sent[0] - s0.rx_packets + s1.tx_packets - c.receivedAll[1],
        c.sent[1] - s1.rx_packets + s0.tx_packets - c.receivedAll[0],
      ];
    };
    await using stream = new PacedStream(fe, { onTheWay }).start();

    const guests: Guest[] = [];
    /** The stream's counts when vm3 was added, when it was deleted, and after that. */
    const at: Record<string, StreamCounts> = {};
    try {
      at.add = await stream.waitSent(PHASE);
      const added = await req("POST", "/ports", {
        name: "vm3",
        type: "vhost-user",
        socket: `${ts.dir}/vm3.sock`,
      });
      assert.equal(added.status, 200, JSON.stringify(added.json));
      guests.push(
        ...await Promise.all([
          bootGuest({
            name: "t17g1",
            nics: [{ socket: `${ts.dir}/vm1.sock`, mac: MAC1 }],
            ip: "10.0.17.1/24",
            bootTimeoutMs: BOOT_MS,
          }),
          bootGuest({
            name: "t17g3",
            nics: [{ socket: `${ts.dir}/vm3.sock`, mac: MAC3 }],
            ip: "10.0.17.3/24",
            bootTimeoutMs: BOOT_MS,
          }),
        ]),
      );
      mark("guests booted");
      const g3 = guests[1];
      const first = await g3.run("ping -c 3 -W 5 10.0.17.1", 60_000);
      assert.match(first.output, /3 packets received/, `${first.output}\n${ts.logs.join("\n")}`);

      // Delete vm3 while g3 pings g1 and the pair streams.
      at.delete = await stream.waitSent(PHASE);
      const vm3rx = (await counters("vm3")).rx_packets;
      const during = g3.run("ping -c 20 -i 0.3 -W 1 10.0.17.1", 60_000);
      await waitFor(
        "g3's pings reaching the switch",
        async () => (await counters("vm3")).rx_packets >= vm3rx + 2,
        30_000,
        50,
      );
      mark("deleting vm3");
      const deleted = await req("DELETE", "/ports/vm3");
      assert.deepEqual(deleted.json, { changed: ["port vm3 deleted"], notApplied: [] });
      // Its counters to the end, drops included, are in the log.
      const last = ts.logs.find((l) => l.includes("port vm3's last counters: "));
      assert.match(last ?? "", /rx_packets \d+, rx_bytes \d+, tx_packets \d+/, ts.logs.join("\n"));
      console.log(`  ${last}`);
      const late = await during;
      assert.doesNotMatch(late.output, /20 packets received/, late.output);
      at.afterDelete = await stream.waitSent(PHASE);
      await waitFor(
        "g3's link down",
        async () =>
          (await g3.run("cat /sys/class/net/eth0/carrier", 10_000)).output.trim().endsWith("0"),
        30_000,
      );
      assert.deepEqual((await req("GET", `/fdb?mac=${MAC3}`)).json.entries, []);
      assert.equal((await req("GET", "/ports/vm3")).status, 404);
    } finally {
      await Promise.all(guests.map((g) => g.kill()));
    }

    // Receive until the switch has handed testpmd everything it delivered, and has taken
    // everything testpmd sent.
    const settled = async (c: StreamCounts) => {
      const [s0, s1] = [await counters("p0"), await counters("p1")];
      return s0.rx_packets === c.sent[0] && s1.rx_packets === c.sent[1] &&
        s0.tx_packets === c.receivedAll[0] && s1.tx_packets === c.receivedAll[1];
    };
    mark("draining");
    const end = await stream.stop(settled);
    mark("drained");
    const [p0, p1] = [await counters("p0"), await counters("p1")];
    const nonzero = (c: Record<string, number>) =>
      Object.fromEntries(Object.entries(c).filter(([, v]) => v));
    const detail = JSON.stringify({ at, end, p0: nonzero(p0), p1: nonzero(p1) }, null, 1);
    console.log(
      `  testpmd streamed ${end.sent[0]} + ${end.sent[1]} frames in ${end.rounds} rounds ` +
        `(${at.add.sent} at the add, ${at.delete.sent} at the delete, ${at.afterDelete.sent} after)`,
    );
    assert.deepEqual(end.sentOther, [0, 0], detail);
    // The switch took every frame testpmd sent, and testpmd received all the switch delivered.
    assert.deepEqual([p0.rx_packets, p1.rx_packets], end.sent, detail);
    assert.deepEqual([p0.tx_packets, p1.tx_packets], end.receivedAll, detail);
    // Nothing dropped on the pair's ports, and every frame of the stream reached the other port:
    // frames sent on one = stream frames received on the other + the drops counted there (none).
    assert.deepEqual([dropsOf(p0), dropsOf(p1)], [{}, {}], detail);
    assert.deepEqual([end.received[1], end.received[0]], end.sent, detail);

    // The flow table counted every frame of the stream, in each direction, through the add and
    // the delete: port 0's frames in flood flows (to p1 alone while the guests were down, then
    // with vm1, with vm3), port 1's in an output flow (after a flood flow, if its first frames
    // came before port 0's MAC was learned).
    const { flows } = (await req("GET", "/flows?maxIdle=3600")).json as { flows: FlowEntry[] };
    const sum = (inPort: string, src: string, dst: string) =>
      flows.filter((f) => f.inPort === inPort && f.src === src && f.dst === dst)
        .reduce((a, f) => [a[0] + f.packets, a[1] + f.bytes], [0, 0]);
    assert.deepEqual(
      [sum("p0", PMD0, NOBODY), sum("p1", PMD1, PMD0)],
      [[end.sent[0], end.sent[0] * FRAME], [end.sent[1], end.sent[1] * FRAME]],
      JSON.stringify(flows, null, 1),
    );
    // Port 0's frames were flooded to vm3 too while it was there: the delete took a port out of
    // a flood the pair's frames were in.
    assert.ok(
      flows.some((f) => f.inPort === "p0" && f.out.length === 3 && f.packets > 0),
      JSON.stringify(flows, null, 1),
    );
  },
});
