// Packet capture taps: while someone captures a port, each worker copies the frames that pass
// that port into its own single-producer/single-consumer ring in shared memory, and the main
// thread turns them into pcap records. With no capture running the datapath only checks an
// empty list per burst.
import type { EgressFrame } from "../ports/port.ts";
import { MAX_FRAME_LEN } from "../ports/port.ts";
import { VLAN_HLEN } from "../ports/ethernet.ts";
import { COUNTER_FIELDS } from "../ports/counters.ts";
import { OffloadFallback, type PlainTransmit } from "../ports/offload/fallback.ts";
import { OFFLOAD_DATA_VALID } from "../ports/offload/virtio_net_hdr.ts";
import { copyMemory } from "../ffi/native_copy.ts";

const HEAD = 0; // written by the worker
const TAIL = 1; // written by the reader
const DROPPED = 2; // frames the ring had no room for
const HEADER_BYTES = 16;
/** Slot: float64 timestamp (ms since the epoch), uint32 length, then the frame. */
const SLOT_HEADER = 16;
const SLOT_BYTES = SLOT_HEADER + ((MAX_FRAME_LEN + 15) & ~15);
export const TAP_SLOTS = 512;

export function createTapBuffer(): SharedArrayBuffer {
  return new SharedArrayBuffer(HEADER_BYTES + TAP_SLOTS * SLOT_BYTES);
}

/** Views of one tap ring, shared by its two ends. */
class TapRing {
  protected readonly h: Int32Array;
  protected readonly bytes: Uint8Array;
  protected readonly view: DataView;

  constructor(readonly buffer: SharedArrayBuffer) {
    this.h = new Int32Array(buffer, 0, 4);
    this.bytes = new Uint8Array(buffer);
    this.view = new DataView(buffer);
  }
}

/** The worker side: appends frames, dropping (and counting) when the reader lags. */
export class TapWriter extends TapRing implements PlainTransmit {
  /** Fills checksums and cuts segments of offloaded frames for the capture (made on first use). */
  #wire: OffloadFallback | null = null;

  #slot(length: number): number {
    const head = this.h[HEAD];
    if (head - Atomics.load(this.h, TAIL) >= TAP_SLOTS) {
      Atomics.add(this.h, DROPPED, 1);
      return -1;
    }
    const at = HEADER_BYTES + (head % TAP_SLOTS) * SLOT_BYTES;
    this.view.setFloat64(at, performance.timeOrigin + performance.now(), true);
    this.view.setUint32(at + 8, length, true);
    return at + SLOT_HEADER;
  }

  #publish(): void {
    Atomics.store(this.h, HEAD, this.h[HEAD] + 1);
  }

  write(src: Uint8Array, offset: number, length: number): void {
    const at = this.#slot(length);
    if (at < 0) return;
    copyMemory(this.bytes, at, src, offset, length);
    this.#publish();
  }

  /**
   * A frame as transmitted: head ++ tail (see EgressFrame). A frame that still needs its
   * checksum or its segmentation is captured as the wire carries it: checksum filled, or as
   * the segments its gso_size makes.
   */
  writeEgress(src: Uint8Array, f: EgressFrame): void {
    if ((f.offload & ~OFFLOAD_DATA_VALID) !== 0) {
      this.#wire ??= new OffloadFallback(new Float64Array(COUNTER_FIELDS));
      this.#wire.send(src, f, this, MAX_FRAME_LEN - VLAN_HLEN);
      return;
    }
    this.transmitPlain(src, f);
  }

  transmitPlain(src: Uint8Array, f: EgressFrame): boolean {
    if (f.length > MAX_FRAME_LEN) {
      Atomics.add(this.h, DROPPED, 1);
      return false;
    }
    const at = this.#slot(f.length);
    if (at < 0) return false;
    copyMemory(this.bytes, at, f.head, 0, f.headLength);
    copyMemory(this.bytes, at + f.headLength, src, f.tailStart, f.tailEnd - f.tailStart);
    this.#publish();
    return true;
  }
}

/** The main-thread side: takes what the worker wrote, as pcap records. */
export class TapReader extends TapRing {
  get dropped(): number {
    return Atomics.load(this.h, DROPPED);
  }

  /** Calls `frame` for up to `max` frames waiting, oldest first; returns how many. */
  drain(max: number, frame: (timestampMs: number, data: Uint8Array) => void): number {
    const head = Atomics.load(this.h, HEAD);
    let tail = this.h[TAIL];
    let n = 0;
    while (tail !== head && n < max) {
      const at = HEADER_BYTES + (tail % TAP_SLOTS) * SLOT_BYTES;
      const length = this.view.getUint32(at + 8, true);
      frame(
        this.view.getFloat64(at, true),
        this.bytes.slice(at + SLOT_HEADER, at + SLOT_HEADER + length),
      );
      tail++;
      n++;
    }
    Atomics.store(this.h, TAIL, tail);
    return n;
  }
}

/** A pcap global header (LINKTYPE_ETHERNET, microsecond timestamps). */
export function pcapHeader(snaplen = MAX_FRAME_LEN): Uint8Array {
  const b = new Uint8Array(24);
  const v = new DataView(b.buffer);
  v.setUint32(0, 0xa1b2c3d4, true);
  v.setUint16(4, 2, true);
  v.setUint16(6, 4, true);
  v.setUint32(16, snaplen, true);
  v.setUint32(20, 1, true);
  return b;
}

export function concatBytes(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** One pcap record: 16-byte record header, then the frame. */
export function pcapRecord(timestampMs: number, data: Uint8Array): Uint8Array {
  const b = new Uint8Array(16 + data.length);
  const v = new DataView(b.buffer);
  const sec = Math.floor(timestampMs / 1000);
  v.setUint32(0, sec, true);
  v.setUint32(4, Math.floor((timestampMs - sec * 1000) * 1000), true);
  v.setUint32(8, data.length, true);
  v.setUint32(12, data.length, true);
  b.set(data, 16);
  return b;
}
