// Port security: which source MACs (and, optionally, which IPv4/IPv6 addresses) a port may send
// from. Checked on the ingress port before the bridge learns, so a spoofed frame neither reaches
// anyone nor moves a victim's MAC table entry. IP checks follow what cloud switches enforce:
// the IPv4 source, the ARP sender (hardware and protocol address) and the IPv6 source and
// Neighbor Advertisement target must be the port's own.
import { ETH_HLEN, ETH_P_8021Q, macHiAt, macLoAt, VLAN_HLEN } from "../ports/ethernet.ts";

export const ETH_P_IP = 0x0800;
export const ETH_P_ARP = 0x0806;
export const ETH_P_IPV6 = 0x86dd;
const IPPROTO_ICMPV6 = 58;
// IPv6 extension headers that may precede ICMPv6 (RFC 8200 4.1), walked to find an ND message.
const IPPROTO_HOPOPTS = 0;
const IPPROTO_ROUTING = 43;
const IPPROTO_DSTOPTS = 60;
/** More than this many extension headers before ICMPv6: refused rather than walked further. */
const MAX_EXT_HEADERS = 4;
/** RFC 4861 Neighbor Advertisement. */
const ND_NEIGHBOR_ADVERT = 136;
const ARP_LEN = 28;
const IPV4_MIN_HLEN = 20;
const IPV6_HLEN = 40;
/** ICMPv6 header (4) + NA flags (4) + target address (16). */
const NA_LEN = 24;

/** check() results. */
export const SECURITY_OK = 0;
export const SECURITY_BAD_MAC = 1;
export const SECURITY_BAD_IP = 2;

// learnOnce state words: [phase, hi, lo]; phase 0 nothing pinned, 1 being pinned, 2 pinned.
const PIN_WORDS = 3;
const PIN_NONE = 0;
const PIN_BUSY = 1;
const PIN_SET = 2;

/** What a worker needs to enforce one port's security (structured-cloneable). */
export interface PortSecuritySpec {
  /** Allowed source MACs as [hi, lo | 0] pairs; empty: any (unless learnOnce). */
  macs: number[];
  learnOnce: boolean;
  /** The MAC learnOnce pinned, shared by every worker polling the port. */
  pinned: SharedArrayBuffer;
  /** Allowed IPv4 sources (int32, network order), or null: IPv4 and ARP not checked. */
  ipv4: number[] | null;
  /** Allowed IPv6 sources, four int32 words each (network order), or null: not checked. */
  ipv6: number[] | null;
}

export function createPinned(): SharedArrayBuffer {
  return new SharedArrayBuffer(PIN_WORDS * 4);
}

/** The MAC learnOnce pinned, as [hi, lo], or null. */
export function pinnedMac(pinned: SharedArrayBuffer): [number, number] | null {
  const w = new Int32Array(pinned);
  return Atomics.load(w, 0) === PIN_SET ? [w[1], w[2] >>> 0] : null;
}

/** "10.0.0.1" → int32 in network order; null if not a dotted quad. */
export function parseIpv4(text: string): number | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (!m) return null;
  const b = m.slice(1).map(Number);
  if (b.some((x) => x > 255)) return null;
  return ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) | 0;
}

/** An IPv6 address (RFC 4291 text, `::` allowed, no zone) → four int32 words; null if invalid. */
export function parseIpv6(text: string): number[] | null {
  let s = text.toLowerCase();
  let tail: number[] = [];
  const v4 = /:(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4) {
    const a = parseIpv4(v4[1]);
    if (a === null) return null;
    tail = [(a >>> 16) & 0xffff, a & 0xffff];
    s = s.slice(0, v4.index + 1) + "0:0";
  }
  const halves = s.split("::");
  if (halves.length > 2) return null;
  const group = (part: string) => part === "" ? [] : part.split(":");
  const head = group(halves[0]);
  const rest = halves.length === 2 ? group(halves[1]) : [];
  const missing = 8 - head.length - rest.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const groups = [...head, ...Array(halves.length === 2 ? missing : 0).fill("0"), ...rest];
  if (groups.some((g) => !/^[0-9a-f]{1,4}$/.test(g))) return null;
  const n = groups.map((g) => parseInt(g, 16));
  if (tail.length) n.splice(6, 2, ...tail);
  return [0, 1, 2, 3].map((i) => ((n[2 * i] << 16) | n[2 * i + 1]) | 0);
}

const word = (b: Uint8Array, o: number) =>
  ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) | 0;

export class PortSecurity {
  readonly #macs: Int32Array;
  readonly #learnOnce: boolean;
  readonly #pin: Int32Array;
  readonly #ipv4: Int32Array | null;
  readonly #ipv6: Int32Array | null;
  readonly #checkIp: boolean;

  constructor(spec: PortSecuritySpec) {
    this.#macs = Int32Array.from(spec.macs);
    this.#learnOnce = spec.learnOnce;
    this.#pin = new Int32Array(spec.pinned, 0, PIN_WORDS);
    this.#ipv4 = spec.ipv4 ? Int32Array.from(spec.ipv4) : null;
    this.#ipv6 = spec.ipv6 ? Int32Array.from(spec.ipv6) : null;
    this.#checkIp = spec.ipv4 !== null || spec.ipv6 !== null;
  }

  /** SECURITY_* for the frame at frame[off, off + len) (at least an Ethernet header). */
  check(frame: Uint8Array, off: number, len: number): number {
    const hi = macHiAt(frame, off + 6);
    const lo = macLoAt(frame, off + 6) | 0;
    const macs = this.#macs;
    if (macs.length !== 0) {
      let i = 0;
      while (i < macs.length && (macs[i] !== hi || macs[i + 1] !== lo)) i += 2;
      if (i === macs.length) return SECURITY_BAD_MAC;
    }
    if (this.#learnOnce && !this.#pinned(hi, lo)) return SECURITY_BAD_MAC;
    return this.#checkIp ? this.#checkAddresses(frame, off, len) : SECURITY_OK;
  }

  /** Whether (hi, lo) is the pinned MAC, pinning it if none is yet. */
  #pinned(hi: number, lo: number): boolean {
    const pin = this.#pin;
    let phase = Atomics.load(pin, 0);
    if (phase === PIN_NONE && Atomics.compareExchange(pin, 0, PIN_NONE, PIN_BUSY) === PIN_NONE) {
      pin[1] = hi;
      pin[2] = lo;
      Atomics.store(pin, 0, PIN_SET);
      return true;
    }
    // Another worker is pinning this very moment: refuse rather than guess.
    if (phase !== PIN_SET) phase = Atomics.load(pin, 0);
    return phase === PIN_SET && pin[1] === hi && pin[2] === lo;
  }

  #checkAddresses(frame: Uint8Array, off: number, len: number): number {
    let l3 = off + ETH_HLEN;
    let type = (frame[off + 12] << 8) | frame[off + 13];
    if (type === ETH_P_8021Q) {
      if (len < ETH_HLEN + VLAN_HLEN) return SECURITY_OK; // the bridge drops it as malformed
      type = (frame[off + 16] << 8) | frame[off + 17];
      l3 += VLAN_HLEN;
    }
    const end = off + len;
    const v4 = this.#ipv4;
    const v6 = this.#ipv6;
    if (type === ETH_P_ARP && v4 !== null) {
      if (l3 + ARP_LEN > end) return SECURITY_BAD_IP;
      // The sender hardware address must be the frame's (already allowed) source MAC.
      for (let i = 0; i < 6; i++) {
        if (frame[l3 + 8 + i] !== frame[off + 6 + i]) return SECURITY_BAD_IP;
      }
      const spa = word(frame, l3 + 14);
      // 0.0.0.0: an ARP probe (RFC 5227) claims nothing.
      return spa === 0 || v4.includes(spa) ? SECURITY_OK : SECURITY_BAD_IP;
    }
    if (type === ETH_P_IP && v4 !== null) {
      if (l3 + IPV4_MIN_HLEN > end) return SECURITY_BAD_IP;
      const src = word(frame, l3 + 12);
      // 0.0.0.0: a DHCP client before it has an address.
      return src === 0 || v4.includes(src) ? SECURITY_OK : SECURITY_BAD_IP;
    }
    if (type === ETH_P_IPV6 && v6 !== null) {
      if (l3 + IPV6_HLEN > end) return SECURITY_BAD_IP;
      const src = l3 + 8;
      // The unspecified address: duplicate address detection (RFC 4862).
      const unspecified = (word(frame, src) | word(frame, src + 4) | word(frame, src + 8) |
        word(frame, src + 12)) === 0;
      if (!unspecified && !this.#ownIpv6(frame, src, off + 6)) return SECURITY_BAD_IP;
      // Find ICMPv6 behind any extension headers: an advertisement hidden behind a
      // hop-by-hop header is still an advertisement to the receiving kernel.
      let next = frame[l3 + 6];
      let at = l3 + IPV6_HLEN;
      for (
        let i = 0;
        next === IPPROTO_HOPOPTS || next === IPPROTO_ROUTING || next === IPPROTO_DSTOPTS;
        i++
      ) {
        if (i === MAX_EXT_HEADERS || at + 8 > end) return SECURITY_BAD_IP;
        next = frame[at];
        at += (frame[at + 1] + 1) * 8;
      }
      if (next === IPPROTO_ICMPV6 && at + NA_LEN <= end) {
        if (frame[at] === ND_NEIGHBOR_ADVERT && !this.#ownIpv6(frame, at + 8, off + 6)) {
          return SECURITY_BAD_IP;
        }
      }
    }
    return SECURITY_OK;
  }

  /**
   * Whether the IPv6 address at `at` is listed, or is the EUI-64 link-local address (RFC 4291
   * 2.5.1) of the frame's source MAC at `mac` (every guest has that one without configuring it).
   */
  #ownIpv6(frame: Uint8Array, at: number, mac: number): boolean {
    const w0 = word(frame, at);
    const w1 = word(frame, at + 4);
    const w2 = word(frame, at + 8);
    const w3 = word(frame, at + 12);
    if (w0 === (0xfe800000 | 0) && w1 === 0) {
      const e2 = (((frame[mac] ^ 2) << 24) | (frame[mac + 1] << 16) | (frame[mac + 2] << 8) |
        0xff) | 0;
      const e3 = ((0xfe << 24) | (frame[mac + 3] << 16) | (frame[mac + 4] << 8) | frame[mac + 5]) |
        0;
      if (w2 === e2 && w3 === e3) return true;
    }
    const v6 = this.#ipv6!;
    for (let i = 0; i < v6.length; i += 4) {
      if (v6[i] === w0 && v6[i + 1] === w1 && v6[i + 2] === w2 && v6[i + 3] === w3) return true;
    }
    return false;
  }
}
