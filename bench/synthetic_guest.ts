// A synthetic guest for the datapath benchmarks: one memfd region holding one ring (split or
// packed) and its buffers, and the guest driver's side of that ring, reduced to what a polling
// driver does: post every buffer again once the device has used it. A TX guest's buffers hold a
// frame (virtio_net_hdr of zeros, then Ethernet: dst, src, IPv4 ethertype, zero payload); an RX
// guest's are empty, device-writable, and it asks for no interrupts.
import { memfdCreate, mmap } from "../ffi/mem.ts";
import type { DirtyLog } from "../ports/vhost_user/dirty_log.ts";
import { GuestMemory } from "../ports/vhost_user/memory.ts";
import {
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_FLAG_DISABLE,
} from "../ports/vhost_user/packed_queue.ts";
import { VRING_AVAIL_F_NO_INTERRUPT } from "../ports/vhost_user/split_queue.ts";
import { type VirtQueue, VRING_DESC_F_WRITE } from "../ports/vhost_user/virtqueue.ts";
import { openQueue, VIRTIO_NET_HDR_LEN } from "../ports/vhost_user/virtio_net.ts";

/** Ring entries. */
export const RING_SIZE = 256;
/** Guest-physical layout: descriptors, driver area (split: avail), device area, buffers. */
const DESC = 0;
const AVAIL = 4096;
const USED = 8192;
const BUFFERS = 65536;
const BUF = 2048;
/** Bytes of guest memory (what a dirty log must cover). */
export const GUEST_MEMORY_SIZE = BUFFERS + RING_SIZE * BUF;

export interface SyntheticGuestOptions {
  /** Device-writable buffers (the switch fills them) rather than frames for it to read. */
  rx: boolean;
  /** Ethernet frame length in a TX guest's buffers (no FCS). */
  frameLen: number;
  packed: boolean;
  /** VIRTIO_F_IN_ORDER on the ring the switch opens. */
  inOrder: boolean;
  /** A TX guest's frames: destination and source MAC. */
  dst?: number[];
  src?: number[];
}

export class SyntheticGuest {
  readonly mem: GuestMemory;
  readonly #words: Uint32Array;
  readonly #avail: Uint16Array;
  #idx = 0;

  constructor(readonly o: SyntheticGuestOptions) {
    const map = mmap(GUEST_MEMORY_SIZE, {
      fd: memfdCreate("bench-guest", GUEST_MEMORY_SIZE),
    });
    this.mem = new GuestMemory([{
      guestPhys: 0,
      size: GUEST_MEMORY_SIZE,
      userAddr: 0,
      mapAddress: map.address,
      mapLength: GUEST_MEMORY_SIZE,
      dataOffset: 0,
    }]);
    const bytes = this.mem.bytes[0];
    const desc = new DataView(bytes.buffer, DESC, 16 * RING_SIZE);
    this.#words = new Uint32Array(bytes.buffer, DESC, 4 * RING_SIZE);
    this.#avail = new Uint16Array(bytes.buffer, AVAIL, 3 + RING_SIZE);
    // A polling driver wants no interrupts (packed: the driver area's flags; split: avail flags).
    if (o.rx) {
      this.#avail[o.packed ? 1 : 0] = o.packed
        ? VRING_PACKED_EVENT_FLAG_DISABLE
        : VRING_AVAIL_F_NO_INTERRUPT;
    }
    const dst = o.dst ?? [0x52, 0x54, 0, 0, 0, 2];
    const src = o.src ?? [0x52, 0x54, 0, 0, 0, 1];
    for (let i = 0; i < RING_SIZE; i++) {
      const addr = BUFFERS + i * BUF;
      desc.setBigUint64(16 * i, BigInt(addr), true);
      desc.setUint32(16 * i + 8, this.#bufferLen(), true);
      desc.setUint16(16 * i + 12, o.rx ? VRING_DESC_F_WRITE : 0, true);
      if (!o.rx) {
        const f = addr + VIRTIO_NET_HDR_LEN;
        bytes.set(dst, f);
        bytes.set(src, f + 6);
        bytes[f + 12] = 0x08; // IPv4 ethertype, payload left as zeros
      }
    }
  }

  #bufferLen(): number {
    return this.o.rx ? BUF : VIRTIO_NET_HDR_LEN + this.o.frameLen;
  }

  /** Ring `index` as the switch opens it; with `log`, the variant that marks its writes. */
  queue(index: number, log: DirtyLog | null = null): VirtQueue {
    const packed = this.o.packed;
    return openQueue(this.mem, {
      index,
      size: RING_SIZE,
      packed,
      inOrder: this.o.inOrder,
      desc: { region: 0, offset: DESC },
      avail: { region: 0, offset: AVAIL },
      used: { region: 0, offset: USED },
      lastAvail: packed ? 0x8000 : 0,
      eventIdx: false,
      callFd: -1,
      kickFd: -1,
      shared: null,
      ringLog: log ? (packed ? [DESC, 16 * RING_SIZE, USED, 4] : [USED, 6 + 8 * RING_SIZE]) : [],
    }, log);
  }

  /** Makes the next `n` descriptors available again (they all came back in the last poll). */
  post(n: number): void {
    const mask = RING_SIZE - 1;
    if (this.o.packed) {
      // The device wrote used descriptors over these: write them whole again.
      const len = this.#bufferLen();
      const dir = this.o.rx ? VRING_DESC_F_WRITE : 0;
      for (let k = 0; k < n; k++) {
        const seq = this.#idx + k;
        const i = seq & mask;
        const wrap = ((seq / RING_SIZE) & 1) ^ 1;
        this.#words[4 * i + 2] = len;
        this.#words[4 * i + 3] = i |
          ((dir | (wrap ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED)) << 16);
      }
    } else {
      for (let k = 0; k < n; k++) {
        this.#avail[2 + ((this.#idx + k) & mask)] = (this.#idx + k) & mask;
      }
      Atomics.store(this.#avail, 1, (this.#idx + n) & 0xffff);
    }
    this.#idx = (this.#idx + n) & 0xffff;
  }
}
