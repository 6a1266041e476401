// Port mirroring (SPAN): copies of the frames a port receives and/or transmits, optionally only
// those of one VLAN, sent unchanged to a mirror output port. Mirroring wraps the mirrored port's
// datapath once, when the mirror is configured, so ports without a mirror run exactly the code
// they ran before. The output port is taken out of the bridge (no VLAN membership: nothing is
// learned from it, flooded or forwarded to it), so a copy never loops back into the switch.
import { type DatapathPort, EgressFrame, type FrameBatch } from "../ports/port.ts";
import { ETH_P_8021Q, VLAN_VID_MASK } from "../ports/ethernet.ts";
import { MIRRORED } from "./safety_counters.ts";

/** One mirror as a worker runs it (structured-cloneable). */
export interface MirrorSpec {
  name: string;
  /** Mirrored ports, by index. */
  ports: number[];
  ingress: boolean;
  egress: boolean;
  /** Only frames of this VLAN, or -1 for all. */
  vlan: number;
  /** The output port's index. */
  output: number;
  /** Per mirrored port (same order as `ports`): the VLAN its untagged frames belong to. */
  untaggedVlan: number[];
}

/** The decided VLAN of the frame being forwarded (the forwarder's Decision). */
export interface VlanSource {
  readonly vlan: number;
}

/** Where copies go: the output port's current datapath on this worker (null while down). */
export type Outputs = readonly (DatapathPort | null)[];

/** Wraps a mirrored port: copies what it receives (before any decision) to the outputs. */
export class MirrorIngress implements DatapathPort {
  readonly #frame = new EgressFrame();
  #sent = false;

  constructor(
    readonly inner: DatapathPort,
    /** Output port index per mirror, its VLAN filter, and this port's untagged VLAN. */
    readonly outputs: number[],
    readonly vlans: number[],
    readonly untaggedVlan: number,
    readonly targets: Outputs,
    readonly counters: Float64Array,
  ) {}

  receive(batch: FrameBatch): number {
    const n = this.inner.receive(batch);
    for (let i = 0; i < n; i++) {
      const bytes = batch.bytes[i];
      const off = batch.offset[i];
      const len = batch.length[i];
      // The VLAN filter reads the private head, which is what goes out: a guest rewriting its
      // tag meanwhile cannot get a frame of another VLAN mirrored.
      const frame = this.#frame.setWhole(bytes, off, len);
      const vlan = frameVlan(frame.head, 0, len, this.untaggedVlan);
      for (let m = 0; m < this.outputs.length; m++) {
        const want = this.vlans[m];
        if (want >= 0 && want !== vlan) continue;
        const out = this.targets[this.outputs[m]];
        if (out === null) continue;
        if (out.transmit(bytes, frame)) this.counters[MIRRORED]++;
        this.#sent = true;
      }
    }
    return n;
  }

  release(): void {
    // The outputs first: they may send from the received bytes until they flush.
    if (this.#sent) {
      this.#sent = false;
      for (let m = 0; m < this.outputs.length; m++) this.targets[this.outputs[m]]?.flush();
    }
    this.inner.release();
  }

  transmit(src: Uint8Array, frame: EgressFrame): boolean {
    return this.inner.transmit(src, frame);
  }

  flush(): void {
    this.inner.flush();
  }
}

/** Wraps a mirrored port: copies what it transmits, exactly as transmitted, to the outputs. */
export class MirrorEgress implements DatapathPort {
  #sent = false;

  constructor(
    readonly inner: DatapathPort,
    readonly outputs: number[],
    readonly vlans: number[],
    readonly decided: VlanSource,
    readonly targets: Outputs,
    readonly counters: Float64Array,
  ) {}

  receive(batch: FrameBatch): number {
    return this.inner.receive(batch);
  }

  release(): void {
    this.inner.release();
  }

  transmit(src: Uint8Array, frame: EgressFrame): boolean {
    if (!this.inner.transmit(src, frame)) return false;
    const vlan = this.decided.vlan;
    for (let m = 0; m < this.outputs.length; m++) {
      const want = this.vlans[m];
      if (want >= 0 && want !== vlan) continue;
      const out = this.targets[this.outputs[m]];
      if (out === null) continue;
      if (out.transmit(src, frame)) this.counters[MIRRORED]++;
      this.#sent = true;
    }
    return true;
  }

  flush(): void {
    this.inner.flush();
    if (!this.#sent) return;
    this.#sent = false;
    for (let m = 0; m < this.outputs.length; m++) this.targets[this.outputs[m]]?.flush();
  }
}

/** The VLAN of a received frame: its 802.1Q VID, or `untagged` (also for priority tags). */
export function frameVlan(b: Uint8Array, off: number, len: number, untagged: number): number {
  if (len < 18 || ((b[off + 12] << 8) | b[off + 13]) !== ETH_P_8021Q) return untagged;
  const vid = ((b[off + 14] << 8) | b[off + 15]) & VLAN_VID_MASK;
  return vid === 0 ? untagged : vid;
}
