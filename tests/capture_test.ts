// Capture on a port yields a pcap stream of what passed it, both directions, exact bytes.
import assert from "node:assert/strict";
import { decodePcap, ethFrame } from "../peers/pcap.ts";
import { exchangeFrames, testpmdAvailable } from "../peers/testpmd.ts";
import { startSwitch } from "./helpers/switch.ts";

const missing = testpmdAvailable({ pcap: true });
if (missing) console.warn(`SKIPPING capture test: ${missing}`);

const MAC0 = "02:00:00:00:00:01";
const MAC1 = "02:00:00:00:00:02";

Deno.test({
  name: "capture streams the frames passing a port as pcap, both directions",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using ts = await startSwitch({
      name: "cap",
      http: { listen: "127.0.0.1:0" },
      ports: ["p0", "p1"].map((name) => ({
        name,
        type: "vhost-user",
        socket: `$DIR/${name}.sock`,
      })),
    });
    assert.equal(ts.sw.capture("nope", {}), undefined);
    const abort = new AbortController();
    const stream = ts.sw.capture("p0", { maxFrames: 10, seconds: 30, signal: abort.signal })!;
    const chunks: Uint8Array[] = [];
    const reading = (async () => {
      for await (const c of stream) chunks.push(c);
    })();
    await new Promise((r) => setTimeout(r, 200)); // the tap is installed before traffic starts
    const send: [Uint8Array[], Uint8Array[]] = [
      [1, 2, 3].map((seq) => ethFrame({ src: MAC0, dst: MAC1, length: 100 + seq, seq })),
      [4, 5].map((seq) => ethFrame({ src: MAC1, dst: MAC0, length: 200 + seq, seq, vlan: 7 })),
    ];
    await exchangeFrames({
      dir: ts.dir,
      sockets: [`${ts.dir}/p0.sock`, `${ts.dir}/p1.sock`],
      send,
      macs: [MAC0, MAC1],
      expect: [2, 3],
    });
    await new Promise((r) => setTimeout(r, 300));
    abort.abort();
    await reading;
    const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    chunks.reduce((off, c) => (bytes.set(c, off), off + c.length), 0);
    const pcap = decodePcap(bytes);
    const key = (f: Uint8Array) => [...f].join(",");
    const got = pcap.packets.map((p) => key(p.data)).sort();
    // Received on p0 from virtio_user0, and transmitted on p0 to it (the tag kept: a trunk port).
    const want = [...send[0], ...send[1]].map(key).sort();
    assert.deepEqual(got, want);
    assert.ok(pcap.packets.every((p) => p.tsSec > 1_600_000_000), "timestamps are wall-clock");
  },
});
