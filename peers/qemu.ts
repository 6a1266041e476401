// Boots tiny QEMU/TCG guests whose virtio-net NICs attach to vhost-user sockets, and runs
// shell commands in them over the serial console. Image: peers/build_guest.sh.
import { existsSync, readdirSync } from "node:fs";
import { delimiter, join } from "node:path";
import { fileURLToPath } from "node:url";

export const READY_MARKER = "VSGUEST-READY";
const BUILD_SCRIPT = fileURLToPath(new URL("./build_guest.sh", import.meta.url));
const IMAGE_DIR = fileURLToPath(new URL("../.cache/guest/", import.meta.url));
const QEMU = "qemu-system-x86_64";
/** What busybox sh prints when it starts on the console. */
const SHELL_BANNER = "built-in shell (ash)";
// The guest tty reads canonical lines of at most 4095 bytes.
const MAX_CMD_BYTES = 3000;

export interface GuestNic {
  /** vhost-user unix socket path. */
  socket: string;
  mac: string;
  /** QEMU listens on `socket` (chardev server=on,wait=off) and the switch connects. */
  server?: boolean;
  /** Client mode only: seconds between QEMU's reconnect attempts after the back-end goes away. */
  reconnect?: number;
  /** Extra virtio-net-pci properties, e.g. "mrg_rxbuf=off,host_mtu=9000". */
  deviceOpts?: string;
}

export interface GuestOptions {
  name: string;
  nics: GuestNic[];
  /** Address for eth0, e.g. "10.0.0.1/24". */
  ip?: string;
  /** Address for eth1 (when a second NIC exists). */
  ip2?: string;
  memMB?: number;
  bootTimeoutMs?: number;
  /** Extra kernel command line arguments. */
  append?: string;
  /** Called with every console line (and build/QEMU stderr lines). */
  log?: (line: string) => void;
  /** A QMP monitor socket QEMU listens on at this path (e.g. for `system_reset`). */
  qmp?: string;
  /** A reset or `reboot` restarts the guest (init runs again) instead of QEMU exiting. */
  allowReboot?: boolean;
  /**
   * Refuse to start with any device that cannot be migrated (QEMU -only-migratable): a
   * vhost-user back-end without dirty logging makes QEMU exit at once.
   */
  onlyMigratable?: boolean;
}

export interface RunResult {
  code: number;
  output: string;
}

const inPath = (cmd: string) =>
  (Deno.env.get("PATH") ?? "").split(delimiter).some((d) => d && existsSync(join(d, cmd)));

/** Reason why guests cannot boot on this host, or null when all tools are present. */
export function guestToolsAvailable(): string | null {
  if (!inPath(QEMU)) return `${QEMU} not found (apt-get install qemu-system-x86)`;
  if (!existsSync("/var/lib/dpkg/info/busybox-static.list") || !existsSync("/bin/busybox")) {
    return "static busybox not found (apt-get install busybox-static)";
  }
  const kernels = existsSync("/boot") ? readdirSync("/boot") : [];
  const ok = kernels.some((f) =>
    f.startsWith("vmlinuz-") && existsSync(`/lib/modules/${f.slice(8)}/kernel`)
  );
  return ok ? null : "no kernel with modules in /boot (apt-get install linux-image-amd64)";
}

let imagePromise: Promise<{ kernel: string; initrd: string }> | undefined;

/** Builds (or reuses the cached) guest image; runs the fixture script once per process. */
export function ensureGuestImage(log?: (line: string) => void) {
  imagePromise ??= (async () => {
    const out = await new Deno.Command("bash", {
      args: [BUILD_SCRIPT],
      env: { GUEST_OUT_DIR: IMAGE_DIR },
      stdin: "null",
    }).output();
    const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
    for (const l of text.split("\n")) if (l) log?.(l);
    if (!out.success) throw new Error(`build_guest.sh failed (exit ${out.code}):\n${text}`);
    return { kernel: join(IMAGE_DIR, "vmlinuz"), initrd: join(IMAGE_DIR, "initramfs.gz") };
  })();
  imagePromise.catch(() => imagePromise = undefined); // Let a later call retry.
  return imagePromise;
}

function qemuArgs(opts: GuestOptions, kernel: string, initrd: string): string[] {
  const mem = opts.memMB ?? 256;
  // no_timer_check: a TCG guest on a loaded host can miss the boot-time timer check and panic
  // ("IO-APIC + timer doesn't work"); the timer works, it only ticked late.
  const append = ["console=ttyS0", "quiet", "panic=-1", "no_timer_check", `vs.name=${opts.name}`];
  if (opts.ip) append.push(`vs.ip=${opts.ip}`);
  if (opts.ip2) append.push(`vs.ip2=${opts.ip2}`);
  if (opts.append) append.push(opts.append);
  // Serial on stdio with no monitor multiplexed in: every byte we write reaches the guest.
  const args = ["-accel", "tcg", "-m", String(mem)];
  // vhost-user needs guest RAM the back-end can map.
  args.push("-object", `memory-backend-memfd,id=mem,size=${mem}M,share=on`);
  args.push("-numa", "node,memdev=mem", "-nodefaults", "-display", "none", "-serial", "stdio");
  args.push("-monitor", "none", ...(opts.allowReboot ? [] : ["-no-reboot"]), "-net", "none");
  if (opts.qmp) args.push("-qmp", `unix:${opts.qmp.replaceAll(",", ",,")},server=on,wait=off`);
  if (opts.onlyMigratable) args.push("-only-migratable");
  args.push("-kernel", kernel, "-initrd", initrd, "-append", append.join(" "));
  opts.nics.forEach((nic, i) => {
    let chardev = `socket,id=c${i},path=${nic.socket.replaceAll(",", ",,")}`;
    if (nic.server) chardev += ",server=on,wait=off";
    if (nic.reconnect !== undefined) chardev += `,reconnect=${nic.reconnect}`;
    // vectors=0: QEMU 7.2 + TCG segfaults with MSI-X on a vhost-user NIC.
    let dev = `virtio-net-pci,netdev=n${i},mac=${nic.mac},vectors=0`;
    if (nic.deviceOpts) dev += `,${nic.deviceOpts}`;
    args.push("-chardev", chardev, "-netdev", `vhost-user,id=n${i},chardev=c${i}`);
    args.push("-device", dev);
  });
  return args;
}

/** Boots a guest and resolves once its shell is ready. */
export async function bootGuest(opts: GuestOptions): Promise<Guest> {
  const guest = await spawnGuest(opts, []);
  try {
    await guest.waitForReady(opts.bootTimeoutMs ?? 90_000);
  } catch (e) {
    await guest.kill();
    throw e;
  }
  return guest;
}

/**
 * Starts the destination of a live migration: the same machine as `opts` describes, waiting on
 * `uri` (e.g. "unix:/path") for the source's state instead of booting. Its console is the
 * migrated guest's once the migration completed.
 */
export function incomingGuest(opts: GuestOptions, uri: string): Promise<Guest> {
  return spawnGuest(opts, ["-incoming", uri]);
}

async function spawnGuest(opts: GuestOptions, extra: string[]): Promise<Guest> {
  const missing = guestToolsAvailable();
  if (missing) throw new Error(`cannot boot guest ${opts.name}: ${missing}`);
  // The name goes on the kernel command line (hostname, ready marker).
  if (!/^[\w.-]+$/.test(opts.name)) throw new Error(`bad guest name: ${opts.name}`);
  const { kernel, initrd } = await ensureGuestImage(opts.log);
  const args = [...qemuArgs(opts, kernel, initrd), ...extra];
  // pdeathsig: QEMU dies with us even if the test runner is killed.
  const wrap = inPath("setpriv") ? ["setpriv", "--pdeathsig", "KILL", "--"] : [];
  const argv = [...wrap, QEMU, ...args];
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  return new Guest(opts.name, child, opts.log, [QEMU, ...args]);
}

export class Guest {
  readonly pid: number;
  /** Milliseconds from spawn to the ready marker. */
  bootMs = 0;
  readonly exited: Promise<Deno.CommandStatus>;
  #raw = ""; // Console output, CR removed.
  #stderr = "";
  #partial = "";
  #waiters = new Set<() => void>();
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #readers: Promise<void>;
  #queue: Promise<unknown> = Promise.resolve();
  #seq = 0;
  #exitStatus?: Deno.CommandStatus;
  #started = performance.now();

  constructor(
    readonly name: string,
    private child: Deno.ChildProcess,
    private log: ((line: string) => void) | undefined,
    readonly commandLine: string[],
  ) {
    this.pid = child.pid;
    this.#writer = child.stdin.getWriter();
    this.exited = child.status.then((s) => {
      this.#exitStatus = s;
      this.#wake();
      return s;
    });
    this.#readers = Promise.all([
      this.#pump(child.stdout, (t) => this.#onConsole(t)),
      this.#pump(child.stderr, (t) => {
        this.#stderr += t;
        for (const l of t.split("\n")) if (l.trim()) this.log?.(`qemu: ${l}`);
      }),
    ]).then(() => {});
  }

  /** Full serial console transcript so far (carriage returns removed). */
  get transcript(): string {
    return this.#raw;
  }

  /** QEMU's own stderr output. */
  get qemuStderr(): string {
    return this.#stderr;
  }

  lastLines(n = 30): string {
    return this.#raw.split("\n").slice(-n).join("\n");
  }

  async #pump(stream: ReadableStream<Uint8Array>, onText: (t: string) => void) {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) onText(text);
  }

  #onConsole(text: string) {
    text = text.replaceAll("\r", "");
    this.#raw += text;
    const lines = (this.#partial + text).split("\n");
    this.#partial = lines.pop()!;
    for (const l of lines) this.log?.(l);
    this.#wake();
  }

  #wake() {
    for (const w of [...this.#waiters]) w();
  }

  /** Resolves with check()'s first non-undefined result; rejects on timeout or QEMU exit. */
  #waitFor<T>(check: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(poll);
      };
      const fail = (why: string) => {
        done();
        reject(
          new Error(
            `guest ${this.name}: ${why} while waiting for ${what}\n` +
              `--- last console lines ---\n${this.lastLines()}\n` +
              (this.#stderr ? `--- qemu stderr ---\n${this.#stderr}` : ""),
          ),
        );
      };
      const poll = () => {
        const r = check();
        if (r !== undefined) {
          done();
          resolve(r);
        } else if (this.#exitStatus) fail(`QEMU exited (code ${this.#exitStatus.code})`);
      };
      const timer = setTimeout(() => fail(`timeout after ${timeoutMs} ms`), timeoutMs);
      this.#waiters.add(poll);
      poll();
    });
  }

  async waitForReady(timeoutMs: number): Promise<void> {
    await this.#waitFor(
      () => this.#raw.includes(READY_MARKER) ? true : undefined,
      timeoutMs,
      READY_MARKER,
    );
    this.bootMs = Math.round(performance.now() - this.#started);
    const errors = this.#raw.split("\n").filter((l) => l.includes("VSGUEST-ERROR"));
    if (errors.length) {
      throw new Error(`guest ${this.name} booted with errors:\n${errors.join("\n")}`);
    }
  }

  async #write(text: string) {
    await this.#writer.write(new TextEncoder().encode(text));
  }

  /**
   * Runs `cmd` in the guest shell (stdin from /dev/null) and returns its exit code and its
   * combined stdout/stderr. Calls are serialised. On timeout the command gets Ctrl-C.
   */
  run(cmd: string, timeoutMs = 30_000): Promise<RunResult> {
    const next = this.#queue.then(() => this.#run(cmd, timeoutMs));
    this.#queue = next.catch(() => {});
    return next;
  }

  /** Like run(), but throws unless the exit code is 0; returns the output. */
  async check(cmd: string, timeoutMs?: number): Promise<string> {
    const r = await this.run(cmd, timeoutMs);
    if (r.code !== 0) {
      throw new Error(`guest ${this.name}: \`${cmd}\` exited ${r.code}:\n${r.output}`);
    }
    return r.output;
  }

  async #run(cmd: string, timeoutMs: number): Promise<RunResult> {
    if (this.#exitStatus) throw new Error(`guest ${this.name}: QEMU has exited; cannot run ${cmd}`);
    const id = `${++this.#seq}x${crypto.randomUUID().slice(0, 8)}`;
    const quoted = `'${cmd.replaceAll("'", `'\\''`)}'`;
    // Markers are printed via printf arguments so an echoed command line never matches them.
    const line = `printf 'VSBEGIN-%s\\n' ${id}; eval ${quoted} </dev/null; ` +
      `printf 'VSEND-%s:%d\\n' ${id} $?\n`;
    if (new TextEncoder().encode(line).length > MAX_CMD_BYTES) {
      throw new Error(`guest ${this.name}: command longer than ${MAX_CMD_BYTES} bytes`);
    }
    const from = this.#raw.length;
    const begin = `VSBEGIN-${id}\n`;
    const end = new RegExp(`VSEND-${id}:(\\d+)\n`);
    await this.#write(line);
    // The guest's console shell has been seen to die now and then (init starts a new one at
    // once, printing the banner again); a command typed meanwhile is lost, or reaches the new
    // shell half. One that had not started yet is typed again, after a Ctrl-C and a newline
    // that end any half line; one that had started is not (it may have run).
    let restarts = 0;
    try {
      return await this.#waitFor(
        () => {
          const text = this.#raw.slice(from);
          const b = text.indexOf(begin);
          if (b < 0) {
            const seen = text.split(SHELL_BANNER).length - 1;
            if (seen > restarts && restarts < 3) {
              restarts = seen;
              this.#write("\x03\n").then(() => this.#write(line)).catch(() => {});
            }
            return undefined;
          }
          const m = end.exec(text.slice(b + begin.length));
          if (!m) return undefined;
          return { code: Number(m[1]), output: text.slice(b + begin.length).slice(0, m.index) };
        },
        timeoutMs,
        `\`${cmd}\``,
      );
    } catch (e) {
      if (!this.#exitStatus) await this.#write("\x03\n").catch(() => {});
      throw e;
    }
  }

  /** The guest kernel log. */
  async dmesg(): Promise<string> {
    return (await this.run("dmesg")).output;
  }

  /**
   * Sends `signal` to QEMU and resolves once it has exited and its output is drained
   * (at once for SIGSTOP/SIGCONT, which freeze and thaw the guest).
   */
  async kill(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    if (!this.#exitStatus) {
      try {
        this.child.kill(signal);
      } catch { /* Already gone. */ }
    }
    if (signal !== "SIGSTOP" && signal !== "SIGCONT") await this.#close();
  }

  /** Powers the guest off (`poweroff -f`), killing QEMU if it has not exited in time. */
  async shutdown(timeoutMs = 15_000): Promise<void> {
    if (!this.#exitStatus) {
      try {
        this.child.kill("SIGCONT"); // A stopped guest could not power off.
      } catch { /* Exited meanwhile. */ }
      await this.#write("\x03\npoweroff -f\n").catch(() => {});
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise((r) => timer = setTimeout(r, timeoutMs));
      await Promise.race([this.exited, timeout]);
      clearTimeout(timer);
      if (!this.#exitStatus) this.child.kill("SIGKILL");
    }
    await this.#close();
  }

  async #close() {
    await this.exited;
    await this.#writer.close().catch(() => {});
    await this.#readers;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.shutdown();
  }
}
