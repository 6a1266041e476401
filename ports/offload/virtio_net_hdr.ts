// struct virtio_net_hdr (virtio 1.2 5.1.6; include/uapi/linux/virtio_net.h): the checksum and
// segmentation facts a frame carries through the switch. A guest writes it in front of each
// frame it sends, the kernel in front of each frame of an AF_PACKET socket with PACKET_VNET_HDR;
// the switch keeps them per frame as OFFLOAD_* bits plus csum_start/csum_offset/gso_size, and a
// destination port either hands them on (it negotiated the offload) or does the work itself.
import { type FrameBatch, MAX_GSO_FRAME } from "../port.ts";
import { ETH_HLEN } from "../ethernet.ts";

export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
/** UFO: IP fragmentation of a UDP datagram; not supported (counted drop). */
export const VIRTIO_NET_HDR_GSO_UDP = 3;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

// Field offsets; every 16-bit field is little-endian (VERSION_1, and the kernel's vio_le()).
export const HDR_FLAGS = 0;
export const HDR_GSO_TYPE = 1;
export const HDR_HDR_LEN = 2;
export const HDR_GSO_SIZE = 4;
export const HDR_CSUM_START = 6;
export const HDR_CSUM_OFFSET = 8;
/** sizeof(struct virtio_net_hdr), without num_buffers. */
export const VNET_HDR_LEN = 10;
/**
 * UDP tunnel GSO (virtio 1.4, Linux 6.17): a GSO frame inside an IPv4 UDP tunnel, whose inner
 * type is the GSO type's other bits; csum_start is then the inner L4 header's. The header is a
 * struct virtio_net_hdr_v1_hash_tunnel: the v1 header (12 bytes), the hash report (8), and the
 * offsets of the outer UDP header and the inner network header (16 bits each).
 */
export const VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4 = 0x20;
export const HDR_OUTER_TH_OFFSET = 20;
export const HDR_INNER_NH_OFFSET = 22;
export const VNET_HDR_TUNNEL_LEN = 24;

/**
 * What a frame needs from whoever sends it on (bits of FrameBatch.offload, EgressFrame.offload)
 * and, as a port's `accepts` mask, what a port can hand on as it is.
 */
/** The L4 checksum is left to fill: the field at csumStart + csumOffset holds the pseudo sum. */
export const OFFLOAD_CSUM = 1;
export const OFFLOAD_TSO4 = 2;
export const OFFLOAD_TSO6 = 4;
/** UDP segmentation (VIRTIO_NET_HDR_GSO_UDP_L4). */
export const OFFLOAD_USO = 8;
/** The TCP stream uses ECN: CWR may be set, and only the first segment keeps it. */
export const OFFLOAD_ECN = 16;
/**
 * A GSO frame whose checksum is already complete (GRO'd by a NIC: DATA_VALID, no NEEDS_CSUM):
 * no port takes it as it is, it is always segmented here.
 */
export const OFFLOAD_GSO_NO_CSUM = 32;
/** The checksum was verified (DATA_VALID): a hint only, never a requirement. */
export const OFFLOAD_DATA_VALID = 64;
export const OFFLOAD_GSO = OFFLOAD_TSO4 | OFFLOAD_TSO6 | OFFLOAD_USO;

/** Why a header was refused (the frame is dropped and counted as drop_bad_offload). */
export const BAD_GSO_TYPE = -1;
export const BAD_GSO_SIZE = -2;
export const BAD_CSUM_START = -3;
export const BAD_HDR_LEN = -4;
export const BAD_LENGTH = -5;

/**
 * Reads the header at hdr[at, at + 10) of the frame now in slot `n` of `batch` (its length
 * `len`, without the header) into the slot's offload fields. Returns the OFFLOAD_* bits (0 for a
 * plain frame), or a BAD_* code when the header lies: a csum_start/csum_offset outside the
 * frame, a gso_size of 0, a hdr_len beyond the frame, a GSO type not supported.
 */
export function readVirtioNetHdr(
  hdr: Uint8Array,
  at: number,
  len: number,
  batch: FrameBatch,
  n: number,
): number {
  const flags = hdr[at + HDR_FLAGS];
  const type = hdr[at + HDR_GSO_TYPE];
  if ((flags | type) === 0) {
    batch.offload[n] = 0;
    return 0;
  }
  let bits = (flags & VIRTIO_NET_HDR_F_DATA_VALID) !== 0 ? OFFLOAD_DATA_VALID : 0;
  if ((flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0) {
    const start = hdr[at + HDR_CSUM_START] | (hdr[at + HDR_CSUM_START + 1] << 8);
    const off = hdr[at + HDR_CSUM_OFFSET] | (hdr[at + HDR_CSUM_OFFSET + 1] << 8);
    if (start < ETH_HLEN || start + off + 2 > len) return BAD_CSUM_START;
    batch.csumStart[n] = start;
    batch.csumOffset[n] = off;
    bits |= OFFLOAD_CSUM;
  }
  const gso = type & ~VIRTIO_NET_HDR_GSO_ECN;
  if (gso !== VIRTIO_NET_HDR_GSO_NONE) {
    if (gso === VIRTIO_NET_HDR_GSO_TCPV4) bits |= OFFLOAD_TSO4;
    else if (gso === VIRTIO_NET_HDR_GSO_TCPV6) bits |= OFFLOAD_TSO6;
    else if (gso === VIRTIO_NET_HDR_GSO_UDP_L4) bits |= OFFLOAD_USO;
    else return BAD_GSO_TYPE;
    if ((type & VIRTIO_NET_HDR_GSO_ECN) !== 0) bits |= OFFLOAD_ECN;
    const size = hdr[at + HDR_GSO_SIZE] | (hdr[at + HDR_GSO_SIZE + 1] << 8);
    if (size === 0) return BAD_GSO_SIZE;
    const hdrLen = hdr[at + HDR_HDR_LEN] | (hdr[at + HDR_HDR_LEN + 1] << 8);
    if (hdrLen > len) return BAD_HDR_LEN;
    if (len > MAX_GSO_FRAME) return BAD_LENGTH;
    if ((bits & OFFLOAD_CSUM) === 0) bits |= OFFLOAD_GSO_NO_CSUM;
    batch.gsoSize[n] = size;
  } else if ((type & VIRTIO_NET_HDR_GSO_ECN) !== 0) {
    return BAD_GSO_TYPE;
  }
  batch.offload[n] = bits;
  return bits;
}

/**
 * Writes the header for a frame with OFFLOAD_* `bits` (only bits the destination accepts) at
 * dst[at, at + 10). `hdrLen` is the length of the frame's headers (for a GSO frame, through the
 * L4 header), `gsoSize` already fitted to the destination's MTU.
 */
export function writeVirtioNetHdr(
  dst: Uint8Array,
  at: number,
  bits: number,
  csumStart: number,
  csumOffset: number,
  gsoSize: number,
  hdrLen: number,
): void {
  let flags = 0;
  if ((bits & OFFLOAD_CSUM) !== 0) flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  else if ((bits & OFFLOAD_DATA_VALID) !== 0) flags = VIRTIO_NET_HDR_F_DATA_VALID;
  let type = VIRTIO_NET_HDR_GSO_NONE;
  if ((bits & OFFLOAD_TSO4) !== 0) type = VIRTIO_NET_HDR_GSO_TCPV4;
  else if ((bits & OFFLOAD_TSO6) !== 0) type = VIRTIO_NET_HDR_GSO_TCPV6;
  else if ((bits & OFFLOAD_USO) !== 0) type = VIRTIO_NET_HDR_GSO_UDP_L4;
  if (type !== VIRTIO_NET_HDR_GSO_NONE && (bits & OFFLOAD_ECN) !== 0) {
    type |= VIRTIO_NET_HDR_GSO_ECN;
  }
  const gso = type !== VIRTIO_NET_HDR_GSO_NONE;
  const cs = flags === VIRTIO_NET_HDR_F_NEEDS_CSUM;
  dst[at + HDR_FLAGS] = flags;
  dst[at + HDR_GSO_TYPE] = type;
  dst[at + HDR_HDR_LEN] = gso ? hdrLen & 0xff : 0;
  dst[at + HDR_HDR_LEN + 1] = gso ? hdrLen >>> 8 : 0;
  dst[at + HDR_GSO_SIZE] = gso ? gsoSize & 0xff : 0;
  dst[at + HDR_GSO_SIZE + 1] = gso ? gsoSize >>> 8 : 0;
  dst[at + HDR_CSUM_START] = cs ? csumStart & 0xff : 0;
  dst[at + HDR_CSUM_START + 1] = cs ? csumStart >>> 8 : 0;
  dst[at + HDR_CSUM_OFFSET] = cs ? csumOffset & 0xff : 0;
  dst[at + HDR_CSUM_OFFSET + 1] = cs ? csumOffset >>> 8 : 0;
}
