/**
 * The per-frame forwarding decision of a learning bridge with OVS-style VLAN ports.
 *
 * Config is compiled into typed arrays; link state and counters live in a SharedArrayBuffer that
 * the main thread reads and updates while Workers call `decide()`. Each thread that calls
 * decide() has its own `writer` index: it owns that row of counters (increments need no atomics)
 * and that FDB reader slot (lookups need no atomics; call `offline()` before idling).
 */

import {
  Fdb,
  LEARN_MOVED,
  LEARN_REFRESHED,
  LEARN_REFUSED_FULL,
  LEARN_STATIC,
  MAX_READERS,
} from "./fdb.ts";
import {
  ETH_ADDRS_LEN,
  ETH_HLEN,
  ETH_P_8021Q,
  macHiAt,
  macLoAt,
  parseMac,
  VLAN_COUNT,
  VLAN_HLEN,
  VLAN_VID_MASK,
} from "../ports/ethernet.ts";

/**
 * access: untagged (or priority-tagged, VID 0) frames belong to `tag`; frames tagged with any
 * nonzero VID are dropped, as OVS does. trunk: tagged frames keep their VID if it is in `allowed`
 * (default "all": 1..4095); untagged and priority-tagged frames belong to `native`, which is also
 * sent untagged. Without `native`, untagged frames are in VLAN 0, allowed if `allowed` is "all" or
 * lists 0. VLAN 0 is never sent tagged.
 */
export type PortVlanConfig =
  | { mode: "access"; tag: number }
  | { mode: "trunk"; allowed?: number[] | "all"; native?: number };

export interface StaticMacConfig {
  mac: string;
  vlan: number;
  port: number;
}

export interface BridgeOptions {
  /** VLAN config indexed by port number; `undefined`: trunk of all VLANs, untagged in VLAN 0. */
  vlans: (PortVlanConfig | undefined)[];
  /** The shared table; default: a new one of `fdbCapacity` (default 8192) entries. */
  fdb?: Fdb;
  fdbCapacity?: number;
  /** Shared link state and counters (`bridge.state` of the first instance); default: new. */
  state?: SharedArrayBuffer;
  /** Threads that call decide(), when making a new `state`; default 1, at most MAX_READERS. */
  writers?: number;
  /** This thread's counter rows and FDB reader slot, 0..writers-1; default 0. */
  writer?: number;
  /** Added to the FDB, checked against the VLAN config (do it once, on the main thread). */
  statics?: StaticMacConfig[];
}

// `state` layout, in bytes: 0: int32 magic, 4: int32 portCount, 8: int32 writers;
// STATE_LINK_OFFSET: one byte per port, 1 = link up; stateCountersOffset(portCount): float64
// counters [writer][port][PORT_COUNTERS], indexed by the per-port offsets below. Each writer has
// its own rows, so a port polled by several Workers loses no increments.
export const STATE_LINK_OFFSET = 64;
export function stateCountersOffset(portCount: number): number {
  return STATE_LINK_OFFSET + Math.ceil(portCount / 64) * 64;
}

// Per-port counter offsets; the drop reasons double as `dropReason` codes.
/** Ingress VLAN not allowed on the port (or a tagged frame on an access port). */
export const DROP_VLAN = 0;
/** Source MAC is broadcast/multicast. */
export const DROP_MULTICAST_SRC = 1;
/** Destination was learned on the ingress port. */
export const DROP_HAIRPIN = 2;
/** Destination port is down or not a member of the VLAN. */
export const DROP_DEST_DOWN = 3;
/** Shorter than an Ethernet header (+ tag). */
export const DROP_MALFORMED = 4;
/** Source not learned because the FDB is full; the frame is still forwarded. */
export const CNT_LEARN_REFUSED = 5;
/** Frames flooded (broadcast, multicast, unknown unicast). */
export const CNT_FLOODED = 6;
/** Frames sent to one known port. */
export const CNT_UNICAST = 7;
/** Source MACs learned on another port that moved to this one (loop guard watches the rate). */
export const CNT_MAC_MOVED = 8;
export const PORT_COUNTERS = 9;
const CACHE_WORDS = 5;

/** `dropReason` when the frame was not dropped. */
export const NO_DROP = -1;

/** Egress tag operations, relative to the frame as received. */
export const EGRESS_KEEP = 0;
export const EGRESS_STRIP = 1;
export const EGRESS_PUSH = 2;
/** Rewrite the VID of the received tag (a priority-tagged frame sent tagged). */
export const EGRESS_SET = 3;

export interface BridgePortCounters {
  dropVlan: number;
  dropMulticastSrc: number;
  dropHairpin: number;
  dropDestDown: number;
  dropMalformed: number;
  learnRefused: number;
  flooded: number;
  unicast: number;
  macMoved: number;
}

const STATE_MAGIC = 0x42524731;
const MAX_PORTS = 4096;
/** End of an 802.1Q tag that follows the MAC addresses. */
const TAG_END = ETH_ADDRS_LEN + VLAN_HLEN;

export class Bridge {
  /** The shared table, for any thread (checked lookups). */
  readonly fdb: Fdb;
  /** Link state and counters: pass it to the instances in other threads. */
  readonly state: SharedArrayBuffer;
  readonly portCount: number;
  readonly writers: number;
  /** Set by decide(): the frame's VLAN (-1 if dropped before it was known). */
  vlan = -1;
  /** Set by decide(): the received 802.1Q TCI, or -1 if the frame came untagged. */
  ingressTci = -1;
  /** Set by decide(): a DROP_* code, or NO_DROP. */
  dropReason = NO_DROP;
  /** Set by decide() when it returned ports: true if the frame is flooded, false if unicast. */
  flooded = false;

  /** Whether the last decided frame came with an 802.1Q tag (priority tags included). */
  get ingressTagged(): boolean {
    return this.ingressTci >= 0;
  }
  /** Reused by egressFrame(). */
  readonly layout = new EgressLayout();

  private readonly isAccess: Uint8Array;
  /** VLAN of untagged and priority-tagged ingress frames. */
  private readonly untaggedIngress: Int32Array;
  /** VLAN sent untagged on egress besides VLAN 0 (access tag, trunk native), or -1. */
  private readonly untaggedEgress: Int32Array;
  /** member[port << 12 | vlan] */
  private readonly member: Uint8Array;
  /** Ports of VLAN v: floodPorts[floodStart[v] .. floodStart[v + 1]). */
  private readonly floodStart: Int32Array;
  private readonly floodPorts: Int32Array;
  private readonly linkUp: Uint8Array;
  private readonly counters: Float64Array;
  private readonly counterBase: number;
  /** `fdb` through this writer's reader slot: what decide() uses. */
  private readonly datapathFdb: Fdb;
  /**
   * A one-entry exact-match cache per ingress port, like OVS's EMC in front of its classifier:
   * the source last learned (refreshed this second) and the destination last looked up, each
   * valid while the FDB's version is the one read before the FDB was asked. A burst is usually
   * one flow, so most frames skip both hash probes.
   */
  private readonly cacheSrc: Int32Array;
  private readonly cacheDst: Int32Array;

  /** A zeroed `state` buffer: all links down. */
  static createState(portCount: number, writers: number): SharedArrayBuffer {
    if (!Number.isInteger(writers) || writers < 1 || writers > MAX_READERS) {
      throw new RangeError(`writers must be an integer in 1..${MAX_READERS}, got ${writers}`);
    }
    const bytes = stateCountersOffset(portCount) + writers * portCount * PORT_COUNTERS * 8;
    const state = new SharedArrayBuffer(bytes);
    const h = new Int32Array(state, 0, 3);
    h[1] = portCount;
    h[2] = writers;
    Atomics.store(h, 0, STATE_MAGIC);
    return state;
  }

  constructor(opts: BridgeOptions) {
    const n = opts.vlans.length;
    if (n < 1 || n > MAX_PORTS) {
      throw new RangeError(`a bridge needs 1..${MAX_PORTS} ports, got ${n}`);
    }
    this.fdb = opts.fdb ?? Fdb.create({ capacity: opts.fdbCapacity ?? 8192 });
    this.state = opts.state ?? Bridge.createState(n, opts.writers ?? 1);
    const h = new Int32Array(this.state, 0, 3);
    if (Atomics.load(h, 0) !== STATE_MAGIC || h[1] !== n) {
      throw new TypeError(`state buffer was not made by Bridge.createState for ${n} ports`);
    }
    this.writers = h[2];
    const writer = opts.writer ?? 0;
    if (!Number.isInteger(writer) || writer < 0 || writer >= this.writers) {
      throw new RangeError(`writer must be in 0..${this.writers - 1}, got ${writer}`);
    }
    this.portCount = n;
    this.isAccess = new Uint8Array(n);
    this.untaggedIngress = new Int32Array(n);
    this.untaggedEgress = new Int32Array(n);
    this.member = new Uint8Array(n * VLAN_COUNT);
    for (let p = 0; p < n; p++) this.compilePort(p, opts.vlans[p]);
    this.floodStart = new Int32Array(VLAN_COUNT + 1);
    const ports: number[] = [];
    for (let v = 0; v < VLAN_COUNT; v++) {
      this.floodStart[v] = ports.length;
      for (let p = 0; p < n; p++) if (this.member[(p << 12) | v] !== 0) ports.push(p);
    }
    this.floodStart[VLAN_COUNT] = ports.length;
    this.floodPorts = Int32Array.from(ports);
    this.linkUp = new Uint8Array(this.state, STATE_LINK_OFFSET, n);
    this.counters = new Float64Array(
      this.state,
      stateCountersOffset(n),
      this.writers * n * PORT_COUNTERS,
    );
    this.counterBase = writer * n * PORT_COUNTERS;
    this.datapathFdb = Fdb.attach(this.fdb.buffer, { reader: writer });
    // Per port: [version, macHi, macLo, vlan, now] and [version, macHi, macLo, vlan, port];
    // version -1 (never a real one before 2^31 locked operations) marks an empty entry.
    this.cacheSrc = new Int32Array(n * CACHE_WORDS).fill(-1);
    this.cacheDst = new Int32Array(n * CACHE_WORDS).fill(-1);
    for (const s of opts.statics ?? []) this.addStatic(s.mac, s.vlan, s.port);
  }

  private compilePort(p: number, cfg: PortVlanConfig | undefined): void {
    const vid = (what: string, v: unknown): number => {
      if (!Number.isInteger(v) || (v as number) < 0 || (v as number) >= VLAN_COUNT) {
        throw new RangeError(`port ${p}: ${what} must be a VLAN ID in 0..4095, got ${v}`);
      }
      return v as number;
    };
    const base = p << 12;
    if (cfg === undefined || cfg.mode === "trunk") {
      const allowed = cfg?.allowed ?? "all";
      const native = cfg?.native === undefined ? -1 : vid("native VLAN", cfg.native);
      if (allowed === "all") this.member.fill(1, base + 1, base + VLAN_COUNT);
      else for (const v of allowed) this.member[base | vid("allowed VLAN", v)] = 1;
      // VLAN 0 and the native VLAN share the untagged wire: only one of them may be carried.
      if (native > 0 && this.member[base] === 1) {
        throw new RangeError(`port ${p}: VLAN 0 and native VLAN ${native} would both be untagged`);
      }
      if (native >= 0) this.member[base | native] = 1;
      else if (allowed === "all") this.member[base] = 1;
      this.untaggedIngress[p] = native >= 0 ? native : 0;
      this.untaggedEgress[p] = native;
    } else if (cfg.mode === "access") {
      const tag = vid("access tag", cfg.tag);
      this.isAccess[p] = 1;
      this.member[base | tag] = 1;
      this.untaggedIngress[p] = tag;
      this.untaggedEgress[p] = tag;
    } else {
      throw new TypeError(`port ${p}: VLAN mode must be "access" or "trunk"`);
    }
  }

  /** Adds a static MAC entry, checking that the port exists and is in the VLAN. */
  addStatic(mac: string, vlan: number, port: number): void {
    const { hi, lo } = parseMac(mac);
    if (!this.isMember(port, vlan)) {
      throw new RangeError(`static MAC ${mac}: port ${port} is not a member of VLAN ${vlan}`);
    }
    this.fdb.addStatic(hi, lo, vlan, port);
  }

  isMember(port: number, vlan: number): boolean {
    return Number.isInteger(port) && port >= 0 && port < this.portCount &&
      Number.isInteger(vlan) && vlan >= 0 && vlan < VLAN_COUNT &&
      this.member[(port << 12) | vlan] === 1;
  }

  /**
   * Sets a port's link state for every thread sharing `state`; ports start down. Going down also
   * flushes the port's learned MACs, so its stations are flooded for until relearned elsewhere.
   */
  setLinkUp(port: number, up: boolean): void {
    if (!Number.isInteger(port) || port < 0 || port >= this.portCount) {
      throw new RangeError(`no port ${port}`);
    }
    Atomics.store(this.linkUp, port, up ? 1 : 0);
    if (!up) this.fdb.flush({ port });
  }

  isLinkUp(port: number): boolean {
    return this.linkUp[port] === 1;
  }

  /**
   * Decides where the frame at frame[offset, offset + length) received on `ingressPort` goes.
   * Learns its source, writes output ports into `out` (room for portCount - 1) and returns how
   * many; 0 with `dropReason` set when dropped. Also sets `vlan` and `ingressTci`.
   */
  decide(
    ingressPort: number,
    frame: Uint8Array,
    offset: number,
    length: number,
    now: number,
    out: Int32Array,
  ): number {
    const cb = this.counterBase + ingressPort * PORT_COUNTERS;
    this.vlan = -1;
    this.ingressTci = -1;
    if (length < ETH_HLEN) return this.drop(cb, DROP_MALFORMED);
    let vlan = this.untaggedIngress[ingressPort];
    if (((frame[offset + 12] << 8) | frame[offset + 13]) === ETH_P_8021Q) {
      if (length < ETH_HLEN + VLAN_HLEN) return this.drop(cb, DROP_MALFORMED);
      const tci = (frame[offset + 14] << 8) | frame[offset + 15];
      this.ingressTci = tci;
      const vid = tci & VLAN_VID_MASK;
      if (vid !== 0) {
        if (this.isAccess[ingressPort] === 1) return this.drop(cb, DROP_VLAN);
        vlan = vid;
      }
    }
    this.vlan = vlan;
    if (this.member[(ingressPort << 12) | vlan] === 0) return this.drop(cb, DROP_VLAN);
    if ((frame[offset + 6] & 1) !== 0) return this.drop(cb, DROP_MULTICAST_SRC);

    const fdb = this.datapathFdb;
    const version = fdb.version;
    const sHi = macHiAt(frame, offset + 6);
    const sLo = macLoAt(frame, offset + 6) | 0;
    const src = this.cacheSrc;
    const cs = ingressPort * CACHE_WORDS;
    if (
      src[cs] !== version || src[cs + 2] !== sLo || src[cs + 1] !== sHi ||
      src[cs + 3] !== vlan || src[cs + 4] !== (now | 0)
    ) {
      const learned = fdb.learn(sHi, sLo, vlan, ingressPort, now);
      if (learned === LEARN_REFUSED_FULL) this.counters[cb + CNT_LEARN_REFUSED]++;
      else if (learned === LEARN_MOVED) this.counters[cb + CNT_MAC_MOVED]++;
      // Only a learn that changed nothing may be skipped next time (new and moved entries
      // bumped the version anyway).
      const keep = learned === LEARN_REFRESHED || learned === LEARN_STATIC;
      src[cs] = keep ? version : -1;
      src[cs + 1] = sHi;
      src[cs + 2] = sLo;
      src[cs + 3] = vlan;
      src[cs + 4] = now;
    }
    this.dropReason = NO_DROP;

    if ((frame[offset] & 1) === 0) {
      const dHi = macHiAt(frame, offset);
      const dLo = macLoAt(frame, offset) | 0;
      const dst = this.cacheDst;
      let port: number;
      if (
        dst[cs] === version && dst[cs + 2] === dLo && dst[cs + 1] === dHi && dst[cs + 3] === vlan
      ) {
        port = dst[cs + 4];
      } else {
        port = fdb.lookup(dHi, dLo, vlan);
        dst[cs] = version;
        dst[cs + 1] = dHi;
        dst[cs + 2] = dLo;
        dst[cs + 3] = vlan;
        dst[cs + 4] = port;
      }
      if (port >= 0) {
        if (port === ingressPort) return this.drop(cb, DROP_HAIRPIN);
        if (this.linkUp[port] === 0 || this.member[(port << 12) | vlan] === 0) {
          return this.drop(cb, DROP_DEST_DOWN);
        }
        out[0] = port;
        this.flooded = false;
        this.counters[cb + CNT_UNICAST]++;
        return 1;
      }
    }
    let n = 0;
    const ports = this.floodPorts;
    for (let i = this.floodStart[vlan], end = this.floodStart[vlan + 1]; i < end; i++) {
      const p = ports[i];
      if (p !== ingressPort && this.linkUp[p] !== 0) out[n++] = p;
    }
    this.flooded = true;
    this.counters[cb + CNT_FLOODED]++;
    return n;
  }

  /** Call before this writer's thread idles or blocks: FDB compactions stop waiting for it. */
  offline(): void {
    this.datapathFdb.offline();
  }

  /** EGRESS_* for sending the last decided frame out `port`. */
  egressOp(port: number): number {
    const vlan = this.vlan;
    const tagged = this.ingressTci >= 0;
    if (vlan === 0 || vlan === this.untaggedEgress[port]) {
      return tagged ? EGRESS_STRIP : EGRESS_KEEP;
    }
    if (!tagged) return EGRESS_PUSH;
    return (this.ingressTci & VLAN_VID_MASK) === vlan ? EGRESS_KEEP : EGRESS_SET;
  }

  /** The TCI that EGRESS_PUSH / EGRESS_SET write: the frame's VLAN with the received priority. */
  egressTci(): number {
    return (this.ingressTci < 0 ? 0 : this.ingressTci & 0xf000) | this.vlan;
  }

  /** Describes the last decided frame, at [off, off + len) of its buffer, as sent out `port`. */
  egressFrame(port: number, off: number, len: number): EgressLayout {
    describeEgress(off, len, this.egressOp(port), this.egressTci(), this.layout);
    return this.layout;
  }

  /** Counters of one port summed over all writers (main thread / management API). */
  portCounters(port: number): BridgePortCounters {
    const sum = new Float64Array(PORT_COUNTERS);
    for (let w = 0; w < this.writers; w++) {
      const base = (w * this.portCount + port) * PORT_COUNTERS;
      for (let i = 0; i < PORT_COUNTERS; i++) sum[i] += this.counters[base + i];
    }
    return {
      dropVlan: sum[DROP_VLAN],
      dropMulticastSrc: sum[DROP_MULTICAST_SRC],
      dropHairpin: sum[DROP_HAIRPIN],
      dropDestDown: sum[DROP_DEST_DOWN],
      dropMalformed: sum[DROP_MALFORMED],
      learnRefused: sum[CNT_LEARN_REFUSED],
      flooded: sum[CNT_FLOODED],
      unicast: sum[CNT_UNICAST],
      macMoved: sum[CNT_MAC_MOVED],
    };
  }

  private drop(counterBase: number, reason: number): number {
    this.counters[counterBase + reason]++;
    this.dropReason = reason;
    return 0;
  }
}

/**
 * The output frame as src[headStart, headEnd) ++ tag[0, tagLength) ++ src[tailStart, tailEnd),
 * so a transmit routine can apply the tag op while scattering into guest buffers.
 */
export class EgressLayout {
  headStart = 0;
  headEnd = 0;
  /** 0 or 4. */
  tagLength = 0;
  readonly tag = new Uint8Array(VLAN_HLEN);
  tailStart = 0;
  tailEnd = 0;
  /** Total output length. */
  length = 0;
}

/**
 * Fills `layout` for sending the frame at [off, off + len) of its buffer with EGRESS_* `op`; `tci` (a plain VID is a TCI
 * of priority 0) is the tag written by PUSH and SET. Returns the output length.
 */
export function describeEgress(
  off: number,
  len: number,
  op: number,
  tci: number,
  layout: EgressLayout,
): number {
  const received = op === EGRESS_STRIP || op === EGRESS_SET; // frame came tagged
  const sent = op === EGRESS_PUSH || op === EGRESS_SET; // frame leaves tagged by us
  layout.headStart = off;
  layout.headEnd = off + ETH_ADDRS_LEN;
  layout.tagLength = sent ? VLAN_HLEN : 0;
  layout.tailStart = off + (received ? TAG_END : ETH_ADDRS_LEN);
  layout.tailEnd = off + len;
  if (sent) {
    const t = layout.tag;
    t[0] = ETH_P_8021Q >>> 8;
    t[1] = ETH_P_8021Q & 0xff;
    t[2] = (tci >>> 8) & 0xff;
    t[3] = tci & 0xff;
  }
  layout.length = len + (sent ? VLAN_HLEN : 0) - (received ? VLAN_HLEN : 0);
  return layout.length;
}

/**
 * Writes src[off, off + len) with EGRESS_* `op` applied to dst at dstOff; returns the bytes
 * written. For simple callers: it makes subarray views, where the datapath uses describeEgress.
 */
export function applyEgressTag(
  src: Uint8Array,
  off: number,
  len: number,
  op: number,
  tci: number,
  dst: Uint8Array,
  dstOff: number,
): number {
  if (op < EGRESS_KEEP || op > EGRESS_SET) throw new RangeError(`unknown egress op ${op}`);
  const received = op === EGRESS_STRIP || op === EGRESS_SET;
  const from = off + (received ? TAG_END : ETH_ADDRS_LEN);
  let at = dstOff;
  dst.set(src.subarray(off, off + ETH_ADDRS_LEN), at);
  at += ETH_ADDRS_LEN;
  if (op === EGRESS_PUSH || op === EGRESS_SET) {
    dst[at++] = ETH_P_8021Q >>> 8;
    dst[at++] = ETH_P_8021Q & 0xff;
    dst[at++] = (tci >>> 8) & 0xff;
    dst[at++] = tci & 0xff;
  }
  dst.set(src.subarray(from, off + len), at);
  return at + (off + len - from) - dstOff;
}
