// AF_PACKET sockets (packet(7), Documentation/networking/packet_mmap.rst): the socket, its
// sockaddr_ll binding, the PACKET_* socket options the uplink port needs, and interface facts
// through ioctl. Structures are laid out by hand (x86_64); errors are SysErrors naming the call.
import { libc } from "./libc.ts";
import { EAGAIN, EINTR, errno, SysError } from "./errno.ts";
import { closeFd } from "./fd.ts";
import { cString } from "./mem.ts";

const AF_PACKET = 17;
const SOCK_RAW = 3;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
export const ETH_P_ALL = 0x0003;
const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
const SO_SNDBUFFORCE = 32;
const SO_RCVBUFFORCE = 33;
const SOL_PACKET = 263;
const PACKET_ADD_MEMBERSHIP = 1;
const PACKET_RX_RING = 5;
const PACKET_STATISTICS = 6;
const PACKET_VERSION = 10;
const PACKET_TX_RING = 13;
const PACKET_LOSS = 14;
const PACKET_VNET_HDR = 15;
const PACKET_QDISC_BYPASS = 20;
const PACKET_IGNORE_OUTGOING = 23;
const PACKET_MR_PROMISC = 1;
export const TPACKET_V2 = 1;
export const TPACKET_V3 = 2;
export const MSG_DONTWAIT = 0x40;
const MSG_TRUNC = 0x20;
const EPERM = 1;
const EACCES = 13;
const ENODEV = 19;
const SIOCGIFFLAGS = 0x8913;
const SIOCSIFFLAGS = 0x8914;
const SIOCGIFMTU = 0x8921;
const SIOCGIFHWADDR = 0x8927;
export const IFF_UP = 0x1;
export const IFF_RUNNING = 0x40;
const IFNAMSIZ = 16;

const PERMISSION_HINT = "(the switch needs root or CAP_NET_RAW)";

function fail(call: string, detail: string): never {
  const e = errno();
  const hint = e === EPERM || e === EACCES ? ` ${PERMISSION_HINT}` : "";
  throw new SysError(call, e, `${detail}${hint}`);
}

const htons = (v: number) => ((v & 0xff) << 8) | (v >>> 8);

/**
 * A nonblocking, close-on-exec AF_PACKET/SOCK_RAW socket. `protocol` 0 receives nothing until
 * bind() names one: the port uses that, so no other interface's frames reach the ring first.
 */
export function packetSocket(protocol = ETH_P_ALL): number {
  const type = SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC;
  const fd = libc.socket(AF_PACKET, type, htons(protocol));
  if (fd < 0) fail("socket", "AF_PACKET");
  return fd;
}

/** bind() to one interface (struct sockaddr_ll, 20 bytes); also sets the protocol received. */
export function bindToInterface(fd: number, ifindex: number, protocol = ETH_P_ALL): void {
  const sa = new Uint8Array(20);
  const v = new DataView(sa.buffer);
  v.setUint16(0, AF_PACKET, true);
  v.setUint16(2, protocol, false); // sll_protocol is big-endian
  v.setInt32(4, ifindex, true);
  if (libc.bind(fd, sa, sa.length) < 0) fail("bind", `AF_PACKET ifindex ${ifindex}`);
}

/** The interface's index; a missing one is a clear ENODEV naming it. */
export function ifNameToIndex(name: string): number {
  const index = libc.if_nametoindex(cString(name));
  if (index === 0) {
    const e = errno();
    throw new SysError(
      "if_nametoindex",
      e === 0 ? ENODEV : e,
      `interface "${name}" does not exist (list interfaces with \`ip link\`)`,
    );
  }
  return index;
}

function setInt(fd: number, level: number, name: number, value: number, what: string): void {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, value, true);
  if (libc.setsockopt(fd, level, name, b, 4) < 0) fail("setsockopt", what);
}

/** PACKET_VERSION: must precede the rings. */
export function setPacketVersion(fd: number, version = TPACKET_V3): void {
  setInt(fd, SOL_PACKET, PACKET_VERSION, version, `PACKET_VERSION ${version}`);
}

/** struct tpacket_req3 (also read as a tpacket_req by V1/V2 rings). */
export interface TpacketReq3 {
  blockSize: number;
  blockNr: number;
  frameSize: number;
  frameNr: number;
  /** V3 RX only: ms after which the kernel hands over a block that is not full. */
  retireBlkTov?: number;
  sizeofPriv?: number;
  featureReqWord?: number;
}

function setRing(fd: number, name: number, req: TpacketReq3, what: string): void {
  const b = new Uint8Array(28);
  const v = new DataView(b.buffer);
  const fields = [
    req.blockSize,
    req.blockNr,
    req.frameSize,
    req.frameNr,
    req.retireBlkTov ?? 0,
    req.sizeofPriv ?? 0,
    req.featureReqWord ?? 0,
  ];
  fields.forEach((f, i) => v.setUint32(i * 4, f, true));
  const detail = `${what} ${req.blockNr} x ${req.blockSize} B blocks, ${req.frameSize} B frames`;
  if (libc.setsockopt(fd, SOL_PACKET, name, b, 28) < 0) fail("setsockopt", detail);
}

export function setRxRing(fd: number, req: TpacketReq3): void {
  setRing(fd, PACKET_RX_RING, req, "PACKET_RX_RING");
}

export function setTxRing(fd: number, req: TpacketReq3): void {
  setRing(fd, PACKET_TX_RING, req, "PACKET_TX_RING");
}

/** PACKET_ADD_MEMBERSHIP PACKET_MR_PROMISC (struct packet_mreq); dropped when the fd closes. */
export function addPromiscMembership(fd: number, ifindex: number): void {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setInt32(0, ifindex, true);
  v.setUint16(4, PACKET_MR_PROMISC, true);
  if (libc.setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, b, 16) < 0) {
    fail("setsockopt", `PACKET_ADD_MEMBERSHIP promisc ifindex ${ifindex}`);
  }
}

/** PACKET_IGNORE_OUTGOING (Linux >= 4.20): frames leaving the interface are not received. */
export function setIgnoreOutgoing(fd: number, on = true): void {
  setInt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, on ? 1 : 0, "PACKET_IGNORE_OUTGOING");
}

/** PACKET_QDISC_BYPASS: transmit straight to the driver queue, skipping tc and taps. */
export function setQdiscBypass(fd: number, on = true): void {
  setInt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, on ? 1 : 0, "PACKET_QDISC_BYPASS");
}

/** PACKET_LOSS: a TX frame the kernel rejects is skipped instead of wedging the ring. */
export function setPacketLoss(fd: number, on = true): void {
  setInt(fd, SOL_PACKET, PACKET_LOSS, on ? 1 : 0, "PACKET_LOSS");
}

/**
 * PACKET_VNET_HDR: every frame in the rings (and of send/recv) is preceded by a struct
 * virtio_net_hdr with the kernel's checksum and GSO state. Must precede the rings.
 */
export function setVnetHdr(fd: number, on = true): void {
  setInt(fd, SOL_PACKET, PACKET_VNET_HDR, on ? 1 : 0, "PACKET_VNET_HDR");
}

/** SO_SNDBUF/SO_RCVBUF, beyond the sysctl maximum when privileged (the *FORCE variants). */
export function setSocketBuffer(fd: number, which: "send" | "receive", bytes: number): void {
  const [force, plain] = which === "send"
    ? [SO_SNDBUFFORCE, SO_SNDBUF]
    : [SO_RCVBUFFORCE, SO_RCVBUF];
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, bytes, true);
  if (libc.setsockopt(fd, SOL_SOCKET, force, b, 4) === 0) return;
  setInt(fd, SOL_SOCKET, plain, bytes, which === "send" ? "SO_SNDBUF" : "SO_RCVBUF");
}

/** struct tpacket_stats_v3; reading resets the kernel's counters. */
export interface PacketStats {
  packets: number;
  drops: number;
  freezes: number;
}

export function packetStatistics(fd: number): PacketStats {
  const b = new Uint8Array(12);
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, 12, true);
  if (libc.getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, b, len) < 0) {
    fail("getsockopt", "PACKET_STATISTICS");
  }
  const v = new DataView(b.buffer);
  return {
    packets: v.getUint32(0, true),
    drops: v.getUint32(4, true),
    freezes: v.getUint32(8, true),
  };
}

/** Interface facts from SIOCGIFFLAGS, SIOCGIFMTU and SIOCGIFHWADDR (struct ifreq, 40 bytes). */
export interface InterfaceInfo {
  flags: number;
  /** IFF_UP && IFF_RUNNING: administratively up and with carrier. */
  up: boolean;
  mtu: number;
  mac: string;
}

export function interfaceInfo(fd: number, name: string): InterfaceInfo {
  const ifr = new Uint8Array(40);
  const v = new DataView(ifr.buffer);
  const n = cString(name);
  if (n.length > IFNAMSIZ) throw new Error(`interface name too long (max 15 bytes): ${name}`);
  const request = (code: number, what: string) => {
    ifr.fill(0);
    ifr.set(n);
    if (libc.ioctl(fd, BigInt(code), ifr) < 0) {
      const e = errno();
      const hint = e === ENODEV ? " (list interfaces with `ip link`)" : "";
      throw new SysError("ioctl", e, `${what} "${name}"${hint}`);
    }
  };
  request(SIOCGIFFLAGS, "SIOCGIFFLAGS");
  const flags = v.getUint16(16, true);
  request(SIOCGIFMTU, "SIOCGIFMTU");
  const mtu = v.getInt32(16, true);
  request(SIOCGIFHWADDR, "SIOCGIFHWADDR");
  const mac = Array.from(ifr.subarray(18, 24), (b) => b.toString(16).padStart(2, "0")).join(":");
  const up = (flags & IFF_UP) !== 0 && (flags & IFF_RUNNING) !== 0;
  return { flags, up, mtu, mac };
}

/** Sets interface `name` administratively up (SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP). */
export function setInterfaceUp(fd: number, name: string): void {
  const ifr = new Uint8Array(40);
  const v = new DataView(ifr.buffer);
  ifr.set(cString(name));
  if (libc.ioctl(fd, BigInt(SIOCGIFFLAGS), ifr) < 0) fail("ioctl", `SIOCGIFFLAGS "${name}"`);
  v.setUint16(16, v.getUint16(16, true) | IFF_UP, true);
  if (libc.ioctl(fd, BigInt(SIOCSIFFLAGS), ifr) < 0) fail("ioctl", `SIOCSIFFLAGS "${name}" up`);
}

/**
 * Kicks the TX ring: the kernel sends every TP_STATUS_SEND_REQUEST frame from its head on.
 * Runs once per burst in the datapath, so it returns -errno instead of throwing.
 */
export function sendNow(fd: number): number {
  const n = Number(libc.send(fd, null, 0n, MSG_DONTWAIT));
  return n < 0 ? -errno() : n;
}

/**
 * One frame from a plain (ring-less) socket into `buf`: its full length (larger than
 * buf.length when truncated: MSG_TRUNC), -1 when none is waiting, or -errno.
 */
export function recvFrame(fd: number, buf: Uint8Array): number {
  const n = Number(libc.recv(fd, buf, BigInt(buf.length), MSG_DONTWAIT | MSG_TRUNC));
  if (n >= 0) return n;
  const e = errno();
  return e === EAGAIN || e === EINTR ? -1 : -e;
}

/** Sends buf[0, len) on a bound socket; the bytes sent or -errno. */
export function sendFrame(fd: number, buf: Uint8Array, len: number): number {
  const n = Number(libc.sendto(fd, buf, BigInt(len), MSG_DONTWAIT, null, 0));
  return n < 0 ? -errno() : n;
}

/** A plain socket bound to `ifname`, e.g. to inject or capture frames in tests. */
export function openBoundSocket(ifname: string): number {
  const fd = packetSocket(0);
  try {
    bindToInterface(fd, ifNameToIndex(ifname));
    return fd;
  } catch (err) {
    closeFd(fd);
    throw err;
  }
}
