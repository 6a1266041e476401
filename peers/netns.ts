// A network namespace joined to the root namespace by a veth pair, for AF_PACKET tests: the
// namespace end plays "the wire" (with an address, say 10.9.0.2/24), the root end is the
// switch's uplink. Names are unique per call; close() (or `await using`) always removes both.
import { libc } from "../ffi/libc.ts";
import { check } from "../ffi/errno.ts";
import { closeFd } from "../ffi/fd.ts";
import { cString } from "../ffi/mem.ts";
import { openBoundSocket } from "../ffi/packet.ts";
import { readPcapFrames } from "./pcap.ts";
import { VlanTagger } from "./vlan_tap.ts";

const O_RDONLY = 0;
const O_CLOEXEC = 0o2000000;
const CLONE_NEWNET = 0x40000000;

/** Why namespace tests cannot run here, or null when they can. */
export function netnsSkipReason(): string | null {
  if (Deno.build.os !== "linux") return "network namespaces need Linux";
  if (Deno.uid() !== 0) return `needs root to create namespaces (running as uid ${Deno.uid()})`;
  try {
    new Deno.Command("ip", { args: ["-V"], stdout: "null", stderr: "null" }).outputSync();
  } catch {
    return "`ip` (iproute2) is not installed";
  }
  return null;
}

/** Runs a command; throws with its stderr when it fails. */
export async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed (${out.code}): ${dec.decode(out.stderr)}`);
  }
  return dec.decode(out.stdout);
}

export interface VethNetnsOptions {
  /** Address of the namespace end (default 10.9.0.2/24); null for none (e.g. VLANs only). */
  nsAddr?: string | null;
  /** Address of the root end, for tests that need the host stack to talk (default none). */
  hostAddr?: string | null;
  mtu?: number;
  /** Fixed names instead of unique ones (e.g. a walkthrough's vs-uplink0); at most 15 bytes for
   * the interfaces, less 5 on nsIf to leave room for VLAN subinterfaces (".4094"). */
  names?: { netns?: string; hostIf?: string; nsIf?: string };
}

let serial = 0;

export class VethNetns {
  readonly name: string;
  readonly hostIf: string;
  readonly nsIf: string;
  readonly #fds = new Set<number>();
  #closed = false;
  #tagger?: VlanTagger;
  /** How addVlan made VLAN subinterfaces: the kernel's 8021q, or TAPs and a userspace tagger. */
  vlanKind?: "kernel" | "userspace";

  private constructor(readonly options: VethNetnsOptions) {
    const id = `${(Deno.pid % 1296).toString(36)}${(serial++ % 1296).toString(36)}${
      Math.floor(Math.random() * 1296).toString(36)
    }`;
    this.name = options.names?.netns ?? `vswtest-${id}`;
    this.hostIf = options.names?.hostIf ?? `afp${id}h`;
    this.nsIf = options.names?.nsIf ?? `afp${id}n`;
  }

  static async create(options: VethNetnsOptions = {}): Promise<VethNetns> {
    const ns = new VethNetns(options);
    try {
      await run("ip", ["netns", "add", ns.name]);
      await ns.exec(["ip", "link", "set", "lo", "up"]);
      await ns.addVeth();
      return ns;
    } catch (err) {
      await ns.close();
      throw err;
    }
  }

  /** (Re)creates the pair, both ends up; IPv6 off so no ND/MLD frames add noise. */
  async addVeth(): Promise<void> {
    const { hostIf, nsIf } = this;
    await run("ip", [
      "link",
      "add",
      hostIf,
      "type",
      "veth",
      "peer",
      "name",
      nsIf,
      "netns",
      this.name,
    ]);
    await Deno.writeTextFile(`/proc/sys/net/ipv6/conf/${hostIf}/disable_ipv6`, "1");
    await this.exec(["sh", "-c", `echo 1 > /proc/sys/net/ipv6/conf/${nsIf}/disable_ipv6`]);
    if (this.options.mtu) {
      await run("ip", ["link", "set", hostIf, "mtu", String(this.options.mtu)]);
      await this.exec(["ip", "link", "set", nsIf, "mtu", String(this.options.mtu)]);
    }
    const nsAddr = this.options.nsAddr === undefined ? "10.9.0.2/24" : this.options.nsAddr;
    if (nsAddr) await this.exec(["ip", "addr", "add", nsAddr, "dev", nsIf]);
    if (this.options.hostAddr) {
      await run("ip", ["addr", "add", this.options.hostAddr, "dev", hostIf]);
    }
    await this.exec(["ip", "link", "set", nsIf, "up"]);
    await run("ip", ["link", "set", hostIf, "up"]);
    await this.waitOperUp();
  }

  /**
   * Waits until linkwatch has run for both ends (operstate "up"): until then a device's qdisc
   * is noop and silently drops what is sent through it.
   */
  async waitOperUp(timeoutMs = 5000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const host = (await Deno.readTextFile(`/sys/class/net/${this.hostIf}/operstate`)).trim();
      const peer = (await this.exec(["cat", `/sys/class/net/${this.nsIf}/operstate`])).trim();
      if (host === "up" && peer === "up") return;
      if (Date.now() > end) throw new Error(`veth not up after ${timeoutMs} ms: ${host}/${peer}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /**
   * Adds the VLAN subinterface `<nsIf>.<id>` in the namespace with `addr`, up, so the namespace
   * talks tagged frames on a trunk uplink; returns its name. It goes away with the namespace.
   * Without the kernel's 8021q (no `type vlan`), a TAP of that name and a userspace tagger
   * (vlan_tap.ts) stand in for it: `vlanKind` says which.
   */
  async addVlan(id: number, addr: string): Promise<string> {
    const dev = `${this.nsIf}.${id}`;
    const add = ["link", "add", "link", this.nsIf, "name", dev, "type", "vlan", "id", `${id}`];
    if (this.vlanKind !== "userspace") {
      try {
        await this.exec(["ip", ...add]);
        this.vlanKind = "kernel";
      } catch (err) {
        if (!/Unknown device type/.test((err as Error).message)) throw err;
        this.vlanKind = "userspace";
      }
    }
    if (this.vlanKind === "userspace") {
      this.#tagger ??= new VlanTagger(this.nsIf, (fn) => this.inside(fn));
      this.#tagger.add(id, dev);
      // A kernel VLAN device shares its parent's MAC; so does the stand-in.
      const mac = (await this.exec(["cat", `/sys/class/net/${this.nsIf}/address`])).trim();
      await this.exec(["ip", "link", "set", dev, "address", mac]);
    }
    await this.exec(["sh", "-c", `echo 1 > /proc/sys/net/ipv6/conf/${dev}/disable_ipv6`]);
    await this.exec(["ip", "addr", "add", addr, "dev", dev]);
    await this.exec(["ip", "link", "set", dev, "up"]);
    return dev;
  }

  /** Runs a command inside the namespace; returns its stdout. */
  exec(args: string[]): Promise<string> {
    return run("ip", ["netns", "exec", this.name, ...args]);
  }

  /**
   * Starts a command inside the namespace in the background, its stdout and stderr piped unless
   * `output` says "null" (a server nobody reads: a full pipe would stall it).
   */
  spawn(args: string[], output: "piped" | "null" = "piped"): Deno.ChildProcess {
    return new Deno.Command("ip", {
      args: ["netns", "exec", this.name, ...args],
      stdout: output,
      stderr: output,
    }).spawn();
  }

  /** `ip link set <end> up|down`. */
  async setLink(end: "host" | "ns", up: boolean): Promise<void> {
    const state = up ? "up" : "down";
    if (end === "host") await run("ip", ["link", "set", this.hostIf, state]);
    else await this.exec(["ip", "link", "set", this.nsIf, state]);
  }

  /**
   * Runs `fn` with this thread inside the namespace (setns(2) on the calling thread only), e.g.
   * to open sockets there; they stay in the namespace afterwards.
   */
  inside<T>(fn: () => T): T {
    const self = check(
      "open",
      libc.open(cString("/proc/thread-self/ns/net"), O_RDONLY | O_CLOEXEC),
    );
    const target = libc.open(cString(`/run/netns/${this.name}`), O_RDONLY | O_CLOEXEC);
    try {
      check("open", target, `/run/netns/${this.name}`);
      check("setns", libc.setns(target, CLONE_NEWNET), this.name);
      try {
        return fn();
      } finally {
        check("setns", libc.setns(self, CLONE_NEWNET), "back to the test's namespace");
      }
    } finally {
      closeFd(target);
      closeFd(self);
    }
  }

  /** A plain AF_PACKET socket on the namespace end (closed by close()). */
  socket(): number {
    const fd = this.inside(() => openBoundSocket(this.nsIf));
    this.#fds.add(fd);
    return fd;
  }

  /**
   * Starts tcpdump on the namespace end and resolves once it listens; `done()` waits for
   * `count` frames (or the timeout) and returns them exactly as captured (VLAN tags included).
   */
  async capture(count: number, filter: string[] = []): Promise<Capture> {
    const file = await Deno.makeTempFile({ prefix: "afp-", suffix: ".pcap" });
    const args = ["netns", "exec", this.name, "tcpdump", "-i", this.nsIf, "-Z", "root", "-U"];
    args.push("-n", "-s", "0", "--immediate-mode", "-c", String(count), "-w", file, ...filter);
    const child = new Deno.Command("ip", { args, stdout: "null", stderr: "piped" }).spawn();
    const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let log = "";
    while (!log.includes("listening on")) {
      const { value, done } = await reader.read();
      if (done) {
        await child.status;
        throw new Error(`tcpdump did not start: ${log}`);
      }
      log += value;
    }
    const drained = (async () => {
      for (;;) if ((await reader.read()).done) return;
    })();
    return {
      async done(timeoutMs = 5000): Promise<Uint8Array[]> {
        const timer = setTimeout(() => child.kill("SIGTERM"), timeoutMs);
        await child.status;
        clearTimeout(timer);
        await drained;
        try {
          return await readPcapFrames(file);
        } finally {
          await Deno.remove(file).catch(() => {});
        }
      },
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const fd of this.#fds) closeFd(fd);
    this.#fds.clear();
    await this.#tagger?.close();
    // Deleting the root end destroys the pair at once (namespace teardown is asynchronous).
    await run("ip", ["link", "del", this.hostIf]).catch(() => {});
    await run("ip", ["netns", "del", this.name]).catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

export interface Capture {
  done(timeoutMs?: number): Promise<Uint8Array[]>;
}

export function createVethNetns(options: VethNetnsOptions = {}): Promise<VethNetns> {
  return VethNetns.create(options);
}
