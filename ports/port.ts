// The one small interface every kind of port offers the datapath (Snabb's pull/push, in
// bursts): receive a burst, release it once forwarded, transmit frames, flush once per burst.

/** Largest frame (without virtio header) any port accepts: 9000 MTU + Ethernet + 2 VLAN tags. */
export const MAX_FRAME_LEN = 9000 + 14 + 8 + 4;
export const BURST = 32;

/**
 * A frame to send, as src[headStart, headEnd) ++ tag[0, tagLength) ++ src[tailStart, tailEnd):
 * VLAN tags are pushed, rewritten or stripped while the frame is copied out, not before.
 */
export interface EgressFrame {
  headStart: number;
  headEnd: number;
  tagLength: number;
  tag: Uint8Array;
  tailStart: number;
  tailEnd: number;
  length: number;
}

/**
 * A burst of received frames, as views: frame i is bytes[i][offset[i] .. offset[i]+length[i]).
 * Frames usually point straight into guest memory (no copy); a frame the peer scattered over
 * several buffers is gathered into the slot's scratch buffer.
 */
export class FrameBatch {
  count = 0;
  readonly bytes: Uint8Array[];
  readonly offset = new Float64Array(BURST);
  readonly length = new Int32Array(BURST);
  readonly scratch: Uint8Array[];

  constructor() {
    this.scratch = Array.from({ length: BURST }, () => new Uint8Array(MAX_FRAME_LEN));
    this.bytes = this.scratch.slice();
  }
}

export interface DatapathPort {
  /** Fills `batch` with up to BURST frames; they stay valid until release(). */
  receive(batch: FrameBatch): number;
  /** Hands the buffers of the last receive back to the peer. */
  release(): void;
  /** Copies one frame out; false if it was dropped (and counted). */
  transmit(src: Uint8Array, frame: EgressFrame): boolean;
  /** Makes what was transmitted visible to the peer and notifies it, once per burst. */
  flush(): void;
}
