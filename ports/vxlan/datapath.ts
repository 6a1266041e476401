// A VXLAN port's datapath, living in a Worker. Receive: one recvmmsg(2) takes a burst of
// datagrams into a private mapping; each is checked (I flag, VNI, length, source VTEP), its
// inner source MAC is learned against the sending VTEP, and the inner frame is handed to the
// bridge in place. Transmit: the frame is copied once behind a VXLAN header written at setup,
// and one message per destination VTEP (one for a known MAC, the whole flood list for the rest:
// head-end replication, all pointing at the same copy) goes out with one sendmmsg(2) per burst.
// A TCP super-frame is cut into segments here too, but they leave as one UDP_SEGMENT message
// (per VTEP) from a second socket: the kernel carries the whole run down the stack as one
// buffer and cuts it into datagrams at the device (or the receiving socket), where sending
// ~45 datagrams one by one cost the kernel's route lookup, allocation, netfilter hooks and
// device work ~45 times. The kernel adds the outer IPv4/UDP headers, routes, resolves next hops
// and fills checksums.
import {
  DROP_LINK_DOWN,
  DROP_NO_BUFFER,
  DROP_RUNT,
  DROP_TOO_BIG,
  DROP_VNI,
  DROP_VTEP_UNKNOWN,
  DROP_VTEP_UNREACHABLE,
  DROP_VXLAN_HEADER,
  NOTIFICATIONS,
  RX_BYTES,
  RX_COALESCED,
  RX_CSUM_FILLED,
  RX_GSO,
  RX_PACKETS,
  TX_BYTES,
  TX_PACKETS,
  TX_TUNNEL_GSO,
  TX_UDP_GSO,
} from "../counters.ts";
import {
  BURST,
  type DatapathPort,
  type EgressFrame,
  type FrameBatch,
  MAX_FRAME_LEN,
  MAX_GSO_FRAME,
} from "../port.ts";
import { type Mapping, mmap, munmap, viewMapping } from "../../ffi/mem.ts";
import { copyMemory, pointerOf } from "../../ffi/native_copy.ts";
import {
  IOV_BASE,
  IOV_LEN,
  IOVEC_SIZE,
  MMSGHDR_SIZE,
  MSG_CONTROL,
  MSG_CONTROLLEN,
  MSG_FLAGS,
  MSG_IOV,
  MSG_IOVLEN,
  MSG_LEN,
  MSG_NAME,
  MSG_NAMELEN,
  MSG_TRUNC,
  recvBurst,
  sendBurst,
  SIN_ADDR,
  SOCKADDR_IN_SIZE,
  UDP_GRO_CMSG_SIZE,
  UDP_SEGMENT_CMSG_SIZE,
  UDP_SEGMENT_MAX,
  udpGroSize,
  writeIpv4Address,
  writeSockaddrIn,
  writeUdpSegmentCmsg,
} from "../../ffi/udp.ts";
import { copyEgress } from "../af_packet/tpacket.ts";
import { libc } from "../../ffi/libc.ts";
import { errno } from "../../ffi/errno.ts";
import { completePartialChecksum } from "./inner_checksum.ts";
import { TcpCoalescer } from "./coalesce.ts";
import { OffloadFallback, type PlainTransmit } from "../offload/fallback.ts";
import { FrameHeaders, parseHeaders } from "../offload/gso.ts";
import { setIpv4HeaderChecksum, TCP_CHECK, writeU16 } from "../offload/checksum.ts";
import {
  HDR_GSO_TYPE,
  HDR_INNER_NH_OFFSET,
  HDR_OUTER_TH_OFFSET,
  OFFLOAD_CSUM,
  OFFLOAD_DATA_VALID,
  OFFLOAD_ECN,
  OFFLOAD_GSO,
  OFFLOAD_TSO4,
  OFFLOAD_TSO6,
  VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4,
  VNET_HDR_TUNNEL_LEN,
  writeVirtioNetHdr,
} from "../offload/virtio_net_hdr.ts";
import { ETH_HLEN, ETH_P_8021Q, macHiAt, macLoAt, VLAN_HLEN } from "../ethernet.ts";
import {
  MAX_REMOTES,
  type RemoteMacTable,
  REMOTES_BASE,
  REMOTES_COUNT,
  REMOTES_FLOOD,
  VXLAN_FLAG_I,
  VXLAN_HLEN,
  type VxlanSpec,
  writeVxlanHeader,
} from "./vxlan.ts";

/** A datagram slot: VXLAN header + the largest frame, rounded up to cache lines. */
const SLOT = Math.ceil((VXLAN_HLEN + MAX_FRAME_LEN) / 64) * 64;
/**
 * A receive slot holds a GSO frame: a kernel VTEP whose underlay takes tunnel GSO (veth) hands
 * the socket one datagram per TCP super-frame, not one per segment.
 */
const RX_SLOT = Math.ceil((VXLAN_HLEN + MAX_GSO_FRAME) / 64) * 64;
/** How long a frame received in a slot may grow as segments are appended to it (coalesce.ts). */
const RX_ROOM = Math.min(RX_SLOT - VXLAN_HLEN, MAX_GSO_FRAME);
/** Frames copied per sendmmsg at most, and datagrams (a flooded frame is one per VTEP). */
const TX_SLOTS = 64;
const TX_MSGS = 256;
/** Open-addressing index of the remote list by address (this thread's own, for receive). */
const INDEX_SLOTS = MAX_REMOTES * 2;
/** UDP payload bytes one UDP_SEGMENT message may carry: an IPv4 datagram's 65535 less headers. */
const UDP_SEGMENT_BYTES = 65535 - 20 - 8;
const EAGAIN = 11;
const EIO = 5;
const EINVAL = 22;
const EMSGSIZE = 90;
const ENOBUFS = 105;
const ENETUNREACH = 101;
const EHOSTUNREACH = 113;
const TWO_32 = 4294967296;
/** iovecs per transmit slot: its bytes, and a payload sent from where it lies (see MessageArea). */
const SLOT_IOVS = 2;
/**
 * A super-frame written to the tunnel GSO tap (#tunnelSend): the virtio-net header, the outer
 * Ethernet (to the tap), IPv4, UDP and VXLAN headers, then the frame's head; the iovecs after.
 */
const OUTER_IP = VNET_HDR_TUNNEL_LEN + ETH_HLEN;
const OUTER_UDP = OUTER_IP + 20;
const TUNNEL_INNER = OUTER_UDP + 8 + VXLAN_HLEN;
/** Outer headers a datagram adds in front of its inner frame, as counted on the wire. */
const OUTER_LEN = TUNNEL_INNER - VNET_HDR_TUNNEL_LEN;
const TUNNEL_AREA = 4096;
const TUNNEL_IOVS = TUNNEL_AREA - 2 * IOVEC_SIZE;

/**
 * Message vectors, their iovecs and addresses, then the data slots, in one private mapping:
 * the kernel reads and writes them by address, so they must not move (a mapping never does).
 */
class MessageArea {
  readonly mapping: Mapping;
  readonly bytes: Uint8Array;
  readonly words: Uint32Array;
  /** Where each message's name, iovec and data slot start, in bytes. */
  readonly names: number;
  readonly iovs: number;
  readonly slots: number;
  /**
   * Two iovecs per data slot, in slot order: the slot's bytes, then a segment's payload where
   * it lies (empty when the slot holds the whole frame); a run of slots is one message's array.
   */
  readonly slotIovs: number;
  /** One UDP_SEGMENT control message per message. */
  readonly controls: number;
  /** Pointer to message i, for a send that resumes after a failed datagram. */
  readonly msgPointers: Deno.PointerObject[];
  readonly #base: number;

  constructor(messages: number, slots: number, readonly slotSize: number) {
    const headers = messages * (MMSGHDR_SIZE + IOVEC_SIZE + SOCKADDR_IN_SIZE) +
      slots * SLOT_IOVS * IOVEC_SIZE + messages * UDP_SEGMENT_CMSG_SIZE;
    const start = Math.ceil(headers / 4096) * 4096;
    this.mapping = mmap(start + slots * slotSize);
    const buf = viewMapping(this.mapping.address, this.mapping.length);
    this.bytes = new Uint8Array(buf);
    this.words = new Uint32Array(buf);
    this.#base = Number(this.mapping.address);
    this.iovs = messages * MMSGHDR_SIZE;
    this.names = this.iovs + messages * IOVEC_SIZE;
    this.slotIovs = this.names + messages * SOCKADDR_IN_SIZE;
    this.controls = this.slotIovs + slots * SLOT_IOVS * IOVEC_SIZE;
    this.slots = start;
    this.msgPointers = [];
    for (let i = 0; i < messages; i++) {
      const m = i * MMSGHDR_SIZE;
      this.setPointer(m + MSG_NAME, this.names + i * SOCKADDR_IN_SIZE);
      this.words[(m + MSG_NAMELEN) >> 2] = SOCKADDR_IN_SIZE;
      this.setPointer(m + MSG_IOV, this.iovs + i * IOVEC_SIZE);
      this.words[(m + MSG_IOVLEN) >> 2] = 1;
      this.msgPointers.push(Deno.UnsafePointer.offset(this.mapping.pointer, m)!);
    }
  }

  /** Points message i at `iovCount` iovecs from byte `iovs`, with a control message or none. */
  setMessage(i: number, iovs: number, iovCount: number, control: number | null): void {
    const m = i * MMSGHDR_SIZE;
    this.setPointer(m + MSG_IOV, iovs);
    this.words[(m + MSG_IOVLEN) >> 2] = iovCount;
    this.words[(m + MSG_IOVLEN + 4) >> 2] = 0;
    if (control === null) {
      this.words[(m + MSG_CONTROL) >> 2] = 0;
      this.words[(m + MSG_CONTROL + 4) >> 2] = 0;
      this.words[(m + MSG_CONTROLLEN) >> 2] = 0;
    } else {
      this.setPointer(m + MSG_CONTROL, control);
      this.words[(m + MSG_CONTROLLEN) >> 2] = UDP_SEGMENT_CMSG_SIZE;
    }
    this.words[(m + MSG_CONTROLLEN + 4) >> 2] = 0;
  }

  /** Stores the address of byte `target` of this area at byte `at` (a 64-bit pointer). */
  setPointer(at: number, target: number): void {
    const p = this.#base + target;
    this.words[at >> 2] = p % TWO_32;
    this.words[(at >> 2) + 1] = Math.floor(p / TWO_32);
  }

  get pointer(): Deno.PointerObject {
    return this.mapping.pointer;
  }

  close(): void {
    munmap(this.mapping);
  }
}

export class VxlanDatapath implements DatapathPort, PlainTransmit {
  readonly #fd: number;
  readonly #vni: number;
  readonly #mtu: number;
  readonly #strict: boolean;
  readonly #table: RemoteMacTable;
  readonly #remotes: Int32Array;
  /** Receive side, only on the Worker that polls the socket. */
  readonly #rx: MessageArea | null;
  /** Remote list index + 1 by address hash, for the addresses this thread has seen listed. */
  readonly #index = new Int32Array(INDEX_SLOTS);
  #indexed = 0;
  readonly #tx: MessageArea;
  readonly #fallback: OffloadFallback;
  readonly #headers = new FrameHeaders();
  readonly #coalescer = new TcpCoalescer();
  /**
   * The last burst: messages received, the next one to read, where in it (bytes), the stride of
   * its datagrams and the remote VTEP it came from (see receive).
   */
  #rxGot = 0;
  #rxNext = 0;
  #rxAt = 0;
  #rxStride = 0;
  #rxRemote = -1;
  /** The last station learned (#learn): its MAC, VTEP, second and the table's version before. */
  #learnedHi = -1;
  #learnedLo = -1;
  #learnedRemote = -1;
  #learnedAt = -1;
  #learnedVersion = -1;
  #txSlots = 0;
  #txMsgs = 0;
  /** Per queued message: sent through the UDP_SEGMENT socket; its datagrams; inner bytes. */
  readonly #msgGso = new Uint8Array(TX_MSGS);
  readonly #msgDatagrams = new Uint16Array(TX_MSGS);
  readonly #msgBytes = new Float64Array(TX_MSGS);
  /** The UDP_SEGMENT socket, -1: none (an old kernel, or it refused a send). */
  #gsoFd: number;
  /**
   * While a super-frame is being cut (see transmit), its segments fill consecutive slots as a
   * run that becomes one message per VTEP: first slot (-1: no run), datagram size, the VTEPs
   * (first remote and count), the most datagrams one message may hold, inner bytes, and
   * whether a shorter datagram (the last of a super-frame) already ended it.
   */
  #cutting = false;
  /** The tunnel GSO tap (see #tunnelSend), -1: none; its headers and iovecs, written once. */
  #tapFd: number;
  readonly #tunnel: Mapping | null = null;
  readonly #tunnelBytes: Uint8Array = new Uint8Array(0);
  readonly #tunnelWords: Uint32Array = new Uint32Array(0);
  readonly #tunnelIovs: Deno.PointerValue = null;
  /** Where the super-frame being cut goes (see #remoteFor), looked up once for its segments. */
  #cutRemote = -1;
  /** Each transmit slot's frame area (behind its VXLAN header), where segments are cut into. */
  readonly #slotFrames: Uint8Array[] = [];
  /** The buffer payloads were last sent from in place, and its address (see #addressOf). */
  #payloadView: Uint8Array | null = null;
  #payloadAddress = 0;
  #runFirst = -1;
  #runSize = 0;
  #runRemote = 0;
  #runCount = 0;
  #runMax = 0;
  #runBytes = 0;
  #runShort = false;

  constructor(
    spec: VxlanSpec,
    readonly counters: Float64Array,
    table: RemoteMacTable,
    receives: boolean,
  ) {
    this.#fd = spec.fd;
    this.#gsoFd = spec.gsoFd;
    this.#vni = spec.vni;
    this.#mtu = spec.mtu;
    this.#strict = spec.strict;
    this.#table = table;
    this.#remotes = new Int32Array(spec.remotes);
    this.#rx = null;
    this.#tapFd = spec.tapFd;
    if (spec.tapFd >= 0) {
      this.#tunnel = mmap(TUNNEL_AREA);
      const buf = viewMapping(this.#tunnel.address, TUNNEL_AREA);
      this.#tunnelBytes = new Uint8Array(buf);
      this.#tunnelWords = new Uint32Array(buf);
      this.#tunnelIovs = Deno.UnsafePointer.offset(this.#tunnel.pointer, TUNNEL_IOVS);
      writeTunnelHeaders(this.#tunnelBytes, spec);
      setIovec(this.#tunnelWords, TUNNEL_IOVS, Number(this.#tunnel.address), 0);
    }
    this.#tx = new MessageArea(TX_MSGS, TX_SLOTS, SLOT);
    for (let k = 0; k < TX_SLOTS; k++) {
      const at = this.#tx.slots + k * SLOT + VXLAN_HLEN;
      this.#slotFrames.push(this.#tx.bytes.subarray(at, at + SLOT - VXLAN_HLEN));
    }
    this.#fallback = new OffloadFallback(counters);
    try {
      const tx = this.#tx;
      for (let i = 0; i < TX_MSGS; i++) {
        writeSockaddrIn(tx.bytes, tx.names + i * SOCKADDR_IN_SIZE, 0, spec.udpPort);
      }
      // Every datagram carries the same header: written once per slot, never per frame.
      for (let s = 0; s < TX_SLOTS; s++) {
        writeVxlanHeader(tx.bytes, tx.slots + s * SLOT, spec.vni);
        tx.setPointer(tx.slotIovs + s * SLOT_IOVS * IOVEC_SIZE + IOV_BASE, tx.slots + s * SLOT);
      }
      if (receives) {
        const rx = this.#rx = new MessageArea(BURST, BURST, RX_SLOT);
        for (let i = 0; i < BURST; i++) {
          rx.setPointer(rx.iovs + i * IOVEC_SIZE + IOV_BASE, rx.slots + i * RX_SLOT);
          rx.words[(rx.iovs + i * IOVEC_SIZE + IOV_LEN) >> 2] = RX_SLOT;
          // Room for the UDP_GRO control message (the datagram size of a coalesced message).
          const m = i * MMSGHDR_SIZE;
          rx.setPointer(m + MSG_CONTROL, rx.controls + i * UDP_GRO_CMSG_SIZE);
          rx.words[(m + MSG_CONTROLLEN) >> 2] = UDP_GRO_CMSG_SIZE;
        }
      }
    } catch (err) {
      this.close();
      throw err;
    }
  }

  receive(batch: FrameBatch): number {
    const rx = this.#rx;
    batch.count = 0;
    if (rx === null) return 0;
    const w = rx.words;
    if (this.#rxNext >= this.#rxGot) {
      // Everything of the last burst was handed out: the slots may be filled again.
      const got = recvBurst(this.#fd, rx.pointer, BURST);
      if (got <= 0) return 0;
      this.#rxGot = got;
      this.#rxNext = 0;
      this.#rxAt = 0;
    }
    const c = this.counters;
    const b = rx.bytes;
    const now = Math.floor(Date.now() / 1000);
    const co = this.#coalescer;
    let n = 0;
    let datagrams = 0;
    // A message is one datagram, or with UDP_GRO several laid end to end (#rxStride apart);
    // a burst may hold more datagrams than a batch takes: the rest waits for the next call.
    while (this.#rxNext < this.#rxGot && n < BURST) {
      const i = this.#rxNext;
      const m = i * MMSGHDR_SIZE;
      const len = w[(m + MSG_LEN) >> 2];
      const slot = rx.slots + i * RX_SLOT;
      if (this.#rxAt === 0 && !this.#openMessage(i, slot, len)) {
        this.#rxNext++;
        continue;
      }
      const at = this.#rxAt;
      const dlen = Math.min(this.#rxStride, len - at);
      this.#rxAt = at + this.#rxStride;
      if (this.#rxAt >= len) {
        this.#rxNext++;
        this.#rxAt = 0;
      }
      const h = slot + at;
      if (dlen < VXLAN_HLEN || (b[h] & VXLAN_FLAG_I) === 0) {
        c[DROP_VXLAN_HEADER]++;
        continue;
      }
      if (((b[h + 4] << 16) | (b[h + 5] << 8) | b[h + 6]) !== this.#vni) {
        c[DROP_VNI]++;
        continue;
      }
      if (dlen < VXLAN_HLEN + ETH_HLEN) {
        c[DROP_RUNT]++;
        continue;
      }
      const remote = this.#rxRemote;
      const f = h + VXLAN_HLEN;
      // A multicast source is no station (the bridge drops the frame); a full list learns nothing.
      if ((b[f + 6] & 1) === 0 && remote >= 0) {
        this.#learn(macHiAt(b, f + 6), macLoAt(b, f + 6), remote, now);
      }
      const inner = dlen - VXLAN_HLEN;
      c[RX_BYTES] += inner;
      datagrams++;
      batch.offload[n] = 0;
      if (inner > this.#mtu + ETH_HLEN + VLAN_HLEN) {
        co.close(batch);
        this.#superFrame(b, f, inner, batch, n);
      } else if (co.offer(b, f, inner, slot + RX_ROOM + VXLAN_HLEN - f, batch, n)) {
        continue; // its payload now follows the segment before it
      } else if (completePartialChecksum(b, f, inner)) {
        c[RX_CSUM_FILLED]++;
      }
      batch.bytes[n] = b;
      batch.offset[n] = f;
      batch.length[n] = inner;
      n++;
    }
    co.close(batch);
    c[RX_COALESCED] += co.takeMerged();
    c[RX_PACKETS] += datagrams;
    batch.count = n;
    return n;
  }

  /**
   * Learns that the station `hi:lo` is behind VTEP `remote`, once per second for the datagrams
   * of a run that repeat it (a super-frame's ~45 segments): while the table's version is the
   * one read before the last learn, that learn's entry stands, stamped this second.
   */
  #learn(hi: number, lo: number, remote: number, now: number): void {
    const t = this.#table;
    const version = t.version;
    if (
      hi === this.#learnedHi && lo === this.#learnedLo && remote === this.#learnedRemote &&
      now === this.#learnedAt && version === this.#learnedVersion
    ) {
      return;
    }
    t.learn(hi, lo, 0, remote, now);
    this.#learnedHi = hi;
    this.#learnedLo = lo;
    this.#learnedRemote = remote;
    this.#learnedAt = now;
    this.#learnedVersion = version;
  }

  /**
   * The first look at message i (`len` bytes in its slot): false when it is dropped whole
   * (truncated, or from a VTEP `strict` refuses); otherwise sets the stride of its datagrams and
   * the remote they came from, and readies its header fields for the next recvmmsg.
   */
  #openMessage(i: number, slot: number, len: number): boolean {
    const rx = this.#rx!;
    const b = rx.bytes;
    const w = rx.words;
    const m = i * MMSGHDR_SIZE;
    const truncated = (w[(m + MSG_FLAGS) >> 2] & MSG_TRUNC) !== 0;
    const gso = udpGroSize(b, rx.controls + i * UDP_GRO_CMSG_SIZE, w[(m + MSG_CONTROLLEN) >> 2]);
    // The kernel wrote the lengths it used.
    w[(m + MSG_NAMELEN) >> 2] = SOCKADDR_IN_SIZE;
    w[(m + MSG_CONTROLLEN) >> 2] = UDP_GRO_CMSG_SIZE;
    if (truncated) {
      this.counters[DROP_TOO_BIG]++;
      return false;
    }
    const a = rx.names + i * SOCKADDR_IN_SIZE + SIN_ADDR;
    const addr = ((b[a] << 24) | (b[a + 1] << 16) | (b[a + 2] << 8) | b[a + 3]) | 0;
    let remote = this.#find(addr);
    if (remote < 0) {
      if (this.#strict) {
        this.counters[DROP_VTEP_UNKNOWN]++;
        return false;
      }
      remote = this.#append(addr);
    }
    this.#rxRemote = remote;
    // Several datagrams of `gso` bytes, or one TCP super-frame the sending kernel did not cut
    // (tunnel GSO: the size is then its inner segments'), told apart by the inner IP length.
    this.#rxStride = gso > 0 && len > gso && !wholeFrame(b, slot + VXLAN_HLEN, len - VXLAN_HLEN)
      ? gso
      : len;
    return true;
  }

  /**
   * A frame longer than the inner MTU allows: a TCP super-frame the sending kernel did not
   * segment (tunnel GSO) is marked as GSO with segments the inner MTU carries, its checksum
   * partial, and the destination port segments it or hands it on. Anything else stays as it
   * is, too long for the destination to take (dropped there, counted too_big).
   */
  #superFrame(b: Uint8Array, f: number, len: number, batch: FrameBatch, n: number): void {
    const h = this.#headers;
    // A view per super-frame (one per ~45 segments' worth of bytes): parseHeaders reads from 0.
    if (parseHeaders(b.subarray(f, f + len), len, h) !== 0 || !h.tcp) return;
    const mss = this.#mtu + ETH_HLEN + h.tags * VLAN_HLEN - h.end;
    if (mss <= 0) return;
    batch.offload[n] = (h.ipv6 ? OFFLOAD_TSO6 : OFFLOAD_TSO4) | OFFLOAD_CSUM;
    batch.csumStart[n] = h.l4;
    batch.csumOffset[n] = TCP_CHECK;
    batch.gsoSize[n] = mss;
    this.counters[RX_GSO]++;
  }

  /** The frames handed out stay in the receive slots until the next receive(): nothing to do. */
  release(): void {}

  /** Index of `addr` in the remote list, or -1. */
  #find(addr: number): number {
    const r = this.#remotes;
    const count = Atomics.load(r, REMOTES_COUNT);
    while (this.#indexed < count) this.#insert(this.#indexed++);
    const mask = INDEX_SLOTS - 1;
    for (let i = Math.imul(addr, 0x9e3779b1) >>> 20 & mask;; i = (i + 1) & mask) {
      const e = this.#index[i];
      if (e === 0) return -1;
      if (r[REMOTES_BASE + e - 1] === addr) return e - 1;
    }
  }

  #insert(k: number): void {
    const addr = this.#remotes[REMOTES_BASE + k];
    const mask = INDEX_SLOTS - 1;
    let i = Math.imul(addr, 0x9e3779b1) >>> 20 & mask;
    while (this.#index[i] !== 0) i = (i + 1) & mask;
    this.#index[i] = k + 1;
  }

  /** Adds a VTEP that sent us traffic (not strict); -1 once the list is full. */
  #append(addr: number): number {
    const r = this.#remotes;
    const k = Atomics.load(r, REMOTES_COUNT);
    if (k >= MAX_REMOTES) return -1;
    r[REMOTES_BASE + k] = addr;
    Atomics.store(r, REMOTES_COUNT, k + 1);
    this.#find(addr); // indexes it
    return k;
  }

  /**
   * A checksum-partial or GSO frame is finished in software first (inner checksums, segments);
   * a super-frame's segments go out as UDP_SEGMENT runs where the kernel takes them.
   */
  transmit(src: Uint8Array, f: EgressFrame): boolean {
    if ((f.offload & ~OFFLOAD_DATA_VALID) === 0) return this.transmitPlain(src, f);
    if ((f.offload & OFFLOAD_GSO) === 0) {
      return this.#fallback.send(src, f, this, this.#mtu + ETH_HLEN);
    }
    if (this.#tapFd >= 0 && this.#tunnelSend(src, f)) return true;
    // Cut into runs of slots (one datagram per message without the UDP_SEGMENT socket).
    this.#cutting = true;
    this.#cutRemote = this.#remoteFor(f.head);
    try {
      return this.#fallback.send(src, f, this, this.#mtu + ETH_HLEN);
    } finally {
      this.#closeRun();
      this.#cutting = false;
    }
  }

  transmitPlain(src: Uint8Array, f: EgressFrame): boolean {
    const c = this.counters;
    const len = f.length;
    if (len < ETH_HLEN) {
      c[DROP_RUNT]++;
      return false;
    }
    if (
      len > this.#mtu + ETH_HLEN &&
      (len > this.#mtu + ETH_HLEN + VLAN_HLEN || !this.#tagged(src, f))
    ) {
      c[DROP_TOO_BIG]++;
      return false;
    }
    const r = this.#remotes;
    // The destination as decided on, not guest memory read again.
    const k = this.#cutting ? this.#cutRemote : this.#remoteFor(f.head);
    const first = k < 0 ? 0 : k;
    const count = this.#vtepCount(k);
    if (count === 0) return false;
    if (this.#cutting) {
      const s = this.#runSlot(VXLAN_HLEN + len, first, count);
      // A segment cut into the slot segmentBuffer() handed out is already in place, unless a
      // send emptied the slots (then it is copied from where it was built to the first one).
      if (src !== this.#slotFrames[s]) {
        copyEgress(this.#tx.bytes, this.#tx.slots + s * SLOT + VXLAN_HLEN, src, f);
      }
      this.#setSlotIovs(s, VXLAN_HLEN + len, 0, 0);
      return true;
    }
    if (this.#txSlots === TX_SLOTS || this.#txMsgs + count > TX_MSGS) this.#send();
    const tx = this.#tx;
    const slot = tx.slots + this.#txSlots++ * SLOT;
    copyEgress(tx.bytes, slot + VXLAN_HLEN, src, f);
    const w = tx.words;
    for (let k = first; k < first + count; k++) {
      const i = this.#txMsgs++;
      const iov = tx.iovs + i * IOVEC_SIZE;
      tx.setMessage(i, iov, 1, null);
      tx.setPointer(iov + IOV_BASE, slot);
      w[(iov + IOV_LEN) >> 2] = VXLAN_HLEN + len;
      this.#address(i, r[REMOTES_BASE + k]);
      this.#msgGso[i] = 0;
      this.#msgDatagrams[i] = 1;
      this.#msgBytes[i] = len;
    }
    return true;
  }

  /** Writes the VTEP address `a` into message i's sockaddr_in. */
  #address(i: number, a: number): void {
    writeIpv4Address(this.#tx.bytes, this.#tx.names + i * SOCKADDR_IN_SIZE + SIN_ADDR, a);
  }

  /**
   * How many VTEPs a frame for remote `k` (-1: flood, from the first) goes to; 0, counted as
   * unreachable, when it floods to an empty list.
   */
  #vtepCount(k: number): number {
    const count = k < 0 ? this.#remotes[REMOTES_FLOOD] : 1;
    if (count === 0) this.counters[DROP_VTEP_UNREACHABLE]++;
    return count;
  }

  /** The remote list index of the VTEP the destination MAC at h[0] was learned on; -1: flood. */
  #remoteFor(h: Uint8Array): number {
    if ((h[0] & 1) !== 0) return -1;
    return this.#table.lookup(macHiAt(h, 0), macLoAt(h, 0), 0);
  }

  /**
   * A segment of the super-frame being cut whose payload is sent from where it lies, src[at,
   * at + n): only its headers, seg[0, headerLen), go into a slot (see SegmentSink). Called only
   * by the fallback while transmit() cuts, so the super-frame's VTEPs are looked up already.
   */
  transmitSegment(
    seg: Uint8Array,
    headerLen: number,
    src: Uint8Array,
    at: number,
    n: number,
  ): boolean {
    const c = this.counters;
    const len = headerLen + n;
    if (!(at >= 0 && n >= 0 && at + n <= src.length) || headerLen < ETH_HLEN) {
      throw new RangeError(`transmitSegment: ${n} bytes at ${at} of ${src.length}`);
    }
    const tagged = ((seg[12] << 8) | seg[13]) === ETH_P_8021Q;
    if (len > this.#mtu + ETH_HLEN + (tagged ? VLAN_HLEN : 0)) {
      c[DROP_TOO_BIG]++;
      return false;
    }
    const k = this.#cutRemote;
    const first = k < 0 ? 0 : k;
    const count = this.#vtepCount(k);
    if (count === 0) return false;
    const s = this.#runSlot(VXLAN_HLEN + len, first, count);
    const tx = this.#tx;
    if (seg !== this.#slotFrames[s]) {
      copyMemory(tx.bytes, tx.slots + s * SLOT + VXLAN_HLEN, seg, 0, headerLen);
    }
    this.#setSlotIovs(s, VXLAN_HLEN + headerLen, this.#addressOf(src) + at, n);
    return true;
  }

  /** The address of `src`'s first byte, for an iovec that sends from where the bytes lie. */
  #addressOf(src: Uint8Array): number {
    if (src !== this.#payloadView) {
      this.#payloadView = src;
      this.#payloadAddress = Number(Deno.UnsafePointer.value(pointerOf(src)));
    }
    return this.#payloadAddress;
  }

  /** Slot s's iovecs: `slotBytes` of its own, then `n` payload bytes at address `payload`. */
  #setSlotIovs(s: number, slotBytes: number, payload: number, n: number): void {
    const w = this.#tx.words;
    const iov = this.#tx.slotIovs + s * SLOT_IOVS * IOVEC_SIZE;
    w[(iov + IOV_LEN) >> 2] = slotBytes;
    setIovec(w, iov + IOVEC_SIZE, payload, n);
  }

  /**
   * The slot for the next segment (a `size`-byte datagram) of the super-frame being cut, as
   * part of the open run. A run holds datagrams of one size for the same VTEPs, the last one
   * possibly shorter, as many as one UDP_SEGMENT message may carry; anything else closes it and
   * opens another, after a send when the slots or messages are used up.
   */
  #runSlot(size: number, first: number, count: number): number {
    if (
      this.#runFirst >= 0 &&
      (this.#runShort || size > this.#runSize || first !== this.#runRemote ||
        count !== this.#runCount || this.#txSlots - this.#runFirst === this.#runMax)
    ) {
      this.#closeRun();
    }
    if (this.#txSlots === TX_SLOTS || (this.#runFirst < 0 && this.#txMsgs + count > TX_MSGS)) {
      this.#closeRun();
      this.#send();
    }
    const s = this.#txSlots++;
    if (this.#runFirst < 0) {
      this.#runFirst = s;
      this.#runSize = size;
      this.#runRemote = first;
      this.#runCount = count;
      // Without the UDP_SEGMENT socket, each datagram is a message of its own.
      this.#runMax = this.#gsoFd < 0
        ? 1
        : Math.min(UDP_SEGMENT_MAX, Math.floor(UDP_SEGMENT_BYTES / size));
      this.#runBytes = 0;
      this.#runShort = false;
    } else if (size < this.#runSize) {
      this.#runShort = true;
    }
    this.#runBytes += size - VXLAN_HLEN;
    return s;
  }

  /** The next transmit slot's frame area while a super-frame is being cut (see #runSlot). */
  segmentBuffer(): Uint8Array | null {
    if (!this.#cutting) return null;
    if (this.#txSlots === TX_SLOTS) {
      this.#closeRun();
      this.#send();
    }
    return this.#slotFrames[this.#txSlots];
  }

  /** Queues the open run as one message per VTEP (UDP_SEGMENT when it holds several datagrams). */
  #closeRun(): void {
    const s = this.#runFirst;
    if (s < 0) return;
    this.#runFirst = -1;
    const tx = this.#tx;
    const n = this.#txSlots - s;
    const r = this.#remotes;
    for (let k = this.#runRemote; k < this.#runRemote + this.#runCount; k++) {
      const i = this.#txMsgs++;
      const control = n > 1 ? tx.controls + i * UDP_SEGMENT_CMSG_SIZE : null;
      if (control !== null) writeUdpSegmentCmsg(tx.bytes, control, this.#runSize);
      tx.setMessage(i, tx.slotIovs + s * SLOT_IOVS * IOVEC_SIZE, SLOT_IOVS * n, control);
      this.#address(i, r[REMOTES_BASE + k]);
      this.#msgGso[i] = n > 1 ? 1 : 0;
      this.#msgDatagrams[i] = n;
      this.#msgBytes[i] = this.#runBytes;
    }
  }

  /**
   * A TCP super-frame sent whole, encapsulated once, through the tap (tunnel GSO): the kernel
   * forwards it to each VTEP and cuts it into datagrams only where a device needs it. Its head
   * is copied behind the outer headers, its tail written from where it lies. False when it
   * cannot go this way and is to be cut: not TCP with a partial checksum, longer than one outer
   * IPv4 packet, a TCP header shorter than 20 bytes, or the kernel refused its header (EINVAL:
   * this frame alone, whose bytes its sender controls); a tap that fails otherwise (gone) is
   * not tried again.
   */
  #tunnelSend(src: Uint8Array, f: EgressFrame): boolean {
    const tso = f.offload & (OFFLOAD_TSO4 | OFFLOAD_TSO6);
    const len = f.length;
    if (tso === 0 || (f.offload & OFFLOAD_CSUM) === 0 || len + OUTER_LEN - ETH_HLEN > 0xffff) {
      return false;
    }
    // The kernel reads the tail by address: it must lie within src (as transmitSegment checks).
    if (!(f.tailStart >= 0 && f.tailStart <= f.tailEnd && f.tailEnd <= src.length)) {
      throw new RangeError(`tunnel GSO: tail ${f.tailStart}..${f.tailEnd} of ${src.length}`);
    }
    const l3 = ETH_HLEN + (this.#tagged(src, f) ? VLAN_HLEN : 0);
    const l4 = f.csumStart;
    const end = l4 + ((f.byteAt(src, l4 + 12) >>> 4) << 2);
    // Segments the inner MTU carries (the kernel cuts at gso_size: it may be lowered).
    const mss = Math.min(f.gsoSize, this.#mtu + l3 - end);
    if (l4 < l3 + 20 || end < l4 + 20 || end >= len || mss <= 0) return false;
    const k = this.#remoteFor(f.head);
    const first = k < 0 ? 0 : k;
    const count = this.#vtepCount(k);
    if (count === 0) return true; // dropped, counted
    const c = this.counters;
    // Frames queued for sendmmsg before this one leave first: a flow's order is kept.
    if (this.#txMsgs > 0) this.#send();
    const b = this.#tunnelBytes;
    writeVirtioNetHdr(
      b,
      0,
      f.offload & (OFFLOAD_CSUM | tso | OFFLOAD_ECN),
      OUTER_LEN + l4,
      f.csumOffset,
      mss,
      OUTER_LEN + end,
    );
    b[HDR_GSO_TYPE] |= VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4;
    writeU16LE(b, HDR_INNER_NH_OFFSET, OUTER_LEN + l3);
    writeU16(b, OUTER_IP + 2, len + OUTER_LEN - ETH_HLEN);
    writeU16(b, OUTER_UDP + 4, len + 8 + VXLAN_HLEN);
    b.set(f.head.subarray(0, f.headLength), TUNNEL_INNER);
    const w = this.#tunnelWords;
    w[(TUNNEL_IOVS + IOV_LEN) >> 2] = TUNNEL_INNER + f.headLength;
    setIovec(
      w,
      TUNNEL_IOVS + IOVEC_SIZE,
      this.#addressOf(src) + f.tailStart,
      f.tailEnd - f.tailStart,
    );
    const segments = Math.ceil((len - end) / mss);
    const r = this.#remotes;
    for (let x = first; x < first + count; x++) {
      const ip = OUTER_IP;
      writeIpv4Address(b, ip + 16, r[REMOTES_BASE + x]);
      setIpv4HeaderChecksum(b, ip);
      if (Number(libc.writev(this.#tapFd, this.#tunnelIovs, 2)) >= 0) {
        c[TX_PACKETS] += segments;
        c[TX_BYTES] += len + (segments - 1) * end;
        c[TX_TUNNEL_GSO]++;
        continue;
      }
      const e = errno();
      if (e === EAGAIN || e === ENOBUFS) {
        c[DROP_NO_BUFFER] += segments;
      } else if (x === first) {
        // A header the kernel refuses is this frame's: cut it, and keep the tap for the next
        // (one peer's odd frame must not take tunnel GSO from every flow). Anything else: the
        // tap is gone; cut this frame and the rest.
        if (e !== EINVAL) this.#tapFd = -1;
        return false;
      } else {
        c[DROP_LINK_DOWN] += segments;
      }
    }
    return true;
  }

  /** Whether the egress frame's outer ethertype is 802.1Q (its 4 bytes do not count in the MTU). */
  #tagged(src: Uint8Array, f: EgressFrame): boolean {
    return ((f.byteAt(src, 12) << 8) | f.byteAt(src, 13)) === ETH_P_8021Q;
  }

  flush(): void {
    if (this.#txMsgs > 0) this.#send();
  }

  /**
   * Sends every queued message, in order, each through its socket; the datagrams the kernel
   * refuses are dropped and counted.
   */
  #send(): void {
    const c = this.counters;
    const tx = this.#tx;
    const total = this.#txMsgs;
    c[NOTIFICATIONS]++;
    let at = 0;
    while (at < total) {
      const gso = this.#msgGso[at];
      let end = at + 1;
      while (end < total && this.#msgGso[end] === gso) end++;
      const sent = sendBurst(gso ? this.#gsoFd : this.#fd, tx.msgPointers[at], end - at);
      if (sent > 0) {
        for (let i = at; i < at + sent; i++) {
          c[TX_BYTES] += this.#msgBytes[i];
          c[TX_PACKETS] += this.#msgDatagrams[i];
        }
        if (gso) c[TX_UDP_GSO] += sent;
        at += sent;
        continue;
      }
      const e = -sent;
      if (e === EAGAIN || e === ENOBUFS) {
        // The socket's send buffer is full: drop, never wait.
        for (let i = at; i < total; i++) c[DROP_NO_BUFFER] += this.#msgDatagrams[i];
        break;
      }
      // This message alone: too big for the path (DF is set), or no route to its VTEP. A kernel
      // that refuses UDP_SEGMENT itself (EINVAL, EIO: e.g. an IPsec route) gets single
      // datagrams from now on.
      if (gso && (e === EINVAL || e === EIO)) this.#gsoFd = -1;
      const unreachable = e === ENETUNREACH || e === EHOSTUNREACH;
      c[e === EMSGSIZE ? DROP_TOO_BIG : unreachable ? DROP_VTEP_UNREACHABLE : DROP_LINK_DOWN] +=
        this.#msgDatagrams[at];
      at++;
    }
    this.#txMsgs = 0;
    this.#txSlots = 0;
  }

  /** Unmaps the message areas (the socket belongs to the control side). */
  close(): void {
    if (this.#tunnel !== null) munmap(this.#tunnel);
    this.#rx?.close();
    this.#tx?.close();
  }
}

/**
 * Whether the inner frame b[f, f + len) is one IP packet as long as the frame (a super-frame
 * sent whole), rather than the first of several datagrams laid end to end.
 */
function wholeFrame(b: Uint8Array, f: number, len: number): boolean {
  if (len < ETH_HLEN + 20) return false;
  let l3 = ETH_HLEN;
  let type = (b[f + 12] << 8) | b[f + 13];
  if (type === ETH_P_8021Q) {
    l3 += VLAN_HLEN;
    type = (b[f + 16] << 8) | b[f + 17];
  }
  const ip = f + l3;
  if (type === 0x0800) return l3 + ((b[ip + 2] << 8) | b[ip + 3]) === len;
  if (type === 0x86dd) return l3 + 40 + ((b[ip + 4] << 8) | b[ip + 5]) === len;
  return false;
}

/**
 * What every frame written to the tunnel GSO tap shares: the virtio-net header's tunnel offset,
 * an outer Ethernet header addressed to the tap (the kernel takes it as received, and forwards
 * it), IPv4 from the VTEP address with DF set, UDP from and to the port's UDP port (checksum 0,
 * RFC 7348 section 5) and the VXLAN header.
 */
function writeTunnelHeaders(b: Uint8Array, spec: VxlanSpec): void {
  b.fill(0, 0, TUNNEL_INNER);
  writeU16LE(b, HDR_OUTER_TH_OFFSET, OUTER_UDP - VNET_HDR_TUNNEL_LEN);
  const e = VNET_HDR_TUNNEL_LEN;
  for (let i = 0; i < 6; i++) b[e + i] = spec.tapMac[i];
  // The source: the tap's MAC, its last bit flipped (locally administered, like the tap's).
  for (let i = 0; i < 6; i++) b[e + 6 + i] = spec.tapMac[i];
  b[e + 6] |= 0x02;
  b[e + 11] ^= 0x01;
  writeU16(b, e + 12, 0x0800);
  const ip = OUTER_IP;
  b[ip] = 0x45;
  writeU16(b, ip + 6, 0x4000); // DF: VTEPs must not fragment (RFC 7348 section 4.3)
  b[ip + 8] = 64;
  b[ip + 9] = 17;
  writeIpv4Address(b, ip + 12, spec.local);
  writeU16(b, OUTER_UDP, spec.udpPort);
  writeU16(b, OUTER_UDP + 2, spec.udpPort);
  writeVxlanHeader(b, OUTER_UDP + 8, spec.vni);
}

/** An iovec at byte `at` of `w`'s buffer: `n` bytes at address `address`. */
function setIovec(w: Uint32Array, at: number, address: number, n: number): void {
  w[(at + IOV_BASE) >> 2] = address % TWO_32;
  w[((at + IOV_BASE) >> 2) + 1] = Math.floor(address / TWO_32);
  w[(at + IOV_LEN) >> 2] = n;
  w[((at + IOV_LEN) >> 2) + 1] = 0;
}

function writeU16LE(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff;
  b[at + 1] = v >>> 8;
}
