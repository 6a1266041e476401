// `deno task demo`: the README's walkthrough, unattended. A namespace host behind an AF_PACKET
// uplink and three QEMU guests on examples/three-vms-uplink.json; pings between all of them,
// the MAC table and ports over HTTP, a TCP transfer between two guests; then everything is torn
// down, also on failure or Ctrl-C. Needs root, qemu-system-x86_64, busybox-static, a kernel.
import { Lab, type LabPlan, labSkipReason } from "./lab.ts";
import { formatPing, HOST, pingAll } from "./ping.ts";
import { fdbTable, indent, portsSummary } from "./report.ts";
import { transfer } from "./throughput.ts";

export const DEMO_PLAN: LabPlan = {
  example: "three-vms-uplink.json",
  vms: [
    { port: "vm1", mac: "52:54:00:de:00:01", ip: "10.0.0.1/24" },
    { port: "vm2", mac: "52:54:00:de:00:02", ip: "10.0.0.2/24" },
    { port: "vm3", mac: "52:54:00:de:00:03", ip: "10.0.0.3/24" },
  ],
  hostAddr: "10.0.0.254/24",
};

const STEPS = 10;
const t0 = performance.now();
let stepNo = 0;
const secs = (since: number) => ((performance.now() - since) / 1000).toFixed(1);

/** Prints "[n/10] what", runs it, then its result indented under it. */
async function step<T>(what: string, fn: () => Promise<T>, show: (r: T) => string): Promise<T> {
  const started = performance.now();
  console.log(`[${String(++stepNo).padStart(2)}/${STEPS}] ${what}`);
  const result = await fn();
  console.log(indent(`${show(result)} (${secs(started)} s)`));
  return result;
}

async function demo(lab: Lab): Promise<void> {
  const { vms, hostAddr } = lab.plan;
  await step("Guest image (peers/build_guest.sh)", () => lab.image(), (r) => r);
  await step(
    "Namespace host behind a veth pair (the uplink)",
    () => lab.namespace(),
    (ns) =>
      `namespace ${ns.name}: ${ns.nsIf} ${hostAddr}; ` +
      `host end ${ns.hostIf} is the switch's uplink`,
  );
  await step(`Topology from examples/${lab.plan.example}`, () => lab.writeTopology(), (t) => {
    const ports = (t.ports as { name: string; type: string }[]).map((p) => `${p.name} ${p.type}`);
    return `${lab.topologyPath}: ${t.threads} threads; ${ports.join(", ")}`;
  });
  await step(
    "Switch (deno run --allow-all mod.ts <topology>)",
    () => lab.startSwitch(),
    () => `pid ${lab.switch!.pid}, HTTP on ${lab.url}/, uplink up`,
  );
  await step(
    `Booting ${vms.length} QEMU guests in parallel (TCG)`,
    () => lab.bootVms(),
    () =>
      vms.map((vm) => `${vm.port} ${vm.ip} in ${lab.guest(vm.port).bootMs / 1000} s`).join(", "),
  );

  const stations = [
    ...vms.map((vm) => ({ name: vm.port, ip: vm.ip.split("/")[0] })),
    { name: HOST, ip: hostAddr!.split("/")[0] },
  ];
  const pings = await step(
    "Pinging every pair (3 echoes each)",
    () => pingAll(lab, stations),
    (r) =>
      r.map(formatPing).join("\n") +
      `\n${r.filter((p) => p.received > 0).length}/${r.length} pairs answered`,
  );
  const silent = pings.filter((p) => p.received === 0);
  if (silent.length) {
    throw new Error(
      `no replies: ${silent.map((p) => `${p.from} -> ${p.to}`).join(", ")}\n` +
        `${silent[0].output}\n--- switch log ---\n${lab.switchLog()}`,
    );
  }

  const hostMac = await lab.hostMac();
  const fdb = await step("MAC table (GET /fdb)", () => fdbTable(lab), (r) => r.text);
  const want = [...vms.map((vm) => `${vm.mac} ${vm.port}`), `${hostMac} uplink`];
  const have = fdb.entries.map((e) => `${e.mac} ${e.port}`);
  const missing = want.filter((w) => !have.includes(w));
  if (missing.length) throw new Error(`the MAC table lacks ${missing.join(", ")}`);

  await step("Ports (GET /info, /ports, /stats)", () => portsSummary(lab), (s) => s);
  const [a, b] = vms;
  const t = await step(
    `TCP throughput ${a.port} -> ${b.port} (busybox nc, 8 MiB of /dev/urandom, sha256 both ends)`,
    () => transfer(lab.guest(a.port), lab.guest(b.port), b.ip.split("/")[0], 8),
    (r) =>
      `${(r.bytes / 2 ** 20).toFixed(1)} MiB in ${r.seconds.toFixed(2)} s = ` +
      `${r.mbPerSecond.toFixed(1)} MB/s; sha256 ${r.sentSha256.slice(0, 16)}... ` +
      (r.sentSha256 === r.receivedSha256 ? "matches" : `!= ${r.receivedSha256.slice(0, 16)}...`),
  );
  if (t.sentSha256 !== t.receivedSha256 || t.bytes !== 8 * 2 ** 20) {
    throw new Error(`the transfer was corrupted: ${JSON.stringify(t)}`);
  }
}

async function main(): Promise<number> {
  const missing = labSkipReason();
  if (missing) {
    console.error(`demo: cannot run here: ${missing}`);
    return 1;
  }
  const verbose = Deno.env.get("VSWITCH_LAB_LOG") === "1";
  const lab = new Lab({ ...DEMO_PLAN, log: verbose ? console.log : undefined });
  // Ctrl-C (the switch and QEMU get it too) or a kill: tear down, then leave. `deno task`
  // forwards the terminal's SIGINT, so it may come twice.
  let interrupted = false;
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => {
      if (interrupted) return;
      interrupted = true;
      console.error(`\ndemo: ${sig}: tearing down`);
      lab.close().finally(() => Deno.exit(130));
    });
  }
  let status = 0;
  try {
    await demo(lab);
  } catch (err) {
    // After a signal, the steps fail because their VMs went away: not worth a message.
    if (!interrupted) console.error(`\ndemo: FAILED: ${(err as Error).message}`);
    status = 1;
  }
  stepNo = STEPS - 1; // numbered last even when an earlier step failed
  await step("Teardown: VMs, switch, namespace, temp dir", () => lab.close(), () => "done");
  console.log(status ? "demo failed" : `demo finished in ${secs(t0)} s`);
  return status;
}

if (import.meta.main) Deno.exit(await main());
