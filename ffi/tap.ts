// A tap device that takes encapsulated VXLAN super-frames whole (Linux 6.17: UDP tunnel GSO
// over tun/tap, TUN_F_UDP_TUNNEL_GSO): each frame written is preceded by a virtio-net header
// (of the size given, the caller's layout) that also names the outer UDP header and the inner
// network header, and the kernel cuts it into datagrams only where a device needs it (a NIC
// without tunnel segmentation; never across a veth). The kernel receives what is written as if
// from a NIC addressed to the tap and forwards it: routes and ARP stay the kernel's, as for the
// VXLAN port's UDP socket. Only the tap's own settings change (forwarding, accept_local for the
// VTEP's own source address, rp_filter), never the host's.
import { libc } from "./libc.ts";
import { errno, SysError } from "./errno.ts";
import { closeFd } from "./fd.ts";
import { cString } from "./mem.ts";
import { ifNameToIndex, interfaceInfo, packetSocket, setInterfaceUp } from "./packet.ts";

const O_RDWR = 2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const TUNSETIFF = 0x400454ca;
const TUNSETOFFLOAD = 0x400454d0;
const TUNSETVNETHDRSZ = 0x400454d8;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
const TUN_F_CSUM = 0x01;
const TUN_F_TSO4 = 0x02;
const TUN_F_TSO6 = 0x04;
const TUN_F_UDP_TUNNEL_GSO = 0x080;

export interface TunnelTap {
  fd: number;
  mac: Uint8Array;
}

/**
 * Creates tap `name`, up, taking tunnel GSO, forwarding what is written to it from `source`
 * (the VTEP's address, IPv4 as a number); throws, naming what is missing, where the kernel
 * cannot (before 6.17, no CAP_NET_ADMIN, strict reverse-path filtering for every interface).
 */
export function openTunnelTap(name: string, vnetHdrLen: number, source: number): TunnelTap {
  // Frames arriving with the VTEP's own address as their source: accept_local lets them in,
  // and loose reverse-path filtering (rp_filter 2, systemd's default) passes them once the tap
  // has that address too; strict filtering (1) for every interface overrides the tap's 0.
  const all = readSysctl("net/ipv4/conf/all/rp_filter");
  if (all === "1") {
    throw new Error(
      "net.ipv4.conf.all.rp_filter is 1 (strict): the kernel would drop the tap's frames, " +
        "whose source is the VTEP's own address; set it to 2 (loose) or 0",
    );
  }
  const fd = libc.open(cString("/dev/net/tun"), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw new SysError("open", errno(), "/dev/net/tun");
  try {
    const ifr = new Uint8Array(40);
    const v = new DataView(ifr.buffer);
    ifr.set(cString(name));
    v.setUint16(16, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, true);
    if (libc.ioctl(fd, BigInt(TUNSETIFF), ifr) < 0) {
      throw new SysError("ioctl", errno(), `TUNSETIFF "${name}"`);
    }
    const size = new Uint8Array(4);
    new DataView(size.buffer).setInt32(0, vnetHdrLen, true);
    if (libc.ioctl(fd, BigInt(TUNSETVNETHDRSZ), size) < 0) {
      throw new SysError("ioctl", errno(), "TUNSETVNETHDRSZ");
    }
    // The offload flags are the ioctl's argument itself, not a pointer to them.
    const flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UDP_TUNNEL_GSO;
    if (libc.ioctl_value(fd, BigInt(TUNSETOFFLOAD), BigInt(flags)) < 0) {
      throw new SysError("ioctl", errno(), "TUNSETOFFLOAD (tunnel GSO needs Linux 6.17)");
    }
    // Any socket takes the interface ioctls; this one (protocol 0) receives nothing.
    const s = packetSocket(0);
    try {
      setInterfaceUp(s, name);
      for (const [key, value] of [["forwarding", "1"], ["accept_local", "1"], ["rp_filter", "0"]]) {
        writeSysctl(`net/ipv4/conf/${name}/${key}`, value);
      }
      addHostAddress(ifNameToIndex(name), source);
      const info = interfaceInfo(s, name);
      const mac = new Uint8Array(info.mac.split(":").map((h) => parseInt(h, 16)));
      return { fd, mac };
    } finally {
      closeFd(s);
    }
  } catch (err) {
    closeFd(fd);
    throw err;
  }
}

function readSysctl(key: string): string {
  return Deno.readTextFileSync(`/proc/sys/${key}`).trim();
}

function writeSysctl(key: string, value: string): void {
  try {
    Deno.writeTextFileSync(`/proc/sys/${key}`, value);
  } catch (err) {
    throw new Error(
      `${key.replaceAll("/", ".")}=${value}: ${err instanceof Error ? err.message : err}`,
    );
  }
}

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const NETLINK_ROUTE = 0;
const RTM_NEWADDR = 20;
const NLM_F_REQUEST = 0x1;
const NLM_F_ACK = 0x4;
const NLM_F_EXCL = 0x200;
const NLM_F_CREATE = 0x400;
const NLMSG_ERROR = 2;
const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const IFA_FLAGS = 8;
/** No route for the address's prefix: a /32 has none worth having, and the host's stay. */
const IFA_F_NOPREFIXROUTE = 0x200;

/**
 * Gives interface `ifindex` the IPv4 address `addr`/32 without a prefix route (rtnetlink
 * RTM_NEWADDR, as `ip addr add A/32 dev X noprefixroute`): the host keeps its routes, and the
 * address goes with the interface.
 */
function addHostAddress(ifindex: number, addr: number): void {
  const fd = libc.socket(AF_NETLINK, SOCK_RAW | O_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) throw new SysError("socket", errno(), "AF_NETLINK");
  try {
    // struct nlmsghdr (16), struct ifaddrmsg (8), then IFA_LOCAL, IFA_ADDRESS, IFA_FLAGS.
    const msg = new Uint8Array(48);
    const v = new DataView(msg.buffer);
    v.setUint32(0, msg.length, true);
    v.setUint16(4, RTM_NEWADDR, true);
    v.setUint16(6, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, true);
    v.setUint32(8, 1, true);
    msg[16] = 2; // AF_INET
    msg[17] = 32;
    v.setUint32(20, ifindex, true);
    for (const [at, type] of [[24, IFA_LOCAL], [32, IFA_ADDRESS]]) {
      v.setUint16(at, 8, true);
      v.setUint16(at + 2, type, true);
      v.setUint32(at + 4, addr >>> 0, false);
    }
    v.setUint16(40, 8, true);
    v.setUint16(42, IFA_FLAGS, true);
    v.setUint32(44, IFA_F_NOPREFIXROUTE, true);
    const kernel = new Uint8Array(12);
    kernel[0] = AF_NETLINK;
    if (Number(libc.sendto(fd, msg, BigInt(msg.length), 0, kernel, kernel.length)) < 0) {
      throw new SysError("sendto", errno(), "RTM_NEWADDR");
    }
    const reply = new Uint8Array(256);
    const n = Number(libc.recv(fd, reply, BigInt(reply.length), 0));
    if (n < 0) throw new SysError("recv", errno(), "RTM_NEWADDR");
    const r = new DataView(reply.buffer);
    if (n >= 20 && r.getUint16(4, true) === NLMSG_ERROR && r.getInt32(16, true) !== 0) {
      throw new SysError("RTM_NEWADDR", -r.getInt32(16, true), "the VTEP address on the tap");
    }
  } finally {
    closeFd(fd);
  }
}
