// `deno task ports`: the switch and its ports with counters and rates, like `ovs-ofctl show`.
import { parseArgs } from "node:util";
import {
  portAttachment,
  type PortStatus,
  type SwitchInfo,
  type SwitchStats,
} from "../switch/view.ts";
import { count, duration, endpoint, getJson, rate, table } from "./common.ts";

export const PORTS_USAGE = `Usage: deno task ports [--url URL | --topology FILE]

Prints the switch, then one line per port: type, state, MTU, queues, packets and bytes each
way with their rates over the last second, drops, and the socket or interface; then the drops
by reason.
  --url URL        the switch's HTTP endpoint (default http://127.0.0.1:8080)
  --topology FILE  ask the endpoint that topology file listens on`;

const isDrop = (counter: string) => /^drop(_|[A-Z])/.test(counter);

export function formatPorts(info: SwitchInfo, ports: PortStatus[], stats: SwitchStats): string {
  const rates = new Map(stats.ports.map((p) => [p.name, p]));
  const threads = `${info.threads} datapath thread${info.threads === 1 ? "" : "s"}`;
  const head = `${info.name}: vswitch ${info.version}, up ${
    duration(stats.uptimeSeconds)
  }, ${threads}, MAC table ${stats.fdb.entries}/${stats.fdb.capacity}`;
  const rows = ports.map((p) => {
    const c = p.counters;
    const r = rates.get(p.name);
    const drops = Object.entries(c).filter(([k]) => isDrop(k)).reduce((n, [, v]) => n + v, 0);
    const where = portAttachment(p);
    return [
      p.name,
      p.type,
      p.state,
      String(p.mtu),
      String(p.queues.length),
      count(c.rx_packets ?? 0),
      count(c.rx_bytes ?? 0),
      rate(r?.rxPerSecond ?? 0),
      count(c.tx_packets ?? 0),
      count(c.tx_bytes ?? 0),
      rate(r?.txPerSecond ?? 0),
      count(drops),
      where,
    ];
  });
  const right = true;
  const lines = [
    head,
    table([
      { title: "PORT" },
      { title: "TYPE" },
      { title: "STATE" },
      { title: "MTU", right },
      { title: "QUEUES", right },
      { title: "RX PKTS", right },
      { title: "RX BYTES", right },
      { title: "RX/S", right },
      { title: "TX PKTS", right },
      { title: "TX BYTES", right },
      { title: "TX/S", right },
      { title: "DROPS", right },
      { title: "SOCKET / INTERFACE" },
    ], rows),
  ];
  for (const p of ports) {
    const drops = Object.entries(p.counters).filter(([k, v]) => isDrop(k) && v > 0);
    if (drops.length) {
      lines.push(`${p.name} drops: ${drops.map(([k, v]) => `${k}=${count(v)}`).join(" ")}`);
    }
  }
  return lines.join("\n");
}

export async function portsCommand(args: string[]): Promise<string> {
  const { values } = parseArgs({
    args,
    options: {
      url: { type: "string" },
      topology: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return PORTS_USAGE;
  const at = endpoint(values);
  const [info, { ports }, stats] = await Promise.all([
    getJson<SwitchInfo>(at, "/info"),
    getJson<{ ports: PortStatus[] }>(at, "/ports"),
    getJson<SwitchStats>(at, "/stats"),
  ]);
  return formatPorts(info, ports, stats);
}
