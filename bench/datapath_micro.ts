// The JS inner loop alone, without scheduling noise: two synthetic guests in memfd memory
// (guest A's TX ring full of frames to B, guest B's RX ring full of empty buffers) and the
// real burst loop (Forwarder -> VirtioNetDatapath -> SplitQueue, Bridge, FDB) between them.
// Reports CPU ns/frame for 64 B and 1518 B frames, untagged and with a VLAN tag pushed, on split
// rings and on packed rings (--packed; --in-order sets VIRTIO_F_IN_ORDER on both guests' rings).
//   deno run --allow-all bench/datapath_micro.ts [--packed] [--in-order] [frame sizes, default 64 1518]
import { cpuUsage } from "node:process";
import { memfdCreate, mmap } from "../ffi/mem.ts";
import { CounterTable } from "../ports/counters.ts";
import { VIRTIO_NET_HDR_LEN, VirtioNetDatapath } from "../ports/vhost_user/virtio_net.ts";
import { DirtyLog } from "../ports/vhost_user/dirty_log.ts";
import { Bridge, type PortVlanConfig } from "../switch/bridge.ts";
import { Forwarder } from "../switch/forward.ts";
import { IngressGuard, type PortGuardSpec } from "../switch/port_guard.ts";
import { createPinned } from "../switch/port_security.ts";
import { clockUs, createBucket } from "../switch/token_bucket.ts";
import { createFlowBuffer, FlowCounter } from "../switch/flows.ts";
import { MAX_PORTS } from "../switch/topology.ts";
import { GUEST_MEMORY_SIZE, SyntheticGuest } from "./synthetic_guest.ts";

const BURST = 32;
const PACKED = Deno.args.includes("--packed");
const IN_ORDER = Deno.args.includes("--in-order");

/** A dirty log covering a synthetic guest's memory, as QEMU shares one during a migration. */
function dirtyLogFor(counters: Float64Array): DirtyLog {
  const size = Math.ceil(GUEST_MEMORY_SIZE / 4096 / 8);
  const map = mmap(size, { fd: memfdCreate("bench-log", size) });
  return new DirtyLog({ mapAddress: map.address, mapLength: size, dataOffset: 0, size }, counters);
}

/**
 * `slots`: port numbers the bridge and forwarder have room for (the switch makes MAX_PORTS, so
 * ports can be added while it runs; the others are free). `flows`: count flows (flows.ts).
 */
function run(
  frameLen: number,
  vlanB: PortVlanConfig | undefined,
  slots = 2,
  flows = false,
  guard: PortGuardSpec | null = null,
  dirtyLog = false,
): number {
  const macA = [0x52, 0x54, 0, 0, 0, 1];
  const macB = [0x52, 0x54, 0, 0, 0, 2];
  const guest = { frameLen, packed: PACKED, inOrder: IN_ORDER, dst: macB, src: macA };
  const a = new SyntheticGuest({ ...guest, rx: false });
  const b = new SyntheticGuest({ ...guest, rx: true });
  // Port 0 untagged (native VLAN 10 when B is an access port of another VLAN setup).
  const vlans: (PortVlanConfig | undefined | null)[] = vlanB
    ? [{ mode: "access", tag: 10 }, vlanB]
    : [undefined, undefined];
  while (vlans.length < slots) vlans.push(null);
  const vlan = vlanB ? 10 : 0;
  const bridge = new Bridge({ vlans, statics: [{ mac: "52:54:00:00:00:02", vlan, port: 1 }] });
  bridge.setLinkUp(0, true);
  bridge.setLinkUp(1, true);
  const counters = CounterTable.create(1, slots);
  const portA = new VirtioNetDatapath(VIRTIO_NET_HDR_LEN, true, 9018, counters.block(0, 0));
  const portB = new VirtioNetDatapath(VIRTIO_NET_HDR_LEN, true, 9018, counters.block(0, 1));
  const logOf = (p: number) => dirtyLog ? dirtyLogFor(counters.block(0, p)) : null;
  portA.txQueues.push(a.queue(1, logOf(0)));
  portB.setRxQueue(b.queue(0, logOf(1)));
  const blocks = Array.from({ length: slots }, (_, p) => counters.block(0, p));
  const fw = new Forwarder(bridge, slots, blocks);
  if (flows) fw.flows = new FlowCounter(createFlowBuffer());
  if (guard) {
    fw.guards[0] = new IngressGuard(guard, new Float64Array(16), fw.clock);
    fw.timed = guard.storm !== null || guard.ingress !== null;
  }
  fw.polled = [{ index: 0, port: portA }];
  fw.targets[0] = portA;
  fw.targets[1] = portB;
  const iterations = 200_000;
  const now = Math.floor(Date.now() / 1000);
  const step = () => {
    a.post(BURST);
    b.post(BURST);
    return fw.poll(now);
  };
  for (let i = 0; i < 20_000; i++) step(); // warm up: let V8 optimise the loop
  const samples: number[] = [];
  for (let r = 0; r < 5; r++) {
    // CPU time, not wall time: on a shared machine the thread may be descheduled.
    const t0 = cpuUsage();
    let frames = 0;
    for (let i = 0; i < iterations / 5; i++) frames += step();
    const used = cpuUsage(t0);
    samples.push(((used.user + used.system) * 1e3) / frames);
  }
  const sent = counters.port(1).tx_packets;
  if (sent !== (20_000 + iterations) * BURST) throw new Error(`lost frames: ${sent} delivered`);
  samples.sort((x, y) => x - y);
  return samples[2];
}

console.log(
  `datapath inner loop, CPU time (one worker, guest A -> guest B, burst 32, ${
    PACKED ? "packed" : "split"
  } rings${IN_ORDER ? ", IN_ORDER" : ""}), median of 5:`,
);
const given = Deno.args.filter((a) => !a.startsWith("--"));
const sizes = given.length ? given.map((a) => Number(a) - 4) : [60, 1514];
for (const len of sizes) {
  const plain = run(len, undefined);
  const tagged = run(len, { mode: "trunk", allowed: [10] });
  console.log(
    `  ${len + 4} B frames: ${plain.toFixed(1)} ns/frame untagged, ${tagged.toFixed(1)} ns/frame ` +
      `with an 802.1Q tag pushed`,
  );
}
// What the running switch pays for changes at run time and the flow table: room for MAX_PORTS
// ports, and flow counting, each against the same loop without it, alternated to share drift.
console.log("  alternated x3, untagged, medians:");
const med = (x: number[]) => x.sort((a, b) => a - b)[1];
const pct = (a: number, b: number) => `${(((b - a) / a) * 100).toFixed(1)}%`;
for (const len of sizes) {
  const two: number[] = [], all: number[] = [], counted: number[] = [];
  for (let i = 0; i < 3; i++) {
    two.push(run(len, undefined, 2, false));
    all.push(run(len, undefined, MAX_PORTS, false));
    counted.push(run(len, undefined, MAX_PORTS, true));
  }
  const [a, b, c] = [med(two), med(all), med(counted)];
  console.log(
    `  ${len + 4} B frames: 2 port numbers ${a.toFixed(1)} ns/frame, ${MAX_PORTS} ` +
      `${b.toFixed(1)} (${pct(a, b)}), ${MAX_PORTS} with flow counting ${c.toFixed(1)} ` +
      `(${pct(b, c)} for the counting)`,
  );
}

// L2 safety on the sending port (the usual port has none: the rows above), alternated with the
// same loop without it: port security (allowedMacs and IPv4 checks), and storm control plus an
// ingress policer too fast to drop anything (one shared token bucket taken per frame).
function guardSpec(kind: "security" | "metered"): PortGuardSpec {
  const spec: PortGuardSpec = {
    blocked: false,
    security: {
      macs: [0x5254, 1],
      learnOnce: false,
      pinned: createPinned(),
      ipv4: [0x0a000001],
      ipv6: null,
    },
    storm: null,
    ingress: null,
    egress: null,
  };
  if (kind === "metered") {
    const now = clockUs();
    spec.storm = { broadcast: createBucket(1000, 100, now), multicast: null, unknownUnicast: null };
    spec.ingress = createBucket(1e11, 0x3fffffff, now);
  }
  return spec;
}
console.log("  L2 safety on the sending port, alternated x3, untagged, medians:");
for (const len of sizes) {
  const off: number[] = [], sec: number[] = [], metered: number[] = [];
  for (let i = 0; i < 3; i++) {
    off.push(run(len, undefined));
    sec.push(run(len, undefined, 2, false, guardSpec("security")));
    metered.push(run(len, undefined, 2, false, guardSpec("metered")));
  }
  const [a, b, c] = [med(off), med(sec), med(metered)];
  console.log(
    `  ${len + 4} B frames: none ${a.toFixed(1)} ns/frame, port security ${b.toFixed(1)} ` +
      `(${pct(a, b)}), + storm control and policer ${c.toFixed(1)} (${pct(a, c)})`,
  );
}

// A guest being live-migrated: both guests' rings mark what the switch writes in a dirty log
// (logged_queue.ts), alternated with the same loop without it.
console.log("  dirty logging (live migration) on both rings, alternated x3, untagged, medians:");
for (const len of sizes) {
  const off: number[] = [], on: number[] = [];
  for (let i = 0; i < 3; i++) {
    off.push(run(len, undefined));
    on.push(run(len, undefined, 2, false, null, true));
  }
  const [a, b] = [med(off), med(on)];
  console.log(
    `  ${len + 4} B frames: logging off ${a.toFixed(1)} ns/frame, on ${b.toFixed(1)} (${
      pct(a, b)
    })`,
  );
}
