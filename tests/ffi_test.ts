import assert from "node:assert/strict";
import { SysError } from "../ffi/errno.ts";
import {
  closeFd,
  eventfdCreate,
  eventfdRead,
  eventfdWrite,
  fstat,
  isEventFd,
  openFdCount,
  S_IFREG,
  S_IFSOCK,
} from "../ffi/fd.ts";
import { memfdCreate, mmap, munmap, viewMapping } from "../ffi/mem.ts";
import {
  recvWithFds,
  sendWithFds,
  unixAccept,
  unixConnect,
  unixListen,
  unixSocketPair,
} from "../ffi/unix.ts";
import { EPOLLIN, Reactor } from "../ffi/epoll.ts";
import {
  guardGuestMemory,
  installSigbusHandler,
  sigbusCount,
  unguardGuestMemory,
} from "../ffi/sigbus.ts";
import { libc } from "../ffi/libc.ts";

Deno.test("memfd mapped twice shows the same bytes, at an offset too", () => {
  const fd = memfdCreate("ffi-test", 2 * 4096);
  const a = mmap(2 * 4096, { fd });
  const b = mmap(4096, { fd, offset: 4096 });
  try {
    const va = new Uint8Array(viewMapping(a.address, a.length));
    const vb = new Uint8Array(viewMapping(b.address, b.length));
    va[4096 + 7] = 0xab;
    assert.equal(vb[7], 0xab);
    vb[100] = 0x5a;
    assert.equal(va[4096 + 100], 0x5a);
    assert.notEqual(a.address, b.address);
    const st = fstat(fd);
    assert.equal(st.mode, S_IFREG);
    assert.equal(st.size, 8192);
  } finally {
    munmap(a);
    munmap(b);
    closeFd(fd);
  }
});

Deno.test("a Worker sees the same mapping through the pointer's value", async () => {
  const fd = memfdCreate("ffi-worker", 4096);
  const m = mmap(4096, { fd });
  const src = `
    self.onmessage = (e) => {
      const p = Deno.UnsafePointer.create(e.data);
      const v = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(p, 4096));
      v[1] = v[0] + 1;
      self.postMessage("done");
    };`;
  const url = URL.createObjectURL(new Blob([src], { type: "application/javascript" }));
  const worker = new Worker(url, { type: "module" });
  try {
    const view = new Uint8Array(viewMapping(m.address, m.length));
    view[0] = 41;
    const done = new Promise((resolve) => (worker.onmessage = resolve));
    worker.postMessage(m.address);
    await done;
    assert.equal(view[1], 42);
  } finally {
    worker.terminate();
    URL.revokeObjectURL(url);
    munmap(m);
    closeFd(fd);
  }
});

Deno.test("an fd passed with SCM_RIGHTS over a socketpair arrives usable", () => {
  const [a, b] = unixSocketPair();
  const memfd = memfdCreate("passed", 4096);
  const m = mmap(4096, { fd: memfd });
  try {
    new Uint8Array(viewMapping(m.address, m.length))[0] = 0x77;
    const payload = new Uint8Array(new ArrayBuffer(4));
    payload.set([1, 2, 3, 4]);
    assert.equal(sendWithFds(a, payload, [memfd]), 4);
    const into = new Uint8Array(new ArrayBuffer(64));
    const fds: number[] = [];
    assert.equal(recvWithFds(b, into, fds), 4);
    assert.deepEqual([...into.subarray(0, 4)], [1, 2, 3, 4]);
    assert.equal(fds.length, 1);
    assert.notEqual(fds[0], memfd);
    const m2 = mmap(4096, { fd: fds[0] });
    assert.equal(new Uint8Array(viewMapping(m2.address, m2.length))[0], 0x77);
    munmap(m2);
    closeFd(fds[0]);
  } finally {
    munmap(m);
    for (const fd of [a, b, memfd]) closeFd(fd);
  }
});

Deno.test("eventfd counts and reads back zero when drained", () => {
  const fd = eventfdCreate();
  try {
    assert.ok(isEventFd(fd));
    assert.equal(eventfdRead(fd), 0n);
    eventfdWrite(fd);
    eventfdWrite(fd, 4n);
    assert.equal(eventfdRead(fd), 5n);
    assert.equal(eventfdRead(fd), 0n);
  } finally {
    closeFd(fd);
  }
});

Deno.test("errors carry the call and the errno name", () => {
  const dir = Deno.makeTempDirSync();
  try {
    assert.throws(
      () => unixConnect(`${dir}/absent.sock`),
      (e: unknown) =>
        e instanceof SysError && e.code === "ENOENT" && e.call === "connect" &&
        /^connect .*absent\.sock: ENOENT$/.test(e.message),
    );
    const path = `${dir}/busy.sock`;
    const l = unixListen(path);
    try {
      assert.throws(
        () => unixListen(path),
        (e: unknown) => e instanceof SysError && e.code === "EADDRINUSE",
      );
    } finally {
      closeFd(l);
    }
    assert.throws(() => fstat(-1), (e: unknown) => e instanceof SysError && e.code === "EBADF");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("listen/accept/connect on a path, a stale socket file is replaced", async () => {
  const dir = Deno.makeTempDirSync();
  const path = `${dir}/s.sock`;
  const before = openFdCount();
  const reactor = new Reactor();
  try {
    const stale = unixListen(path);
    closeFd(stale); // the file stays, nobody listens: the next listen must take it over
    const l = unixListen(path);
    assert.equal(fstat(l).mode, S_IFSOCK);
    const accepted = new Promise<number>((resolve) => {
      reactor.watch(l, () => {
        const fd = unixAccept(l);
        if (fd >= 0) resolve(fd);
      }, EPOLLIN);
    });
    const c = unixConnect(path);
    const s = await accepted;
    reactor.unwatch(l);
    const buf = new Uint8Array(new ArrayBuffer(16));
    assert.equal(recvWithFds(s, buf, []), -1, "nothing pending yet: -1, not a block");
    sendWithFds(c, new Uint8Array([9, 8, 7]));
    const got = new Promise<number>((resolve) => {
      reactor.watch(s, () => resolve(recvWithFds(s, buf, [])));
    });
    assert.equal(await got, 3);
    reactor.unwatch(s);
    closeFd(c);
    assert.equal(recvWithFds(s, buf, []), 0, "peer closed: end of stream");
    for (const fd of [s, l]) closeFd(fd);
  } finally {
    await reactor.close();
    Deno.removeSync(dir, { recursive: true });
  }
  assert.equal(openFdCount(), before, "no fd leaked");
});

Deno.test("a truncated mapped file reads as zeros after SIGBUS instead of killing the process", () => {
  installSigbusHandler();
  const fd = memfdCreate("sigbus-test", 65536);
  const m = mmap(65536, { fd });
  const slot = guardGuestMemory(m.address, m.length, 4096);
  try {
    const v = new Uint8Array(viewMapping(m.address, m.length));
    v[100] = 1;
    v[40000] = 7;
    const before = sigbusCount();
    assert.equal(libc.ftruncate(fd, 4096n), 0);
    assert.equal(v[40000], 0, "the page past the new end is a zero page now");
    v[50000] = 9; // writable too, and private: the file stays truncated
    assert.equal(v[50000], 9);
    assert.equal(v[100], 1, "pages still in the file are untouched");
    assert.equal(sigbusCount() - before, 2, "one fault per page replaced");
    assert.equal(fstat(fd).size, 4096);
  } finally {
    unguardGuestMemory(slot);
    munmap(m);
    closeFd(fd);
  }
});

Deno.test("a SIGBUS outside guest memory goes to the previous handler: the process ends with SIGBUS", async () => {
  // In a child process: install the handler, map a memfd without registering it as guest
  // memory, truncate it and read the lost page.
  const script = `
    import { installSigbusHandler, sigbusCount } from "${new URL(
    "../ffi/sigbus.ts",
    import.meta.url,
  )}";
    import { memfdCreate, mmap, viewMapping } from "${new URL("../ffi/mem.ts", import.meta.url)}";
    import { libc } from "${new URL("../ffi/libc.ts", import.meta.url)}";
    installSigbusHandler();
    const fd = memfdCreate("unguarded", 65536);
    const m = mmap(65536, { fd });
    const v = new Uint8Array(viewMapping(m.address, m.length));
    libc.ftruncate(fd, 0n);
    console.log("read", v[40000], "repairs", sigbusCount());
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(
    out.signal,
    "SIGBUS",
    `expected death by SIGBUS, got ${out.signal}/${out.code}:\n${text}`,
  );
  assert.doesNotMatch(text, /read/);
});
