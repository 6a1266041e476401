// The vhost-user virtio-net device: feature negotiation and the ring/memory state machine.
// It never touches the wire format (connection.ts does) nor frames (virtio_net.ts does): it
// turns requests into a DatapathState snapshot that the workers apply, and it frees memory
// and fds only after the workers acknowledged they let go of them.
import { closeFd, isEventFd, setNonblocking } from "../../ffi/fd.ts";
import { LogArea, type LogSpec } from "./dirty_log.ts";
import type { RegionSpec } from "./memory.ts";
import { MemoryTable } from "./memory.ts";
import * as P from "./protocol.ts";
import type { QueueSpec } from "./virtqueue.ts";
import { VIRTIO_NET_HDR_LEN, VIRTIO_NET_HDR_LEN_LEGACY } from "./virtio_net.ts";
import { packedResumeBase } from "./packed_queue.ts";
import {
  OFFLOAD_CSUM,
  OFFLOAD_DATA_VALID,
  OFFLOAD_ECN,
  OFFLOAD_TSO4,
  OFFLOAD_TSO6,
} from "../offload/virtio_net_hdr.ts";

// virtio-net feature bits offered (virtio 1.x 5.1.3). The checksum and TSO offloads are offered
// both ways: a guest's partial checksums and TSO frames are carried with their header to every
// destination (finished in software for one that cannot take them), and a guest that accepts
// them gets frames with a header saying what is left to do.
import {
  VHOST_F_LOG_ALL,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VIRTIO_F_ANY_LAYOUT,
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_ECN,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_HOST_ECN,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
} from "./features.ts";

const bit = (n: number) => 1n << BigInt(n);

/** The OFFLOAD_* bits a guest that negotiated `features` takes in the frames it receives. */
function guestOffloads(features: bigint): number {
  if (!has(features, VIRTIO_NET_F_GUEST_CSUM)) return 0;
  let bits = OFFLOAD_CSUM | OFFLOAD_DATA_VALID;
  if (has(features, VIRTIO_NET_F_GUEST_TSO4)) bits |= OFFLOAD_TSO4;
  if (has(features, VIRTIO_NET_F_GUEST_TSO6)) bits |= OFFLOAD_TSO6;
  if (has(features, VIRTIO_NET_F_GUEST_ECN)) bits |= OFFLOAD_ECN;
  return bits;
}
/**
 * Whether a guest that negotiated `features` may send frames whose header asks for work
 * (NEEDS_CSUM, a GSO type). Without CSUM or HOST_TSO4/6 its driver must leave the header zeroed
 * (virtio 1.2 5.1.6.2), so the datapath does not read it: DPDK's vhost library reads a guest's
 * header only under the same condition.
 */
function hostOffloads(features: bigint): boolean {
  return [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN]
    .some((n) => has(features, n));
}
const has = (set: bigint, n: number) => (set & bit(n)) !== 0n;
const hex = (n: number) => n.toString(16).padStart(4, "0");

/** What the workers need to run this port's datapath; null = not running. */
export interface DatapathState {
  regions: RegionSpec[];
  hdrLen: number;
  mergeable: boolean;
  maxFrame: number;
  /** OFFLOAD_* bits the guest takes in frames we send it (GUEST_CSUM, GUEST_TSO4/6, ECN). */
  guestOffloads: number;
  /** The guest may send frames with offloads in their header (CSUM, HOST_TSO4/6, HOST_ECN). */
  hostOffloads: boolean;
  queues: QueueSpec[];
  /** The migration dirty log, while the front-end has VHOST_F_LOG_ALL on; else null. */
  log: LogSpec | null;
}

/** The switch side of a device: applies snapshots on every worker polling the port. */
export interface DeviceDatapath {
  /** Resolves once every worker runs `state`; returns the last avail index of each ring dropped. */
  apply(state: DatapathState | null): Promise<Map<number, number>>;
  /** Sends a broadcast RARP from `mac` into the switch as if the guest had (SEND_RARP). */
  announce(mac: Uint8Array): Promise<void>;
}

interface Ring {
  num: number;
  addr: P.VringAddr | null;
  base: number;
  kickFd: number;
  callFd: number;
  errFd: number;
  started: boolean;
  enabled: boolean;
}

function newRing(): Ring {
  return {
    num: 0,
    addr: null,
    base: 0,
    kickFd: -1,
    callFd: -1,
    errFd: -1,
    started: false,
    enabled: false,
  };
}

export interface DeviceConfig {
  name: string;
  queuePairs: number;
  mtu: number;
  /** Offer VIRTIO_F_RING_PACKED (a per-port topology option turns it off). */
  packedRing: boolean;
  /**
   * Offer the checksum and segmentation offloads, both ways (a per-port topology option turns
   * them off, like Open vSwitch's userspace-tso-enable=false): then every frame to and from the
   * guest is complete, finished in software here if it came with work left.
   */
  offloads: boolean;
}

/** The offload features offered unless DeviceConfig.offloads is off. */
const OFFLOAD_FEATURES = [
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_HOST_ECN,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_GUEST_ECN,
];

export class VhostUserDevice {
  readonly offeredFeatures: bigint;
  readonly offeredProtocolFeatures: bigint;
  features = 0n;
  protocolFeatures = 0n;
  status = 0;
  frontendMtu = 0;
  #memory: MemoryTable | null = null;
  /** The dirty log the front-end shared (SET_LOG_BASE), and its optional eventfd. */
  #log: LogArea | null = null;
  #logFd = -1;
  readonly rings: Ring[];
  #running: DatapathState | null = null;

  constructor(
    readonly config: DeviceConfig,
    readonly datapath: DeviceDatapath,
    readonly log: (msg: string) => void,
  ) {
    let f = [
      VIRTIO_F_VERSION_1,
      VIRTIO_NET_F_MRG_RXBUF,
      VIRTIO_NET_F_MTU,
      VIRTIO_NET_F_MAC,
      VIRTIO_NET_F_STATUS,
      VIRTIO_F_ANY_LAYOUT,
      VIRTIO_RING_F_INDIRECT_DESC,
      VIRTIO_RING_F_EVENT_IDX,
      // The datapath uses every ring's buffers in the order they were made available.
      VIRTIO_F_IN_ORDER,
      ...(config.offloads ? OFFLOAD_FEATURES : []),
      VHOST_F_LOG_ALL,
      VHOST_USER_F_PROTOCOL_FEATURES,
    ].reduce((acc, n) => acc | bit(n), 0n);
    if (config.packedRing) f |= bit(VIRTIO_F_RING_PACKED);
    if (config.queuePairs > 1) f |= bit(VIRTIO_NET_F_MQ) | bit(VIRTIO_NET_F_CTRL_VQ);
    this.offeredFeatures = f;
    this.offeredProtocolFeatures = [
      P.VHOST_USER_PROTOCOL_F_MQ,
      P.VHOST_USER_PROTOCOL_F_LOG_SHMFD,
      P.VHOST_USER_PROTOCOL_F_RARP,
      P.VHOST_USER_PROTOCOL_F_REPLY_ACK,
      P.VHOST_USER_PROTOCOL_F_NET_MTU,
      P.VHOST_USER_PROTOCOL_F_RESET_DEVICE,
      P.VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS,
      P.VHOST_USER_PROTOCOL_F_STATUS,
    ].reduce((acc, n) => acc | bit(n), 0n);
    this.rings = Array.from({ length: 2 * config.queuePairs }, newRing);
  }

  /** The front-end shrank the file behind its guest memory (see ffi/sigbus.ts). */
  memoryTruncated(): boolean {
    return this.#memory?.truncated() ?? false;
  }

  get running(): DatapathState | null {
    return this.#running;
  }

  get replyAck(): boolean {
    return has(this.protocolFeatures, P.VHOST_USER_PROTOCOL_F_REPLY_ACK);
  }

  /**
   * Handles one request. Returns the reply payload for requests that have one, null otherwise.
   * Throws ProtocolError for malformed or impossible requests (the fds are closed here).
   */
  async handle(msg: P.Message): Promise<Uint8Array | null> {
    try {
      return await this.#dispatch(msg);
    } finally {
      // Any fd a handler did not take ownership of (marked -1) is closed.
      for (const fd of msg.fds) if (fd >= 0) closeFd(fd);
    }
  }

  async #dispatch(msg: P.Message): Promise<Uint8Array | null> {
    switch (msg.request) {
      case P.VHOST_USER_GET_FEATURES:
        return P.u64Payload(this.offeredFeatures);
      case P.VHOST_USER_SET_FEATURES: {
        const f = P.decodeU64(msg);
        if ((f & ~this.offeredFeatures) !== 0n) {
          throw new P.ProtocolError(`SET_FEATURES: 0x${f.toString(16)} has bits not offered`);
        }
        const logging = has(f, VHOST_F_LOG_ALL);
        if (logging !== has(this.features, VHOST_F_LOG_ALL)) {
          // A live migration of this guest starts (or ends): say so, an operator wants to know.
          this.log(
            logging
              ? `migration: dirty logging on${this.#log ? "" : " (no log shared yet)"}`
              : "migration: dirty logging off",
          );
        }
        this.features = f;
        await this.#sync();
        return null;
      }
      case P.VHOST_USER_GET_PROTOCOL_FEATURES:
        return P.u64Payload(this.offeredProtocolFeatures);
      case P.VHOST_USER_SET_PROTOCOL_FEATURES:
        this.protocolFeatures = P.decodeU64(msg) & this.offeredProtocolFeatures;
        return null;
      case P.VHOST_USER_SET_OWNER:
        return null;
      case P.VHOST_USER_RESET_OWNER:
      case P.VHOST_USER_RESET_DEVICE:
        await this.reset();
        return null;
      case P.VHOST_USER_GET_QUEUE_NUM:
        return P.u64Payload(BigInt(this.config.queuePairs));
      case P.VHOST_USER_GET_MAX_MEM_SLOTS:
        return P.u64Payload(BigInt(P.MAX_MEM_SLOTS));
      case P.VHOST_USER_SET_MEM_TABLE:
        return await this.#setMemTable(msg);
      case P.VHOST_USER_ADD_MEM_REG: {
        const desc = P.decodeSingleRegion(msg);
        if (msg.fds.length !== 1) throw new P.ProtocolError("ADD_MEM_REG: expected 1 fd");
        const table = this.#memory ?? new MemoryTable();
        if (table.count >= P.MAX_MEM_SLOTS) throw new P.ProtocolError("ADD_MEM_REG: no free slot");
        const fd = msg.fds[0];
        msg.fds[0] = -1;
        table.add(desc, fd);
        this.#memory = table;
        await this.#sync();
        return null;
      }
      case P.VHOST_USER_REM_MEM_REG: {
        if (!this.#memory) throw new P.ProtocolError("REM_MEM_REG: no memory table");
        const removed = this.#memory.remove(P.decodeSingleRegion(msg));
        await this.#sync(); // the workers stop using the region before it is unmapped
        removed.release();
        return null;
      }
      case P.VHOST_USER_SET_VRING_NUM: {
        const { index, num } = P.decodeVringState(msg);
        if (num < 1 || num > 32768 || (num & (num - 1)) !== 0) {
          throw new P.ProtocolError(`SET_VRING_NUM: ring size ${num} is not a power of 2 <= 32768`);
        }
        this.#ring(index, msg).num = num;
        return null;
      }
      case P.VHOST_USER_SET_VRING_ADDR: {
        const addr = P.decodeVringAddr(msg);
        this.#ring(addr.index, msg).addr = addr;
        await this.#sync();
        return null;
      }
      case P.VHOST_USER_SET_VRING_BASE: {
        const { index, num } = P.decodeVringState(msg);
        const ring = this.#ring(index, msg);
        if (!has(this.features, VIRTIO_F_RING_PACKED)) {
          if (num > 0xffff) throw new P.ProtocolError(`SET_VRING_BASE: base ${num} > 65535`);
          ring.base = num;
          return null;
        }
        // Packed: bits 0-14 the avail position, bit 15 its wrap counter; QEMU adds the used
        // position and wrap counter in bits 16-31, DPDK's front-ends leave them 0. Buffers
        // between the two were taken by the previous back-end and never given back: resume at
        // the used position so the guest gets them back (a few frames may go twice).
        const avail = num & 0xffff;
        const used = num >>> 16;
        if (used !== 0 && used !== avail) {
          this.log(
            `ring ${index}: avail base 0x${hex(avail)}, used 0x${hex(used)}: resuming at used`,
          );
        }
        ring.base = used !== 0 ? used : avail;
        return null;
      }
      case P.VHOST_USER_GET_VRING_BASE: {
        const { index } = P.decodeVringState(msg);
        const ring = this.#ring(index, msg);
        ring.started = false;
        await this.#sync();
        closeFd(ring.kickFd);
        ring.kickFd = -1;
        // Packed: nothing is in flight once a ring stopped, so the used side (bits 16-31, read
        // by QEMU, ignored by DPDK) equals the avail side.
        const packed = has(this.features, VIRTIO_F_RING_PACKED);
        return P.vringStatePayload(
          index,
          packed ? (ring.base | (ring.base << 16)) >>> 0 : ring.base,
        );
      }
      case P.VHOST_USER_SET_VRING_KICK:
      case P.VHOST_USER_SET_VRING_CALL:
      case P.VHOST_USER_SET_VRING_ERR:
        return await this.#setVringFile(msg);
      case P.VHOST_USER_SET_VRING_ENABLE: {
        const { index, num } = P.decodeVringState(msg);
        this.#ring(index, msg).enabled = num !== 0;
        await this.#sync();
        return null;
      }
      case P.VHOST_USER_NET_SET_MTU: {
        const mtu = Number(P.decodeU64(msg));
        if (mtu < 68 || mtu > 9000) {
          throw new P.ProtocolError(`NET_SET_MTU: ${mtu} not in 68..9000`);
        }
        this.frontendMtu = mtu;
        if (mtu > this.config.mtu) {
          this.log(
            `front-end MTU ${mtu} exceeds the port's ${this.config.mtu}: longer frames drop`,
          );
        }
        return null;
      }
      case P.VHOST_USER_SET_LOG_BASE:
        return await this.#setLogBase(msg);
      case P.VHOST_USER_SET_LOG_FD: {
        // The front-end may want an eventfd written when the log changes; QEMU reads the log
        // on its own schedule, so we keep it (to close it) but do not need to write it.
        const fd = msg.fds.length === 1 ? msg.fds[0] : -1;
        if (fd < 0 || !isEventFd(fd)) {
          throw new P.ProtocolError("SET_LOG_FD: expected one eventfd");
        }
        msg.fds[0] = -1;
        closeFd(this.#logFd);
        this.#logFd = fd;
        return null;
      }
      case P.VHOST_USER_SEND_RARP: {
        if (!has(this.protocolFeatures, P.VHOST_USER_PROTOCOL_F_RARP)) {
          throw new P.ProtocolError("SEND_RARP: protocol feature RARP not negotiated");
        }
        const mac = P.decodeRarpMac(msg);
        if (mac[0] & 1) throw new P.ProtocolError("SEND_RARP: a group MAC cannot be announced");
        this.log(`migration: announcing ${macString(mac)} (RARP) at its new port`);
        // Not awaited: a worker that cannot forward it is no fault of the front-end's.
        this.datapath.announce(mac).catch((err) => this.log(`announce failed: ${err}`));
        return null;
      }
      case P.VHOST_USER_SET_STATUS:
        this.status = Number(P.decodeU64(msg) & 0xffn);
        return null;
      case P.VHOST_USER_GET_STATUS:
        return P.u64Payload(BigInt(this.status));
      default:
        throw new P.ProtocolError(`unsupported request ${P.requestName(msg.request)}`);
    }
  }

  #ring(index: number, msg: P.Message): Ring {
    const ring = this.rings[index];
    if (!ring) {
      throw new P.ProtocolError(
        `${P.requestName(msg.request)}: ring ${index} out of range (${this.rings.length} rings)`,
      );
    }
    return ring;
  }

  async #setMemTable(msg: P.Message): Promise<null> {
    const descs = P.decodeMemoryTable(msg);
    const fds = msg.fds.splice(0); // MemoryTable.build owns them now, even on failure
    const table = MemoryTable.build(descs, fds);
    const old = this.#memory;
    this.#memory = table;
    await this.#sync();
    old?.release();
    return null;
  }

  /** SET_LOG_BASE (LOG_SHMFD): maps the shared dirty log; the reply has an empty payload. */
  async #setLogBase(msg: P.Message): Promise<Uint8Array> {
    if (!has(this.protocolFeatures, P.VHOST_USER_PROTOCOL_F_LOG_SHMFD)) {
      throw new P.ProtocolError("SET_LOG_BASE: protocol feature LOG_SHMFD not negotiated");
    }
    const desc = P.decodeLog(msg);
    if (msg.fds.length !== 1) throw new P.ProtocolError("SET_LOG_BASE: expected 1 fd");
    const fd = msg.fds[0];
    msg.fds[0] = -1; // LogArea.map owns it now, even on failure
    const guestEnd = Math.max(0, ...(this.#memory?.specs ?? []).map((s) => s.guestPhys + s.size));
    const area = LogArea.map(desc, fd, guestEnd);
    const old = this.#log;
    this.#log = area;
    await this.#sync(); // workers mark through the new log before the old one is unmapped
    old?.release();
    this.log(`migration: dirty log shared (${area.spec.size} bytes)`);
    return new Uint8Array(0);
  }

  async #setVringFile(msg: P.Message): Promise<null> {
    const { index, fd } = P.decodeVringFile(msg);
    const ring = this.#ring(index, msg);
    if (fd >= 0) {
      // Only an eventfd is acceptable: anything else could block the thread that writes it.
      if (!isEventFd(fd)) {
        throw new P.ProtocolError(`${P.requestName(msg.request)}: fd is not an eventfd`);
      }
      setNonblocking(fd);
      msg.fds[0] = -1;
    }
    if (msg.request === P.VHOST_USER_SET_VRING_KICK) {
      const old = ring.kickFd;
      ring.kickFd = fd;
      ring.started = true;
      await this.#sync(); // a sleeping worker waits on the new fd before the old one closes
      closeFd(old);
    } else if (msg.request === P.VHOST_USER_SET_VRING_CALL) {
      const old = ring.callFd;
      ring.callFd = fd;
      await this.#sync(); // the worker writes the new fd before the old one is closed
      closeFd(old);
    } else {
      closeFd(ring.errFd);
      ring.errFd = fd;
    }
    return null;
  }

  /** Rings start once the front-end kicked them up; with protocol features, once enabled too. */
  #live(ring: Ring): boolean {
    const needEnable = has(this.features, VHOST_USER_F_PROTOCOL_FEATURES);
    return ring.started && ring.num > 0 && ring.addr !== null && (ring.enabled || !needEnable);
  }

  #snapshot(): DatapathState | null {
    const mem = this.#memory;
    if (!mem || mem.count === 0) return null;
    const eventIdx = has(this.features, VIRTIO_RING_F_EVENT_IDX);
    const modern = has(this.features, VIRTIO_F_VERSION_1);
    const mergeable = has(this.features, VIRTIO_NET_F_MRG_RXBUF);
    const packed = has(this.features, VIRTIO_F_RING_PACKED);
    const inOrder = has(this.features, VIRTIO_F_IN_ORDER);
    const log = has(this.features, VHOST_F_LOG_ALL) ? this.#log : null;
    const queues: QueueSpec[] = [];
    this.rings.forEach((ring, index) => {
      if (!this.#live(ring)) return;
      const n = ring.num;
      const a = ring.addr!;
      // Packed (virtio 1.2 2.8.10): the descriptor ring, then the driver's and the device's
      // event suppression structures (4 bytes each) where the split avail and used rings are.
      const desc = mem.translateUser(Number(a.desc), 16 * n);
      const avail = mem.translateUser(Number(a.avail), packed ? 4 : 6 + 2 * n);
      const used = mem.translateUser(Number(a.used), packed ? 4 : 6 + 8 * n);
      if (!desc || !avail || !used) {
        this.log(`ring ${index}: addresses outside guest memory, ring not started`);
        return;
      }
      if ((desc.offset & 15) || (avail.offset & (packed ? 3 : 1)) || (used.offset & 3)) {
        this.log(`ring ${index}: misaligned ring addresses, ring not started`);
        return;
      }
      if (packed && (ring.base & 0x7fff) >= n) {
        this.log(
          `ring ${index}: base position ${ring.base & 0x7fff} >= ring size ${n}, not started`,
        );
        return;
      }
      const starting = !this.#running?.queues.some((q) => q.index === index);
      if (packed && starting) {
        const found = packedResumeBase((i) => mem.readU16(desc, 16 * i + 14) >>> 15, n, ring.base);
        if (found !== ring.base) {
          this.log(
            `ring ${index}: base 0x${hex(ring.base)} but the descriptors say 0x${hex(found)}: ` +
              "resuming there",
          );
          ring.base = found;
        }
      }
      if (starting && ring.base !== (packed ? 0x8000 : 0)) {
        // A migrated guest's rings resume where the source's stopped (or a front-end
        // reconnects): worth a line for the operator following a migration.
        this.log(
          `ring ${index} resumes at avail position ${packed ? `0x${hex(ring.base)}` : ring.base}`,
        );
      }
      if (!packed && starting) {
        // A ring (re)starts. A front-end that reconnects after a back-end restart may send a
        // base of 0 (DPDK virtio-user does) while its used ring says otherwise; like DPDK's
        // vhost library, trust the used index: a few frames may be sent again or dropped.
        const usedIdx = mem.usedIndex(used);
        if (usedIdx !== ring.base) {
          this.log(`ring ${index}: base ${ring.base} but used index ${usedIdx}: resuming there`);
          ring.base = usedIdx;
        }
      }
      queues.push({
        index,
        size: n,
        packed,
        inOrder,
        desc,
        avail,
        used,
        lastAvail: ring.base,
        eventIdx,
        callFd: ring.callFd,
        kickFd: ring.kickFd,
        shared: null, // the datapath decides which rings its workers share
        ringLog: log && (a.flags & P.VHOST_VRING_F_LOG) ? ringLogAreas(mem, a, n, packed) : [],
      });
    });
    return {
      regions: mem.specs,
      hdrLen: modern || mergeable ? VIRTIO_NET_HDR_LEN : VIRTIO_NET_HDR_LEN_LEGACY,
      mergeable,
      maxFrame: this.config.mtu + 14 + 4,
      guestOffloads: guestOffloads(this.features),
      hostOffloads: hostOffloads(this.features),
      queues,
      log: log?.spec ?? null,
    };
  }

  /** Brings the workers in line with the current state; records where stopped rings were. */
  async #sync(): Promise<void> {
    const next = this.#snapshot();
    if (next === null && this.#running === null) return;
    const stopped = await this.datapath.apply(next);
    this.#running = next;
    for (const [index, lastAvail] of stopped) {
      if (this.rings[index]) this.rings[index].base = lastAvail;
    }
  }

  /** Stops the datapath and frees everything (RESET_OWNER, or the connection went away). */
  async reset(): Promise<void> {
    for (const ring of this.rings) ring.started = false;
    await this.#sync();
    for (const ring of this.rings) {
      for (const fd of [ring.kickFd, ring.callFd, ring.errFd]) closeFd(fd);
      Object.assign(ring, newRing());
    }
    this.#memory?.release();
    this.#memory = null;
    this.#log?.release();
    this.#log = null;
    closeFd(this.#logFd);
    this.#logFd = -1;
    this.features = 0n;
    this.protocolFeatures = 0n;
    this.status = 0;
  }
}

/**
 * The guest physical [address, length] pairs of what the device writes in a ring while
 * VHOST_VRING_F_LOG is on: the used ring (split), logged at the address the front-end gave
 * (log_guest_addr); or, packed, the descriptor ring (used descriptors are written back into
 * it) and the device event suppression area, at their guest addresses.
 */
function ringLogAreas(mem: MemoryTable, a: P.VringAddr, n: number, packed: boolean): number[] {
  if (!packed) return [Number(a.log), 6 + 8 * n];
  return [mem.guestAddressOf(Number(a.desc)), 16 * n, mem.guestAddressOf(Number(a.used)), 4];
}

function macString(mac: Uint8Array): string {
  return Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join(":");
}
