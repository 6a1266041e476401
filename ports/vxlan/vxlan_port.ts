// A VXLAN port's control side (main thread): opens the UDP socket bound to the VTEP address,
// fills the remote list (flood list, then static remoteMacs targets) and the static MAC
// entries, and answers which VTEP a MAC was learned behind. The Workers get a VxlanSpec.
import { closeFd } from "../../ffi/fd.ts";
import { openTunnelTap } from "../../ffi/tap.ts";
import { enableUdpGro, supportsUdpSegment, udpSocket } from "../../ffi/udp.ts";
import { parseMac } from "../ethernet.ts";
import { VNET_HDR_TUNNEL_LEN } from "../offload/virtio_net_hdr.ts";
import {
  createRemoteList,
  ipv4ToNumber,
  numberToIpv4,
  type RemoteMacTable,
  REMOTES_BASE,
  REMOTES_COUNT,
  type VxlanSpec,
} from "./vxlan.ts";

export interface VxlanPortConfig {
  name: string;
  vni: number;
  local: string;
  remotes: string[];
  udpPort: number;
  remoteMacs: { mac: string; remote: string }[];
  strict: boolean;
  mtu: number;
  /** Send TCP super-frames whole through a tap (tunnel GSO) where the kernel can. */
  tunnelGso?: boolean;
}

/**
 * The tap's name: "vxg" and the port's name, cut to an interface name's 15 bytes, so a user
 * can tell whose it is in `ip link` (a second switch with the same port name in one namespace
 * cannot have it: that port then cuts super-frames, and says why).
 */
function tunnelTapName(port: string): string {
  return `vxg${port.replace(/[^A-Za-z0-9_.-]/g, "_")}`.slice(0, 15);
}

/** What the port needs of its MAC table beyond the datapath's learn/lookup. */
export interface RemoteMacTableControl extends RemoteMacTable {
  readonly buffer: SharedArrayBuffer;
  addStatic(macHi: number, macLo: number, vlan: number, port: number): void;
}

export class VxlanPort {
  readonly spec: VxlanSpec;
  readonly #remotes: Int32Array;
  #closed = false;

  private constructor(
    readonly config: VxlanPortConfig,
    readonly table: RemoteMacTableControl,
    spec: VxlanSpec,
  ) {
    this.spec = spec;
    this.#remotes = new Int32Array(spec.remotes);
  }

  /** Opens the socket; errors name the port and the address. */
  static open(
    config: VxlanPortConfig,
    table: RemoteMacTableControl,
    log: (msg: string) => void = () => {},
  ): VxlanPort {
    const where =
      `vxlan port "${config.name}" (VNI ${config.vni}, ${config.local}:${config.udpPort})`;
    const flood = config.remotes.map(ipv4ToNumber);
    const others = [...new Set(config.remoteMacs.map((m) => ipv4ToNumber(m.remote)))]
      .filter((a) => !flood.includes(a));
    const remotes = createRemoteList(flood, others);
    const all = [...flood, ...others];
    for (const { mac, remote } of config.remoteMacs) {
      const { hi, lo } = parseMac(mac);
      table.addStatic(hi, lo, 0, all.indexOf(ipv4ToNumber(remote)));
    }
    let fd: number;
    try {
      // RFC 7348 section 5: the outer UDP checksum SHOULD be zero over IPv4. It also spares a
      // receiver that reads raw frames (Open vSwitch's userspace datapath) a checksum the
      // sending kernel left to an offload that never ran (veth): it drops those as bad.
      fd = udpSocket(ipv4ToNumber(config.local), config.udpPort, { zeroChecksum: true });
    } catch (err) {
      throw new Error(`${where}: ${err instanceof Error ? err.message : err}`, { cause: err });
    }
    // Runs of datagrams a peer sent as one buffer (UDP_SEGMENT over a veth) arrive whole, one
    // message each (the datapath walks them); a kernel without UDP_GRO hands them one by one.
    enableUdpGro(fd);
    // UDP segmentation needs the UDP checksum (the kernel, or the device, fills it per
    // datagram), so the super-frames' segments leave from a socket of their own that keeps it:
    // RFC 7348 allows either, and receivers (the kernel, this switch) take both.
    let gsoFd = -1;
    try {
      gsoFd = udpSocket(ipv4ToNumber(config.local), 0);
      if (!supportsUdpSegment(gsoFd)) {
        closeFd(gsoFd);
        gsoFd = -1;
        log(`${where}: the kernel has no UDP_SEGMENT: super-frames go out one datagram each`);
      }
    } catch (err) {
      closeFd(fd);
      throw new Error(`${where}: ${err instanceof Error ? err.message : err}`, { cause: err });
    }
    // Tunnel GSO: super-frames go whole, encapsulated once, into a tap of the port's own that
    // the kernel forwards from (ffi/tap.ts); without it (an older kernel, no CAP_NET_ADMIN)
    // they are cut into UDP_SEGMENT runs as before.
    let tapFd = -1;
    let tapMac: number[] = [];
    if (config.tunnelGso) {
      const name = tunnelTapName(config.name);
      try {
        const tap = openTunnelTap(name, VNET_HDR_TUNNEL_LEN, ipv4ToNumber(config.local));
        tapFd = tap.fd;
        tapMac = [...tap.mac];
        log(`${where}: TCP super-frames leave whole through tap ${name} (tunnel GSO)`);
      } catch (err) {
        log(
          `${where}: no tunnel GSO (${
            err instanceof Error ? err.message : err
          }): super-frames are cut into UDP_SEGMENT runs`,
        );
      }
    }
    const spec: VxlanSpec = {
      name: config.name,
      fd,
      gsoFd,
      tapFd,
      tapMac,
      local: ipv4ToNumber(config.local),
      vni: config.vni,
      udpPort: config.udpPort,
      mtu: config.mtu,
      strict: config.strict,
      remotes,
      table: table.buffer,
    };
    log(`${where}: open, flooding to ${config.remotes.join(", ") || "no VTEP"}, mtu ${config.mtu}`);
    return new VxlanPort(config, table, spec);
  }

  /** Every remote VTEP known: the flood list, static targets, then learned ones. */
  remoteAddresses(): string[] {
    const count = Atomics.load(this.#remotes, REMOTES_COUNT);
    return Array.from(
      this.#remotes.subarray(REMOTES_BASE, REMOTES_BASE + count),
      (a) => numberToIpv4(a >>> 0),
    );
  }

  /** The VTEP the MAC (as the FDB stores it: high 16 bits, low 32) was learned behind. */
  remoteOf(macHi: number, macLo: number): string | undefined {
    const k = this.table.lookup(macHi, macLo, 0);
    if (k < 0 || k >= Atomics.load(this.#remotes, REMOTES_COUNT)) return undefined;
    return numberToIpv4(this.#remotes[REMOTES_BASE + k] >>> 0);
  }

  /** Closes the socket: every Worker must have dropped the spec first. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFd(this.spec.fd);
    if (this.spec.gsoFd >= 0) closeFd(this.spec.gsoFd);
    if (this.spec.tapFd >= 0) closeFd(this.spec.tapFd);
  }
}
