// The HTTP endpoint: a thin reader of a SwitchView. It owns no switch state, so it can be tested
// against an in-memory view and served from the main thread without touching the datapath.
import { type Context, Hono } from "hono";
import { bearerAuth } from "hono/bearer-auth";
import { HTTPException } from "hono/http-exception";
import { validator } from "hono/validator";
import { normalizeMac } from "../switch/topology.ts";

type MaybePromise<T> = T | Promise<T>;

export interface SwitchInfo {
  name: string;
  version: string;
  uptimeSeconds: number;
  /** Datapath worker count. */
  threads: number;
  /** Per datapath worker: poll rounds that moved frames / none, sleeps, frames moved. */
  workers?: {
    worker: number;
    busyRounds: number;
    idleRounds: number;
    sleeps: number;
    frames: number;
  }[];
}

/** vhost-user: "listening" (server, no peer) / "connecting" (client) / "connected";
 * af-packet: "up" / "down" (the interface's link state). */
export type PortState = "listening" | "connecting" | "connected" | "up" | "down";

export interface QueueStatus {
  /** Queue pair index. */
  index: number;
  /** Worker polling this queue pair's rx ring. */
  worker: number;
}

interface PortStatusCommon {
  name: string;
  state: PortState;
  mtu: number;
  /** Negotiated virtio feature names (vhost-user); empty for af-packet. */
  features: string[];
  queues: QueueStatus[];
  /** e.g. { rx_packets: 10, tx_dropped: 0 }: plain numbers so it serialises as JSON. */
  counters: Record<string, number>;
}
export type PortStatus =
  | PortStatusCommon & { type: "vhost-user"; socket: string; mode: "server" | "client" }
  | PortStatusCommon & { type: "af-packet"; interface: string };

export interface FdbEntry {
  /** Lower-case, colon separated. */
  mac: string;
  vlan: number;
  port: string;
  /** Seconds since the MAC was last seen; 0 for static entries. */
  ageSeconds: number;
  static: boolean;
}

export interface SwitchStats {
  uptimeSeconds: number;
  /** Per datapath worker. busyRounds/idleRounds are poll rounds that moved frames / none. */
  workers: {
    worker: number;
    busyRounds: number;
    idleRounds: number;
    sleeps: number;
    frames: number;
    framesPerSecond: number;
    busyFraction: number;
  }[];
  /** Per port: counters (as in /ports) and frames per second over the last interval (1 s). */
  ports: { name: string; counters: Record<string, number>; rxPerSecond: number; txPerSecond: number }[];
  fdb: {
    entries: number;
    capacity: number;
    learned: number;
    moved: number;
    refusedFull: number;
    aged: number;
    flushed: number;
  };
}

/** Every given field must match; an empty filter matches everything. */
export interface FdbFilter {
  port?: string;
  vlan?: number;
  /** Normalised like FdbEntry.mac. */
  mac?: string;
}

/** What the HTTP layer reads from (and the one thing it asks of) the running switch. */
export interface SwitchView {
  info(): MaybePromise<SwitchInfo>;
  ports(): MaybePromise<PortStatus[]>;
  port(name: string): MaybePromise<PortStatus | undefined>;
  fdb(): MaybePromise<FdbEntry[]>;
  /** Removes the learned (non-static) entries matching the filter; returns how many. */
  flushFdb(filter: FdbFilter): MaybePromise<number>;
}

/** The `http` section of the topology, less the listen address. */
export interface AppOptions {
  /** When set, requests that change state need `Authorization: Bearer <token>`. */
  token?: string | null;
  /** Refuse every request that changes state (403). */
  readOnly?: boolean;
}

export function matchesFdbFilter(entry: FdbEntry, filter: FdbFilter): boolean {
  return (filter.port === undefined || entry.port === filter.port) &&
    (filter.vlan === undefined || entry.vlan === filter.vlan) &&
    (filter.mac === undefined || entry.mac === filter.mac);
}

const WRITE_METHODS = ["POST", "PUT", "PATCH", "DELETE"];

const fail = (c: Context, status: 400 | 401 | 403 | 404 | 500, error: string) =>
  c.json({ error }, status);

export function createApp(view: SwitchView, options: AppOptions = {}): Hono {
  const app = new Hono();
  app.notFound((c) => fail(c, 404, `no route for ${c.req.method} ${c.req.path}`));
  app.onError((err, c) =>
    err instanceof HTTPException ? err.getResponse() : fail(c, 500, err.message)
  );

  // Reads stay open (they are what the endpoint is for); only changes are guarded.
  if (options.token) {
    const unauthorized = (error: string) => ({ message: (c: Context) => fail(c, 401, error) });
    app.on(
      WRITE_METHODS,
      "*",
      bearerAuth({
        token: options.token,
        noAuthenticationHeader: unauthorized("this request needs Authorization: Bearer <token>"),
        invalidAuthenticationHeader: unauthorized("expected Authorization: Bearer <token>"),
        invalidToken: unauthorized("invalid token"),
      }),
    );
  }
  if (options.readOnly) {
    app.on(WRITE_METHODS, "*", (c) => fail(c, 403, "the HTTP endpoint is read-only"));
  }

  app.get("/health", (c) => c.json({ status: "ok" }));
  app.get("/info", async (c) => c.json(await view.info()));
  app.get("/ports", async (c) => c.json({ ports: await view.ports() }));
  app.get("/ports/:name", async (c) => {
    const name = c.req.param("name");
    const port = await view.port(name);
    return port ? c.json(port) : fail(c, 404, `no port named ${JSON.stringify(name)}`);
  });

  const fdbFilter = validator("query", async (query, c) => {
    const filter: FdbFilter = {};
    for (const [key, value] of Object.entries(query)) {
      if (typeof value !== "string") return fail(c, 400, `give ${key} once`);
      if (key === "port") {
        if (!(await view.port(value))) {
          return fail(c, 400, `no port named ${JSON.stringify(value)}`);
        }
        filter.port = value;
      } else if (key === "vlan") {
        if (!/^\d{1,4}$/.test(value) || Number(value) > 4094) {
          return fail(
            c,
            400,
            `vlan must be an integer from 0 to 4094, got ${JSON.stringify(value)}`,
          );
        }
        filter.vlan = Number(value);
      } else if (key === "mac") {
        const mac = normalizeMac(value);
        if (!mac) {
          return fail(c, 400, `mac must look like 52:54:00:00:00:01, got ${JSON.stringify(value)}`);
        }
        filter.mac = mac;
      } else {
        return fail(c, 400, `unknown filter ${JSON.stringify(key)}: use port, vlan or mac`);
      }
    }
    return filter;
  });
  app.get("/fdb", fdbFilter, async (c) => {
    const filter = c.req.valid("query");
    const entries = (await view.fdb()).filter((entry) => matchesFdbFilter(entry, filter));
    return c.json({ entries });
  });
  app.delete(
    "/fdb",
    fdbFilter,
    async (c) => c.json({ flushed: await view.flushFdb(c.req.valid("query")) }),
  );

  return app;
}
