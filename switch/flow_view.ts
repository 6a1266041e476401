// GET /flows: the workers' flow tables (flows.ts) read on the control thread and shown the way
// ovs-appctl dpctl/dump-flows shows them: the match (in port, VLAN, MACs), the actions with the
// tag operation per output port, and packets, bytes and when last used. A flow counted by two
// workers (a port whose queues two of them poll) is shown once, summed.
import {
  type Bridge,
  Decision,
  DROP_DEST_DOWN,
  DROP_HAIRPIN,
  DROP_MALFORMED,
  DROP_MULTICAST_SRC,
  DROP_VLAN,
  EGRESS_PUSH,
  EGRESS_SET,
  EGRESS_STRIP,
} from "./bridge.ts";
import { readFlows } from "./flows.ts";
import type { PortTable } from "./port_table.ts";
import type { FlowEntry } from "./view.ts";

/** Drop reasons under the names of their drop counters (drop_vlan ...). */
const DROP_NAMES: Record<number, string> = {
  [DROP_VLAN]: "vlan",
  [DROP_MULTICAST_SRC]: "multicast_src",
  [DROP_HAIRPIN]: "hairpin",
  [DROP_DEST_DOWN]: "dest_down",
  [DROP_MALFORMED]: "malformed",
};

const mac = (b: Uint8Array, at: number) =>
  Array.from(b.subarray(at, at + 6), (x) => x.toString(16).padStart(2, "0")).join(":");

export function flowEntries(
  tables: SharedArrayBuffer[],
  ports: PortTable,
  bridge: Bridge,
  now: number,
): FlowEntry[] {
  const byKey = new Map<string, FlowEntry>();
  const d = new Decision(1); // only vlan and ingressTci are read, by egressOp
  for (const table of tables) {
    for (const f of readFlows(table)) {
      const name = (p: number) => ports.get(p)?.name ?? `#${p}`;
      d.vlan = f.vlan;
      d.ingressTci = f.ingressTci;
      const out = f.out.map((p) => {
        const op = bridge.egressOp(d, p);
        const tci = (f.ingressTci < 0 ? 0 : f.ingressTci & 0xf000) | f.vlan;
        const tag = op === EGRESS_PUSH
          ? `push ${tci & 0xfff}`
          : op === EGRESS_STRIP
          ? "pop"
          : op === EGRESS_SET
          ? `set ${tci & 0xfff}`
          : "";
        return { port: name(p), tag };
      });
      const action = f.out.length === 0 ? "drop" : f.flooded ? "flood" : "output";
      const reason = f.out.length === 0
        ? (DROP_NAMES[f.dropReason] ?? (f.dropReason < 0 ? "no_port" : String(f.dropReason)))
        : undefined;
      const outText = out.map((o) => {
        const tag = o.tag.startsWith("push")
          ? `push_vlan(${o.tag.slice(5)}),`
          : o.tag === "pop"
          ? "pop_vlan,"
          : o.tag.startsWith("set")
          ? `set_vlan(${o.tag.slice(4)}),`
          : "";
        return `${tag}${o.port}`;
      });
      const actions = action === "drop"
        ? `drop(${reason})`
        : action === "flood"
        ? `flood:${outText.join(",")}`
        : `output:${outText[0]}`;
      const entry: FlowEntry = {
        inPort: name(f.inPort),
        vlan: f.vlan,
        src: mac(f.header, 6),
        dst: mac(f.header, 0),
        actions,
        action,
        out,
        ...(reason === undefined ? {} : { dropReason: reason }),
        packets: f.packets,
        bytes: f.bytes,
        lastUsedSeconds: Math.max(0, now - f.lastUsed),
      };
      const key = `${entry.inPort}|${entry.vlan}|${entry.src}|${entry.dst}|${actions}`;
      const seen = byKey.get(key);
      if (seen) {
        seen.packets += entry.packets;
        seen.bytes += entry.bytes;
        seen.lastUsedSeconds = Math.min(seen.lastUsedSeconds, entry.lastUsedSeconds);
      } else byKey.set(key, entry);
    }
  }
  return [...byKey.values()].sort((a, b) =>
    a.inPort.localeCompare(b.inPort) || a.vlan - b.vlan || a.src.localeCompare(b.src) ||
    a.dst.localeCompare(b.dst)
  );
}
