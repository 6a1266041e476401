// The per-frame-syscall AF_PACKET datapath: one recv() per received frame, one send() per
// transmitted frame, on a plain socket. It exists as the baseline the ring variant is measured
// against (bench/af_packet_micro.ts); it does not restore VLAN tags the kernel stripped on RX.
import {
  DROP_LINK_DOWN,
  DROP_NO_BUFFER,
  DROP_RUNT,
  DROP_TOO_BIG,
  RX_BYTES,
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
import { type AfPacketSpec, copyEgress, egressFits, LinkView } from "./tpacket.ts";
import { ETH_HLEN } from "../ethernet.ts";

export class AfPacketSyscallDatapath implements DatapathPort {
  readonly #fd: number;
  readonly #link: LinkView;
  readonly #out = new Uint8Array(MAX_FRAME_LEN + 4);

  constructor(spec: AfPacketSpec, readonly counters: Float64Array) {
    this.#fd = spec.fd;
    this.#link = new LinkView(spec.link);
    this.#link.refresh();
  }

  receive(batch: FrameBatch): number {
    this.#link.refresh();
    const c = this.counters;
    let n = 0;
    while (n < BURST) {
      const buf = batch.scratch[n];
      const len = recvFrame(this.#fd, buf);
      if (len < 0) break; // nothing waiting (or ENETDOWN while the link is down)
      if (len > buf.length || len > this.#link.rxMax) {
        c[DROP_TOO_BIG]++;
        continue;
      }
      if (len < ETH_HLEN) {
        c[DROP_RUNT]++;
        continue;
      }
      batch.bytes[n] = buf;
      batch.offset[n] = 0;
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
    if (sendFrame(this.#fd, this.#out, f.length) < 0) {
      c[DROP_NO_BUFFER]++;
      return false;
    }
    c[TX_PACKETS]++;
    c[TX_BYTES] += f.length;
    return true;
  }

  flush(): void {}
}
