// The running switch seen as plain data: what the HTTP endpoint, the CLI and the demo read. The
// switch layer owns this contract (the Switch implements SwitchView; HTTP tests use an in-memory
// double), so the layers above depend on the switch and never the reverse.

import type { PortSafetyStatus } from "./safety.ts";

export type MaybePromise<T> = T | Promise<T>;

export interface SwitchInfo {
  name: string;
  version: string;
  uptimeSeconds: number;
  /** Datapath worker count. */
  threads: number;
  /** Per datapath worker: poll rounds that moved frames / none, sleeps, frames moved. */
  workers?: {
    worker: number;
    busyRounds: number;
    idleRounds: number;
    sleeps: number;
    frames: number;
  }[];
}

/** vhost-user: "listening" (server, no peer) / "connecting" (client) / "connected";
 * af-packet: "up" / "down" (the interface's link state). */
export type PortState = "listening" | "connecting" | "connected" | "up" | "down";

export interface QueueStatus {
  /** Queue pair index. */
  index: number;
  /** Worker polling this queue pair's rx ring. */
  worker: number;
}

interface PortStatusCommon {
  name: string;
  state: PortState;
  mtu: number;
  /** Negotiated virtio feature names (vhost-user); empty for af-packet. */
  features: string[];
  queues: QueueStatus[];
  /** e.g. { rx_packets: 10, tx_dropped: 0 }: plain numbers so it serialises as JSON. */
  counters: Record<string, number>;
  /** Port security, storm control, policing, loop guard and mirrors, when any is configured. */
  safety?: PortSafetyStatus;
}
export type PortStatus =
  | PortStatusCommon & { type: "vhost-user"; socket: string; mode: "server" | "client" }
  | PortStatusCommon & { type: "af-packet"; interface: string }
  | PortStatusCommon & {
    type: "vxlan";
    vni: number;
    /** local address:UDP port of the VTEP. */
    local: string;
    /** Remote VTEPs known: the flood list first, then static targets and learned ones. */
    remotes: string[];
    flood: number;
  };

/** Where a port attaches: its socket, interface or VTEP, for tables. */
export function portAttachment(p: PortStatus): string {
  if (p.type === "vhost-user") return `${p.socket} (${p.mode})`;
  if (p.type === "vxlan") {
    return `VNI ${p.vni} ${p.local} -> ${p.remotes.slice(0, p.flood).join(",")}`;
  }
  return p.interface;
}

export interface FdbEntry {
  /** Lower-case, colon separated. */
  mac: string;
  vlan: number;
  port: string;
  /** Seconds since the MAC was last seen; 0 for static entries. */
  ageSeconds: number;
  static: boolean;
  /** On a VXLAN port: the remote VTEP the MAC is behind, when known. */
  remote?: string;
}

/** Per datapath worker. busyRounds/idleRounds are poll rounds that moved frames / none. */
export interface WorkerStats {
  worker: number;
  busyRounds: number;
  idleRounds: number;
  sleeps: number;
  frames: number;
  /** Times the worker's loop failed and went on without the port at fault (that port was
   * disconnected). */
  failures: number;
  framesPerSecond: number;
  /** Share of the last interval's time spent in poll rounds that moved frames, 0 to 1. */
  busyFraction: number;
}

/** Per port: counters (as in /ports) and frames per second over the last interval (1 s). */
export interface PortRates {
  name: string;
  counters: Record<string, number>;
  rxPerSecond: number;
  txPerSecond: number;
}

export interface FdbStats {
  entries: number;
  capacity: number;
  learned: number;
  moved: number;
  refusedFull: number;
  /** Learned entries evicted (least recently seen of the fullest port) to make room. */
  evicted?: number;
  /** New MACs refused by the per-port limit (fdb.maxPerPort). */
  refusedPortLimit?: number;
  aged: number;
  flushed: number;
}

export interface SwitchStats {
  uptimeSeconds: number;
  workers: WorkerStats[];
  ports: PortRates[];
  fdb: FdbStats;
}

/** Every given field must match; an empty filter matches everything. */
export interface FdbFilter {
  port?: string;
  vlan?: number;
  /** Normalised like FdbEntry.mac. */
  mac?: string;
}

/** What the HTTP layer reads from (and the few things it asks of) the running switch. */
export interface SwitchView {
  info(): MaybePromise<SwitchInfo>;
  ports(): MaybePromise<PortStatus[]>;
  port(name: string): MaybePromise<PortStatus | undefined>;
  fdb(): MaybePromise<FdbEntry[]>;
  /** Removes the learned (non-static) entries matching the filter; returns how many. */
  flushFdb(filter: FdbFilter): MaybePromise<number>;
  stats(): MaybePromise<SwitchStats>;
  /**
   * A live pcap stream of frames passing `port` (both directions), global header first; ends
   * after maxFrames frames or `seconds`, or when `signal` aborts. undefined for an unknown port.
   */
  capture(port: string, opts: CaptureOptions): AsyncIterable<Uint8Array> | undefined;
  /** The flows the datapath is using (GET /flows); absent when flows are not counted. */
  flows?(): MaybePromise<FlowEntry[]>;
  /** The changes a running switch accepts; absent for a view that cannot change. */
  control?: SwitchControl;
}

/** What a change to the running switch did, one line per step, and what it could not do. */
export interface ChangeResult {
  changed: string[];
  /** Settings that differ but only a restart of the switch applies (http.listen, threads). */
  notApplied: string[];
}

/**
 * Changes to the running switch. Bodies are in the topology file's format; a bad one throws a
 * TopologyError with every problem and changes nothing. `who` names the requester in the log.
 */
export interface SwitchControl {
  /** The running configuration in the topology file's format. */
  topology(): Record<string, unknown>;
  addPort(body: unknown, who: string): Promise<ChangeResult>;
  /** undefined: no such port. */
  deletePort(name: string, who: string): Promise<ChangeResult | undefined>;
  patchPort(name: string, body: unknown, who: string): Promise<ChangeResult | undefined>;
  /** Adds or replaces a static entry `{ mac, vlan, port }`. */
  putFdb(body: unknown, who: string): Promise<ChangeResult>;
  /** Learned entries matching the filter go; with a MAC in it, static ones too. */
  deleteFdb(filter: FdbFilter, who: string): Promise<{ flushed: number; changed: string[] }>;
  /** Re-reads the topology file and applies the difference. */
  reload(who: string): Promise<ChangeResult>;
}

export interface CaptureOptions {
  maxFrames?: number;
  seconds?: number;
  signal?: AbortSignal;
}

export function matchesFdbFilter(entry: FdbEntry, filter: FdbFilter): boolean {
  return (filter.port === undefined || entry.port === filter.port) &&
    (filter.vlan === undefined || entry.vlan === filter.vlan) &&
    (filter.mac === undefined || entry.mac === filter.mac);
}

/** One flow of GET /flows: what the datapath did with frames of one key (flows.ts). */
export interface FlowEntry {
  inPort: string;
  /** The frames' VLAN (0: untagged domain); -1 when dropped before it was known. */
  vlan: number;
  src: string;
  dst: string;
  /** OVS-style: "output:vm2", "push_vlan(10),output:up", "flood:vm2,vm3", "drop(vlan)". */
  actions: string;
  /** "output" (one known port), "flood", or "drop". */
  action: "output" | "flood" | "drop";
  /** Per output port: the port and what happens to the tag ("push 10", "pop", "set 10", ""). */
  out: { port: string; tag: string }[];
  /** Why the frames were dropped (the drop counter's reason), for action "drop". */
  dropReason?: string;
  packets: number;
  bytes: number;
  /** Seconds since a frame last matched. */
  lastUsedSeconds: number;
}

/** Every given field must match; a MAC matches the source or the destination. */
export interface FlowFilter {
  port?: string;
  vlan?: number;
  mac?: string;
  /** Hide flows idle longer than this many seconds (default 10, like OVS's max-idle). */
  maxIdle?: number;
}

export function matchesFlowFilter(f: FlowEntry, filter: FlowFilter): boolean {
  return (filter.port === undefined || f.inPort === filter.port ||
    f.out.some((o) => o.port === filter.port)) &&
    (filter.vlan === undefined || f.vlan === filter.vlan) &&
    (filter.mac === undefined || f.src === filter.mac || f.dst === filter.mac) &&
    f.lastUsedSeconds <= (filter.maxIdle ?? 10);
}
