// The flow table: what the datapath actually did with the traffic, like OVS's dpctl/dump-flows.
// A flow is an exact match on the ingress port, the VLAN and both MAC addresses together with the
// bridge's decision for them (output ports, flood, or drop and why): when the decision for a
// pair changes (a MAC is learned, a VLAN changes) that is a new flow, and the old one idles out.
//
// Counting costs a few compares per frame, not a table operation: a worker keeps the current
// run of frames with the same key and decision in plain fields, and adds the run to its table
// (a hash probe) only when the key changes or the burst ends. A burst is usually one flow.
//
// Each worker has its own table in a SharedArrayBuffer (it alone writes it; no atomics on the
// counters); the control thread reads all of them. An entry's key is published seqlock style:
// the worker makes its SEQ word odd while it writes a key into the slot, even again after, and a
// reader keeps an entry only if SEQ was even and unchanged around its read.
import type { Decision } from "./bridge.ts";

/** Entries per worker table. Beyond this many live flows the least recently used are replaced. */
export const FLOW_SLOTS = 4096;
/** Slots probed for a key (and, when all are taken, the oldest of them is replaced). */
const PROBE = 8;
const WORDS = 16; // Int32 words per entry: one cache line
// Int32 words of an entry.
const SEQ = 0; // 0: never used; odd: key being written
const IN_PORT = 1;
const VLAN = 2;
/** The first 12 bytes of the frame (destination and source MAC) as three 32-bit words. */
const H0 = 3;
const H1 = 4;
const H2 = 5;
const DROP = 6; // DROP_* reason, or -1
const OUT_COUNT = 7;
const OUT_LO = 8; // output ports 0..31 as a bit mask
const OUT_HI = 9; // output ports 32..63
const FLAGS = 10;
const LAST_USED = 11; // seconds
// Float64 fields (index entry * 8 + ...): words 12..15.
const F_PACKETS = 6;
const F_BYTES = 7;

export const FLOW_FLOODED = 1;
/** FLAGS >> FLOW_TCI_SHIFT: the received 802.1Q TCI + 1 (0: untagged), for the tag actions. */
export const FLOW_TCI_SHIFT = 1;

export function createFlowBuffer(): SharedArrayBuffer {
  return new SharedArrayBuffer(FLOW_SLOTS * WORDS * 4);
}

function hash(inPort: number, vlan: number, h0: number, h1: number, h2: number, a: number) {
  let h = Math.imul(h0 ^ Math.imul(h2, 0x9e3779b1), 0x85ebca6b) ^ h1;
  h = Math.imul(h ^ (h >>> 15), 0xc2b2ae35) ^ (inPort << 20) ^ (vlan << 4) ^ a;
  return (h ^ (h >>> 13)) >>> 0;
}

/** A worker's side: counts runs of frames into its table. */
export class FlowCounter {
  readonly #w: Int32Array;
  readonly #f: Float64Array;
  #inPort = 0;
  // The run: its key and decision, and what it counted so far.
  #h0 = 0;
  #h1 = 0;
  #h2 = 0;
  #vlan = -1;
  #drop = 0;
  #outCount = -1;
  #out0 = -1;
  #flags = 0;
  #outLo = 0;
  #outHi = 0;
  #packets = 0;
  #bytes = 0;

  constructor(readonly buffer: SharedArrayBuffer) {
    this.#w = new Int32Array(buffer);
    this.#f = new Float64Array(buffer);
  }

  /** A burst from `inPort` begins at `now` (seconds). */
  begin(inPort: number, now: number): void {
    this.#inPort = inPort;
    this.#now = now;
    this.#packets = 0;
  }

  /** One decided frame of `length` bytes: extends the run, or ends it and starts another. */
  count(d: Decision, length: number): void {
    const h = d.headerWords;
    const n = d.count;
    if (
      h[0] !== this.#h0 || h[1] !== this.#h1 || h[2] !== this.#h2 || d.vlan !== this.#vlan ||
      n !== this.#outCount || d.dropReason !== this.#drop || (n > 0 && d.ports[0] !== this.#out0)
    ) {
      this.#start(d);
    }
    this.#packets++;
    this.#bytes += length;
  }

  /**
   * One more frame of the flow counted last (the caller knows: the same decision, repeated in
   * the same burst): extends the run without comparing.
   */
  again(length: number): void {
    this.#packets++;
    this.#bytes += length;
  }

  #start(d: Decision): void {
    if (this.#packets > 0) this.#flush();
    const h = d.headerWords;
    // As read (uint32), so the per-frame compare is like for like; the table stores int32.
    this.#h0 = h[0];
    this.#h1 = h[1];
    this.#h2 = h[2];
    this.#vlan = d.vlan;
    this.#drop = d.dropReason;
    const n = d.count;
    this.#outCount = n;
    this.#out0 = n > 0 ? d.ports[0] : -1;
    let lo = 0, hi = 0;
    for (let i = 0; i < n; i++) {
      const p = d.ports[i];
      if (p < 32) lo |= 1 << p;
      else hi |= 1 << (p - 32);
    }
    this.#outLo = lo;
    this.#outHi = hi;
    this.#flags = (n > 0 && d.flooded ? FLOW_FLOODED : 0) | ((d.ingressTci + 1) << FLOW_TCI_SHIFT);
    this.#packets = 0;
    this.#bytes = 0;
  }

  /** The burst ended: its last run goes into the table. */
  end(): void {
    if (this.#packets > 0) this.#flush();
    this.#packets = 0;
    // A new burst (maybe another port's) must not extend this run.
    this.#outCount = -1;
  }

  #now = 0;

  #flush(): void {
    const now = this.#now;
    const w = this.#w;
    const inPort = this.#inPort, vlan = this.#vlan;
    const h0 = this.#h0 | 0, h1 = this.#h1 | 0, h2 = this.#h2 | 0;
    const drop = this.#drop, outLo = this.#outLo, outHi = this.#outHi, flags = this.#flags;
    const start = hash(inPort, vlan, h0, h1, h2, outLo ^ drop) & (FLOW_SLOTS - 1);
    let victim = -1, victimUsed = Infinity;
    for (let i = 0; i < PROBE; i++) {
      const e = ((start + i) & (FLOW_SLOTS - 1)) * WORDS;
      if (w[e + SEQ] === 0) {
        victim = e;
        break;
      }
      if (
        w[e + H0] === h0 && w[e + H1] === h1 && w[e + H2] === h2 && w[e + VLAN] === vlan &&
        w[e + IN_PORT] === inPort && w[e + DROP] === drop && w[e + OUT_LO] === outLo &&
        w[e + OUT_HI] === outHi && w[e + FLAGS] === flags && w[e + OUT_COUNT] === this.#outCount
      ) {
        this.#add(e, now);
        return;
      }
      if (w[e + LAST_USED] < victimUsed) {
        victim = e;
        victimUsed = w[e + LAST_USED];
      }
    }
    // A new flow, in a free slot or in place of the least recently used one probed.
    const seq = w[victim + SEQ]; // even: only this thread writes it
    Atomics.store(w, victim + SEQ, seq + 1); // odd: being written
    w[victim + IN_PORT] = inPort;
    w[victim + VLAN] = vlan;
    w[victim + H0] = h0;
    w[victim + H1] = h1;
    w[victim + H2] = h2;
    w[victim + DROP] = drop;
    w[victim + OUT_COUNT] = this.#outCount;
    w[victim + OUT_LO] = outLo;
    w[victim + OUT_HI] = outHi;
    w[victim + FLAGS] = flags;
    const f = victim >> 1;
    this.#f[f + F_PACKETS] = 0;
    this.#f[f + F_BYTES] = 0;
    Atomics.store(w, victim + SEQ, seq + 2); // even again: published
    this.#add(victim, now);
  }

  #add(e: number, now: number): void {
    const f = e >> 1;
    this.#f[f + F_PACKETS] += this.#packets;
    this.#f[f + F_BYTES] += this.#bytes;
    this.#w[e + LAST_USED] = now;
  }
}

/** One flow as read from a worker's table (port numbers, raw header words). */
export interface RawFlow {
  inPort: number;
  vlan: number;
  /** The destination and source MAC, as the frame's first 12 bytes. */
  header: Uint8Array;
  dropReason: number;
  /** Output port numbers. */
  out: number[];
  flooded: boolean;
  /** The received 802.1Q TCI, or -1: untagged. */
  ingressTci: number;
  packets: number;
  bytes: number;
  lastUsed: number;
}

/** Reads every published flow of one worker's table (any thread). */
export function readFlows(buffer: SharedArrayBuffer): RawFlow[] {
  const w = new Int32Array(buffer);
  const f = new Float64Array(buffer);
  const flows: RawFlow[] = [];
  for (let e = 0; e < w.length; e += WORDS) {
    const seq = Atomics.load(w, e + SEQ);
    if (seq === 0 || (seq & 1) !== 0) continue;
    const words = Int32Array.of(w[e + H0], w[e + H1], w[e + H2]);
    const lo = w[e + OUT_LO], hi = w[e + OUT_HI];
    const out: number[] = [];
    for (let p = 0; p < 64; p++) if ((p < 32 ? lo >>> p : hi >>> (p - 32)) & 1) out.push(p);
    const flow: RawFlow = {
      inPort: w[e + IN_PORT],
      vlan: w[e + VLAN],
      header: new Uint8Array(words.buffer),
      dropReason: w[e + DROP],
      out,
      flooded: (w[e + FLAGS] & FLOW_FLOODED) !== 0,
      ingressTci: (w[e + FLAGS] >> FLOW_TCI_SHIFT) - 1,
      packets: f[(e >> 1) + F_PACKETS],
      bytes: f[(e >> 1) + F_BYTES],
      lastUsed: w[e + LAST_USED],
    };
    if (Atomics.load(w, e + SEQ) === seq) flows.push(flow);
  }
  return flows;
}
