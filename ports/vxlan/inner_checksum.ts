// Inner checksums a sending kernel left to offload. A Linux VTEP encapsulating a TCP or UDP
// segment whose checksum is CHECKSUM_PARTIAL (its own stack, or a veth/guest that offloads)
// leaves the inner checksum field holding only the pseudo-header sum when the underlay device
// offloads tunnel checksums (veth does): the receiving kernel keeps that state in the skb, but
// a UDP socket hands us the bytes alone. Such a field is recognisable: it equals the folded
// pseudo-header sum. Completing it is always safe: for a field that already was the full
// checksum and happened to equal that value, the completed checksum is the same number.

import { ETH_HLEN, ETH_P_8021Q } from "../ethernet.ts";
import { fold, onesSum } from "../offload/checksum.ts";

const ETH_P_IP = 0x0800;
const ETH_P_IPV6 = 0x86dd;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;
const TCP_CHECK = 16;
const UDP_CHECK = 6;
const IPV6_HLEN = 40;

/**
 * Completes the TCP/UDP checksum of the frame at b[off, off + len) when it was left partial;
 * returns whether it did. Bounds come from the IP header and are checked against `len`.
 */
export function completePartialChecksum(b: Uint8Array, off: number, len: number): boolean {
  const end = off + len;
  let ip = off + ETH_HLEN;
  let type = (b[off + 12] << 8) | b[off + 13];
  if (type === ETH_P_8021Q) {
    if (len < ETH_HLEN + 4) return false;
    type = (b[off + 16] << 8) | b[off + 17];
    ip += 4;
  }
  let l4: number, l4End: number, proto: number, pseudo: number;
  if (type === ETH_P_IP) {
    if (ip + 20 > end) return false;
    const ihl = (b[ip] & 0x0f) << 2;
    // A fragment carries part of a segment: its checksum cannot be completed alone.
    if (ihl < 20 || (((b[ip + 6] << 8) | b[ip + 7]) & 0x3fff) !== 0) return false;
    proto = b[ip + 9];
    l4 = ip + ihl;
    l4End = ip + ((b[ip + 2] << 8) | b[ip + 3]);
    if (l4End > end || l4End < l4) return false;
    pseudo = onesSum(b, ip + 12, ip + 20, proto + (l4End - l4));
  } else if (type === ETH_P_IPV6) {
    if (ip + IPV6_HLEN > end) return false;
    proto = b[ip + 6]; // extension headers are not walked: such segments are left alone
    l4 = ip + IPV6_HLEN;
    l4End = l4 + ((b[ip + 4] << 8) | b[ip + 5]);
    if (l4End > end) return false;
    pseudo = onesSum(b, ip + 8, ip + 40, proto + (l4End - l4));
  } else {
    return false;
  }
  const field = proto === IPPROTO_TCP
    ? l4 + TCP_CHECK
    : proto === IPPROTO_UDP
    ? l4 + UDP_CHECK
    : -1;
  if (field < 0 || field + 2 > l4End) return false;
  const value = (b[field] << 8) | b[field + 1];
  if (value !== fold(pseudo)) return false;
  // The field holds the pseudo-header sum: summing the segment with it in place is the full sum.
  let c = ~fold(onesSum(b, l4, l4End, 0)) & 0xffff;
  if (c === 0 && proto === IPPROTO_UDP) c = 0xffff; // RFC 768: 0 would mean "no checksum"
  b[field] = c >>> 8;
  b[field + 1] = c & 0xff;
  return true;
}
