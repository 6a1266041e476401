// The MAC table: GET/DELETE /fdb with ?port= &vlan= &mac= filters, and DELETE /ports/:name/fdb.
import { type Context, Hono } from "hono";
import { validator } from "hono/validator";
import { normalizeMac } from "../switch/topology.ts";
import { requester } from "./control.ts";
import { fail } from "./fail.ts";
import { type FdbFilter, matchesFdbFilter, type SwitchView } from "../switch/view.ts";

type Query = Record<string, string | string[]>;

/** The filter a query names, or the 400 message that says what is wrong with it. */
export async function parseFilter(
  view: SwitchView,
  query: Query,
  keys: readonly string[],
): Promise<FdbFilter | string> {
  const filter: FdbFilter = {};
  for (const [key, value] of Object.entries(query)) {
    if (!keys.includes(key)) {
      return `unknown filter ${JSON.stringify(key)}: use ${
        keys.join(", ").replace(/, (\w+)$/, " or $1")
      }`;
    }
    if (typeof value !== "string") return `give ${key} once`;
    if (key === "port") {
      if (!(await view.port(value))) return `no port named ${JSON.stringify(value)}`;
      filter.port = value;
    } else if (key === "vlan") {
      if (!/^\d{1,4}$/.test(value) || Number(value) > 4094) {
        return `vlan must be an integer from 0 to 4094, got ${JSON.stringify(value)}`;
      }
      filter.vlan = Number(value);
    } else {
      const mac = normalizeMac(value);
      if (!mac) return `mac must look like 52:54:00:00:00:01, got ${JSON.stringify(value)}`;
      filter.mac = mac;
    }
  }
  return filter;
}

const filterQuery = (view: SwitchView, keys: readonly string[]) =>
  validator("query", async (query: Query, c: Context) => {
    const filter = await parseFilter(view, query, keys);
    return typeof filter === "string" ? fail(c, 400, filter) : filter;
  });

export function fdbRoutes(view: SwitchView): Hono {
  const app = new Hono();
  const anyFilter = filterQuery(view, ["port", "vlan", "mac"]);

  app.get("/fdb", anyFilter, async (c) => {
    const filter = c.req.valid("query");
    return c.json({ entries: (await view.fdb()).filter((e) => matchesFdbFilter(e, filter)) });
  });

  // Learned entries matching the filter; a filter naming a MAC removes its static entries too.
  app.delete("/fdb", anyFilter, async (c) => {
    const filter = c.req.valid("query");
    if (view.control) return c.json(await view.control.deleteFdb(filter, requester(c)));
    return c.json({ flushed: await view.flushFdb(filter) });
  });

  // One port's learned entries (a VLAN or MAC filter may narrow it further).
  app.delete("/ports/:name/fdb", filterQuery(view, ["vlan", "mac"]), async (c) => {
    const port = c.req.param("name");
    if (!(await view.port(port))) return fail(c, 404, `no port named ${JSON.stringify(port)}`);
    return c.json({ flushed: await view.flushFdb({ ...c.req.valid("query"), port }) });
  });

  return app;
}
