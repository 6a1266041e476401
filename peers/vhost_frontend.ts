// A minimal but real vhost-user front-end (the driver side QEMU or DPDK virtio-user plays), built
// on the project's ffi/ wrappers: it negotiates like DPDK, shares a memfd as guest memory (guest
// physical 0 at offset 0, userspace address gpa + UVA_OFFSET, optionally cut into several
// regions like QEMU's RAM blocks) and drives a virtio-net device on rings 0 (RX) and 1 (TX), and on
// rings 2N and 2N+1 of further queue pairs when asked (queuePairs, setupPair).
// Raw accessors let hostile tests write anything anywhere.
import { LIBRARY_NAME } from "../ffi/native_copy.ts";
import { SUM_LIBRARY_NAME } from "../ffi/native_sum.ts";
import { libc } from "../ffi/libc.ts";
import { SysError } from "../ffi/errno.ts";
import { closeFd, eventfdCreate, eventfdRead, eventfdWrite } from "../ffi/fd.ts";
import {
  type Mapping,
  memfdCreate,
  MFD_ALLOW_SEALING,
  mmap,
  munmap,
  viewMapping,
} from "../ffi/mem.ts";
import { recvWithFds, sendWithFds, unixAccept, unixConnect, unixListen } from "../ffi/unix.ts";
import * as P from "./vhost_wire.ts";

export const UVA_OFFSET = 0x7f00_0000_0000;
export const F_CSUM = 0;
export const F_GUEST_CSUM = 1;
export const F_GUEST_TSO4 = 7;
export const F_GUEST_TSO6 = 8;
export const F_HOST_TSO4 = 11;
export const F_MRG_RXBUF = 15;
export const F_INDIRECT_DESC = 28;
export const F_EVENT_IDX = 29;
export const F_VERSION_1 = 32;
export const DESC_F_NEXT = 1;
export const DESC_F_WRITE = 2;
export const DESC_F_INDIRECT = 4;
export const HDR_LEN = 12;
/** Guest memory owned by each descriptor index (TX chains carve all their segments from it). */
export const SLOT = 16384;
/** Entries of the indirect table each descriptor index owns. */
export const INDIRECT_MAX = 128;

const bit = (n: number) => 1n << BigInt(n);
export const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `probe` (letting the event loop run) until it returns a truthy value; throws on timeout. */
export { waitFor } from "./wait.ts";
import { waitFor } from "./wait.ts";

export interface FrontendOptions {
  mrgRxbuf?: boolean;
  eventIdx?: boolean;
  /** More feature bits to negotiate (e.g. F_GUEST_CSUM, F_GUEST_TSO4), as bit numbers. */
  features?: number[];
  indirect?: boolean;
  /** Negotiate REPLY_ACK and set need_reply on every request without a reply (default true). */
  replyAck?: boolean;
  /** Ring size (default 256). */
  queueSize?: number;
  /** Guest memory as this many equal regions of the one memfd, with gaps between their
   * userspace addresses (default 1). */
  regions?: number;
  /** Guest memory of at least this many bytes (a sparse memfd: untouched pages cost nothing). */
  memBytes?: number;
  /** Guest physical address of the first data slot (RX and TX buffers), e.g. above 4 GiB. */
  dataBase?: number;
  /** Queue pairs laid out in guest memory (default 1): rings 2N (RX) and 2N+1 (TX) of pair N.
   * `setup` starts pair 0 only; `setupPair` brings another one up later. */
  queuePairs?: number;
  /** Make the memfd sealable (MFD_ALLOW_SEALING, as QEMU does; DPDK's is not). */
  sealable?: boolean;
  /** Guest memory in a file created at this path (e.g. on hugetlbfs) instead of a memfd. */
  memPath?: string;
}

export interface SendOptions {
  /** virtio_net_hdr in its own descriptor. */
  headerSeparate?: boolean;
  /** Split (header ++) frame into descriptors of at most this many bytes. */
  chunk?: number;
  /** Put the chain in an indirect table referenced by one ring descriptor. */
  indirect?: boolean;
  /** Guest physical address of the (header ++ frame) bytes, instead of the descriptor's slot. */
  at?: number;
  /** Queue pair whose TX ring carries the frame (default 0). */
  pair?: number;
  /** The virtio_net_hdr's first bytes (flags, gso_type, hdr_len, ...); default all zero. */
  hdr?: Uint8Array;
}

export interface Desc {
  addr: number | bigint;
  len: number;
  flags: number;
  next?: number;
}

export interface Region {
  gpa: bigint;
  size: bigint;
  uva: bigint;
  offset: bigint;
}

/** SET_MEM_TABLE payload for `regions` (count field = regions.length unless given). */
export function memTablePayload(regions: Region[], count = regions.length): Uint8Array {
  const b = new Uint8Array(8 + 32 * regions.length);
  const v = new DataView(b.buffer);
  v.setUint32(0, count, true);
  regions.forEach((r, i) => {
    for (const [k, x] of [r.gpa, r.size, r.uva, r.offset].entries()) {
      v.setBigUint64(8 + 32 * i + 8 * k, BigInt.asUintN(64, x), true);
    }
  });
  return b;
}

export function vringAddrPayload(index: number, desc: bigint, used: bigint, avail: bigint) {
  const b = new Uint8Array(40);
  const v = new DataView(b.buffer);
  v.setUint32(0, index, true);
  [desc, used, avail, 0n].forEach((x, i) => v.setBigUint64(8 + 8 * i, BigInt.asUintN(64, x), true));
  return b;
}

/** sendmsg with any number of fds (ffi/unix.ts stops at 16); returns bytes sent or -1. */
export function sendWithManyFds(fd: number, data: Uint8Array, fds: number[]): number {
  const iov = new BigUint64Array(2);
  const buf = new Uint8Array(data);
  iov[0] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));
  iov[1] = BigInt(buf.length);
  const clen = 16 + ((fds.length * 4 + 7) & ~7);
  const cmsg = new DataView(new ArrayBuffer(clen));
  cmsg.setBigUint64(0, BigInt(16 + 4 * fds.length), true);
  cmsg.setInt32(8, 1, true); // SOL_SOCKET
  cmsg.setInt32(12, 1, true); // SCM_RIGHTS
  fds.forEach((f, i) => cmsg.setInt32(16 + 4 * i, f, true));
  const msg = new BigUint64Array(7);
  msg[2] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(iov)));
  msg[3] = 1n;
  msg[4] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(cmsg.buffer)));
  msg[5] = BigInt(clen);
  return Number(libc.sendmsg(fd, new Uint8Array(msg.buffer), 0x4000 /* MSG_NOSIGNAL */));
}

interface Ring {
  size: number;
  desc: number;
  avail: number;
  used: number;
  kickFd: number;
  callFd: number;
  free: number[];
  chains: Map<number, number[]>;
  availIdx: number;
  lastUsed: number;
}

/** Creates (or reuses) the file at `path`, `size` bytes long, for guest memory; returns its fd. */
function openMemFile(path: string, size: number): number {
  Deno.openSync(path, { create: true, write: true }).close();
  const O_RDWR_CLOEXEC = 0o2 | 0o2000000;
  const fd = libc.open(new TextEncoder().encode(`${path}\0`), O_RDWR_CLOEXEC);
  if (fd < 0) throw new Error(`cannot open ${path}`);
  if (libc.ftruncate(fd, BigInt(size)) < 0) {
    closeFd(fd);
    throw new Error(`cannot size ${path} to ${size} bytes`);
  }
  return fd;
}

export class VhostFrontend {
  readonly opts: Required<FrontendOptions>;
  readonly memSize: number;
  readonly memfd: number;
  readonly mem: Uint8Array;
  readonly dv: DataView;
  readonly rings: Ring[] = [];
  backendFeatures = 0n;
  features = 0n;
  protocolFeatures = 0n;
  queuePairs = 1;
  peerClosed = false;
  /** num_buffers of each frame receive() returned, in order. */
  readonly rxNumBuffers: number[] = [];
  /** The virtio_net_hdr (12 bytes) of each frame receive() returned, in order. */
  readonly rxHeaders: Uint8Array[] = [];
  readonly #u16: Uint16Array;
  readonly #mapping: Mapping;
  readonly #reader = new P.MessageReader();
  readonly #buf = new Uint8Array(new ArrayBuffer(8192));
  readonly #indirectBase: number;
  readonly #dataBase: number;
  #closed = false;

  constructor(readonly fd: number, opts: FrontendOptions = {}) {
    this.opts = {
      mrgRxbuf: true,
      eventIdx: false,
      features: [],
      indirect: true,
      replyAck: true,
      queueSize: 256,
      regions: 1,
      memBytes: 0,
      dataBase: 0,
      sealable: false,
      memPath: "",
      queuePairs: 1,
      ...opts,
    };
    const n = this.opts.queueSize;
    const page = (x: number) => Math.ceil(x / 4096) * 4096;
    let at = 0;
    const ringCount = 2 * this.opts.queuePairs;
    for (let q = 0; q < ringCount; q++) {
      const desc = at, avail = desc + 16 * n, used = page(avail + 6 + 2 * n);
      at = page(used + 6 + 8 * n);
      this.rings.push({
        size: n,
        desc,
        avail,
        used,
        kickFd: -1,
        callFd: -1,
        free: Array.from({ length: n }, (_, i) => i),
        chains: new Map(),
        availIdx: 0,
        lastUsed: 0,
      });
    }
    this.#indirectBase = at;
    this.#dataBase = Math.ceil(
      Math.max(at + ringCount * n * 16 * INDIRECT_MAX, this.opts.dataBase) / SLOT,
    ) * SLOT;
    // A file may be on hugetlbfs, whose files grow in 2 MiB pages.
    const unit = 2 ** (this.opts.memPath ? 21 : 20) * this.opts.regions;
    this.memSize =
      Math.ceil(Math.max(this.#dataBase + ringCount * n * SLOT, this.opts.memBytes) / unit) *
      unit;
    this.memfd = this.opts.memPath
      ? openMemFile(this.opts.memPath, this.memSize)
      : memfdCreate("vhost-frontend", this.memSize, this.opts.sealable ? MFD_ALLOW_SEALING : 0);
    try {
      this.#mapping = mmap(this.memSize, { fd: this.memfd });
    } catch (err) {
      closeFd(this.memfd);
      throw err;
    }
    for (const r of this.rings) [r.kickFd, r.callFd] = [eventfdCreate(), eventfdCreate()];
    const ab = viewMapping(this.#mapping.address, this.memSize);
    this.mem = new Uint8Array(ab);
    this.dv = new DataView(ab);
    this.#u16 = new Uint16Array(ab);
  }

  /** A front-end on an already connected socket (closed here if setting up fails). */
  static adopt(fd: number, opts: FrontendOptions = {}): VhostFrontend {
    try {
      return new VhostFrontend(fd, opts);
    } catch (err) {
      closeFd(fd);
      throw err;
    }
  }

  /** Connects to a back-end listening on `path` (nothing is sent yet). */
  static connect(path: string, opts: FrontendOptions = {}): VhostFrontend {
    return VhostFrontend.adopt(unixConnect(path), opts);
  }

  /** Connects and negotiates everything: the device runs when this resolves. */
  static async open(path: string, opts: FrontendOptions = {}): Promise<VhostFrontend> {
    const fe = VhostFrontend.connect(path, opts);
    try {
      await fe.setup();
    } catch (err) {
      fe.close();
      throw err;
    }
    return fe;
  }

  // ---- control channel ----

  get replyAck(): boolean {
    return (this.protocolFeatures & bit(P.VHOST_USER_PROTOCOL_F_REPLY_ACK)) !== 0n;
  }

  /** Sends raw bytes (fds with the first sendmsg); false if the peer is gone. */
  async sendRaw(bytes: Uint8Array, fds: number[] = [], timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    let off = 0;
    while (off < bytes.length) {
      let n: number;
      try {
        const chunk = new Uint8Array(bytes.subarray(off));
        n = fds.length > 16
          ? sendWithManyFds(this.fd, chunk, fds)
          : sendWithFds(this.fd, chunk, fds);
      } catch (err) {
        if (err instanceof SysError && ["EPIPE", "ECONNRESET"].includes(err.code)) {
          this.peerClosed = true;
          return false;
        }
        throw err;
      }
      if (n > 0) {
        off += n;
        fds = [];
        continue;
      }
      this.#pump();
      if (this.peerClosed) return false;
      if (Date.now() > deadline) throw new Error("control socket stayed full");
      await delay(1);
    }
    return true;
  }

  /** Sends one message; `flags` defaults to version 1. */
  sendMessage(
    request: number,
    payload?: Uint8Array,
    fds: number[] = [],
    flags = P.VHOST_USER_VERSION,
  ): Promise<boolean> {
    return this.sendRaw(P.encodeMessage(request, flags, payload), fds);
  }

  /** Reads whatever the back-end sent; notices a hang-up. */
  #pump(): void {
    while (!this.peerClosed && !this.#closed) {
      const fds: number[] = [];
      let n: number;
      try {
        n = recvWithFds(this.fd, this.#buf, fds);
      } catch (err) {
        if (!(err instanceof SysError)) throw err;
        n = 0;
      }
      fds.forEach(closeFd);
      if (n < 0) return;
      if (n === 0) this.peerClosed = true;
      else this.#reader.push(this.#buf.subarray(0, n));
    }
  }

  /** Discards whatever the back-end sent; true once it hung up. */
  drain(): boolean {
    this.#pump();
    this.#reader.ready.length = 0;
    return this.peerClosed;
  }

  /** Waits for the next message from the back-end; throws on hang-up or timeout. */
  async reply(what: string, timeoutMs = 5000): Promise<P.Message> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.#pump();
      const msg = this.#reader.ready.shift();
      if (msg) return msg;
      if (this.peerClosed) throw new Error(`switch hung up while we waited for ${what}`);
      if (Date.now() > deadline) throw new Error(`no reply to ${what} within ${timeoutMs} ms`);
      await delay(1);
    }
  }

  /** True once the back-end closed the connection, false if it still has not after timeoutMs. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.#pump();
      this.#reader.ready.length = 0;
      if (this.peerClosed) return true;
      if (Date.now() > deadline) return false;
      await delay(1);
    }
  }

  /** Sends a request that has a reply (GET_*) and returns the reply's payload. */
  async get(request: number, payload?: Uint8Array): Promise<DataView> {
    await this.sendMessage(request, payload);
    const msg = await this.reply(P.requestName(request));
    if (msg.request !== request || !(msg.flags & P.VHOST_USER_REPLY_MASK)) {
      throw new Error(`expected a reply to ${P.requestName(request)}, got ${msg.request}`);
    }
    return msg.payload;
  }

  async getU64(request: number, payload?: Uint8Array): Promise<bigint> {
    return (await this.get(request, payload)).getBigUint64(0, true);
  }

  /** Sends with need_reply and returns the REPLY_ACK value (0 = success). */
  async ack(
    request: number,
    payload?: Uint8Array,
    fds: number[] = [],
    timeoutMs = 5000,
  ): Promise<bigint> {
    const flags = P.VHOST_USER_VERSION | P.VHOST_USER_NEED_REPLY_MASK;
    await this.sendMessage(request, payload, fds, flags);
    const msg = await this.reply(`the ack of ${P.requestName(request)}`, timeoutMs);
    if (msg.request !== request || msg.payload.byteLength !== 8) {
      throw new Error(`bad ack for ${P.requestName(request)}: request ${msg.request}`);
    }
    return msg.payload.getBigUint64(0, true);
  }

  /** A request without a reply: acked (and checked) with REPLY_ACK, fire-and-forget without. */
  async set(request: number, payload?: Uint8Array, fds: number[] = []): Promise<void> {
    if (!this.replyAck) {
      await this.sendMessage(request, payload, fds);
      return;
    }
    const r = await this.ack(request, payload, fds);
    if (r !== 0n) throw new Error(`switch refused ${P.requestName(request)} (ack ${r})`);
  }

  /**
   * A GET_FEATURES round trip that skips any other reply in between: true once every earlier
   * request was handled, false if the back-end hung up instead.
   */
  async sync(timeoutMs = 5000): Promise<boolean> {
    if (!(await this.sendMessage(P.VHOST_USER_GET_FEATURES))) return false;
    for (;;) {
      let msg: P.Message;
      try {
        msg = await this.reply("GET_FEATURES", timeoutMs);
      } catch (err) {
        if (this.peerClosed) return false;
        throw err;
      }
      if (msg.request === P.VHOST_USER_GET_FEATURES) return true;
    }
  }

  /** Every earlier request has been handled once this resolves. */
  async barrier(): Promise<void> {
    await this.getU64(P.VHOST_USER_GET_FEATURES);
  }

  // ---- negotiation (DPDK virtio-user's order) ----

  async negotiate(): Promise<void> {
    await this.sendMessage(P.VHOST_USER_SET_OWNER);
    this.backendFeatures = await this.getU64(P.VHOST_USER_GET_FEATURES);
    let f = bit(F_VERSION_1);
    if (this.backendFeatures & bit(P.VHOST_USER_F_PROTOCOL_FEATURES)) {
      f |= bit(P.VHOST_USER_F_PROTOCOL_FEATURES);
      const offered = await this.getU64(P.VHOST_USER_GET_PROTOCOL_FEATURES);
      let want = bit(P.VHOST_USER_PROTOCOL_F_MQ);
      if (this.opts.replyAck) want |= bit(P.VHOST_USER_PROTOCOL_F_REPLY_ACK);
      await this.sendMessage(P.VHOST_USER_SET_PROTOCOL_FEATURES, P.u64Payload(offered & want));
      this.protocolFeatures = offered & want;
      if (this.protocolFeatures & bit(P.VHOST_USER_PROTOCOL_F_MQ)) {
        this.queuePairs = Number(await this.getU64(P.VHOST_USER_GET_QUEUE_NUM));
      }
    }
    if (this.opts.mrgRxbuf) f |= bit(F_MRG_RXBUF);
    if (this.opts.eventIdx) f |= bit(F_EVENT_IDX);
    if (this.opts.indirect) f |= bit(F_INDIRECT_DESC);
    for (const n of this.opts.features) f |= bit(n);
    if ((f & this.backendFeatures) !== f) {
      throw new Error(`back-end lacks features 0x${(f & ~this.backendFeatures).toString(16)}`);
    }
    await this.set(P.VHOST_USER_SET_FEATURES, P.u64Payload(f));
    this.features = f;
  }

  /** Guest memory: `opts.regions` equal pieces, 256 MiB apart in userspace addresses. */
  regionTable(): Region[] {
    const k = this.opts.regions, size = this.memSize / k;
    return Array.from({ length: k }, (_, i) => ({
      gpa: BigInt(i * size),
      size: BigInt(size),
      uva: BigInt(UVA_OFFSET + i * size + i * 2 ** 28),
      offset: BigInt(i * size),
    }));
  }

  /** The front-end's userspace address of a guest physical address. */
  uva(gpa: number): bigint {
    const r = this.regionTable().find((r) => gpa >= r.gpa && gpa < r.gpa + r.size);
    if (!r) throw new Error(`gpa 0x${gpa.toString(16)} is outside guest memory`);
    return r.uva + BigInt(gpa) - r.gpa;
  }

  async setMemTable(): Promise<void> {
    const table = this.regionTable();
    await this.set(P.VHOST_USER_SET_MEM_TABLE, memTablePayload(table), table.map(() => this.memfd));
  }

  /** Sets ring `q` up and starts it (`base`: where the device resumes, default our avail idx). */
  async setupRing(q: number, base = this.rings[q].availIdx): Promise<void> {
    const r = this.rings[q];
    const uva = (gpa: number) => this.uva(gpa);
    await this.set(P.VHOST_USER_SET_VRING_NUM, P.vringStatePayload(q, r.size));
    await this.set(P.VHOST_USER_SET_VRING_BASE, P.vringStatePayload(q, base));
    await this.set(
      P.VHOST_USER_SET_VRING_ADDR,
      vringAddrPayload(q, uva(r.desc), uva(r.used), uva(r.avail)),
    );
    await this.set(P.VHOST_USER_SET_VRING_CALL, P.u64Payload(BigInt(q)), [r.callFd]);
    await this.set(P.VHOST_USER_SET_VRING_KICK, P.u64Payload(BigInt(q)), [r.kickFd]);
  }

  async setup(): Promise<void> {
    await this.negotiate();
    await this.setMemTable();
    for (const q of [0, 1]) await this.setupRing(q);
    for (const q of [0, 1]) {
      await this.set(P.VHOST_USER_SET_VRING_ENABLE, P.vringStatePayload(q, 1));
    }
    if (!this.replyAck) await this.barrier();
  }

  /** Brings queue pair `pair` (rings 2*pair, 2*pair+1) up once pair 0 already runs;
   * `beforeEnable` runs once the rings are set up but not yet enabled (e.g. to queue frames). */
  async setupPair(pair: number, beforeEnable?: () => void): Promise<void> {
    const rings = [2 * pair, 2 * pair + 1];
    for (const q of rings) await this.setupRing(q);
    beforeEnable?.();
    for (const q of rings) await this.set(P.VHOST_USER_SET_VRING_ENABLE, P.vringStatePayload(q, 1));
    if (!this.replyAck) await this.barrier();
  }

  // ---- raw guest memory and rings ----

  /** Guest physical address of the data slot owned by descriptor `i` of ring `q`. */
  slot(q: number, i: number): number {
    return this.#dataBase + (q * this.rings[q].size + i) * SLOT;
  }

  /** Guest physical address of the indirect table owned by descriptor `i` of ring `q`. */
  indirectTable(q: number, i: number): number {
    return this.#indirectBase + (q * this.rings[q].size + i) * 16 * INDIRECT_MAX;
  }

  /** Writes a descriptor at a guest physical address (a ring's table or an indirect one). */
  writeDescAt(gpa: number, d: Desc): void {
    this.dv.setBigUint64(gpa, BigInt.asUintN(64, BigInt(d.addr)), true);
    this.dv.setUint32(gpa + 8, d.len, true);
    this.dv.setUint16(gpa + 12, d.flags, true);
    this.dv.setUint16(gpa + 14, d.next ?? 0, true);
  }

  writeDesc(q: number, i: number, d: Desc): void {
    this.writeDescAt(this.rings[q].desc + 16 * i, d);
  }

  availIdx(q: number): number {
    return Atomics.load(this.#u16, (this.rings[q].avail + 2) / 2);
  }

  usedIdx(q: number): number {
    return Atomics.load(this.#u16, (this.rings[q].used + 2) / 2);
  }

  /** Stores avail->idx as is (hostile tests may jump it anywhere). */
  setAvailIdx(q: number, idx: number): void {
    this.rings[q].availIdx = idx & 0xffff;
    Atomics.store(this.#u16, (this.rings[q].avail + 2) / 2, idx);
  }

  /** Adds heads to the avail ring, publishes the index and kicks if the device wants it. */
  publish(q: number, heads: number[]): void {
    const r = this.rings[q];
    const old = r.availIdx;
    for (const h of heads) {
      this.dv.setUint16(r.avail + 4 + 2 * (r.availIdx % r.size), h, true);
      r.availIdx = (r.availIdx + 1) & 0xffff;
    }
    Atomics.store(this.#u16, (r.avail + 2) / 2, r.availIdx);
    const usedFlags = Atomics.load(this.#u16, r.used / 2);
    const kick = this.features & bit(F_EVENT_IDX)
      ? P.vringNeedEvent(Atomics.load(this.#u16, (r.used + 4 + 8 * r.size) / 2), r.availIdx, old)
      : (usedFlags & 1) === 0;
    if (kick) eventfdWrite(r.kickFd);
  }

  /** Used elements [id, len] the device published since the last call for ring `q`. */
  takeUsed(q: number): [number, number][] {
    const r = this.rings[q];
    const out: [number, number][] = [];
    const idx = this.usedIdx(q);
    for (; r.lastUsed !== idx; r.lastUsed = (r.lastUsed + 1) & 0xffff) {
      const e = r.used + 4 + 8 * (r.lastUsed % r.size);
      out.push([this.dv.getUint32(e, true), this.dv.getUint32(e + 4, true)]);
    }
    // EVENT_IDX: interrupt us on the next used element.
    this.dv.setUint16(r.avail + 4 + 2 * r.size, r.lastUsed, true);
    return out;
  }

  /** avail.flags of ring `q` (VRING_AVAIL_F_NO_INTERRUPT = 1: "do not interrupt me"). */
  setAvailFlags(q: number, flags: number): void {
    Atomics.store(this.#u16, this.rings[q].avail / 2, flags);
  }

  /** used_event of ring `q` (EVENT_IDX: interrupt me once the used index passes `idx`). */
  setUsedEvent(q: number, idx: number): void {
    const r = this.rings[q];
    Atomics.store(this.#u16, (r.avail + 4 + 2 * r.size) / 2, idx & 0xffff);
  }

  /** Reads and clears ring `q`'s call eventfd counter. */
  calls(q: number): bigint {
    return eventfdRead(this.rings[q].callFd);
  }

  #allocate(q: number, n: number): number[] {
    const r = this.rings[q];
    if (r.free.length < n) {
      throw new Error(`ring ${q}: ${n} descriptors wanted, ${r.free.length} free`);
    }
    return r.free.splice(0, n);
  }

  #free(q: number, head: number): void {
    const r = this.rings[q];
    const chain = r.chains.get(head);
    if (!chain) throw new Error(`ring ${q}: device returned head ${head}, which it does not own`);
    r.chains.delete(head);
    r.free.push(...chain);
  }

  // ---- the virtio-net driver ----

  /** Queues one frame on the TX ring; returns its head descriptor. */
  send(frame: Uint8Array, o: SendOptions = {}): number {
    const data = new Uint8Array(HDR_LEN + frame.length); // an all-zero virtio_net_hdr
    if (o.hdr) data.set(o.hdr.subarray(0, HDR_LEN));
    data.set(frame, HDR_LEN);
    const cuts = [0];
    if (o.headerSeparate) cuts.push(HDR_LEN);
    const chunk = o.chunk ?? Infinity;
    for (let at = cuts[cuts.length - 1]; at + chunk < data.length;) cuts.push(at += chunk);
    cuts.push(data.length);
    const segs = cuts.slice(0, -1).map((c, i) => [c, cuts[i + 1] - c]);
    if (data.length > SLOT && o.at === undefined) {
      throw new Error(`frame of ${frame.length} bytes exceeds a slot (give \`at\`)`);
    }
    const tx = 2 * (o.pair ?? 0) + 1;
    const ids = this.#allocate(tx, o.indirect ? 1 : segs.length);
    const base = o.at ?? this.slot(tx, ids[0]);
    this.mem.set(data, base);
    const descs = segs.map(([c, len], i): Desc => ({
      addr: base + c,
      len,
      flags: i + 1 < segs.length ? DESC_F_NEXT : 0,
      next: o.indirect ? i + 1 : ids[i + 1],
    }));
    if (o.indirect) {
      if (descs.length > INDIRECT_MAX) throw new Error(`${descs.length} segments: table too small`);
      const table = this.indirectTable(tx, ids[0]);
      descs.forEach((d, i) => this.writeDescAt(table + 16 * i, d));
      this.writeDesc(tx, ids[0], { addr: table, len: 16 * descs.length, flags: DESC_F_INDIRECT });
    } else {
      descs.forEach((d, i) => this.writeDesc(tx, ids[i], d));
    }
    this.rings[tx].chains.set(ids[0], ids);
    this.publish(tx, [ids[0]]);
    return ids[0];
  }

  /** Frees the TX chains the device is done with; returns how many. */
  reclaimTx(pair = 0): number {
    const used = this.takeUsed(2 * pair + 1);
    for (const [id] of used) this.#free(2 * pair + 1, id);
    return used.length;
  }

  /** Posts `count` device-writable buffers of `size` bytes on queue pair `pair`'s RX ring. */
  postRxBuffers(count: number, size = 2048, pair = 0): void {
    if (size > SLOT) throw new Error(`RX buffer of ${size} bytes exceeds a slot`);
    const rx = 2 * pair;
    const ids = this.#allocate(rx, count);
    for (const id of ids) {
      this.writeDesc(rx, id, { addr: this.slot(rx, id), len: size, flags: DESC_F_WRITE });
      this.rings[rx].chains.set(id, [id]);
    }
    this.publish(rx, ids);
  }

  /** Frames the device delivered (virtio header stripped; merged buffers joined). */
  receive(pair = 0): Uint8Array[] {
    const rx = 2 * pair;
    const used = this.takeUsed(rx);
    const frames: Uint8Array[] = [];
    for (let k = 0; k < used.length;) {
      const [id, len] = used[k];
      const num = this.dv.getUint16(this.slot(rx, id) + 10, true);
      const parts = this.features & bit(F_MRG_RXBUF) ? Math.max(num, 1) : 1;
      if (k + parts > used.length) {
        throw new Error(`num_buffers ${num} but ${used.length - k} used`);
      }
      this.rxNumBuffers.push(num);
      const pieces = used.slice(k, k + parts).map(([i, l]) => {
        this.#free(rx, i);
        return this.mem.slice(this.slot(rx, i), this.slot(rx, i) + l);
      });
      if (len < HDR_LEN) throw new Error(`used length ${len} is shorter than the header`);
      const total = pieces.reduce((n, p) => n + p.length, 0);
      const frame = new Uint8Array(total);
      let off = 0;
      for (const p of pieces) frame.set(p, (off += p.length) - p.length);
      this.rxHeaders.push(frame.slice(0, HDR_LEN));
      frames.push(frame.subarray(HDR_LEN));
      k += parts;
    }
    return frames;
  }

  /** Waits until `count` frames arrived (the frames so far are in the error message). */
  async waitFrames(count: number, timeoutMs = 5000, pair = 0): Promise<Uint8Array[]> {
    const got: Uint8Array[] = [];
    await waitFor(`${count} frames on queue pair ${pair}`, () => {
      got.push(...this.receive(pair));
      return got.length >= count;
    }, timeoutMs).catch((e) => {
      throw new Error(`${e.message}; got ${got.length} of ${count}`);
    });
    return got;
  }

  /** Releases the socket, eventfds, mapping and memfd (idempotent). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFd(this.fd);
    for (const r of this.rings) [r.kickFd, r.callFd].forEach(closeFd);
    munmap(this.#mapping);
    closeFd(this.memfd);
  }
}

/** A listening socket for a switch port in client mode (the front-end is the server). */
export class FrontendListener {
  readonly fd: number;
  constructor(readonly path: string) {
    this.fd = unixListen(path);
  }

  /** Waits for the switch to connect (it retries every second). */
  async accept(opts: FrontendOptions = {}, timeoutMs = 5000): Promise<VhostFrontend> {
    const fd = await waitFor("the switch to connect", () => {
      const fd = unixAccept(this.fd);
      return fd >= 0 ? fd + 1 : 0;
    }, timeoutMs);
    return VhostFrontend.adopt(fd - 1, opts);
  }

  close(): void {
    closeFd(this.fd);
    try {
      Deno.removeSync(this.path);
    } catch { /* gone */ }
  }
}

/**
 * A /proc/PID/maps line of guest memory (a memfd mapping), not one of the switch's own helper
 * libraries (ffi/native_copy.ts, ffi/native_sum.ts), which every thread maps once.
 */
export function isGuestMemfdMap(line: string): boolean {
  return line.includes("/memfd:") && !line.includes(`/memfd:${LIBRARY_NAME}`) &&
    !line.includes(`/memfd:${SUM_LIBRARY_NAME}`);
}
