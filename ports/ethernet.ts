/**
 * Ethernet constants and MAC helpers, for every layer from the ports up (one definition each).
 *
 * On the datapath a MAC is two numbers, never a string or an object:
 * `hi` = bytes 0..1 as a 16-bit number, `lo` = bytes 2..5 as an unsigned 32-bit number.
 */

export const ETH_ALEN = 6;
/** Destination + source MAC: where the EtherType or an 802.1Q tag starts. */
export const ETH_ADDRS_LEN = 12;
export const ETH_HLEN = 14;
export const VLAN_HLEN = 4;
/** 802.1Q customer tag: the only tag the bridge interprets. */
export const ETH_P_8021Q = 0x8100;
/** 802.1ad service tag: carried as payload (the bridge does not terminate QinQ). */
export const ETH_P_8021AD = 0x88a8;
export const VLAN_VID_MASK = 0x0fff;
export const VLAN_COUNT = 4096;

export interface Mac {
  hi: number;
  lo: number;
}

/** First two bytes of the MAC at `off`. */
export function macHiAt(b: Uint8Array, off: number): number {
  return (b[off] << 8) | b[off + 1];
}

/** Last four bytes of the MAC at `off`, unsigned. */
export function macLoAt(b: Uint8Array, off: number): number {
  return ((b[off + 2] << 24) | (b[off + 3] << 16) | (b[off + 4] << 8) | b[off + 5]) >>> 0;
}

/** Group bit (I/G) of the MAC at `off`: broadcast and multicast. */
export function isMulticastAt(b: Uint8Array, off: number): boolean {
  return (b[off] & 1) !== 0;
}

export function isMulticastHi(hi: number): boolean {
  return (hi & 0x100) !== 0;
}

export function writeMac(b: Uint8Array, off: number, hi: number, lo: number): void {
  b[off] = hi >>> 8;
  b[off + 1] = hi;
  b[off + 2] = lo >>> 24;
  b[off + 3] = lo >>> 16;
  b[off + 4] = lo >>> 8;
  b[off + 5] = lo;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

/** "02:00:5e:00:00:01": lower-case, colon-separated. */
export function formatMac(hi: number, lo: number): string {
  return `${HEX[(hi >>> 8) & 255]}:${HEX[hi & 255]}:${HEX[lo >>> 24]}:${HEX[(lo >>> 16) & 255]}:${
    HEX[(lo >>> 8) & 255]
  }:${HEX[lo & 255]}`;
}

const MAC_RE =
  /^([0-9a-f]{2})([:-])([0-9a-f]{2})\2([0-9a-f]{2})\2([0-9a-f]{2})\2([0-9a-f]{2})\2([0-9a-f]{2})$/i;

/** Parses "aa:bb:cc:dd:ee:ff" (or with dashes); throws a TypeError naming the bad input. */
export function parseMac(s: string): Mac {
  const m = typeof s === "string" ? MAC_RE.exec(s.trim()) : null;
  if (m === null) {
    throw new TypeError(
      `invalid MAC address ${JSON.stringify(s)}: expected six hex bytes like "02:00:00:00:00:01"`,
    );
  }
  const byte = (i: number) => parseInt(m[i], 16);
  return {
    hi: (byte(1) << 8) | byte(3),
    lo: ((byte(4) << 24) | (byte(5) << 16) | (byte(6) << 8) | byte(7)) >>> 0,
  };
}
