// Runs the switch as its own process (`deno run mod.ts topology.json`), as a user does, so
// tests can measure it from /proc, kill it, or restart it.
import { fileURLToPath } from "node:url";

const MOD = fileURLToPath(new URL("../mod.ts", import.meta.url));

/** CPU time (user + system) of a process in seconds, from /proc/PID/stat. */
export function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks
}

export class SwitchProcess {
  readonly output: string[] = [];
  #child: Deno.ChildProcess;
  readonly exited: Promise<Deno.CommandStatus>;

  /** `netns`: run it inside that network namespace (`ip netns exec`, which keeps the pid). */
  constructor(readonly topologyPath: string, opts: { netns?: string } = {}) {
    const args = ["run", "--allow-all", MOD, topologyPath];
    const [cmd, argv] = opts.netns
      ? ["ip", ["netns", "exec", opts.netns, Deno.execPath(), ...args]]
      : [Deno.execPath(), args];
    this.#child = new Deno.Command(cmd, {
      args: argv,
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.exited = this.#child.status;
    this.#collect(this.#child.stdout);
    this.#collect(this.#child.stderr);
  }

  get pid(): number {
    return this.#child.pid;
  }

  async #collect(stream: ReadableStream<Uint8Array>): Promise<void> {
    const lines = stream.pipeThrough(new TextDecoderStream());
    let rest = "";
    for await (const chunk of lines) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      this.output.push(...parts);
    }
    if (rest) this.output.push(rest);
  }

  /** Waits until a log line matches `pattern` (bounded), or the process exits. */
  async waitForLine(pattern: RegExp, timeoutMs = 20_000): Promise<string> {
    const end = Date.now() + timeoutMs;
    let exited = false;
    this.exited.then(() => (exited = true));
    while (Date.now() < end) {
      const line = this.output.find((l) => pattern.test(l));
      if (line) return line;
      if (exited) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`switch never printed ${pattern}; output:\n${this.output.join("\n")}`);
  }

  /** SIGTERM (a clean shutdown), then SIGKILL if it does not exit in time. */
  async stop(signal: Deno.Signal = "SIGTERM", timeoutMs = 10_000): Promise<Deno.CommandStatus> {
    try {
      this.#child.kill(signal);
    } catch { /* already gone */ }
    const timer = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch { /* gone */ }
    }, timeoutMs);
    const status = await this.exited;
    clearTimeout(timer);
    return status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
