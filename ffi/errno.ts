import { libc } from "./libc.ts";

// Linux x86_64 errno values (asm-generic/errno-base.h and errno.h).
const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  3: "ESRCH",
  4: "EINTR",
  5: "EIO",
  6: "ENXIO",
  7: "E2BIG",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  17: "EEXIST",
  19: "ENODEV",
  20: "ENOTDIR",
  21: "EISDIR",
  22: "EINVAL",
  23: "ENFILE",
  24: "EMFILE",
  25: "ENOTTY",
  27: "EFBIG",
  28: "ENOSPC",
  29: "ESPIPE",
  32: "EPIPE",
  34: "ERANGE",
  36: "ENAMETOOLONG",
  38: "ENOSYS",
  40: "ELOOP",
  61: "ENODATA",
  71: "EPROTO",
  75: "EOVERFLOW",
  88: "ENOTSOCK",
  90: "EMSGSIZE",
  92: "ENOPROTOOPT",
  93: "EPROTONOSUPPORT",
  95: "EOPNOTSUPP",
  97: "EAFNOSUPPORT",
  98: "EADDRINUSE",
  99: "EADDRNOTAVAIL",
  100: "ENETDOWN",
  103: "ECONNABORTED",
  104: "ECONNRESET",
  105: "ENOBUFS",
  106: "EISCONN",
  107: "ENOTCONN",
  110: "ETIMEDOUT",
  111: "ECONNREFUSED",
  115: "EINPROGRESS",
};

export const EINTR = 4;
export const EAGAIN = 11;
export const EINPROGRESS = 115;

export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/** A failed libc call: `call` names the function, `code` the errno (`EADDRINUSE`, ...). */
export class SysError extends Error {
  readonly code: string;
  constructor(readonly call: string, readonly errno: number, detail?: string) {
    const code = errnoName(errno);
    super(`${call}${detail ? ` ${detail}` : ""}: ${code}`);
    this.name = "SysError";
    this.code = code;
  }
}

let errnoView: Deno.UnsafePointerView | undefined;

/** The calling thread's errno, read right after a failed call. */
export function errno(): number {
  errnoView ??= new Deno.UnsafePointerView(libc.__errno_location()!);
  return errnoView.getInt32();
}

/** Throws a SysError when a libc call returned -1; passes the result through otherwise. */
export function check(call: string, result: number, detail?: string): number {
  if (result < 0) throw new SysError(call, errno(), detail);
  return result;
}

export function checkBig(call: string, result: number | bigint, detail?: string): number {
  return check(call, Number(result), detail);
}
