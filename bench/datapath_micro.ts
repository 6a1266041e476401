// The JS inner loop alone, without scheduling noise: two synthetic guests in memfd memory
// (guest A's TX ring full of frames to B, guest B's RX ring full of empty buffers) and the
// real burst loop (Forwarder -> VirtioNetDatapath -> SplitQueue, Bridge, FDB) between them.
// Reports CPU ns/frame for 64 B and 1518 B frames, untagged and with a VLAN tag pushed, on split
// rings and on packed rings (--packed; --in-order sets VIRTIO_F_IN_ORDER on both guests' rings).
//   deno run --allow-all bench/datapath_micro.ts [--packed] [--in-order] [frame sizes, default 64 1518]
import { cpuUsage } from "node:process";
import { memfdCreate, mmap } from "../ffi/mem.ts";
import { CounterTable } from "../ports/counters.ts";
import { GuestMemory, type RegionSpec } from "../ports/vhost_user/memory.ts";
import { VRING_AVAIL_F_NO_INTERRUPT } from "../ports/vhost_user/split_queue.ts";
import {
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_FLAG_DISABLE,
} from "../ports/vhost_user/packed_queue.ts";
import type { VirtQueue } from "../ports/vhost_user/virtqueue.ts";
import { VRING_DESC_F_WRITE } from "../ports/vhost_user/virtqueue.ts";
import {
  openQueue,
  VIRTIO_NET_HDR_LEN,
  VirtioNetDatapath,
} from "../ports/vhost_user/virtio_net.ts";
import { DirtyLog } from "../ports/vhost_user/dirty_log.ts";
import { Bridge, type PortVlanConfig } from "../switch/bridge.ts";
import { Forwarder } from "../switch/forward.ts";
import { IngressGuard, type PortGuardSpec } from "../switch/port_guard.ts";
import { createPinned } from "../switch/port_security.ts";
import { clockUs, createBucket } from "../switch/token_bucket.ts";
import { createFlowBuffer, FlowCounter } from "../switch/flows.ts";
import { MAX_PORTS } from "../switch/topology.ts";

const SIZE = 256;
const BURST = 32;
const DESC = 0;
const AVAIL = 4096;
const USED = 8192;
const BUFFERS = 65536;
const BUF = 2048;
const MEM = BUFFERS + SIZE * BUF;
const PACKED = Deno.args.includes("--packed");
const IN_ORDER = Deno.args.includes("--in-order");

/** One synthetic guest: memory, one ring, and the guest side's view of it. */
class Guest {
  readonly bytes: Uint8Array;
  readonly mem: GuestMemory;
  readonly #desc: DataView;
  readonly #avail: Uint16Array;
  readonly #frameLen: number;
  readonly #descWords: Uint32Array;
  #idx = 0;

  constructor(readonly rx: boolean, frameLen: number, dst: number[], src: number[]) {
    const fd = memfdCreate("bench-guest", MEM);
    const map = mmap(MEM, { fd });
    const spec: RegionSpec = {
      guestPhys: 0,
      size: MEM,
      userAddr: 0,
      mapAddress: map.address,
      mapLength: MEM,
      dataOffset: 0,
    };
    this.mem = new GuestMemory([spec]);
    this.bytes = this.mem.bytes[0];
    this.#desc = new DataView(this.bytes.buffer, DESC, 16 * SIZE);
    this.#avail = new Uint16Array(this.bytes.buffer, AVAIL, 3 + SIZE);
    this.#frameLen = frameLen;
    this.#descWords = new Uint32Array(this.bytes.buffer, DESC, 4 * SIZE);
    // A polling driver wants no interrupts (packed: the driver area's flags; split: avail flags).
    if (rx) {
      this.#avail[PACKED ? 1 : 0] = PACKED
        ? VRING_PACKED_EVENT_FLAG_DISABLE
        : VRING_AVAIL_F_NO_INTERRUPT;
    }
    for (let i = 0; i < SIZE; i++) {
      const addr = BUFFERS + i * BUF;
      this.#desc.setBigUint64(16 * i, BigInt(addr), true);
      this.#desc.setUint32(16 * i + 8, rx ? BUF : VIRTIO_NET_HDR_LEN + frameLen, true);
      this.#desc.setUint16(16 * i + 12, rx ? VRING_DESC_F_WRITE : 0, true);
      if (!rx) {
        const f = addr + VIRTIO_NET_HDR_LEN;
        this.bytes.set(dst, f);
        this.bytes.set(src, f + 6);
        this.bytes[f + 12] = 0x08; // IPv4 ethertype, payload left as zeros
      }
    }
  }

  /** Ring `index`; with `log`, the variant that marks its writes (a guest being migrated). */
  queue(index: number, log: DirtyLog | null = null): VirtQueue {
    return openQueue(this.mem, {
      index,
      size: SIZE,
      packed: PACKED,
      inOrder: IN_ORDER,
      desc: { region: 0, offset: DESC },
      avail: { region: 0, offset: AVAIL },
      used: { region: 0, offset: USED },
      lastAvail: PACKED ? 0x8000 : 0,
      eventIdx: false,
      callFd: -1,
      kickFd: -1,
      shared: null,
      ringLog: log ? (PACKED ? [DESC, 16 * SIZE, USED, 4] : [USED, 6 + 8 * SIZE]) : [],
    }, log);
  }

  /** Makes the next `n` descriptors available again (they all came back in the last poll). */
  post(n: number): void {
    if (PACKED) return this.#postPacked(n);
    for (let k = 0; k < n; k++) {
      this.#avail[2 + ((this.#idx + k) & (SIZE - 1))] = (this.#idx + k) & (SIZE - 1);
    }
    this.#idx = (this.#idx + n) & 0xffff;
    Atomics.store(this.#avail, 1, this.#idx);
  }

  /** Packed: the device wrote used descriptors over these: write them whole again. */
  #postPacked(n: number): void {
    const w = this.#descWords;
    const len = this.rx ? BUF : VIRTIO_NET_HDR_LEN + this.#frameLen;
    const dir = this.rx ? VRING_DESC_F_WRITE : 0;
    for (let k = 0; k < n; k++) {
      const seq = this.#idx + k;
      const i = seq & (SIZE - 1);
      const wrap = ((seq / SIZE) & 1) ^ 1;
      w[4 * i + 2] = len;
      w[4 * i + 3] = i |
        ((dir | (wrap ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED)) << 16);
    }
    this.#idx = (this.#idx + n) & 0xffff;
  }
}

/** A dirty log covering a synthetic guest's memory, as QEMU shares one during a migration. */
function dirtyLogFor(counters: Float64Array): DirtyLog {
  const size = Math.ceil(MEM / 4096 / 8);
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
  const a = new Guest(false, frameLen, macB, macA);
  const b = new Guest(true, frameLen, macB, macA);
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
