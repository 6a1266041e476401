// GET /metrics: the switch in the Prometheus text exposition format, version 0.0.4.
import type { PortStatus, SwitchInfo, SwitchStats } from "../switch/view.ts";

export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Record<string, string>;
type MetricType = "counter" | "gauge";

interface Family {
  type: MetricType;
  help: string;
  /** By rendered label set; a series given twice is summed. */
  samples: Map<string, number>;
}

const escapeLabel = (v: string) =>
  v.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
const escapeHelp = (v: string) => v.replaceAll("\\", "\\\\").replaceAll("\n", "\\n");

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

/** Collects samples by family and renders each family's HELP, TYPE and samples together. */
export class Exposition {
  readonly #families = new Map<string, Family>();

  add(name: string, type: MetricType, help: string, labels: Labels, value: number): this {
    let family = this.#families.get(name);
    if (!family) this.#families.set(name, family = { type, help, samples: new Map() });
    const key = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",");
    family.samples.set(key, (family.samples.get(key) ?? 0) + value);
    return this;
  }

  text(): string {
    const lines: string[] = [];
    for (const [name, f] of this.#families) {
      lines.push(`# HELP ${name} ${escapeHelp(f.help)}`, `# TYPE ${name} ${f.type}`);
      for (const [labels, value] of f.samples) {
        lines.push(`${name}${labels ? `{${labels}}` : ""} ${formatValue(value)}`);
      }
    }
    return lines.join("\n") + "\n";
  }
}

/** Port counters with a name and help of their own; drop counters become a `reason` label. */
const PORT_COUNTERS: Record<string, [string, string]> = {
  rx_packets: ["rx_packets", "Frames received from the port's peer."],
  rx_bytes: ["rx_bytes", "Bytes received from the port's peer."],
  tx_packets: ["tx_packets", "Frames transmitted to the port's peer."],
  tx_bytes: ["tx_bytes", "Bytes transmitted to the port's peer."],
  unicast: ["unicast", "Frames received on the port and forwarded to one known port."],
  flooded: ["flooded", "Frames received on the port and flooded (broadcast, multicast, unknown)."],
  learn_refused: ["learn_refused", "Source MACs received on the port not learned: FDB full."],
  fdb_evicted: ["fdb_evicted", "MACs learned on the port evicted from a full table."],
  fdb_limit_refused: ["fdb_limit_refused", "New source MACs refused: port at fdb.maxPerPort."],
  notifications: ["notifications", "Guest notifications (call eventfd writes) and kicks."],
  rx_csum_partial: ["rx_csum_partial", "Frames received with their L4 checksum left to offload."],
  rx_gso: ["rx_gso", "GSO super-frames received (guest TSO, kernel GSO/GRO)."],
  tx_gso: ["tx_gso", "GSO super-frames handed to the port's peer to segment."],
  csum_filled: ["csum_filled", "Frames whose L4 checksum the switch filled for this port."],
  gso_segmented: ["gso_segmented", "GSO super-frames the switch segmented for this port."],
  tx_udp_gso: ["tx_udp_gso", "VXLAN: UDP_SEGMENT sends, each a super-frame's datagrams."],
  rx_coalesced: ["rx_coalesced", "VXLAN: TCP segments received and merged into the one before."],
  tx_tunnel_gso: [
    "tx_tunnel_gso",
    "VXLAN: TCP super-frames sent whole through the tunnel GSO tap.",
  ],
  connections: ["connections", "vhost-user connections the port accepted or made."],
  protocol_errors: ["protocol_errors", "Malformed vhost-user messages on the current connection."],
  mac_moved: [
    "mac_moved",
    "Learned MACs that moved to the port from another (loop guard watches it).",
  ],
  mirrored: ["mirrored", "Copies of the port's frames sent to a mirror output."],
};

const snake = (name: string) =>
  name.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toLowerCase().replace(/[^a-z0-9_]/g, "_");

/** `drop_too_big` / `dropVlan` → the drop reason (`too_big`, `vlan`); null for other counters. */
export function dropReason(counter: string): string | null {
  const m = /^drop(?:_|(?=[A-Z]))(.+)$/.exec(counter);
  return m ? snake(m[1]) : null;
}

const UP_STATES = new Set(["connected", "up"]);

export function renderMetrics(info: SwitchInfo, stats: SwitchStats, ports: PortStatus[]): string {
  const x = new Exposition();
  x.add("vswitch_info", "gauge", "The switch's name and version.", {
    name: info.name,
    version: info.version,
  }, 1);
  x.add(
    "vswitch_uptime_seconds",
    "gauge",
    "Seconds since the switch started.",
    {},
    stats.uptimeSeconds,
  );

  for (const p of ports) {
    x.add("vswitch_port_info", "gauge", "A port and its type.", { port: p.name, type: p.type }, 1);
  }
  for (const p of ports) {
    const up = UP_STATES.has(p.state) ? 1 : 0;
    x.add(
      "vswitch_port_up",
      "gauge",
      "1 while the port can pass frames (peer connected, link up).",
      {
        port: p.name,
      },
      up,
    );
  }
  for (const p of ports) {
    x.add("vswitch_port_mtu_bytes", "gauge", "The port's MTU.", { port: p.name }, p.mtu);
  }
  for (const p of ports) {
    if (!p.safety?.loopGuard) continue;
    x.add(
      "vswitch_port_loop_blocked",
      "gauge",
      "1 while loop guard keeps the port out of the bridge.",
      { port: p.name },
      p.safety.loopGuard.blocked ? 1 : 0,
    );
  }
  // Known counters first, in a fixed order, then drops, then anything new.
  const names = [...new Set(ports.flatMap((p) => Object.keys(p.counters)))];
  const order = (n: string) => {
    const known = Object.keys(PORT_COUNTERS).indexOf(n);
    return known >= 0 ? known : dropReason(n) ? 100 : 200;
  };
  names.sort((a, b) => order(a) - order(b));
  for (const counter of names) {
    for (const p of ports) {
      const value = p.counters[counter];
      if (value === undefined) continue;
      if (counter === "fdb_learned") {
        x.add("vswitch_port_fdb_entries", "gauge", "Learned MACs on the port now.", {
          port: p.name,
        }, value);
        continue;
      }
      const reason = dropReason(counter);
      if (reason) {
        x.add("vswitch_port_drops_total", "counter", "Frames dropped on the port, by reason.", {
          port: p.name,
          reason,
        }, value);
        continue;
      }
      const [metric, help] = PORT_COUNTERS[counter] ?? [snake(counter), `Port counter ${counter}.`];
      x.add(`vswitch_port_${metric}_total`, "counter", help, { port: p.name }, value);
    }
  }

  const workerFamilies: [
    string,
    MetricType,
    string,
    (w: SwitchStats["workers"][number]) => number,
  ][] = [
    ["frames_total", "counter", "Frames a datapath worker moved.", (w) => w.frames],
    ["busy_rounds_total", "counter", "Poll rounds that moved frames.", (w) => w.busyRounds],
    ["idle_rounds_total", "counter", "Poll rounds that found nothing to do.", (w) => w.idleRounds],
    ["sleeps_total", "counter", "Times a worker slept waiting for kicks.", (w) => w.sleeps],
    [
      "failures_total",
      "counter",
      "Times a worker's loop failed and went on without the port at fault.",
      (w) => w.failures,
    ],
    [
      "busy_ratio",
      "gauge",
      "Share of the last second a worker spent in poll rounds that moved frames.",
      (w) => w.busyFraction,
    ],
  ];
  for (const [suffix, type, help, value] of workerFamilies) {
    for (const w of stats.workers) {
      x.add(`vswitch_worker_${suffix}`, type, help, { worker: String(w.worker) }, value(w));
    }
  }

  const f = stats.fdb;
  x.add("vswitch_fdb_entries", "gauge", "MAC table entries (learned and static).", {}, f.entries);
  x.add("vswitch_fdb_capacity", "gauge", "MAC table capacity.", {}, f.capacity);
  x.add("vswitch_fdb_learned_total", "counter", "MACs learned.", {}, f.learned);
  x.add(
    "vswitch_fdb_moved_total",
    "counter",
    "Learned MACs that moved to another port.",
    {},
    f.moved,
  );
  x.add(
    "vswitch_fdb_refused_full_total",
    "counter",
    "MACs not learned: table full.",
    {},
    f.refusedFull,
  );
  x.add(
    "vswitch_fdb_evicted_total",
    "counter",
    "Learned entries evicted from a full table (oldest of the port holding the most).",
    {},
    f.evicted ?? 0,
  );
  x.add(
    "vswitch_fdb_refused_port_limit_total",
    "counter",
    "MACs not learned: their port held fdb.maxPerPort learned entries.",
    {},
    f.refusedPortLimit ?? 0,
  );
  x.add("vswitch_fdb_aged_total", "counter", "Entries removed by aging.", {}, f.aged);
  x.add("vswitch_fdb_flushed_total", "counter", "Entries removed by flushes.", {}, f.flushed);
  return x.text();
}
