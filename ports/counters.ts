// Per-port counters, one block of float64 fields per (worker, port) inside a SharedArrayBuffer:
// each worker writes only its own blocks (no atomics needed), the main thread sums them.

export const RX_PACKETS = 0;
export const RX_BYTES = 1;
export const TX_PACKETS = 2;
export const TX_BYTES = 3;
/** The peer had no free buffer for a frame we were to transmit. */
export const DROP_NO_BUFFER = 4;
/** A descriptor chain was malformed: bad index, loop, too long, outside guest memory. */
export const DROP_BAD_DESCRIPTOR = 5;
/** A frame longer than the port's MTU allows, or than the peer's buffers hold. */
export const DROP_TOO_BIG = 6;
/** A received frame shorter than an Ethernet header. */
export const DROP_RUNT = 7;
/** Guest notifications (call eventfd writes) and kicks seen. */
export const NOTIFICATIONS = 8;
/**
 * Frames not transmitted because the port was down (af-packet: no IFF_UP/IFF_RUNNING) or, for a
 * moment, being reconfigured (new memory table, rings starting or stopping).
 */
export const DROP_LINK_DOWN = 9;
/**
 * Frames received with their L4 checksum left to offload (virtio NEEDS_CSUM, e.g. from a veth
 * peer with tx checksumming on): each destination takes it as it is or gets it filled.
 */
export const RX_CSUM_PARTIAL = 10;
/** VXLAN: a datagram for another VNI than the port's. */
export const DROP_VNI = 16;
/** VXLAN: a datagram whose I flag is clear (no valid VNI), or too short for the headers. */
export const DROP_VXLAN_HEADER = 17;
/** VXLAN with `strict`: a datagram from a VTEP not in `remotes` or `remoteMacs`. */
export const DROP_VTEP_UNKNOWN = 18;
/** VXLAN: a frame with no VTEP to go to (empty flood list, or no route to the VTEP). */
export const DROP_VTEP_UNREACHABLE = 19;
/** VXLAN: received inner frames whose L4 checksum was left partial by the sending kernel, filled. */
export const RX_CSUM_FILLED = 20;
/** Frames whose L4 checksum this port filled in software (the destination cannot take it). */
export const CSUM_FILLED = 11;
/** GSO super-frames this port cut into segments in software (destination, MTU or room). */
export const GSO_SEGMENTED = 12;
/** GSO super-frames received (a guest's TSO, the kernel's GSO/GRO). */
export const RX_GSO = 13;
/** GSO super-frames handed on as they are, for the peer to segment. */
export const TX_GSO = 14;
/**
 * Frames whose offload header lied (gso_size 0, csum_start or hdr_len past the frame, an
 * unsupported GSO type or IPv6 extension header), or whose headers cannot be segmented.
 */
export const DROP_BAD_OFFLOAD = 15;
/** Guest pages marked in the live-migration dirty log (each write of a page counts). */
export const DIRTY_PAGES = 21;
/**
 * VXLAN: messages that carried a super-frame's segments as one UDP_SEGMENT send (each one
 * datagram per segment on the wire; tx_packets counts the datagrams).
 */
export const TX_UDP_GSO = 22;
/** VXLAN: received TCP segments appended to the one before them (receive coalescing, GRO). */
export const RX_COALESCED = 23;
/**
 * VXLAN: TCP super-frames sent whole through the port's tap (tunnel GSO), one per VTEP; the
 * kernel cuts each into datagrams where a device needs it (tx_packets counts the datagrams).
 */
export const TX_TUNNEL_GSO = 24;
export const COUNTER_FIELDS = 25;

export const COUNTER_NAMES: Record<number, string> = {
  [RX_PACKETS]: "rx_packets",
  [RX_BYTES]: "rx_bytes",
  [TX_PACKETS]: "tx_packets",
  [TX_BYTES]: "tx_bytes",
  [DROP_NO_BUFFER]: "drop_no_buffer",
  [DROP_BAD_DESCRIPTOR]: "drop_bad_descriptor",
  [DROP_TOO_BIG]: "drop_too_big",
  [DROP_RUNT]: "drop_runt",
  [NOTIFICATIONS]: "notifications",
  [DROP_LINK_DOWN]: "drop_link_down",
  [RX_CSUM_PARTIAL]: "rx_csum_partial",
  [DROP_VNI]: "drop_vni",
  [DROP_VXLAN_HEADER]: "drop_vxlan_header",
  [DROP_VTEP_UNKNOWN]: "drop_vtep_unknown",
  [DROP_VTEP_UNREACHABLE]: "drop_vtep_unreachable",
  [RX_CSUM_FILLED]: "rx_csum_filled",
  [CSUM_FILLED]: "csum_filled",
  [GSO_SEGMENTED]: "gso_segmented",
  [RX_GSO]: "rx_gso",
  [TX_GSO]: "tx_gso",
  [DROP_BAD_OFFLOAD]: "drop_bad_offload",
  [DIRTY_PAGES]: "dirty_pages",
  [TX_UDP_GSO]: "tx_udp_gso",
  [RX_COALESCED]: "rx_coalesced",
  [TX_TUNNEL_GSO]: "tx_tunnel_gso",
};

export class CounterTable {
  readonly values: Float64Array;
  constructor(
    readonly buffer: SharedArrayBuffer,
    readonly workers: number,
    readonly ports: number,
  ) {
    this.values = new Float64Array(buffer);
  }

  static create(workers: number, ports: number): CounterTable {
    const sab = new SharedArrayBuffer(workers * ports * COUNTER_FIELDS * 8);
    return new CounterTable(sab, workers, ports);
  }

  /** The block one worker writes for one port. */
  block(worker: number, port: number): Float64Array {
    const start = (worker * this.ports + port) * COUNTER_FIELDS;
    return this.values.subarray(start, start + COUNTER_FIELDS);
  }

  /** A port's counters summed over all workers, by name. */
  port(port: number): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [field, name] of Object.entries(COUNTER_NAMES)) {
      let sum = 0;
      for (let w = 0; w < this.workers; w++) sum += this.block(w, port)[Number(field)];
      out[name] = sum;
    }
    return out;
  }
}
