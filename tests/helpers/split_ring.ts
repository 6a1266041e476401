// The driver's side of one split virtqueue (virtio 1.x 2.7) in plain process memory, for unit
// tests of the device's ring code without a front-end, a socket or a guest. Written from the
// specification's layout, not from ports/vhost_user/split_queue.ts, so that a test does not
// agree with the code it tests by sharing it.
import { mmap, munmap, viewMapping } from "../../ffi/mem.ts";
import { GuestMemory } from "../../ports/vhost_user/memory.ts";
import type { QueueSpec } from "../../ports/vhost_user/virtqueue.ts";

export const DESC_F_NEXT = 1;
export const DESC_F_WRITE = 2;
export const DESC_F_INDIRECT = 4;
/** avail.flags: the driver does not want interrupts; used.flags: the device wants no kicks. */
export const AVAIL_F_NO_INTERRUPT = 1;
export const USED_F_NO_NOTIFY = 1;

/** Guest-physical layout of the test memory (one region starting at 0). */
export const DESC_GPA = 0x0000;
export const AVAIL_GPA = 0x4000;
export const USED_GPA = 0x8000;
/** Indirect tables and buffers are placed from here on. */
export const DATA_GPA = 0x10000;

export interface Buffer {
  addr: number;
  len: number;
  /** Device-writable (an RX buffer). */
  write?: boolean;
}

export class SplitRingDriver implements Disposable {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly memory: GuestMemory;
  readonly #mapping;
  /** The next free descriptor and the driver's avail index. */
  #nextDesc = 0;
  availIdx = 0;
  #dataTop = DATA_GPA;
  /** Where the ring's indexes started (the device resumes there). */
  readonly #firstIdx: number;

  constructor(readonly size = 8, readonly memBytes = 1 << 20, firstIdx = 0) {
    this.#mapping = mmap(memBytes);
    this.bytes = new Uint8Array(viewMapping(this.#mapping.address, this.#mapping.length));
    this.view = new DataView(this.bytes.buffer);
    this.memory = new GuestMemory([{
      guestPhys: 0,
      size: memBytes,
      userAddr: 0,
      mapAddress: this.#mapping.address,
      mapLength: this.#mapping.length,
      dataOffset: 0,
    }]);
    this.availIdx = this.#firstIdx = firstIdx & 0xffff;
    this.view.setUint16(AVAIL_GPA + 2, this.availIdx, true);
    this.view.setUint16(USED_GPA + 2, this.availIdx, true);
  }

  /** What the control plane would hand the datapath for this ring. */
  spec(opts: Partial<QueueSpec> = {}): QueueSpec {
    return {
      index: 1,
      size: this.size,
      packed: false,
      inOrder: false,
      desc: { region: 0, offset: DESC_GPA },
      avail: { region: 0, offset: AVAIL_GPA },
      used: { region: 0, offset: USED_GPA },
      lastAvail: this.#firstIdx,
      eventIdx: false,
      callFd: -1,
      kickFd: -1,
      shared: null,
      ringLog: [],
      ...opts,
    } as QueueSpec;
  }

  /** Room for `len` bytes of buffer or table, 16-byte aligned; returns its guest address. */
  alloc(len: number): number {
    const at = this.#dataTop;
    this.#dataTop += (len + 15) & ~15;
    if (this.#dataTop > this.memBytes) throw new Error("test memory exhausted");
    return at;
  }

  /** Writes descriptor `i` of a table at `tableGpa` (the ring's own by default). */
  writeDesc(i: number, addr: number, len: number, flags: number, next = 0, tableGpa = DESC_GPA) {
    const at = tableGpa + 16 * i;
    this.view.setBigUint64(at, BigInt(addr), true);
    this.view.setUint32(at + 8, len, true);
    this.view.setUint16(at + 12, flags, true);
    this.view.setUint16(at + 14, next, true);
  }

  /** Puts a chain of `bufs` in the descriptor table (or, with `indirect`, in a table of its own). */
  addChain(bufs: Buffer[], opts: { indirect?: boolean } = {}): number {
    const head = this.#nextDesc % this.size;
    if (opts.indirect) {
      const table = this.alloc(16 * bufs.length);
      bufs.forEach((b, k) =>
        this.writeDesc(
          k,
          b.addr,
          b.len,
          (b.write ? DESC_F_WRITE : 0) | (k + 1 < bufs.length ? DESC_F_NEXT : 0),
          k + 1,
          table,
        )
      );
      this.writeDesc(head, table, 16 * bufs.length, DESC_F_INDIRECT);
      this.#nextDesc++;
    } else {
      bufs.forEach((b, k) => {
        const i = (this.#nextDesc + k) % this.size;
        const flags = (b.write ? DESC_F_WRITE : 0) | (k + 1 < bufs.length ? DESC_F_NEXT : 0);
        this.writeDesc(i, b.addr, b.len, flags, (i + 1) % this.size);
      });
      this.#nextDesc += bufs.length;
    }
    return head;
  }

  /** Makes `head` available (avail.ring[idx % size] = head) without publishing the index. */
  offer(head: number): void {
    this.view.setUint16(AVAIL_GPA + 4 + 2 * (this.availIdx % this.size), head, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
  }

  /** Publishes avail.idx (the device sees everything offered so far). */
  publish(idx = this.availIdx): void {
    this.view.setUint16(AVAIL_GPA + 2, idx, true);
  }

  /** A buffer holding `data` (device-readable). */
  buffer(data: Uint8Array): Buffer {
    const addr = this.alloc(data.length);
    this.bytes.set(data, addr);
    return { addr, len: data.length };
  }

  set availFlags(v: number) {
    this.view.setUint16(AVAIL_GPA, v, true);
  }
  /** used_event: the used index the driver wants an interrupt after (EVENT_IDX). */
  set usedEvent(v: number) {
    this.view.setUint16(AVAIL_GPA + 4 + 2 * this.size, v, true);
  }
  get usedFlags(): number {
    return this.view.getUint16(USED_GPA, true);
  }
  get usedIdx(): number {
    return this.view.getUint16(USED_GPA + 2, true);
  }
  /** used element `i` (taken modulo the ring size): [id, len]. */
  usedElem(i: number): [number, number] {
    const at = USED_GPA + 4 + 8 * (i % this.size);
    return [this.view.getUint32(at, true), this.view.getUint32(at + 4, true)];
  }
  /** avail_event: the avail index the device wants a kick after (EVENT_IDX). */
  get availEvent(): number {
    return this.view.getUint16(USED_GPA + 4 + 8 * this.size, true);
  }

  [Symbol.dispose](): void {
    munmap(this.#mapping);
  }
}
