// The running switch, put together from its parts: the bridge's shared state (bridge.ts), the
// datapath Workers (datapath.ts), every port's control side (port_control.ts), FDB aging
// (aging.ts), and the view the HTTP endpoint reads (status.ts, capture.ts). This file only
// starts them in order, stops them in reverse and answers SwitchView by asking them.
import { Reactor } from "../ffi/epoll.ts";
import { installSigbusHandler } from "../ffi/sigbus.ts";
import { FdbAging, nowSeconds } from "./aging.ts";
import { flowEntries } from "./flow_view.ts";
import { Bridge, type PortVlanConfig } from "./bridge.ts";
import { captureStream } from "./capture.ts";
import { Datapath } from "./datapath.ts";
import { Fdb } from "./fdb.ts";
import { PortControl } from "./port_control.ts";
import { SwitchStatus } from "./status.ts";
import { bridgeVlanOf, LiveConfig } from "./live.ts";
import { PortTable } from "./port_table.ts";
import { MAX_PORTS, type Topology } from "./topology.ts";
import { SafetyPlane } from "./safety.ts";
import { SAMPLE_MS } from "./loop_guard.ts";
import type {
  CaptureOptions,
  FdbEntry,
  FdbFilter,
  FlowEntry,
  PortStatus,
  SwitchControl,
  SwitchInfo,
  SwitchStats,
  SwitchView,
} from "./view.ts";

export { VERSION } from "./version.ts";

/** The bridge a topology describes: VLAN config per port, static MACs, FDB size, writers. */
function bridgeOf(topology: Topology, vlans: (PortVlanConfig | null)[]): Bridge {
  const nameOf = (port: string) => topology.ports.findIndex((p) => p.name === port);
  return new Bridge({
    vlans,
    statics: topology.fdb.static.map((s) => ({ mac: s.mac, vlan: s.vlan, port: nameOf(s.port) })),
    fdb: Fdb.create({ capacity: topology.fdb.maxEntries, maxPerPort: topology.fdb.maxPerPort }),
    writers: topology.threads,
  });
}

export class Switch implements SwitchView {
  /** Aborted at shutdown: running captures end their pcap streams cleanly. */
  readonly #captures = new AbortController();
  #aging: FdbAging | undefined;
  #housekeepingTimer: ReturnType<typeof setInterval> | undefined;
  #loopGuardTimer: ReturnType<typeof setInterval> | undefined;
  #stopping: Promise<void> | null = null;
  readonly portControl: PortControl;
  readonly status: SwitchStatus;
  /** Port numbers: the topology's ports first, then those added while running. */
  readonly table: PortTable;
  readonly live: LiveConfig;

  private constructor(
    readonly topology: Topology,
    readonly bridge: Bridge,
    readonly datapath: Datapath,
    readonly reactor: Reactor,
    readonly log: (msg: string) => void,
    readonly safety: SafetyPlane,
    file: string | undefined,
  ) {
    this.table = new PortTable(topology.ports);
    this.portControl = new PortControl(topology, this.table, bridge, datapath, reactor, log);
    this.status = new SwitchStatus(
      topology,
      this.table,
      bridge,
      datapath,
      this.portControl,
      safety,
    );
    this.live = new LiveConfig(
      topology,
      this.table,
      bridge,
      datapath,
      this.portControl,
      this.status,
      safety,
      file,
      log,
      (seconds) => {
        this.#aging?.stop();
        this.#aging = new FdbAging(bridge.fdb, seconds);
      },
    );
    const portName = (port: number) => topology.ports[port]?.name ?? `#${port}`;
    datapath.events = {
      log,
      peerBlocked: (port, ring, worker) =>
        this.portControl.disconnect(
          port,
          `datapath worker ${worker} was blocked writing the call eventfd of ring ${ring} ` +
            `(the front-end made it blocking)`,
        ),
      workerFailed: (port, worker, error) => {
        log(
          `datapath worker ${worker} failed${port >= 0 ? ` on port ${portName(port)}` : ""}, ` +
            `went on without it: ${error}`,
        );
        if (port >= 0) {
          this.portControl.disconnect(port, `datapath worker ${worker} failed on this port`);
        }
      },
      fatal: (msg) => {
        log(`fatal: ${msg}`);
        Deno.exit(70);
      },
    };
  }

  /**
   * Starts the switch a topology describes. `file` is where it was loaded from: what a reload
   * re-reads. The topology object becomes the running configuration and changes with it.
   */
  static async start(
    topology: Topology,
    log: (msg: string) => void = console.log,
    file?: string,
  ): Promise<Switch> {
    installSigbusHandler();
    // Every port number has its place from the start (free ones in no VLAN), so ports added
    // later need nothing resized on the datapath.
    const slots = Array.from({ length: MAX_PORTS }, (_, i) => topology.ports[i] ?? null);
    const safety = new SafetyPlane(slots, topology.mirrors, topology.threads);
    const vlans = slots.map((p, i) => p ? bridgeVlanOf(safety, i, p.vlan) : null);
    const bridge = bridgeOf(topology, vlans);
    const datapath = await Datapath.start({
      threads: topology.threads,
      portCount: MAX_PORTS,
      bridge: { vlans, fdb: bridge.fdb.buffer, state: bridge.state },
      busyPoll: topology.poll.mode === "busy",
      idleAfterMs: topology.poll.idleAfterMs,
      cpus: topology.poll.cpus,
      flowStats: topology.poll.flowStats,
      affinity: slots.map((p) => p?.rxqAffinity),
      safety: safety.counters.buffer,
    });
    const sw = new Switch(topology, bridge, datapath, new Reactor(), log, safety, file);
    try {
      await datapath.setSafety(safety.plan());
      for (const [index, cfg] of sw.table.entries()) await sw.portControl.start(cfg, index);
    } catch (err) {
      await sw.stop();
      throw err;
    }
    sw.#housekeeping();
    sw.#housekeepingTimer = setInterval(() => sw.#housekeeping(), 1000);
    sw.#aging = new FdbAging(bridge.fdb, topology.fdb.agingSeconds);
    // Always sampled (a few counter reads every SAMPLE_MS): loop guard can be turned on live.
    sw.#loopGuardTimer = setInterval(() => sw.#loopGuard(), SAMPLE_MS);
    return sw;
  }

  /** Loop guard's sample: blocks a port whose MACs flap at a loop's rate, lets it back later. */
  #loopGuard(): void {
    const guard = this.safety.loopGuard;
    const ports = this.safety.portConfigs; // by port number, null for a free one
    ports.forEach((_, i) => guard.upSince[i] = this.portControl.upSince[i] ?? 0);
    const moves = ports.map((_, i) => this.bridge.portCounters(i).macMoved);
    const { block, unblock } = guard.sample(performance.now(), moves);
    for (const b of block) {
      const cfg = ports[b.port]!;
      this.log(
        `[${cfg.name}] loop guard: blocked: MACs moving between ${cfg.name} and ` +
          `${
            ports[b.partner]?.name
          } at ${b.moves}/s (limit ${cfg.safety.loopGuard?.movesPerSecond}/s); ` +
          `frames from and to ${cfg.name} are dropped, retry in ${cfg.safety.loopGuard?.retrySeconds} s`,
      );
      this.portControl.hold(b.port, true);
    }
    for (const p of unblock) {
      this.log(`[${ports[p]?.name}] loop guard: unblocked, forwarding again`);
      this.portControl.hold(p, false);
    }
    if (block.length || unblock.length) {
      this.datapath.setSafety(this.safety.plan()).catch((err) =>
        this.log(`loop guard: cannot update the workers: ${(err as Error).message}`)
      );
    }
  }

  /** Once a second: ports' link state and memory, and the counters' sample for rates. */
  #housekeeping(): void {
    this.portControl.housekeeping();
    this.status.sample();
  }

  info(): SwitchInfo {
    return this.status.info();
  }

  stats(): SwitchStats {
    return this.status.stats();
  }

  ports(): PortStatus[] {
    return this.status.portList();
  }

  port(name: string): PortStatus | undefined {
    return this.status.port(name);
  }

  fdb(): FdbEntry[] {
    return this.status.fdb();
  }

  flushFdb(filter: FdbFilter): number {
    return this.status.flushFdb(filter);
  }

  get control(): SwitchControl {
    const live = this.live;
    return {
      topology: () => live.toFile(),
      addPort: (body, who) => live.addPort(body, who),
      deletePort: (name, who) => live.deletePort(name, who),
      patchPort: (name, body, who) => live.patchPort(name, body, who),
      putFdb: (body, who) => live.putStatic(body, who),
      deleteFdb: async (filter, who) => {
        const changed: string[] = [];
        // Naming a MAC removes its static entries too (ovs-appctl fdb/del): they are config.
        const statics = filter.mac === undefined
          ? []
          : this.topology.fdb.static.filter((s) =>
            s.mac === filter.mac && (filter.vlan ?? s.vlan) === s.vlan &&
            (filter.port ?? s.port) === s.port
          );
        for (const s of statics) {
          changed.push(...(await live.deleteStatic(s.mac, s.vlan, who)).changed);
        }
        const flushed = this.status.flushFdb(filter);
        if (flushed) {
          changed.push(`flushed ${flushed} learned MAC entries matching ${JSON.stringify(filter)}`);
          this.log(`${who}: ${changed.at(-1)}`);
        }
        return { flushed: flushed + statics.length, changed };
      },
      reload: (who) => live.reload(who),
    };
  }

  flows(): FlowEntry[] {
    return flowEntries(this.datapath.flowTables, this.table, this.bridge, nowSeconds());
  }

  capture(port: string, opts: CaptureOptions): AsyncIterable<Uint8Array> | undefined {
    const index = this.table.indexOf(port);
    if (index < 0) return undefined;
    const lost = (n: number) =>
      this.log(`capture on ${port}: ${n} frames not captured (reader too slow)`);
    return captureStream(this.datapath, index, opts, this.#captures.signal, lost);
  }

  /** Ends running captures (their streams close as valid pcap files). */
  endCaptures(): void {
    this.#captures.abort();
  }

  /** Stops every port (rings stopped, memory unmapped, sockets unlinked), then the workers. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.endCaptures();
      this.#aging?.stop();
      clearInterval(this.#loopGuardTimer);
      clearInterval(this.#housekeepingTimer);
      await this.portControl.stop();
      await this.datapath.stop();
      await this.reactor.close();
    })();
    return this.#stopping;
  }
}
