// Frames the switch sends on a guest's behalf. After a live migration the front-end asks the
// back-end (VHOST_USER_SEND_RARP) to announce the guest's MAC, as QEMU does for an emulated
// NIC: a broadcast RARP from that MAC. It enters the bridge as if the guest had sent it on its
// new port, so the MAC table moves the MAC there at once and the flood tells the network
// behind the uplinks (their switches learn the new location from it too).
import { type DatapathPort, type EgressFrame, type FrameBatch } from "../ports/port.ts";
import { ETH_ALEN, ETH_HLEN } from "../ports/ethernet.ts";

export const ETH_P_RARP = 0x8035;
const ARPHRD_ETHER = 1;
const ETH_P_IP = 0x0800;
const ARPOP_RREQUEST = 3;
/** Ethernet's minimum frame without FCS: the RARP is padded to it. */
const ETH_ZLEN = 60;

/** The broadcast RARP "where am I" request QEMU's announce sends for a guest's MAC. */
export function rarpAnnouncement(mac: Uint8Array): Uint8Array {
  const f = new Uint8Array(ETH_ZLEN);
  const v = new DataView(f.buffer);
  f.fill(0xff, 0, ETH_ALEN); // broadcast destination
  f.set(mac, ETH_ALEN);
  v.setUint16(12, ETH_P_RARP);
  let o = ETH_HLEN;
  v.setUint16(o, ARPHRD_ETHER);
  v.setUint16(o + 2, ETH_P_IP);
  f[o + 4] = ETH_ALEN;
  f[o + 5] = 4;
  v.setUint16(o + 6, ARPOP_RREQUEST);
  o += 8;
  f.set(mac, o); // sender hardware address; sender protocol address stays 0.0.0.0
  f.set(mac, o + 10); // target hardware address; target protocol address 0.0.0.0
  return f;
}

/**
 * A port that receives one given frame, once: the worker forwards it through the usual burst
 * loop (captures, guards, bridge decision, copies) as if the port it stands for received it.
 */
export class OneFrame implements DatapathPort {
  #pending = true;

  constructor(readonly frame: Uint8Array) {}

  receive(batch: FrameBatch): number {
    batch.count = 0;
    if (!this.#pending) return 0;
    this.#pending = false;
    batch.scratch[0].set(this.frame);
    batch.bytes[0] = batch.scratch[0];
    batch.offset[0] = 0;
    batch.length[0] = this.frame.length;
    batch.count = 1;
    return 1;
  }

  release(): void {}

  transmit(_src: Uint8Array, _frame: EgressFrame): boolean {
    return false;
  }

  flush(): void {}
}
