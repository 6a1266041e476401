// `deno task fdb`: the MAC table, like `ovs-appctl fdb/show`.
import { parseArgs } from "node:util";
import type { FdbEntry } from "../switch/view.ts";
import { CliError, endpoint, getJson, table } from "./common.ts";

export const FDB_USAGE =
  `Usage: deno task fdb [--url URL | --topology FILE] [--port P] [--vlan V] [--mac M]

Prints the switch's MAC table (learned and static entries), one line per entry.
  --url URL        the switch's HTTP endpoint (default http://127.0.0.1:8080)
  --topology FILE  ask the endpoint that topology file listens on
  --port P, --vlan V, --mac M   only entries on that port / VLAN / with that MAC`;

export function formatFdb(entries: FdbEntry[]): string {
  const sorted = [...entries].sort((a, b) =>
    a.port.localeCompare(b.port) || a.vlan - b.vlan || a.mac.localeCompare(b.mac)
  );
  // The REMOTE column (VTEP behind a VXLAN port) only when some entry has one.
  const remote = entries.some((e) => e.remote !== undefined);
  return table(
    [{ title: "PORT" }, { title: "VLAN", right: true }, { title: "MAC" }, {
      title: "AGE",
      right: true,
    }, ...(remote ? [{ title: "REMOTE" }] : [])],
    sorted.map((e) => [
      e.port,
      String(e.vlan),
      e.mac,
      e.static ? "static" : String(e.ageSeconds),
      ...(remote ? [e.remote ?? ""] : []),
    ]),
  );
}

export async function fdbCommand(args: string[]): Promise<string> {
  const { values } = parseArgs({
    args,
    options: {
      url: { type: "string" },
      topology: { type: "string" },
      port: { type: "string" },
      vlan: { type: "string" },
      mac: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return FDB_USAGE;
  const query = new URLSearchParams();
  for (const key of ["port", "vlan", "mac"] as const) {
    const value = values[key];
    if (value !== undefined) query.set(key, value);
  }
  if (values.vlan !== undefined && !/^\d+$/.test(values.vlan)) {
    throw new CliError(`--vlan: expected a VLAN id from 0 to 4094, got ${values.vlan}`);
  }
  const at = endpoint(values);
  const { entries } = await getJson<{ entries: FdbEntry[] }>(
    at,
    `/fdb${query.size ? `?${query}` : ""}`,
  );
  return formatFdb(entries);
}
