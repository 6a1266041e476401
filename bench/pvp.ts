// `deno task bench`: a PVP loop benchmark. One dpdk-testpmd with two virtio-user ports in `mac`
// forwarding loops frames through the system under test: this switch (1 and 2 datapath
// threads), Open vSwitch with DPDK (NORMAL flow), and testpmd's own vhost io forwarding (a
// plain wire, the upper bound). Configurations alternate (A B C A B C ...) so drift on this
// shared 2-CPU host hits all of them alike; ratios are taken within the run.
import { parseArgs } from "node:util";
import { listOption, numberOption, optionsOrExit, TRIAL_OPTIONS } from "./options.ts";
import { testpmdAvailable } from "../peers/testpmd.ts";
import { runTrial, type Trial, TX_FIRST_BURSTS } from "./pvp/loop.ts";
import { OVS_VSWITCHD, ovsMissing } from "./pvp/ovs.ts";
import {
  cleanupAll,
  finalCleanup,
  isInterrupted,
  onCleanup,
  trapSignals,
  waitForQuiet,
} from "./pvp/proc.ts";
import { formatTable, plot, summarize } from "./pvp/report.ts";
import { type TargetKind, targetLabel, type TargetSpec } from "./pvp/targets.ts";

const USAGE = `Usage: deno task bench [options]
  --sizes 64,1518          wire frame sizes in bytes, FCS included (testpmd --txpkts = size - 4)
  --periods N              measurement periods per trial (default 3)
  --period-seconds S       length of one period (default 2)
  --warmup S               seconds between tx-first and the first period (default 2)
  --only switch,ovs,wire   configurations to run (also switch-noflows: flow counting off)
  --threads 1,2            switch datapath threads to try
  --rings split,packed     the front-end's ring layouts to try (virtio-user packed_vq; default split)
  --frontend-offloads      the front-end asks for TCP/UDP checksum offload (--tx-offloads=0xc):
                           its virtio-user ports then negotiate CSUM, and the target reads every
                           frame's virtio-net header, as for a Linux guest (testpmd sends plain
                           frames either way)
  --baseline DIR           also run the switch of another checkout (e.g. a git worktree of main)
                           as "base-tN": an A/B of a change within one run
  --rounds R               times each configuration runs, interleaved (default 4)
  --quiet-cpus C           before each trial wait until other work uses under C CPUs (0.3),
  --quiet-wait S           but no longer than S seconds (default 10; 0 = never wait);
                           periods with less other load than C are also summarised apart
  --out DIR                where results go (default bench/results)`;

const list = listOption;

function options() {
  const { values } = parseArgs({
    options: {
      ...TRIAL_OPTIONS,
      // The host's speed drifts by tens of percent within minutes: more, shorter rounds.
      rounds: { type: "string", default: "4" },
      periods: { type: "string", default: "3" },
      only: { type: "string", default: "switch,ovs,wire" },
      threads: { type: "string", default: "1,2" },
      rings: { type: "string", default: "split" },
      baseline: { type: "string" },
      "frontend-offloads": { type: "boolean", default: false },
      "quiet-cpus": { type: "string", default: "0.3" },
      "quiet-wait": { type: "string", default: "10" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const num = numberOption;
  const kinds = list(values.only);
  for (const k of kinds) {
    if (!["switch", "switch-noflows", "ovs", "wire"].includes(k)) {
      throw new Error(`--only: unknown ${k}`);
    }
  }
  return {
    sizes: list(values.sizes).map((s) => num("sizes", s, 64, 1518)),
    periods: Math.round(num("periods", values.periods, 1, 1000)),
    periodSeconds: num("period-seconds", values["period-seconds"], 0.2, 600),
    warmupSeconds: num("warmup", values.warmup, 0, 600),
    kinds: kinds as TargetKind[],
    threads: list(values.threads).map((t) => Math.round(num("threads", t, 1, 64))),
    rings: list(values.rings).map((r) => {
      if (r !== "split" && r !== "packed") throw new Error(`--rings: unknown ${r}`);
      return r === "packed";
    }),
    baseline: values.baseline ? values.baseline.replace(/\/?$/, "/") : undefined,
    rounds: Math.round(num("rounds", values.rounds, 1, 100)),
    frontendOffloads: values["frontend-offloads"],
    quietCpus: num("quiet-cpus", values["quiet-cpus"], 0, 64),
    quietWait: num("quiet-wait", values["quiet-wait"], 0, 600),
    out: values.out,
  };
}

async function host() {
  const sh = async (cmd: string) => {
    const o = await new Deno.Command("sh", { args: ["-c", cmd], stderr: "null" }).output();
    return new TextDecoder().decode(o.stdout).trim();
  };
  return {
    cpus: navigator.hardwareConcurrency,
    kernel: await sh("uname -r"),
    loadavg: (await Deno.readTextFile("/proc/loadavg")).trim(),
    deno: Deno.version.deno,
    dpdk: await sh("dpkg-query -W -f '${Version}' dpdk-dev"),
    ovs: await sh(`${OVS_VSWITCHD} --version | head -1`),
  };
}

async function main() {
  const o = optionsOrExit(options, USAGE);
  const missing = testpmdAvailable();
  if (missing) {
    console.error(`cannot run the PVP bench: ${missing}`);
    Deno.exit(1);
  }
  const notes: string[] = [];
  const specs: TargetSpec[] = o.rings.flatMap((packed) =>
    o.kinds.flatMap((kind): TargetSpec[] =>
      kind === "switch" || kind === "switch-noflows"
        ? o.threads.flatMap((threads) => [
          { kind, threads, packed },
          ...(o.baseline && kind === "switch" ? [{ kind, threads, packed, repo: o.baseline }] : []),
        ])
        : [{ kind, packed }]
    )
  );
  const ovsWhy = o.kinds.includes("ovs") ? ovsMissing() : null;
  if (ovsWhy) notes.push(`ovs skipped: ${ovsWhy}`);
  let active = specs.filter((s) => !(s.kind === "ovs" && ovsWhy));
  const total = o.rounds * o.sizes.length * active.length;
  const perTrial = 9 + o.warmupSeconds + o.periods * o.periodSeconds;
  const log = (msg: string) => console.error(`${new Date().toISOString().slice(11, 19)} ${msg}`);
  log(
    `${total} trials (${o.rounds} rounds x ${o.sizes.length} sizes x ${active.length} configs), ` +
      `about ${Math.ceil((total * perTrial) / 60)} min`,
  );
  const untrap = trapSignals();
  finalCleanup();
  const root = await Deno.makeTempDir({ prefix: "pvp-" });
  onCleanup(() => Deno.remove(root, { recursive: true }).catch(() => {}));
  const startHost = await host();
  const trials: (Trial & { round: number })[] = [];
  try {
    let n = 0;
    rounds: for (let round = 1; round <= o.rounds; round++) {
      for (const size of o.sizes) {
        for (const spec of [...active]) {
          n++;
          const tag = `${n}`;
          const dir = `${root}/${n}`;
          await Deno.mkdir(dir);
          const prefix = `[${n}/${total}] round ${round}, ${size} B, ${targetLabel(spec)}:`;
          if (o.quietWait > 0) {
            await waitForQuiet(o.quietCpus, o.quietWait, (m) => log(`${prefix} ${m}`));
          }
          const t = await runTrial(spec, {
            size,
            warmupSeconds: o.warmupSeconds,
            periods: o.periods,
            periodSeconds: o.periodSeconds,
            frontendOffloads: o.frontendOffloads,
            dir,
            tag,
            progress: (m) => log(`${prefix} ${m}`),
          });
          if (isInterrupted()) break rounds; // the signal handler cleans up and exits
          trials.push({ ...t, round });
          if (t.error) log(`${prefix} FAILED: ${t.error}`);
          else if (t.integrity && !t.integrity.ok) {
            log(`${prefix} loop check FAILED: ${t.integrity.problems.join("; ")}`);
          }
          // OVS that cannot start here will not start in the next round either.
          if (spec.kind === "ovs" && t.error?.startsWith("OVS-DPDK did not start")) {
            notes.push(`ovs dropped after round ${round}: ${t.error}`);
            active = active.filter((s) => s !== spec);
          }
          await Deno.remove(dir, { recursive: true }).catch(() => {});
        }
      }
    }
  } finally {
    await cleanupAll();
    untrap();
  }
  if (isInterrupted()) Deno.exit(130);
  const rows = summarize(trials, o.quietCpus);
  const table = formatTable(rows);
  console.log(table);
  for (const note of notes) console.log(`note: ${note}`);
  const date = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19) + "Z";
  const commands = Object.fromEntries(trials.map((t) => [t.config, t.commands]));
  const result = {
    date,
    host: { ...startHost, loadavgEnd: (await Deno.readTextFile("/proc/loadavg")).trim() },
    options: { ...o, out: undefined },
    method: "one testpmd, 2 virtio-user ports, --forward-mode=mac, " +
      `${TX_FIRST_BURSTS} tx_first bursts of 32 per port; ` +
      "Mpps from the front-end's RX counters per direction over fixed periods after warm-up; " +
      "CPU from /proc/PID/stat of the target; ratios of medians within this run",
    notes,
    commands,
    summary: rows,
    table,
    trials,
  };
  await Deno.mkdir(o.out, { recursive: true });
  const text = JSON.stringify(result, null, 2) + "\n";
  await Deno.writeTextFile(`${o.out}/pvp-${date}.json`, text);
  await Deno.writeTextFile(`${o.out}/latest.json`, text);
  const title =
    `PVP loop ${date}, ${startHost.cpus} CPUs: compare within one run (rates move ±30% between runs)`;
  const why = await plot(rows, `${o.out}/latest.png`, title);
  console.log(
    `results: ${o.out}/pvp-${date}.json, ${o.out}/latest.json` +
      (why ? ` (no plot: ${why})` : `, ${o.out}/latest.png`),
  );
  const bad = trials.filter((t) => t.error || (t.integrity && !t.integrity.ok));
  if (bad.length) {
    console.log(`${bad.length} trial(s) failed or did not balance: see "trials" in the JSON`);
    Deno.exitCode = 1;
  }
}

if (import.meta.main) await main();
