// Proves the pcap-in/pcap-out frame exchange against DPDK's own vhost-user back-end
// (testpmd net_vhost0 <-> net_vhost1 in io mode, a plain wire), before tests trust it
// with our switch.  Run: deno run --allow-all tests/helpers/testpmd_selfcheck.ts
import { checkTestFrame, diffFrames, ethFrame } from "../../peers/pcap.ts";
import {
  exchangeFrames,
  type ExchangeOptions,
  Testpmd,
  testpmdAvailable,
  vhostVdev,
} from "../../peers/testpmd.ts";

const MAC0 = "02:00:00:00:00:01";
const MAC1 = "02:00:00:00:00:02";
/** Frame lengths without FCS: 60 is a 64-byte wire frame, 1514 a 1518-byte one. */
const LENGTHS = [60, 64, 65, 128, 511, 1514, 1518, 1519, 2000, 2048, 2049, 4000, 9000, 9018];

/**
 * Ascending lengths plus one tagged frame among the small ones: with mrg_rxbuf=0 DPDK's
 * vhost enqueue stops at the first frame that does not fit, and testpmd drops the rest
 * of that burst, so frames after an oversized one would be lost too.
 */
function frames(src: string, dst: string, base: number): Uint8Array[] {
  const out = LENGTHS.map((length, i) => ethFrame({ src, dst, length, seq: base + i }));
  out.splice(6, 0, ethFrame({ src, dst, length: 1518, vlan: { id: 100, pcp: 5 }, seq: base + 99 }));
  return out;
}

interface Scenario {
  name: string;
  virtio: ExchangeOptions["virtio"];
  args?: string[];
  /** The back-end connects to sockets the front-end listens on. */
  backendClient?: boolean;
  /** Largest frame expected to pass; longer ones must be dropped, not truncated. */
  maxLen: number;
}

const scenarios: Scenario[] = [
  { name: "split ring, mrg_rxbuf=1", virtio: { mrgRxbuf: true }, maxLen: Infinity },
  // Without mergeable buffers each frame must fit one mbuf: 2176 B less 128 B headroom.
  { name: "split ring, mrg_rxbuf=0", virtio: { mrgRxbuf: false }, maxLen: 2048 },
  {
    name: "split ring, mrg_rxbuf=0, --mbuf-size=10240",
    virtio: { mrgRxbuf: false },
    args: ["--mbuf-size=10240"],
    maxLen: 10240 - 128,
  },
  {
    name: "front-end server=1, back-end client=1, mrg_rxbuf=1",
    virtio: { mrgRxbuf: true, server: true },
    backendClient: true,
    maxLen: Infinity,
  },
  {
    name: "packed ring, in_order=1, mrg_rxbuf=1, max-pkt-len 9018 + per-port scatter",
    virtio: { mrgRxbuf: true, packedVq: true, inOrder: true },
    args: ["--max-pkt-len=9018"],
    maxLen: Infinity,
  },
];

const timings: string[] = [];
async function timed<T>(what: string, f: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  const r = await f();
  timings.push(`${(performance.now() - t0).toFixed(0).padStart(6)} ms  ${what}`);
  return r;
}

async function run(s: Scenario, dir: string) {
  const sockets: [string, string] = [`${dir}/s0.sock`, `${dir}/s1.sock`];
  const launchBackend = () =>
    timed(`${s.name}: launch back-end`, async () => {
      const be = await Testpmd.launch({
        name: "backend",
        lcores: "0@0,1@1",
        vdevs: sockets.map((iface, index) => vhostVdev({ index, iface, client: s.backendClient })),
        args: ["--forward-mode=io"],
      });
      await be.start();
      return be;
    });
  // A listening back-end must be up before the front-end connects, a connecting one after.
  let backend = s.backendClient ? undefined : await launchBackend();
  const scatter = s.args?.some((a) => a.startsWith("--max-pkt-len"));
  try {
    const send: [Uint8Array[], Uint8Array[]] = [frames(MAC0, MAC1, 0), frames(MAC1, MAC0, 1000)];
    const fits = (f: Uint8Array) => f.length <= s.maxLen;
    const want = [send[1].filter(fits), send[0].filter(fits)];
    const t0 = performance.now();
    const marks: string[] = [];
    const mark = (what: string) => marks.push(`${what} +${(performance.now() - t0).toFixed(0)}`);
    const res = await timed(`${s.name}: exchange`, () =>
      exchangeFrames({
        dir,
        sockets,
        send,
        macs: [MAC0, MAC1],
        virtio: s.virtio,
        args: s.args,
        expect: [want[0].length, want[1].length],
        testpmd: { allowPortFailure: scatter },
        launching: async () => void (backend ??= await launchBackend()),
        launched: async (fe) => {
          mark("front-end up");
          if (scatter) await enableScatter(fe);
        },
        linked: async () => {
          await backend!.waitLinkUp();
          mark("links up");
        },
      }));
    timings.push(`          (${marks.join(", ")}, done +${(performance.now() - t0).toFixed(0)})`);
    // virtio_user0 receives what virtio_user1 sent, and the other way round.
    for (const i of [0, 1]) {
      const diff = diffFrames(want[i], res.received[i]);
      if (diff) throw new Error(`${s.name}: virtio_user${i} received wrong frames: ${diff}`);
      res.received[i].forEach(checkTestFrame);
    }
    const stats = await backend!.portStats();
    const dropped = send[0].length + send[1].length - want[0].length - want[1].length;
    const txDropped = stats[0].rxPackets + stats[1].rxPackets - stats[0].txPackets -
      stats[1].txPackets;
    if (txDropped !== dropped) throw new Error(`${s.name}: back-end dropped ${txDropped}`);
    const sizes = want[1].map((f) => f.length);
    console.log(
      `ok  ${s.name}: ${sizes.length}+${want[0].length} frames byte-identical, ` +
        `largest ${Math.max(...sizes)} B, ${dropped} longer ones dropped by the back-end`,
    );
  } finally {
    await timed(`${s.name}: back-end quit`, async () => await backend?.quit());
  }
}

/** --enable-scatter would also hit the pcap ports, which lack the capability. */
async function enableScatter(fe: Testpmd) {
  await fe.cmd("port stop all");
  for (const p of [1, 2]) await fe.cmd(`port config ${p} rx_offload scatter on`);
  const out = await fe.cmd("port start all");
  if (/fail/i.test(out)) throw new Error(`port start with scatter failed:\n${out}`);
}

const why = testpmdAvailable({ pcap: true });
if (why) {
  console.error(`SKIP: ${why}`);
  Deno.exit(0);
}
const root = await Deno.makeTempDir({ prefix: "testpmd-selfcheck-" });
let failed = false;
try {
  for (const [i, s] of scenarios.entries()) {
    // A fresh directory per scenario: a killed vhost server leaves its socket file behind.
    const dir = `${root}/${i}`;
    await Deno.mkdir(dir);
    await run(s, dir);
  }
} catch (e) {
  failed = true;
  console.error(`FAIL: ${e instanceof Error ? e.message : e}`);
} finally {
  await Deno.remove(root, { recursive: true });
  console.log(`timings:\n${timings.join("\n")}`);
}
Deno.exit(failed ? 1 : 0);
