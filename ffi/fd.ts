import { libc } from "./libc.ts";
import { check, EAGAIN, EINTR, errno, SysError } from "./errno.ts";

const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
const EFD_NONBLOCK = 0o4000;

export function closeFd(fd: number): void {
  if (fd >= 0) libc.close(fd);
}

export function setNonblocking(fd: number): void {
  const flags = check("fcntl", libc.fcntl(fd, F_GETFL, 0), "F_GETFL");
  if ((flags & O_NONBLOCK) === 0) check("fcntl", libc.fcntl(fd, F_SETFL, flags | O_NONBLOCK));
}

const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;
export const S_IFSOCK = 0o140000;

export interface FdStat {
  mode: number;
  size: number;
}

/** fstat: the file type bits and size (struct stat on x86_64: st_mode at 24, st_size at 48). */
export function fstat(fd: number): FdStat {
  const buf = new Uint8Array(144);
  check("fstat", libc.fstat(fd, buf), `fd ${fd}`);
  const view = new DataView(buf.buffer);
  return { mode: view.getUint32(24, true) & S_IFMT, size: Number(view.getBigInt64(48, true)) };
}

export const TMPFS_MAGIC = 0x01021994;
export const HUGETLBFS_MAGIC = 0x958458f6;

/**
 * The file system `fd` is on (statfs): its type (f_type, e.g. TMPFS_MAGIC; memfds are on
 * tmpfs, or hugetlbfs with MFD_HUGETLB) and block size (f_bsize: the huge page size there).
 */
export function fsInfo(fd: number): { type: number; blockSize: number } {
  const buf = new Uint8Array(120); // struct statfs on x86_64: f_type, f_bsize first
  check("fstatfs", libc.fstatfs(fd, buf), `fd ${fd}`);
  const v = new DataView(buf.buffer);
  return {
    type: Number(v.getBigInt64(0, true) & 0xffffffffn),
    blockSize: Number(v.getBigInt64(8, true)),
  };
}

/** What the kernel says the fd is, e.g. "anon_inode:[eventfd]" or "/memfd:guest (deleted)". */
export function fdTarget(fd: number): string {
  try {
    return Deno.readLinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return "";
  }
}

export function isEventFd(fd: number): boolean {
  return fdTarget(fd) === "anon_inode:[eventfd]";
}

/** Pins the calling thread (a Worker's, when called there) to one CPU. */
export function pinThreadToCpu(cpu: number): void {
  const set = new Uint8Array(128); // cpu_set_t: 1024 bits
  set[cpu >> 3] = 1 << (cpu & 7);
  check("sched_setaffinity", libc.sched_setaffinity(0, 128n, set), `CPU ${cpu}`);
}

/** Counts open fds of this process (for leak checks). */
export function openFdCount(): number {
  let n = 0;
  for (const _ of Deno.readDirSync("/proc/self/fd")) n++;
  return n;
}

/** A pipe (read end, write end), close-on-exec. */
export function pipe(): [number, number] {
  const fds = new Int32Array(new ArrayBuffer(8));
  check("pipe2", libc.pipe2(new Uint8Array(fds.buffer), 0o2000000));
  return [fds[0], fds[1]];
}

export function eventfdCreate(nonblocking = true): number {
  return check("eventfd", libc.eventfd(0, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0)));
}

const counter = new BigUint64Array(1);
const counterBytes = new Uint8Array(counter.buffer);

/**
 * Adds `value` to an eventfd counter; a full counter (EAGAIN) is already a pending signal.
 * Returns false only when a signal interrupted the write (EINTR): it blocked, so someone made
 * the fd blocking (see ffi/signal.ts).
 */
export function eventfdWrite(fd: number, value = 1n): boolean {
  counter[0] = value;
  const n = Number(libc.write(fd, counterBytes, 8n));
  if (n >= 0) return true;
  const e = errno();
  if (e === EAGAIN) return true;
  if (e === EINTR) return false;
  throw new SysError("write", e, `eventfd ${fd}`);
}

/** Reads and resets an eventfd counter; 0 when nothing was pending (nonblocking fd). */
export function eventfdRead(fd: number): bigint {
  const n = Number(libc.read(fd, counterBytes, 8n));
  if (n < 0) {
    if (errno() === EAGAIN) return 0n;
    throw new SysError("read", errno(), `eventfd ${fd}`);
  }
  return counter[0];
}

const SOL_SOCKET = 1;
const SO_ERROR = 4;
const soError = new Uint8Array(4);
const soErrorLen = new Uint8Array(4);

/**
 * Takes a socket's pending error (SO_ERROR, which clears it; 0: none). A packet socket whose
 * interface went away holds ENETDOWN until read, and polls as in error all the while.
 */
export function takeSocketError(fd: number): number {
  soErrorLen[0] = 4;
  if (libc.getsockopt(fd, SOL_SOCKET, SO_ERROR, soError, soErrorLen) < 0) return -1;
  return soError[0] | (soError[1] << 8) | (soError[2] << 16) | (soError[3] << 24);
}
