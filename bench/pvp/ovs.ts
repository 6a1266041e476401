// Open vSwitch with DPDK as the reference switch: a private ovsdb-server and ovs-vswitchd-dpdk
// in a temp dir, bridge br0 (userspace datapath, default NORMAL flow = MAC learning) with two
// dpdkvhostuser ports. OVS serves the sockets (as the switch does): with dpdkvhostuserclient the
// front-end's tx-first burst can be lost before OVS connects and the closed loop stays dead.
import type { Target, TargetCounters } from "./targets.ts";
import { exists, onCleanup, Proc, removeDpdkRuntime, run, shellLine, waitFor } from "./proc.ts";

export const OVS_VSWITCHD = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk";
const SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema";

/** Why OVS-DPDK cannot run here, or null. */
export function ovsMissing(): string | null {
  if (!exists(OVS_VSWITCHD)) {
    return `${OVS_VSWITCHD} missing (apt-get install openvswitch-switch-dpdk)`;
  }
  if (!exists(SCHEMA)) return `${SCHEMA} missing (apt-get install openvswitch-common)`;
  return null;
}

export interface OvsOptions {
  /**
   * other_config:userspace-tso-enable (read once when ovs-vswitchd starts): its vhost-user ports
   * then offer the guests checksum and TSO offloads. Unset: OVS's default (false).
   */
  tso?: boolean;
  /** other_config:pmd-maxsleep: the PMD may sleep this long while idle (unset: it never does). */
  pmdMaxSleepUs?: number;
  /**
   * Run ovs-vswitchd in this network namespace: a netdev datapath makes tap devices with fixed
   * names ("ovs-netdev", the bridge's), so two instances at once need a namespace each.
   */
  netns?: string;
}

export async function startOvs(
  root: string,
  prefix: string,
  opts: OvsOptions = {},
): Promise<Target> {
  const dir = `${root}/ovs`;
  await Deno.mkdir(dir, { recursive: true });
  // Every OVS program finds its run/db/log dirs here: nothing touches a system OVS.
  const env = { OVS_RUNDIR: dir, OVS_DBDIR: dir, OVS_LOGDIR: dir, OVS_SYSCONFDIR: dir };
  const db = `unix:${dir}/db.sock`;
  const vsctl = (...args: string[]) => ["ovs-vsctl", `--db=${db}`, "--timeout=60", ...args];
  const commands = [shellLine(["export", ...Object.entries(env).map(([k, v]) => `${k}=${v}`)])];
  const step = async (argv: string[]) => {
    commands.push(shellLine(argv));
    return await run(argv, env);
  };
  const procs: Proc[] = [];
  const unregister = onCleanup(() => removeDpdkRuntime(prefix));
  const stop = async () => {
    for (const p of procs.reverse()) await p.stop();
    await removeDpdkRuntime(prefix);
    unregister();
  };
  const spawn = (name: string, argv: string[]) => {
    commands.push(shellLine(argv) + " &");
    const p = new Proc(name, argv, { env });
    procs.push(p);
    return p;
  };
  try {
    await step(["ovsdb-tool", "create", `${dir}/conf.db`, SCHEMA]);
    spawn("ovsdb-server", [
      "ovsdb-server",
      `${dir}/conf.db`,
      `--remote=punix:${dir}/db.sock`,
      `--unixctl=${dir}/ovsdb-server.ctl`,
      `--log-file=${dir}/ovsdb-server.log`,
    ]);
    await waitFor("ovsdb-server's socket", () => exists(`${dir}/db.sock`) || undefined, 10_000);
    await step(vsctl(
      "--no-wait",
      "init",
      "--",
      "set",
      "Open_vSwitch",
      ".",
      "other_config:dpdk-init=true",
      // No hugepages here; OVS adds -l itself, so no --lcores.
      `other_config:dpdk-extra=--no-huge -m 1024 --legacy-mem --no-pci --file-prefix=${prefix}`,
      // The shared mempool does not fit in 1 GiB without hugepages.
      "other_config:per-port-memory=true",
      // The PMD on CPU 0; the front-end testpmd forwards on CPU 1.
      "other_config:pmd-cpu-mask=0x1",
      ...(opts.tso === undefined ? [] : [`other_config:userspace-tso-enable=${opts.tso}`]),
      ...(opts.pmdMaxSleepUs === undefined
        ? []
        : [`other_config:pmd-maxsleep=${opts.pmdMaxSleepUs}`]),
    ));
    const vswitchd = spawn("ovs-vswitchd", [
      // `ip netns exec` keeps the pid (it execs the command).
      ...(opts.netns ? ["ip", "netns", "exec", opts.netns] : []),
      OVS_VSWITCHD,
      db,
      `--unixctl=${dir}/ovs-vswitchd.ctl`,
      `--log-file=${dir}/ovs-vswitchd.log`,
    ]);
    // ovs-vsctl waits until ovs-vswitchd applied the change (DPDK init included).
    await step(vsctl(
      ...["add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev"],
      ...["--", "add-port", "br0", "vhu0", "--", "set", "Interface", "vhu0", "type=dpdkvhostuser"],
      ...["--", "add-port", "br0", "vhu1", "--", "set", "Interface", "vhu1", "type=dpdkvhostuser"],
    ));
    const sockets: [string, string] = [`${dir}/vhu0`, `${dir}/vhu1`];
    await waitFor(
      "OVS's vhost-user sockets",
      () => {
        if (vswitchd.exited) throw new Error(`ovs-vswitchd exited\n${vswitchd.describe()}`);
        return sockets.every(exists) || undefined;
      },
      30_000,
      () => vswitchd.describe() + logTail(`${dir}/ovs-vswitchd.log`),
    );
    const iface = async (): Promise<Record<string, string>> => {
      const out = await run(
        vsctl("--format=json", "--columns=name,link_state", "list", "Interface"),
        env,
      );
      const rows: string[][] = JSON.parse(out).data;
      return Object.fromEntries(rows.map(([name, link]) => [name, String(link)]));
    };
    return {
      sockets,
      pids: [vswitchd.pid],
      commands,
      ready: () =>
        waitFor(
          "OVS vhost-user ports link up",
          async () => {
            const i = await iface();
            return (i.vhu0 === "up" && i.vhu1 === "up") || undefined;
          },
          20_000,
          () => logTail(`${dir}/ovs-vswitchd.log`),
        ),
      async counters(): Promise<TargetCounters> {
        // This build cannot read vhost port packet counters (dpctl/show -s: "could not retrieve
        // stats (Protocol error)", dump-ports: "?"): take the PMD's total received instead, and
        // OVS's own drop counters from the Interface table (refreshed every 5 s).
        const appctl = (...a: string[]) =>
          run(["ovs-appctl", "-t", `${dir}/ovs-vswitchd.ctl`, ...a]);
        const pmd = await appctl("dpif-netdev/pmd-stats-show");
        const rxTotal = [...pmd.matchAll(/packets received: (\d+)/g)].reduce(
          (x, m) => x + Number(m[1]),
          0,
        );
        const c: TargetCounters = {
          rxPackets: [NaN, NaN],
          txPackets: [NaN, NaN],
          rxBytes: [NaN, NaN],
          rxTotal,
          drops: 0,
          dropDetail: {},
          extra: {},
        };
        for (const p of ["vhu0", "vhu1"]) {
          const st = await run(vsctl("get", "Interface", p, "statistics"), env);
          for (const m of st.matchAll(/(\w*drop\w*)=(\d+)/g)) {
            c.drops += Number(m[2]);
            if (Number(m[2])) c.dropDetail[`${p}.${m[1]}`] = Number(m[2]);
          }
        }
        // NORMAL floods to the (down) br0 port until the MACs are learned: copies, not losses.
        const ports = await run(["ovs-ofctl", "dump-ports", `unix:${dir}/br0.mgmt`, "LOCAL"], env);
        c.extra["br0.tx_dropped(flood copies)"] = Number(
          ports.match(/tx pkts=\S+ bytes=\S+ drop=(\d+)/)?.[1] ?? NaN,
        );
        return c;
      },
      stop,
    };
  } catch (e) {
    const log = logTail(`${dir}/ovs-vswitchd.log`);
    await stop();
    throw new Error(`OVS-DPDK did not start: ${(e as Error).message}${log}`);
  }
}

function logTail(path: string): string {
  try {
    return `\n--- ${path} (tail) ---\n${Deno.readTextFileSync(path).slice(-3000)}`;
  } catch {
    return "";
  }
}
