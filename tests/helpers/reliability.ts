// Helpers for the reliability tests (tests/reliability_*_test.ts): the switch as a child process
// measured from /proc, plain HTTP without connection reuse, a two-front-end frame pump that
// checks every frame, a tiny ARP/ICMP host on a TS front-end (so a guest can ping it), QMP,
// busybox ping output, and hostile peers run as their own process (this file's `main`):
//
//   deno run -A tests/helpers/reliability.ts flood <socket> messages|bytes <seconds>
import { fileURLToPath } from "node:url";
import { closeFd } from "../../ffi/fd.ts";
import { sendWithFds, unixConnect } from "../../ffi/unix.ts";
import * as P from "../../peers/vhost_wire.ts";
import { delay, isGuestMemfdMap, type VhostFrontend } from "../../peers/vhost_frontend.ts";
import { SwitchProcess } from "../../peers/switch_process.ts";

const SELF = fileURLToPath(import.meta.url);
const REPO = fileURLToPath(new URL("../../", import.meta.url));

export const sleep = delay;

/** Polls `probe` every `everyMs` until it returns a truthy value; throws `what` on timeout. */
export { waitFor as until } from "../../peers/wait.ts";
import { waitFor as until } from "../../peers/wait.ts";

// ---- /proc figures of a process ----

export interface ProcStats {
  /** Open fds that are not files by path (sockets, pipes, eventfds, epolls, memfds). */
  fds: number;
  eventfds: number;
  sockets: number;
  memfdFds: number;
  /** Mappings of memfds (guest memory) in /proc/PID/maps. */
  memfdMaps: number;
  rssKiB: number;
  rssAnonKiB: number;
  rssFileKiB: number;
  rssShmemKiB: number;
  /** fd number = target, for messages. */
  fdList: string[];
}

function fdTargets(pid: number): [number, string][] {
  const out: [number, string][] = [];
  for (const e of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      out.push([Number(e.name), Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`)]);
    } catch { /* closed meanwhile */ }
  }
  return out.sort((a, b) => a[0] - b[0]);
}

/**
 * What a leak would show in process `pid`. Files opened by path are left out: Deno opens and
 * closes its cache databases when it pleases; the switch itself never opens a path.
 */
export function procStats(pid: number): ProcStats {
  const fds = fdTargets(pid).filter(([, t]) => !t.startsWith("/") || t.startsWith("/memfd:"));
  const maps = Deno.readTextFileSync(`/proc/${pid}/maps`).split("\n");
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kib = (key: string) => Number(status.match(new RegExp(`^${key}:\\s+(\\d+) kB`, "m"))?.[1]);
  return {
    fds: fds.length,
    eventfds: fds.filter(([, t]) => t === "anon_inode:[eventfd]").length,
    sockets: fds.filter(([, t]) => t.startsWith("socket:")).length,
    memfdFds: fds.filter(([, t]) => t.startsWith("/memfd:")).length,
    memfdMaps: maps.filter(isGuestMemfdMap).length,
    rssKiB: kib("VmRSS"),
    rssAnonKiB: kib("RssAnon"),
    rssFileKiB: kib("RssFile"),
    rssShmemKiB: kib("RssShmem"),
    fdList: fds.map(([n, t]) => `${n}=${t}`),
  };
}

export function formatStats(s: ProcStats): string {
  return `${s.fds} fds (${s.eventfds} eventfds, ${s.sockets} sockets, ${s.memfdFds} memfds), ` +
    `${s.memfdMaps} memfd mappings, RSS ${(s.rssKiB / 1024).toFixed(1)} MiB ` +
    `(anon ${(s.rssAnonKiB / 1024).toFixed(1)}, file ${(s.rssFileKiB / 1024).toFixed(1)}, ` +
    `shmem ${(s.rssShmemKiB / 1024).toFixed(1)})`;
}

/**
 * Waits (bounded) until fds, eventfds and memfd mappings of `pid` equal `base` (closing is
 * asynchronous: the switch resets a device after the workers let go); throws naming the extras.
 */
export async function waitForBaseline(
  pid: number,
  base: ProcStats,
  what: string,
  timeoutMs = 5000,
): Promise<ProcStats> {
  const same = (s: ProcStats) =>
    s.fds === base.fds && s.eventfds === base.eventfds && s.memfdMaps === base.memfdMaps;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const now = procStats(pid);
    if (same(now)) return now;
    if (Date.now() > deadline) {
      const extra = now.fdList.filter((f) => !base.fdList.includes(f));
      const missing = base.fdList.filter((f) => !now.fdList.includes(f));
      throw new Error(
        `${what}: ${formatStats(now)}; expected ${formatStats(base)}\n` +
          `  new fds: ${extra.join(" ") || "-"}\n  gone fds: ${missing.join(" ") || "-"}`,
      );
    }
    await delay(50);
  }
}

/** fds, eventfds and mappings of `pid` once they stop moving (transient HTTP sockets gone). */
export async function settledStats(pid: number): Promise<ProcStats> {
  let last = procStats(pid);
  for (let i = 0; i < 40; i++) {
    await delay(100);
    const now = procStats(pid);
    if (
      now.fds === last.fds && now.eventfds === last.eventfds && now.memfdMaps === last.memfdMaps
    ) return now;
    last = now;
  }
  return last;
}

// ---- HTTP, one connection per request ----

export interface HttpResult {
  status: number;
  body: string;
  /** Request to complete body, in milliseconds (connection set-up included). */
  ms: number;
}

/** One request on a fresh connection that is closed afterwards (no pooled sockets in the switch). */
export async function http(
  url: string,
  init: RequestInit = {},
  timeoutMs = 10_000,
): Promise<HttpResult> {
  const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
  const t0 = performance.now();
  try {
    const res = await fetch(url, { ...init, client, signal: AbortSignal.timeout(timeoutMs) });
    const body = await res.text();
    return { status: res.status, body, ms: performance.now() - t0 };
  } finally {
    client.close();
  }
}

export async function getJson<T = Record<string, unknown>>(url: string): Promise<T> {
  const r = await http(url);
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${r.body}`);
  return JSON.parse(r.body) as T;
}

export interface PortJson {
  name: string;
  state: string;
  mode?: string;
  /** Negotiated feature names (vhost-user ports). */
  features?: string[];
  queues: { index: number; worker: number }[];
  counters: Record<string, number>;
}

export interface FdbJson {
  mac: string;
  vlan: number;
  port: string;
}

// ---- the switch as a child process ----

/**
 * A switch process (peers/switch_process.ts) on a topology in its own temp dir, with its
 * HTTP endpoint on a free port; it can be stopped and started again on the same topology.
 * "$DIR" in the topology becomes the temp dir.
 */
export class SwitchRig {
  sw!: SwitchProcess;
  url = "";
  /** Milliseconds from spawn to the HTTP endpoint listening (every port started before it). */
  startMs = 0;
  private constructor(readonly dir: string, readonly topologyPath: string) {}

  static async start(topology: Record<string, unknown>, prefix = "vsw-rel-"): Promise<SwitchRig> {
    const dir = await Deno.makeTempDir({ prefix });
    const path = `${dir}/topology.json`;
    const text = JSON.stringify({ http: { listen: "127.0.0.1:0" }, ...topology });
    await Deno.writeTextFile(path, text.replaceAll("$DIR", dir));
    const rig = new SwitchRig(dir, path);
    try {
      await rig.spawn();
    } catch (err) {
      await rig.close();
      throw err;
    }
    return rig;
  }

  sock(name: string): string {
    return `${this.dir}/${name}.sock`;
  }

  get pid(): number {
    return this.sw.pid;
  }

  /** Starts a new switch process on the topology (the previous one must have exited). */
  async spawn(): Promise<void> {
    const t0 = performance.now();
    this.sw = new SwitchProcess(this.topologyPath);
    const line = await this.sw.waitForLine(/HTTP on http:\/\/\S+/, 30_000);
    this.url = line.match(/http:\/\/\S+\//)![0].replace(/\/$/, "");
    this.startMs = performance.now() - t0;
  }

  /** Stops the process with `signal`; resolves with its exit status and how long it took. */
  async stop(signal: Deno.Signal = "SIGTERM", timeoutMs = 10_000) {
    const t0 = performance.now();
    const status = await this.sw.stop(signal, timeoutMs);
    return { status, ms: performance.now() - t0 };
  }

  get<T = Record<string, unknown>>(path: string): Promise<T> {
    return getJson<T>(this.url + path);
  }

  port(name: string): Promise<PortJson> {
    return this.get<PortJson>(`/ports/${name}`);
  }

  async fdb(port?: string): Promise<FdbJson[]> {
    const q = port ? `?port=${port}` : "";
    return (await this.get<{ entries: FdbJson[] }>(`/fdb${q}`)).entries;
  }

  /** Polls the port until `pred` holds; returns it. */
  waitPort(
    name: string,
    pred: (p: PortJson) => boolean,
    what: string,
    timeoutMs = 20_000,
  ): Promise<PortJson> {
    return until(
      `port ${name}: ${what}`,
      async () => {
        const p = await this.port(name);
        return pred(p) ? p : null;
      },
      timeoutMs,
      25,
    ).catch((e) => {
      throw new Error(`${e.message}\nswitch log:\n${this.log(40)}`);
    });
  }

  /** A running port: a front-end attached with its RX and TX rings started. */
  waitRunning(name: string, timeoutMs = 20_000): Promise<PortJson> {
    return this.waitPort(
      name,
      (p) => p.state === "connected" && p.queues.length > 0,
      "connected with running rings",
      timeoutMs,
    );
  }

  proc(): ProcStats {
    return procStats(this.pid);
  }

  log(lines = 60): string {
    return this.sw.output.slice(-lines).join("\n");
  }

  /** Keeps only the last lines of the process output (hostile peers make it log a lot). */
  trimOutput(keep = 2000): void {
    const out = this.sw.output;
    if (out.length > keep) out.splice(0, out.length - keep);
  }

  async close(): Promise<void> {
    await this.sw?.stop("SIGTERM", 5000).catch(() => {});
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

// ---- numbered test frames ----

export const ETHERTYPE_TEST = 0x88b5;

export { formatMac as macString, macToBytes as macBytes } from "../../peers/pcap.ts";
import { formatMac as macString, macToBytes as macBytes } from "../../peers/pcap.ts";

/** A frame carrying `seq` (and `stream`) whose every payload byte is derived from them. */
export function seqFrame(
  dst: string,
  src: string,
  stream: number,
  seq: number,
  length: number,
): Uint8Array {
  const f = new Uint8Array(length);
  f.set(macBytes(dst), 0);
  f.set(macBytes(src), 6);
  f[12] = ETHERTYPE_TEST >> 8;
  f[13] = ETHERTYPE_TEST & 0xff;
  const v = new DataView(f.buffer);
  v.setUint32(14, seq);
  v.setUint16(18, stream);
  v.setUint16(20, length);
  for (let i = 22; i < length; i++) f[i] = (i * 31 + seq * 7 + stream * 13) & 0xff;
  return f;
}

/** The seq of a test frame of `stream`, or -1 if it is not one; -2 if its bytes are wrong. */
export function readSeqFrame(f: Uint8Array, stream: number): number {
  if (f.length < 22 || f[12] !== ETHERTYPE_TEST >> 8 || f[13] !== (ETHERTYPE_TEST & 0xff)) {
    return -1;
  }
  const v = new DataView(f.buffer, f.byteOffset, f.byteLength);
  if (v.getUint16(18) !== stream) return -1;
  const seq = v.getUint32(14);
  if (v.getUint16(20) !== f.length) return -2;
  for (let i = 22; i < f.length; i++) {
    if (f[i] !== ((i * 31 + seq * 7 + stream * 13) & 0xff)) return -2;
  }
  return seq;
}

// ---- a frame pump between two TS front-ends ----

export interface PumpStats {
  sent: [number, number];
  received: [number, number];
  lost: [number, number];
  corrupt: number;
  reordered: number;
  /**
   * Longest time (ms) either direction was seen without receiving while frames were in flight:
   * from the last arrival to the last look that found nothing.
   */
  maxGapMs: number;
}

/**
 * Sends numbered frames both ways between two running TS front-ends (a -> b is stream 0,
 * b -> a stream 1), keeps their RX rings full, and checks every frame that arrives: its bytes,
 * its order, and (after stop) that none went missing.
 */
export class FramePump {
  readonly sent: [number, number] = [0, 0];
  readonly received: [number, number] = [0, 0];
  corrupt = 0;
  reordered = 0;
  maxGapMs = 0;
  /** Frames of other origin the two ends received (floods from other ports). */
  foreign = 0;
  readonly #next: [number, number] = [0, 0];
  readonly #lastRx: [number, number] = [0, 0];
  /** When the last round looked at the rings. */
  #lastRound = 0;
  #running = false;
  #loop: Promise<void> = Promise.resolve();
  #error: unknown = null;

  constructor(
    readonly ends: [VhostFrontend, VhostFrontend],
    readonly macs: [string, string],
    readonly opts: {
      /** Frames sent per direction per round (default 4; a round is about a millisecond). */
      perTick?: number;
      length?: (seq: number) => number;
      tickMs?: number;
      /** Called with frames of other origin that end `to` (0 or 1) received. */
      onOther?: (frame: Uint8Array, to: number) => void;
    } = {},
  ) {}

  start(): this {
    for (const fe of this.ends) {
      const free = fe.rings[0].free.length;
      if (free) fe.postRxBuffers(free);
    }
    this.#running = true;
    const now = performance.now();
    this.#lastRx[0] = this.#lastRx[1] = this.#lastRound = now;
    this.#loop = this.#run().catch((e) => {
      this.#error = e;
    });
    return this;
  }

  #length(seq: number): number {
    return this.opts.length?.(seq) ?? 60 + (seq * 97) % 1455;
  }

  /** One round: reclaim, send, receive and check, refill RX rings. */
  #round(send: boolean): void {
    const now = performance.now();
    for (const d of [0, 1] as const) {
      const from = this.ends[d], to = this.ends[1 - d];
      from.reclaimTx();
      if (send) {
        const n = Math.min(this.opts.perTick ?? 4, from.rings[1].free.length);
        for (let k = 0; k < n; k++) {
          const seq = this.sent[d];
          from.send(seqFrame(this.macs[1 - d], this.macs[d], d, seq, this.#length(seq)));
          this.sent[d]++;
        }
      }
      const frames = to.receive();
      for (const f of frames) {
        const seq = readSeqFrame(f, d);
        if (seq === -1) {
          this.foreign++;
          this.opts.onOther?.(f, 1 - d);
          continue;
        }
        if (seq === -2) {
          this.corrupt++;
          continue;
        }
        if (seq < this.#next[d]) this.reordered++;
        this.#next[d] = seq + 1;
        this.received[d]++;
      }
      if (frames.length) {
        // They arrived at some time since the last round looked: the gap we saw ended then. (On a
        // loaded host this process itself can stall between rounds; that is not the switch's gap.)
        if (send) this.maxGapMs = Math.max(this.maxGapMs, this.#lastRound - this.#lastRx[d]);
        this.#lastRx[d] = now;
      } else if (send && this.sent[d] > this.received[d]) {
        this.maxGapMs = Math.max(this.maxGapMs, now - this.#lastRx[d]);
      } else {
        this.#lastRx[d] = now;
      }
      const free = to.rings[0].free.length;
      if (free) to.postRxBuffers(free);
      to.calls(0);
      from.calls(1);
    }
    this.#lastRound = now;
  }

  async #run(): Promise<void> {
    while (this.#running) {
      this.#round(true);
      await delay(this.opts.tickMs ?? 1);
    }
  }

  /** Throws if the pump itself failed. */
  check(): void {
    if (this.#error) throw this.#error;
  }

  /** Stops sending, lets what is in flight arrive (bounded), and returns the figures. */
  async stop(drainMs = 2000): Promise<PumpStats> {
    this.#running = false;
    await this.#loop;
    this.check();
    const deadline = Date.now() + drainMs;
    while (
      (this.received[0] < this.sent[0] || this.received[1] < this.sent[1]) &&
      Date.now() < deadline
    ) {
      this.#round(false);
      await delay(2);
    }
    return this.stats();
  }

  stats(): PumpStats {
    return {
      sent: [...this.sent],
      received: [...this.received],
      lost: [this.sent[0] - this.received[0], this.sent[1] - this.received[1]],
      corrupt: this.corrupt,
      reordered: this.reordered,
      maxGapMs: Math.round(this.maxGapMs),
    };
  }

  /** Frames received so far, both directions. */
  get total(): number {
    return this.received[0] + this.received[1];
  }
}

export function formatPump(s: PumpStats): string {
  return `sent ${s.sent.join("/")}, received ${s.received.join("/")}, lost ${s.lost.join("/")}, ` +
    `corrupt ${s.corrupt}, reordered ${s.reordered}, longest gap ${s.maxGapMs} ms`;
}

// ---- a tiny host (ARP + ICMP echo) on a TS front-end ----

function ipBytes(ip: string): Uint8Array {
  return Uint8Array.from(ip.split("."), Number);
}

function checksum(b: Uint8Array, off: number, len: number): number {
  let sum = 0;
  for (let i = 0; i < len; i += 2) sum += (b[off + i] << 8) | (i + 1 < len ? b[off + i + 1] : 0);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return ~sum & 0xffff;
}

const same = (a: Uint8Array, aOff: number, b: Uint8Array) => b.every((x, i) => a[aOff + i] === x);

/**
 * Answers ARP requests for `ip` and ICMP echo requests to it, from a running TS front-end, so
 * a guest can `ping` it through the switch. Counts what it answered.
 */
export class PingResponder {
  arpReplies = 0;
  echoReplies = 0;
  /** Source MACs of every frame received. */
  readonly seen = new Map<string, number>();
  #running = false;
  #loop: Promise<void> = Promise.resolve();
  readonly #mac: Uint8Array;
  readonly #ip: Uint8Array;

  constructor(readonly fe: VhostFrontend, readonly mac: string, readonly ip: string) {
    this.#mac = macBytes(mac);
    this.#ip = ipBytes(ip);
  }

  start(): this {
    this.fe.postRxBuffers(this.fe.rings[0].free.length);
    this.#running = true;
    this.#loop = this.#run();
    return this;
  }

  async stop(): Promise<void> {
    this.#running = false;
    await this.#loop;
  }

  async #run(): Promise<void> {
    while (this.#running) {
      this.poll();
      await delay(1);
    }
  }

  poll(): void {
    const fe = this.fe;
    if (fe.peerClosed) return;
    fe.reclaimTx();
    for (const f of fe.receive()) {
      const src = macString(f, 6);
      this.seen.set(src, (this.seen.get(src) ?? 0) + 1);
      const reply = this.#answer(f);
      if (reply && fe.rings[1].free.length) fe.send(reply);
    }
    const free = fe.rings[0].free.length;
    if (free) fe.postRxBuffers(free);
    fe.calls(0);
    fe.calls(1);
  }

  #answer(f: Uint8Array): Uint8Array | null {
    const type = (f[12] << 8) | f[13];
    if (type === 0x0806 && f.length >= 42 && f[21] === 1 && same(f, 38, this.#ip)) {
      const r = new Uint8Array(42);
      r.set(f.subarray(6, 12), 0);
      r.set(this.#mac, 6);
      r.set(f.subarray(12, 20), 12); // ARP header: Ethernet/IPv4
      r[21] = 2; // reply
      r.set(this.#mac, 22);
      r.set(this.#ip, 28);
      r.set(f.subarray(22, 32), 32); // target: the requester's MAC and IP
      this.arpReplies++;
      return r;
    }
    if (type !== 0x0800 || f.length < 34 || f[23] !== 1 || !same(f, 30, this.#ip)) return null;
    const ihl = (f[14] & 0xf) * 4;
    const total = (f[16] << 8) | f[17];
    const icmp = 14 + ihl;
    if (f[icmp] !== 8 || 14 + total > f.length) return null;
    const r = f.slice(0, 14 + total);
    r.set(f.subarray(6, 12), 0);
    r.set(this.#mac, 6);
    r.set(f.subarray(30, 34), 26); // source IP <- their destination (us)
    r.set(f.subarray(26, 30), 30); // destination IP <- their source
    r[22] = 64; // TTL
    r[24] = r[25] = 0;
    const ipSum = checksum(r, 14, ihl);
    r[24] = ipSum >> 8;
    r[25] = ipSum & 0xff;
    r[icmp] = 0; // echo reply
    r[icmp + 2] = r[icmp + 3] = 0;
    const icmpSum = checksum(r, icmp, 14 + total - icmp);
    r[icmp + 2] = icmpSum >> 8;
    r[icmp + 3] = icmpSum & 0xff;
    this.echoReplies++;
    return r;
  }
}

// ---- QMP (QEMU machine protocol) ----

/** Runs one QMP command on QEMU's monitor socket; returns its "return" value. */
export async function qmp(
  path: string,
  command: string,
  args?: Record<string, unknown>,
  timeoutMs = 10_000,
): Promise<unknown> {
  const conn = await Deno.connect({ transport: "unix", path });
  const timer = setTimeout(() => conn.close(), timeoutMs);
  const enc = new TextEncoder();
  const lines = conn.readable.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  const next = async (): Promise<Record<string, unknown>> => {
    for (;;) {
      const nl = buf.indexOf("\n");
      if (nl >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line);
        if (!("event" in msg)) return msg;
        continue;
      }
      const r = await lines.read();
      if (r.done) throw new Error(`QMP ${path}: closed while waiting for ${command}`);
      buf += r.value;
    }
  };
  const writer = conn.writable.getWriter();
  try {
    await next(); // greeting
    await writer.write(enc.encode(JSON.stringify({ execute: "qmp_capabilities" }) + "\n"));
    await next();
    await writer.write(enc.encode(JSON.stringify({ execute: command, arguments: args }) + "\n"));
    const reply = await next();
    if ("error" in reply) throw new Error(`QMP ${command}: ${JSON.stringify(reply.error)}`);
    return reply.return;
  } finally {
    clearTimeout(timer);
    await lines.cancel().catch(() => {});
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
}

// ---- hostile peers in their own process ----

export type FloodMode = "messages" | "bytes";

export interface FloodResult {
  /** Well-framed messages written (messages mode). */
  messages: number;
  bytes: number;
  /** Connections made (bytes mode reconnects whenever the switch hangs up). */
  connections: number;
  /** Times the switch hung up on us. */
  hangups: number;
}

export interface Flooder {
  pid: number;
  result: Promise<FloodResult>;
  kill(): void;
}

/**
 * Starts a flooder process against a vhost-user socket for `seconds`:
 * - "messages": one connection, well-framed requests the switch must refuse (no reply due),
 *   written back to back as fast as the socket takes them, never reading;
 * - "bytes": random bytes; whenever the switch hangs up, it connects again at once.
 */
export function startFlooder(socket: string, mode: FloodMode, seconds: number): Flooder {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", `${REPO}deno.json`, SELF, "flood", socket, mode, `${seconds}`],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const result = child.output().then((out) => {
    const text = new TextDecoder().decode(out.stdout).trim();
    const last = text.split("\n").pop() ?? "";
    try {
      return JSON.parse(last) as FloodResult;
    } catch {
      throw new Error(`flooder exited ${out.code} without a result: ${text}`);
    }
  });
  return {
    pid: child.pid,
    result,
    kill: () => {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
    },
  };
}

/** A well-framed 20-byte request the switch must refuse without replying. */
function refusedMessage(i: number): Uint8Array {
  switch (i % 4) {
    case 0: // unknown request
      return P.encodeMessage(1000 + (i % 50), P.VHOST_USER_VERSION, P.u64Payload(BigInt(i)));
    case 1: // ring out of range
      return P.encodeMessage(P.VHOST_USER_SET_VRING_NUM, 1, P.vringStatePayload(200, 256));
    case 2: // not a power of two
      return P.encodeMessage(P.VHOST_USER_SET_VRING_NUM, 1, P.vringStatePayload(0, 300));
    default: // base out of range
      return P.encodeMessage(P.VHOST_USER_SET_VRING_BASE, 1, P.vringStatePayload(0, 70000));
  }
}

const REFUSED_MESSAGE_BYTES = 20;

async function flood(socket: string, mode: FloodMode, seconds: number): Promise<FloodResult> {
  const res: FloodResult = { messages: 0, bytes: 0, connections: 0, hangups: 0 };
  const end = Date.now() + seconds * 1000;
  // 3000 whole messages, written in a circle (a partial write continues mid-block).
  const block = new Uint8Array(3000 * REFUSED_MESSAGE_BYTES);
  for (let i = 0; i < 3000; i++) block.set(refusedMessage(i), i * REFUSED_MESSAGE_BYTES);
  const random = new Uint8Array(4096);
  let fd = -1;
  let off = 0;
  while (Date.now() < end) {
    if (fd < 0) {
      try {
        fd = unixConnect(socket);
        res.connections++;
        off = 0;
      } catch {
        await delay(1);
        continue;
      }
    }
    const data = mode === "messages" ? block.subarray(off) : crypto.getRandomValues(random);
    let n: number;
    try {
      n = sendWithFds(fd, data);
    } catch {
      n = -2; // EPIPE / ECONNRESET: the switch hung up
    }
    if (n === -2) {
      res.hangups++;
      closeFd(fd);
      fd = -1;
      continue;
    }
    if (n < 0) {
      await delay(0); // the socket is full: the switch is as busy as we can make it
      continue;
    }
    res.bytes += n;
    off = (off + n) % block.length;
  }
  closeFd(fd);
  if (mode === "messages") res.messages = Math.floor(res.bytes / REFUSED_MESSAGE_BYTES);
  return res;
}

if (import.meta.main) {
  const [cmd, socket, mode, seconds] = Deno.args;
  if (cmd !== "flood" || !socket || (mode !== "messages" && mode !== "bytes")) {
    console.error("usage: reliability.ts flood <socket> messages|bytes <seconds>");
    Deno.exit(2);
  }
  console.log(JSON.stringify(await flood(socket, mode, Number(seconds ?? 5))));
}
