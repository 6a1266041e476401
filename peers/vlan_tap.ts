// VLAN subinterfaces in userspace, for kernels without 8021q (`ip link add ... type vlan` says
// "Unknown device type", as on this project's CI machines). For each VLAN a TAP device in the
// namespace carries the address, and a tagger moves frames between it and the trunk interface:
// it pushes the 802.1Q tag on the way out and, on the way in, hands a frame to the TAP of the
// VLAN the kernel put in the frame's metadata (veth always takes the tag out of the frame).
import { Reactor } from "../ffi/epoll.ts";
import { errno, SysError } from "../ffi/errno.ts";
import { closeFd } from "../ffi/fd.ts";
import { libc } from "../ffi/libc.ts";
import { cString } from "../ffi/mem.ts";
import { openBoundSocket, sendFrame, setIgnoreOutgoing } from "../ffi/packet.ts";

const O_RDWR = 2, O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000;
const TUNSETIFF = 0x400454can, IFF_TAP = 0x0002, IFF_NO_PI = 0x1000;
const SOL_PACKET = 263, PACKET_AUXDATA = 8, TP_STATUS_VLAN_VALID = 1 << 4;
const EAGAIN = 11;
const FRAME = 9216 + 4;

const addressOf = (buf: ArrayBuffer) => Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf));

/** Opens a TAP device `name` in the calling thread's namespace; it lives while the fd does. */
function openTap(name: string): number {
  const fd = libc.open(cString("/dev/net/tun"), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw new SysError("open", errno(), "/dev/net/tun");
  const ifr = new Uint8Array(40);
  ifr.set(new TextEncoder().encode(name));
  new DataView(ifr.buffer).setUint16(16, IFF_TAP | IFF_NO_PI, true);
  if (libc.ioctl(fd, TUNSETIFF, ifr) < 0) {
    const e = errno();
    closeFd(fd);
    throw new SysError("ioctl TUNSETIFF", e, name);
  }
  return fd;
}

/** recvmsg with PACKET_AUXDATA: the frame and the VLAN id the kernel took out of it (0: none). */
class AuxReceiver {
  readonly frame = new Uint8Array(new ArrayBuffer(FRAME));
  #control = new ArrayBuffer(64);
  #iov = new ArrayBuffer(16);
  #msg = new ArrayBuffer(56);
  #msgBytes = new Uint8Array(this.#msg);

  constructor(readonly fd: number) {
    const on = new Int32Array([1]);
    const optval = new Uint8Array(on.buffer);
    if (libc.setsockopt(fd, SOL_PACKET, PACKET_AUXDATA, optval, 4) < 0) {
      throw new SysError("setsockopt", errno(), "PACKET_AUXDATA");
    }
    const iov = new DataView(this.#iov);
    iov.setBigUint64(0, addressOf(this.frame.buffer), true);
    iov.setBigUint64(8, BigInt(FRAME), true);
    const msg = new DataView(this.#msg);
    msg.setBigUint64(16, addressOf(this.#iov), true);
    msg.setBigUint64(24, 1n, true);
    msg.setBigUint64(32, addressOf(this.#control), true);
  }

  /** [length, vlan id] of the next frame, or null when none is waiting. */
  next(): [number, number] | null {
    new DataView(this.#msg).setBigUint64(40, BigInt(this.#control.byteLength), true);
    const n = Number(libc.recvmsg(this.fd, this.#msgBytes, 0x40 /* MSG_DONTWAIT */));
    if (n < 0) {
      const e = errno();
      if (e === EAGAIN) return null;
      throw new SysError("recvmsg", e, "vlan tagger");
    }
    // One cmsghdr (16 bytes) then struct tpacket_auxdata: status at 0, vlan_tci at 16.
    const c = new DataView(this.#control);
    const controlLen = Number(new DataView(this.#msg).getBigUint64(40, true));
    if (controlLen < 36 || c.getInt32(8, true) !== SOL_PACKET) return [n, 0];
    const tagged = (c.getUint32(16, true) & TP_STATUS_VLAN_VALID) !== 0;
    return [n, tagged ? c.getUint16(32, true) & 0xfff : 0];
  }
}

export class VlanTagger {
  readonly #reactor = new Reactor();
  readonly #taps = new Map<number, number>(); // VLAN id → TAP fd
  readonly #trunk: AuxReceiver;
  readonly #out = new Uint8Array(new ArrayBuffer(FRAME));

  /** `open` runs its callback inside the namespace, where the sockets and TAPs must be made. */
  constructor(readonly trunkIf: string, private readonly open: <T>(fn: () => T) => T) {
    const fd = open(() => openBoundSocket(trunkIf));
    setIgnoreOutgoing(fd); // our own tagged frames would come back otherwise
    this.#trunk = new AuxReceiver(fd);
    this.#reactor.watch(fd, () => this.#fromTrunk());
  }

  /** Adds the TAP `name` for VLAN `id`; the caller gives it its address and sets it up. */
  add(id: number, name: string): void {
    const fd = this.open(() => openTap(name));
    this.#taps.set(id, fd);
    this.#reactor.watch(fd, () => this.#toTrunk(id, fd));
  }

  #fromTrunk() {
    for (let next; (next = this.#trunk.next());) {
      const tap = this.#taps.get(next[1]);
      if (tap !== undefined) libc.write(tap, this.#trunk.frame, BigInt(next[0]));
    }
  }

  #toTrunk(id: number, fd: number) {
    const out = this.#out;
    for (;;) {
      const n = Number(libc.read(fd, out.subarray(4), BigInt(FRAME - 4)));
      if (n < 14) return; // EAGAIN (or a runt)
      out.copyWithin(0, 4, 16); // the MACs move up; the tag goes in after them
      out.set([0x81, 0x00, id >> 8, id & 0xff], 12);
      sendFrame(this.#trunk.fd, out, n + 4);
    }
  }

  async close(): Promise<void> {
    await this.#reactor.close();
    for (const fd of [this.#trunk.fd, ...this.#taps.values()]) closeFd(fd);
    this.#taps.clear();
  }
}
