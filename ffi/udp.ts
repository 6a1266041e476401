// IPv4 UDP sockets for VXLAN ports: the socket bound to the VTEP address, and recvmmsg(2) /
// sendmmsg(2), which move a burst of datagrams per system call. The message vectors live in
// memory the caller maps once; this file only knows their x86_64 layout (struct mmsghdr, 64
// bytes: struct msghdr then msg_len; struct iovec, 16; struct sockaddr_in, 16).
import { libc } from "./libc.ts";
import { EAGAIN, EINTR, errno, SysError } from "./errno.ts";
import { closeFd } from "./fd.ts";
import { setSocketBuffer } from "./packet.ts";

const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const IPPROTO_IP = 0;
const IP_MTU_DISCOVER = 10;
/** Set DF, never fragment locally: a datagram larger than the path MTU fails with EMSGSIZE. */
const IP_PMTUDISC_DO = 2;
const MSG_DONTWAIT = 0x40;
const SOL_SOCKET = 1;
/** Send IPv4 UDP with checksum 0 ("no checksum", RFC 768). */
const SO_NO_CHECK = 11;
export const MSG_TRUNC = 0x20;

export const MMSGHDR_SIZE = 64;
export const MSG_NAME = 0;
export const MSG_NAMELEN = 8;
export const MSG_IOV = 16;
export const MSG_IOVLEN = 24;
export const MSG_CONTROL = 32;
export const MSG_CONTROLLEN = 40;
export const MSG_FLAGS = 48;
export const MSG_LEN = 56;
export const IOVEC_SIZE = 16;
export const IOV_BASE = 0;
export const IOV_LEN = 8;
export const SOCKADDR_IN_SIZE = 16;
/**
 * UDP segmentation offload (UDP_SEGMENT, Linux 4.18): a message whose payload is several
 * datagrams laid end to end, with a control message giving their size, goes down the stack as
 * one buffer and is cut into datagrams only where it leaves (the device, or the receiving
 * socket). struct cmsghdr (len 8, level 4, type 4) then the 16-bit size: CMSG_SPACE(2) bytes.
 */
const SOL_UDP = 17;
const UDP_SEGMENT = 103;
export const UDP_SEGMENT_CMSG_SIZE = 24;
/** Datagrams per UDP_SEGMENT message at most (UDP_MAX_SEGMENTS before Linux 6.9). */
export const UDP_SEGMENT_MAX = 64;

/** Writes the control message for a UDP_SEGMENT send of `size`-byte datagrams at b[at]. */
export function writeUdpSegmentCmsg(b: Uint8Array, at: number, size: number): void {
  b.fill(0, at, at + UDP_SEGMENT_CMSG_SIZE);
  b[at] = 16 + 2; // cmsg_len = CMSG_LEN(2), little-endian
  b[at + 8] = SOL_UDP;
  b[at + 12] = UDP_SEGMENT;
  b[at + 16] = size & 0xff; // host order (little-endian) u16
  b[at + 17] = size >>> 8;
}

/**
 * UDP_GRO (Linux 5.0): the socket takes a run of datagrams that came as one buffer (a peer's
 * UDP_SEGMENT send over a veth, or coalesced by a NIC's GRO) whole, in one message, with a
 * control message giving the datagram size: CMSG_SPACE(4) bytes.
 */
const UDP_GRO = 104;
export const UDP_GRO_CMSG_SIZE = 24;

/** Turns UDP_GRO on; false where the kernel lacks it (the socket then gets single datagrams). */
export function enableUdpGro(fd: number): boolean {
  const v = new Uint8Array(4);
  v[0] = 1;
  return libc.setsockopt(fd, SOL_UDP, UDP_GRO, v, 4) === 0;
}

/**
 * The datagram size in a received message's UDP_GRO control message at b[at] (`used` bytes the
 * kernel wrote), or 0: a single datagram.
 */
export function udpGroSize(b: Uint8Array, at: number, used: number): number {
  if (used < 16 + 4 || b[at + 8] !== SOL_UDP || b[at + 12] !== UDP_GRO) return 0;
  return (b[at + 16] | (b[at + 17] << 8) | (b[at + 18] << 16) | (b[at + 19] << 24)) >>> 0;
}

/** sin_port (big-endian) and sin_addr (network order) inside struct sockaddr_in. */
export const SIN_PORT = 2;
export const SIN_ADDR = 4;

/** Writes IPv4 address `addr` (a host-order number) at b[at, at + 4) in network order. */
export function writeIpv4Address(b: Uint8Array, at: number, addr: number): void {
  b[at] = addr >>> 24;
  b[at + 1] = (addr >>> 16) & 0xff;
  b[at + 2] = (addr >>> 8) & 0xff;
  b[at + 3] = addr & 0xff;
}

/** Writes struct sockaddr_in for `addr` (the four address bytes in order) and `port`. */
export function writeSockaddrIn(b: Uint8Array, at: number, addr: number, port: number): void {
  b.fill(0, at, at + SOCKADDR_IN_SIZE);
  b[at] = AF_INET; // sa_family, little-endian u16
  b[at + SIN_PORT] = port >>> 8;
  b[at + SIN_PORT + 1] = port & 0xff;
  writeIpv4Address(b, at + SIN_ADDR, addr);
}

/**
 * A nonblocking UDP socket bound to `addr`:`port` (addr as a host-order number), with large
 * buffers and DF set; `zeroChecksum` sends a UDP checksum of 0. Errors name the address:
 * EADDRNOTAVAIL means no interface has it.
 */
export function udpSocket(
  addr: number,
  port: number,
  opts: { bufferBytes?: number; zeroChecksum?: boolean } = {},
): number {
  const bufferBytes = opts.bufferBytes ?? 4 << 20;
  const where = `${addr >>> 24}.${(addr >>> 16) & 255}.${(addr >>> 8) & 255}.${addr & 255}:${port}`;
  const fd = libc.socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new SysError("socket", errno(), "AF_INET/SOCK_DGRAM");
  try {
    setSocketBuffer(fd, "receive", bufferBytes);
    setSocketBuffer(fd, "send", bufferBytes);
    const v = new Uint8Array(4);
    new DataView(v.buffer).setInt32(0, IP_PMTUDISC_DO, true);
    if (libc.setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, v, 4) < 0) {
      throw new SysError("setsockopt", errno(), "IP_MTU_DISCOVER");
    }
    if (opts.zeroChecksum) {
      new DataView(v.buffer).setInt32(0, 1, true);
      if (libc.setsockopt(fd, SOL_SOCKET, SO_NO_CHECK, v, 4) < 0) {
        throw new SysError("setsockopt", errno(), "SO_NO_CHECK");
      }
    }
    const sa = new Uint8Array(SOCKADDR_IN_SIZE);
    writeSockaddrIn(sa, 0, addr, port);
    if (libc.bind(fd, sa, SOCKADDR_IN_SIZE) < 0) {
      const e = errno();
      const hint = e === 99 ? " (no interface has this address: `ip addr`)" : "";
      throw new SysError("bind", e, `${where}${hint}`);
    }
    return fd;
  } catch (err) {
    closeFd(fd);
    throw err;
  }
}

/**
 * Whether the kernel takes UDP_SEGMENT on this socket (a size of 0 sets no default): false on
 * kernels before 4.18.
 */
export function supportsUdpSegment(fd: number): boolean {
  const v = new Uint8Array(4);
  return libc.setsockopt(fd, SOL_UDP, UDP_SEGMENT, v, 4) === 0;
}

/**
 * Receives up to `vlen` datagrams into the vector at `msgvec` without blocking: the count,
 * 0 when none waits, or -errno. Runs on the datapath, so it never throws.
 */
export function recvBurst(fd: number, msgvec: Deno.PointerObject, vlen: number): number {
  const n = libc.recvmmsg(fd, msgvec, vlen, MSG_DONTWAIT, null);
  if (n >= 0) return n;
  const e = errno();
  return e === EAGAIN || e === EINTR ? 0 : -e;
}

/**
 * Sends the `vlen` datagrams of the vector at `msgvec`: how many left (a prefix), or -errno
 * when the first one failed (e.g. EMSGSIZE, EAGAIN with a full send buffer).
 */
export function sendBurst(fd: number, msgvec: Deno.PointerObject, vlen: number): number {
  const n = libc.sendmmsg(fd, msgvec, vlen, MSG_DONTWAIT);
  return n >= 0 ? n : -errno();
}
