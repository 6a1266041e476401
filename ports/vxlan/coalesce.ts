// Receive coalescing for a VXLAN port, what the kernel's GRO does for a NIC: the consecutive
// segments of one TCP flow in a receive burst become one super-frame, handed on marked as GSO
// (checksum partial, segments of the first one's size). A VTEP that segmented a TCP super-frame
// before encapsulating (this switch, a kernel whose underlay device does) sends ~45 datagrams
// per 64 KiB; handed on one by one, each costs its destination an skb, a pass through the
// station's TCP and often an ACK, which crosses the tunnel back. Merged, the destination takes
// one frame (af-packet and guests with TSO as it is; others get it segmented again).
//
// A segment is merged only when the result is what its sender's TCP sent, cut differently:
// same addresses, ports, IP fields and TCP header but for the sequence number (which must follow
// on), no IP options, fragments or IPv6 extension headers, flags ACK (PSH ends a super-frame),
// every segment but the last as long as the first, and a checksum that verifies (or was left
// partial by the sending kernel, which vouches for it). Its header is dropped and its payload
// appended to the first one in place: a receive slot holds a whole super-frame.
import { OFFLOAD_CSUM, OFFLOAD_TSO4, OFFLOAD_TSO6 } from "../offload/virtio_net_hdr.ts";
import { fold, onesSum, setIpv4HeaderChecksum, TCP_CHECK, writeU16 } from "../offload/checksum.ts";
import { ETH_HLEN, ETH_P_8021Q, VLAN_HLEN } from "../ethernet.ts";
import type { FrameBatch } from "../port.ts";
import { copyMemory } from "../../ffi/native_copy.ts";

const ETH_P_IP = 0x0800;
const ETH_P_IPV6 = 0x86dd;
const IPPROTO_TCP = 6;
const IPV6_HLEN = 40;
const TCP_HLEN = 20;
const TCP_ACK = 0x10;
const TCP_PSH = 0x08;
/** An IPv4 total length (or IPv6 payload length) is 16 bits. */
const IP_MAX = 0xffff;

/** Where a TCP segment's headers are, relative to its frame (parse()). */
class Segment {
  l3 = 0;
  l4 = 0;
  /** Where the payload starts. */
  end = 0;
  ipv6 = false;
  flags = 0;
  seq = 0;
}

export class TcpCoalescer {
  /** The open super-frame: its batch index, bytes, frame start and length, room to grow. */
  #open = false;
  #index = 0;
  #b: Uint8Array = new Uint8Array(0);
  #f = 0;
  #len = 0;
  #room = 0;
  readonly #head = new Segment();
  /** Payload bytes per segment (the first one's), the next sequence number, segments merged. */
  #mss = 0;
  #nextSeq = 0;
  #merged = 0;
  /** Whether the first segment's checksum was verified (done once something is to be merged). */
  #verified = false;
  readonly #seg = new Segment();
  /** Segments merged into super-frames closed since takeMerged(). */
  #total = 0;
  #viewed: Uint8Array | null = null;
  #view: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));

  /**
   * Offers the frame b[f, f + len) about to become batch entry n, with `room` bytes from f it
   * may grow to. Returns true if it was merged into the open super-frame (it takes no entry);
   * otherwise the caller adds it as entry n, and it may become the start of the next one.
   */
  offer(
    b: Uint8Array,
    f: number,
    len: number,
    room: number,
    batch: FrameBatch,
    n: number,
  ): boolean {
    const s = this.#seg;
    if (!parse(b, f, len, s)) {
      this.close(batch);
      return false;
    }
    if (this.#open && this.#follows(b, f, len, s)) {
      if (!this.#verified) {
        this.#verified = true;
        if (!checksumOk(this.#b, this.#f, this.#len, this.#head)) {
          this.close(batch);
          return this.#start(b, f, len, room, s, n);
        }
      }
      if (checksumOk(b, f, len, s)) {
        const payload = len - s.end;
        copyMemory(this.#b, this.#f + this.#len, b, f + s.end, payload);
        this.#len += payload;
        this.#nextSeq = (this.#nextSeq + payload) >>> 0;
        this.#merged++;
        // PSH, or a short segment, ends what the sender sent as one.
        if ((s.flags & TCP_PSH) !== 0) this.#b[this.#f + this.#head.l4 + 13] |= TCP_PSH;
        if ((s.flags & TCP_PSH) !== 0 || payload < this.#mss) this.close(batch);
        return true;
      }
    }
    this.close(batch);
    return this.#start(b, f, len, room, s, n);
  }

  /** Segments merged since the last call (a counter's increment). */
  takeMerged(): number {
    const m = this.#total;
    this.#total = 0;
    return m;
  }

  /** Opens a super-frame at entry n if the segment may start one; false either way. */
  #start(b: Uint8Array, f: number, len: number, room: number, s: Segment, n: number): boolean {
    const payload = len - s.end;
    if (s.flags !== TCP_ACK || payload <= 0) return false;
    this.#open = true;
    this.#index = n;
    this.#b = b;
    this.#f = f;
    this.#len = len;
    this.#room = Math.min(room, s.l3 + (s.ipv6 ? IPV6_HLEN : 0) + IP_MAX);
    const h = this.#head;
    h.l3 = s.l3;
    h.l4 = s.l4;
    h.end = s.end;
    h.ipv6 = s.ipv6;
    h.flags = s.flags;
    h.seq = s.seq;
    this.#mss = payload;
    this.#nextSeq = (s.seq + payload) >>> 0;
    this.#merged = 0;
    this.#verified = false;
    return false;
  }

  /** A DataView of b, made once per buffer (a port receives into one area). */
  #viewOf(b: Uint8Array): DataView {
    if (b !== this.#viewed) {
      this.#viewed = b;
      this.#view = new DataView(b.buffer, b.byteOffset, b.byteLength);
    }
    return this.#view;
  }

  /** Whether segment s at b[f, f + len) continues the open super-frame. */
  #follows(b: Uint8Array, f: number, len: number, s: Segment): boolean {
    const h = this.#head;
    const payload = len - s.end;
    if (
      s.l4 !== h.l4 || s.end !== h.end || s.seq !== this.#nextSeq ||
      (s.flags & ~TCP_PSH) !== TCP_ACK || payload > this.#mss || this.#len + payload > this.#room
    ) {
      return false;
    }
    // Compared through DataViews, four bytes a step where the ranges allow.
    const hb = this.#viewOf(this.#b);
    const hf = this.#f;
    const v = this.#viewOf(b);
    // Ethernet (and tag), then the IP fields every segment shares.
    if (!same(hb, hf, v, f, 0, h.l3)) return false;
    const l3 = h.l3;
    if (h.ipv6) {
      if (!same(hb, hf, v, f, l3, l3 + 4) || !same(hb, hf, v, f, l3 + 6, l3 + IPV6_HLEN)) {
        return false;
      }
    } else if (
      !same(hb, hf, v, f, l3, l3 + 2) || !same(hb, hf, v, f, l3 + 6, l3 + 10) ||
      !same(hb, hf, v, f, l3 + 12, l3 + 20)
    ) {
      return false;
    }
    // TCP: ports, acknowledgment, header length, window, urgent pointer, options.
    const l4 = h.l4;
    return same(hb, hf, v, f, l4, l4 + 4) && same(hb, hf, v, f, l4 + 8, l4 + 13) &&
      same(hb, hf, v, f, l4 + 14, l4 + 16) && same(hb, hf, v, f, l4 + 18, h.end);
  }

  /**
   * Ends the open super-frame: with segments merged, its IP length (and IPv4 header checksum)
   * rewritten, the TCP checksum left partial (the pseudo-header sum), and its batch entry
   * marked as GSO; with none, the frame stays as it came.
   */
  close(batch: FrameBatch): void {
    if (!this.#open) return;
    this.#open = false;
    if (this.#merged === 0) return;
    this.#total += this.#merged;
    const b = this.#b;
    const f = this.#f;
    const len = this.#len;
    const h = this.#head;
    const ip = f + h.l3;
    let pseudo: number;
    if (h.ipv6) {
      writeU16(b, ip + 4, len - h.l3 - IPV6_HLEN);
      pseudo = onesSum(b, ip + 8, ip + IPV6_HLEN, IPPROTO_TCP + len - h.l4);
    } else {
      writeU16(b, ip + 2, len - h.l3);
      setIpv4HeaderChecksum(b, ip);
      pseudo = onesSum(b, ip + 12, ip + 20, IPPROTO_TCP + len - h.l4);
    }
    writeU16(b, f + h.l4 + TCP_CHECK, fold(pseudo));
    const n = this.#index;
    batch.length[n] = len;
    batch.offload[n] = (h.ipv6 ? OFFLOAD_TSO6 : OFFLOAD_TSO4) | OFFLOAD_CSUM;
    batch.csumStart[n] = h.l4;
    batch.csumOffset[n] = TCP_CHECK;
    batch.gsoSize[n] = this.#mss;
  }
}

/** Reads the headers of a TCP segment with a payload and no options in IP; false otherwise. */
function parse(b: Uint8Array, f: number, len: number, s: Segment): boolean {
  let l3 = ETH_HLEN;
  let type = (b[f + 12] << 8) | b[f + 13];
  if (type === ETH_P_8021Q) {
    if (len < ETH_HLEN + VLAN_HLEN) return false;
    type = (b[f + 16] << 8) | b[f + 17];
    l3 += VLAN_HLEN;
  }
  const ip = f + l3;
  let l4: number;
  if (type === ETH_P_IP) {
    // No options, no fragment, TCP, and a length that is the frame's (no padding).
    if (
      len < l3 + 20 || b[ip] !== 0x45 || (((b[ip + 6] << 8) | b[ip + 7]) & 0x3fff) !== 0 ||
      b[ip + 9] !== IPPROTO_TCP || l3 + ((b[ip + 2] << 8) | b[ip + 3]) !== len
    ) {
      return false;
    }
    l4 = l3 + 20;
    s.ipv6 = false;
  } else if (type === ETH_P_IPV6) {
    if (
      len < l3 + IPV6_HLEN || (b[ip] >>> 4) !== 6 || b[ip + 6] !== IPPROTO_TCP ||
      l3 + IPV6_HLEN + ((b[ip + 4] << 8) | b[ip + 5]) !== len
    ) {
      return false;
    }
    l4 = l3 + IPV6_HLEN;
    s.ipv6 = true;
  } else {
    return false;
  }
  if (len < l4 + TCP_HLEN) return false;
  const end = l4 + ((b[f + l4 + 12] >>> 4) << 2);
  if (end < l4 + TCP_HLEN || end >= len) return false;
  s.l3 = l3;
  s.l4 = l4;
  s.end = end;
  s.flags = b[f + l4 + 13];
  s.seq = ((b[f + l4 + 4] << 24) | (b[f + l4 + 5] << 16) | (b[f + l4 + 6] << 8) |
    b[f + l4 + 7]) >>> 0;
  return true;
}

/**
 * Whether the segment's TCP checksum verifies, or holds exactly the pseudo-header sum: a
 * sending kernel left it partial (see inner_checksum.ts) and vouches for the bytes.
 */
function checksumOk(b: Uint8Array, f: number, len: number, s: Segment): boolean {
  const ip = f + s.l3;
  const pseudo = s.ipv6
    ? onesSum(b, ip + 8, ip + IPV6_HLEN, IPPROTO_TCP + len - s.l4)
    : onesSum(b, ip + 12, ip + 20, IPPROTO_TCP + len - s.l4);
  const at = f + s.l4 + TCP_CHECK;
  if (((b[at] << 8) | b[at + 1]) === fold(pseudo)) return true;
  return fold(onesSum(b, f + s.l4, f + len, pseudo)) === 0xffff;
}

function same(a: DataView, af: number, b: DataView, bf: number, from: number, to: number) {
  let i = from;
  for (; i + 4 <= to; i += 4) if (a.getUint32(af + i) !== b.getUint32(bf + i)) return false;
  for (; i < to; i++) if (a.getUint8(af + i) !== b.getUint8(bf + i)) return false;
  return true;
}
