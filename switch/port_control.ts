// Every port's control side: opens the AF_PACKET sockets and vhost-user sockets, hands their
// datapath state to the workers, keeps the bridge's link state in step with them, and hangs up
// on a front-end that truncated its guest memory.
import type { Reactor } from "../ffi/epoll.ts";
import { sigbusCount } from "../ffi/sigbus.ts";
import { AfPacketPort } from "../ports/af_packet/af_packet_port.ts";
import type { DatapathState, DeviceDatapath } from "../ports/vhost_user/device.ts";
import { VhostUserPort } from "../ports/vhost_user/vhost_user_port.ts";
import { isGuestRxRing } from "../ports/vhost_user/virtqueue.ts";
import { VxlanPort } from "../ports/vxlan/vxlan_port.ts";
import { FdbAging } from "./aging.ts";
import { Fdb } from "./fdb.ts";
import type { Bridge } from "./bridge.ts";
import type { Datapath } from "./datapath.ts";
import type { PortTable } from "./port_table.ts";
import type { PortConfig, Topology } from "./topology.ts";

export class PortControl {
  /** The vhost-user ports, by port index. */
  readonly vhost = new Map<number, VhostUserPort>();
  /** The AF_PACKET ports, by port index. */
  readonly packet = new Map<number, AfPacketPort>();
  /** The VXLAN ports, by port index, with the aging of their MAC -> VTEP tables. */
  readonly vxlan = new Map<number, { port: VxlanPort; aging: FdbAging }>();
  #sigbusSeen = 0;
  /** Ports kept out of the bridge whatever their link does (loop guard's blocks). */
  readonly held = new Set<number>();
  /** Per port: the link state its peer reports, and when (ms, performance.now()) it came up. */
  readonly linkUp: boolean[] = [];
  readonly upSince: number[] = [];

  constructor(
    readonly topology: Topology,
    readonly table: PortTable,
    readonly bridge: Bridge,
    readonly datapath: Datapath,
    readonly reactor: Reactor,
    readonly log: (msg: string) => void,
  ) {}

  /** The vhost-user port named `name`, if it is one. */
  vhostPort(name: string): VhostUserPort | undefined {
    return this.vhost.get(this.table.indexOf(name));
  }

  /** Link state for the bridge; when a link goes down, what was learned on it is forgotten. */
  setLink(index: number, up: boolean): void {
    const was = this.linkUp[index] ?? false;
    if (up && !was) this.upSince[index] = performance.now();
    this.linkUp[index] = up;
    this.#bridgeLink(index);
    if (was !== up) {
      this.log(`[${this.table.get(index)?.name ?? index}] link ${up ? "up" : "down"}`);
    }
  }

  /** Keeps a port out of the bridge (or lets it back), whatever its link state. */
  hold(index: number, held: boolean): void {
    if (held) this.held.add(index);
    else this.held.delete(index);
    this.#bridgeLink(index);
  }

  #bridgeLink(index: number): void {
    const up = (this.linkUp[index] ?? false) && !this.held.has(index);
    if (this.bridge.isLinkUp(index) === up) return;
    this.bridge.setLinkUp(index, up);
    if (!up) this.bridge.fdb.flush({ port: index });
  }

  async start(cfg: PortConfig, index: number): Promise<void> {
    const log = (msg: string) => this.log(`[${cfg.name}] ${msg}`);
    if (cfg.type === "af-packet") {
      const port = AfPacketPort.open(
        { name: cfg.name, interface: cfg.interface, mtu: cfg.mtu },
        { variant: cfg.io, txQueues: this.topology.threads, log },
      );
      this.packet.set(index, port);
      await this.datapath.attachPacket(index, port.spec);
      this.setLink(index, port.state === "up");
      return;
    }
    if (cfg.type === "vxlan") {
      // The port's MAC -> remote VTEP table: the FDB's kind, as large, aged the same way.
      const table = Fdb.create({ capacity: this.topology.fdb.maxEntries });
      const port = VxlanPort.open(cfg, table, log);
      this.vxlan.set(index, { port, aging: new FdbAging(table, this.topology.fdb.agingSeconds) });
      await this.datapath.attachVxlan(index, port.spec);
      this.setLink(index, true);
      return;
    }
    const inner = this.datapath.forPort(index);
    // Link state follows the guest's RX ring: up while we can deliver frames to it.
    const datapath: DeviceDatapath = {
      apply: async (state: DatapathState | null) => {
        const stopped = await inner.apply(state);
        this.setLink(index, state?.queues.some((q) => isGuestRxRing(q.index)) ?? false);
        return stopped;
      },
      announce: (mac) => inner.announce(mac),
    };
    const port = new VhostUserPort(
      {
        name: cfg.name,
        socket: cfg.socket,
        mode: cfg.mode,
        queues: cfg.queues,
        mtu: cfg.mtu,
        packedRing: cfg.packedRing,
        offloads: cfg.offloads,
      },
      this.reactor,
      datapath,
      log,
    );
    this.vhost.set(index, port);
    try {
      port.start();
    } catch (err) {
      this.vhost.delete(index);
      throw err;
    }
  }

  /**
   * Stops one port and lets go of it: a vhost-user front-end is hung up on (its guest sees the
   * link go down), an AF_PACKET or VXLAN socket is closed once every worker let go of it.
   */
  async remove(index: number, reason: string): Promise<void> {
    const vhost = this.vhost.get(index);
    if (vhost) {
      this.vhost.delete(index);
      await vhost.stop(reason);
    }
    const packet = this.packet.get(index);
    if (packet) {
      this.packet.delete(index);
      await this.datapath.attachPacket(index, null);
      packet.close();
    }
    const vx = this.vxlan.get(index);
    if (vx) {
      this.vxlan.delete(index);
      vx.aging.stop();
      await this.datapath.attachVxlan(index, null);
      vx.port.close();
    }
    this.setLink(index, false);
    this.held.delete(index);
  }

  /**
   * Hangs up on the front-end of port `index` (a vhost-user port; counted as a protocol error),
   * e.g. when a worker reports that front-end blocked it. Other kinds of port are only logged.
   */
  disconnect(index: number, reason: string): void {
    const cfg = this.topology.ports[index];
    if (!cfg) return;
    const conn = this.vhostPort(cfg.name)?.connection;
    if (!conn) {
      this.log(`[${cfg.name}] ${reason}`);
      return;
    }
    conn.stats.errors++;
    conn.stats.lastError = reason;
    conn.close(reason);
  }

  /** Once a second: AF_PACKET link state (the ports poll their interface), truncated memory. */
  housekeeping(): void {
    this.#checkTruncatedMemory();
    for (const [index, port] of this.packet) this.setLink(index, port.state === "up");
  }

  /**
   * After a SIGBUS on guest memory (a front-end truncated its memory file; the handler put a
   * zero page there), hang up on whichever front-end did it.
   */
  #checkTruncatedMemory(): void {
    const count = sigbusCount();
    if (count === this.#sigbusSeen) return;
    this.#sigbusSeen = count;
    for (const port of this.vhost.values()) {
      const conn = port.connection;
      if (conn?.device.memoryTruncated()) {
        conn.stats.errors++;
        conn.close("front-end truncated its guest memory");
      }
    }
  }

  /** Stops every port: rings stopped, memory unmapped, sockets unlinked and closed. */
  async stop(): Promise<void> {
    await Promise.all([...this.vhost.values()].map((p) => p.stop()));
    for (const [index, port] of this.packet) {
      // Every worker lets go of the rings before they are unmapped.
      await this.datapath.attachPacket(index, null).catch(() => {});
      port.close();
    }
    for (const [index, { port, aging }] of this.vxlan) {
      aging.stop();
      await this.datapath.attachVxlan(index, null).catch(() => {});
      port.close();
    }
  }
}
