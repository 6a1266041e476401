// A throwaway lab for the demo and the end-to-end test: a network namespace behind a veth pair
// (the uplink), the switch as a child process on a topology from examples/, and QEMU guests on
// its vhost-user ports. Each step is its own method so the demo can report progress; close()
// undoes whatever was done, in reverse, and is safe to call twice (Ctrl-C while failing).
import { fileURLToPath } from "node:url";
import { createVethNetns, netnsSkipReason, type VethNetns } from "../peers/netns.ts";
import { bootGuest, ensureGuestImage, type Guest, guestToolsAvailable } from "../peers/qemu.ts";
import { decodePcap } from "../peers/pcap.ts";
import { SwitchProcess } from "../peers/switch_process.ts";

export const EXAMPLES = fileURLToPath(new URL("../examples/", import.meta.url));

export interface VmPlan {
  /** The vhost-user port (in the example topology) the VM's NIC attaches to; also its name. */
  port: string;
  mac: string;
  /** eth0's address, e.g. "10.0.0.1/24". */
  ip: string;
}

export interface LabPlan {
  /** A file in examples/. Its sockets, uplink interface and HTTP address are replaced by the
   * lab's own, so a lab never collides with a switch someone started from the same file. */
  example: string;
  vms: VmPlan[];
  /** Address of the namespace host on the untagged wire (none when it only talks VLANs). */
  hostAddr?: string;
  /** VLAN subinterfaces of the namespace host, VLAN id → address, for a trunk uplink. */
  hostVlans?: Record<number, string>;
  /** Overrides the example's datapath threads. */
  threads?: number;
  /** Console and switch lines, for debugging (VSWITCH_LAB_LOG=1 prints them in the demo). */
  log?: (line: string) => void;
}

/** Why a lab cannot run here (no QEMU, not root, no iproute2), or null. */
export function labSkipReason(): string | null {
  return guestToolsAvailable() ?? netnsSkipReason();
}

export class Lab {
  readonly id = `${Deno.pid.toString(36)}${Math.floor(Math.random() * 1296).toString(36)}`;
  /** Short and unique; a nsIf of 10 bytes leaves room for VLAN subinterfaces (".4094"). */
  readonly names = { netns: `vslab-${this.id}`, hostIf: `vl${this.id}up`, nsIf: `vl${this.id}ns` };
  readonly guests = new Map<string, Guest>();
  ns?: VethNetns;
  switch?: SwitchProcess;
  dir = "";
  topologyPath = "";
  /** The switch's HTTP endpoint, without a trailing slash. */
  url = "";
  #closing?: Promise<void>;

  constructor(readonly plan: LabPlan) {}

  /** All steps; on failure everything started so far is torn down before the error goes on. */
  static async up(plan: LabPlan): Promise<Lab> {
    const lab = new Lab(plan);
    try {
      await lab.image();
      await lab.namespace();
      await lab.writeTopology();
      await lab.startSwitch();
      await lab.bootVms();
      return lab;
    } catch (err) {
      await lab.close();
      throw err;
    }
  }

  /** Builds the guest image unless cached; says which. */
  async image(): Promise<string> {
    const lines: string[] = [];
    await ensureGuestImage((l) => lines.push(l));
    const cached = lines.find((l) => l.includes("cached guest"));
    return cached ? cached.replace(/^build_guest: /, "") : lines.at(-1) ?? "built";
  }

  async namespace(): Promise<VethNetns> {
    this.ns = await createVethNetns({
      nsAddr: this.plan.hostAddr ?? null,
      names: this.names,
    });
    for (const [id, addr] of Object.entries(this.plan.hostVlans ?? {})) {
      await this.ns.addVlan(Number(id), addr);
    }
    return this.ns;
  }

  /** The MAC of the namespace host (its VLAN subinterfaces share it). */
  async hostMac(): Promise<string> {
    return (await this.ns!.exec(["cat", `/sys/class/net/${this.ns!.nsIf}/address`])).trim();
  }

  /** Writes the example, rewritten for this lab, into a fresh temp dir; returns the topology. */
  async writeTopology(): Promise<Record<string, unknown>> {
    this.dir = await Deno.makeTempDir({ prefix: "vswitch-lab-" });
    const topo = JSON.parse(await Deno.readTextFile(EXAMPLES + this.plan.example));
    topo.http = { ...topo.http, listen: "127.0.0.1:0" }; // any free port: 8080 may be taken
    if (this.plan.threads) topo.threads = this.plan.threads;
    for (const port of topo.ports) {
      if (port.type === "vhost-user") port.socket = `${this.dir}/${port.name}.sock`;
      else port.interface = this.ns!.hostIf;
    }
    this.topologyPath = `${this.dir}/topology.json`;
    await Deno.writeTextFile(this.topologyPath, JSON.stringify(topo, null, 2) + "\n");
    return topo;
  }

  async startSwitch(): Promise<void> {
    this.switch = new SwitchProcess(this.topologyPath);
    // Generous: the first run compiles the switch, and the cores are shared.
    const line = await this.switch.waitForLine(/HTTP on http:\/\/\S+/, 90_000);
    this.url = line.match(/http:\/\/\S+/)![0].replace(/\/$/, "");
    // The uplink passes frames only once the switch sees its link up.
    const end = Date.now() + 20_000;
    for (;;) {
      const { ports } = await this.get<{ ports: { type: string; state: string }[] }>("/ports");
      if (ports.every((p) => p.type !== "af-packet" || p.state === "up")) return;
      if (Date.now() > end) throw new Error(`uplink not up: ${JSON.stringify(ports)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** Boots every VM at once; resolves when all have a shell. */
  async bootVms(): Promise<void> {
    const topo = JSON.parse(await Deno.readTextFile(this.topologyPath));
    const booted = await Promise.allSettled(this.plan.vms.map(async (vm) => {
      const port = topo.ports.find((p: { name: string }) => p.name === vm.port);
      if (port?.type !== "vhost-user") throw new Error(`${this.plan.example}: no port ${vm.port}`);
      const guest = await bootGuest({
        name: vm.port,
        nics: [{ socket: port.socket, mac: vm.mac }],
        ip: vm.ip,
        bootTimeoutMs: 240_000, // TCG on two shared cores: three boots at once can be slow
        log: this.plan.log && ((l) => this.plan.log!(`${vm.port}| ${l}`)),
      });
      this.guests.set(vm.port, guest);
    }));
    const failed = booted.filter((r) => r.status === "rejected");
    if (failed.length) throw (failed[0] as PromiseRejectedResult).reason;
  }

  guest(name: string): Guest {
    const g = this.guests.get(name);
    if (!g) throw new Error(`no VM named ${name}`);
    return g;
  }

  /** GET a JSON route of the switch's HTTP endpoint. */
  async get<T>(path: string): Promise<T> {
    const res = await fetch(this.url + path, { signal: AbortSignal.timeout(10_000) });
    if (!res.ok) throw new Error(`GET ${path}: ${res.status} ${await res.text()}`);
    return await res.json() as T;
  }

  /**
   * Captures the frames passing `port` for `seconds` over GET /ports/:name/capture; resolves once
   * the capture runs (the pcap header came), with a function that waits for the frames.
   */
  async capture(port: string, seconds: number): Promise<() => Promise<Uint8Array[]>> {
    const res = await fetch(`${this.url}/ports/${port}/capture?seconds=${seconds}&count=100000`);
    if (!res.ok || !res.body) throw new Error(`capture ${port}: ${res.status} ${await res.text()}`);
    const reader = res.body.getReader();
    const chunks: Uint8Array[] = [];
    let size = 0;
    while (size < 24) { // the pcap global header: the tap is in place
      const { value, done } = await reader.read();
      if (done) throw new Error(`capture ${port} ended before its header`);
      chunks.push(value);
      size += value.length;
    }
    return async () => {
      for (let r; !(r = await reader.read()).done;) chunks.push(r.value);
      const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
      chunks.reduce((at, c) => (all.set(c, at), at + c.length), 0);
      return decodePcap(all).packets.map((p) => p.data);
    };
  }

  /** The switch's last log lines, to explain a failure. */
  switchLog(n = 20): string {
    return (this.switch?.output ?? []).slice(-n).join("\n");
  }

  close(): Promise<void> {
    return this.#closing ??= this.#teardown();
  }

  async #teardown(): Promise<void> {
    await Promise.allSettled([...this.guests.values()].map((g) => g.shutdown(5000)));
    await this.switch?.stop().catch(() => {});
    await this.ns?.close();
    // Interrupted while the namespace was being made: this.ns is unset, the names are known.
    const { netns, hostIf } = this.names;
    const quiet = { stdout: "null", stderr: "null" } as const;
    await new Deno.Command("ip", { args: ["link", "del", hostIf], ...quiet }).output();
    await new Deno.Command("ip", { args: ["netns", "del", netns], ...quiet }).output();
    if (this.dir) await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
