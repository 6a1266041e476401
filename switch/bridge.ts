/**
 * The per-frame forwarding decision of a learning bridge with OVS-style VLAN ports.
 *
 * Config is compiled into typed arrays; link state and counters live in a SharedArrayBuffer that
 * the main thread reads and updates while Workers call `decide()`. Each thread that calls
 * decide() has its own `writer` index: it owns that row of counters (increments need no atomics)
 * and that FDB reader slot (lookups need no atomics; call `offline()` before idling).
 *
 * The hand-off to the copy is explicit: decide() fills a Decision (the output ports, the VLAN,
 * the received tag, and a private copy of the header bytes it decided on), and egress() builds
 * the frame sent out one port from that Decision alone. Frames usually sit in guest memory that
 * the guest can rewrite at any time, so nothing the decision depends on is read from the frame
 * twice: the addresses and the tag (or EtherType) leave from the private copy, and only the bytes
 * after them are copied from the frame.
 */

import {
  Fdb,
  LEARN_MOVED,
  LEARN_REFRESHED,
  LEARN_REFUSED_FULL,
  LEARN_STATIC,
  MAX_READERS,
} from "./fdb.ts";
import { macHiAt, macLoAt, parseMac } from "../ports/ethernet.ts";
import * as ethernet from "../ports/ethernet.ts";
import { wordView } from "../ports/copy.ts";
import * as copy from "../ports/copy.ts";
import { EgressFrame } from "../ports/port.ts";
import * as port from "../ports/port.ts";

// What the per-frame path tests, as this module's own consts (CONTRIBUTING.md, "The datapath").
const { ETH_ADDRS_LEN, ETH_HLEN, ETH_P_8021Q, VLAN_COUNT, VLAN_HLEN, VLAN_VID_MASK } = ethernet;
const { WORD_INDEX_LIMIT } = copy;
const { HEADER_COPY_LEN } = port;

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
  /**
   * VLAN config indexed by port number; `undefined`: trunk of all VLANs, untagged in VLAN 0;
   * null: a free port number (member of no VLAN) that setPortVlan() may give a port later.
   */
  vlans: (PortVlanConfig | undefined | null)[];
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
/** Config epochs of every Bridge in this thread: a Decision made under another one is stale. */
let epochs = 0;
const MAX_PORTS = 4096;

/**
 * What Bridge.decide() found out about one frame, and everything egress() needs to send it: the
 * decision is made on `header`, a private copy of the frame's first bytes, never on the frame
 * again. One instance is reused for every frame (decide() overwrites all of it), so deciding
 * allocates nothing; it is valid until the next decide().
 */
export class Decision {
  /** Output ports: ports[0, count). Room for every port but the ingress one. */
  readonly ports: Int32Array;
  count = 0;
  /** A DROP_* code, or NO_DROP. */
  dropReason = NO_DROP;
  /** The frame's VLAN; -1 if it was dropped before that was known. */
  vlan = -1;
  /** The received 802.1Q TCI, or -1 if the frame came untagged. */
  ingressTci = -1;
  /** When ports were returned: true if the frame is flooded, false if sent to one known port. */
  flooded = false;
  /**
   * header[0, headerLength): the frame's first min(length, HEADER_COPY_LEN) bytes as they were
   * when decided on: both MAC addresses, then the 802.1Q tag or the EtherType.
   */
  readonly header: Uint8Array;
  /** The same bytes as 32-bit words, for copying them four at a time. */
  readonly headerWords: Uint32Array;
  headerLength = 0;
  /** Where the frame is in its buffer; the bytes after the header are sent from there. */
  offset = 0;
  length = 0;
  /**
   * What a unicast decision held for, so the next frame with the same header can take it as it
   * is (see Bridge.decide): the ingress port, the second, the FDB version and the bridge's
   * config epoch it was made under. `repeatable` is false unless the last decision was a
   * unicast that a second decide() on the same header would make again without learning.
   */
  repeatable = false;
  /** Set when decide() took the decision before as it is: see egressAgain. */
  repeated = false;
  inPort = -1;
  now = -1;
  version = -1;
  epoch = -1;
  /** Where a repeat counts: the index of the ingress port's unicast counter in this writer's row. */
  unicastCounter = 0;

  constructor(portCount: number) {
    this.ports = new Int32Array(portCount);
    const header = new ArrayBuffer(HEADER_COPY_LEN);
    this.header = new Uint8Array(header);
    this.headerWords = new Uint32Array(header);
  }
}

export class Bridge {
  /** The shared table, for any thread (checked lookups). */
  readonly fdb: Fdb;
  /** Link state and counters: pass it to the instances in other threads. */
  readonly state: SharedArrayBuffer;
  readonly portCount: number;
  readonly writers: number;

  private readonly isAccess: Uint8Array;
  /** VLAN of untagged and priority-tagged ingress frames. */
  private readonly untaggedIngress: Int32Array;
  /** VLAN sent untagged on egress besides VLAN 0 (access tag, trunk native), or -1. */
  private readonly untaggedEgress: Int32Array;
  /** member[port << 12 | vlan] */
  private readonly member: Uint8Array;
  /** Ports of VLAN v: floodPorts[floodStart[v] .. floodStart[v + 1]). */
  private readonly floodStart = new Int32Array(VLAN_COUNT + 1);
  private floodPorts = new Int32Array(0);
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
  /** The buffer of the last frame decided on, and its word view (a burst shares one). */
  #lastFrame: Uint8Array | null = null;
  #lastFrameWords: Uint32Array<ArrayBufferLike> = new Uint32Array(0);
  /** Changes whenever the VLAN config changes (see Decision.epoch). */
  #epoch = ++epochs;

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
    this.compileFlood();
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

  /** The flood list of each VLAN, from the membership rows. */
  private compileFlood(): void {
    const ports: number[] = [];
    for (let v = 0; v < VLAN_COUNT; v++) {
      this.floodStart[v] = ports.length;
      for (let p = 0; p < this.portCount; p++) if (this.member[(p << 12) | v] !== 0) ports.push(p);
    }
    this.floodStart[VLAN_COUNT] = ports.length;
    this.floodPorts = Int32Array.from(ports);
  }

  /**
   * Changes one port's VLAN config (null: the port number is free, member of no VLAN). Each
   * thread's Bridge is changed by its own thread, between bursts (a worker control message).
   */
  setPortVlan(p: number, cfg: PortVlanConfig | undefined | null): void {
    if (!Number.isInteger(p) || p < 0 || p >= this.portCount) throw new RangeError(`no port ${p}`);
    this.#epoch = ++epochs;
    this.member.fill(0, p << 12, (p + 1) << 12);
    this.isAccess[p] = 0;
    this.compilePort(p, cfg);
    this.compileFlood();
  }

  private compilePort(p: number, cfg: PortVlanConfig | undefined | null): void {
    if (cfg === null) {
      // A free port number: no VLAN, so nothing floods to it and nothing it sends is admitted.
      this.untaggedIngress[p] = 0;
      this.untaggedEgress[p] = -1;
      return;
    }
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
   * Decides where the frame at frame[offset, offset + length) received on `ingressPort` goes:
   * copies its first bytes into `d.header` once and decides on that copy only; learns its
   * source; fills `d` (output ports, VLAN, received tag, drop reason) and returns `d.count`,
   * 0 when dropped.
   */
  decide(
    ingressPort: number,
    frame: Uint8Array,
    offset: number,
    length: number,
    now: number,
    d: Decision,
  ): number {
    // Small, so that it inlines into the burst loop: a frame that repeats the decision before
    // it costs a few compares, and only the others pay for a call to the whole decision.
    return this.#repeats(ingressPort, frame, offset, length, now, d)
      ? 1
      : this.#decideAnew(ingressPort, frame, offset, length, now, d);
  }

  /**
   * Whether the frame has the same header as the unicast frame decided on before it, from the
   * same port, with nothing that decision read changed since (FDB, VLAN config, the second its
   * source was refreshed, the destination's link): deciding again would give the same answer
   * and learn nothing, so the answer stands (`d` is updated for this frame and counted). The
   * private copy in `d` already holds these very bytes.
   */
  #repeats(
    ingressPort: number,
    frame: Uint8Array,
    offset: number,
    length: number,
    now: number,
    d: Decision,
  ): boolean {
    if (
      !d.repeatable || d.inPort !== ingressPort || d.now !== now ||
      length < ETH_HLEN + VLAN_HLEN || frame !== this.#lastFrame || offset >= WORD_INDEX_LIMIT ||
      (offset & 3) !== 0
    ) {
      return false;
    }
    const fw = this.#lastFrameWords;
    const hw = d.headerWords;
    const w = offset >>> 2; // a 32-bit index: no double arithmetic per load
    if (
      fw[w] !== hw[0] || fw[w + 1] !== hw[1] || fw[w + 2] !== hw[2] || fw[w + 3] !== hw[3] ||
      d.version !== this.datapathFdb.version || d.epoch !== this.#epoch ||
      this.linkUp[d.ports[0]] === 0
    ) {
      return false;
    }
    d.offset = offset;
    d.length = length;
    d.repeated = true;
    this.counters[d.unicastCounter]++;
    return true;
  }

  #decideAnew(
    ingressPort: number,
    frame: Uint8Array,
    offset: number,
    length: number,
    now: number,
    d: Decision,
  ): number {
    const cb = this.counterBase + ingressPort * PORT_COUNTERS;
    const h = d.header;
    const hl = length < HEADER_COPY_LEN ? length : HEADER_COPY_LEN;
    if (hl === HEADER_COPY_LEN && (offset & 3) === 0 && frame.byteOffset === 0) {
      // Four word loads (frames in guest memory are nearly always 4-byte aligned).
      if (frame !== this.#lastFrame) {
        this.#lastFrame = frame;
        this.#lastFrameWords = wordView(frame);
      }
      const fw = this.#lastFrameWords;
      const hw = d.headerWords;
      if (offset < WORD_INDEX_LIMIT) {
        const w = offset >>> 2; // a 32-bit index: no double arithmetic per load
        hw[0] = fw[w];
        hw[1] = fw[w + 1];
        hw[2] = fw[w + 2];
        hw[3] = fw[w + 3];
      } else {
        const w = offset / 4; // exact beyond 4 GiB, where `>>> 2` wraps
        hw[0] = fw[w];
        hw[1] = fw[w + 1];
        hw[2] = fw[w + 2];
        hw[3] = fw[w + 3];
      }
    } else {
      for (let i = 0; i < hl; i++) h[i] = frame[offset + i];
    }
    d.repeatable = d.repeated = false;
    d.count = 0;
    d.vlan = -1;
    d.ingressTci = -1;
    d.offset = offset;
    d.length = length;
    d.headerLength = hl;
    if (length < ETH_HLEN) return this.drop(cb, d, DROP_MALFORMED);
    let vlan = this.untaggedIngress[ingressPort];
    if (((h[12] << 8) | h[13]) === ETH_P_8021Q) {
      if (length < ETH_HLEN + VLAN_HLEN) return this.drop(cb, d, DROP_MALFORMED);
      const tci = (h[14] << 8) | h[15];
      d.ingressTci = tci;
      const vid = tci & VLAN_VID_MASK;
      if (vid !== 0) {
        if (this.isAccess[ingressPort] === 1) return this.drop(cb, d, DROP_VLAN);
        vlan = vid;
      }
    }
    d.vlan = vlan;
    if (this.member[(ingressPort << 12) | vlan] === 0) return this.drop(cb, d, DROP_VLAN);
    if ((h[6] & 1) !== 0) return this.drop(cb, d, DROP_MULTICAST_SRC);

    const fdb = this.datapathFdb;
    const version = fdb.version;
    const sHi = macHiAt(h, 6);
    const sLo = macLoAt(h, 6) | 0;
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
    d.dropReason = NO_DROP;
    const out = d.ports;

    if ((h[0] & 1) === 0) {
      const dHi = macHiAt(h, 0);
      const dLo = macLoAt(h, 0) | 0;
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
        if (port === ingressPort) return this.drop(cb, d, DROP_HAIRPIN);
        if (this.linkUp[port] === 0 || this.member[(port << 12) | vlan] === 0) {
          return this.drop(cb, d, DROP_DEST_DOWN);
        }
        out[0] = port;
        d.flooded = false;
        this.counters[cb + CNT_UNICAST]++;
        d.count = 1;
        // Repeatable only if the source needs no learning next time (see the check above).
        d.repeatable = src[cs] === version;
        d.inPort = ingressPort;
        d.now = now;
        d.version = version;
        d.epoch = this.#epoch;
        d.unicastCounter = cb + CNT_UNICAST;
        return 1;
      }
    }
    let n = 0;
    const ports = this.floodPorts;
    for (let i = this.floodStart[vlan], end = this.floodStart[vlan + 1]; i < end; i++) {
      const p = ports[i];
      if (p !== ingressPort && this.linkUp[p] !== 0) out[n++] = p;
    }
    d.flooded = true;
    this.counters[cb + CNT_FLOODED]++;
    d.count = n;
    return n;
  }

  /** Call before this writer's thread idles or blocks: FDB compactions stop waiting for it. */
  offline(): void {
    this.datapathFdb.offline();
  }

  /** EGRESS_* for sending the decided frame out `port`. */
  egressOp(d: Decision, port: number): number {
    const vlan = d.vlan;
    const tagged = d.ingressTci >= 0;
    if (vlan === 0 || vlan === this.untaggedEgress[port]) {
      return tagged ? EGRESS_STRIP : EGRESS_KEEP;
    }
    if (!tagged) return EGRESS_PUSH;
    return (d.ingressTci & VLAN_VID_MASK) === vlan ? EGRESS_KEEP : EGRESS_SET;
  }

  /** The frame `d` describes as sent out `port`, written into `out` (returned). */
  egress(d: Decision, port: number, out: EgressFrame): EgressFrame {
    // The word path is chosen here, not inside describeEgress: the forwarding loop inlines this
    // call, and the byte path (runts only) would use up V8's inlining budget for the loop, which
    // then calls the word path once per frame instead of inlining it.
    const op = this.egressOp(d, port);
    if (d.headerLength === HEADER_COPY_LEN) describeEgressWords(d, op, out);
    else describeEgress(d, op, out);
    return out;
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

  private drop(counterBase: number, d: Decision, reason: number): number {
    this.counters[counterBase + reason]++;
    d.dropReason = reason;
    return 0;
  }
}

/**
 * The frame a repeated decision (Decision.repeated) describes, into `out` that holds what
 * egress() made of the decision before for the same port: the head is the same bytes, only the
 * tail moves to the new frame.
 */
export function egressAgain(d: Decision, out: EgressFrame): EgressFrame {
  out.tailStart = d.offset + d.headerLength;
  out.tailEnd = d.offset + d.length;
  out.length = out.headLength + d.length - d.headerLength;
  return out;
}

/** The TCI that EGRESS_PUSH / EGRESS_SET write: the frame's VLAN with the received priority. */
export function egressTci(d: Decision): number {
  return (d.ingressTci < 0 ? 0 : d.ingressTci & 0xf000) | d.vlan;
}

/**
 * Fills `out` for sending the decided frame with EGRESS_* `op` applied: its head is built from
 * the private `d.header` (addresses, then the tag as sent, then the EtherType of an untagged
 * frame) and its tail is the frame after the header, which the decision did not read. Returns
 * the output length.
 */
export function describeEgress(d: Decision, op: number, out: EgressFrame): number {
  const hl = d.headerLength;
  if (hl === HEADER_COPY_LEN) return describeEgressWords(d, op, out);
  return describeEgressBytes(d, op, out);
}

/** describeEgress() for a header shorter than HEADER_COPY_LEN (a runt), a byte at a time. */
function describeEgressBytes(d: Decision, op: number, out: EgressFrame): number {
  const hl = d.headerLength;
  const h = d.header;
  const o = out.head;
  for (let i = 0; i < ETH_ADDRS_LEN; i++) o[i] = h[i];
  let at = ETH_ADDRS_LEN;
  if (op === EGRESS_KEEP) {
    // As received: the tag (or the EtherType) from the copy, never from the frame again.
    for (let i = ETH_ADDRS_LEN; i < hl; i++) o[at++] = h[i];
  } else if (op === EGRESS_PUSH || op === EGRESS_SET) {
    const tci = egressTci(d);
    o[at++] = ETH_P_8021Q >>> 8;
    o[at++] = ETH_P_8021Q & 0xff;
    o[at++] = (tci >>> 8) & 0xff;
    o[at++] = tci & 0xff;
    // PUSH: the EtherType follows the new tag; SET replaced the received one.
    if (op === EGRESS_PUSH) { for (let i = ETH_ADDRS_LEN; i < hl; i++) o[at++] = h[i]; }
  } else if (op !== EGRESS_STRIP) {
    unknownEgressOp(op);
  }
  out.headLength = at;
  out.tailStart = d.offset + hl;
  out.tailEnd = d.offset + d.length;
  out.length = at + d.length - hl;
  return out.length;
}

/** Out of line: the throw would add to the size of code the forwarding loop inlines. */
function unknownEgressOp(op: number): never {
  throw new RangeError(`unknown egress op ${op}`);
}

/** The tag EGRESS_PUSH / EGRESS_SET write, as the 32-bit word it is in memory (little-endian). */
function tagWord(tci: number): number {
  return (ETH_P_8021Q >>> 8) | ((ETH_P_8021Q & 0xff) << 8) | ((tci >>> 8) & 0xff) << 16 |
    (tci & 0xff) << 24;
}

/**
 * describeEgress() for a whole copied header (every frame of 16 bytes or more), a word at a
 * time: words 0-2 are the addresses, word 3 the received tag or the EtherType.
 */
function describeEgressWords(d: Decision, op: number, out: EgressFrame): number {
  const h = d.headerWords;
  const o = out.headWords;
  o[0] = h[0];
  o[1] = h[1];
  o[2] = h[2];
  let headLength = ETH_ADDRS_LEN;
  if (op === EGRESS_KEEP) {
    o[3] = h[3]; // as received: the tag (or EtherType) from the copy, not from the frame again
    headLength = HEADER_COPY_LEN;
  } else if (op === EGRESS_PUSH) {
    o[3] = tagWord(egressTci(d));
    o[4] = h[3]; // the EtherType, after the new tag
    headLength = HEADER_COPY_LEN + VLAN_HLEN;
  } else if (op === EGRESS_SET) {
    o[3] = tagWord(egressTci(d));
    headLength = HEADER_COPY_LEN;
  } else if (op !== EGRESS_STRIP) {
    unknownEgressOp(op);
  }
  out.headLength = headLength;
  out.tailStart = d.offset + HEADER_COPY_LEN;
  out.tailEnd = d.offset + d.length;
  out.length = headLength + d.length - HEADER_COPY_LEN;
  return out.length;
}
