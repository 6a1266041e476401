// GET /ports/:name/capture?count=&seconds=: a live pcap stream of the frames passing a port, so
// `curl -sN http://127.0.0.1:8080/ports/vm1/capture?count=10 | tcpdump -r - -e -n` works.
import { type Context, Hono, type MiddlewareHandler } from "hono";
import { validator } from "hono/validator";
import { fail } from "./fail.ts";
import type { SwitchView } from "../switch/view.ts";

export const CAPTURE_DEFAULTS = { count: 100, seconds: 10 };
export const CAPTURE_LIMITS = { count: 100_000, seconds: 3600 };
export const PCAP_CONTENT_TYPE = "application/vnd.tcpdump.pcap";
/**
 * Captures running at once, over all ports: each makes every worker copy the frames of its
 * port, so a client opening many would slow the datapath down for everyone.
 */
export const MAX_CAPTURES = 4;

export interface CaptureQuery {
  count: number;
  seconds: number;
}

/** The capture's bounds from the query, or the 400 message saying what is wrong. */
export function parseCaptureQuery(query: Record<string, string | string[]>): CaptureQuery | string {
  const out = { ...CAPTURE_DEFAULTS };
  for (const [key, value] of Object.entries(query)) {
    if (key !== "count" && key !== "seconds") {
      return `unknown parameter ${JSON.stringify(key)}: use count or seconds`;
    }
    if (typeof value !== "string") return `give ${key} once`;
    if (key === "count") {
      const n = /^\d{1,6}$/.test(value) ? Number(value) : NaN;
      if (!(n >= 1 && n <= CAPTURE_LIMITS.count)) {
        return `count must be an integer from 1 to ${CAPTURE_LIMITS.count}, got ${
          JSON.stringify(value)
        }`;
      }
      out.count = n;
    } else {
      const s = /^\d{1,4}(\.\d{1,3})?$/.test(value) ? Number(value) : NaN;
      if (!(s > 0 && s <= CAPTURE_LIMITS.seconds)) {
        return `seconds must be a number above 0 and at most ${CAPTURE_LIMITS.seconds}, got ${
          JSON.stringify(value)
        }`;
      }
      out.seconds = s;
    }
  }
  return out;
}

/**
 * Calls `gone` when the client goes away mid-response. Under Deno.serve (whose handler info Hono
 * passes as `c.env`) that is when `completed` rejects: reading `request.signal` there would make
 * Deno warn, as it also aborts that signal after every successful response. Elsewhere (tests,
 * other runtimes) the request's signal tells.
 */
function onClientGone(c: Context, gone: () => void): void {
  const completed = (c.env as Partial<Deno.ServeHandlerInfo> | undefined)?.completed;
  if (completed instanceof Promise) completed.catch(gone);
  else if (c.req.raw.signal.aborted) gone();
  else c.req.raw.signal.addEventListener("abort", gone, { once: true });
}

/**
 * A byte stream over `frames` that pulls only as fast as the client reads; cancelling it (the
 * server does when the client disconnects) aborts `stop` and closes the iterator.
 */
function pcapStream(
  frames: AsyncIterable<Uint8Array>,
  stop: AbortController,
  ended: () => void,
): ReadableStream<Uint8Array> {
  const it = frames[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const next = await it.next();
      if (next.done) {
        ended();
        controller.close();
      } else controller.enqueue(next.value);
    },
    async cancel() {
      stop.abort();
      ended();
      await it.return?.();
    },
  }, { highWaterMark: 0 });
}

/** `guard`: the checks every privileged request passes (token, read-only). */
export function captureRoutes(view: SwitchView, guard: MiddlewareHandler[]): Hono {
  const app = new Hono();
  const query = validator("query", (q: Record<string, string | string[]>, c: Context) => {
    const parsed = parseCaptureQuery(q);
    return typeof parsed === "string" ? fail(c, 400, parsed) : parsed;
  });

  let running = 0;
  for (const check of guard) app.get("/ports/:name/capture", check);
  app.get("/ports/:name/capture", query, (c) => {
    const name = c.req.param("name");
    const { count, seconds } = c.req.valid("query");
    if (running >= MAX_CAPTURES) {
      return fail(c, 429, `${running} captures are running, the most at once; retry later`);
    }
    const stop = new AbortController();
    const frames = view.capture(name, { maxFrames: count, seconds, signal: stop.signal });
    if (!frames) return fail(c, 404, `no port named ${JSON.stringify(name)}`);
    running++;
    let counted = true;
    const ended = () => {
      if (counted) running--;
      counted = false;
    };
    onClientGone(c, () => {
      stop.abort();
      ended();
    });
    return c.body(pcapStream(frames, stop, ended), 200, {
      "Content-Type": PCAP_CONTENT_TYPE,
      "Content-Disposition": `attachment; filename="${name.replace(/[^\w.-]/g, "_")}.pcap"`,
      "Cache-Control": "no-store",
      "X-Content-Type-Options": "nosniff",
    });
  });

  return app;
}
