// Loads the topology file. One pass collects every problem, so an operator fixes them all at once,
// and the result is fully defaulted: the rest of the switch never re-applies a default.
import { dirname, resolve } from "node:path";
import { Checker, closest, describe, isObject, normalizeMac, type Obj } from "./config_checker.ts";

export { normalizeMac };
import {
  type MirrorConfig,
  parseMirrors,
  parsePortSafety,
  PORT_SAFETY_KEYS,
  type PortSafetyConfig,
} from "./safety_config.ts";

/** `native` 0 means untagged frames on the trunk stay untagged (the VLAN 0 domain). */
export type VlanConfig =
  | { mode: "access"; tag: number }
  | { mode: "trunk"; allowed: number[] | "all"; native: number };

interface PortCommon {
  name: string;
  mtu: number;
  vlan: VlanConfig;
  /** Queue pairs; an af-packet port always has one. */
  queues: number;
  /** Worker index polling each queue pair (explicit, or assigned round-robin). */
  rxqAffinity: number[];
  /** Port security, storm control, policing, loop guard (safety_config.ts). */
  safety: PortSafetyConfig;
}
export interface VhostUserPortConfig extends PortCommon {
  type: "vhost-user";
  /** Absolute path (relative paths are resolved against the topology file's directory). */
  socket: string;
  mode: "server" | "client";
  /** Offer packed virtqueues (VIRTIO_F_RING_PACKED); true unless the topology turns it off. */
  packedRing: boolean;
  /** Offer the checksum and TSO offloads (CSUM, GUEST_CSUM, HOST/GUEST_TSO4/6, ECN); default true. */
  offloads: boolean;
}
export interface AfPacketPortConfig extends PortCommon {
  type: "af-packet";
  interface: string;
  queues: 1;
  /** "ring": TPACKET_V3 rings; "syscall": one recv/send per frame (the baseline, for comparison). */
  io: "ring" | "syscall";
}
/**
 * A VXLAN tunnel endpoint (RFC 7348) for one VNI: frames leave as UDP datagrams from `local` to
 * the remote VTEP their destination MAC was learned behind, or to every `remotes` address
 * (head-end replication) when the MAC is unknown, broadcast or multicast. `mtu` is the inner MTU.
 */
export interface VxlanPortConfig extends PortCommon {
  type: "vxlan";
  queues: 1;
  /** VXLAN Network Identifier, 24 bits. */
  vni: number;
  /** The VTEP's IPv4 address: the UDP socket is bound to it. */
  local: string;
  /** The flood list: remote VTEPs that get broadcast, multicast and unknown unicast. */
  remotes: string[];
  udpPort: number;
  /** Static inner MAC -> remote VTEP entries (lower-case MAC), e.g. pushed by a controller. */
  remoteMacs: { mac: string; remote: string }[];
  /** Drop datagrams from VTEPs not named in `remotes` or `remoteMacs` (counted). */
  strict: boolean;
  /** Send TCP super-frames whole through a tap device (tunnel GSO, Linux 6.17), not cut. */
  tunnelGso: boolean;
}
export type PortConfig = VhostUserPortConfig | AfPacketPortConfig | VxlanPortConfig;

export interface HttpConfig {
  listen: string;
  /** `listen` split for Deno.serve; IPv6 without brackets. */
  hostname: string;
  port: number;
  token: string | null;
  readOnly: boolean;
  /** Host names the endpoint answers to besides its address, localhost and IP literals. */
  allowedHosts: string[];
}
export interface PollConfig {
  mode: "adaptive" | "busy";
  idleAfterMs: number;
  /** CPU each worker is pinned to (like OVS pmd-cpu-mask), or null: the kernel decides. */
  cpus: number[] | null;
  /** Count traffic per flow for GET /flows (a few ns a frame). */
  flowStats: boolean;
}
export interface StaticFdbEntry {
  /** Lower-case, colon separated. */
  mac: string;
  vlan: number;
  port: string;
}
export interface FdbConfig {
  agingSeconds: number;
  maxEntries: number;
  /** Learned entries allowed per port; 0: no limit beyond maxEntries. */
  maxPerPort: number;
  static: StaticFdbEntry[];
}
export interface Topology {
  name: string;
  http: HttpConfig;
  threads: number;
  poll: PollConfig;
  fdb: FdbConfig;
  ports: PortConfig[];
  /** Port mirrors (SPAN); their output ports are not part of the bridge. */
  mirrors: MirrorConfig[];
}

/** Every problem found, one per line: `file: json.path: what is wrong`. */
export class TopologyError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join("\n"));
    this.name = "TopologyError";
  }
}

export function loadTopology(path: string): Topology {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new TopologyError([`${path}: cannot read the topology file: ${(e as Error).message}`]);
  }
  return parseTopology(text, path);
}

const NAME_RE = /^[a-zA-Z0-9_.-]{1,32}$/;
const NAME_RULE = "use 1 to 32 letters, digits, '_', '.' or '-'";
const TOKEN_RULE = "use letters, digits and ._~+/- (a Bearer token)";
const IFNAME_RULE = "use a Linux interface name (1 to 15 characters, no '/', ':' or spaces)";
// RFC 6750 b64token: the only tokens a Bearer header can carry.
const TOKEN_RE = /^[A-Za-z0-9._~+/-]+=*$/;
const IFNAME_RE = /^(?!\.\.?$)[^\s/:]{1,15}$/;
const LISTEN_RE = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/;
// sun_path is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH = 107;

/** Ports a switch can have, also while it runs: the datapath is sized for this many. */
export const MAX_PORTS = 64;

const ROOT_KEYS = ["name", "http", "threads", "poll", "fdb", "ports", "mirrors"];
const COMMON_KEYS = ["name", "type", "mtu", "vlan", "rxqAffinity", ...PORT_SAFETY_KEYS];
const VHOST_KEYS = [...COMMON_KEYS, "socket", "mode", "queues", "packedRing", "offloads"];
const AF_PACKET_KEYS = [...COMMON_KEYS, "interface", "io"];
const VXLAN_KEYS = [
  ...COMMON_KEYS,
  "vni",
  "local",
  "remotes",
  "udpPort",
  "remoteMacs",
  "strict",
  "tunnelGso",
];
const ANY_PORT_KEYS = [...new Set([...VHOST_KEYS, ...AF_PACKET_KEYS, ...VXLAN_KEYS])];
/** VXLAN's default UDP port (IANA, RFC 7348 section 5). */
export const VXLAN_UDP_PORT = 4789;
/** Outer Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8) headers: what the underlay carries more. */
export const VXLAN_OVERHEAD = 50;
const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** `fileName` prefixes every problem and anchors relative socket paths; nothing is read from it. */
export function parseTopology(text: string, fileName: string): Topology {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    // V8 names the position for only some syntax errors, so find it ourselves.
    const { at, message } = jsonSyntaxError(text);
    const lines = text.slice(0, at).split("\n");
    const where = `${lines.length}:${lines[lines.length - 1].length + 1}`;
    throw new TopologyError([`${fileName}:${where}: invalid JSON: ${message}`]);
  }
  return checkTopology(json, fileName);
}

/**
 * Checks a topology given as a JSON value (the file's content, parsed): every problem, each
 * prefixed with `label`; relative socket paths are resolved against `fileName`'s directory.
 * The switch checks changes made while it runs with this too (a port added over HTTP is the
 * running topology plus that port), so they get exactly the loader's messages.
 */
export function checkTopology(json: unknown, fileName: string, label = fileName): Topology {
  const c = new Checker(label);
  const root = c.object(json, "", ROOT_KEYS);
  if (!root) throw new TopologyError(c.list);
  const name = c.str(root.name, "name", undefined, NAME_RE, NAME_RULE) ?? "";
  const http = parseHttp(c, root.http);
  const threads = c.int(root.threads, "threads", 1, 64, 1);
  const poll = c.section(root.poll, "poll", ["mode", "idleAfterMs", "cpus", "flowStats"]);
  const pollMode = c.oneOf(poll.mode, "poll.mode", ["adaptive", "busy"] as const, "adaptive");
  const idleAfterMs = c.int(poll.idleAfterMs, "poll.idleAfterMs", 0, 60_000, 200) ?? 200;
  const cpus = parseCpus(c, poll.cpus, threads ?? 1);
  const flowStats = c.bool(poll.flowStats, "poll.flowStats", true);
  const ports = parsePorts(c, root.ports, dirname(resolve(fileName)), threads);
  const mirrors = parseMirrors(c, root.mirrors, ports);
  const fdb = parseFdb(c, root.fdb, ports, mirrors);
  if (c.list.length) throw new TopologyError(c.list);
  return {
    name,
    http,
    threads: threads ?? 1,
    poll: {
      mode: pollMode ?? "adaptive",
      idleAfterMs,
      cpus,
      flowStats,
    },
    fdb,
    ports,
    mirrors,
  };
}

function parseHttp(c: Checker, v: unknown): HttpConfig {
  const o = c.section(v, "http", ["listen", "token", "readOnly", "allowedHosts"]);
  const hosts = o.allowedHosts ?? [];
  const allowedHosts = Array.isArray(hosts) &&
      hosts.every((h) => typeof h === "string" && /^[A-Za-z0-9.-]{1,253}$/.test(h))
    ? hosts as string[]
    : c.add("http.allowedHosts", `expected an array of host names, got ${JSON.stringify(hosts)}`) ??
      [];
  const listen = c.str(o.listen, "http.listen", "127.0.0.1:8080") ?? "";
  const m = LISTEN_RE.exec(listen);
  if (!m || Number(m[3]) > 65535) {
    c.add("http.listen", `expected host:port or [ipv6]:port, got ${JSON.stringify(listen)}`);
  }
  return {
    listen,
    hostname: m?.[1] ?? m?.[2] ?? "",
    port: Number(m?.[3] ?? 0),
    token: c.str(o.token, "http.token", null, TOKEN_RE, TOKEN_RULE) ?? null,
    readOnly: c.bool(o.readOnly, "http.readOnly", false),
    allowedHosts,
  };
}

function parsePorts(c: Checker, v: unknown, baseDir: string, threads?: number): PortConfig[] {
  if (v === undefined) return c.add("ports", "required key is missing") ?? [];
  if (!Array.isArray(v)) return c.add("ports", `expected an array, got ${describe(v)}`) ?? [];
  if (v.length < 1 || v.length > MAX_PORTS) {
    c.add("ports", `expected 1 to ${MAX_PORTS} ports, got ${v.length}`);
  }
  const seen = new Map<string, string>(); // "socket /x" → "ports[0]"
  const unique = (kind: string, value: string, path: string, key: string) => {
    const first = seen.get(`${kind} ${value}`);
    if (first) c.add(`${path}.${key}`, `duplicate ${kind} ${JSON.stringify(value)} (${first})`);
    else seen.set(`${kind} ${value}`, `also used by ${path}`);
  };
  let nextWorker = 0; // round-robin for queues without rxqAffinity, like OVS
  const ports: PortConfig[] = [];
  v.forEach((item, i) => {
    const path = `ports[${i}]`;
    if (!isObject(item)) return c.add(path, `expected an object, got ${describe(item)}`);
    const type = c.oneOf(item.type, `${path}.type`, ["vhost-user", "af-packet", "vxlan"] as const);
    const keys = type === "af-packet"
      ? AF_PACKET_KEYS
      : type === "vxlan"
      ? VXLAN_KEYS
      : type
      ? VHOST_KEYS
      : ANY_PORT_KEYS;
    // "io" on a vhost-user port is reported below as misplaced, not as an unknown key.
    c.object(item, path, type === "vhost-user" && item.io !== undefined ? [...keys, "io"] : keys);
    const name = c.str(item.name, `${path}.name`, undefined, NAME_RE, NAME_RULE) ?? "";
    if (name) unique("port name", name, path, "name");
    // A VXLAN port's MTU is the inner one: the underlay (1500 by default) carries 50 bytes more.
    const mtu = type === "vxlan"
      ? c.int(item.mtu, `${path}.mtu`, 68, 9000 - VXLAN_OVERHEAD, 1500 - VXLAN_OVERHEAD) ?? 1450
      : c.int(item.mtu, `${path}.mtu`, 68, 9000, 1500) ?? 1500;
    const vlan = parseVlan(c, item.vlan, `${path}.vlan`);
    const queues = type === "af-packet" || type === "vxlan"
      ? 1
      : c.int(item.queues, `${path}.queues`, 1, 8, 1) ?? 1;
    const rxqAffinity =
      parseAffinity(c, item.rxqAffinity, `${path}.rxqAffinity`, queues, threads) ??
        Array.from({ length: queues }, () => nextWorker++ % (threads ?? 1));
    const safety = parsePortSafety(c, item, path, mtu);
    const common = { name, mtu, vlan, queues, rxqAffinity, safety };
    if (type === "vhost-user") {
      if (item.io !== undefined) {
        c.add(`${path}.io`, "not used by vhost-user ports (af-packet only)");
      }
      const mode = c.oneOf(item.mode, `${path}.mode`, ["server", "client"] as const, "server");
      const given = c.str(item.socket, `${path}.socket`, undefined, /./, "must not be empty");
      const socket = given ? resolve(baseDir, given) : "";
      if (socket && checkSocket(c, `${path}.socket`, socket, mode)) {
        unique("socket", socket, path, "socket");
      }
      const packedRing = c.bool(item.packedRing, `${path}.packedRing`, true);
      const offloads = c.bool(item.offloads, `${path}.offloads`, true);
      ports.push({ type, ...common, socket, mode: mode ?? "server", packedRing, offloads });
    } else if (type === "vxlan") {
      const vxlan = parseVxlan(c, item, path);
      if (vxlan.local) unique("VTEP", `${vxlan.local}:${vxlan.udpPort}`, path, "local");
      ports.push({ type, ...common, queues: 1, ...vxlan });
    } else {
      // With an unknown type this is a placeholder that keeps the name findable for fdb.static;
      // the result is discarded anyway.
      const ifname = type &&
        c.str(item.interface, `${path}.interface`, undefined, IFNAME_RE, IFNAME_RULE);
      if (ifname) unique("interface", ifname, path, "interface");
      const io = type && c.oneOf(item.io, `${path}.io`, ["ring", "syscall"] as const, "ring");
      ports.push({
        type: "af-packet",
        ...common,
        interface: ifname ?? "",
        queues: 1,
        io: io ?? "ring",
      });
    }
  });
  return ports;
}

/** The VXLAN fields of a port; every problem is reported, the result is a placeholder then. */
function parseVxlan(c: Checker, item: Obj, path: string) {
  const vni = c.int(item.vni, `${path}.vni`, 0, 0xffffff) ?? 0;
  const local = ipv4(c, item.local, `${path}.local`) ?? "";
  const udpPort = c.int(item.udpPort, `${path}.udpPort`, 1, 65535, VXLAN_UDP_PORT) ?? 4789;
  const remotes: string[] = [];
  if (item.remotes === undefined) c.add(`${path}.remotes`, "required key is missing");
  else if (!Array.isArray(item.remotes)) {
    c.add(`${path}.remotes`, `expected an array of IPv4 addresses, got ${describe(item.remotes)}`);
  } else {
    item.remotes.forEach((r, i) => {
      const at = `${path}.remotes[${i}]`;
      const ip = ipv4(c, r, at);
      if (ip === undefined) return;
      if (ip === local) c.add(at, `${ip} is this port's own local address`);
      else if (remotes.includes(ip)) c.add(at, `duplicate remote ${ip}`);
      else remotes.push(ip);
    });
  }
  const remoteMacs: { mac: string; remote: string }[] = [];
  // MAC -> VTEP address: the keys are MACs, so no key list to check them against.
  const macs = item.remoteMacs ?? {};
  if (!isObject(macs)) {
    c.add(`${path}.remoteMacs`, `expected an object of MAC: IPv4 address, got ${describe(macs)}`);
  }
  for (const [key, value] of Object.entries(isObject(macs) ? macs : {})) {
    const at = `${path}.remoteMacs["${key}"]`;
    const mac = normalizeMac(key);
    if (!mac) c.add(at, `${JSON.stringify(key)} is not a MAC address like 52:54:00:00:00:01`);
    else if (parseInt(mac, 16) & 1) c.add(at, `${mac} is multicast: a station is unicast`);
    else if (remoteMacs.some((m) => m.mac === mac)) c.add(at, `duplicate entry for ${mac}`);
    const remote = ipv4(c, value, at);
    if (remote === local && remote) c.add(at, `${remote} is this port's own local address`);
    else if (mac && remote) remoteMacs.push({ mac, remote });
  }
  const strict = c.bool(item.strict, `${path}.strict`, false);
  const tunnelGso = c.bool(item.tunnelGso, `${path}.tunnelGso`, false);
  return { vni, local, remotes, udpPort, remoteMacs, strict, tunnelGso };
}

/** A unicast IPv4 address in dotted quad form (no IPv6 outer header yet). */
function ipv4(c: Checker, v: unknown, at: string): string | undefined {
  const s = c.str(v, at);
  if (s === undefined) return;
  if (!IPV4_RE.test(s)) {
    const why = s.includes(":") ? " (IPv6 VTEPs are not supported)" : "";
    return c.add(at, `${JSON.stringify(s)} is not an IPv4 address like 192.0.2.1${why}`);
  }
  const first = Number(s.split(".")[0]);
  if (first === 0 || first >= 224) {
    return c.add(at, `${s} is not a unicast address (multicast flooding is not supported)`);
  }
  return s;
}

function checkSocket(c: Checker, at: string, socket: string, mode?: string): boolean {
  const bytes = new TextEncoder().encode(socket).length;
  if (bytes > MAX_SOCKET_PATH) {
    return !c.add(at, `${socket} is ${bytes} bytes; a unix socket path holds ${MAX_SOCKET_PATH}`);
  }
  const dir = dirname(socket);
  const dirInfo = stat(dir);
  if (dirInfo && !dirInfo.isDirectory) return !c.add(at, `${dir} is not a directory`);
  if (!dirInfo && mode === "client") return !c.add(at, `directory ${dir} does not exist`);
  if (!dirInfo && !stat(dirname(dir))?.isDirectory) {
    // Server mode: the port creates a missing socket directory when it starts listening; one
    // missing level is accepted, deeper is more likely a typo than a plan.
    return !c.add(at, `directory ${dir} does not exist and ${dirname(dir)} does not either`);
  }
  const info = stat(socket, true);
  if (info && !info.isSocket) return !c.add(at, `${socket} exists and is not a socket`);
  return true;
}

function stat(path: string, link = false): Deno.FileInfo | null {
  try {
    return link ? Deno.lstatSync(path) : Deno.statSync(path);
  } catch {
    return null;
  }
}

function parseVlan(c: Checker, v: unknown, path: string): VlanConfig {
  // No vlan key: the port carries every VLAN as-is (OVS's default).
  if (v === undefined) return { mode: "trunk", allowed: "all", native: 0 };
  const o = c.object(v, path, ["mode", "tag", "allowed", "native"]) ?? {};
  const mode = c.oneOf(o.mode, `${path}.mode`, ["access", "trunk"] as const);
  const misplaced = mode === "access" ? ["allowed", "native"] : mode ? ["tag"] : [];
  for (const key of misplaced.filter((k) => o[k] !== undefined)) {
    c.add(`${path}.${key}`, `not used by ${mode} ports`);
  }
  if (mode === undefined) return { mode: "access", tag: 1 }; // reported; a placeholder
  if (mode === "access") return { mode, tag: vlanId(c, o.tag, `${path}.tag`) ?? 1 };
  let allowed: number[] | "all" = "all";
  if (Array.isArray(o.allowed)) {
    if (!o.allowed.length) c.add(`${path}.allowed`, "is empty: omit it to allow every VLAN");
    const ids = o.allowed.map((id, i) => vlanId(c, id, `${path}.allowed[${i}]`) ?? 1);
    allowed = [...new Set(ids)].sort((a, b) => a - b);
  } else if (o.allowed !== undefined) {
    c.add(`${path}.allowed`, `expected an array of VLAN ids, got ${describe(o.allowed)}`);
  }
  const native = o.native === undefined ? 0 : vlanId(c, o.native, `${path}.native`, true) ?? 0;
  if (native && allowed !== "all" && !allowed.includes(native)) {
    c.add(`${path}.native`, `native VLAN ${native} is not in allowed [${allowed.join(", ")}]`);
  }
  return { mode: "trunk", allowed, native };
}

function vlanId(c: Checker, v: unknown, at: string, native = false): number | undefined {
  if (v === undefined) return c.add(at, "required key is missing");
  const id = v as number;
  if (Number.isInteger(id) && id <= 4094 && (id >= 1 || (native && id === 0))) return id;
  const zero = native ? " (or 0 for untagged)" : "";
  c.add(at, `expected a VLAN id from 1 to 4094${zero}, got ${describe(v)}`);
}

/** poll.cpus: one CPU number per datapath worker. */
function parseCpus(c: Checker, v: unknown, threads: number): number[] | null {
  if (v === undefined) return null;
  if (!Array.isArray(v)) {
    c.add("poll.cpus", `expected an array of CPU numbers, got ${describe(v)}`);
    return null;
  }
  if (v.length !== threads) {
    c.add("poll.cpus", `has ${v.length} entries but threads is ${threads}: one CPU per worker`);
  }
  return v.map((cpu, i): number => {
    if (!Number.isInteger(cpu) || cpu < 0 || cpu > 1023) {
      c.add(`poll.cpus[${i}]`, `expected a CPU number 0..1023, got ${describe(cpu)}`);
    }
    return cpu;
  });
}

function parseAffinity(c: Checker, v: unknown, at: string, queues: number, threads?: number) {
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) {
    return c.add(at, `expected an array of worker indexes, got ${describe(v)}`);
  }
  if (v.length !== queues) {
    c.add(at, `has ${v.length} entries but the port has ${queues} queue pair(s): one per queue`);
  }
  return v.map((w, i): number => {
    if (!Number.isInteger(w) || w < 0) {
      c.add(`${at}[${i}]`, `expected a worker index, got ${describe(w)}`);
    } else if (threads !== undefined && w >= threads) {
      c.add(`${at}[${i}]`, `worker ${w} does not exist: threads is ${threads}`);
    }
    return w;
  });
}

function parseFdb(
  c: Checker,
  v: unknown,
  ports: PortConfig[],
  mirrors: MirrorConfig[],
): FdbConfig {
  const o = c.section(v, "fdb", ["agingSeconds", "maxEntries", "maxPerPort", "static"]);
  const agingSeconds = c.int(o.agingSeconds, "fdb.agingSeconds", 10, 1_000_000, 300) ?? 300;
  const maxEntries = c.int(o.maxEntries, "fdb.maxEntries", 16, 1_048_576, 8192) ?? 8192;
  const maxPerPort = c.int(o.maxPerPort, "fdb.maxPerPort", 0, maxEntries, 0) ?? 0;
  const list = Array.isArray(o.static) ? o.static : [];
  if (o.static !== undefined && !Array.isArray(o.static)) {
    c.add("fdb.static", `expected an array, got ${describe(o.static)}`);
  }
  if (list.length > maxEntries) c.add("fdb.static", `${list.length} entries exceed fdb.maxEntries`);
  const seen = new Map<string, string>();
  const entries = list.map((item, i): StaticFdbEntry => {
    const path = `fdb.static[${i}]`;
    const e = c.object(item, path, ["mac", "vlan", "port"]) ?? {};
    const mac = parseStaticMac(c, e.mac, `${path}.mac`);
    const vlan = c.int(e.vlan, `${path}.vlan`, 0, 4094, 0);
    const portName = c.str(e.port, `${path}.port`);
    const port = ports.find((x) => x.name === portName);
    if (portName !== undefined && !port) {
      const hint = closest(portName, ports.map((x) => x.name));
      c.add(`${path}.port`, `no port named ${JSON.stringify(portName)}${hint}`);
    } else if (port && mirrors.some((m) => m.output === port.name)) {
      c.add(`${path}.port`, `${port.name} is a mirror output: it is not part of the bridge`);
    } else if (port && vlan !== undefined && !carries(port.vlan, vlan)) {
      c.add(`${path}.vlan`, `port ${port.name} does not carry VLAN ${vlan}`);
    }
    const key = `${mac} on VLAN ${vlan}`;
    if (mac && seen.has(key)) c.add(path, `duplicate entry for ${key} (${seen.get(key)})`);
    seen.set(key, `also ${path}`);
    return { mac: mac ?? "", vlan: vlan ?? 0, port: portName ?? "" };
  });
  return { agingSeconds, maxEntries, maxPerPort, static: entries };
}

function parseStaticMac(c: Checker, v: unknown, at: string): string | undefined {
  const given = c.str(v, at);
  if (given === undefined) return;
  const mac = normalizeMac(given);
  if (!mac) {
    return c.add(at, `${JSON.stringify(given)} is not a MAC address like 52:54:00:00:00:01`);
  }
  if (parseInt(mac, 16) & 1) {
    return c.add(at, `${mac} is multicast: static entries must be unicast`);
  }
  if (mac === "00:00:00:00:00:00") return c.add(at, "the all-zero MAC is not a station address");
  return mac;
}

function carries(vlan: VlanConfig, id: number): boolean {
  if (vlan.mode === "access") return id === vlan.tag;
  return id === vlan.native || (id > 0 && (vlan.allowed === "all" || vlan.allowed.includes(id)));
}

/** Where and why JSON.parse failed: a minimal JSON syntax walk that stops at the first error. */
function jsonSyntaxError(text: string): { at: number; message: string } {
  let i = 0;
  const fail = (what: string): never => {
    throw {
      at: i,
      message: i < text.length
        ? `${what}, found ${JSON.stringify(text[i])}`
        : `${what}, found end of file`,
    };
  };
  const ws = () => {
    while (" \t\n\r".includes(text[i] ?? "x")) i++;
  };
  const string = () => {
    for (i++; text[i] !== '"'; i++) {
      if (i >= text.length || text[i] < " ") fail("unterminated string");
      if (text[i] === "\\" && !/^(["\\/bfnrt]|u[0-9a-fA-F]{4})/.test(text.slice(++i, i + 5))) {
        fail("bad escape");
      }
    }
    i++;
  };
  const value = (): void => {
    ws();
    const open = text[i];
    if (open === "{" || open === "[") {
      const close = open === "{" ? "}" : "]";
      i++;
      ws();
      if (text[i] === close) return void i++;
      for (;;) {
        ws();
        if (open === "{") {
          if (text[i] !== '"') fail("expected a double-quoted key");
          string();
          ws();
          if (text[i] !== ":") fail("expected ':'");
          i++;
        }
        value();
        ws();
        if (text[i] === close) return void i++;
        if (text[i] !== ",") fail(`expected ',' or '${close}'`);
        i++;
      }
    }
    if (open === '"') return string();
    const m = /-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?|true|false|null/y;
    m.lastIndex = i;
    if (!m.test(text)) fail("expected a value");
    i = m.lastIndex;
  };
  try {
    value();
    ws();
    if (i < text.length) fail("expected end of file after the value");
  } catch (e) {
    if (typeof e === "object" && e !== null && "at" in e) {
      return e as { at: number; message: string };
    }
    throw e;
  }
  return { at: i, message: "not valid JSON" };
}
