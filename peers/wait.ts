// The one way tests wait: on a condition, with a generous timeout, never on a fixed sleep
// standing in for "it has happened by now" (CONTRIBUTING: how a test avoids being hollow).

export const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface WaitOptions {
  /** Milliseconds between probes (default 5). */
  everyMs?: number;
  /** More to say when it times out (the state seen, a log). */
  detail?: () => string;
}

/**
 * Polls `probe` until it returns a truthy value, which it returns; throws naming `what` after
 * `timeoutMs`. The fourth argument is the options, or just the poll interval, or just `detail`.
 */
export async function waitFor<T>(
  what: string,
  probe: () => T | Promise<T>,
  timeoutMs = 10_000,
  opts: WaitOptions | number | (() => string) = {},
): Promise<NonNullable<T>> {
  const o: WaitOptions = typeof opts === "number"
    ? { everyMs: opts }
    : typeof opts === "function"
    ? { detail: opts }
    : opts;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) {
      const more = o.detail?.() ?? "";
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${more ? `\n${more}` : ""}`,
      );
    }
    await delay(o.everyMs ?? 5);
  }
}
