// Guest -> guest TCP (`bench/tcp.ts --guests`): the two QEMU/TCG guests the tests and the demo
// boot (peers/qemu.ts), one NIC each on a vhost-user port, and a timed busybox nc stream from the
// first to the second (iperf3 is not in the guest image). Every system runs for the whole run
// with its own pair of guests (all pairs boot at once: TCG boots cost more than the streams);
// the streams alternate between them within each round (the starting one rotates):
//   switch          this switch, the guests' default offloads (CSUM, HOST/GUEST_TSO4/6)
//   switch-plain    this switch, the guests' NICs with every offload off (QEMU properties)
//   ovs-tso-off     OVS-DPDK (dpdkvhostuser ports), userspace-tso-enable=false: no offloads
//   ovs-tso-on      OVS-DPDK, userspace-tso-enable=true
// Reported per trial: Mbit/s (bytes the receiver counted / the sender's guest time), what the
// switch's counters say crossed (TSO frames received from the sender, handed to the receiver
// whole, segmented or checksummed here) and the target's CPU seconds.
import { bootGuest, type Guest, guestToolsAvailable } from "../peers/qemu.ts";
import { ovsMissing, startOvs } from "./pvp/ovs.ts";
import type { Target } from "./pvp/targets.ts";
import { cleanupAll, exists, freePort, Proc, run, waitFor } from "./pvp/proc.ts";
import { cpuSeconds } from "../peers/switch_process.ts";
import { REPO } from "./options.ts";

export const GUEST_TARGETS = ["switch", "switch-plain", "ovs-tso-off", "ovs-tso-on"] as const;
export type GuestTarget = typeof GUEST_TARGETS[number];

export interface GuestBenchOptions {
  rounds: number;
  seconds: number;
  targets: GuestTarget[];
  out: string;
}

/** QEMU's virtio-net-pci properties that take every checksum and TSO offload away. */
const OFFLOADS_OFF = "csum=off,guest_csum=off,host_tso4=off,host_tso6=off," +
  "guest_tso4=off,guest_tso6=off,host_ecn=off,guest_ecn=off";
const IP = ["10.78.0.1", "10.78.0.2"];
const MAC = ["52:54:00:78:00:01", "52:54:00:78:00:02"];
const PORT = 5001;

/** Counters of the switch's two ports that show how the stream crossed. */
const SHOWN = [
  "rx_gso",
  "rx_csum_partial",
  "tx_gso",
  "gso_segmented",
  "csum_filled",
  "drop_no_buffer",
  "drop_too_big",
  "drop_bad_offload",
];

interface Running {
  sockets: [string, string];
  pid: number;
  /** Resolves once both guests' NICs are up on the target. */
  ready(): Promise<unknown>;
  /** Puts the target in its measured configuration, and back to its idle one. */
  beforeStream(): Promise<void>;
  afterStream(): Promise<void>;
  /** Non-zero offload counters per port ("vm0.rx_gso": n); none for OVS. */
  counters(): Promise<Record<string, number>>;
  stop(): Promise<void>;
}

async function startSwitch(dir: string): Promise<Running> {
  const listen = `127.0.0.1:${freePort()}`;
  const sockets: [string, string] = [`${dir}/vm0.sock`, `${dir}/vm1.sock`];
  const topology = {
    name: "bench-tcp-guests",
    http: { listen },
    threads: 1,
    ports: sockets.map((socket, i) => ({ name: `vm${i}`, type: "vhost-user", socket })),
  };
  const topoPath = `${dir}/switch.json`;
  await Deno.writeTextFile(topoPath, JSON.stringify(topology, null, 2) + "\n");
  const argv = [
    Deno.execPath(),
    "run",
    "--allow-all",
    new URL("../mod.ts", import.meta.url)
      .pathname,
    topoPath,
  ];
  const proc = new Proc("switch", argv);
  type Port = { state: string; counters: Record<string, number> };
  const ports = async (): Promise<Port[]> => {
    const res = await fetch(`http://${listen}/ports`);
    if (!res.ok) throw new Error(`GET /ports: HTTP ${res.status}`);
    return (await res.json()).ports;
  };
  try {
    await waitFor("the switch's sockets", async () => {
      if (proc.exited) throw new Error(`the switch exited\n${proc.describe()}`);
      const up = await ports().then(() => true, () => false);
      return (up && sockets.every(exists)) || undefined;
    }, 30_000);
  } catch (e) {
    await proc.stop();
    throw e;
  }
  return {
    sockets,
    pid: proc.pid,
    beforeStream: () => Promise.resolve(),
    afterStream: () => Promise.resolve(),
    ready: () =>
      waitFor(
        "both guests connected",
        async () => (await ports()).every((p) => p.state === "connected") || undefined,
        30_000,
      ),
    async counters() {
      const out: Record<string, number> = {};
      (await ports()).forEach((p, i) => {
        for (const k of SHOWN) if (p.counters[k]) out[`vm${i}.${k}`] = p.counters[k];
      });
      return out;
    },
    stop: () => proc.stop(),
  };
}

async function startOvsTarget(dir: string, tso: boolean, tag: string): Promise<Running> {
  const netns = `bt${Deno.pid}o${tag}`;
  await run(["ip", "netns", "add", netns]);
  const dropNetns = () => run(["ip", "netns", "del", netns]).then(() => {}, () => {});
  let t: Target;
  try {
    t = await startOvs(dir, `bt${Deno.pid}g${tag}`, { tso, pmdMaxSleepUs: 10_000, netns });
  } catch (err) {
    await dropNetns();
    throw err;
  }
  const db = `unix:${dir}/ovs/db.sock`;
  // The PMD busy-polls CPU 0: on two CPUs that makes the guests' boots (TCG) take minutes and
  // slows every other system's stream. It may sleep while idle (pmd-maxsleep, read at run time)
  // except during its own streams, where it polls as by default.
  const maxSleep = (us: number) =>
    run(["ovs-vsctl", `--db=${db}`, "set", "Open_vSwitch", ".", `other_config:pmd-maxsleep=${us}`]);
  return {
    sockets: t.sockets,
    pid: t.pids[0],
    ready: () => t.ready(),
    beforeStream: () => maxSleep(0).then(() => {}),
    afterStream: () => maxSleep(10_000).then(() => {}),
    async counters() {
      // OVS's own drop counters (Interface statistics, refreshed every 5 s) and the PMD's total.
      const c = await t.counters();
      return { ...c.dropDetail, pmd_rx_packets: c.rxTotal ?? 0 };
    },
    stop: () => t.stop().finally(dropNetns),
  };
}

/** A guest's counters of one protocol so far (/proc/net/snmp, e.g. the "Tcp:" lines), by name. */
async function snmp(g: Guest, proto: "Ip" | "Tcp"): Promise<Record<string, number>> {
  const lines = (await g.check(`grep '^${proto}:' /proc/net/snmp`)).trim().split("\n");
  const [names, values] = lines.map((l) => l.trim().split(/\s+/));
  if (!values || names.length !== values.length) {
    throw new Error(`unexpected /proc/net/snmp:\n${lines.join("\n")}`);
  }
  return Object.fromEntries(names.slice(1).map((n, i) => [n, Number(values[i + 1])]));
}

/** A guest's eth0 frame counters (received, and dropped or in error by its driver). */
async function linkStats(g: Guest): Promise<{ rx: number; rxDropped: number }> {
  const dir = "/sys/class/net/eth0/statistics";
  const out = await g.check(`cat ${dir}/rx_packets ${dir}/rx_dropped ${dir}/rx_errors`);
  const [rx, dropped, errors] = out.trim().split(/\s+/).map(Number);
  return { rx, rxDropped: dropped + errors };
}

/** The offload features a guest's driver negotiated (virtio's features file: one 0/1 per bit). */
async function negotiated(g: Guest): Promise<string[]> {
  const bits = (await g.check("cat /sys/class/net/eth0/device/features")).trim();
  const names: [number, string][] = [
    [0, "CSUM"],
    [1, "GUEST_CSUM"],
    [7, "GUEST_TSO4"],
    [8, "GUEST_TSO6"],
    [11, "HOST_TSO4"],
    [12, "HOST_TSO6"],
  ];
  return names.filter(([b]) => bits[b] === "1").map(([, n]) => n);
}

interface Trial {
  target: GuestTarget;
  round: number;
  mbps: number;
  bytes: number;
  seconds: number;
  /** CPU seconds of the target's process during the transfer. */
  cpu: number;
  /** CPU seconds of both guests' QEMU processes during the transfer. */
  guestCpu: number;
  /** TCP segments the receiving guest dropped for a bad checksum during the transfer. */
  csumErrors: number;
  /** Segments the sending guest's TCP retransmitted (RetransSegs). */
  retransmits: number;
  /** Segments the receiving guest's TCP took in (InSegs; GRO'd or TSO frames count once). */
  segmentsIn: number;
  /** Frames the receiving guest's driver took in, and dropped or found in error (eth0). */
  framesIn: number;
  framesDropped: number;
  /** The receiving guest's IPv4 counters over the transfer (/proc/net/snmp Ip:). */
  ipIn: Record<string, number>;
  counters: Record<string, number>;
  features: string[];
  bootMs: number;
  /** The stream had not ended STALL_S seconds after its source stopped. */
  stalled: boolean;
  error?: string;
}

/** Lines of a shell loop that polls `test` every 0.1 s, at most `tries` times. */
const waitUntil = (test: string, tries: number) =>
  `i=0; until ${test}; do i=$((i+1)); [ $i -ge ${tries} ] && break; sleep 0.1; done; ${test}`;

/**
 * A timed stream from `tx` to `rx`: bytes counted by the receiver, time by the sender. A stream
 * that has not ended `STALL_S` seconds after its source stopped is cut, and marked stalled.
 */
async function stream(tx: Guest, rx: Guest, seconds: number) {
  await rx.check(
    "rm -f /tmp/rx.n; " +
      // The listener's stdin stays open (busybox nc half-closes when its stdin ends).
      `setsid sh -c '(sleep 600 &) | nc -l -p ${PORT} | wc -c >/tmp/rx.n' >/dev/null 2>&1 &`,
  );
  await rx.check(waitUntil(`netstat -ltn | grep -q ":${PORT} "`, 100));
  // The source stops after `seconds`; nc then sends what it holds, half-closes, and returns
  // once the receiver has read everything and closed: the sender's time covers every byte. A
  // stalled stream's nc is ended by its own timeout (the console has no job control: a Ctrl-C
  // would not reach it).
  const limit = seconds + STALL_S;
  const sent = await tx.check(
    `a=$(cut -d" " -f1 /proc/uptime); timeout ${seconds} cat /dev/zero | ` +
      `timeout ${limit} nc ${IP[1]} ${PORT}; b=$(cut -d" " -f1 /proc/uptime); echo "took $a $b"`,
    (limit + 30) * 1000,
  );
  const [, a, b] = sent.match(/took ([\d.]+) ([\d.]+)/) ?? [];
  if (!a) throw new Error(`no timing from the sender:\n${sent}`);
  const secs = Math.max(Number(b) - Number(a), 0.01);
  const stalled = secs >= limit - 0.5;
  if (stalled) await rx.run("kill $(pidof nc) 2>/dev/null; true");
  const got = await rx.check(`${waitUntil("[ -s /tmp/rx.n ]", 300)} && cat /tmp/rx.n`, 60_000);
  await rx.run("kill $(pidof sleep) 2>/dev/null; true");
  const bytes = Number(got.trim().split("\n").at(-1));
  return { bytes, seconds: secs, mbps: bytes * 8 / secs / 1e6, stalled };
}

/** Seconds a stream may take beyond its source's time before it counts as stalled. */
const STALL_S = 15;

/** A system under test with its own pair of guests, up for the whole run. */
interface Setup {
  target: GuestTarget;
  running: Running | null;
  guests: Guest[];
  /** The offload features the sending guest's driver negotiated. */
  features: string[];
  bootMs: number;
  error?: string;
}

/** Starts the system, then boots its guests (the caller boots every pair at once). */
async function startTarget(root: string, target: GuestTarget, k: number): Promise<Setup> {
  const dir = `${root}/${target}`;
  await Deno.mkdir(dir, { recursive: true });
  const s: Setup = { target, running: null, guests: [], features: [], bootMs: 0 };
  try {
    s.running = target.startsWith("switch")
      ? await startSwitch(dir)
      : await startOvsTarget(dir, target === "ovs-tso-on", String(k));
  } catch (err) {
    console.error(`${target} did not start: ${err}`);
    s.error = String(err).split("\n")[0];
  }
  return s;
}

async function bootPair(s: Setup, k: number): Promise<void> {
  if (s.running === null) return;
  const sockets = s.running.sockets;
  const plain = s.target === "switch-plain";
  const booted = await Promise.allSettled([0, 1].map((g) =>
    bootGuest({
      name: `tcpg${k}${g}`,
      nics: [{ socket: sockets[g], mac: MAC[g], deviceOpts: plain ? OFFLOADS_OFF : undefined }],
      ip: `${IP[g]}/24`,
      bootTimeoutMs: 240_000,
    })
  ));
  s.guests = booted.flatMap((b) => b.status === "fulfilled" ? [b.value] : []);
  const failed = booted.find((b) => b.status === "rejected");
  try {
    if (failed) throw (failed as PromiseRejectedResult).reason;
    await s.running.ready();
    // ARP and MAC learning before any clock starts.
    await s.guests[0].check(`ping -c 1 -W 5 ${IP[1]} >/dev/null`, 20_000);
    s.features = await negotiated(s.guests[0]);
    s.bootMs = Math.max(...s.guests.map((g) => g.bootMs));
  } catch (err) {
    s.error = String(err).split("\n")[0];
  }
}

async function trial(s: Setup, round: number, seconds: number): Promise<Trial> {
  const base = {
    target: s.target,
    round,
    mbps: 0,
    bytes: 0,
    seconds: 0,
    cpu: 0,
    guestCpu: 0,
    csumErrors: 0,
    retransmits: 0,
    segmentsIn: 0,
    framesIn: 0,
    framesDropped: 0,
    ipIn: {},
    bootMs: s.bootMs,
    stalled: false,
    features: s.features,
    counters: {},
  };
  const t = s.running;
  if (s.error || t === null) return { ...base, error: s.error ?? "not started" };
  const guests = s.guests;
  try {
    const [tx0, rx0] = await Promise.all(guests.map((g) => snmp(g, "Tcp")));
    const link0 = await linkStats(guests[1]);
    const ip0 = await snmp(guests[1], "Ip");
    await t.beforeStream();
    const before = await t.counters();
    const guestCpuNow = () => guests.reduce((x, g) => x + cpuSeconds(g.pid), 0);
    const cpu0 = cpuSeconds(t.pid);
    const guestCpu0 = guestCpuNow();
    const r = await stream(guests[0], guests[1], seconds);
    const cpu = cpuSeconds(t.pid) - cpu0;
    const guestCpu = guestCpuNow() - guestCpu0;
    const after = await t.counters();
    await t.afterStream();
    const [tx1, rx1] = await Promise.all(guests.map((g) => snmp(g, "Tcp")));
    const link1 = await linkStats(guests[1]);
    const ip1 = await snmp(guests[1], "Ip");
    const ipIn = Object.fromEntries(
      ["InReceives", "InHdrErrors", "InAddrErrors", "InDiscards", "InDelivers"].map((k) => [
        k,
        ip1[k] - ip0[k],
      ]),
    );
    const counters = Object.fromEntries(
      Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)]).filter(([, v]) => v !== 0),
    );
    return {
      ...base,
      ...r,
      cpu,
      guestCpu,
      csumErrors: rx1.InCsumErrors - rx0.InCsumErrors,
      retransmits: tx1.RetransSegs - tx0.RetransSegs,
      segmentsIn: rx1.InSegs - rx0.InSegs,
      framesIn: link1.rx - link0.rx,
      framesDropped: link1.rxDropped - link0.rxDropped,
      ipIn,
      counters,
    };
  } catch (err) {
    await t.afterStream().catch(() => {});
    return { ...base, error: String(err).split("\n")[0] };
  }
}

const median = (xs: number[]) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

export async function guestsMain(opts: GuestBenchOptions): Promise<number> {
  const missing = guestToolsAvailable() ??
    (opts.targets.some((t) => t.startsWith("ovs")) ? ovsMissing() : null);
  if (missing) {
    console.error(`bench/tcp.ts --guests: ${missing}`);
    return 1;
  }
  const root = await Deno.makeTempDir({ prefix: "bench-tcp-guests-" });
  const trials: Trial[] = [];
  const load = () => Deno.loadavg().map((x) => x.toFixed(1)).join(" ");
  const loadBefore = load();
  const started = Date.now();
  const setups: Setup[] = [];
  try {
    // Every system, then every guest pair at once: the boots cost more than the streams.
    for (const [k, target] of opts.targets.entries()) {
      setups.push(await startTarget(root, target, k));
    }
    const booting = performance.now();
    await Promise.all(setups.map((s, k) => bootPair(s, k)));
    console.log(
      `${setups.reduce((n, s) => n + s.guests.length, 0)} guests booted in ` +
        `${((performance.now() - booting) / 1000).toFixed(1)} s, load ${load()}`,
    );
    for (let round = 0; round < opts.rounds; round++) {
      const order = setups.map((_, k) => setups[(k + round) % setups.length]);
      for (const s of order) {
        const t = await trial(s, round, opts.seconds);
        trials.push(t);
        console.log(
          `round ${round + 1} ${s.target.padEnd(12)} ${t.mbps.toFixed(1).padStart(6)} Mbit/s ` +
            `(${(t.bytes / 1e6).toFixed(1)} MB in ${t.seconds.toFixed(2)} s, CPU s: target ` +
            `${t.cpu.toFixed(1)} guests ${t.guestCpu.toFixed(1)}, TCP: ${t.retransmits} ` +
            `retransmitted, ${t.segmentsIn} in, ${t.csumErrors} checksum errors; receiver eth0: ` +
            `${t.framesIn} frames, ${t.framesDropped} dropped; load ${load()})` +
            (Object.keys(t.counters).length ? `\n    ${JSON.stringify(t.counters)}` : "") +
            (t.stalled
              ? `\n    STALLED: the stream had not ended ${STALL_S} s after its source; ` +
                `receiver IPv4 ${JSON.stringify(t.ipIn)}`
              : "") +
            (t.error ? `\n    FAILED: ${t.error}` : ""),
        );
      }
    }
  } finally {
    await Promise.all(setups.flatMap((s) => s.guests.map((g) => g.shutdown(5000))));
    for (const s of setups) await s.running?.stop().catch(() => {});
    await cleanupAll();
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
  const summary = opts.targets.map((target) => {
    const ts = trials.filter((t) => t.target === target && !t.error);
    const moved = ts.filter((t) => t.bytes > 0);
    return {
      target,
      mbps: median(ts.map((t) => t.mbps)),
      mbpsAll: ts.map((t) => Number(t.mbps.toFixed(1))),
      cpuPerGB: median(moved.map((t) => t.cpu / (t.bytes / 1e9))),
      guestCpuPerGB: median(moved.map((t) => t.guestCpu / (t.bytes / 1e9))),
      csumErrors: ts.reduce((x, t) => x + t.csumErrors, 0),
      retransmits: median(ts.map((t) => t.retransmits)),
      features: ts[0]?.features ?? [],
      failed: trials.filter((t) => t.target === target && t.error).length,
      stalled: ts.filter((t) => t.stalled).length,
    };
  });
  const minutes = ((Date.now() - started) / 60000).toFixed(1);
  console.log(
    `\nmedians of ${opts.rounds} rounds x ${opts.seconds} s, load average ${loadBefore} at ` +
      `the start, ${load()} at the end, ${minutes} min`,
  );
  const refs = ["ovs-tso-off", "ovs-tso-on"].map((r) => summary.find((s) => s.target === r));
  const num = (x: number, digits: number) => Number.isFinite(x) ? x.toFixed(digits) : "-";
  console.log(
    "target        Mbit/s  [all]                   CPU s/GB: target guests  retrans  csum errors  " +
      "vs ovs-tso-off  vs ovs-tso-on  offloads negotiated",
  );
  for (const s of summary) {
    const ratios = refs.map((r) => r && r.mbps > 0 ? (s.mbps / r.mbps).toFixed(2) : "-");
    console.log(
      `${s.target.padEnd(12)} ${num(s.mbps, 1).padStart(7)}  ${
        JSON.stringify(s.mbpsAll).padEnd(23)
      } ${num(s.cpuPerGB, 0).padStart(16)} ${num(s.guestCpuPerGB, 0).padStart(6)}  ${
        num(s.retransmits, 0).padStart(7)
      }  ${String(s.csumErrors).padStart(11)}  ${ratios[0].padStart(14)}  ${
        ratios[1].padStart(13)
      }  ${s.features.join(",") || "none"}${s.failed ? `  (${s.failed} failed)` : ""}${
        s.stalled ? `  (${s.stalled} stalled)` : ""
      }`,
    );
  }
  await Deno.writeTextFile(
    opts.out,
    JSON.stringify(
      {
        date: new Date().toISOString(),
        // The file names no directory of the machine it ran on.
        opts: { ...opts, out: opts.out.startsWith(REPO) ? opts.out.slice(REPO.length) : opts.out },
        loadBefore,
        loadAfter: load(),
        trials,
        summary,
      },
      null,
      2,
    ) + "\n",
  );
  console.log(`\nwritten to ${opts.out}`);
  return trials.some((t) => t.error) ? 1 : 0;
}
