// Instructions per frame of the datapath's burst loop, counted by valgrind's callgrind: unlike
// CPU time, the count does not move with the host's load, so a change to the per-frame path can
// be measured on a busy machine. The loop is bench/datapath_micro.ts's (guest A's TX ring full of
// 64 B frames to guest B, whose RX ring is full of empty buffers; split rings, one flow, flow
// counting on and room for MAX_PORTS ports as the switch runs it). The script starts itself
// under callgrind, lets V8 optimise the loop, zeroes the counts, runs `--bursts` bursts of 32
// frames, dumps the counts and divides (other threads count too: expect a few percent of noise
// between runs).
//   deno run --allow-all bench/datapath_icount.ts [--in-order] [--packed] [--size 64] [--bursts 2000]
// Needs valgrind (Debian package `valgrind`); takes a few minutes.
import { parseArgs } from "node:util";
import { CounterTable } from "../ports/counters.ts";
import { VIRTIO_NET_HDR_LEN, VirtioNetDatapath } from "../ports/vhost_user/virtio_net.ts";
import { Bridge, type PortVlanConfig } from "../switch/bridge.ts";
import { Forwarder } from "../switch/forward.ts";
import { createFlowBuffer, FlowCounter } from "../switch/flows.ts";
import { MAX_PORTS } from "../switch/topology.ts";
import { SyntheticGuest } from "./synthetic_guest.ts";

const { values } = parseArgs({
  options: {
    "in-order": { type: "boolean", default: false },
    packed: { type: "boolean", default: false },
    size: { type: "string", default: "64" },
    bursts: { type: "string", default: "2000" },
    warm: { type: "string", default: "10000" },
    child: { type: "boolean", default: false },
  },
});
const BURST = 32;
const MARK_WARM = "icount: warm";
const MARK_DONE = "icount: done";

/** The child: the loop itself, marking on stderr where the counted part starts and ends. */
async function child(): Promise<void> {
  const frameLen = Number(values.size) - 4;
  const guest = { frameLen, packed: values.packed, inOrder: values["in-order"] };
  const a = new SyntheticGuest({ ...guest, rx: false });
  const b = new SyntheticGuest({ ...guest, rx: true });
  const vlans: (PortVlanConfig | undefined | null)[] = [undefined, undefined];
  while (vlans.length < MAX_PORTS) vlans.push(null);
  const bridge = new Bridge({ vlans, statics: [{ mac: "52:54:00:00:00:02", vlan: 0, port: 1 }] });
  bridge.setLinkUp(0, true);
  bridge.setLinkUp(1, true);
  const counters = CounterTable.create(1, MAX_PORTS);
  const portA = new VirtioNetDatapath(VIRTIO_NET_HDR_LEN, true, 9018, counters.block(0, 0));
  const portB = new VirtioNetDatapath(VIRTIO_NET_HDR_LEN, true, 9018, counters.block(0, 1));
  portA.txQueues.push(a.queue(1));
  portB.setRxQueue(b.queue(0));
  const blocks = Array.from({ length: MAX_PORTS }, (_, p) => counters.block(0, p));
  const fw = new Forwarder(bridge, MAX_PORTS, blocks);
  fw.flows = new FlowCounter(createFlowBuffer());
  fw.polled = [{ index: 0, port: portA }];
  fw.targets[0] = portA;
  fw.targets[1] = portB;
  const now = Math.floor(Date.now() / 1000);
  const step = () => {
    a.post(BURST);
    b.post(BURST);
    return fw.poll(now);
  };
  const warm = Number(values.warm);
  const bursts = Number(values.bursts);
  let frames = 0;
  for (let i = 0; i < warm; i++) frames += step();
  // The parent zeroes the counts on this line; nothing runs while it does.
  console.error(MARK_WARM);
  await new Promise((r) => setTimeout(r, 10_000));
  for (let i = 0; i < bursts; i++) frames += step();
  console.error(MARK_DONE);
  await new Promise((r) => setTimeout(r, 10_000));
  const sent = counters.port(1).tx_packets;
  if (frames !== (warm + bursts) * BURST || sent !== frames) {
    throw new Error(`lost frames: ${frames} moved, ${sent} delivered`);
  }
}

/** The parent: runs the child under callgrind and reads the counts of the marked part. */
async function parent(): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "icount-" });
  const args = Deno.args.filter((a) => a !== "--child");
  const proc = new Deno.Command("valgrind", {
    args: [
      "--tool=callgrind",
      "--smc-check=all-non-file", // V8 writes the code it runs
      `--callgrind-out-file=${dir}/cg.out`,
      Deno.execPath(),
      "run",
      "--allow-all",
      // Optimised code compiled on the running thread, at the same point of every run: compiled
      // concurrently, under valgrind (which runs one thread at a time) it landed at a different
      // point each run and the count of one commit moved between 2100 and 4600.
      "--v8-flags=--no-concurrent-recompilation",
      new URL(import.meta.url).pathname,
      "--child",
      ...args,
    ],
    stderr: "piped",
    stdout: "inherit",
  }).spawn();
  const control = (op: string) =>
    new Deno.Command("callgrind_control", { args: [op, String(proc.pid)], stdout: "null" })
      .output();
  let seen = "";
  const decoder = new TextDecoder();
  for await (const chunk of proc.stderr) {
    seen += decoder.decode(chunk, { stream: true });
    if (seen.includes(MARK_WARM)) {
      await control("-z");
      seen = seen.slice(seen.indexOf(MARK_WARM) + MARK_WARM.length);
    }
    if (seen.includes(MARK_DONE)) {
      await control("-d");
      seen = "";
    }
  }
  const status = await proc.status;
  if (!status.success) throw new Error(`the loop under callgrind failed (${status.code})`);
  const dump = await Deno.readTextFile(`${dir}/cg.out.1`);
  const ir = Number(/^summary: (\d+)/m.exec(dump)?.[1]);
  const frames = Number(values.bursts) * BURST;
  console.log(
    `${(ir / frames).toFixed(0)} instructions per frame (${values.size} B, ` +
      `${values.packed ? "packed" : "split"} rings${values["in-order"] ? ", IN_ORDER" : ""}, ` +
      `${frames} frames counted)`,
  );
  await Deno.remove(dir, { recursive: true });
}

if (values.child) await child();
else await parent();
