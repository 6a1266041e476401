// The command line: `deno task start <topology.json>` starts the switch and its HTTP endpoint;
// `mod.ts fdb` and `mod.ts ports` (deno task fdb / ports) show a running switch in the terminal.
import { parseArgs } from "node:util";
import { runCli } from "./cli/main.ts";
import { createApp } from "./http/app.ts";
// Loaded only to start a switch: it opens libc (--allow-ffi), which the views do not need.
import type { Switch } from "./switch/switch.ts";
import { loadTopology, TopologyError } from "./switch/topology.ts";
import { VERSION } from "./switch/version.ts";

const usage = (version: string) =>
  `vswitch ${version}: a userspace virtual switch (vhost-user ports, MAC learning)

Usage:
  deno task start <topology.json>     start the switch described by the topology file
  deno task start --help              show this help
  deno task fdb [--url URL]           show a running switch's MAC table (--help for filters)
  deno task ports [--url URL]         show a running switch's ports and counters
  deno task ctl COMMAND ...           change a running switch, show its flows (--help)

The topology file lists the ports (vhost-user sockets, AF_PACKET interfaces), the datapath
threads, FDB settings and the HTTP listen address; see examples/ and README.md.`;

function fail(message: string): never {
  console.error(message);
  Deno.exit(1);
}

/**
 * The last resort: an error no handler caught (a rejected promise, an exception in a callback)
 * anywhere in the control plane is logged with its stack and the switch keeps serving. Every
 * path that talks to a peer already ends its own connection on failure; reaching this is a bug
 * to report, and one bad code path must not take every port down with it.
 */
export function keepServingAfterStrayErrors(log: (msg: string) => void): void {
  const describe = (e: unknown) => e instanceof Error ? (e.stack ?? e.message) : String(e);
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    log(`internal error (unhandled rejection), still serving: ${describe(e.reason)}`);
  });
  globalThis.addEventListener("error", (e) => {
    e.preventDefault();
    log(`internal error (uncaught exception), still serving: ${describe(e.error)}`);
  });
}

async function main(args: string[]): Promise<void> {
  const { Switch } = await import("./switch/switch.ts");
  const USAGE = usage(VERSION);
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { help: { type: "boolean", short: "h" }, version: { type: "boolean" } },
      allowPositionals: true,
    });
  } catch (err) {
    fail(`${(err as Error).message}\n\n${USAGE}`);
  }
  if (parsed.values.help) {
    console.log(USAGE);
    return;
  }
  if (parsed.values.version) {
    console.log(VERSION);
    return;
  }
  if (parsed.positionals.length !== 1) fail(`expected one topology file\n\n${USAGE}`);

  let topology;
  try {
    topology = loadTopology(parsed.positionals[0]);
  } catch (err) {
    if (err instanceof TopologyError) fail(err.message);
    throw err;
  }

  const log = (msg: string) => console.log(`${new Date().toISOString()} ${msg}`);
  keepServingAfterStrayErrors(log);
  let sw: Switch;
  try {
    sw = await Switch.start(topology, log, parsed.positionals[0]);
  } catch (err) {
    fail(`${topology.name}: cannot start: ${(err as Error).message}`);
  }
  const app = createApp(sw, {
    token: topology.http.token,
    readOnly: topology.http.readOnly,
    hosts: [topology.http.hostname, ...topology.http.allowedHosts],
  });
  let server: Deno.HttpServer;
  try {
    server = Deno.serve({
      hostname: topology.http.hostname,
      port: topology.http.port,
      onListen: ({ hostname, port }) =>
        log(`${topology.name}: HTTP on http://${hostname}:${port}/`),
    }, app.fetch);
  } catch (err) {
    await sw.stop();
    fail(`${topology.name}: cannot listen on ${topology.http.listen}: ${(err as Error).message}`);
  }
  log(`${topology.name}: ${topology.ports.length} ports, ${topology.threads} datapath thread(s)`);

  let stopping = false;
  const shutdown = async (signal: string) => {
    // `deno task` forwards a terminal's Ctrl-C, which the process also gets: act once.
    if (stopping) return;
    stopping = true;
    log(`${signal}: shutting down`);
    // Captures end their streams; no new requests; responses in flight finish (bounded).
    sw.endCaptures();
    await Promise.race([server.shutdown(), new Promise((r) => setTimeout(r, 3000))]);
    await sw.stop();
    log("stopped");
    Deno.exit(0);
  };
  // SIGHUP re-reads the topology file and applies the difference, like POST /reload.
  Deno.addSignalListener("SIGHUP", () => {
    sw.live.reload("SIGHUP").catch((err) => {
      if (err instanceof TopologyError) {
        log(`SIGHUP: reload refused, nothing changed:\n  ${err.problems.join("\n  ")}`);
      } else log(`SIGHUP: reload failed: ${(err as Error).message}`);
    });
  });
  Deno.addSignalListener("SIGINT", () => shutdown("SIGINT"));
  Deno.addSignalListener("SIGTERM", () => shutdown("SIGTERM"));
}

if (import.meta.main) {
  const [command, ...rest] = Deno.args;
  if (command === "fdb" || command === "ports" || command === "ctl") {
    Deno.exit(await runCli(command, rest));
  }
  await main(Deno.args);
}
