// busybox ping in a guest, read from its output rather than its exit status: busybox ping exits
// 0 once any reply came (one of three is enough), so a test that checks only the status passes
// with two frames in three lost.
import type { Guest } from "../../peers/qemu.ts";

export interface PingResult {
  transmitted: number;
  received: number;
  lost: number;
  /** seq numbers answered, in order of arrival. */
  seqs: number[];
  /** Round-trip time of each reply, in order of arrival. */
  rttsMs: number[];
  maxRttMs: number;
  /** Longest run of consecutive seq numbers never answered. */
  longestLossRun: number;
  /** Replies to pings sent after that run (traffic that resumed). */
  answeredAfterLossRun: number;
  output: string;
}

/** Parses busybox ping output (per-reply lines and the statistics). */
export function parsePing(output: string): PingResult {
  const seqs = [...output.matchAll(/seq=(\d+)/g)].map((m) => Number(m[1]));
  const rttsMs = [...output.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  const stats = output.match(/(\d+) packets transmitted, (\d+) packets received/);
  const transmitted = stats ? Number(stats[1]) : Math.max(-1, ...seqs) + 1;
  const received = stats ? Number(stats[2]) : seqs.length;
  const answered = new Set(seqs);
  let run = 0, longest = 0, end = -1;
  for (let s = 0; s < transmitted; s++) {
    run = answered.has(s) ? 0 : run + 1;
    if (run > longest) [longest, end] = [run, s];
  }
  return {
    transmitted,
    received,
    lost: transmitted - received,
    seqs,
    rttsMs,
    maxRttMs: rttsMs.length ? Math.max(...rttsMs) : 0,
    longestLossRun: longest,
    answeredAfterLossRun: seqs.filter((s) => s > end).length,
    output,
  };
}

export interface PingOptions {
  count?: number;
  /** Seconds busybox waits for replies after the last echo (room for TCG guests on busy cores). */
  waitSeconds?: number;
  /** Seconds between echoes (busybox's default is 1). */
  intervalSeconds?: number;
}

/**
 * Pings `ip` from the guest and throws unless every echo was answered exactly once: a switch on
 * a virtual wire has no reason to lose one. Returns the parsed replies (for their RTTs).
 */
export async function pingAll(guest: Guest, ip: string, opts: PingOptions = {}) {
  const count = opts.count ?? 3;
  const interval = opts.intervalSeconds === undefined ? "" : `-i ${opts.intervalSeconds} `;
  const cmd = `ping -c ${count} ${interval}-W ${opts.waitSeconds ?? 5} ${ip}`;
  const r = parsePing((await guest.run(cmd, 60_000 + count * 2000)).output);
  const seqs = [...r.seqs].sort((a, b) => a - b);
  const want = Array.from({ length: count }, (_, i) => i);
  if (r.transmitted !== count || r.received !== count || seqs.join() !== want.join()) {
    throw new Error(
      `${guest.name}: ${cmd}: ${r.received} of ${r.transmitted} answered ` +
        `(seqs ${r.seqs.join(",")}), want all ${count}:\n${r.output}`,
    );
  }
  return r;
}

/** The median of the round-trip times. */
export function medianRtt(r: PingResult): number {
  const s = [...r.rttsMs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
