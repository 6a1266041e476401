// The running switch: the bridge's shared state, the datapath Workers, every port's control
// side, and the periodic FDB aging. It is also the SwitchView the HTTP endpoint reads.
import { Reactor } from "../ffi/epoll.ts";
import {
  type FdbEntry,
  type FdbFilter,
  matchesFdbFilter,
  type PortStatus,
  type SwitchInfo,
  type SwitchStats,
  type SwitchView,
} from "../http/app.ts";
import { VhostUserPort } from "../ports/vhost_user/vhost_user_port.ts";
import { AfPacketPort } from "../ports/af_packet/af_packet_port.ts";
import type { DatapathState, DeviceDatapath } from "../ports/vhost_user/device.ts";
import { featureNames } from "../ports/vhost_user/features.ts";
import { Bridge, type PortVlanConfig } from "./bridge.ts";
import { Datapath } from "./datapath.ts";
import { installSigbusHandler, sigbusCount } from "../ffi/sigbus.ts";
import { concatBytes, pcapHeader, pcapRecord, TapReader } from "./tap.ts";
import { parseMac } from "./ethernet.ts";
import type { PortConfig, Topology, VlanConfig } from "./topology.ts";

export const VERSION = "0.1.0";

function bridgeVlan(v: VlanConfig): PortVlanConfig {
  if (v.mode === "access") return { mode: "access", tag: v.tag };
  return { mode: "trunk", allowed: v.allowed === "all" ? undefined : v.allowed, native: v.native };
}

const nowSeconds = () => Math.floor(Date.now() / 1000);

/** The bridge's per-port counters under the same snake_case names as the port counters. */
function bridgeCounters(bridge: Bridge, port: number): Record<string, number> {
  const c = bridge.portCounters(port);
  return {
    drop_vlan: c.dropVlan,
    drop_multicast_src: c.dropMulticastSrc,
    drop_hairpin: c.dropHairpin,
    drop_dest_down: c.dropDestDown,
    drop_malformed: c.dropMalformed,
    learn_refused: c.learnRefused,
    flooded: c.flooded,
    unicast: c.unicast,
  };
}

type WorkerStatsSample = ReturnType<Datapath["workerStats"]>[number];

export class Switch implements SwitchView {
  readonly #started = Date.now();
  readonly #ports: VhostUserPort[] = [];
  readonly #packetPorts = new Map<number, AfPacketPort>();
  #sigbusSeen = 0;
  /** Aborted at shutdown: running captures end their pcap streams cleanly. */
  readonly #captures = new AbortController();
  #agingTimer: ReturnType<typeof setInterval> | undefined;
  #sampleTimer: ReturnType<typeof setInterval> | undefined;
  /** Counters one second ago and now, for rates. */
  #samples: { time: number; rx: number[]; tx: number[]; workers: WorkerStatsSample[] }[] = [];
  #stopping: Promise<void> | null = null;

  private constructor(
    readonly topology: Topology,
    readonly bridge: Bridge,
    readonly datapath: Datapath,
    readonly reactor: Reactor,
    readonly log: (msg: string) => void,
  ) {}

  static async start(
    topology: Topology,
    log: (msg: string) => void = console.log,
  ): Promise<Switch> {
    installSigbusHandler();
    const nameOf = (port: string) => topology.ports.findIndex((p) => p.name === port);
    const vlans = topology.ports.map((p) => bridgeVlan(p.vlan));
    const bridge = new Bridge({
      vlans,
      statics: topology.fdb.static.map((s) => ({ mac: s.mac, vlan: s.vlan, port: nameOf(s.port) })),
      fdbCapacity: topology.fdb.maxEntries,
      writers: topology.threads,
    });
    const datapath = await Datapath.start({
      threads: topology.threads,
      portCount: topology.ports.length,
      bridge: { vlans, fdb: bridge.fdb.buffer, state: bridge.state },
      busyPoll: topology.poll.mode === "busy",
      idleAfterMs: topology.poll.idleAfterMs,
      cpus: topology.poll.cpus,
      affinity: topology.ports.map((p) => p.rxqAffinity),
    });
    const sw = new Switch(topology, bridge, datapath, new Reactor(), log);
    try {
      for (const [index, cfg] of topology.ports.entries()) await sw.#startPort(cfg, index);
    } catch (err) {
      await sw.stop();
      throw err;
    }
    const agingEvery = Math.max(1, Math.min(10, Math.floor(topology.fdb.agingSeconds / 10))) * 1000;
    sw.#sample();
    sw.#sampleTimer = setInterval(() => sw.#sample(), 1000);
    sw.#agingTimer = setInterval(
      () => bridge.fdb.age(nowSeconds(), topology.fdb.agingSeconds),
      agingEvery,
    );
    return sw;
  }

  /** Link state for the bridge; when a link goes down, what was learned on it is forgotten. */
  #setLink(index: number, up: boolean): void {
    if (this.bridge.isLinkUp(index) === up) return;
    this.bridge.setLinkUp(index, up);
    if (!up) this.bridge.fdb.flush({ port: index });
    this.log(`[${this.topology.ports[index].name}] link ${up ? "up" : "down"}`);
  }

  async #startPort(cfg: PortConfig, index: number): Promise<void> {
    const log = (msg: string) => this.log(`[${cfg.name}] ${msg}`);
    if (cfg.type === "af-packet") {
      const port = AfPacketPort.open(
        { name: cfg.name, interface: cfg.interface, mtu: cfg.mtu },
        { variant: cfg.io, txQueues: this.topology.threads, log },
      );
      this.#packetPorts.set(index, port);
      await this.datapath.attachPacket(index, port.spec);
      this.#setLink(index, port.state === "up");
      return;
    }
    const inner = this.datapath.forPort(index);
    // Link state follows the guest's RX ring: up while we can deliver frames to it.
    const datapath: DeviceDatapath = {
      apply: async (state: DatapathState | null) => {
        const stopped = await inner.apply(state);
        this.#setLink(index, state?.queues.some((q) => (q.index & 1) === 0) ?? false);
        return stopped;
      },
    };
    const port = new VhostUserPort(
      { name: cfg.name, socket: cfg.socket, mode: cfg.mode, queues: cfg.queues, mtu: cfg.mtu },
      this.reactor,
      datapath,
      log,
    );
    port.start();
    this.#ports.push(port);
  }

  /**
   * After a SIGBUS on guest memory (a front-end truncated its memory file; the handler put a
   * zero page there), hang up on whichever front-end did it.
   */
  #checkTruncatedMemory(): void {
    const count = sigbusCount();
    if (count === this.#sigbusSeen) return;
    this.#sigbusSeen = count;
    for (const port of this.#ports) {
      const conn = port.connection;
      if (conn?.device.memoryTruncated()) {
        conn.stats.errors++;
        conn.close("front-end truncated its guest memory");
      }
    }
  }

  #sample(): void {
    this.#checkTruncatedMemory();
    // AF_PACKET ports poll their interface's link themselves; the bridge follows.
    for (const [index, port] of this.#packetPorts) this.#setLink(index, port.state === "up");
    const ports = this.topology.ports.map((_, i) => this.datapath.counters.port(i));
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
      ports: this.topology.ports.map((p, i) => ({
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
        aged: fdb.aged,
        flushed: fdb.flushed,
      },
    };
  }

  /**
   * A live pcap stream of the frames passing `port` in both directions (as received, and as
   * transmitted, tags included). Workers copy frames only while a capture runs.
   */
  capture(
    port: string,
    opts: { maxFrames?: number; seconds?: number; signal?: AbortSignal },
  ): AsyncIterable<Uint8Array> | undefined {
    const index = this.topology.ports.findIndex((p) => p.name === port);
    if (index < 0) return undefined;
    const datapath = this.datapath;
    const maxFrames = opts.maxFrames ?? Infinity;
    const deadline = performance.now() + (opts.seconds ?? Infinity) * 1000;
    const signal = opts.signal;
    const shutdown = this.#captures.signal;
    const log = this.log;
    return (async function* () {
      const rings = await datapath.addTap(index);
      try {
        yield pcapHeader();
        const readers = rings.map((r) => new TapReader(r));
        let frames = 0;
        while (
          frames < maxFrames && performance.now() < deadline && !signal?.aborted &&
          !shutdown.aborted
        ) {
          const batch: { ts: number; data: Uint8Array }[] = [];
          for (const reader of readers) {
            frames += reader.drain(maxFrames - frames, (ts, data) => batch.push({ ts, data }));
          }
          if (batch.length) {
            // Each worker's ring is in time order; merge them so the capture reads in order.
            batch.sort((a, b) => a.ts - b.ts);
            yield concatBytes(batch.map((r) => pcapRecord(r.ts, r.data)));
          } else {
            await new Promise((r) => setTimeout(r, 20));
          }
        }
        const dropped = readers.reduce((n, r) => n + r.dropped, 0);
        if (dropped) log(`capture on ${port}: ${dropped} frames not captured (reader too slow)`);
      } finally {
        await datapath.removeTap(index, rings);
      }
    })();
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

  ports(): PortStatus[] {
    return this.topology.ports.map((_, i) => this.#status(i));
  }

  port(name: string): PortStatus | undefined {
    const i = this.topology.ports.findIndex((p) => p.name === name);
    return i < 0 ? undefined : this.#status(i);
  }

  #status(i: number): PortStatus {
    const cfg = this.topology.ports[i];
    const counters = { ...this.datapath.counters.port(i), ...bridgeCounters(this.bridge, i) };
    const port = this.#ports.find((p) => p.config.name === cfg.name);
    const conn = port?.connection ?? null;
    const device = conn?.device;
    const state = port?.state ?? "down";
    const queues = (device?.running?.queues ?? [])
      .filter((q) => q.index & 1)
      .map((q) => ({ index: q.index >> 1, worker: this.datapath.pollerOf(i, q.index >> 1) }));
    if (cfg.type !== "vhost-user") {
      const packet = this.#packetPorts.get(i);
      return {
        name: cfg.name,
        type: "af-packet",
        interface: cfg.interface,
        state: packet?.state === "up" ? "up" : "down",
        mtu: packet?.mtu ?? cfg.mtu,
        features: [],
        queues: [{ index: 0, worker: this.datapath.pollerOf(i, 0) }],
        counters: { ...counters, kernel_drops: packet?.kernelStats().drops ?? 0 },
      };
    }
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
    };
  }

  fdb(): FdbEntry[] {
    return this.bridge.fdb.entries(nowSeconds()).map((e) => ({
      mac: e.mac,
      vlan: e.vlan,
      port: this.topology.ports[e.port]?.name ?? String(e.port),
      ageSeconds: e.static ? 0 : e.age,
      static: e.static,
    }));
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

  /** Ends running captures (their streams close as valid pcap files). */
  endCaptures(): void {
    this.#captures.abort();
  }

  /** Stops every port (rings stopped, memory unmapped, sockets unlinked), then the workers. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.endCaptures();
      clearInterval(this.#agingTimer);
      clearInterval(this.#sampleTimer);
      await Promise.all(this.#ports.map((p) => p.stop()));
      for (const [index, port] of this.#packetPorts) {
        // Every worker lets go of the rings before they are unmapped.
        await this.datapath.attachPacket(index, null).catch(() => {});
        port.close();
      }
      await this.datapath.stop();
      await this.reactor.close();
    })();
    return this.#stopping;
  }
}
