// A small VXLAN overlay in network namespaces: an underlay (a Linux bridge in its own namespace,
// 10.20.0.0/24) joining up to three "hosts", each a namespace holding a VTEP — this switch
// (a vxlan port and an af-packet port), the kernel's own (`type vxlan` + a Linux bridge) or
// Open vSwitch's userspace datapath (a netdev bridge with `type=vxlan` ports) —
// with one station namespace behind it (192.168.42.N/24, MTU 1450: the underlay's 1500 less
// VXLAN's 50; with the `ipv6` option also fd42::N/64). Names carry a per-lab id; close() deletes
// every namespace (and with them the veths) and stops the switches.
import { run } from "./netns.ts";
import { SwitchProcess } from "./switch_process.ts";

export const VNI = 42;
export const INNER_MTU = 1450;

export type VtepKind = "switch" | "kernel" | "ovs";

export interface VtepPlan {
  kind: VtepKind;
  /** Remote VTEPs by host number (1..3): the flood list. */
  flood: number[];
  /** This switch's topology extras for the vxlan port (switch hosts only). */
  vxlan?: Record<string, unknown>;
  /** Datapath threads of the switch (default 1). */
  threads?: number;
  /** The switch's `poll` section (default: adaptive). */
  poll?: Record<string, unknown>;
}

export interface Vtep {
  n: number;
  kind: VtepKind;
  /** The namespace holding the VTEP. */
  ns: string;
  /** The station behind it. */
  station: string;
  address: string;
  stationIp: string;
  /** The station's IPv6 address (the lab's `ipv6` option; its stations have none otherwise). */
  stationIp6: string;
  process?: SwitchProcess;
}

let serial = 0;

export class VxlanLab {
  readonly id: string;
  readonly vteps: Vtep[] = [];
  readonly #namespaces: string[] = [];
  readonly #dir: string;
  readonly #ovsDirs: string[] = [];

  private constructor(dir: string) {
    this.#dir = dir;
    this.id = `${(Deno.pid % 1296).toString(36)}${(serial++ % 36).toString(36)}${
      Math.floor(Math.random() * 1296).toString(36)
    }`;
  }

  /** Builds the underlay and one host per plan (host n gets 10.20.0.n and 192.168.42.n). */
  static async up(
    plans: VtepPlan[],
    opts: { offloads?: boolean; ipv6?: boolean } = {},
  ): Promise<VxlanLab> {
    const lab = new VxlanLab(await Deno.makeTempDir({ prefix: "vswitch-vxlan-" }));
    try {
      const ul = await lab.#netns("ul");
      await run("ip", ["-n", ul, "link", "add", "br0", "type", "bridge"]);
      await run("ip", ["-n", ul, "link", "set", "br0", "up"]);
      for (const [i, plan] of plans.entries()) {
        await lab.#host(i + 1, plan, ul, opts.offloads ?? true, opts.ipv6 ?? false);
      }
      return lab;
    } catch (err) {
      await lab.close();
      throw err;
    }
  }

  async #netns(tag: string, ipv6 = false): Promise<string> {
    const name = `vsvx${this.id}${tag}`;
    await run("ip", ["netns", "add", name]);
    this.#namespaces.push(name);
    // IPv4 only unless asked: no router solicitations or MLD reports crossing the tunnels every
    // second or two, which would keep a switch's worker from ever being idle (and add noise to
    // figures). The underlay and the VTEPs' hosts are IPv4 only in any case.
    const disable = ipv6 ? "0" : "1";
    await run("ip", [
      "netns",
      "exec",
      name,
      "sysctl",
      "-q",
      "-w",
      `net.ipv6.conf.all.disable_ipv6=${disable}`,
      `net.ipv6.conf.default.disable_ipv6=${disable}`,
    ]);
    await run("ip", ["-n", name, "link", "set", "lo", "up"]);
    return name;
  }

  async #host(
    n: number,
    plan: VtepPlan,
    ul: string,
    offloads: boolean,
    ipv6: boolean,
  ): Promise<void> {
    const ns = await this.#netns(`h${n}`);
    const station = await this.#netns(`s${n}`, ipv6);
    const address = `10.20.0.${n}`;
    const stationIp = `192.168.42.${n}`;
    const stationIp6 = `fd42::${n}`;
    // Underlay: eth9 in the host, u<n> on the underlay bridge.
    await run("ip", [
      "link",
      "add",
      "eth9",
      "netns",
      ns,
      "type",
      "veth",
      "peer",
      "name",
      `u${n}`,
      "netns",
      ul,
    ]);
    await run("ip", ["-n", ul, "link", "set", `u${n}`, "master", "br0", "up"]);
    await run("ip", ["-n", ns, "addr", "add", `${address}/24`, "dev", "eth9"]);
    await run("ip", ["-n", ns, "link", "set", "eth9", "up"]);
    // The station: eth0 in its namespace, p0 in the host.
    await run("ip", [
      "link",
      "add",
      "p0",
      "netns",
      ns,
      "type",
      "veth",
      "peer",
      "name",
      "eth0",
      "netns",
      station,
    ]);
    await run("ip", ["-n", station, "link", "set", "eth0", "mtu", String(INNER_MTU)]);
    await run("ip", ["-n", station, "addr", "add", `${stationIp}/24`, "dev", "eth0"]);
    if (ipv6) {
      // nodad: usable at once, not after duplicate address detection's second.
      await run("ip", ["-n", station, "addr", "add", `${stationIp6}/64`, "dev", "eth0", "nodad"]);
    }
    await run("ip", ["-n", station, "link", "set", "eth0", "up"]);
    if (!offloads) {
      await run("ip", [
        "netns",
        "exec",
        station,
        "ethtool",
        "-K",
        "eth0",
        "tx",
        "off",
        "tso",
        "off",
        "gso",
        "off",
      ]);
    }
    const vtep: Vtep = { n, kind: plan.kind, ns, station, address, stationIp, stationIp6 };
    const remotes = plan.flood.map((r) => `10.20.0.${r}`);
    if (plan.kind === "kernel") {
      // The kernel's VTEP as the issue names it (`remote` is the first flood entry), plus
      // the rest of the flood list as all-zero FDB entries (head-end replication).
      const [first, ...rest] = remotes;
      await run("ip", [
        "-n",
        ns,
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        String(VNI),
        "local",
        address,
        "remote",
        first,
        "dstport",
        "4789",
      ]);
      for (const r of rest) {
        await run("ip", [
          "netns",
          "exec",
          ns,
          "bridge",
          "fdb",
          "append",
          "00:00:00:00:00:00",
          "dev",
          "vx0",
          "dst",
          r,
        ]);
      }
      await run("ip", ["-n", ns, "link", "add", "br0", "type", "bridge"]);
      await run("ip", ["-n", ns, "link", "set", "vx0", "master", "br0"]);
      await run("ip", ["-n", ns, "link", "set", "p0", "master", "br0", "mtu", String(INNER_MTU)]);
      for (const dev of ["vx0", "p0", "br0"]) await run("ip", ["-n", ns, "link", "set", dev, "up"]);
    } else if (plan.kind === "ovs") {
      await this.#ovs(vtep, remotes);
    } else {
      await run("ip", ["-n", ns, "link", "set", "p0", "up"]);
      const topology = {
        name: `sw${n}`,
        http: { listen: "127.0.0.1:8080" }, // the host namespace's own loopback
        threads: plan.threads ?? 1,
        ...(plan.poll ? { poll: plan.poll } : {}),
        ports: [
          { name: "station", type: "af-packet", interface: "p0" },
          { name: "vx42", type: "vxlan", vni: VNI, local: address, remotes, ...plan.vxlan },
        ],
      };
      const file = `${this.#dir}/sw${n}.json`;
      await Deno.writeTextFile(file, JSON.stringify(topology));
      vtep.process = new SwitchProcess(file, { netns: ns });
      await vtep.process.waitForLine(/HTTP on/);
    }
    this.vteps.push(vtep);
  }

  /**
   * Open vSwitch's userspace datapath as a VTEP, with a private database and run directory:
   * br-int (the station's veth and one vxlan port per remote, NORMAL forwarding) and br-phy
   * (the underlay veth; the VTEP address moves to br-phy, where OVS's tunnel routing finds it).
   */
  async #ovs(vtep: Vtep, remotes: string[]): Promise<void> {
    const dir = `${this.#dir}/ovs${vtep.n}`;
    await Deno.mkdir(dir);
    this.#ovsDirs.push(dir);
    const db = `unix:${dir}/db.sock`;
    const vsctl = (...args: string[]) => run("ovs-vsctl", [`--db=${db}`, "--timeout=10", ...args]);
    await run("ovsdb-tool", [
      "create",
      `${dir}/conf.db`,
      "/usr/share/openvswitch/vswitch.ovsschema",
    ]);
    await this.exec(vtep.ns, [
      "ovsdb-server",
      `${dir}/conf.db`,
      `--remote=punix:${dir}/db.sock`,
      `--pidfile=${dir}/ovsdb.pid`,
      `--unixctl=${dir}/ovsdb.ctl`,
      `--log-file=${dir}/ovsdb.log`,
      "--detach",
    ]);
    await vsctl("--no-wait", "init");
    await this.exec(vtep.ns, [
      "env",
      `OVS_RUNDIR=${dir}`,
      "ovs-vswitchd",
      db,
      `--pidfile=${dir}/vswitchd.pid`,
      `--unixctl=${dir}/vswitchd.ctl`,
      `--log-file=${dir}/vswitchd.log`,
      "--detach",
    ]);
    await vsctl("add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev");
    await vsctl("add-port", "br-int", "p0");
    for (const [i, r] of remotes.entries()) {
      await vsctl(
        "add-port",
        "br-int",
        `vx${i}`,
        "--",
        "set",
        "interface",
        `vx${i}`,
        "type=vxlan",
        `options:remote_ip=${r}`,
        `options:key=${VNI}`,
      );
    }
    await vsctl("add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev");
    await vsctl("add-port", "br-phy", "eth9");
    await run("ip", ["-n", vtep.ns, "addr", "flush", "dev", "eth9"]);
    await run("ip", ["-n", vtep.ns, "addr", "add", `${vtep.address}/24`, "dev", "br-phy"]);
    for (const dev of ["p0", "br-phy", "br-int"]) {
      await run("ip", ["-n", vtep.ns, "link", "set", dev, "up"]);
    }
  }

  vtep(n: number): Vtep {
    return this.vteps[n - 1];
  }

  /** Runs a command in a namespace; throws with its output when it fails. */
  exec(ns: string, args: string[]): Promise<string> {
    return run("ip", ["netns", "exec", ns, ...args]);
  }

  /** GET path from host n's switch (JSON). */
  async get<T>(n: number, path: string): Promise<T> {
    const text = await this.exec(this.vtep(n).ns, [
      "busybox",
      "wget",
      "-q",
      "-O",
      "-",
      `http://127.0.0.1:8080${path}`,
    ]);
    return JSON.parse(text) as T;
  }

  /** Pings from station a to station b; returns the packets received. */
  async ping(a: number, b: number, count = 3): Promise<number> {
    const out = await run("ip", [
      "netns",
      "exec",
      this.vtep(a).station,
      "busybox",
      "ping",
      "-c",
      String(count),
      "-W",
      "2",
      this.vtep(b).stationIp,
    ]).catch((e) => String(e));
    return Number(/(\d+) packets received/.exec(out)?.[1] ?? 0);
  }

  /**
   * Sends `bytes` random bytes from station a to station b over TCP (busybox nc; over IPv6 with
   * `ipv6`, which the lab must have been built with) and returns the sha256 of what was sent and
   * of what arrived.
   */
  async transfer(
    a: number,
    b: number,
    bytes: number,
    opts: { ipv6?: boolean } = {},
  ): Promise<{ sent: string; received: string; seconds: number }> {
    const file = `${this.#dir}/payload-${a}-${b}`;
    const out = `${file}.received`;
    const data = new Uint8Array(bytes);
    for (let i = 0; i < bytes; i += 65536) crypto.getRandomValues(data.subarray(i, i + 65536));
    await Deno.writeFile(file, data);
    const port = 5000 + a * 10 + b;
    // The listener's stdin stays open (piped, never written): busybox nc half-closes the
    // connection when its stdin ends. The sender returns once the listener read all and closed.
    const server = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        this.vtep(b).station,
        "busybox",
        "sh",
        "-c",
        `busybox nc -l -p ${port} > ${out}`,
      ],
      stdin: "piped",
      stdout: "null",
      stderr: "null",
    }).spawn();
    await new Promise((r) => setTimeout(r, 300));
    const t0 = performance.now();
    await run("ip", [
      "netns",
      "exec",
      this.vtep(a).station,
      "busybox",
      "sh",
      "-c",
      // A tunnel that stalls fails the transfer in a minute rather than TCP's quarter hour.
      `busybox timeout 60 busybox nc ${
        opts.ipv6 ? this.vtep(b).stationIp6 : this.vtep(b).stationIp
      } ${port} < ${file}`,
    ]);
    const timer = setTimeout(() => server.kill("SIGKILL"), 20_000);
    await server.status;
    clearTimeout(timer);
    await server.stdin.close().catch(() => {});
    const seconds = (performance.now() - t0) / 1000;
    const hash = async (path: string) => (await run("sha256sum", [path])).split(" ")[0];
    return { sent: await hash(file), received: await hash(out), seconds };
  }

  /** Switch logs of every switch host, for a failing test's message. */
  logs(): string {
    return this.vteps.filter((v) => v.process).map((v) =>
      `sw${v.n}:\n${v.process!.output.join("\n")}`
    ).join("\n");
  }

  async close(): Promise<void> {
    await Promise.all(this.vteps.map((v) => v.process?.stop()));
    for (const dir of this.#ovsDirs) {
      for (const daemon of ["vswitchd", "ovsdb"]) {
        await run("ovs-appctl", ["-t", `${dir}/${daemon}.ctl`, "exit"]).catch(async () => {
          const pid = Number(await Deno.readTextFile(`${dir}/${daemon}.pid`).catch(() => "0"));
          if (pid > 0) Deno.kill(pid, "SIGKILL");
        });
      }
    }
    for (const ns of this.#namespaces.reverse()) {
      await run("ip", ["netns", "del", ns]).catch(() => {});
    }
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
