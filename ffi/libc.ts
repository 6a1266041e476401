// The one place that opens libc. Every other module calls these symbols through the typed
// wrappers in ffi/*.ts, which turn a -1 return into a SysError carrying the errno name.

const symbols = {
  __errno_location: { parameters: [], result: "pointer" },
  close: { parameters: ["i32"], result: "i32" },
  pipe2: { parameters: ["buffer", "i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  fstat: { parameters: ["i32", "buffer"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  mprotect: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  sigaction: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  pthread_self: { parameters: [], result: "pointer" },
  gettid: { parameters: [], result: "i32" },
  pthread_kill: { parameters: ["pointer", "i32"], result: "i32" },
  fstatfs: { parameters: ["i32", "buffer"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  socketpair: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "pointer", "pointer", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  sendmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  recvmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  send: { parameters: ["i32", "pointer", "usize", "i32"], result: "isize" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  // An ioctl whose argument is a value, not a pointer (TUNSETOFFLOAD).
  ioctl_value: { name: "ioctl", parameters: ["i32", "u64", "u64"], result: "i32" },
  if_nametoindex: { parameters: ["buffer"], result: "u32" },
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
  // The same call on Deno's blocking thread pool: the main thread awaits it without
  // blocking its event loop (errno is not readable afterwards: it lives on that thread).
  epoll_wait_async: {
    name: "epoll_wait",
    parameters: ["i32", "buffer", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  // A read that may block, off the calling thread (tests reading an fd a switch shares).
  read_async: {
    name: "read",
    parameters: ["i32", "buffer", "usize"],
    result: "isize",
    nonblocking: true,
  },
  getpid: { parameters: [], result: "i32" },
  // Tests: puts one fd in another's place (a device that refuses, then accepts, writes).
  dup2: { parameters: ["i32", "i32"], result: "i32" },
  // The address of a libc function (RTLD_DEFAULT = null), for ffi/native_copy.ts.
  dlsym: { parameters: ["pointer", "buffer"], result: "pointer" },
  sched_setaffinity: { parameters: ["i32", "usize", "buffer"], result: "i32" },
  // AF_PACKET uplink: per-frame recv (baseline variant), entering a network namespace (tests).
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  open: { parameters: ["buffer", "i32"], result: "i32" },
  setns: { parameters: ["i32", "i32"], result: "i32" },
  // VXLAN ports: a burst of UDP datagrams per call (fd, struct mmsghdr *, vlen, flags[, timeout]).
  recvmmsg: { parameters: ["i32", "pointer", "u32", "i32", "pointer"], result: "i32" },
  sendmmsg: { parameters: ["i32", "pointer", "u32", "i32"], result: "i32" },
  // VXLAN tunnel GSO: one encapsulated super-frame per call into a tap device (fd, iov, iovcnt).
  writev: { parameters: ["i32", "pointer", "i32"], result: "isize" },
} as const satisfies Deno.ForeignLibraryInterface;

export const libc: Deno.DynamicLibrary<typeof symbols>["symbols"] =
  Deno.dlopen("libc.so.6", symbols).symbols;
