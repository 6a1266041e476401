// Pings through the switch, from a guest (over its serial console) or from the namespace host,
// with busybox ping in both places (the host has no iputils ping).
import type { Lab } from "./lab.ts";

export interface PingResult {
  from: string;
  to: string;
  ip: string;
  sent: number;
  received: number;
  /** Average round trip in ms, when any reply came. */
  avgMs?: number;
  output: string;
}

/** The name a lab gives the namespace host in ping results. */
export const HOST = "host";

export async function ping(
  lab: Lab,
  from: string,
  to: string,
  ip: string,
  count = 3,
  waitSeconds = 5,
): Promise<PingResult> {
  // -W: how long busybox ping waits for replies after the last echo; 5 s leaves room for TCG
  // guests on shared cores, a ping expected to fail can wait less.
  const args = ["-c", String(count), "-W", String(waitSeconds), ip];
  let output: string;
  if (from === HOST) {
    const out = await new Deno.Command("ip", {
      args: ["netns", "exec", lab.ns!.name, "busybox", "ping", ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    output = dec.decode(out.stdout) + dec.decode(out.stderr);
  } else {
    output = (await lab.guest(from).run(`ping ${args.join(" ")}`, 60_000)).output;
  }
  const counts = output.match(/(\d+) packets transmitted, (\d+) packets received/);
  const avg = output.match(/min\/avg\/max = [\d.]+\/([\d.]+)\//);
  return {
    from,
    to,
    ip,
    sent: Number(counts?.[1] ?? count),
    received: Number(counts?.[2] ?? 0),
    avgMs: avg ? Number(avg[1]) : undefined,
    output,
  };
}

export interface Station {
  name: string;
  /** Address without the prefix length. */
  ip: string;
}

/**
 * Every station pings every other one. A station's own pings run one after another (a guest's
 * console runs one command at a time); different stations ping at the same time.
 */
export async function pingAll(lab: Lab, stations: Station[], count = 3): Promise<PingResult[]> {
  const perSource = await Promise.all(stations.map(async (src) => {
    const results: PingResult[] = [];
    for (const dst of stations) {
      if (dst !== src) results.push(await ping(lab, src.name, dst.name, dst.ip, count));
    }
    return results;
  }));
  return perSource.flat();
}

export function formatPing(r: PingResult): string {
  const rtt = r.avgMs === undefined ? "" : `, avg ${r.avgMs.toFixed(2)} ms`;
  const from = r.from.padEnd(5), to = `${r.to} (${r.ip})`.padEnd(20);
  return `${from} -> ${to} ${r.received}/${r.sent} replies${rtt}`;
}
