// FDB aging: learned entries not seen for the topology's fdb.agingSeconds are removed. The
// table is checked a tenth of the aging time apart (1 to 10 s), so an entry outlives its time
// by at most that much.
import type { Fdb } from "./fdb.ts";

/** The clock FDB ages are kept in (whole seconds of wall time). */
export const nowSeconds = (): number => Math.floor(Date.now() / 1000);

/** How often the table is swept, in ms, for an aging time in seconds. */
export function agingSweepMs(agingSeconds: number): number {
  return Math.max(1, Math.min(10, Math.floor(agingSeconds / 10))) * 1000;
}

export class FdbAging {
  readonly #timer: ReturnType<typeof setInterval>;

  constructor(fdb: Fdb, agingSeconds: number) {
    this.#timer = setInterval(
      () => fdb.age(nowSeconds(), agingSeconds),
      agingSweepMs(agingSeconds),
    );
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
