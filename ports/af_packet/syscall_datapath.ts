// The per-frame-syscall AF_PACKET datapath: one recv() per received frame, one send() per
// transmitted frame, on a plain socket. It exists as the baseline the ring variant is measured
// against (bench/af_packet_micro.ts); it does not restore VLAN tags the kernel stripped on RX.
// It receives with PACKET_VNET_HDR (checksum and GSO state come in) and transmits through a
// socket without it: what it sends is complete, checksums filled and GSO frames segmented here.
import {
  DROP_BAD_OFFLOAD,
  DROP_LINK_DOWN,
  DROP_NO_BUFFER,
  DROP_RUNT,
  DROP_TOO_BIG,
  RX_BYTES,
  RX_CSUM_PARTIAL,
  RX_GSO,
  RX_PACKETS,
  TX_BYTES,
  TX_PACKETS,
} from "../counters.ts";
import {
  BURST,
  type DatapathPort,
  type EgressFrame,
  type FrameBatch,
  MAX_FRAME_LEN,
} from "../port.ts";
import { recvFrame, sendFrame } from "../../ffi/packet.ts";
import { OffloadFallback } from "../offload/fallback.ts";
import {
  OFFLOAD_CSUM,
  OFFLOAD_DATA_VALID,
  OFFLOAD_GSO,
  OFFLOAD_GSO_NO_CSUM,
  readVirtioNetHdr,
  VNET_HDR_LEN,
} from "../offload/virtio_net_hdr.ts";
import { type AfPacketSpec, copyEgress, egressFits, LinkView } from "./tpacket.ts";
import { ETH_HLEN } from "../ethernet.ts";

const OFFLOAD_GSO_ANY = OFFLOAD_GSO | OFFLOAD_GSO_NO_CSUM;

export class AfPacketSyscallDatapath implements DatapathPort {
  readonly #fd: number;
  readonly #txFd: number;
  readonly #link: LinkView;
  readonly #out = new Uint8Array(MAX_FRAME_LEN + 4);
  readonly #fallback: OffloadFallback;

  constructor(spec: AfPacketSpec, readonly counters: Float64Array) {
    this.#fd = spec.fd;
    this.#txFd = spec.plainTxFd;
    this.#link = new LinkView(spec.link);
    this.#link.refresh();
    this.#fallback = new OffloadFallback(counters);
  }

  receive(batch: FrameBatch): number {
    this.#link.refresh();
    const c = this.counters;
    let n = 0;
    while (n < BURST) {
      // [virtio_net_hdr][frame]: the frame starts after the header.
      const buf = batch.scratch[n];
      const got = recvFrame(this.#fd, buf);
      if (got < 0) break; // nothing waiting (or ENETDOWN while the link is down)
      const len = got - VNET_HDR_LEN;
      if (got > buf.length) {
        c[DROP_TOO_BIG]++;
        continue;
      }
      if (len < ETH_HLEN) {
        c[DROP_RUNT]++;
        continue;
      }
      const bits = readVirtioNetHdr(buf, 0, len, batch, n);
      if (bits < 0) {
        c[DROP_BAD_OFFLOAD]++;
        continue;
      }
      if ((bits & OFFLOAD_GSO_ANY) === 0 && len > this.#link.rxMax) {
        c[DROP_TOO_BIG]++;
        continue;
      }
      if ((bits & OFFLOAD_CSUM) !== 0) c[RX_CSUM_PARTIAL]++;
      if ((bits & OFFLOAD_GSO_ANY) !== 0) c[RX_GSO]++;
      batch.bytes[n] = buf;
      batch.offset[n] = VNET_HDR_LEN;
      batch.length[n] = len;
      c[RX_BYTES] += len;
      n++;
    }
    c[RX_PACKETS] += n;
    batch.count = n;
    return n;
  }

  release(): void {}

  transmit(src: Uint8Array, f: EgressFrame): boolean {
    if ((f.offload & ~OFFLOAD_DATA_VALID) === 0) return this.transmitPlain(src, f);
    return this.#fallback.send(src, f, this, this.#link.mtu + ETH_HLEN);
  }

  transmitPlain(src: Uint8Array, f: EgressFrame): boolean {
    const c = this.counters;
    if (!this.#link.up) {
      c[DROP_LINK_DOWN]++;
      return false;
    }
    if (!egressFits(src, f, this.#link.mtu, this.#out.length)) {
      c[DROP_TOO_BIG]++;
      return false;
    }
    if (f.length < ETH_HLEN) {
      c[DROP_RUNT]++;
      return false;
    }
    copyEgress(this.#out, 0, src, f);
    if (sendFrame(this.#txFd, this.#out, f.length) < 0) {
      c[DROP_NO_BUFFER]++;
      return false;
    }
    c[TX_PACKETS]++;
    c[TX_BYTES] += f.length;
    return true;
  }

  flush(): void {}
}
