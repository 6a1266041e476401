// Real QEMU guests on ports added while the switch runs: they come up and ping; a VLAN change
// isolates them at once and undoing it joins them again; a port deleted mid-ping takes its guest's
// link down and its MACs with it. Guests boot in parallel.
import assert from "node:assert/strict";
import { createApp } from "../http/app.ts";
import { bootGuest, type Guest, guestToolsAvailable } from "../peers/qemu.ts";
import type { FlowEntry } from "../switch/view.ts";
import { startSwitch, waitFor } from "./helpers/switch.ts";

const missing = guestToolsAvailable();
if (missing) console.warn(`SKIPPING live QEMU tests: ${missing}`);

const MAC3 = "52:54:00:00:00:03";
const MAC4 = "52:54:00:00:00:04";

Deno.test({
  name: "QEMU guests on ports added live ping; a VLAN change isolates them; delete takes the link",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using ts = await startSwitch({
      name: "live-qemu",
      http: { listen: "127.0.0.1:0" },
      ports: [{ name: "vm1", type: "vhost-user", socket: "$DIR/vm1.sock" }],
    });
    const app = createApp(ts.sw);
    const req = async (method: string, path: string, body?: unknown) => {
      const res = await app.request(path, {
        method,
        body: body === undefined ? undefined : JSON.stringify(body),
        headers: { "Content-Type": "application/json" },
      });
      return { status: res.status, json: await res.json() };
    };
    for (const name of ["vm3", "vm4"]) {
      const added = await req("POST", "/ports", {
        name,
        type: "vhost-user",
        socket: `${ts.dir}/${name}.sock`,
        vlan: { mode: "access", tag: 10 },
      });
      assert.equal(added.status, 200, JSON.stringify(added.json));
    }
    const guests: Guest[] = [];
    try {
      guests.push(
        ...await Promise.all([
          bootGuest({
            name: "g3",
            nics: [{ socket: `${ts.dir}/vm3.sock`, mac: MAC3 }],
            ip: "10.0.0.3/24",
          }),
          bootGuest({
            name: "g4",
            nics: [{ socket: `${ts.dir}/vm4.sock`, mac: MAC4 }],
            ip: "10.0.0.4/24",
          }),
        ]),
      );
      const [g3, g4] = guests;
      const ping = (count: number) => g3.run(`ping -c ${count} -W 2 10.0.0.4`, 60_000);
      const first = await ping(3);
      assert.match(first.output, /3 packets received/, `${first.output}\n${ts.logs.join("\n")}`);
      const { flows } = (await req("GET", "/flows")).json as { flows: FlowEntry[] };
      const f34 = flows.find((f) => f.inPort === "vm3" && f.dst === MAC4);
      assert.ok(f34 && f34.actions === "output:vm4" && f34.packets >= 3, JSON.stringify(flows));

      // vm4 into VLAN 20: isolated at once; back into 10: reachable again.
      await req("PATCH", "/ports/vm4", { vlan: { mode: "access", tag: 20 } });
      const cut = await ping(2);
      assert.match(cut.output, /0 packets received/, cut.output);
      await req("PATCH", "/ports/vm4", { vlan: { mode: "access", tag: 10 } });
      const back = await ping(2);
      assert.match(back.output, /2 packets received/, back.output);

      // Delete vm4 while g3 pings it: g4's link goes down, its MAC leaves the table.
      const during = g3.run("ping -c 6 -i 0.5 -W 1 10.0.0.4", 60_000);
      await new Promise((r) => setTimeout(r, 1000));
      const deleted = await req("DELETE", "/ports/vm4");
      assert.deepEqual(deleted.json.changed, ["port vm4 deleted"]);
      const late = await during;
      assert.doesNotMatch(late.output, /6 packets received/, late.output);
      await waitFor(
        "g4's link down",
        async () =>
          (await g4.run("cat /sys/class/net/eth0/carrier", 10_000)).output.trim().endsWith("0"),
      );
      assert.deepEqual((await req("GET", `/fdb?mac=${MAC4}`)).json.entries, []);
      assert.equal((await req("GET", "/ports/vm4")).status, 404);
      // vm3 and vm1 go on.
      assert.equal(ts.sw.port("vm3")!.state, "connected");
    } finally {
      await Promise.all(guests.map((g) => g.kill()));
    }
  },
});
