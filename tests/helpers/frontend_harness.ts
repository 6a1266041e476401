// Test scaffolding around tests/helpers/frontend.ts: a real switch in a temp dir, Ethernet
// frames, fds of every kind, fd-leak checks, and the Arena the fuzz tests attack.
// The leak checks count the whole process's fds and memfd mappings: run the files that use them
// one at a time (deno task test does), not with `deno test --parallel`, whose test files share
// the process.
import assert from "node:assert/strict";
import { epollCreate } from "../../ffi/epoll.ts";
import { closeFd, eventfdCreate, fdTarget, pipe } from "../../ffi/fd.ts";
import { libc } from "../../ffi/libc.ts";
import { memfdCreate, MFD_ALLOW_SEALING } from "../../ffi/mem.ts";
import { unixSocketPair } from "../../ffi/unix.ts";
import { Switch } from "../../switch/switch.ts";
import { parseTopology } from "../../switch/topology.ts";
import {
  type FrontendOptions,
  isGuestMemfdMap,
  VhostFrontend,
  waitFor,
} from "../../peers/vhost_frontend.ts";

// ---- a real switch in a temp dir, and test frames ----

export interface PortSpec {
  name: string;
  mtu?: number;
  mode?: "server" | "client";
}

export interface Harness {
  sw: Switch;
  dir: string;
  logs: string[];
  sock(name: string): string;
  counters(name: string): Record<string, number>;
  /** "listening" (no front-end), "connected" ... as sw.ports() reports it. */
  state(name: string): string;
  /** Waits until no front-end is attached to `name` (its connection was torn down). */
  waitDetached(name: string): Promise<void>;
  stop(): Promise<void>;
}

export async function startSwitch(ports: PortSpec[], threads = 1): Promise<Harness> {
  const dir = Deno.makeTempDirSync({ prefix: "vsw-fe-" });
  const sock = (name: string) => `${dir}/${name}.sock`;
  const topology = parseTopology(
    JSON.stringify({
      name: "fe-test",
      threads,
      ports: ports.map((p) => ({
        name: p.name,
        type: "vhost-user",
        socket: sock(p.name),
        mode: p.mode ?? "server",
        mtu: p.mtu ?? 1500,
      })),
    }),
    `${dir}/topology.json`,
  );
  const logs: string[] = [];
  const sw = await Switch.start(topology, (m) => logs.push(m));
  const status = (name: string) => {
    const s = sw.port(name);
    if (!s) throw new Error(`no port ${name}`);
    return s;
  };
  return {
    sw,
    dir,
    logs,
    sock,
    counters: (name) => status(name).counters,
    state: (name) => status(name).state,
    waitDetached: (name) =>
      waitFor(`port ${name} to drop its front-end`, () => {
        const s = status(name);
        return s.state === "listening" || (s.type === "vhost-user" && s.mode === "client" &&
          s.state === "connecting");
      }).then(() => {}),
    stop: async () => {
      await sw.stop();
      Deno.removeSync(dir, { recursive: true });
    },
  };
}

export { macToBytes as macBytes } from "../../peers/pcap.ts";
import { ethFrame as testFrame } from "../../peers/pcap.ts";

/**
 * An Ethernet frame of `length` bytes (EtherType 0x88b5) carrying `seed`: shorthand for the one
 * test frame builder, peers/pcap.ts ethFrame (frames too short for its test header are zeros
 * after the EtherType).
 */
export function ethFrame(dst: string, src: string, length: number, seed = 0): Uint8Array {
  if (length >= 26) return testFrame({ dst, src, length, seq: seed });
  const f = testFrame({ dst, src, payload: new Uint8Array(Math.max(0, length - 14)) });
  return f.subarray(0, length); // a runt shorter than its own header, if asked for
}

export const BROADCAST = "ff:ff:ff:ff:ff:ff";

// ---- fds of every kind, for hostile tests ----

export type FdKind = "eventfd" | "pipe" | "socket" | "memfd" | "sealed-memfd" | "epoll";
export const FD_KINDS: FdKind[] = ["eventfd", "pipe", "socket", "memfd", "sealed-memfd", "epoll"];

/** One fd of `kind` (a memfd of `size` bytes); the caller closes it. */
export function makeFd(kind: FdKind, size = 65536): number {
  switch (kind) {
    case "eventfd":
      return eventfdCreate();
    case "pipe": {
      const [read, write] = pipe();
      closeFd(write);
      return read;
    }
    case "socket": {
      const [a, b] = unixSocketPair();
      closeFd(b);
      return a;
    }
    case "memfd":
      return memfdCreate("fuzz", size);
    case "sealed-memfd": {
      // Sealed against writes: a shared writable mapping of it must fail.
      const fd = memfdCreate("fuzz-sealed", size, MFD_ALLOW_SEALING);
      libc.fcntl(fd, 1033, /* F_ADD_SEALS */ 0x8 /* F_SEAL_WRITE */);
      return fd;
    }
    case "epoll":
      return epollCreate();
  }
}

/**
 * Deno frees a terminated Worker's runtime fds (an epoll and an eventfd) only when the next one
 * ends, so one switch start/stop first makes later fd counts comparable.
 */
export async function warmUpFdCount(): Promise<void> {
  const h = await startSwitch([{ name: "warm" }]);
  await h.stop();
}

/** What a leak would show: open fds, and mappings of memfds (guest memory). */
export interface Resources {
  fds: number;
  memfdMaps: number;
}

/**
 * Fds that are not files by path (sockets, pipes, eventfds, epolls, memfds): Deno opens and closes
 * its own cache databases (~/.cache/deno/...) when it pleases, the switch never opens a path.
 */
function countedFds(): number[] {
  return [...Deno.readDirSync("/proc/self/fd")].map((e) => Number(e.name)).filter((fd) => {
    const target = fdTarget(fd);
    return target !== "" && (!target.startsWith("/") || target.startsWith("/memfd:"));
  }).sort((a, b) => a - b);
}

export function resources(): Resources {
  const maps = Deno.readTextFileSync("/proc/self/maps").split("\n");
  return { fds: countedFds().length, memfdMaps: maps.filter(isGuestMemfdMap).length };
}

/**
 * Waits (bounded) for fds and memfd mappings to come back to `base` or below (fewer is no
 * leak: Deno closes an earlier Worker's epoll and eventfd lazily); names the extras.
 */
export async function assertNoLeak(base: Resources, what: string): Promise<void> {
  const same = () => {
    const now = resources();
    return now.fds <= base.fds && now.memfdMaps <= base.memfdMaps;
  };
  try {
    await waitFor("resources back to the baseline", same, 3000);
  } catch {
    const list = countedFds().map((fd) => `${fd}=${fdTarget(fd)}`).join(" ");
    const now = resources();
    throw new Error(
      `${what}: ${now.fds} fds open (at most ${base.fds}), ${now.memfdMaps} memfd mappings ` +
        `(at most ${base.memfdMaps}); fds: ${list}`,
    );
  }
}

// ---- the fuzz arena ----

export const G1 = "52:54:00:00:01:01";
export const G2 = "52:54:00:00:02:02";

/** A running switch with two good ports (g1, g2) that keep forwarding, and one port to attack. */
export class Arena {
  readonly live = new Set<VhostFrontend>();
  seed = 0;
  /** A step failed: the final leak check would only repeat it. */
  failed = false;
  private constructor(
    readonly h: Harness,
    readonly g1: VhostFrontend,
    readonly g2: VhostFrontend,
    readonly baseline: Resources,
    readonly start: Resources,
  ) {}

  static async start(): Promise<Arena> {
    const start = resources();
    const h = await startSwitch([{ name: "g1" }, { name: "g2" }, { name: "evil" }]);
    const g1 = await VhostFrontend.open(h.sock("g1"));
    const g2 = await VhostFrontend.open(h.sock("g2"));
    g1.postRxBuffers(64);
    g2.postRxBuffers(64);
    return new Arena(h, g1, g2, resources(), start);
  }

  counters(): Record<string, number> {
    return this.h.counters("evil");
  }

  /** Frames still cross between the good ports in both directions, byte for byte. */
  async goodPortsForward(what: string): Promise<void> {
    const { g1, g2 } = this;
    for (const [from, to, dst, src] of [[g1, g2, G2, G1], [g2, g1, G1, G2]] as const) {
      const f = ethFrame(dst, src, 60 + (this.seed % 1400), this.seed++);
      from.send(f);
      const got = await to.waitFrames(1).catch((e) => {
        throw new Error(`${what}: good ports stopped forwarding: ${e.message}`);
      });
      assert.deepEqual(got[0], f, `${what}: frame ${src} -> ${dst}`);
      from.reclaimTx();
      to.postRxBuffers(1);
    }
  }

  /** Closes the attackers, then checks the port reset, no fd leaked and the good ports work. */
  async after(what: string, ...attackers: VhostFrontend[]): Promise<void> {
    attackers.forEach((fe) => (fe.close(), this.live.delete(fe)));
    await this.h.waitDetached("evil");
    await assertNoLeak(this.baseline, `${what}: leak`);
    await this.goodPortsForward(what);
  }

  /** A front-end on the attacked port (closed by step() if the step fails). */
  connect(opts: FrontendOptions = {}): VhostFrontend {
    const fe = VhostFrontend.connect(this.h.sock("evil"), opts);
    this.live.add(fe);
    return fe;
  }

  async open(opts: FrontendOptions = {}): Promise<VhostFrontend> {
    const fe = this.connect(opts);
    await fe.setup();
    return fe;
  }

  /** An attacker that negotiated REPLY_ACK only (its requests are answered, nothing set up). */
  async attacker(): Promise<VhostFrontend> {
    const fe = this.connect();
    await fe.negotiate();
    return fe;
  }

  /** A step that, failing, leaves the attacked port free for the next one. */
  step(t: Deno.TestContext, name: string, fn: () => Promise<void>): Promise<boolean> {
    return t.step(name, () => this.guard(fn));
  }

  /** Runs one attack; whatever happens, its front-ends are closed and the port has reset. */
  async guard(fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      this.failed = true;
      throw err;
    } finally {
      this.live.forEach((fe) => fe.close());
      this.live.clear();
      // After a failure, report that failure rather than a port that did not reset.
      await this.h.waitDetached("evil").catch((e) => {
        if (!this.failed) throw e;
      });
    }
  }

  /** Sends a request the switch must refuse: ack 1, one protocol error, and its fds closed. */
  async refused(
    fe: VhostFrontend,
    what: string,
    req: number,
    payload?: Uint8Array,
    fds: number[] = [],
  ): Promise<void> {
    const errors = this.counters().protocol_errors;
    const open = resources().fds;
    assert.equal(await fe.ack(req, payload, fds), 1n, `${what}: ack`);
    assert.equal(this.counters().protocol_errors, errors + 1, `${what}: protocol_errors`);
    fds.forEach(closeFd);
    assert.equal(resources().fds, open - fds.length, `${what}: the switch kept a passed fd`);
  }

  /** Sends something after which the switch must hang up. */
  async hangsUp(what: string, bytesOut: Uint8Array, fds: number[] = []): Promise<void> {
    const fe = await this.attacker();
    await fe.sendRaw(bytesOut, fds);
    fds.forEach(closeFd);
    assert.ok(await fe.waitClosed(), `${what}: the switch should close the connection`);
    await this.after(what, fe);
  }

  /** Stops everything; checks for leaked fds unless the test already failed. */
  async stop(passed: boolean): Promise<void> {
    this.live.forEach((fe) => fe.close());
    this.g1.close();
    this.g2.close();
    await this.h.stop();
    if (passed) await assertNoLeak(this.start, "after the switch stopped");
  }

  /** Runs `fn` on a fresh arena, then stops it. */
  static async run(fn: (arena: Arena) => Promise<void>): Promise<void> {
    const arena = await Arena.start();
    let passed = false;
    try {
      await fn(arena);
      passed = !arena.failed;
    } finally {
      await arena.stop(passed);
    }
  }
}
