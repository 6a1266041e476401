// An AF_PACKET uplink's control side (main thread): opens the packet socket on the host
// interface named in the topology, sets up and maps the rings once, watches the link (up,
// MTU, the interface vanishing and coming back) and hands a Worker an AfPacketSpec.
import { SysError } from "../../ffi/errno.ts";
import { closeFd } from "../../ffi/fd.ts";
import { type Mapping, mmap, munmap } from "../../ffi/mem.ts";
import {
  addPromiscMembership,
  bindToInterface,
  ETH_P_ALL,
  ifNameToIndex,
  type InterfaceInfo,
  interfaceInfo,
  packetSocket,
  packetStatistics,
  setIgnoreOutgoing,
  setPacketLoss,
  setPacketVersion,
  setQdiscBypass,
  setRxRing,
  setSocketBuffer,
  setTxRing,
  setVnetHdr,
  TPACKET_V3,
} from "../../ffi/packet.ts";
import {
  type AfPacketSpec,
  checkGeometry,
  DEFAULT_GEOMETRY,
  LINK_MTU,
  LINK_RX_MAX,
  LINK_UP,
  LINK_WORDS,
  type RingGeometry,
  rxMaxFor,
  txFramesPerBlock,
} from "./tpacket.ts";

export interface AfPacketPortConfig {
  name: string;
  interface: string;
  /** The switch's MTU for this port; the interface's own MTU caps it. */
  mtu?: number;
}

export interface AfPacketPortOptions {
  /**
   * "syscall": plain sockets, one syscall per frame (the benchmark baseline); its transmit
   * socket has no PACKET_VNET_HDR, so frames leave complete (checksums filled and GSO frames
   * segmented in software).
   */
  variant?: "ring" | "syscall";
  geometry?: Partial<RingGeometry>;
  /** PACKET_QDISC_BYPASS: faster, but tc and tcpdump on the interface no longer see our TX. */
  qdiscBypass?: boolean;
  /** Transmit rings, one per datapath worker (worker k > 0 gets a TX-only socket); default 1. */
  txQueues?: number;
  /** How often the link is polled; 0: only when pollLink() is called. */
  linkPollMs?: number;
  log?: (msg: string) => void;
}

export type AfPacketPortState = "up" | "down" | "missing" | "closed";

/** Counters the kernel keeps for the socket (PACKET_STATISTICS), accumulated. */
export interface AfPacketKernelStats {
  packets: number;
  /** Frames the kernel dropped because every RX block was still with us. */
  drops: number;
  freezes: number;
}

const SOCKET_BUFFER = 8 << 20;

/**
 * The ring's doorbell (AfPacketSpec.wakeFd): bound before the ring's socket, so that it sits
 * behind it in the interface's list of taps (the kernel puts the newest first) and a worker it
 * wakes finds the frame in the ring already. It sees no frames leaving the interface.
 */
function openDoorbell(ifindex: number): number {
  const fd = packetSocket(0);
  try {
    setIgnoreOutgoing(fd);
    setSocketBuffer(fd, "receive", 1); // raised to the kernel's minimum (SOCK_MIN_RCVBUF)
    bindToInterface(fd, ifindex, ETH_P_ALL);
    return fd;
  } catch (err) {
    closeFd(fd);
    throw err;
  }
}

/**
 * A socket with only a TX ring, for one more worker. Bound with protocol 0, so the kernel
 * queues no received frames on it.
 */
function openTxOnlySocket(
  ifindex: number,
  g: RingGeometry,
  qdiscBypass: boolean,
): { ring: AfPacketSpec["txExtra"][number]; mapping: Mapping } {
  const fd = packetSocket(0);
  try {
    setPacketVersion(fd, TPACKET_V3);
    setPacketLoss(fd);
    setVnetHdr(fd);
    setTxRing(fd, {
      blockSize: g.txBlockSize,
      blockNr: g.txBlockNr,
      frameSize: g.txFrameSize,
      frameNr: txFramesPerBlock(g) * g.txBlockNr,
    });
    const mapping = mmap(g.txBlockSize * g.txBlockNr, { fd });
    setSocketBuffer(fd, "send", SOCKET_BUFFER);
    if (qdiscBypass) setQdiscBypass(fd);
    bindToInterface(fd, ifindex, 0);
    const ring = {
      fd,
      address: mapping.address,
      blockSize: g.txBlockSize,
      blockNr: g.txBlockNr,
      frameSize: g.txFrameSize,
    };
    return { ring, mapping };
  } catch (err) {
    closeFd(fd);
    throw err;
  }
}

export class AfPacketPort {
  #state: AfPacketPortState;
  #info: InterfaceInfo;
  #timer: ReturnType<typeof setInterval> | undefined;
  readonly #link: Int32Array;
  readonly #stats: AfPacketKernelStats = { packets: 0, drops: 0, freezes: 0 };

  private constructor(
    readonly config: AfPacketPortConfig,
    readonly spec: AfPacketSpec,
    public ifindex: number,
    readonly mapping: Mapping | null,
    readonly extraMappings: Mapping[],
    info: InterfaceInfo,
    readonly log: (msg: string) => void,
  ) {
    this.#info = info;
    this.#state = info.up ? "up" : "down";
    this.#link = new Int32Array(spec.link);
  }

  /** Opens the port; errors name the port and interface and say what to do. */
  static open(config: AfPacketPortConfig, options: AfPacketPortOptions = {}): AfPacketPort {
    const where = `af-packet port "${config.name}" on interface "${config.interface}"`;
    const log = options.log ?? (() => {});
    const variant = options.variant ?? "ring";
    const g: RingGeometry = { ...DEFAULT_GEOMETRY, ...options.geometry };
    let fd = -1;
    let mapping: Mapping | null = null;
    const txExtra: AfPacketSpec["txExtra"] = [];
    let plainTxFd = -1;
    let wakeFd = -1;
    const extraMappings: Mapping[] = [];
    try {
      if (variant === "ring") checkGeometry(g);
      const ifindex = ifNameToIndex(config.interface);
      // Protocol 0 until bind(): no other interface's frames land in the ring meanwhile.
      fd = packetSocket(0);
      let rx: AfPacketSpec["rx"] = null;
      let tx: AfPacketSpec["tx"] = null;
      if (variant === "ring") {
        setPacketVersion(fd, TPACKET_V3);
        setPacketLoss(fd); // a frame the kernel refuses must not wedge the TX ring
      }
      // Checksum-partial and GSO frames (a namespace's TCP with kernel defaults) come in with
      // their metadata and go out for the kernel (or the peer) to finish: before the rings.
      setVnetHdr(fd);
      if (variant === "ring") {
        const fpb = txFramesPerBlock(g);
        setRxRing(fd, {
          blockSize: g.rxBlockSize,
          blockNr: g.rxBlockNr,
          frameSize: 2048, // V3 RX frames are variable-size: only the kernel's sanity checks use it
          frameNr: (g.rxBlockSize / 2048) * g.rxBlockNr,
          retireBlkTov: g.rxRetireMs,
        });
        setTxRing(fd, {
          blockSize: g.txBlockSize,
          blockNr: g.txBlockNr,
          frameSize: g.txFrameSize,
          frameNr: fpb * g.txBlockNr,
        });
        // One mapping, RX ring then TX ring, as packet_mmap() lays them out.
        const rxBytes = g.rxBlockSize * g.rxBlockNr;
        mapping = mmap(rxBytes + g.txBlockSize * g.txBlockNr, { fd });
        rx = { address: mapping.address, blockSize: g.rxBlockSize, blockNr: g.rxBlockNr };
        tx = {
          address: mapping.address + BigInt(rxBytes),
          blockSize: g.txBlockSize,
          blockNr: g.txBlockNr,
          frameSize: g.txFrameSize,
        };
      }
      // In flight TX bytes count against the send buffer until the driver frees them.
      setSocketBuffer(fd, "send", SOCKET_BUFFER);
      if (variant === "syscall") {
        setSocketBuffer(fd, "receive", SOCKET_BUFFER);
        plainTxFd = packetSocket(0);
        setSocketBuffer(plainTxFd, "send", SOCKET_BUFFER);
        bindToInterface(plainTxFd, ifindex, 0);
      }
      try {
        setIgnoreOutgoing(fd);
      } catch (err) {
        if (err instanceof SysError && err.code === "ENOPROTOOPT") {
          throw new Error("PACKET_IGNORE_OUTGOING needs Linux >= 4.20", { cause: err });
        }
        throw err;
      }
      if (options.qdiscBypass) setQdiscBypass(fd);
      if (variant === "ring") {
        for (let k = 1; k < (options.txQueues ?? 1); k++) {
          const t = openTxOnlySocket(ifindex, g, options.qdiscBypass ?? false);
          txExtra.push(t.ring);
          extraMappings.push(t.mapping);
        }
      }
      if (variant === "ring") wakeFd = openDoorbell(ifindex);
      addPromiscMembership(fd, ifindex);
      bindToInterface(fd, ifindex, ETH_P_ALL);
      const info = interfaceInfo(fd, config.interface);
      const mtu = Math.min(config.mtu ?? info.mtu, info.mtu);
      const link = new SharedArrayBuffer(LINK_WORDS * 4);
      const spec: AfPacketSpec = {
        variant,
        name: config.name,
        interface: config.interface,
        fd,
        mtu,
        vnetHdr: true,
        plainTxFd,
        wakeFd,
        link,
        rx,
        tx,
        txExtra,
      };
      const port = new AfPacketPort(config, spec, ifindex, mapping, extraMappings, info, log);
      port.#publish();
      log(`${where}: opened (${variant}, mtu ${mtu}, mac ${info.mac}, link ${port.#state})`);
      if (!info.up) log(`${where}: link is down (waiting for IFF_UP and IFF_RUNNING)`);
      port.#startTimer(options.linkPollMs ?? 1000);
      return port;
    } catch (err) {
      if (mapping) munmap(mapping);
      closeFd(fd);
      extraMappings.forEach(munmap);
      for (const t of txExtra) closeFd(t.fd);
      if (plainTxFd >= 0) closeFd(plainTxFd);
      if (wakeFd >= 0) closeFd(wakeFd);
      const text = err instanceof Error ? err.message : String(err);
      throw new Error(`${where}: ${text}`, { cause: err });
    }
  }

  get state(): AfPacketPortState {
    return this.#state;
  }

  /** The MTU transmit enforces (the configured one, capped by the interface's). */
  get mtu(): number {
    return Atomics.load(this.#link, LINK_MTU);
  }

  get mac(): string {
    return this.#info.mac;
  }

  get info(): InterfaceInfo {
    return this.#info;
  }

  #startTimer(ms: number): void {
    if (ms <= 0) return;
    const timer = setInterval(() => this.pollLink(), ms);
    Deno.unrefTimer(timer);
    this.#timer = timer;
  }

  /** Changes the switch's MTU for this port at once; the interface's own MTU still caps it. */
  setMtu(mtu: number): void {
    this.config.mtu = mtu;
    this.#publish();
  }

  #publish(): void {
    const mtu = Math.min(this.config.mtu ?? this.#info.mtu, this.#info.mtu);
    Atomics.store(this.#link, LINK_MTU, mtu);
    Atomics.store(this.#link, LINK_RX_MAX, rxMaxFor(this.#info.mtu));
    Atomics.store(this.#link, LINK_UP, this.#state === "up" ? 1 : 0);
  }

  /** Re-reads the link (also run by the timer); returns the new state. */
  pollLink(): AfPacketPortState {
    if (this.#state === "closed") return "closed";
    const before = this.#state;
    const name = this.config.interface;
    try {
      let index: number;
      try {
        index = ifNameToIndex(name);
      } catch {
        this.#state = "missing";
        this.#publish();
        if (before !== "missing") {
          this.log(`interface "${name}" disappeared: waiting for it to come back (\`ip link\`)`);
        }
        return this.#state;
      }
      if (index !== this.ifindex) {
        // Recreated: the socket keeps its rings, only the binding and membership move.
        if (this.spec.wakeFd >= 0) bindToInterface(this.spec.wakeFd, index, ETH_P_ALL);
        addPromiscMembership(this.spec.fd, index);
        bindToInterface(this.spec.fd, index, ETH_P_ALL);
        for (const t of this.spec.txExtra) bindToInterface(t.fd, index, 0);
        if (this.spec.plainTxFd >= 0) bindToInterface(this.spec.plainTxFd, index, 0);
        this.ifindex = index;
        this.log(`interface "${name}" is back (ifindex ${index}): socket rebound`);
      }
      this.#info = interfaceInfo(this.spec.fd, name);
      this.#state = this.#info.up ? "up" : "down";
      this.#readStats();
    } catch (err) {
      this.#state = "down";
      this.log(`interface "${name}": ${err instanceof Error ? err.message : err}`);
    }
    this.#publish();
    if (this.#state !== before) this.log(`interface "${name}": link ${this.#state}`);
    return this.#state;
  }

  #readStats(): void {
    const s = packetStatistics(this.spec.fd);
    this.#stats.packets += s.packets;
    this.#stats.drops += s.drops;
    this.#stats.freezes += s.freezes;
  }

  /** The kernel's counters for this socket so far. */
  kernelStats(): AfPacketKernelStats {
    if (this.#state !== "closed") this.#readStats();
    return { ...this.#stats };
  }

  /** Unmaps the rings and closes the socket: every Worker must have dropped the spec first. */
  close(): void {
    if (this.#state === "closed") return;
    this.#state = "closed";
    clearInterval(this.#timer);
    Atomics.store(this.#link, LINK_UP, 0);
    if (this.mapping) munmap(this.mapping);
    closeFd(this.spec.fd);
    this.extraMappings.forEach(munmap);
    for (const t of this.spec.txExtra) closeFd(t.fd);
    if (this.spec.plainTxFd >= 0) closeFd(this.spec.plainTxFd);
    if (this.spec.wakeFd >= 0) closeFd(this.spec.wakeFd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
