// The live page's script (http/page.ts serves it inline). It is TypeScript so that `deno check`
// and `deno lint` cover it like the rest of the tree; the page gets `liveView.toString()`, the
// JavaScript Deno compiled this function to (types erased), so the page stays one
// self-contained response with no build step. Everything it uses is therefore inside the
// function: the only things from outside are types, which compile to nothing.
//
// Deno's type library has no DOM, and adding lib "dom" to the one program `deno check` builds
// would retype Deno's own globals for every module; so the few DOM facilities the page uses are
// declared here.
import type { FdbEntry, FlowEntry, PortStatus, SwitchInfo, SwitchStats } from "../switch/view.ts";

interface PageElement {
  textContent: string | null;
  className: string;
  value: string;
  readonly style: { display: string };
  readonly dataset: Record<string, string | undefined>;
  append(...nodes: (PageElement | string)[]): void;
  replaceChildren(...nodes: PageElement[]): void;
  addEventListener(type: "input", listener: () => void): void;
}

interface PageDocument {
  title: string;
  getElementById(id: string): PageElement | null;
  createElement(tag: string): PageElement;
}

/** Refreshes the page from /info, /ports, /stats and /fdb every second, forever. */
export function liveView(): void {
  const document = (globalThis as unknown as { document: PageDocument }).document;
  const $ = (id: string): PageElement => {
    const e = document.getElementById(id);
    if (e === null) throw new Error(`the page has no #${id}`);
    return e;
  };
  const num = new Intl.NumberFormat("en-US");
  const fmt = (n: number) => num.format(Math.round(n));
  const rate = (n: number) => n >= 100 ? fmt(n) : n.toFixed(1);
  const bytes = (n: number) => {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    for (; n >= 1024 && i < u.length - 1; i++) n /= 1024;
    return (i ? n.toFixed(1) : String(n)) + " " + u[i];
  };
  const duration = (s: number) => {
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    const parts = d ? [d + "d", h + "h", m + "m"] : h ? [h + "h", m + "m"] : m ? [m + "m"] : [];
    return parts.concat([(s % 60) + "s"]).join(" ");
  };
  type Props = Record<string, unknown> & { dataset?: Record<string, string> };
  /** An element with `props` set and `children` appended as text (never as markup). */
  const el = (
    tag: string,
    { dataset, ...props }: Props,
    ...children: (PageElement | string | number)[]
  ): PageElement => {
    const e = document.createElement(tag);
    Object.assign(e, props);
    Object.assign(e.dataset, dataset);
    e.append(...children.map((c) => typeof c === "object" ? c : String(c)));
    return e;
  };
  const STATE_CLASS: Record<string, string> = {
    connected: "ok",
    up: "ok",
    listening: "warn",
    connecting: "warn",
    down: "bad",
  };
  const isDrop = (k: string) => /^drop(_|[A-Z])/.test(k);

  async function get<T>(path: string): Promise<T> {
    const res = await fetch(path, { cache: "no-store" }).catch(() => {
      throw new Error("cannot reach the switch");
    });
    const body = await res.json();
    if (!res.ok) throw new Error(path + ": " + (body.error || res.status));
    return body as T;
  }

  function fill(tbody: PageElement, rows: PageElement[], columns: number, emptyText: string) {
    tbody.replaceChildren(
      ...(rows.length
        ? rows
        : [el("tr", {}, el("td", { className: "empty", colSpan: columns }, emptyText))]),
    );
  }

  // The port's L2 safety features in a few words; loop guard's block stands out.
  function safetyCell(p: PortStatus) {
    const s = p.safety || {};
    const tags: string[] = [];
    if (s.security) {
      const sec = s.security;
      tags.push(sec.learnOnce ? "mac pinned" + (sec.pinnedMac ? " " + sec.pinnedMac : "") : "");
      if (sec.allowedMacs.length) tags.push(sec.allowedMacs.length + " mac");
      if (sec.ipv4 || sec.ipv6) tags.push("ip check");
    }
    if (s.stormControl) tags.push("storm");
    if (s.policing) tags.push("policed");
    if (s.loopGuard) tags.push(s.loopGuard.blocked ? "LOOP: BLOCKED" : "loop guard");
    if (s.mirroredBy) tags.push("mirrored");
    if (s.mirrorOutputOf) tags.push("mirror output");
    const text = tags.filter(Boolean).join(", ") || "-";
    return el("td", {
      className: s.loopGuard && s.loopGuard.blocked ? "bad" : "",
      title: JSON.stringify(s, null, 1),
    }, text);
  }

  function renderPorts(ports: PortStatus[], stats: SwitchStats) {
    const rates = new Map(stats.ports.map((p) => [p.name, p]));
    const rows = ports.map((p) => {
      const r = rates.get(p.name) || { rxPerSecond: 0, txPerSecond: 0 };
      const c = p.counters;
      const drops = Object.entries(c).filter(([k, v]) => isDrop(k) && v > 0);
      const total = drops.reduce((n, [, v]) => n + v, 0);
      const where = p.type === "vhost-user"
        ? p.socket
        : p.type === "vxlan"
        ? "VNI " + p.vni + " " + p.local + " -> " + p.remotes.slice(0, p.flood).join(",")
        : p.interface;
      return el(
        "tr",
        { dataset: { port: p.name } },
        el("td", {}, el("b", {}, p.name)),
        el("td", {}, p.type === "vhost-user" ? "vhost-user (" + p.mode + ")" : p.type),
        el("td", {}, el("span", { className: "pill " + (STATE_CLASS[p.state] || "") }, p.state)),
        el("td", { className: "mono path", title: where }, where),
        el("td", { className: "n", title: bytes(c.rx_bytes || 0) }, fmt(c.rx_packets || 0)),
        el("td", { className: "n" }, rate(r.rxPerSecond)),
        el("td", { className: "n", title: bytes(c.tx_bytes || 0) }, fmt(c.tx_packets || 0)),
        el("td", { className: "n" }, rate(r.txPerSecond)),
        el("td", {
          className: "n" + (total ? " bad" : ""),
          title: drops.map(([k, v]) => k + ": " + fmt(v)).join("\n") || "no drops",
        }, fmt(total)),
        safetyCell(p),
      );
    });
    fill($("ports"), rows, 10, "no ports");
    const up = ports.filter((p) => STATE_CLASS[p.state] === "ok").length;
    $("c-ports").textContent = up + " / " + ports.length;
    const fps = stats.ports.reduce((n, p) => n + p.rxPerSecond, 0);
    $("c-rate").textContent = rate(fps);
  }

  function renderWorkers(stats: SwitchStats) {
    fill(
      $("workers"),
      stats.workers.map((w) =>
        el(
          "tr",
          {},
          el("td", {}, "worker " + w.worker),
          el("td", { className: "n" }, fmt(w.frames)),
          el("td", { className: "n" }, rate(w.framesPerSecond)),
          el("td", { className: "n" }, (w.busyFraction * 100).toFixed(1) + " %"),
          el("td", { className: "n" }, fmt(w.sleeps)),
        )
      ),
      5,
      "no workers",
    );
  }

  function renderFdb(entries: FdbEntry[], stats: SwitchStats) {
    const q = $("filter").value.trim().toLowerCase();
    const shown = entries
      .filter((e) => !q || [e.mac, e.port, String(e.vlan)].some((v) => v.toLowerCase().includes(q)))
      .sort((a, b) =>
        a.port.localeCompare(b.port) || a.vlan - b.vlan || a.mac.localeCompare(b.mac)
      );
    fill(
      $("fdb"),
      shown.map((e) =>
        el(
          "tr",
          { dataset: { mac: e.mac } },
          el("td", { className: "mono" }, e.mac),
          el("td", { className: "n" }, e.vlan),
          el("td", {}, e.port),
          el("td", { className: "n" }, e.static ? "-" : duration(e.ageSeconds)),
          el("td", {}, e.static ? "static" : "learned"),
        )
      ),
      5,
      q ? "no entry matches" : "no entries",
    );
    $("fdb-count").textContent = shown.length === entries.length
      ? entries.length + " entries"
      : shown.length + " of " + entries.length + " entries";
    $("c-fdb").textContent = fmt(stats.fdb.entries) + " / " + fmt(stats.fdb.capacity);
  }

  function renderFlows(flows: FlowEntry[]) {
    const q = $("flow-filter").value.trim().toLowerCase();
    const shown = flows.filter((f) =>
      !q ||
      [f.inPort, f.src, f.dst, String(f.vlan), f.actions].some((v) => v.toLowerCase().includes(q))
    );
    fill(
      $("flows"),
      shown.map((f) =>
        el(
          "tr",
          {},
          el("td", {}, f.inPort),
          el("td", { className: "n" }, f.vlan < 0 ? "-" : f.vlan),
          el("td", { className: "mono" }, f.src),
          el("td", { className: "mono" }, f.dst),
          el("td", { className: "mono" }, f.actions),
          el("td", { className: "n" }, fmt(f.packets)),
          el("td", { className: "n" }, bytes(f.bytes)),
          el("td", { className: "n" }, f.lastUsedSeconds + "s"),
        )
      ),
      8,
      q ? "no flow matches" : "no flows in the last minute",
    );
    $("flow-count").textContent = shown.length === flows.length
      ? flows.length + " flows"
      : shown.length + " of " + flows.length + " flows";
  }

  let info: SwitchInfo | null = null;
  let flows: FlowEntry[] = [];
  let last: { entries: FdbEntry[]; stats: SwitchStats } | null = null;
  async function tick() {
    try {
      info = info || await get<SwitchInfo>("/info");
      const [ports, stats, fdb, flowList] = await Promise.all([
        get<{ ports: PortStatus[] }>("/ports"),
        get<SwitchStats>("/stats"),
        get<{ entries: FdbEntry[] }>("/fdb"),
        // A switch that does not count flows answers 404: the table stays empty.
        get<{ flows: FlowEntry[] }>("/flows?maxIdle=60").catch(() => ({ flows: [] })),
      ]);
      document.title = info.name + " - vswitch";
      $("name").textContent = info.name;
      $("version").textContent = "vswitch " + info.version + ", " + info.threads +
        " datapath thread" + (info.threads === 1 ? "" : "s");
      $("c-uptime").textContent = duration(stats.uptimeSeconds);
      renderPorts(ports.ports, stats);
      renderWorkers(stats);
      renderFdb(fdb.entries, stats);
      last = { entries: fdb.entries, stats };
      flows = flowList.flows;
      renderFlows(flows);
      $("live").textContent = "live, updated " + new Date().toLocaleTimeString();
      $("live").className = "";
      $("error").style.display = "none";
    } catch (err) {
      $("live").textContent = "not updating";
      $("live").className = "stale";
      $("error").textContent = "Not updating: " + (err as Error).message;
      $("error").style.display = "block";
    } finally {
      setTimeout(tick, 1000);
    }
  }
  $("filter").addEventListener("input", () => last && renderFdb(last.entries, last.stats));
  $("flow-filter").addEventListener("input", () => renderFlows(flows));
  tick();
}
