// The vhost-user wire format as the test front-ends speak it, written from the specification
// (QEMU docs/interop/vhost-user.rst: "Message Specification", "Front-end message types",
// "Protocol features"), not imported from the switch. A front-end that shared the switch's
// codec would agree with it by construction: a wrong request number, flag or payload layout in
// ports/vhost_user/protocol.ts would be sent and read back the same wrong way, and every
// protocol test would still pass. Only what the tests' front-ends send and read is here.

/** Front-end message types ("Front-end message types" in the spec). */
export const VHOST_USER_GET_FEATURES = 1;
export const VHOST_USER_SET_FEATURES = 2;
export const VHOST_USER_SET_OWNER = 3;
export const VHOST_USER_RESET_OWNER = 4;
export const VHOST_USER_SET_MEM_TABLE = 5;
export const VHOST_USER_SET_LOG_BASE = 6;
export const VHOST_USER_SET_LOG_FD = 7;
export const VHOST_USER_SET_VRING_NUM = 8;
export const VHOST_USER_SET_VRING_ADDR = 9;
export const VHOST_USER_SET_VRING_BASE = 10;
export const VHOST_USER_GET_VRING_BASE = 11;
export const VHOST_USER_SET_VRING_KICK = 12;
export const VHOST_USER_SET_VRING_CALL = 13;
export const VHOST_USER_SET_VRING_ERR = 14;
export const VHOST_USER_GET_PROTOCOL_FEATURES = 15;
export const VHOST_USER_SET_PROTOCOL_FEATURES = 16;
export const VHOST_USER_GET_QUEUE_NUM = 17;
export const VHOST_USER_SET_VRING_ENABLE = 18;
export const VHOST_USER_SEND_RARP = 19;
export const VHOST_USER_NET_SET_MTU = 20;
export const VHOST_USER_SET_BACKEND_REQ_FD = 21;
export const VHOST_USER_IOTLB_MSG = 22;
export const VHOST_USER_SET_VRING_ENDIAN = 23;
export const VHOST_USER_GET_CONFIG = 24;
export const VHOST_USER_SET_CONFIG = 25;
export const VHOST_USER_RESET_DEVICE = 34;
export const VHOST_USER_GET_MAX_MEM_SLOTS = 36;
export const VHOST_USER_ADD_MEM_REG = 37;
export const VHOST_USER_REM_MEM_REG = 38;
export const VHOST_USER_SET_STATUS = 39;
export const VHOST_USER_GET_STATUS = 40;

/** Header flags: bits 0-1 the version (1), bit 2 a reply, bit 3 "reply with an ack". */
export const VHOST_USER_VERSION = 0x1;
export const VHOST_USER_REPLY_MASK = 0x4;
export const VHOST_USER_NEED_REPLY_MASK = 0x8;

/** Protocol feature bits ("Protocol features"). */
export const VHOST_USER_PROTOCOL_F_MQ = 0;
export const VHOST_USER_PROTOCOL_F_REPLY_ACK = 3;
export const VHOST_USER_PROTOCOL_F_NET_MTU = 4;
export const VHOST_USER_PROTOCOL_F_RESET_DEVICE = 13;
export const VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS = 15;
export const VHOST_USER_PROTOCOL_F_STATUS = 16;

/** The feature bit that says the back-end speaks protocol features (a vhost-user bit). */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

/** Vring file descriptor payload (u64): bits 0-7 the ring index, bit 8 "no fd attached". */
export const VHOST_USER_VRING_NOFD_MASK = 0x100;

/** request (u32), flags (u32), size (u32), all little-endian, then `size` payload bytes. */
export const HEADER_SIZE = 12;

const NAMES: Record<number, string> = Object.fromEntries(
  Object.entries({
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
    VHOST_USER_RESET_DEVICE,
    VHOST_USER_GET_MAX_MEM_SLOTS,
    VHOST_USER_ADD_MEM_REG,
    VHOST_USER_REM_MEM_REG,
    VHOST_USER_SET_STATUS,
    VHOST_USER_GET_STATUS,
  }).map(([name, code]) => [code, name.slice("VHOST_USER_".length)]),
);

/** The spec's name of a request, for messages. */
export function requestName(request: number): string {
  return NAMES[request] ?? `request ${request}`;
}

/** One message as the front-end reads it (the back-end's replies carry no fds). */
export interface Message {
  request: number;
  flags: number;
  payload: DataView;
}

/** Header plus payload, ready to send. */
export function encodeMessage(request: number, flags: number, payload?: Uint8Array): Uint8Array {
  const size = payload?.length ?? 0;
  const out = new Uint8Array(HEADER_SIZE + size);
  const v = new DataView(out.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, size, true);
  if (payload) out.set(payload, HEADER_SIZE);
  return out;
}

/** "A single 64-bit integer" payload. */
export function u64Payload(value: bigint): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt.asUintN(64, value), true);
  return out;
}

/** "A vring state description": index (u32), num (u32). */
export function vringStatePayload(index: number, num: number): Uint8Array {
  const out = new Uint8Array(8);
  const v = new DataView(out.buffer);
  v.setUint32(0, index >>> 0, true);
  v.setUint32(4, num >>> 0, true);
  return out;
}

/** Splits the back-end's byte stream into messages. */
export class MessageReader {
  #pending = new Uint8Array(0);
  readonly ready: Message[] = [];

  push(bytes: Uint8Array): void {
    const all = new Uint8Array(this.#pending.length + bytes.length);
    all.set(this.#pending);
    all.set(bytes, this.#pending.length);
    let off = 0;
    while (all.length - off >= HEADER_SIZE) {
      const v = new DataView(all.buffer, off);
      const size = v.getUint32(8, true);
      if (all.length - off < HEADER_SIZE + size) break;
      this.ready.push({
        request: v.getUint32(0, true),
        flags: v.getUint32(4, true),
        payload: new DataView(all.slice(off + HEADER_SIZE, off + HEADER_SIZE + size).buffer),
      });
      off += HEADER_SIZE + size;
    }
    this.#pending = all.slice(off);
  }
}

/**
 * Whether the driver must be notified (virtio 1.x 2.7.10, vring_need_event): the used index
 * moved from `oldIdx` to `newIdx` and passed `eventIdx` on the way.
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}
