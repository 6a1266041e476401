// `deno task ctl`: changes a running switch and shows its flows, like ovs-vsctl and ovs-appctl.
// Each subcommand is one HTTP request (README "HTTP endpoint"); what the switch changed is
// printed one line each, a refused change prints every problem and exits 1.
import { parseArgs } from "node:util";
import type { FlowEntry, PortStatus } from "../switch/view.ts";
import { CliError, count, type Endpoint, endpoint, requestJson, table } from "./common.ts";

export const CTL_USAGE = `Usage: deno task ctl [--url URL | --topology FILE] [--token T] COMMAND ...

Commands:
  show                              the switch, its ports and their VLANs, MTU and state
  add-port NAME --type vhost-user --socket PATH [--mode server|client] [--queues N]
  add-port NAME --type af-packet --interface IF [--io ring|syscall]
           [--mtu N] [--vlan SPEC] [--rxq-affinity W,W]
  add-port --json '{"name": ..., "type": ...}'   a port object as in the topology file
  del-port NAME                     delete a port (its front-end is hung up on, its MACs go)
  set-port NAME [--vlan SPEC] [--mtu N] [--rxq-affinity W,W] [--json '{...}']
  fdb-add MAC PORT [--vlan V]       pin a static MAC entry (replaces one for the same MAC/VLAN)
  fdb-del MAC [--vlan V]            remove a MAC's entries, static or learned
  flows [--port P] [--vlan V] [--mac M] [--max-idle S]   the flows the datapath is using
  reload                            re-read the topology file the switch was started with

VLAN SPEC: access:TAG, trunk (every VLAN), trunk:ID,ID[:native=ID], or default.
Options:
  --url URL        the switch's HTTP endpoint (default http://127.0.0.1:8080)
  --topology FILE  ask the endpoint that topology file listens on
  --token T        the http.token bearer token (default: $VSWITCH_TOKEN)
Exit status: 0 done, 1 the switch refused or could not be reached, 2 bad usage.`;

/** A usage error: exit status 2. */
export class UsageError extends Error {}

export function parseVlan(spec: string): unknown {
  if (spec === "default") return null;
  if (spec === "trunk") return { mode: "trunk" };
  let m = /^access:(\d+)$/.exec(spec);
  if (m) return { mode: "access", tag: Number(m[1]) };
  m = /^trunk:([\d,]+)(?::native=(\d+))?$/.exec(spec);
  if (m) {
    return {
      mode: "trunk",
      allowed: m[1].split(",").filter(Boolean).map(Number),
      ...(m[2] === undefined ? {} : { native: Number(m[2]) }),
    };
  }
  throw new UsageError(`--vlan: expected access:TAG, trunk, trunk:ID,ID[:native=ID] or default`);
}

function json(text: string): Record<string, unknown> {
  try {
    const v = JSON.parse(text);
    if (typeof v === "object" && v !== null && !Array.isArray(v)) return v;
  } catch { /* reported below */ }
  throw new UsageError(`--json: expected a JSON object, got ${text}`);
}

function int(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new UsageError(`--${name}: expected a number, got ${v}`);
  return Number(v);
}

/** The port keys given as options (the switch checks them, as the topology loader does). */
function portKeys(v: Record<string, string | boolean | undefined>): Record<string, unknown> {
  const str = (k: string) => v[k] as string | undefined;
  const given = str("json");
  const o: Record<string, unknown> = given === undefined ? {} : json(given);
  const set = (key: string, value: unknown) => value !== undefined && (o[key] = value);
  set("type", str("type"));
  set("socket", str("socket"));
  set("mode", str("mode"));
  set("queues", int("queues", str("queues")));
  set("interface", str("interface"));
  set("io", str("io"));
  set("mtu", int("mtu", str("mtu")));
  const vlan = str("vlan");
  if (vlan !== undefined) o.vlan = parseVlan(vlan);
  const affinity = str("rxq-affinity");
  if (affinity !== undefined) {
    o.rxqAffinity = affinity.split(",").map((w) => int("rxq-affinity", w));
  }
  return o;
}

interface Change {
  changed: string[];
  notApplied: string[];
}

function printChange(c: Change): string {
  const lines = c.changed.length ? [...c.changed] : ["nothing changed"];
  for (const n of c.notApplied) lines.push(`not applied: ${n}`);
  return lines.join("\n");
}

export function formatFlows(flows: FlowEntry[]): string {
  return table(
    [
      { title: "IN" },
      { title: "VLAN", right: true },
      { title: "SRC" },
      { title: "DST" },
      { title: "PACKETS", right: true },
      { title: "BYTES", right: true },
      { title: "USED", right: true },
      { title: "ACTIONS" },
    ],
    flows.map((f) => [
      f.inPort,
      f.vlan < 0 ? "-" : String(f.vlan),
      f.src,
      f.dst,
      count(f.packets),
      count(f.bytes),
      `${f.lastUsedSeconds}s`,
      f.actions,
    ]),
  );
}

function vlanText(v: unknown): string {
  const o = v as { mode?: string; tag?: number; allowed?: number[]; native?: number } | undefined;
  if (!o) return "trunk (all)";
  if (o.mode === "access") return `access ${o.tag}`;
  return `trunk ${o.allowed ? o.allowed.join(",") : "(all)"}${
    o.native ? ` native ${o.native}` : ""
  }`;
}

async function show(at: Endpoint, token?: string): Promise<string> {
  const topo = await requestJson<Record<string, unknown>>(at, "GET", "/topology", { token });
  const { ports } = await requestJson<{ ports: PortStatus[] }>(at, "GET", "/ports");
  const state = new Map(ports.map((p) => [p.name, p.state]));
  const http = topo.http as { listen: string };
  const files = topo.ports as Record<string, unknown>[];
  const head = `${topo.name}: ${files.length} ports, ${topo.threads} datapath thread(s), ` +
    `HTTP ${http.listen}`;
  return [
    head,
    table(
      [{ title: "PORT" }, { title: "TYPE" }, { title: "STATE" }, { title: "MTU", right: true }, {
        title: "VLAN",
      }, { title: "SOCKET / INTERFACE" }],
      files.map((p) => [
        String(p.name),
        String(p.type),
        state.get(String(p.name)) ?? "-",
        String(p.mtu),
        vlanText(p.vlan),
        p.type === "vhost-user"
          ? `${p.socket} (${p.mode})`
          : p.type === "af-packet"
          ? String(p.interface)
          : `VNI ${p.vni}`,
      ]),
    ),
  ].join("\n");
}

export async function ctlCommand(args: string[]): Promise<string> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      url: { type: "string" },
      topology: { type: "string" },
      token: { type: "string" },
      help: { type: "boolean", short: "h" },
      json: { type: "string" },
      type: { type: "string" },
      socket: { type: "string" },
      mode: { type: "string" },
      queues: { type: "string" },
      interface: { type: "string" },
      io: { type: "string" },
      mtu: { type: "string" },
      vlan: { type: "string" },
      "rxq-affinity": { type: "string" },
      port: { type: "string" },
      mac: { type: "string" },
      "max-idle": { type: "string" },
    },
  });
  if (values.help || positionals.length === 0) {
    if (values.help) return CTL_USAGE;
    throw new UsageError(`a command is missing\n\n${CTL_USAGE}`);
  }
  const [command, ...rest] = positionals;
  const at = endpoint(values);
  const token = values.token ?? Deno.env.get("VSWITCH_TOKEN");
  const want = (n: number, what: string) => {
    if (rest.length !== n) throw new UsageError(`${command}: expected ${what}`);
  };
  const change = async (method: string, path: string, body?: unknown) =>
    printChange(await requestJson<Change>(at, method, path, { body, token }));
  const enc = encodeURIComponent;
  switch (command) {
    case "show":
      want(0, "no arguments");
      return await show(at, token);
    case "add-port": {
      if (rest.length > 1) throw new UsageError("add-port: expected one port name");
      const port = portKeys(values);
      if (rest[0] !== undefined) port.name = rest[0];
      return await change("POST", "/ports", port);
    }
    case "del-port":
      want(1, "a port name");
      return await change("DELETE", `/ports/${enc(rest[0])}`);
    case "set-port": {
      want(1, "a port name");
      const keys = portKeys(values);
      if (!Object.keys(keys).length) throw new UsageError("set-port: nothing to change");
      return await change("PATCH", `/ports/${enc(rest[0])}`, keys);
    }
    case "fdb-add":
      want(2, "a MAC and a port name");
      return await change("PUT", "/fdb", {
        mac: rest[0],
        port: rest[1],
        vlan: int("vlan", values.vlan) ?? 0,
      });
    case "fdb-del": {
      want(1, "a MAC");
      const q = new URLSearchParams({ mac: rest[0] });
      if (values.vlan !== undefined) q.set("vlan", values.vlan);
      const r = await requestJson<{ flushed: number; changed: string[] }>(
        at,
        "DELETE",
        `/fdb?${q}`,
        { token },
      );
      return r.flushed ? `removed ${r.flushed} entr${r.flushed === 1 ? "y" : "ies"}` : "no entry";
    }
    case "flows": {
      want(0, "no arguments");
      const q = new URLSearchParams();
      for (const k of ["port", "vlan", "mac"] as const) {
        if (values[k] !== undefined) q.set(k, values[k]!);
      }
      if (values["max-idle"] !== undefined) q.set("maxIdle", values["max-idle"]);
      const { flows } = await requestJson<{ flows: FlowEntry[] }>(
        at,
        "GET",
        `/flows${q.size ? `?${q}` : ""}`,
      );
      return formatFlows(flows);
    }
    case "reload":
      want(0, "no arguments");
      return await change("POST", "/reload");
    default:
      throw new UsageError(`unknown command ${command}\n\n${CTL_USAGE}`);
  }
}

export { CliError };
