// The control side of the L2 safety features: turns each port's configuration into what the
// workers run (shared token buckets, the learnOnce pin, mirror wiring), keeps that state across
// changes (replacing one port's settings keeps nobody else's buckets), runs loop guard, and
// reports it all for /ports and /metrics. Workers get the whole plan whenever something changes.
import type { PortGuardSpec } from "./port_guard.ts";
import type { MirrorSpec } from "./mirror.ts";
import { createPinned, parseIpv4, parseIpv6, pinnedMac } from "./port_security.ts";
import { type BucketSpec, clockUs, createBucket } from "./token_bucket.ts";
import { LoopGuard } from "./loop_guard.ts";
import { SafetyCounters } from "./safety_counters.ts";
import { formatMac, parseMac } from "../ports/ethernet.ts";
import { type MirrorConfig, NO_SAFETY, type PortSafetyConfig } from "./safety_config.ts";
import type { PortConfig, VlanConfig } from "./topology.ts";

/** What every worker runs: one guard per port (null: nothing configured) and the mirrors. */
export interface SafetyPlan {
  guards: (PortGuardSpec | null)[];
  mirrors: MirrorSpec[];
}

/** A port's safety settings and state, as /ports shows them. */
export interface PortSafetyStatus {
  security?: PortSafetyConfig["security"] & { pinnedMac: string | null };
  stormControl?: PortSafetyConfig["stormControl"];
  policing?: PortSafetyConfig["policing"];
  loopGuard?: PortSafetyConfig["loopGuard"] & { blocked: boolean };
  /** Mirrors copying this port's frames, and mirrors sending their copies out of it. */
  mirroredBy?: string[];
  mirrorOutputOf?: string[];
}

interface PortState {
  config: PortSafetyConfig;
  spec: PortGuardSpec | null;
}

function untaggedVlan(v: VlanConfig): number {
  return v.mode === "access" ? v.tag : v.native;
}

export class SafetyPlane {
  readonly counters: SafetyCounters;
  readonly loopGuard: LoopGuard;
  readonly #ports: PortState[];

  constructor(
    /** By port number; null for a free one (ports are added and deleted while running). */
    readonly portConfigs: (PortConfig | null)[],
    readonly mirrors: MirrorConfig[],
    workers: number,
  ) {
    this.counters = SafetyCounters.create(workers, portConfigs.length);
    this.#ports = portConfigs.map((p) => ({ config: p?.safety ?? NO_SAFETY, spec: null }));
    this.#ports.forEach((_, i) => this.#compile(i));
    this.loopGuard = new LoopGuard(portConfigs.map((p) => ({
      enabled: (p?.safety.loopGuard ?? null) !== null,
      movesPerSecond: p?.safety.loopGuard?.movesPerSecond ?? Infinity,
      retrySeconds: p?.safety.loopGuard?.retrySeconds ?? 0,
    })));
  }

  /** Whether port `index` is a mirror output (not part of the bridge). */
  isMirrorOutput(index: number): boolean {
    return this.mirrors.some((m) => m.output === this.portConfigs[index]?.name);
  }

  /** Port number `index` gets a port (or, with null, is freed): its settings, fresh state. */
  setPort(index: number, cfg: PortConfig | null): void {
    this.portConfigs[index] = cfg;
    this.setPortSafety(index, cfg?.safety ?? NO_SAFETY);
  }

  /** Replaces one port's settings (buckets start full, a learnOnce pin starts empty). */
  setPortSafety(index: number, config: PortSafetyConfig): void {
    this.#ports[index].config = config;
    this.#compile(index);
    const guard = this.loopGuard.ports[index];
    guard.enabled = config.loopGuard !== null;
    guard.movesPerSecond = config.loopGuard?.movesPerSecond ?? Infinity;
    guard.retrySeconds = config.loopGuard?.retrySeconds ?? 0;
  }

  #compile(index: number): void {
    const cfg = this.#ports[index].config ?? NO_SAFETY;
    const now = clockUs();
    const bucket = (rate: number | null, burst: number): BucketSpec | null =>
      rate === null ? null : createBucket(rate, burst, now);
    const sec = cfg.security;
    const storm = cfg.stormControl;
    const police = cfg.policing;
    const spec: PortGuardSpec = {
      blocked: false,
      security: sec && {
        macs: sec.allowedMacs.flatMap((m) => {
          const { hi, lo } = parseMac(m);
          return [hi, lo | 0];
        }),
        learnOnce: sec.learnOnce,
        pinned: createPinned(),
        ipv4: sec.ipv4 && sec.ipv4.map((a) => parseIpv4(a)!),
        ipv6: sec.ipv6 && sec.ipv6.flatMap((a) => parseIpv6(a)!),
      },
      storm: storm && {
        broadcast: bucket(storm.broadcast, storm.burstFrames),
        multicast: bucket(storm.multicast, storm.burstFrames),
        unknownUnicast: bucket(storm.unknownUnicast, storm.burstFrames),
      },
      ingress: police?.ingress
        ? bucket(police.ingress.bitsPerSecond / 8, police.ingress.burstBytes)
        : null,
      egress: police?.egress
        ? bucket(police.egress.bitsPerSecond / 8, police.egress.burstBytes)
        : null,
    };
    const any = spec.security || spec.storm || spec.ingress || spec.egress;
    this.#ports[index].spec = any ? spec : null;
  }

  /** The plan for the workers, with loop guard's blocks applied. */
  plan(): SafetyPlan {
    const names = this.portConfigs.map((p) => p?.name);
    const guards = this.#ports.map((p, i) => {
      if (!this.loopGuard.isBlocked(i)) return p.spec;
      const base = p.spec ?? { security: null, storm: null, ingress: null, egress: null };
      return { ...base, blocked: true };
    });
    const mirrors = this.mirrors.map((m): MirrorSpec => {
      const ports = m.ports.map((n) => names.indexOf(n));
      return {
        name: m.name,
        ports,
        ingress: m.direction !== "egress",
        egress: m.direction !== "ingress",
        vlan: m.vlan ?? -1,
        output: names.indexOf(m.output),
        untaggedVlan: ports.map((p) => untaggedVlan(this.portConfigs[p]!.vlan)),
      };
    });
    return { guards, mirrors };
  }

  status(index: number): PortSafetyStatus {
    const cfg = this.#ports[index].config;
    const out: PortSafetyStatus = {};
    if (cfg.security) {
      const pin = this.#ports[index].spec?.security?.pinned;
      const mac = pin ? pinnedMac(pin) : null;
      out.security = { ...cfg.security, pinnedMac: mac ? formatMac(mac[0], mac[1]) : null };
    }
    if (cfg.stormControl) out.stormControl = cfg.stormControl;
    if (cfg.policing) out.policing = cfg.policing;
    if (cfg.loopGuard) {
      out.loopGuard = { ...cfg.loopGuard, blocked: this.loopGuard.isBlocked(index) };
    }
    const name = this.portConfigs[index]?.name ?? "";
    const by = this.mirrors.filter((m) => m.ports.includes(name)).map((m) => m.name);
    if (by.length) out.mirroredBy = by;
    const of = this.mirrors.filter((m) => m.output === name).map((m) => m.name);
    if (of.length) out.mirrorOutputOf = of;
    return out;
  }
}
