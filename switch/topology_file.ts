// The other direction of topology.ts: a loaded Topology written back in the topology file's
// format, so the running configuration (GET /topology) can be saved and started from. Values
// the loader defaulted are written out (a socket path resolved, queues dealt to workers), except
// where leaving a key out is the only way to say it (a VLAN trunk of every VLAN).
import type { PortSafetyConfig } from "./safety_config.ts";
import type { PortConfig, Topology, VlanConfig } from "./topology.ts";

export type TopologyFile = Record<string, unknown> & { ports: PortFile[] };
export type PortFile = Record<string, unknown> & { name: string; type: string };

export function vlanToFile(v: VlanConfig): Record<string, unknown> | undefined {
  if (v.mode === "access") return { mode: "access", tag: v.tag };
  if (v.allowed === "all" && v.native === 0) return undefined; // the default: no vlan key
  return {
    mode: "trunk",
    ...(v.allowed === "all" ? {} : { allowed: v.allowed }),
    ...(v.native === 0 ? {} : { native: v.native }),
  };
}

/** A value without its null fields (the file says "off" by leaving a key out). */
function present(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(present);
  if (typeof v !== "object" || v === null) return v;
  return Object.fromEntries(
    Object.entries(v).filter(([, x]) => x !== null).map(([k, x]) => [k, present(x)]),
  );
}

/** The port's safety sections (security, stormControl, policing, loopGuard) that are on. */
function safetyToFile(s: PortSafetyConfig): Record<string, unknown> {
  return present(s) as Record<string, unknown>;
}

export function portToFile(p: PortConfig): PortFile {
  const common = {
    mtu: p.mtu,
    ...(vlanToFile(p.vlan) ? { vlan: vlanToFile(p.vlan) } : {}),
    rxqAffinity: p.rxqAffinity,
    ...safetyToFile(p.safety),
  };
  if (p.type === "vhost-user") {
    return {
      name: p.name,
      type: p.type,
      socket: p.socket,
      mode: p.mode,
      queues: p.queues,
      packedRing: p.packedRing,
      offloads: p.offloads,
      ...common,
    };
  }
  if (p.type === "af-packet") {
    return { name: p.name, type: p.type, interface: p.interface, io: p.io, ...common };
  }
  return {
    name: p.name,
    type: p.type,
    vni: p.vni,
    local: p.local,
    remotes: p.remotes,
    udpPort: p.udpPort,
    remoteMacs: Object.fromEntries(p.remoteMacs.map((m) => [m.mac, m.remote])),
    strict: p.strict,
    tunnelGso: p.tunnelGso,
    ...common,
  };
}

export function topologyToFile(t: Topology): TopologyFile {
  return {
    name: t.name,
    http: {
      listen: t.http.listen,
      ...(t.http.token === null ? {} : { token: t.http.token }),
      readOnly: t.http.readOnly,
    },
    threads: t.threads,
    poll: {
      mode: t.poll.mode,
      idleAfterMs: t.poll.idleAfterMs,
      ...(t.poll.cpus === null ? {} : { cpus: t.poll.cpus }),
      flowStats: t.poll.flowStats,
    },
    fdb: {
      agingSeconds: t.fdb.agingSeconds,
      maxEntries: t.fdb.maxEntries,
      maxPerPort: t.fdb.maxPerPort,
      static: t.fdb.static.map((s) => ({ mac: s.mac, vlan: s.vlan, port: s.port })),
    },
    ports: t.ports.map(portToFile),
    ...(t.mirrors.length ? { mirrors: present(t.mirrors) } : {}),
  };
}
