// One port's ingress guard: what the worker polling the port checks before the bridge decides
// (loop-guard block, port security, broadcast/multicast storm control, policing) and after
// (unknown-unicast storm control). The forwarder holds one per port, null for the usual port
// with nothing configured, so such ports pay one null check per frame and nothing else.
import {
  PortSecurity,
  type PortSecuritySpec,
  SECURITY_BAD_MAC,
  SECURITY_OK,
} from "./port_security.ts";
import { StormControl, type StormControlSpec } from "./storm_control.ts";
import { type BucketSpec, type Clock, TokenBucket } from "./token_bucket.ts";
import {
  DROP_EGRESS_POLICED,
  DROP_LOOP,
  DROP_POLICED,
  DROP_SPOOFED,
  DROP_SPOOFED_IP,
} from "./safety_counters.ts";
import type { DatapathPort, EgressFrame, FrameBatch } from "../ports/port.ts";
import { ETH_HLEN } from "../ports/ethernet.ts";

/** Everything a worker needs to guard one port (structured-cloneable); null parts are off. */
export interface PortGuardSpec {
  /** Loop guard blocked the port: everything it receives is dropped. */
  blocked: boolean;
  security: PortSecuritySpec | null;
  storm: StormControlSpec | null;
  /** Ingress policer; tokens are bytes of Ethernet frame (no FCS). */
  ingress: BucketSpec | null;
  /** Egress policer, same units. */
  egress: BucketSpec | null;
}

/** Whether a spec has anything for the ingress side. */
export function guardsIngress(spec: PortGuardSpec): boolean {
  return spec.blocked || spec.security !== null || spec.storm !== null || spec.ingress !== null;
}

export class IngressGuard {
  readonly #blocked: boolean;
  readonly #security: PortSecurity | null;
  readonly #storm: StormControl | null;
  readonly #policer: TokenBucket | null;

  /** `counters`: this worker's safety counter block of the port. */
  constructor(spec: PortGuardSpec, readonly counters: Float64Array, readonly clock: Clock) {
    this.#blocked = spec.blocked;
    this.#security = spec.security && new PortSecurity(spec.security);
    this.#storm = spec.storm && new StormControl(spec.storm);
    this.#policer = spec.ingress && new TokenBucket(spec.ingress);
  }

  /**
   * Before the decision (and before the bridge learns the source): false if the frame at
   * frame[off, off + len) is dropped, counted.
   */
  /**
   * Whether admit() reads the frame's bytes (addresses, ARP and IP headers): then the forwarder
   * hands it, and everything after it, a private copy of the frame, so what was checked is what
   * is learned and sent. Loop-guard blocks and policers read only the length.
   */
  get readsFrame(): boolean {
    return this.#security !== null || this.#storm !== null;
  }

  admit(frame: Uint8Array, off: number, len: number): boolean {
    const c = this.counters;
    if (this.#blocked) {
      c[DROP_LOOP]++;
      return false;
    }
    if (len < ETH_HLEN) return true; // the bridge drops and counts runts
    const sec = this.#security;
    if (sec !== null) {
      const r = sec.check(frame, off, len);
      if (r !== SECURITY_OK) {
        c[r === SECURITY_BAD_MAC ? DROP_SPOOFED : DROP_SPOOFED_IP]++;
        return false;
      }
    }
    const storm = this.#storm;
    if (storm !== null && (frame[off] & 1) !== 0) {
      const r = storm.group(frame, off, this.clock.us);
      if (r >= 0) {
        c[r]++;
        return false;
      }
    }
    const policer = this.#policer;
    if (policer !== null && !policer.take(len, this.clock.us)) {
      c[DROP_POLICED]++;
      return false;
    }
    return true;
  }

  /** After the bridge chose to flood a frame: false if unknown-unicast storm control drops it. */
  admitFlood(frame: Uint8Array, off: number): boolean {
    const storm = this.#storm;
    if (storm === null || (frame[off] & 1) !== 0) return true;
    const r = storm.unknownUnicast(this.clock.us);
    if (r < 0) return true;
    this.counters[r]++;
    return false;
  }
}

/** A port with an egress policer: frames over the rate are dropped and counted, not queued. */
export class PolicedPort implements DatapathPort {
  readonly #bucket: TokenBucket;
  constructor(
    readonly inner: DatapathPort,
    spec: BucketSpec,
    readonly counters: Float64Array,
    readonly clock: Clock,
  ) {
    this.#bucket = new TokenBucket(spec);
  }
  receive(batch: FrameBatch): number {
    return this.inner.receive(batch);
  }
  release(): void {
    this.inner.release();
  }
  transmit(src: Uint8Array, frame: EgressFrame): boolean {
    if (!this.#bucket.take(frame.length, this.clock.us)) {
      this.counters[DROP_EGRESS_POLICED]++;
      return false;
    }
    return this.inner.transmit(src, frame);
  }
  flush(): void {
    this.inner.flush();
  }
}
