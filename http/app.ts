// The HTTP endpoint: a thin reader of a SwitchView. It owns no switch state, so it can be tested
// against an in-memory view and served from the main thread without touching the datapath.
//
//   GET /                     the live page (http/page.ts)
//   GET /health, /info, /stats, /metrics (http/metrics.ts)
//   GET /ports, /ports/:name
//   GET /ports/:name/capture  pcap stream (http/capture.ts), privileged
//   GET|DELETE /fdb, DELETE /ports/:name/fdb (http/fdb.ts), DELETE is privileged
import { type Context, Hono, type MiddlewareHandler } from "hono";
import { bearerAuth } from "hono/bearer-auth";
import { HTTPException } from "hono/http-exception";
import { captureRoutes } from "./capture.ts";
import { fail } from "./fail.ts";
import { controlRoutes } from "./control.ts";
import { fdbRoutes } from "./fdb.ts";
import { flowRoutes } from "./flows.ts";
import { hostCheck } from "./host_check.ts";
import { METRICS_CONTENT_TYPE, renderMetrics } from "./metrics.ts";
import { PAGE, PAGE_CSP } from "./page.ts";
import type { SwitchView } from "../switch/view.ts";

/** The `http` section of the topology, less the listen address. */
export interface AppOptions {
  /** When set, requests that change state need `Authorization: Bearer <token>`. */
  token?: string | null;
  /** Refuse every request that changes state (403). */
  readOnly?: boolean;
  /**
   * Host names requests may carry besides IP literals and localhost (http/host_check.ts):
   * the listen host and http.allowedHosts.
   */
  hosts?: string[];
}

const WRITE_METHODS = ["POST", "PUT", "PATCH", "DELETE"];

/**
 * What a privileged request (a change, or a capture) must pass: the bearer token when one is
 * configured (401), then the read-only switch (403).
 */
function privileged(options: AppOptions): MiddlewareHandler[] {
  const guard: MiddlewareHandler[] = [];
  if (options.token) {
    const unauthorized = (error: string) => ({ message: (c: Context) => fail(c, 401, error) });
    guard.push(bearerAuth({
      token: options.token,
      noAuthenticationHeader: unauthorized("this request needs Authorization: Bearer <token>"),
      invalidAuthenticationHeader: unauthorized("expected Authorization: Bearer <token>"),
      invalidToken: unauthorized("invalid token"),
    }));
  }
  if (options.readOnly) {
    guard.push((c) => Promise.resolve(fail(c, 403, "the HTTP endpoint is read-only")));
  }
  return guard;
}

export function createApp(view: SwitchView, options: AppOptions = {}): Hono {
  const app = new Hono();
  app.notFound((c) => fail(c, 404, `no route for ${c.req.method} ${c.req.path}`));
  app.onError((err, c) =>
    err instanceof HTTPException ? err.getResponse() : fail(c, 500, err.message)
  );

  app.use("*", hostCheck(options.hosts ?? []));
  // Reads stay open (they are what the endpoint is for); changes and captures are guarded.
  const guard = privileged(options);
  for (const check of guard) app.on(WRITE_METHODS, "*", check);

  app.get("/", (c) => {
    c.header("Content-Security-Policy", PAGE_CSP);
    c.header("Cache-Control", "no-store");
    return c.html(PAGE);
  });
  app.get("/health", (c) => c.json({ status: "ok" }));
  app.get("/info", async (c) => c.json(await view.info()));
  app.get("/stats", async (c) => c.json(await view.stats()));
  app.get("/metrics", async (c) => {
    const [info, stats, ports] = await Promise.all([view.info(), view.stats(), view.ports()]);
    c.header("Content-Type", METRICS_CONTENT_TYPE);
    c.header("Cache-Control", "no-store");
    return c.body(renderMetrics(info, stats, ports));
  });
  app.get("/ports", async (c) => c.json({ ports: await view.ports() }));
  app.get("/ports/:name", async (c) => {
    const name = c.req.param("name");
    const port = await view.port(name);
    return port ? c.json(port) : fail(c, 404, `no port named ${JSON.stringify(name)}`);
  });
  app.route("/", captureRoutes(view, guard));
  app.route("/", fdbRoutes(view));
  app.route("/", controlRoutes(view));
  app.route("/", flowRoutes(view));
  return app;
}
