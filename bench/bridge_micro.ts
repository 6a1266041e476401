// ns per frame for Bridge.decide() over bursts of 64-byte frames with a warm FDB.
// Run: deno run --allow-all bench/bridge_micro.ts
import { Bridge, Decision, type PortVlanConfig } from "../switch/bridge.ts";
import { writeMac } from "../ports/ethernet.ts";

const PORTS = 8;
const MACS = 1000;
const FRAMES = 1024; // distinct frames, cycled through in bursts
const BURST = 32;
const FRAME_LEN = 64;
const NOW = 1000;

interface Case {
  name: string;
  vlans: PortVlanConfig[];
  /** Builds frame i into buf at off; returns its ingress port. */
  build(buf: Uint8Array, off: number, i: number): number;
}

const macHi = (j: number) => 0x0200 | (j >>> 16);
const macLo = (j: number) => (0x5e000000 + j * 0x10001) >>> 0;
const portOf = (j: number) => j % PORTS;

function ethernet(buf: Uint8Array, off: number, dst: number, src: number, vid: number): void {
  if (dst < 0) buf.fill(0xff, off, off + 6);
  else writeMac(buf, off, macHi(dst), macLo(dst));
  writeMac(buf, off + 6, macHi(src), macLo(src));
  let at = off + 12;
  if (vid >= 0) {
    buf.set([0x81, 0x00, vid >>> 8, vid & 0xff], at);
    at += 4;
  }
  buf.set([0x08, 0x00], at);
}

/** A known destination on another port than the source. */
function peer(src: number, i: number): number {
  const d = (src + 1 + (i % (MACS - 1))) % MACS;
  return portOf(d) === portOf(src) ? (d + 1) % MACS : d;
}

const trunks: PortVlanConfig[] = Array.from({ length: PORTS }, () => ({ mode: "trunk" }));
const access: PortVlanConfig[] = Array.from({ length: PORTS }, () => ({ mode: "access", tag: 10 }));

const cases: Case[] = [
  {
    name: "known unicast, untagged (access VLAN 10)",
    vlans: access,
    build(buf, off, i) {
      const src = (i * 7) % MACS;
      ethernet(buf, off, peer(src, i), src, -1);
      return portOf(src);
    },
  },
  {
    name: "known unicast, 802.1Q tagged (trunks)",
    vlans: trunks,
    build(buf, off, i) {
      const src = (i * 7) % MACS;
      ethernet(buf, off, peer(src, i), src, 10);
      return portOf(src);
    },
  },
  {
    name: "broadcast, flood to 7 ports (access VLAN 10)",
    vlans: access,
    build(buf, off, i) {
      const src = (i * 7) % MACS;
      ethernet(buf, off, -1, src, -1);
      return portOf(src);
    },
  },
];

function run(c: Case): number {
  const bridge = new Bridge({ vlans: c.vlans, fdbCapacity: 8192 });
  const vlan = c.vlans[0].mode === "access" ? c.vlans[0].tag : 10;
  for (let p = 0; p < PORTS; p++) bridge.setLinkUp(p, true);
  for (let j = 0; j < MACS; j++) bridge.fdb.learn(macHi(j), macLo(j), vlan, portOf(j), NOW);
  const buf = new Uint8Array(FRAMES * FRAME_LEN);
  const ingress = new Int32Array(FRAMES);
  for (let i = 0; i < FRAMES; i++) ingress[i] = c.build(buf, i * FRAME_LEN, i);
  const decision = new Decision(PORTS);
  let sink = 0;
  const burst = (first: number) => {
    for (let i = first; i < first + BURST; i++) {
      sink += bridge.decide(ingress[i], buf, i * FRAME_LEN, FRAME_LEN, NOW, decision);
    }
  };
  const rounds = 200_000;
  for (let r = 0; r < rounds / 4; r++) burst((r * BURST) % FRAMES); // warm-up: let the JIT settle
  const samples: number[] = [];
  for (let rep = 0; rep < 5; rep++) {
    const t0 = performance.now();
    for (let r = 0; r < rounds; r++) burst((r * BURST) % FRAMES);
    samples.push(((performance.now() - t0) * 1e6) / (rounds * BURST));
  }
  if (sink === 0) throw new Error("nothing forwarded");
  if (bridge.fdb.size !== MACS) throw new Error(`FDB changed size: ${bridge.fdb.size}`);
  samples.sort((a, b) => a - b);
  return samples[2];
}

console.log(`decide(): ${PORTS} ports, ${MACS} learned MACs, bursts of ${BURST} x ${FRAME_LEN} B`);
for (const c of cases) console.log(`  ${c.name}: ${run(c).toFixed(1)} ns/frame (median of 5)`);
