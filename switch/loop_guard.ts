// Loop guard: finds a forwarding loop outside the switch (two uplinks into one LAN) from what a
// loop does to the MAC table: the same source MACs arrive on one port, then another, thousands
// of times a second. The bridge counts, per port, the learned MACs that moved to it; every
// SAMPLE_MS the control plane reads those counts, and a guarded port whose rate passes its
// threshold while another port also sees moves is blocked: the later of the ports involved
// (the one whose link came up last, ties to the later port in the topology), so the older
// uplink keeps the LAN reachable. After `retrySeconds` the port is let back in; if the loop is
// still there it is blocked again within one sample.

export const SAMPLE_MS = 100;

export interface LoopGuardPort {
  /** Whether loop guard may block this port. */
  enabled: boolean;
  /** MAC moves per second that count as a loop. */
  movesPerSecond: number;
  /** Seconds a blocked port stays blocked before it is tried again. */
  retrySeconds: number;
}

export interface LoopGuardDecision {
  block: { port: number; moves: number; partner: number }[];
  unblock: number[];
}

export class LoopGuard {
  readonly #last: number[];
  #lastTime = -1;
  /** Per port: time (ms) it was blocked until, or 0. */
  readonly blockedUntil: number[];
  /** Per port: time (ms) its link last came up. */
  readonly upSince: number[];

  constructor(readonly ports: LoopGuardPort[]) {
    this.#last = ports.map(() => 0);
    this.blockedUntil = ports.map(() => 0);
    this.upSince = ports.map(() => 0);
  }

  get enabled(): boolean {
    return this.ports.some((p) => p.enabled);
  }

  isBlocked(port: number): boolean {
    return this.blockedUntil[port] !== 0;
  }

  /** Feeds the cumulative per-port MAC move counters at time `now` (ms). */
  sample(now: number, moves: number[]): LoopGuardDecision {
    const decision: LoopGuardDecision = { block: [], unblock: [] };
    const seconds = this.#lastTime < 0 ? 0 : (now - this.#lastTime) / 1000;
    const delta = moves.map((m, i) => m - this.#last[i]);
    this.#last.splice(0, this.#last.length, ...moves);
    this.#lastTime = now;
    for (let p = 0; p < this.ports.length; p++) {
      if (this.blockedUntil[p] !== 0 && now >= this.blockedUntil[p]) {
        this.blockedUntil[p] = 0;
        decision.unblock.push(p);
      }
    }
    if (seconds <= 0) return decision;
    // Ports over their threshold; a loop shows on at least two ports (the MACs flap between).
    const hot = this.ports.flatMap((cfg, p) =>
      delta[p] / seconds >= cfg.movesPerSecond && this.blockedUntil[p] === 0 ? [p] : []
    );
    const moving = delta.flatMap((d, p) => d > 0 && this.blockedUntil[p] === 0 ? [p] : []);
    if (moving.length < 2) return decision;
    const candidates = hot.filter((p) => this.ports[p].enabled);
    if (candidates.length === 0) return decision;
    const later = (a: number, b: number) =>
      this.upSince[a] !== this.upSince[b] ? this.upSince[a] > this.upSince[b] : a > b;
    const port = candidates.reduce((a, b) => later(b, a) ? b : a);
    const partner = moving.filter((p) => p !== port).reduce((a, b) => delta[b] > delta[a] ? b : a);
    this.blockedUntil[port] = now + this.ports[port].retrySeconds * 1000;
    decision.block.push({ port, moves: Math.round(delta[port] / seconds), partner });
    return decision;
  }
}
