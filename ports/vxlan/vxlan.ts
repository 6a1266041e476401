// VXLAN (RFC 7348) facts shared by the control side and the datapath of a VXLAN port: the
// 8-byte header, IPv4 addresses as numbers, the spec a Worker receives, and the shared list
// of remote VTEPs that MAC table entries point into.

/** The VXLAN header: flags (I = VNI valid), 24 reserved bits, the 24-bit VNI, 8 reserved bits. */
export const VXLAN_HLEN = 8;
/** Must be set for a valid VNI (section 5); the other flag bits are ignored on receipt. */
export const VXLAN_FLAG_I = 0x08;

/** Writes a header for `vni` at b[at]: I flag set, every reserved bit zero (section 5). */
export function writeVxlanHeader(b: Uint8Array, at: number, vni: number): void {
  b[at] = VXLAN_FLAG_I;
  b[at + 1] = b[at + 2] = b[at + 3] = 0;
  b[at + 4] = (vni >>> 16) & 0xff;
  b[at + 5] = (vni >>> 8) & 0xff;
  b[at + 6] = vni & 0xff;
  b[at + 7] = 0;
}

/** "192.0.2.1" -> 0xc0000201 (unsigned); the caller validated the text. */
export function ipv4ToNumber(text: string): number {
  const [a, b, c, d] = text.split(".").map(Number);
  return ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;
}

export function numberToIpv4(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

/**
 * The inner MAC -> remote VTEP table a VXLAN port learns into (the switch gives it one table of
 * the same kind as its FDB; `port` there is an index into the remote list). Keys use VLAN 0:
 * like Linux's VXLAN FDB, one MAC is behind one VTEP per VNI.
 */
export interface RemoteMacTable {
  learn(macHi: number, macLo: number, vlan: number, port: number, now: number): number;
  lookup(macHi: number, macLo: number, vlan: number): number;
  /** Changes whenever an entry may have been added, moved or removed (a plain load). */
  readonly version: number;
}

// The shared remote list, an Int32Array over a SharedArrayBuffer: [count, floodCount, addr...].
// Entries [0, floodCount) are the flood list; later ones are static remoteMacs targets and
// VTEPs learned from received traffic. Only the receiving Worker appends (after the control
// plane filled the configured ones, before any Worker ran): it writes the address, then
// publishes the count with Atomics.store, then learns MACs pointing at the new index.
export const REMOTES_COUNT = 0;
export const REMOTES_FLOOD = 1;
export const REMOTES_BASE = 2;
/** Remote VTEPs one port knows, configured and learned (table entries hold 16-bit indexes). */
export const MAX_REMOTES = 4096;

export function createRemoteList(flood: number[], others: number[]): SharedArrayBuffer {
  const sab = new SharedArrayBuffer((REMOTES_BASE + MAX_REMOTES) * 4);
  const w = new Int32Array(sab);
  const all = [...flood, ...others];
  all.forEach((a, i) => w[REMOTES_BASE + i] = a | 0);
  w[REMOTES_FLOOD] = flood.length;
  Atomics.store(w, REMOTES_COUNT, all.length);
  return sab;
}

/** What a datapath Worker needs to run a VXLAN port. */
export interface VxlanSpec {
  name: string;
  /** The UDP socket bound to local:udpPort, shared by every Worker. */
  fd: number;
  /**
   * A second socket bound to the VTEP address (its own source port) that sends each TCP
   * super-frame's segments as one UDP_SEGMENT message; -1 where the kernel lacks it.
   */
  gsoFd: number;
  /**
   * A tap device taking encapsulated TCP super-frames whole (tunnel GSO, ffi/tap.ts), -1: none;
   * its MAC (frames written to it are addressed to it) and the VTEP address (outer source).
   */
  tapFd: number;
  tapMac: number[];
  local: number;
  vni: number;
  udpPort: number;
  /** Inner MTU: frames longer than mtu + 14 (+ 4 when tagged) are dropped, counted too_big. */
  mtu: number;
  strict: boolean;
  /** createRemoteList(). */
  remotes: SharedArrayBuffer;
  /** The RemoteMacTable's shared buffer (the switch attaches a view in each Worker). */
  table: SharedArrayBuffer;
}
