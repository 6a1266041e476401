// Storm control: per-port limits, in frames per second, on the frames a port may make the
// switch flood: broadcast, multicast and unknown unicast, each metered by its own token bucket.
import { type BucketSpec, TokenBucket } from "./token_bucket.ts";
import {
  DROP_STORM_BROADCAST,
  DROP_STORM_MULTICAST,
  DROP_STORM_UNKNOWN_UNICAST,
} from "./safety_counters.ts";

/** Buckets per class (tokens are frames), or null for a class without a limit. */
export interface StormControlSpec {
  broadcast: BucketSpec | null;
  multicast: BucketSpec | null;
  unknownUnicast: BucketSpec | null;
}

const bucket = (s: BucketSpec | null) => s === null ? null : new TokenBucket(s);

export class StormControl {
  readonly #broadcast: TokenBucket | null;
  readonly #multicast: TokenBucket | null;
  readonly #unknown: TokenBucket | null;

  constructor(spec: StormControlSpec) {
    this.#broadcast = bucket(spec.broadcast);
    this.#multicast = bucket(spec.multicast);
    this.#unknown = bucket(spec.unknownUnicast);
  }

  /**
   * For a frame whose destination has the group bit set: -1 to pass, or the safety counter to
   * count its drop under.
   */
  group(frame: Uint8Array, off: number, nowUs: number): number {
    const broadcast = (frame[off] & frame[off + 1] & frame[off + 2] & frame[off + 3] &
      frame[off + 4] & frame[off + 5]) === 0xff;
    if (broadcast) {
      const b = this.#broadcast;
      return b === null || b.take(1, nowUs) ? -1 : DROP_STORM_BROADCAST;
    }
    const m = this.#multicast;
    return m === null || m.take(1, nowUs) ? -1 : DROP_STORM_MULTICAST;
  }

  /** For a unicast frame the bridge is about to flood: -1 to pass, or the counter to count. */
  unknownUnicast(nowUs: number): number {
    const u = this.#unknown;
    return u === null || u.take(1, nowUs) ? -1 : DROP_STORM_UNKNOWN_UNICAST;
  }
}
