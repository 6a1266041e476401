// Drives a real `dpdk-testpmd` in interactive mode over stdin, for integration tests.
// Test machines have no hugepages, so every process gets --no-huge, its own --file-prefix (two
// DPDK processes must not share runtime files) and a small mbuf pool. Without hugepages EAL touches
// all of -m at startup (-m 1024 took 2-4 s here), so -m is sized to the mbuf pool.

import { readPcapFrames, writePcap } from "./pcap.ts";

const PROMPT = "testpmd> ";
const TAIL_CHARS = 4000;
const TRANSCRIPT_CHARS = 1 << 20;

export interface TestpmdOptions {
  /** Label used in error messages. */
  name?: string;
  binary?: string;
  /** EAL --lcores mapping; testpmd needs a main and a forwarding lcore. */
  lcores?: string;
  /** EAL -m; by default enough for the mbuf pool (at least 256). */
  memMb?: number;
  /** Defaults to a unique prefix; the runtime dir under it is removed on exit. */
  filePrefix?: string;
  vdevs?: string[];
  /** Extra EAL arguments (before `--`). */
  eal?: string[];
  /** testpmd arguments after `--` (`-i` and the mbuf count are added). */
  args?: string[];
  totalNumMbufs?: number;
  /** Needed by virtio-user without hugepages; harmless elsewhere. */
  singleFileSegments?: boolean;
  startTimeoutMs?: number;
  cmdTimeoutMs?: number;
  /** Don't fail `launch` when testpmd reports that a port failed to start. */
  allowPortFailure?: boolean;
}

export interface PortStats {
  port: number;
  rxPackets: number;
  rxMissed: number;
  rxBytes: number;
  rxErrors: number;
  rxNombuf: number;
  txPackets: number;
  txErrors: number;
  txBytes: number;
}

export interface VirtioUserVdevOptions {
  index: number;
  path: string;
  mac?: string;
  /** testpmd listens on `path` and the back-end connects. */
  server?: boolean;
  mrgRxbuf?: boolean;
  inOrder?: boolean;
  packedVq?: boolean;
  queueSize?: number;
  queues?: number;
}

const flag = (v: boolean | undefined, key: string) => v === undefined ? [] : [`${key}=${+v}`];

export function virtioUserVdev(o: VirtioUserVdevOptions): string {
  return [
    `net_virtio_user${o.index}`,
    `path=${o.path}`,
    ...(o.mac ? [`mac=${o.mac}`] : []),
    ...(o.queues ? [`queues=${o.queues}`] : []),
    ...(o.queueSize ? [`queue_size=${o.queueSize}`] : []),
    ...flag(o.server, "server"),
    ...flag(o.mrgRxbuf, "mrg_rxbuf"),
    ...flag(o.inOrder, "in_order"),
    ...flag(o.packedVq, "packed_vq"),
  ].join(",");
}

/** DPDK's own vhost-user back-end port; `client` makes it connect instead of listen. */
export function vhostVdev(o: { index: number; iface: string; client?: boolean; queues?: number }) {
  return [
    `net_vhost${o.index}`,
    `iface=${o.iface}`,
    ...(o.queues ? [`queues=${o.queues}`] : []),
    ...flag(o.client, "client"),
  ].join(",");
}

/** pcap PMD port: frames of `rx` are received once, transmitted frames are written to `tx`. */
export function pcapVdev(o: { index: number; rx: string; tx: string }): string {
  return `net_pcap${o.index},rx_pcap=${o.rx},tx_pcap=${o.tx}`;
}

function findInPath(bin: string): string | null {
  if (bin.includes("/")) return bin;
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${bin}`).isFile) return `${dir}/${bin}`;
    } catch { /* not here */ }
  }
  return null;
}

/** Why testpmd-based tests cannot run here, or null when they can. */
export function testpmdAvailable(opts: { pcap?: boolean } = {}): string | null {
  if (Deno.build.os !== "linux") return "dpdk-testpmd tests need Linux";
  if (!findInPath("dpdk-testpmd")) {
    return "dpdk-testpmd not found in PATH (apt-get install dpdk-dev)";
  }
  if (!findInPath("stdbuf")) return "stdbuf (coreutils) not found; needed to unbuffer testpmd";
  if (opts.pcap) {
    try {
      const found = [...Deno.readDirSync("/usr/lib/x86_64-linux-gnu/dpdk")].some((d) =>
        [...Deno.readDirSync(`/usr/lib/x86_64-linux-gnu/dpdk/${d.name}`)]
          .some((f) => f.name.startsWith("librte_net_pcap.so"))
      );
      if (!found) return "DPDK pcap PMD (librte_net_pcap.so) not installed";
    } catch {
      return "DPDK PMD directory /usr/lib/x86_64-linux-gnu/dpdk not found";
    }
  }
  return null;
}

function defaultMemMb(opts: TestpmdOptions): number {
  const size = opts.args?.find((a) => a.startsWith("--mbuf-size="))?.split("=")[1];
  const bytes = (opts.totalNumMbufs ?? 16384) * (Number(size ?? 2176) + 256);
  return Math.max(256, 128 + Math.ceil(bytes / 2 ** 20));
}

let instances = 0;

export class TestpmdError extends Error {}

export class Testpmd implements AsyncDisposable {
  readonly name: string;
  readonly filePrefix: string;
  readonly argv: string[];
  #child: Deno.ChildProcess;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;
  /** Unconsumed stdout since the last prompt. */
  #pending = "";
  #transcript = "";
  #wakers: (() => void)[] = [];
  #status: Deno.CommandStatus | null = null;
  #exited: Promise<void>;
  #queue: Promise<unknown> = Promise.resolve();
  #cmdTimeoutMs: number;
  #owed = 0;

  private constructor(opts: TestpmdOptions) {
    instances++;
    this.name = opts.name ?? `testpmd${instances}`;
    this.filePrefix = opts.filePrefix ?? `vst${Deno.pid}_${instances}`;
    this.#cmdTimeoutMs = opts.cmdTimeoutMs ?? 15_000;
    this.argv = [
      opts.binary ?? "dpdk-testpmd",
      `--lcores=${opts.lcores ?? "0@0,1@1"}`,
      "--no-pci",
      "--no-huge",
      "-m",
      String(opts.memMb ?? defaultMemMb(opts)),
      `--file-prefix=${this.filePrefix}`,
      ...(opts.singleFileSegments === false ? [] : ["--single-file-segments"]),
      ...(opts.vdevs ?? []).flatMap((v) => ["--vdev", v]),
      ...(opts.eal ?? []),
      "--",
      "-i",
      `--total-num-mbufs=${opts.totalNumMbufs ?? 16384}`,
      ...(opts.args ?? []),
    ];
    // stdout to a pipe is block-buffered (command output would arrive after the prompt),
    // and stderr goes to the same pipe so errors stay in order with the prompts.
    this.#child = new Deno.Command("sh", {
      args: ["-c", 'exec 2>&1; exec stdbuf -o0 -e0 "$@"', "sh", ...this.argv],
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    this.#stdin = this.#child.stdin.getWriter();
    const out = this.#pump(this.#child.stdout);
    this.#exited = Promise.all([this.#child.status, out]).then(([s]) => {
      this.#status = s;
      this.#wake();
    });
  }

  /** Spawns testpmd and waits for its first prompt. */
  static async launch(opts: TestpmdOptions = {}): Promise<Testpmd> {
    const t = new Testpmd(opts);
    try {
      const boot = await t.#readPrompt(opts.startTimeoutMs ?? 60_000, "the first prompt");
      // A vdev that fails to probe (e.g. virtio-user without a back-end) is just left out.
      const probe = boot.match(/^.*failed to initialize \S+ device.*$/m);
      if (probe) throw t.#error(`vdev probe failed: ${probe[0]}`);
      const failed = boot.match(/^.*(Start ports failed|Fail to (start|configure) port).*$/m);
      if (failed && !opts.allowPortFailure) throw t.#error(`ports failed to start: ${failed[0]}`);
    } catch (e) {
      await t.kill();
      throw e;
    }
    return t;
  }

  get pid(): number {
    return this.#child.pid;
  }

  get exited(): boolean {
    return this.#status !== null;
  }

  /** Everything testpmd wrote to stdout and stderr so far (capped at 1 MiB). */
  get transcript(): string {
    return this.#transcript;
  }

  tail(chars = TAIL_CHARS): string {
    return this.#transcript.slice(-chars);
  }

  async #pump(stream: ReadableStream<Uint8Array>) {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      this.#pending += text;
      this.#transcript = (this.#transcript + text).slice(-TRANSCRIPT_CHARS);
      this.#wake();
    }
  }

  #wake() {
    const w = this.#wakers;
    this.#wakers = [];
    w.forEach((f) => f());
  }

  #error(what: string): TestpmdError {
    const state = this.#status ? `exited with code ${this.#status.code}` : "still running";
    return new TestpmdError(
      `${this.name} (pid ${this.pid}, ${state}): ${what}\n` +
        `--- last output of ${this.name} ---\n${this.tail()}\n--- end ---`,
    );
  }

  /** Waits until `probe` returns a value, the process exits, or the timeout passes. */
  async #until<T>(probe: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const v = probe();
      if (v !== undefined) return v;
      if (this.#status) throw this.#error(`exited while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw this.#error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise<void>((r) => this.#wakers.push(r)),
        new Promise<void>((r) => timer = setTimeout(r, left)),
      ]);
      clearTimeout(timer);
    }
  }

  /** Consumes stdout up to and including the next prompt; returns what came before it. */
  #readPrompt(timeoutMs: number, what: string): Promise<string> {
    return this.#until(
      () => {
        const i = this.#pending.indexOf(PROMPT);
        if (i < 0) return undefined;
        const text = this.#pending.slice(0, i);
        this.#pending = this.#pending.slice(i + PROMPT.length);
        return text;
      },
      timeoutMs,
      what,
    );
  }

  async #write(text: string) {
    try {
      await this.#stdin.write(new TextEncoder().encode(text));
    } catch (e) {
      throw this.#error(`cannot write to stdin: ${e}`);
    }
  }

  /** Runs one command line and returns its output (without the echoed command). */
  cmd(line: string, timeoutMs = this.#cmdTimeoutMs): Promise<string> {
    const run = async () => {
      const deadline = Date.now() + timeoutMs;
      // A timed-out command's prompt comes later; skip it so outputs stay paired.
      for (; this.#owed > 0; this.#owed--) {
        await this.#readPrompt(deadline - Date.now(), "the prompt of a timed-out command");
      }
      await this.#write(line + "\n");
      const out = await this.#readPrompt(timeoutMs, `the output of "${line}"`).catch((e) => {
        this.#owed++;
        throw e;
      });
      // The line editor echoes the command; asynchronous events may be printed before it.
      const text = out.replaceAll("\r", "");
      const echo = text.indexOf(line + "\n");
      return echo >= 0 ? text.slice(echo + line.length + 1) : text;
    };
    const p = this.#queue.then(run, run);
    this.#queue = p.catch(() => {});
    return p;
  }

  start(): Promise<string> {
    return this.cmd("start");
  }

  stop(): Promise<string> {
    return this.cmd("stop");
  }

  async portStats(): Promise<PortStats[]> {
    const out = await this.cmd("show port stats all");
    const blocks = out.split(/#+ NIC statistics for port /).slice(1);
    return blocks.map((b) => {
      const num = (key: string) => {
        const m = b.match(new RegExp(`${key}:\\s*(\\d+)`));
        if (!m) throw this.#error(`no ${key} in port stats:\n${out}`);
        return Number(m[1]);
      };
      return {
        port: parseInt(b),
        rxPackets: num("RX-packets"),
        rxMissed: num("RX-missed"),
        rxBytes: num("RX-bytes"),
        rxErrors: num("RX-errors"),
        rxNombuf: num("RX-nombuf"),
        txPackets: num("TX-packets"),
        txErrors: num("TX-errors"),
        txBytes: num("TX-bytes"),
      };
    });
  }

  /**
   * A port's extended statistics by name (`show port xstats N`). The virtio PMD counts per
   * queue and by RFC 2819 size bin (e.g. `rx_q0_size_1024_1518_packets`), so a stream of one
   * frame size can be told from other traffic arriving on the same port.
   */
  async xstats(port: number): Promise<Record<string, number>> {
    const out = await this.cmd(`show port xstats ${port}`);
    if (!/NIC extended statistics for port/.test(out)) {
      throw this.#error(`no extended statistics for port ${port}:\n${out}`);
    }
    const stats: Record<string, number> = {};
    for (const m of out.matchAll(/^\s*(\w+):\s*(\d+)\s*$/gm)) stats[m[1]] = Number(m[2]);
    return stats;
  }

  /** Link status per port id, from `show port summary all`. */
  async linkStatus(): Promise<Map<number, boolean>> {
    const out = await this.cmd("show port summary all");
    const links = new Map<number, boolean>();
    for (const m of out.matchAll(/^(\d+)\s+\S+\s+\S+\s+\S+\s+(up|down)\b/gm)) {
      links.set(Number(m[1]), m[2] === "up");
    }
    return links;
  }

  /** Polls `check` (e.g. over portStats) until it returns a value; throws with the tail on timeout. */
  async poll<T>(
    check: () => Promise<T | undefined>,
    what: string,
    timeoutMs = 20_000,
    intervalMs = 100,
  ): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const v = await check();
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw this.#error(`timed out after ${timeoutMs} ms: ${what}`);
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }

  /** Waits until every listed port (default: all) reports link up. */
  async waitLinkUp(ports?: number[], timeoutMs = 20_000): Promise<void> {
    await this.poll(
      async () => {
        const links = await this.linkStatus();
        return (ports ?? [...links.keys()]).every((p) => links.get(p)) || undefined;
      },
      `link up on ports ${ports ?? "all"}`,
      timeoutMs,
    );
  }

  /** Sends `quit`, waiting up to `timeoutMs`; kills testpmd if it does not exit by then. */
  async quit(timeoutMs = 10_000): Promise<Deno.CommandStatus> {
    if (!this.#status) {
      await this.#write("quit\n").catch(() => {});
      await this.#stdin.close().catch(() => {});
      const timer = setTimeout(() => this.#signal("SIGKILL"), timeoutMs);
      await this.#exited;
      clearTimeout(timer);
    }
    await this.#cleanup();
    return this.#status!;
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async kill(graceMs = 3_000): Promise<Deno.CommandStatus> {
    if (!this.#status) {
      this.#signal("SIGTERM");
      const timer = setTimeout(() => this.#signal("SIGKILL"), graceMs);
      await this.#exited;
      clearTimeout(timer);
    }
    await this.#stdin.close().catch(() => {});
    await this.#cleanup();
    return this.#status!;
  }

  #signal(sig: Deno.Signal) {
    try {
      this.#child.kill(sig);
    } catch { /* already gone */ }
  }

  async #cleanup() {
    const base = Deno.uid() === 0 ? "/var/run" : Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp";
    await Deno.remove(`${base}/dpdk/${this.filePrefix}`, { recursive: true }).catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.quit(5_000);
  }
}

export interface ExchangeOptions {
  /** Directory for the pcap files (the caller removes it). */
  dir: string;
  /** vhost-user sockets of virtio_user0, virtio_user1, ... (two or more). */
  sockets: string[];
  /** Frames sent out of virtio_user0 and virtio_user1. */
  send: Uint8Array[][];
  macs?: string[];
  /** Options for both virtio-user ports (server, mrgRxbuf, inOrder, packedVq, ...). */
  virtio?: Omit<VirtioUserVdevOptions, "index" | "path" | "mac">;
  /** Extra testpmd arguments, e.g. --mbuf-size=10240. */
  args?: string[];
  lcores?: string;
  name?: string;
  /** More launch options, e.g. allowPortFailure when `launched` fixes port config. */
  testpmd?: Pick<
    TestpmdOptions,
    "allowPortFailure" | "eal" | "startTimeoutMs" | "cmdTimeoutMs" | "memMb"
  >;
  /**
   * Runs while testpmd starts. With `server: true` testpmd blocks before its first prompt
   * until a back-end connects to each socket in turn, so start a connecting back-end here.
   */
  launching?: () => Promise<void>;
  /** Runs once testpmd is up, before waiting for links (e.g. extra port config). */
  launched?: (fe: Testpmd) => Promise<void>;
  /** Runs once both virtio-user links are up, before forwarding starts. */
  linked?: (fe: Testpmd) => Promise<void>;
  /**
   * Frame counts on [virtio_user0, virtio_user1] that end the wait early; otherwise (or if
   * never reached) it ends when output has been quiet for `settleMs`. Leave it out when
   * checking that no extra frames arrive.
   */
  expect?: number[];
  /** How long output counters must stay still to count as done. */
  settleMs?: number;
  timeoutMs?: number;
}

export interface ExchangeResult {
  /** Frames received by virtio_user0, virtio_user1, ..., in order. */
  received: Uint8Array[][];
  /**
   * Front-end port stats after forwarding stopped, by testpmd port id: with two virtio-user
   * ports 0 pcap0, 1 vu0, 2 vu1, 3 pcap1; in general `virtioPort(i)` and `pcapPort(i)`.
   */
  stats: PortStats[];
  transcript: string;
}

let exchanges = 0;

/**
 * testpmd port ids of `exchangeFrames`: io forwarding pairs ports 2k and 2k+1, so each
 * virtio-user port sits beside its pcap port, as pcap0 vu0 vu1 pcap1 pcap2 vu2 vu3 pcap3 ...
 */
export const pcapPort = (i: number) => i % 2 ? 2 * i + 1 : 2 * i;
export const virtioPort = (i: number) => i % 2 ? 2 * i : 2 * i + 1;

/**
 * One testpmd front-end in io mode with pcap{i} <-> virtio_user{i} for each socket: frames of
 * `send[i]` leave through virtio_user{i}; what virtio_user{i} receives is returned.
 */
export async function exchangeFrames(o: ExchangeOptions): Promise<ExchangeResult> {
  const n = ++exchanges;
  const file = (kind: string, i: number) => `${o.dir}/${kind}${i}_${n}.pcap`;
  const ends = o.sockets.map((_, i) => i);
  if (ends.length < 2 || o.send.length !== ends.length) {
    throw new Error(`exchangeFrames: ${o.sockets.length} sockets, ${o.send.length} frame lists`);
  }
  for (const i of ends) await writePcap(file("in", i), o.send[i]);
  const macs = o.macs ?? ends.map((i) => `02:00:00:00:00:${(i + 1).toString(16).padStart(2, "0")}`);
  const vdevs: string[] = [];
  for (const i of ends) {
    const pcap = pcapVdev({ index: i, rx: file("in", i), tx: file("out", i) });
    const vu = virtioUserVdev({ ...o.virtio, index: i, path: o.sockets[i], mac: macs[i] });
    vdevs.push(...(i % 2 ? [vu, pcap] : [pcap, vu]));
  }
  const [launch, hook] = await Promise.allSettled([
    Testpmd.launch({
      ...o.testpmd,
      name: o.name ?? `frontend${n}`,
      lcores: o.lcores ?? "0@1,1@0",
      vdevs,
      // Without --no-flush-rx, `start` drains (and loses) the frames the pcap ports have read.
      args: ["--forward-mode=io", "--no-flush-rx", ...(o.args ?? [])],
    }),
    o.launching?.(),
  ]);
  await using fe = launch.status === "fulfilled" ? launch.value : null;
  if (!fe) throw (launch as PromiseRejectedResult).reason;
  if (hook.status === "rejected") throw hook.reason;
  await o.launched?.(fe);
  await fe.waitLinkUp(ends.map(virtioPort), o.timeoutMs);
  await o.linked?.(fe);
  await fe.start();
  let last = "";
  let still = Date.now();
  await fe.poll(
    async () => {
      const st = await fe.portStats();
      const counts = ends.map((i) => st[pcapPort(i)].txPackets);
      const read = ends.every((i) => st[pcapPort(i)].rxPackets === o.send[i].length);
      if (read && o.expect && counts.every((c, i) => c >= o.expect![i])) return true;
      if (String(counts) !== last) [last, still] = [String(counts), Date.now()];
      return (read && Date.now() - still >= (o.settleMs ?? 500)) || undefined;
    },
    "the pcap ports to read all frames and output to settle",
    o.timeoutMs ?? 20_000,
    50,
  );
  await fe.stop();
  const stats = await fe.portStats();
  // The pcap PMD's dumpers are complete once its ports are closed.
  await fe.quit();
  return {
    received: await Promise.all(ends.map((i) => readPcapFrames(file("out", i)))),
    stats,
    transcript: fe.transcript,
  };
}
