// Changing the switch while it runs. Every change, whether a port added over HTTP, a static MAC
// pinned, or a topology file reloaded, is the same two steps: make the topology the switch would
// run next and check it with the loader (so it gets exactly the loader's messages, all at once,
// and an invalid change changes nothing); then apply the difference between the running
// topology and that one, port by port, leaving every other port's traffic alone.
import { parseMac } from "../ports/ethernet.ts";
import type { Bridge, PortVlanConfig } from "./bridge.ts";
import type { Datapath } from "./datapath.ts";
import type { PortControl } from "./port_control.ts";
import type { PortTable } from "./port_table.ts";
import type { SafetyPlane } from "./safety.ts";
import { PORT_SAFETY_KEYS } from "./safety_config.ts";
import type { SwitchStatus } from "./status.ts";
import {
  checkTopology,
  loadTopology,
  normalizeMac,
  type PortConfig,
  type Topology,
  TopologyError,
  type VlanConfig,
} from "./topology.ts";
import { type PortFile, portToFile, type TopologyFile, topologyToFile } from "./topology_file.ts";
import type { ChangeResult } from "./view.ts";

export function bridgeVlan(v: VlanConfig): PortVlanConfig {
  if (v.mode === "access") return { mode: "access", tag: v.tag };
  return { mode: "trunk", allowed: v.allowed === "all" ? undefined : v.allowed, native: v.native };
}

/**
 * The bridge's VLAN config of port `index`. A mirror output carries only copies: it is in no
 * VLAN, so the bridge never learns from it, floods to it or forwards to it.
 */
export function bridgeVlanOf(safety: SafetyPlane, index: number, v: VlanConfig): PortVlanConfig {
  return safety.isMirrorOutput(index) ? { mode: "trunk", allowed: [] } : bridgeVlan(v);
}

/**
 * Port keys that change while the port runs, and for which port types; a difference in any other
 * key (a socket path, a queue count, a VNI) stops the port and starts it again.
 */
const LIVE_KEYS: Record<string, readonly string[]> = {
  vlan: ["vhost-user", "af-packet", "vxlan"],
  mtu: ["vhost-user", "af-packet"],
  rxqAffinity: ["vhost-user"],
  ...Object.fromEntries(PORT_SAFETY_KEYS.map((k) => [k, ["vhost-user", "af-packet", "vxlan"]])),
};

/** Settings that only a restart changes, with how to show them. */
const RESTART_ONLY: [string, (t: Topology) => unknown][] = [
  ["http.listen", (t) => t.http.listen],
  ["http.token", (t) => t.http.token === null ? "none" : "(set)"],
  ["http.readOnly", (t) => t.http.readOnly],
  ["threads", (t) => t.threads],
  ["poll", (t) => t.poll],
  ["fdb.maxEntries", (t) => t.fdb.maxEntries],
  ["mirrors", (t) => t.mirrors],
];

/** A change that was checked but could not be carried out completely (e.g. an interface gone). */
export class ChangeError extends Error {
  constructor(message: string, readonly applied: string[]) {
    super(applied.length ? `${message} (applied before that: ${applied.join("; ")})` : message);
  }
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
const show = (v: unknown) => v === undefined ? "default" : JSON.stringify(v);

export class LiveConfig {
  /** One change at a time: each waits for the one before. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(
    /** The running topology, changed in place: the parts that read it see each change. */
    readonly running: Topology,
    readonly table: PortTable,
    readonly bridge: Bridge,
    readonly datapath: Datapath,
    readonly ports: PortControl,
    readonly status: SwitchStatus,
    readonly safety: SafetyPlane,
    /** The topology file: what reload re-reads, and what relative socket paths are relative to. */
    readonly file: string | undefined,
    readonly log: (msg: string) => void,
    readonly onAgingChange: (seconds: number) => void,
  ) {}

  /** The running configuration in the topology file's format. */
  toFile(): TopologyFile {
    return topologyToFile({ ...this.running, ports: this.table.configs() });
  }

  /** Adds a port given in the topology file's format. */
  addPort(body: unknown, who: string): Promise<ChangeResult> {
    return this.#serial(() => {
      const file = this.toFile();
      const next = this.#check(
        { ...file, ports: [...file.ports, body as PortFile] },
        "POST /ports",
      );
      return this.#apply(next, who, "any");
    });
  }

  /** Deletes a port (and the static MAC entries on it); undefined when there is none. */
  deletePort(name: string, who: string): Promise<ChangeResult | undefined> {
    return this.#serial(() => {
      const file = this.toFile();
      if (!file.ports.some((p) => p.name === name)) return undefined;
      const fdb = file.fdb as { static: { port: string }[] };
      const next = this.#check({
        ...file,
        fdb: { ...fdb, static: fdb.static.filter((s) => s.port !== name) },
        ports: file.ports.filter((p) => p.name !== name),
      }, `DELETE /ports/${name}`);
      return this.#apply(next, who, "any");
    });
  }

  /**
   * Changes what can change of a running port: `body` holds the keys to change, in the topology
   * file's format. undefined when there is no such port.
   */
  patchPort(name: string, body: unknown, who: string): Promise<ChangeResult | undefined> {
    return this.#serial(() => {
      const file = this.toFile();
      const at = file.ports.findIndex((p) => p.name === name);
      if (at < 0) return undefined;
      const label = `PATCH /ports/${name}`;
      if (typeof body !== "object" || body === null || Array.isArray(body)) {
        throw new TopologyError([`${label}: $: expected an object of port keys to change`]);
      }
      const merged: PortFile = { ...file.ports[at], ...body };
      // `vlan: null` goes back to the default (a trunk of every VLAN).
      for (const [k, v] of Object.entries(body)) if (v === null) delete merged[k];
      const next = this.#check(
        { ...file, ports: file.ports.map((p, i) => i === at ? merged : p) },
        label,
      );
      return this.#apply(next, who, label);
    });
  }

  /** Adds or replaces a static MAC entry ({ mac, vlan, port }, as in fdb.static). */
  putStatic(body: unknown, who: string): Promise<ChangeResult> {
    return this.#serial(() => {
      const file = this.toFile();
      const fdb = file.fdb as { static: { mac: string; vlan: number; port: string }[] };
      const e = (typeof body === "object" && body !== null ? body : {}) as Record<string, unknown>;
      const mac = typeof e.mac === "string" ? normalizeMac(e.mac) : null;
      const vlan = e.vlan ?? 0;
      // Replacing an entry is not a duplicate: the old one for the same key goes.
      const kept = fdb.static.filter((s) => !(s.mac === mac && s.vlan === vlan));
      const next = this.#check(
        { ...file, fdb: { ...fdb, static: [...kept, body] } },
        "PUT /fdb",
      );
      return this.#apply(next, who, "any");
    });
  }

  /** Removes the static entries for `mac` (on `vlan`, or on any VLAN); returns the change. */
  deleteStatic(mac: string, vlan: number | undefined, who: string): Promise<ChangeResult> {
    return this.#serial(() => {
      const file = this.toFile();
      const fdb = file.fdb as { static: { mac: string; vlan: number; port: string }[] };
      const kept = fdb.static.filter((s) => !(s.mac === mac && (vlan ?? s.vlan) === s.vlan));
      if (kept.length === fdb.static.length) {
        return Promise.resolve({ changed: [], notApplied: [] });
      }
      const next = this.#check({ ...file, fdb: { ...fdb, static: kept } }, "DELETE /fdb");
      return this.#apply(next, who, "any");
    });
  }

  /** Re-reads the topology file and applies the difference; nothing changes if it is invalid. */
  reload(who: string): Promise<ChangeResult> {
    return this.#serial(() => {
      if (this.file === undefined) {
        throw new TopologyError(["the switch was not started from a topology file"]);
      }
      const file = this.file;
      const asWritten = loadTopology(file);
      if (asWritten.threads === this.running.threads) return this.#apply(asWritten, who, "any");
      // The file asks for another thread count, which only a restart applies: check its ports
      // against the threads running (queues dealt to those workers; an rxqAffinity naming a
      // worker that does not run is the loader's error), and report the thread count as not
      // applied.
      const json = JSON.parse(Deno.readTextFileSync(file));
      const runningFile = this.toFile();
      const next = checkTopology(
        { ...json, threads: runningFile.threads, poll: runningFile.poll },
        file,
        `${file} (with the running threads: ${this.running.threads})`,
      );
      return this.#apply(next, who, "any", asWritten);
    });
  }

  #serial<T>(f: () => T | Promise<T>): Promise<T> {
    const run = this.#queue.catch(() => {}).then(f);
    this.#queue = run;
    return run;
  }

  #check(file: TopologyFile, label: string): Topology {
    return checkTopology(file, this.file ?? "topology.json", label);
  }

  /**
   * Applies the difference to `next`. With `only` a PATCH label, a difference that would restart
   * the port is refused instead (nothing changes).
   */
  async #apply(
    next: Topology,
    who: string,
    only: "any" | string,
    asked = next,
  ): Promise<ChangeResult> {
    const running = this.running;
    const notApplied = RESTART_ONLY
      .filter(([, get]) => !same(get(running), get(asked)))
      .map(([key, get]) =>
        `${key}: ${show(get(running))} -> ${show(get(asked))} needs a restart of the switch`
      );
    const byName = new Map(next.ports.map((p) => [p.name, p]));
    const removed: number[] = [];
    const restarted: PortConfig[] = [];
    const live: [number, PortConfig, string[]][] = [];
    for (const [slot, cfg] of this.table.entries()) {
      const to = byName.get(cfg.name);
      if (!to) {
        removed.push(slot);
        continue;
      }
      const a = portToFile(cfg), b = portToFile(to);
      const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((k) =>
        !same(a[k], b[k])
      );
      if (!keys.length) continue;
      const restart = keys.filter((k) => !LIVE_KEYS[k]?.includes(to.type) || cfg.type !== to.type);
      if (restart.length && only !== "any") {
        const at = next.ports.indexOf(to);
        throw new TopologyError(
          restart.map((k) =>
            `${only}: ports[${at}].${k}: cannot change while the port runs ` +
            `(delete the port and add it again)`
          ),
        );
      }
      if (restart.length) {
        removed.push(slot);
        restarted.push(to);
      } else live.push([slot, to, keys]);
    }
    const known = new Set(this.table.configs().map((p) => p.name));
    const added = [...restarted, ...next.ports.filter((p) => !known.has(p.name))];

    const changed: string[] = [];
    const did = (what: string) => {
      changed.push(what);
      this.log(`${who}: ${what}`);
    };
    try {
      if (running.name !== next.name) {
        did(`name: ${running.name} -> ${next.name}`);
        running.name = next.name;
      }
      // Static entries that go or move, before their ports do; those kept stay in the table.
      const key = (s: { mac: string; vlan: number; port: string }) =>
        `${s.mac}/${s.vlan}/${s.port}`;
      const goes = new Set(removed.map((slot) => this.table.get(slot)!.name));
      const nextStatic = new Set(next.fdb.static.map(key));
      const kept = new Set<string>();
      for (const e of running.fdb.static) {
        if (nextStatic.has(key(e)) && !goes.has(e.port)) {
          kept.add(key(e));
          continue;
        }
        const { hi, lo } = parseMac(e.mac);
        this.bridge.fdb.delete(hi, lo, e.vlan);
        did(`static MAC ${e.mac} VLAN ${e.vlan} on ${e.port} removed`);
      }
      running.fdb.static = running.fdb.static.filter((e) => kept.has(key(e)));
      for (const slot of removed) {
        const name = this.table.get(slot)!.name;
        const last = await this.#removePort(slot);
        did(
          restarted.some((p) => p.name === name) ? `port ${name} stopped` : `port ${name} deleted`,
        );
        // Its counters go with its number; what it carried and dropped to the end stays in the log.
        const shown = Object.entries(last).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`);
        this.log(`${who}: port ${name}'s last counters: ${shown.join(", ") || "all zero"}`);
      }
      for (const [slot, to, keys] of live) {
        await this.#changePort(slot, to, keys, did);
      }
      for (const cfg of added) {
        const slot = await this.#addPort(cfg);
        const where = cfg.type === "vhost-user"
          ? `${cfg.socket} (${cfg.mode})`
          : cfg.type === "af-packet"
          ? `interface ${cfg.interface}`
          : `VNI ${cfg.vni}`;
        did(`port ${cfg.name} (${cfg.type}, ${where}) added as port ${slot}`);
      }
      for (const e of next.fdb.static) {
        if (kept.has(key(e))) continue;
        this.bridge.addStatic(e.mac, e.vlan, this.table.indexOf(e.port));
        did(`static MAC ${e.mac} VLAN ${e.vlan} on ${e.port}`);
      }
      running.fdb.static = next.fdb.static;
      if (running.fdb.maxPerPort !== next.fdb.maxPerPort) {
        this.bridge.fdb.maxPerPort = next.fdb.maxPerPort;
        did(`fdb.maxPerPort: ${running.fdb.maxPerPort} -> ${next.fdb.maxPerPort}`);
        running.fdb.maxPerPort = next.fdb.maxPerPort;
      }
      if (running.fdb.agingSeconds !== next.fdb.agingSeconds) {
        this.onAgingChange(next.fdb.agingSeconds);
        did(`fdb.agingSeconds: ${running.fdb.agingSeconds} -> ${next.fdb.agingSeconds}`);
        running.fdb.agingSeconds = next.fdb.agingSeconds;
      }
    } catch (err) {
      throw new ChangeError((err as Error).message, changed);
    } finally {
      running.ports = this.table.configs();
    }
    for (const line of notApplied) this.log(`${who}: not applied: ${line}`);
    return { changed, notApplied };
  }

  /** Gives the port a free number, its VLANs on every worker, then starts it. */
  async #addPort(cfg: PortConfig): Promise<number> {
    const slot = this.table.take(cfg);
    try {
      this.status.resetCounters(slot);
      this.safety.setPort(slot, cfg);
      await this.datapath.setSafety(this.safety.plan());
      const vlan = bridgeVlanOf(this.safety, slot, cfg.vlan);
      this.bridge.setPortVlan(slot, vlan);
      await this.datapath.setVlan(slot, vlan);
      this.datapath.setAffinity(slot, cfg.rxqAffinity);
      await this.ports.start(cfg, slot);
      return slot;
    } catch (err) {
      await this.#removePort(slot).catch(() => {});
      throw new Error(`port ${cfg.name}: ${(err as Error).message}`);
    }
  }

  /**
   * Stops the port, forgets its MACs (static ones too) and frees its number; returns its counters
   * as they were at the end (once every worker has taken it out of its VLANs, nothing more is
   * counted on it).
   */
  async #removePort(slot: number): Promise<Record<string, number>> {
    await this.ports.remove(slot, "port deleted");
    this.bridge.fdb.flush({ port: slot, static: true });
    this.bridge.setPortVlan(slot, null);
    await this.datapath.setVlan(slot, null);
    this.datapath.setAffinity(slot, undefined);
    this.safety.setPort(slot, null);
    await this.datapath.setSafety(this.safety.plan());
    const last = this.status.port(this.table.get(slot)!.name)?.counters ?? {};
    this.table.free(slot);
    return last;
  }

  async #changePort(
    slot: number,
    to: PortConfig,
    keys: string[],
    did: (what: string) => void,
  ): Promise<void> {
    const from = this.table.get(slot)!;
    this.table.set(slot, to);
    const a = portToFile(from), b = portToFile(to);
    for (const k of keys) {
      const what = `port ${to.name}: ${k} ${show(a[k])} -> ${show(b[k])}`;
      if (PORT_SAFETY_KEYS.includes(k)) {
        this.safety.setPort(slot, to);
        await this.datapath.setSafety(this.safety.plan());
        did(what);
      } else if (k === "vlan") {
        const vlan = bridgeVlanOf(this.safety, slot, to.vlan);
        this.bridge.setPortVlan(slot, vlan);
        await this.datapath.setVlan(slot, vlan);
        // What it learned belongs to VLANs it may no longer carry.
        this.bridge.fdb.flush({ port: slot });
        did(what);
      } else if (k === "mtu" && to.type === "af-packet") {
        this.ports.packet.get(slot)?.setMtu(to.mtu);
        did(what);
      } else if (k === "mtu" && to.type === "vhost-user") {
        const port = this.ports.vhost.get(slot);
        if (port) port.config.mtu = to.mtu;
        did(`${what} (virtio-net tells the guest its MTU once: from its next connection)`);
      } else if (k === "rxqAffinity") {
        this.datapath.setAffinity(slot, to.rxqAffinity);
        await this.datapath.reapplyPort(slot);
        did(what);
      }
    }
  }
}
