// The topology file's L2 safety sections: per port `security`, `stormControl`, `policing` and
// `loopGuard`, and the root `mirrors` list. Parsed into fully defaulted values (null: off), with
// every problem reported under its JSON path like the rest of the topology.
import { parseIpv4, parseIpv6 } from "./port_security.ts";
import { type Checker, closest, describe, normalizeMac } from "./config_checker.ts";

export interface PortSecurityConfig {
  /** Lower-case MACs the port may send from; empty: any (learnOnce still applies). */
  allowedMacs: string[];
  /** Pin the first source MAC the port sends from; every other is then refused. */
  learnOnce: boolean;
  /** IPv4 addresses the port may use (IPv4 source, ARP sender); null: not checked. */
  ipv4: string[] | null;
  /** IPv6 addresses (source, Neighbor Advertisement target) besides its EUI-64 link-local. */
  ipv6: string[] | null;
}

/** Frames per second per class, null for no limit; bursts in frames. */
export interface StormControlConfig {
  broadcast: number | null;
  multicast: number | null;
  unknownUnicast: number | null;
  burstFrames: number;
}

export interface RateLimitConfig {
  /** Ethernet frame bits (no preamble, no FCS) per second. */
  bitsPerSecond: number;
  burstBytes: number;
}

export interface PolicingConfig {
  ingress: RateLimitConfig | null;
  egress: RateLimitConfig | null;
}

export interface LoopGuardConfig {
  movesPerSecond: number;
  retrySeconds: number;
}

export interface PortSafetyConfig {
  security: PortSecurityConfig | null;
  stormControl: StormControlConfig | null;
  policing: PolicingConfig | null;
  loopGuard: LoopGuardConfig | null;
}

export interface MirrorConfig {
  name: string;
  /** Mirrored port names. */
  ports: string[];
  direction: "ingress" | "egress" | "both";
  /** Only frames of this VLAN, or null for all. */
  vlan: number | null;
  /** The port copies go out of; it leaves the bridge. */
  output: string;
}

export const PORT_SAFETY_KEYS = ["security", "stormControl", "policing", "loopGuard"];

export const NO_SAFETY: PortSafetyConfig = {
  security: null,
  stormControl: null,
  policing: null,
  loopGuard: null,
};

const MAX_RATE_BPS = 400_000_000_000;
const MAX_FPS = 100_000_000;
/**
 * Default loop guard threshold. A station moving between ports even once a second is rare (a
 * VM migrating moves once); a loop through af-packet uplinks moves a MAC on every round trip,
 * which the kernel's ring block timeout stretches to a few milliseconds: ~100 moves/s with one
 * frame looping each way, thousands with real traffic.
 */
export const LOOP_GUARD_MOVES_PER_SECOND = 20;
export const LOOP_GUARD_RETRY_SECONDS = 30;

type Obj = Record<string, unknown>;

/** The safety keys of one port object (`item`); `mtu` sizes the default policing burst. */
export function parsePortSafety(c: Checker, item: Obj, path: string, mtu: number) {
  const security = item.security === undefined
    ? null
    : parseSecurity(c, item.security, `${path}.security`);
  const stormControl = item.stormControl === undefined
    ? null
    : parseStorm(c, item.stormControl, `${path}.stormControl`);
  const policing = item.policing === undefined
    ? null
    : parsePolicing(c, item.policing, `${path}.policing`, mtu);
  const loopGuard = parseLoopGuard(c, item.loopGuard, `${path}.loopGuard`);
  return { security, stormControl, policing, loopGuard };
}

function list(c: Checker, v: unknown, at: string): unknown[] | null {
  if (v === undefined) return null;
  if (Array.isArray(v)) return v;
  c.add(at, `expected an array, got ${describe(v)}`);
  return null;
}

function parseSecurity(c: Checker, v: unknown, at: string): PortSecurityConfig | null {
  const o = c.object(v, at, ["allowedMacs", "learnOnce", "ipv4", "ipv6"]);
  if (!o) return null;
  const macs = (list(c, o.allowedMacs, `${at}.allowedMacs`) ?? []).map((m, i) => {
    const where = `${at}.allowedMacs[${i}]`;
    const mac = typeof m === "string" ? normalizeMac(m) : null;
    if (!mac) {
      return c.add(where, `expected a MAC address like 52:54:00:00:00:01, got ${describe(m)}`);
    }
    if (parseInt(mac, 16) & 1) return c.add(where, `${mac} is multicast: not a station address`);
    return mac;
  }).filter((m): m is string => m !== undefined);
  const learnOnce = c.bool(o.learnOnce, `${at}.learnOnce`, false);
  const addresses = (key: "ipv4" | "ipv6", parse: (s: string) => unknown) =>
    list(c, o[key], `${at}.${key}`)?.map((a, i) => {
      if (typeof a !== "string" || parse(a) === null) {
        c.add(
          `${at}.${key}[${i}]`,
          `expected an ${key === "ipv4" ? "IPv4" : "IPv6"} address, got ${describe(a)}`,
        );
      }
      return String(a);
    }) ?? null;
  const ipv4 = addresses("ipv4", parseIpv4);
  const ipv6 = addresses("ipv6", parseIpv6);
  if (!macs.length && !learnOnce && ipv4 === null && ipv6 === null) {
    c.add(at, "checks nothing: give allowedMacs, learnOnce, ipv4 or ipv6");
  }
  return { allowedMacs: macs, learnOnce, ipv4, ipv6 };
}

function parseStorm(c: Checker, v: unknown, at: string): StormControlConfig | null {
  const o = c.object(v, at, ["broadcast", "multicast", "unknownUnicast", "burstFrames"]);
  if (!o) return null;
  const rate = (key: string) =>
    o[key] === undefined ? null : c.int(o[key], `${at}.${key}`, 1, MAX_FPS) ?? null;
  const broadcast = rate("broadcast");
  const multicast = rate("multicast");
  const unknownUnicast = rate("unknownUnicast");
  const top = Math.max(broadcast ?? 0, multicast ?? 0, unknownUnicast ?? 0);
  if (
    top === 0 && o.broadcast === undefined && o.multicast === undefined &&
    o.unknownUnicast === undefined
  ) {
    c.add(at, "limits nothing: give broadcast, multicast or unknownUnicast (frames per second)");
  }
  // Default burst: a tenth of a second of the highest limit, so short bursts pass.
  const burstFrames =
    c.int(o.burstFrames, `${at}.burstFrames`, 1, MAX_FPS, Math.max(1, Math.ceil(top / 10))) ??
      1;
  return { broadcast, multicast, unknownUnicast, burstFrames };
}

function parseRate(c: Checker, v: unknown, at: string, mtu: number): RateLimitConfig | null {
  if (v === undefined) return null;
  const o = c.object(v, at, ["bitsPerSecond", "burstBytes"]);
  if (!o) return null;
  const bitsPerSecond = c.int(o.bitsPerSecond, `${at}.bitsPerSecond`, 8000, MAX_RATE_BPS);
  // Default burst: a tenth of a second at the rate, and at least two full frames.
  const frame = mtu + 26;
  const dflt = Math.max(2 * frame, Math.ceil((bitsPerSecond ?? 0) / 80));
  const burstBytes = c.int(
    o.burstBytes,
    `${at}.burstBytes`,
    frame,
    0x3fffffff,
    Math.min(dflt, 0x3fffffff),
  );
  if (burstBytes !== undefined && burstBytes < frame) return null;
  return bitsPerSecond === undefined ? null : { bitsPerSecond, burstBytes: burstBytes ?? dflt };
}

function parsePolicing(c: Checker, v: unknown, at: string, mtu: number): PolicingConfig | null {
  const o = c.object(v, at, ["ingress", "egress"]);
  if (!o) return null;
  if (o.ingress === undefined && o.egress === undefined) c.add(at, "give ingress and/or egress");
  return {
    ingress: parseRate(c, o.ingress, `${at}.ingress`, mtu),
    egress: parseRate(c, o.egress, `${at}.egress`, mtu),
  };
}

function parseLoopGuard(c: Checker, v: unknown, at: string): LoopGuardConfig | null {
  if (v === undefined || v === false) return null;
  const dflt = {
    movesPerSecond: LOOP_GUARD_MOVES_PER_SECOND,
    retrySeconds: LOOP_GUARD_RETRY_SECONDS,
  };
  if (v === true) return dflt;
  const o = c.object(v, at, ["movesPerSecond", "retrySeconds"]);
  if (!o) return null;
  return {
    movesPerSecond:
      c.int(o.movesPerSecond, `${at}.movesPerSecond`, 1, 100_000_000, dflt.movesPerSecond) ??
        dflt.movesPerSecond,
    retrySeconds: c.int(o.retrySeconds, `${at}.retrySeconds`, 1, 86_400, dflt.retrySeconds) ??
      dflt.retrySeconds,
  };
}

interface NamedPort {
  name: string;
  safety: PortSafetyConfig;
}

/** The root `mirrors` list, checked against the ports. */
export function parseMirrors(c: Checker, v: unknown, ports: NamedPort[]): MirrorConfig[] {
  const items = list(c, v, "mirrors") ?? [];
  const names = ports.map((p) => p.name);
  const port = (name: unknown, at: string): string | undefined => {
    if (typeof name !== "string") return c.add(at, `expected a port name, got ${describe(name)}`);
    if (!names.includes(name)) {
      return c.add(at, `no port named ${JSON.stringify(name)}${closest(name, names)}`);
    }
    return name;
  };
  const seen = new Set<string>();
  const mirrors = items.map((item, i): MirrorConfig | undefined => {
    const at = `mirrors[${i}]`;
    const o = c.object(item, at, ["name", "ports", "direction", "vlan", "output"]);
    if (!o) return;
    const name = c.str(o.name, `${at}.name`, `mirror${i}`) ?? "";
    if (seen.has(name)) c.add(`${at}.name`, `duplicate mirror name ${JSON.stringify(name)}`);
    seen.add(name);
    const sources =
      (list(c, o.ports, `${at}.ports`) ?? c.add(`${at}.ports`, "required key is missing") ?? [])
        .map((p, j) => port(p, `${at}.ports[${j}]`)).filter((p): p is string => p !== undefined);
    if (Array.isArray(o.ports) && o.ports.length === 0) {
      c.add(`${at}.ports`, "is empty: name the ports to mirror");
    }
    const direction = c.oneOf(
      o.direction,
      `${at}.direction`,
      ["ingress", "egress", "both"] as const,
      "both",
    );
    const vlan = o.vlan === undefined ? null : c.int(o.vlan, `${at}.vlan`, 0, 4094) ?? null;
    const output = port(o.output, `${at}.output`);
    if (output && sources.includes(output)) c.add(`${at}.output`, `${output} cannot mirror itself`);
    return { name, ports: sources, direction: direction ?? "both", vlan, output: output ?? "" };
  }).filter((m): m is MirrorConfig => m !== undefined);
  // An output port carries only copies: it must not be mirrored, nor meter what it never forwards.
  const outputs = new Set(mirrors.map((m) => m.output));
  mirrors.forEach((m, i) => {
    for (const p of m.ports) {
      if (outputs.has(p)) {
        c.add(`mirrors[${i}].ports`, `${p} is a mirror output: it is not mirrored`);
      }
    }
  });
  for (const out of outputs) {
    const cfg = ports.find((p) => p.name === out)?.safety;
    const on = cfg &&
      PORT_SAFETY_KEYS.filter((k) => cfg[k as keyof PortSafetyConfig] !== null && k !== "policing");
    if (on?.length) {
      c.add(
        `mirrors`,
        `output port ${out} forwards nothing, so ${on.join(", ")} has no effect on it: remove it`,
      );
    }
  }
  return mirrors;
}
