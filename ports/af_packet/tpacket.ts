// TPACKET_V3 layouts (include/uapi/linux/if_packet.h), the rings' geometry, the spec the control
// plane hands a Worker, and the egress checks and copy both datapath variants share.
import { type EgressFrame, MAX_FRAME_LEN } from "../port.ts";
import { VNET_HDR_LEN } from "../offload/virtio_net_hdr.ts";
import { copyMemory } from "../../ffi/native_copy.ts";
import { ETH_HLEN, ETH_P_8021Q, VLAN_HLEN } from "../ethernet.ts";

// struct tpacket_block_desc: u32 version, u32 offset_to_priv, then struct tpacket_hdr_v1.
export const BLOCK_STATUS = 8;
export const BLOCK_NUM_PKTS = 12;
export const BLOCK_OFFSET_TO_FIRST_PKT = 16;
export const BLOCK_LEN = 20;
// struct tpacket3_hdr.
export const TP_NEXT_OFFSET = 0;
export const TP_SNAPLEN = 12;
export const TP_LEN = 16;
export const TP_STATUS = 20;
export const TP_MAC = 24;
export const TP_VLAN_TCI = 32;
export const TP_VLAN_TPID = 36;
/** TPACKET_ALIGN(sizeof(struct tpacket3_hdr)): a TX frame's data starts here in its slot. */
export const TPACKET3_HDR_ALIGNED = 48;
/** struct sockaddr_ll follows the header; its sll_ifindex (never 0 for a real device). */
export const TP_SLL_IFINDEX = TPACKET3_HDR_ALIGNED + 4;

export const TP_STATUS_KERNEL = 0;
export const TP_STATUS_USER = 1;
export const TP_STATUS_CSUMNOTREADY = 1 << 3;
export const TP_STATUS_VLAN_VALID = 1 << 4;
export const TP_STATUS_VLAN_TPID_VALID = 1 << 6;
export const TP_STATUS_AVAILABLE = 0;
export const TP_STATUS_SEND_REQUEST = 1;

export interface RingGeometry {
  /** RX: TPACKET_V3 blocks the kernel fills with variable-size frames, handed over whole. */
  rxBlockSize: number;
  rxBlockNr: number;
  /** tp_retire_blk_tov: a block that is not full is handed over after this many ms. */
  rxRetireMs: number;
  /** TX: fixed-size slots (V3 TX works like V2: tp_next_offset 0), frames per block = size/slot. */
  txBlockSize: number;
  txBlockNr: number;
  txFrameSize: number;
}

/** Every frame of the rings is preceded by a struct virtio_net_hdr (PACKET_VNET_HDR). */
export const TX_DATA = TPACKET3_HDR_ALIGNED + VNET_HDR_LEN;
const TX_SLOT_MIN = (TX_DATA + MAX_FRAME_LEN + 15) & ~15;

/**
 * RX: 128 KiB blocks hold one or two 64 KiB GSO frames (the kernel truncates a frame longer than
 * a block), or ~85 1500-byte frames; 64 of them (8 MiB) absorb ~6 ms of 10 Gb/s while a Worker
 * sits in GC or yields. TX: V3 TX slots have one size, so a slot holds a 64 KiB GSO frame: 128
 * slots (8 MiB), one per 64 KiB block (order-4 allocations the kernel usually finds contiguous).
 * A GSO frame longer than a slot's room is segmented in software.
 */
export const DEFAULT_GEOMETRY: RingGeometry = {
  rxBlockSize: 1 << 17,
  rxBlockNr: 64,
  rxRetireMs: 1,
  txBlockSize: 1 << 16,
  txBlockNr: 128,
  txFrameSize: 1 << 16,
};

/** Throws on a geometry the kernel would refuse with a bare EINVAL. */
export function checkGeometry(g: RingGeometry): void {
  const page = 4096;
  const problems: string[] = [];
  for (const [k, v] of [["rxBlockSize", g.rxBlockSize], ["txBlockSize", g.txBlockSize]] as const) {
    if (v <= 0 || v % page) problems.push(`${k} ${v} is not a positive multiple of ${page}`);
  }
  if (g.rxBlockSize < 48 + 68 + VNET_HDR_LEN + MAX_FRAME_LEN) {
    problems.push(`rxBlockSize ${g.rxBlockSize} cannot hold a ${MAX_FRAME_LEN}-byte frame`);
  }
  if (g.txFrameSize % 16 || g.txFrameSize < TX_SLOT_MIN || g.txFrameSize > g.txBlockSize) {
    problems.push(`txFrameSize ${g.txFrameSize}: a multiple of 16, >= ${TX_SLOT_MIN}, <= block`);
  }
  if (g.rxBlockNr < 2 || g.txBlockNr < 1) problems.push("need >= 2 RX blocks and >= 1 TX block");
  if (problems.length) throw new Error(`bad AF_PACKET ring geometry: ${problems.join("; ")}`);
}

export const txFramesPerBlock = (g: RingGeometry) => Math.floor(g.txBlockSize / g.txFrameSize);

// Link state words the control plane writes and the datapath reads once per burst.
export const LINK_UP = 0;
/** The MTU transmit enforces. */
export const LINK_MTU = 1;
/** The longest frame receive accepts without a GSO header: longer ones are refused. */
export const LINK_RX_MAX = 2;
export const LINK_WORDS = 3;

/** Receive limit for an interface MTU: the wire's frame plus tags, as MAX_FRAME_LEN for 9000. */
export const rxMaxFor = (ifMtu: number) => Math.min(MAX_FRAME_LEN, ifMtu + MAX_FRAME_LEN - 9000);

/** A datapath's copy of the link words the control plane keeps current, refreshed per burst. */
export class LinkView {
  readonly #words: Int32Array;
  up = false;
  mtu = 0;
  rxMax = 0;

  constructor(link: SharedArrayBuffer) {
    this.#words = new Int32Array(link);
    this.refresh();
  }

  refresh(): void {
    this.up = Atomics.load(this.#words, LINK_UP) !== 0;
    this.mtu = Atomics.load(this.#words, LINK_MTU);
    this.rxMax = Atomics.load(this.#words, LINK_RX_MAX);
  }
}

/** Everything a Worker needs to drive the port (structured-cloneable). */
export interface AfPacketSpec {
  variant: "ring" | "syscall";
  name: string;
  interface: string;
  fd: number;
  /** MTU the port enforces on transmit: min(configured, interface), at open. */
  mtu: number;
  /**
   * PACKET_VNET_HDR on `fd` (and the TX-only ring sockets): each frame is preceded by a struct
   * virtio_net_hdr with its checksum and GSO state.
   */
  vnetHdr: boolean;
  /** The syscall variant's transmit socket, without PACKET_VNET_HDR (-1 for the ring). */
  plainTxFd: number;
  /**
   * The ring's doorbell (-1 for the syscall variant): a plain packet socket on the same
   * interface, readable as soon as a frame arrives, where the ring's socket turns readable only
   * when the kernel hands over a block. Its receive buffer is the smallest the kernel allows, so
   * once a frame or two wait in it the rest are dropped before they are cloned.
   */
  wakeFd: number;
  /** Int32 words LINK_UP, LINK_MTU, LINK_RX_MAX, kept current by the control plane. */
  link: SharedArrayBuffer;
  /** Null for the syscall variant. */
  rx: { address: bigint; blockSize: number; blockNr: number } | null;
  tx: { address: bigint; blockSize: number; blockNr: number; frameSize: number } | null;
  /**
   * TX rings of their own for workers 1..n-1 (worker 0 uses `tx`): a TX ring has one producer,
   * so, like OVS's per-PMD transmit queues, every worker transmits through its own socket.
   */
  txExtra: { fd: number; address: bigint; blockSize: number; blockNr: number; frameSize: number }[];
}

/** Whether the egress frame's outer ethertype is 802.1Q (the kernel allows it 4 more bytes). */
export function egressTagged(src: Uint8Array, f: EgressFrame): boolean {
  return ((f.byteAt(src, 12) << 8) | f.byteAt(src, 13)) === ETH_P_8021Q;
}

/**
 * What the kernel lets out (tpacket_snd/packet_snd): MTU + Ethernet header, 4 more bytes only
 * when the outer ethertype is 802.1Q; `room` caps it at what a TX slot holds.
 */
export function egressFits(src: Uint8Array, f: EgressFrame, mtu: number, room: number): boolean {
  const len = f.length;
  if (len > room) return false;
  if (len <= mtu + ETH_HLEN) return true;
  if (len > mtu + ETH_HLEN + VLAN_HLEN) return false;
  return egressTagged(src, f);
}

/** Copies an egress frame to dst[at...); returns the end offset. */
export function copyEgress(dst: Uint8Array, at: number, src: Uint8Array, f: EgressFrame): number {
  at = copyRange(dst, at, f.head, 0, f.headLength);
  return copyRange(dst, at, src, f.tailStart, f.tailEnd);
}

/**
 * Short pieces (the head, a short tail) byte by byte: a call costs more than they do.
 */
function copyRange(dst: Uint8Array, at: number, src: Uint8Array, s: number, e: number): number {
  const n = e - s;
  if (n <= 0) return at;
  if (n < 16) {
    for (let i = 0; i < n; i++) dst[at + i] = src[s + i];
  } else {
    copyMemory(dst, at, src, s, n);
  }
  return at + n;
}
