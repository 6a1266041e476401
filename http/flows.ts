// GET /flows: the flows the datapath is using (switch/flows.ts), like ovs-appctl
// dpctl/dump-flows; filters ?port= (in or out), ?vlan=, ?mac= (source or destination) as /fdb
// has them, and ?maxIdle= seconds (default 10; flows idle longer are left out).
import { Hono } from "hono";
import { matchesFlowFilter, type SwitchView } from "../switch/view.ts";
import { fail } from "./fail.ts";
import { parseFilter } from "./fdb.ts";

export function flowRoutes(view: SwitchView): Hono {
  const app = new Hono();
  app.get("/flows", async (c) => {
    if (!view.flows) return fail(c, 404, "flows are not counted (poll.flowStats is false)");
    const { maxIdle, ...query } = c.req.queries() as Record<string, string[]>;
    const single = Object.fromEntries(
      Object.entries(query).map(([k, v]) => [k, v.length === 1 ? v[0] : v]),
    );
    const filter = await parseFilter(view, single, ["port", "vlan", "mac"]);
    if (typeof filter === "string") return fail(c, 400, filter);
    let idle = 10;
    if (maxIdle !== undefined) {
      if (maxIdle.length !== 1 || !/^\d{1,9}$/.test(maxIdle[0])) {
        return fail(c, 400, `maxIdle must be a number of seconds, got ${JSON.stringify(maxIdle)}`);
      }
      idle = Number(maxIdle[0]);
    }
    const flows = (await view.flows()).filter((f) =>
      matchesFlowFilter(f, { ...filter, maxIdle: idle })
    );
    return c.json({ flows });
  });
  return app;
}
