// vhost-user wire format (QEMU docs/interop/vhost-user.rst): a 12-byte header
// (request u32, flags u32, size u32) then `size` bytes of payload, all little-endian;
// fds travel as SCM_RIGHTS ancillary data with the message. Names follow the spec.

/**
 * Front-end message types (vhost-user.rst "Front-end message types"), name -> request code: the
 * one table of them. The named constants and requestName() are derived from it.
 */
export const VHOST_USER_REQUESTS = {
  VHOST_USER_GET_FEATURES: 1,
  VHOST_USER_SET_FEATURES: 2,
  VHOST_USER_SET_OWNER: 3,
  VHOST_USER_RESET_OWNER: 4,
  VHOST_USER_SET_MEM_TABLE: 5,
  VHOST_USER_SET_LOG_BASE: 6,
  VHOST_USER_SET_LOG_FD: 7,
  VHOST_USER_SET_VRING_NUM: 8,
  VHOST_USER_SET_VRING_ADDR: 9,
  VHOST_USER_SET_VRING_BASE: 10,
  VHOST_USER_GET_VRING_BASE: 11,
  VHOST_USER_SET_VRING_KICK: 12,
  VHOST_USER_SET_VRING_CALL: 13,
  VHOST_USER_SET_VRING_ERR: 14,
  VHOST_USER_GET_PROTOCOL_FEATURES: 15,
  VHOST_USER_SET_PROTOCOL_FEATURES: 16,
  VHOST_USER_GET_QUEUE_NUM: 17,
  VHOST_USER_SET_VRING_ENABLE: 18,
  VHOST_USER_SEND_RARP: 19,
  VHOST_USER_NET_SET_MTU: 20,
  VHOST_USER_SET_BACKEND_REQ_FD: 21,
  VHOST_USER_IOTLB_MSG: 22,
  VHOST_USER_SET_VRING_ENDIAN: 23,
  VHOST_USER_GET_CONFIG: 24,
  VHOST_USER_SET_CONFIG: 25,
  VHOST_USER_GET_INFLIGHT_FD: 31,
  VHOST_USER_SET_INFLIGHT_FD: 32,
  VHOST_USER_RESET_DEVICE: 34,
  VHOST_USER_VRING_KICK: 35,
  VHOST_USER_GET_MAX_MEM_SLOTS: 36,
  VHOST_USER_ADD_MEM_REG: 37,
  VHOST_USER_REM_MEM_REG: 38,
  VHOST_USER_SET_STATUS: 39,
  VHOST_USER_GET_STATUS: 40,
} as const;

export const {
  VHOST_USER_GET_FEATURES,
  VHOST_USER_SET_FEATURES,
  VHOST_USER_SET_OWNER,
  VHOST_USER_RESET_OWNER,
  VHOST_USER_SET_MEM_TABLE,
  VHOST_USER_SET_LOG_BASE,
  VHOST_USER_SET_LOG_FD,
  VHOST_USER_SET_VRING_NUM,
  VHOST_USER_SET_VRING_ADDR,
  VHOST_USER_SET_VRING_BASE,
  VHOST_USER_GET_VRING_BASE,
  VHOST_USER_SET_VRING_KICK,
  VHOST_USER_SET_VRING_CALL,
  VHOST_USER_SET_VRING_ERR,
  VHOST_USER_GET_PROTOCOL_FEATURES,
  VHOST_USER_SET_PROTOCOL_FEATURES,
  VHOST_USER_GET_QUEUE_NUM,
  VHOST_USER_SET_VRING_ENABLE,
  VHOST_USER_SEND_RARP,
  VHOST_USER_NET_SET_MTU,
  VHOST_USER_SET_BACKEND_REQ_FD,
  VHOST_USER_IOTLB_MSG,
  VHOST_USER_SET_VRING_ENDIAN,
  VHOST_USER_GET_CONFIG,
  VHOST_USER_SET_CONFIG,
  VHOST_USER_GET_INFLIGHT_FD,
  VHOST_USER_SET_INFLIGHT_FD,
  VHOST_USER_RESET_DEVICE,
  VHOST_USER_VRING_KICK,
  VHOST_USER_GET_MAX_MEM_SLOTS,
  VHOST_USER_ADD_MEM_REG,
  VHOST_USER_REM_MEM_REG,
  VHOST_USER_SET_STATUS,
  VHOST_USER_GET_STATUS,
} = VHOST_USER_REQUESTS;

/** Request code -> its name less the VHOST_USER_ prefix, for log lines and errors. */
const REQUEST_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(VHOST_USER_REQUESTS).map((
    [name, code],
  ) => [code, name.slice("VHOST_USER_".length)]),
);

export function requestName(request: number): string {
  return REQUEST_NAMES.get(request) ?? `request ${request}`;
}

// Header flags.
export const VHOST_USER_VERSION = 0x1;
export const VHOST_USER_VERSION_MASK = 0x3;
export const VHOST_USER_REPLY_MASK = 0x4;
export const VHOST_USER_NEED_REPLY_MASK = 0x8;

/** Protocol feature bits (GET/SET_PROTOCOL_FEATURES, "Protocol features"): the one table. */
export const VHOST_USER_PROTOCOL_FEATURES = {
  VHOST_USER_PROTOCOL_F_MQ: 0,
  /** SET_LOG_BASE passes the dirty log as a shared memory fd (live migration). */
  VHOST_USER_PROTOCOL_F_LOG_SHMFD: 1,
  /** SEND_RARP: announce a migrated guest's MAC on its behalf. */
  VHOST_USER_PROTOCOL_F_RARP: 2,
  VHOST_USER_PROTOCOL_F_REPLY_ACK: 3,
  VHOST_USER_PROTOCOL_F_NET_MTU: 4,
  VHOST_USER_PROTOCOL_F_BACKEND_REQ: 5,
  VHOST_USER_PROTOCOL_F_RESET_DEVICE: 13,
  VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS: 15,
  VHOST_USER_PROTOCOL_F_STATUS: 16,
} as const;

export const {
  VHOST_USER_PROTOCOL_F_MQ,
  VHOST_USER_PROTOCOL_F_LOG_SHMFD,
  VHOST_USER_PROTOCOL_F_RARP,
  VHOST_USER_PROTOCOL_F_REPLY_ACK,
  VHOST_USER_PROTOCOL_F_NET_MTU,
  VHOST_USER_PROTOCOL_F_BACKEND_REQ,
  VHOST_USER_PROTOCOL_F_RESET_DEVICE,
  VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS,
  VHOST_USER_PROTOCOL_F_STATUS,
} = VHOST_USER_PROTOCOL_FEATURES;

/** SET_VRING_ADDR flags bit 0: writes to this ring's used ring are logged at `log`. */
export const VHOST_VRING_F_LOG = 1 << 0;
/** The dirty log's granularity: one bit per 4 KiB page of guest physical memory. */
export const VHOST_LOG_PAGE = 0x1000;

// SET_VRING_KICK/CALL/ERR payload: ring index in bits 0..7, bit 8 = no fd passed.
export const VHOST_USER_VRING_IDX_MASK = 0xff;
export const VHOST_USER_VRING_NOFD_MASK = 0x100;

export const HEADER_SIZE = 12;
/** Largest payload we accept: a full memory table is 8 + 8 * 32 bytes; config space 256. */
export const MAX_PAYLOAD = 4096;
export const VHOST_MEMORY_BASELINE_NREGIONS = 8;
/** Memory slots offered through CONFIGURE_MEM_SLOTS (ADD/REM_MEM_REG). */
export const MAX_MEM_SLOTS = 32;

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

export interface Message {
  request: number;
  flags: number;
  payload: DataView;
  fds: number[];
}

export interface VringState {
  index: number;
  num: number;
}

export interface VringAddr {
  index: number;
  flags: number;
  desc: bigint;
  used: bigint;
  avail: bigint;
  log: bigint;
}

export interface MemoryRegionDesc {
  guestPhysAddr: bigint;
  memorySize: bigint;
  userspaceAddr: bigint;
  mmapOffset: bigint;
}

function need(msg: Message, size: number): void {
  if (msg.payload.byteLength < size) {
    throw new ProtocolError(
      `${requestName(msg.request)}: payload is ${msg.payload.byteLength} bytes, needs ${size}`,
    );
  }
}

export function decodeU64(msg: Message): bigint {
  need(msg, 8);
  return msg.payload.getBigUint64(0, true);
}

/** SET_LOG_BASE's log description: the log is `size` bytes at `offset` in the passed fd. */
export interface LogDesc {
  size: bigint;
  offset: bigint;
}

export function decodeLog(msg: Message): LogDesc {
  need(msg, 16);
  return { size: msg.payload.getBigUint64(0, true), offset: msg.payload.getBigUint64(8, true) };
}

/** SEND_RARP: the guest's MAC in the first 6 bytes of the u64 payload. */
export function decodeRarpMac(msg: Message): Uint8Array {
  need(msg, 8);
  return new Uint8Array(msg.payload.buffer, msg.payload.byteOffset, 6).slice();
}

export function decodeVringState(msg: Message): VringState {
  need(msg, 8);
  return { index: msg.payload.getUint32(0, true), num: msg.payload.getUint32(4, true) };
}

export function decodeVringAddr(msg: Message): VringAddr {
  need(msg, 40);
  const p = msg.payload;
  return {
    index: p.getUint32(0, true),
    flags: p.getUint32(4, true),
    desc: p.getBigUint64(8, true),
    used: p.getBigUint64(16, true),
    avail: p.getBigUint64(24, true),
    log: p.getBigUint64(32, true),
  };
}

function decodeRegion(p: DataView, off: number): MemoryRegionDesc {
  return {
    guestPhysAddr: p.getBigUint64(off, true),
    memorySize: p.getBigUint64(off + 8, true),
    userspaceAddr: p.getBigUint64(off + 16, true),
    mmapOffset: p.getBigUint64(off + 24, true),
  };
}

/** SET_MEM_TABLE: u32 nregions, u32 padding, then nregions x 32-byte regions. */
export function decodeMemoryTable(msg: Message): MemoryRegionDesc[] {
  need(msg, 8);
  const n = msg.payload.getUint32(0, true);
  if (n < 1 || n > VHOST_MEMORY_BASELINE_NREGIONS) {
    throw new ProtocolError(`SET_MEM_TABLE: ${n} regions (1..${VHOST_MEMORY_BASELINE_NREGIONS})`);
  }
  need(msg, 8 + 32 * n);
  return Array.from({ length: n }, (_, i) => decodeRegion(msg.payload, 8 + 32 * i));
}

/** ADD_MEM_REG / REM_MEM_REG: u64 padding, then one region. */
export function decodeSingleRegion(msg: Message): MemoryRegionDesc {
  need(msg, 40);
  return decodeRegion(msg.payload, 8);
}

/** The ring index and fd of SET_VRING_KICK/CALL/ERR; `fd` is -1 when the no-fd bit is set. */
export function decodeVringFile(msg: Message): { index: number; fd: number } {
  const v = Number(decodeU64(msg) & 0x1ffn);
  const index = v & VHOST_USER_VRING_IDX_MASK;
  if (v & VHOST_USER_VRING_NOFD_MASK) return { index, fd: -1 };
  if (msg.fds.length !== 1) {
    throw new ProtocolError(`${requestName(msg.request)}: expected 1 fd, got ${msg.fds.length}`);
  }
  return { index, fd: msg.fds[0] };
}

export function encodeMessage(request: number, flags: number, payload?: Uint8Array): Uint8Array {
  const size = payload?.byteLength ?? 0;
  const out = new Uint8Array(new ArrayBuffer(HEADER_SIZE + size));
  const v = new DataView(out.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, size, true);
  if (payload) out.set(payload, HEADER_SIZE);
  return out;
}

export function u64Payload(value: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, value), true);
  return b;
}

export function vringStatePayload(index: number, num: number): Uint8Array {
  const b = new Uint8Array(8);
  const v = new DataView(b.buffer);
  v.setUint32(0, index, true);
  v.setUint32(4, num, true);
  return b;
}

/**
 * Reassembles messages from a byte stream. A sender attaches fds to one message's sendmsg; a
 * Linux AF_UNIX stream read may glue earlier fd-less messages in front of it but ends with
 * the segment that carried the fds. So fds that come with a read belong to the last message
 * that starts in that read (or, if none starts there, to the one being continued).
 */
export class MessageReader {
  #buf = new Uint8Array(new ArrayBuffer(HEADER_SIZE + MAX_PAYLOAD));
  #have = 0;
  #fds: number[] = [];

  /** Appends bytes (and the fds that came with them). */
  push(bytes: Uint8Array, fds: number[]): void {
    try {
      this.#push(bytes, fds);
    } catch (err) {
      this.#fds.push(...fds); // a framing error: the owner closes them with takeStrayFds()
      throw err;
    }
  }

  #push(bytes: Uint8Array, fds: number[]): void {
    let off = 0;
    let lastStart = -1; // index in `ready` of the last message that started in this chunk
    let pendingStarted = false;
    const firstReady = this.ready.length;
    while (off < bytes.length) {
      if (this.#have === 0) pendingStarted = true;
      const want = this.#needed() - this.#have;
      const n = Math.min(want, bytes.length - off);
      this.#buf.set(bytes.subarray(off, off + n), this.#have);
      this.#have += n;
      off += n;
      if (this.#have >= HEADER_SIZE && this.#have === this.#needed()) {
        if (pendingStarted) lastStart = this.ready.length;
        this.#complete();
        pendingStarted = false;
      }
    }
    if (fds.length === 0) return;
    if (pendingStarted || (lastStart < 0 && this.ready.length === firstReady)) {
      this.#fds.push(...fds); // the message in progress
    } else {
      const target = this.ready[lastStart >= 0 ? lastStart : this.ready.length - 1];
      target.fds.push(...fds);
    }
  }

  readonly ready: Message[] = [];

  /** Fds received for the message still being assembled. */
  get pendingFdCount(): number {
    return this.#fds.length;
  }

  /** Fds received but not attached to any message (closed by the owner on teardown). */
  takeStrayFds(): number[] {
    const fds = this.#fds;
    this.#fds = [];
    return fds;
  }

  #needed(): number {
    if (this.#have < HEADER_SIZE) return HEADER_SIZE;
    const size = new DataView(this.#buf.buffer).getUint32(8, true);
    if (size > MAX_PAYLOAD) {
      throw new ProtocolError(`message payload size ${size} exceeds ${MAX_PAYLOAD} bytes`);
    }
    return HEADER_SIZE + size;
  }

  #complete(): void {
    const v = new DataView(this.#buf.buffer);
    const size = v.getUint32(8, true);
    const payload = new DataView(this.#buf.slice(HEADER_SIZE, HEADER_SIZE + size).buffer);
    this.ready.push({
      request: v.getUint32(0, true),
      flags: v.getUint32(4, true),
      payload,
      fds: this.#fds,
    });
    this.#fds = [];
    this.#have = 0;
  }
}
