// Changing the running switch: ports added, deleted and changed, static MAC entries, the running
// configuration and its reload. Bodies are in the topology file's format and checked by the
// topology loader: a bad one is 400 with every problem and changes nothing. The app's guard
// (token, read-only) covers every route here that changes something; each change is logged by
// the switch with the requester's address.
import { type Context, Hono } from "hono";
import { ChangeError } from "../switch/live.ts";
import { TopologyError } from "../switch/topology.ts";
import type { ChangeResult, SwitchView } from "../switch/view.ts";
import { fail } from "./fail.ts";

/** The requester, for the log: its address and port, or "local" for in-process requests. */
export function requester(c: Context): string {
  const addr = (c.env as { remoteAddr?: Deno.Addr } | undefined)?.remoteAddr;
  if (addr && "hostname" in addr) {
    const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
    return `HTTP ${c.req.method} ${c.req.path} from ${host}:${addr.port}`;
  }
  return `HTTP ${c.req.method} ${c.req.path}`;
}

/** A checked change's failure as the answer: 400 with every problem, or what was applied. */
function refused(c: Context, err: unknown): Response {
  if (err instanceof TopologyError) {
    const n = err.problems.length;
    return c.json({
      error: n === 1 ? err.problems[0] : `${n} problems: nothing changed`,
      problems: err.problems,
    }, 400);
  }
  if (err instanceof ChangeError) {
    return c.json({ error: err.message, applied: err.applied }, 400);
  }
  throw err;
}

async function body(c: Context): Promise<{ ok: true; value: unknown } | { ok: false }> {
  try {
    return { ok: true, value: await c.req.json() };
  } catch {
    return { ok: false };
  }
}

export function controlRoutes(view: SwitchView): Hono {
  const app = new Hono();
  const control = view.control;
  if (!control) return app;

  const change = async (c: Context, run: () => Promise<ChangeResult | undefined>, what: string) => {
    try {
      const result = await run();
      return result ? c.json(result) : fail(c, 404, what);
    } catch (err) {
      return refused(c, err);
    }
  };
  const withBody = async (
    c: Context,
    run: (value: unknown) => Promise<ChangeResult | undefined>,
    what: string,
  ) => {
    const b = await body(c);
    if (!b.ok) return fail(c, 400, "the request body must be JSON");
    return change(c, () => run(b.value), what);
  };
  const noPort = (name: string) => `no port named ${JSON.stringify(name)}`;

  // The running configuration, savable as a topology file. The token is shown only to a
  // request that carries it.
  app.get("/topology", (c) => {
    const file = control.topology();
    const http = file.http as { token?: string };
    if (http.token !== undefined && c.req.header("Authorization") !== `Bearer ${http.token}`) {
      file.http = { ...http, token: "<hidden: ask with the token to see it>" };
    }
    return c.json(file);
  });

  app.post("/ports", (c) => withBody(c, (b) => control.addPort(b, requester(c)), ""));
  app.delete("/ports/:name", (c) => {
    const name = c.req.param("name");
    return change(c, () => control.deletePort(name, requester(c)), noPort(name));
  });
  app.patch("/ports/:name", (c) => {
    const name = c.req.param("name");
    return withBody(c, (b) => control.patchPort(name, b, requester(c)), noPort(name));
  });
  app.put("/fdb", (c) => withBody(c, (b) => control.putFdb(b, requester(c)), ""));
  app.post("/reload", (c) => change(c, () => control.reload(requester(c)), ""));
  return app;
}
