// AF_UNIX stream sockets with fd passing (SCM_RIGHTS), as vhost-user needs.
// msghdr/iovec/cmsghdr are laid out by hand in ArrayBuffers (x86_64 layouts); an ArrayBuffer's
// backing store never moves, so the pointers written into msghdr stay valid across calls.
import { libc } from "./libc.ts";
import { check, EAGAIN, EINTR, errno, SysError } from "./errno.ts";
import { closeFd, setNonblocking } from "./fd.ts";
import { cString } from "./mem.ts";

const AF_UNIX = 1;
const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_NOSIGNAL = 0x4000;
const MSG_CTRUNC = 0x8;
const MSG_CMSG_CLOEXEC = 0x40000000;
const ECONNREFUSED = 111;
const EADDRINUSE = 98;
const SUN_PATH_MAX = 108;

/** Most fds one message may carry (vhost-user sends at most 8: one per memory region). */
export const MAX_FDS = 16;

function sockaddrUn(path: string): Uint8Array<ArrayBuffer> {
  const p = cString(path);
  if (p.length > SUN_PATH_MAX) throw new Error(`socket path too long (max 107 bytes): ${path}`);
  const sa = new Uint8Array(new ArrayBuffer(2 + p.length));
  sa[0] = AF_UNIX;
  sa.set(p, 2);
  return sa;
}

function unixSocket(nonblocking: boolean): number {
  const type = SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0);
  return check("socket", libc.socket(AF_UNIX, type, 0), "AF_UNIX");
}

/** Binds and listens; a stale socket file nobody listens on is replaced. Returns a nonblocking fd. */
export function unixListen(path: string, backlog = 16): number {
  const fd = unixSocket(true);
  const sa = sockaddrUn(path);
  try {
    if (libc.bind(fd, sa, sa.length) < 0) {
      const e = errno();
      if (e !== EADDRINUSE || !isStaleSocket(path)) throw new SysError("bind", e, path);
      Deno.removeSync(path);
      check("bind", libc.bind(fd, sa, sa.length), path);
    }
    check("listen", libc.listen(fd, backlog), path);
    return fd;
  } catch (err) {
    closeFd(fd);
    throw err;
  }
}

function isStaleSocket(path: string): boolean {
  try {
    if (!Deno.lstatSync(path).isSocket) return false;
  } catch {
    return false;
  }
  const probe = unixSocket(false);
  const sa = sockaddrUn(path);
  const refused = libc.connect(probe, sa, sa.length) < 0 && errno() === ECONNREFUSED;
  closeFd(probe);
  return refused;
}

/** Accepts one pending connection as a nonblocking fd, or returns -1 when none is pending. */
export function unixAccept(listenFd: number): number {
  const fd = libc.accept4(listenFd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) {
    const e = errno();
    if (e === EAGAIN || e === EINTR) return -1;
    throw new SysError("accept4", e);
  }
  return fd;
}

/** Connects to a listening socket (immediate for AF_UNIX); returns a nonblocking fd. */
export function unixConnect(path: string): number {
  const fd = unixSocket(false);
  const sa = sockaddrUn(path);
  if (libc.connect(fd, sa, sa.length) < 0) {
    const e = errno();
    closeFd(fd);
    throw new SysError("connect", e, path);
  }
  setNonblocking(fd);
  return fd;
}

export function unixSocketPair(): [number, number] {
  const fds = new Int32Array(new ArrayBuffer(8));
  check(
    "socketpair",
    libc.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, new Uint8Array(fds.buffer)),
  );
  return [fds[0], fds[1]];
}

const msghdr = new ArrayBuffer(56);
const msgView = new DataView(msghdr);
const msgBytes = new Uint8Array(msghdr);
const iov = new ArrayBuffer(16);
const iovView = new DataView(iov);
const cmsg = new ArrayBuffer(16 + 4 * MAX_FDS);
const cmsgView = new DataView(cmsg);

function addressOf(buf: ArrayBuffer): bigint {
  return Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf));
}

const iovAddress = addressOf(iov);
const cmsgAddress = addressOf(cmsg);

function prepare(data: Uint8Array, controlLen: number): void {
  msgBytes.fill(0);
  iovView.setBigUint64(0, addressOf(data.buffer as ArrayBuffer) + BigInt(data.byteOffset), true);
  iovView.setBigUint64(8, BigInt(data.byteLength), true);
  msgView.setBigUint64(16, iovAddress, true);
  msgView.setBigUint64(24, 1n, true);
  if (controlLen > 0) {
    msgView.setBigUint64(32, cmsgAddress, true);
    msgView.setBigUint64(40, BigInt(controlLen), true);
  }
}

/** Sends `data` with `fds` attached. Returns bytes sent, or -1 if the socket would block. */
export function sendWithFds(fd: number, data: Uint8Array, fds: readonly number[] = []): number {
  if (fds.length > MAX_FDS) throw new Error(`sendWithFds: at most ${MAX_FDS} fds`);
  const controlLen = fds.length ? 16 + ((fds.length * 4 + 7) & ~7) : 0;
  prepare(data, controlLen);
  if (fds.length) {
    cmsgView.setBigUint64(0, BigInt(16 + fds.length * 4), true);
    cmsgView.setInt32(8, SOL_SOCKET, true);
    cmsgView.setInt32(12, SCM_RIGHTS, true);
    fds.forEach((f, i) => cmsgView.setInt32(16 + 4 * i, f, true));
  }
  const n = Number(libc.sendmsg(fd, msgBytes, MSG_NOSIGNAL));
  if (n < 0) {
    const e = errno();
    if (e === EAGAIN || e === EINTR) return -1;
    throw new SysError("sendmsg", e);
  }
  return n;
}

/**
 * Receives into `into` (which must be backed by its own ArrayBuffer), appending any passed fds
 * to `fds`. Returns bytes read, 0 at end of stream, -1 if nothing is pending.
 */
export function recvWithFds(fd: number, into: Uint8Array, fds: number[]): number {
  prepare(into, cmsg.byteLength);
  const n = Number(libc.recvmsg(fd, msgBytes, MSG_CMSG_CLOEXEC));
  if (n < 0) {
    const e = errno();
    if (e === EAGAIN || e === EINTR) return -1;
    throw new SysError("recvmsg", e);
  }
  const controlLen = Number(msgView.getBigUint64(40, true));
  const passed: number[] = [];
  // Walk every cmsghdr in what came back (the kernel may deliver one per sender's message).
  for (let off = 0; off + 16 <= controlLen;) {
    const len = Number(cmsgView.getBigUint64(off, true));
    if (len < 16 || off + len > controlLen) break;
    if (
      cmsgView.getInt32(off + 8, true) === SOL_SOCKET &&
      cmsgView.getInt32(off + 12, true) === SCM_RIGHTS
    ) {
      for (let p = off + 16; p + 4 <= off + len; p += 4) passed.push(cmsgView.getInt32(p, true));
    }
    off += (len + 7) & ~7;
  }
  if (msgView.getInt32(48, true) & MSG_CTRUNC) {
    for (const f of passed) closeFd(f);
    throw new Error(`recvmsg: control data truncated (peer passed more than ${MAX_FDS} fds)`);
  }
  fds.push(...passed);
  return n;
}
