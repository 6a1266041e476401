// Process plumbing for the PVP bench: child processes with a log tail, CPU time from /proc,
// and one cleanup registry that runs on normal exit, on errors and on Ctrl-C.

import { REPO } from "../options.ts";

const TAIL_CHARS = 4000;

/** utime+stime in /proc/PID/stat are in USER_HZ ticks (100 on Linux, whatever the kernel HZ). */
let clkTck = 100;
try {
  const out = new Deno.Command("getconf", { args: ["CLK_TCK"], stderr: "null" }).outputSync();
  clkTck = Number(new TextDecoder().decode(out.stdout).trim()) || 100;
} catch { /* keep 100 */ }

/** CPU seconds (user + system, all threads) a process has used so far; NaN once it is gone. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / clkTck;
  } catch {
    return NaN;
  }
}

/**
 * CPU seconds of the whole machine so far (all CPUs): busy (everything but idle and iowait) and
 * in all; NaN where /proc/stat cannot be read.
 */
export function systemSeconds(): { busy: number; total: number } {
  try {
    const line = Deno.readTextFileSync("/proc/stat").split("\n")[0]; // "cpu  user nice system idle ..."
    const f = line.trim().split(/\s+/).slice(1, 9).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    return { busy: (total - f[3] - f[4]) / clkTck, total: total / clkTck };
  } catch {
    return { busy: NaN, total: NaN };
  }
}

/** Busy CPU seconds of the whole machine so far (all CPUs, everything but idle and iowait). */
export function systemBusySeconds(): number {
  return systemSeconds().busy;
}

/**
 * Other work on the host wrecks a closed loop of busy pollers on 2 CPUs: before a trial, wait
 * (at most `maxWaitS`) until the machine's busy time stays under `maxCpus` for one second.
 * Returns the last load seen, in CPUs.
 */
export async function waitForQuiet(
  maxCpus: number,
  maxWaitS: number,
  progress: (msg: string) => void,
): Promise<number> {
  const end = Date.now() + maxWaitS * 1000;
  let said = false;
  while (true) {
    const t0 = performance.now();
    const b0 = systemBusySeconds();
    await sleep(1000);
    const load = (systemBusySeconds() - b0) / ((performance.now() - t0) / 1000);
    if (!(load > maxCpus) || Date.now() >= end) return load;
    if (!said) {
      progress(`host busy with other work (${load.toFixed(2)} CPUs): waiting up to ${maxWaitS} s`);
    }
    said = true;
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `probe` until it returns a value other than undefined; throws `what` on timeout. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 20_000,
  detail: () => string = () => "",
): Promise<T> {
  const end = Date.now() + timeoutMs;
  while (true) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms: ${what}\n${detail()}`);
    await sleep(100);
  }
}

export function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** A TCP port nobody listens on right now (for the switch's HTTP endpoint). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

// --- cleanup registry -------------------------------------------------------------------

const cleanups = new Map<number, () => Promise<unknown>>();
let nextCleanup = 0;

/** Registers `fn` to run at cleanup (latest first); returns a function that unregisters it. */
export function onCleanup(fn: () => Promise<unknown>): () => void {
  const id = nextCleanup++;
  cleanups.set(id, fn);
  return () => cleanups.delete(id);
}

/** Runs every registered cleanup (newest first), each once; concurrent callers share the run. */
export function cleanupAll(): Promise<void> {
  cleaning ??= (async () => {
    while (cleanups.size) {
      const fns = [...cleanups.values()].reverse();
      cleanups.clear();
      for (const fn of fns) await fn().catch((e) => console.error(`cleanup: ${e}`));
    }
  })().finally(() => cleaning = null);
  return cleaning;
}

let cleaning: Promise<void> | null = null;

let interrupted = false;

/** Set once Ctrl-C arrived: nothing new may start while the cleanup runs. */
export function checkInterrupted(): void {
  if (interrupted) throw new Error("interrupted");
}

export const isInterrupted = () => interrupted;

/** Ctrl-C / SIGTERM: clean up, then exit 130. The caller removes the listeners when done. */
export function trapSignals(): () => void {
  const handler = () => {
    if (interrupted) return;
    interrupted = true;
    console.error("\ninterrupted: stopping everything the bench started...");
    cleanupAll().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", handler);
  Deno.addSignalListener("SIGTERM", handler);
  return () => {
    Deno.removeSignalListener("SIGINT", handler);
    Deno.removeSignalListener("SIGTERM", handler);
  };
}

/** Every DPDK --file-prefix of this run starts with this (the dash keeps pid 12 from 123). */
export const DPDK_PREFIX = `pvp${Deno.pid}-`;

/**
 * The last line of defence, registered first so it runs last: a child still alive (e.g. a
 * testpmd interrupted before launch() returned its handle) is killed by its pid, and every
 * DPDK runtime dir of this run is removed.
 */
export function finalCleanup(): () => void {
  return onCleanup(async () => {
    for (const pid of ownChildren()) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch { /* gone */ }
    }
    await sleep(200);
    for (const e of [...safeReadDir("/var/run/dpdk")]) {
      if (e.name.startsWith(DPDK_PREFIX)) await removeDpdkRuntime(e.name);
    }
  });
}

function ownChildren(): number[] {
  const pids: number[] = [];
  for (const e of safeReadDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === Deno.pid) pids.push(Number(e.name));
    } catch { /* gone */ }
  }
  return pids;
}

function safeReadDir(path: string): Deno.DirEntry[] {
  try {
    return [...Deno.readDirSync(path)];
  } catch {
    return [];
  }
}

/** Removes DPDK's runtime dir of a --file-prefix (EAL leaves it behind). */
export async function removeDpdkRuntime(prefix: string): Promise<void> {
  await Deno.remove(`/var/run/dpdk/${prefix}`, { recursive: true }).catch(() => {});
}

// --- child processes --------------------------------------------------------------------

/** A long-running child whose stdout+stderr are kept as a tail for error messages. */
export class Proc {
  readonly child: Deno.ChildProcess;
  #tail = "";
  #status: Deno.CommandStatus | null = null;
  readonly done: Promise<Deno.CommandStatus>;
  readonly #unregister: () => void;

  constructor(
    readonly name: string,
    readonly argv: string[],
    opts: { env?: Record<string, string>; cwd?: string } = {},
  ) {
    checkInterrupted();
    this.child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      env: opts.env,
      cwd: opts.cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const pump = async (s: ReadableStream<Uint8Array>) => {
      for await (const t of s.pipeThrough(new TextDecoderStream())) {
        this.#tail = (this.#tail + t).slice(-TAIL_CHARS);
      }
    };
    const pumps = Promise.all([pump(this.child.stdout), pump(this.child.stderr)]);
    this.done = this.child.status.then(async (s) => {
      await pumps.catch(() => {});
      this.#status = s;
      return s;
    });
    this.#unregister = onCleanup(() => this.stop());
  }

  get pid(): number {
    return this.child.pid;
  }

  get exited(): boolean {
    return this.#status !== null;
  }

  describe(): string {
    const state = this.#status ? `exited with code ${this.#status.code}` : "running";
    return `${this.name} (pid ${this.pid}, ${state})\n--- last output ---\n${this.#tail}\n---`;
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  async stop(graceMs = 5000): Promise<void> {
    this.#unregister();
    if (!this.#status) {
      this.#signal("SIGTERM");
      const timer = setTimeout(() => this.#signal("SIGKILL"), graceMs);
      await this.done;
      clearTimeout(timer);
    }
  }

  #signal(sig: Deno.Signal) {
    try {
      this.child.kill(sig);
    } catch { /* already gone */ }
  }
}

/** Runs a short command; throws with its output when it fails. */
export async function run(argv: string[], env?: Record<string, string>): Promise<string> {
  const out = await new Deno.Command(argv[0], { args: argv.slice(1), env }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${argv.join(" ")} failed (code ${out.code}):\n${text}`);
  return text;
}

/**
 * A shell-quoted command line, for the report. Paths inside the repository are written relative
 * to it (`mod.ts`, as run from a checkout), so a report names no directory of the machine it ran on.
 */
export function shellLine(argv: string[], env: Record<string, string> = {}): string {
  const q = (s: string) => /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
  const rel = (s: string) => s.startsWith(REPO) ? s.slice(REPO.length) : s;
  const vars = Object.entries(env).map(([k, v]) => `${k}=${q(rel(v))}`);
  return [...vars, ...argv.map((a) => q(rel(a)))].join(" ");
}
