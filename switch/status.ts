// The switch as the HTTP endpoint, the CLI and the demo see it (SwitchView in view.ts): port
// status and counters, rates over the last second, worker load, the MAC table. It reads the
// bridge, the workers' counters and the ports' control side; it changes nothing but the FDB
// (flushFdb).
import { featureNames } from "../ports/vhost_user/features.ts";
import { isGuestRxRing, queuePairOf } from "../ports/vhost_user/virtqueue.ts";
import { nowSeconds } from "./aging.ts";
import type { Bridge } from "./bridge.ts";
import type { Datapath } from "./datapath.ts";
import { parseMac } from "../ports/ethernet.ts";
import type { PortControl } from "./port_control.ts";
import type { PortTable } from "./port_table.ts";
import type { SafetyPlane } from "./safety.ts";
import { MAX_PORTS, type Topology } from "./topology.ts";
import { VERSION } from "./version.ts";
import {
  type FdbEntry,
  type FdbFilter,
  matchesFdbFilter,
  type PortStatus,
  type SwitchInfo,
  type SwitchStats,
} from "./view.ts";

/** The bridge's per-port counters under the same snake_case names as the port counters. */
function bridgeCounters(bridge: Bridge, port: number): Record<string, number> {
  const c = bridge.portCounters(port);
  const fdb = bridge.fdb.portCounters(port);
  return {
    fdb_learned: fdb.learned,
    fdb_evicted: fdb.evicted,
    fdb_limit_refused: fdb.refusedLimit,
    drop_vlan: c.dropVlan,
    drop_multicast_src: c.dropMulticastSrc,
    drop_hairpin: c.dropHairpin,
    drop_dest_down: c.dropDestDown,
    drop_malformed: c.dropMalformed,
    learn_refused: c.learnRefused,
    flooded: c.flooded,
    unicast: c.unicast,
    mac_moved: c.macMoved,
  };
}

type WorkerStatsSample = ReturnType<Datapath["workerStats"]>[number];

export class SwitchStatus {
  readonly #started = Date.now();
  /** Counters one second ago and now, for rates. */
  #samples: { time: number; rx: number[]; tx: number[]; workers: WorkerStatsSample[] }[] = [];

  /** Per port number: its counters when its port got it, subtracted from what is shown. */
  readonly #zero = new Map<number, Record<string, number>>();

  constructor(
    readonly topology: Topology,
    readonly table: PortTable,
    readonly bridge: Bridge,
    readonly datapath: Datapath,
    readonly ports: PortControl,
    readonly safety?: SafetyPlane,
  ) {}

  /** Takes the counters' sample that rates are computed from; called once a second. */
  sample(): void {
    const ports = Array.from({ length: MAX_PORTS }, (_, i) => this.datapath.counters.port(i));
    this.#samples.push({
      time: performance.now(),
      rx: ports.map((c) => c.rx_packets),
      tx: ports.map((c) => c.tx_packets),
      workers: this.datapath.workerStats(),
    });
    if (this.#samples.length > 2) this.#samples.shift();
  }

  stats(): SwitchStats {
    const [a, b] = this.#samples.length === 2
      ? this.#samples
      : [this.#samples[0], this.#samples[0]];
    const seconds = Math.max((b.time - a.time) / 1000, 1e-9);
    const rate = (x: number, y: number) => b.time === a.time ? 0 : (y - x) / seconds;
    const fdb = this.bridge.fdb.counters();
    return {
      uptimeSeconds: Math.floor((Date.now() - this.#started) / 1000),
      workers: this.datapath.workerStats().map((w, i) => {
        // Share of the interval spent in poll rounds that moved frames (time, not rounds:
        // a round moving thousands of frames weighs more than 64 empty polls).
        const busyMs = b.workers[i].busyMs - a.workers[i].busyMs;
        const { busyMs: _, ...counts } = w;
        return {
          ...counts,
          framesPerSecond: rate(a.workers[i].frames, b.workers[i].frames),
          busyFraction: b.time === a.time ? 0 : Math.min(1, busyMs / (b.time - a.time)),
        };
      }),
      ports: this.table.entries().map(([i, p]) => ({
        name: p.name,
        counters: this.#status(i).counters,
        rxPerSecond: rate(a.rx[i], b.rx[i]),
        txPerSecond: rate(a.tx[i], b.tx[i]),
      })),
      fdb: {
        entries: this.bridge.fdb.size,
        capacity: this.bridge.fdb.capacity,
        learned: fdb.learned,
        moved: fdb.moved,
        refusedFull: fdb.refusedFull,
        evicted: fdb.evicted,
        refusedPortLimit: fdb.refusedPortLimit,
        aged: fdb.aged,
        flushed: fdb.flushed,
      },
    };
  }

  info(): SwitchInfo {
    return {
      name: this.topology.name,
      version: VERSION,
      uptimeSeconds: Math.floor((Date.now() - this.#started) / 1000),
      threads: this.topology.threads,
      workers: this.datapath.workerStats(),
    };
  }

  portList(): PortStatus[] {
    return this.table.entries().map(([i]) => this.#status(i));
  }

  port(name: string): PortStatus | undefined {
    const i = this.table.indexOf(name);
    return i < 0 ? undefined : this.#status(i);
  }

  #counters(i: number): Record<string, number> {
    return {
      ...this.datapath.counters.port(i),
      ...bridgeCounters(this.bridge, i),
      ...this.safety?.counters.port(i),
    };
  }

  /** Port number `i` goes to a new port: its counters start from zero. */
  resetCounters(i: number): void {
    this.#zero.set(i, this.#counters(i));
    this.bridge.fdb.resetPortCounters(i);
  }

  #status(i: number): PortStatus {
    const cfg = this.table.get(i)!;
    const counters = this.#counters(i);
    const zero = this.#zero.get(i);
    // fdb_learned is a gauge (the entries now), the rest count up.
    for (const k in zero) if (k !== "fdb_learned") counters[k] -= zero[k];
    // Only ports with something configured carry a `safety` object.
    const safety = this.safety?.status(i);
    const extra = safety && Object.keys(safety).length ? { safety } : {};
    if (cfg.type === "vxlan") {
      const vx = this.ports.vxlan.get(i)?.port;
      return {
        name: cfg.name,
        type: "vxlan",
        vni: cfg.vni,
        local: `${cfg.local}:${cfg.udpPort}`,
        remotes: vx?.remoteAddresses() ?? cfg.remotes,
        flood: cfg.remotes.length,
        state: vx ? "up" : "down",
        mtu: cfg.mtu,
        features: [],
        queues: [{ index: 0, worker: this.datapath.pollerOf(i, 0) }],
        counters,
        ...extra,
      };
    }
    if (cfg.type !== "vhost-user") {
      const packet = this.ports.packet.get(i);
      return {
        name: cfg.name,
        type: "af-packet",
        interface: cfg.interface,
        state: packet?.state === "up" ? "up" : "down",
        mtu: packet?.mtu ?? cfg.mtu,
        features: [],
        queues: [{ index: 0, worker: this.datapath.pollerOf(i, 0) }],
        counters: { ...counters, kernel_drops: packet?.kernelStats().drops ?? 0 },
        ...extra,
      };
    }
    const port = this.ports.vhostPort(cfg.name);
    const device = port?.connection?.device;
    const state = port?.state ?? "down";
    const queues = (device?.running?.queues ?? [])
      .filter((q) => !isGuestRxRing(q.index))
      .map((q) => queuePairOf(q.index))
      .map((pair) => ({ index: pair, worker: this.datapath.pollerOf(i, pair) }));
    return {
      name: cfg.name,
      type: "vhost-user",
      socket: cfg.socket,
      mode: cfg.mode,
      state: state === "running" ? "connected" : state === "stopped" ? "down" : state,
      mtu: cfg.mtu,
      features: device ? featureNames(device.features) : [],
      queues,
      counters: {
        ...counters,
        connections: port?.connections ?? 0,
        protocol_errors: port?.protocolErrors ?? 0,
      },
      ...extra,
    };
  }

  fdb(): FdbEntry[] {
    return this.bridge.fdb.entries(nowSeconds()).map((e) => {
      // Behind a VXLAN port: which VTEP, from the port's own MAC table.
      const vx = this.ports.vxlan.get(e.port)?.port;
      const mac = vx ? parseMac(e.mac) : null;
      const remote = mac ? vx?.remoteOf(mac.hi, mac.lo) : undefined;
      return {
        mac: e.mac,
        vlan: e.vlan,
        port: this.table.get(e.port)?.name ?? String(e.port),
        ageSeconds: e.static ? 0 : e.age,
        static: e.static,
        ...(remote === undefined ? {} : { remote }),
      };
    });
  }

  flushFdb(filter: FdbFilter): number {
    let removed = 0;
    for (const e of this.fdb()) {
      if (e.static || !matchesFdbFilter(e, filter)) continue;
      const { hi, lo } = parseMac(e.mac);
      if (this.bridge.fdb.delete(hi, lo, e.vlan)) removed++;
    }
    return removed;
  }
}
