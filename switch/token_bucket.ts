// Token buckets shared by every worker that polls or transmits to a port: storm control, ingress
// policing and egress policing all meter through one. The bucket lives in two int32 words of a
// SharedArrayBuffer, so a port's queues polled by several workers share one limit; a frame costs
// one Atomics.sub (plus a refill at most every REFILL_US), and only on ports that configure it.

/** Int32 words per bucket: tokens, then the refill clock (microseconds, wrapping at 2^32). */
export const BUCKET_WORDS = 2;
const TOKENS = 0;
const LAST = 1;
/**
 * Shortest refill interval. The clock advances by whole tokens' worth of time, rounded to a
 * microsecond, so each refill is off by at most half a microsecond of tokens: refilling at most
 * every 100 us keeps the rate within 0.5%.
 */
const REFILL_US = 100;
/** A clock step further back than this is the 32-bit microsecond clock wrapping (or a long idle). */
const WRAP_US = -1_000_000;

/** What a worker needs to meter through a bucket; `rate` in tokens per second. */
export interface BucketSpec {
  buffer: SharedArrayBuffer;
  rate: number;
  burst: number;
}

/** A full bucket for `rate` tokens per second, holding at most `burst` (at least 1). */
export function createBucket(rate: number, burst: number, nowUs: number): BucketSpec {
  if (!(rate > 0) || !Number.isFinite(rate)) throw new RangeError(`bucket rate ${rate}`);
  if (!Number.isInteger(burst) || burst < 1 || burst > 0x3fffffff) {
    throw new RangeError(`bucket burst ${burst} must be an integer in 1..${0x3fffffff}`);
  }
  const buffer = new SharedArrayBuffer(BUCKET_WORDS * 4);
  const w = new Int32Array(buffer);
  w[TOKENS] = burst;
  w[LAST] = nowUs;
  return { buffer, rate, burst };
}

/** Microseconds since the epoch modulo 2^32, as an int32: comparable between threads. */
export function clockUs(): number {
  return ((performance.timeOrigin + performance.now()) * 1000 % 4294967296) | 0;
}

/** The per-worker clock the meters read: ticked once per poll pass, not per frame. */
export class Clock {
  us = clockUs();
  tick(): void {
    this.us = clockUs();
  }
}

export class TokenBucket {
  readonly #w: Int32Array;
  readonly #perUs: number;
  readonly #usPerToken: number;
  readonly #burst: number;
  readonly #minStep: number;

  constructor(readonly spec: BucketSpec) {
    this.#w = new Int32Array(spec.buffer, 0, BUCKET_WORDS);
    this.#perUs = spec.rate / 1e6;
    this.#usPerToken = 1e6 / spec.rate;
    this.#burst = spec.burst;
    // Never refill for less than one whole token (a slow bucket would round every step to 0).
    this.#minStep = Math.max(REFILL_US, Math.ceil(this.#usPerToken));
  }

  /**
   * Takes `cost` tokens at time `nowUs` (clockUs()); false, taking none, if there are too few.
   * A cost above the burst (a 64 KiB GSO frame through a small bucket) passes when the bucket is
   * full and leaves it in debt, repaid by later refills, so the long-run rate still holds.
   */
  take(cost: number, nowUs: number): boolean {
    const w = this.#w;
    const last = Atomics.load(w, LAST);
    const dt = (nowUs - last) | 0;
    if (dt >= this.#minStep || dt < WRAP_US) this.#refill(last, dt, nowUs);
    if (Atomics.sub(w, TOKENS, cost) >= (cost < this.#burst ? cost : this.#burst)) return true;
    Atomics.add(w, TOKENS, cost);
    return false;
  }

  /** Tokens now in the bucket (may read below zero for a moment while a take is undone). */
  get tokens(): number {
    return Atomics.load(this.#w, TOKENS);
  }

  #refill(last: number, dt: number, nowUs: number): void {
    const w = this.#w;
    let add = dt < 0 ? this.#burst : Math.floor(dt * this.#perUs);
    // Advance the clock by the time those whole tokens took, so fractions carry to next time.
    let next = (last + Math.round(add * this.#usPerToken)) | 0;
    if (add >= this.#burst) {
      add = this.#burst;
      next = nowUs;
    }
    // One thread wins the refill for this interval; the others just take.
    if (Atomics.compareExchange(w, LAST, last, next) !== last) return;
    let tokens = Atomics.load(w, TOKENS);
    for (;;) {
      const filled = Math.min(this.#burst, tokens + add);
      const seen = Atomics.compareExchange(w, TOKENS, tokens, filled);
      if (seen === tokens) return;
      tokens = seen;
    }
  }
}
