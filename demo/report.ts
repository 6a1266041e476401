// What the demo prints about the running switch, read over HTTP like any client would, and laid
// out by the same code as `deno task fdb` and `deno task ports`.
import { formatFdb } from "../cli/fdb.ts";
import { formatPorts } from "../cli/ports.ts";
import type { FdbEntry, PortStatus, SwitchInfo, SwitchStats } from "../switch/view.ts";
import type { Lab } from "./lab.ts";

export async function fdbTable(lab: Lab): Promise<{ entries: FdbEntry[]; text: string }> {
  const { entries } = await lab.get<{ entries: FdbEntry[] }>("/fdb");
  return { entries, text: formatFdb(entries) };
}

export async function portsSummary(lab: Lab): Promise<string> {
  const [info, { ports }, stats] = await Promise.all([
    lab.get<SwitchInfo>("/info"),
    lab.get<{ ports: PortStatus[] }>("/ports"),
    lab.get<SwitchStats>("/stats"),
  ]);
  return formatPorts(info, ports, stats);
}

/** Indents a block under a progress line. */
export const indent = (text: string, by = "      ") =>
  text.split("\n").map((l) => by + l).join("\n");
