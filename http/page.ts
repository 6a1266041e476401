// GET /: one self-contained page (no external assets, no build step) that shows the switch live:
// its ports with counters and rates, the datapath workers and the MAC table, refreshed every
// second from /ports, /stats and /fdb. Every value goes into the DOM as text, never as markup.

/** Inline script and style only; fetches go back to this endpoint. */
export const PAGE_CSP = [
  "default-src 'none'",
  "script-src 'unsafe-inline'",
  "style-src 'unsafe-inline'",
  "connect-src 'self'",
  "img-src data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

const STYLE = `
:root { color-scheme: light dark; --fg: #1d2430; --muted: #667085; --line: #e4e7ec;
  --head: #f5f7fa; --card: #fff; --bg: #f9fafb; --ok: #12805c; --warn: #b54708; --bad: #b42318;
  --accent: #2e5aac; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e9ef; --muted: #98a2b3; --line: #2d333d;
  --head: #1c2129; --card: #161a20; --bg: #0f1216; --ok: #47cd89; --warn: #fdb022;
  --bad: #f97066; --accent: #84adff; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: var(--bg); }
main { max-width: 1200px; margin: 0 auto; padding: 20px 24px 40px; }
header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; }
h1 { font-size: 22px; margin: 0; }
h2 { font-size: 15px; margin: 28px 0 8px; display: flex; gap: 10px; align-items: baseline; }
h2 small, .muted { color: var(--muted); font-weight: normal; }
#live { margin-left: auto; font-size: 13px; }
#live::before { content: ""; display: inline-block; width: 8px; height: 8px; border-radius: 50%;
  margin-right: 6px; background: var(--ok); }
#live.stale::before { background: var(--bad); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 12px;
  margin-top: 16px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 10px 14px; }
.card b { display: block; font-size: 20px; font-variant-numeric: tabular-nums; }
.card span { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
table { width: 100%; border-collapse: collapse; background: var(--card);
  border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
th, td { padding: 6px 10px; text-align: left; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
th { background: var(--head); font-size: 12px; color: var(--muted); font-weight: 600; }
tr:last-child td { border-bottom: 0; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 13px; }
td.path { max-width: 340px; overflow: hidden; text-overflow: ellipsis; }
td.empty { color: var(--muted); text-align: center; padding: 14px; }
.pill { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  border: 1px solid currentColor; }
.ok { color: var(--ok); } .warn { color: var(--warn); } .bad { color: var(--bad); }
input { font: 13px system-ui, sans-serif; width: 240px; padding: 3px 8px; border: 1px solid var(--line); border-radius: 6px;
  background: var(--card); color: var(--fg); }
#error { display: none; margin-top: 14px; padding: 8px 12px; border-radius: 6px;
  border: 1px solid var(--bad); color: var(--bad); }
footer { margin-top: 28px; color: var(--muted); font-size: 12px; }
a { color: var(--accent); }
`;

const SCRIPT = `
"use strict";
const $ = (id) => document.getElementById(id);
const num = new Intl.NumberFormat("en-US");
const fmt = (n) => num.format(Math.round(n));
const rate = (n) => n >= 100 ? fmt(n) : n.toFixed(1);
const bytes = (n) => {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  for (; n >= 1024 && i < u.length - 1; i++) n /= 1024;
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
};
const duration = (s) => {
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  const parts = d ? [d + "d", h + "h", m + "m"] : h ? [h + "h", m + "m"] : m ? [m + "m"] : [];
  return parts.concat([(s % 60) + "s"]).join(" ");
};
function el(tag, { dataset, ...props }, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  Object.assign(e.dataset, dataset);
  e.append(...children.map((c) => typeof c === "object" ? c : String(c)));
  return e;
}
const STATE_CLASS = { connected: "ok", up: "ok", listening: "warn", connecting: "warn", down: "bad" };
const isDrop = (k) => /^drop(_|[A-Z])/.test(k);

async function get(path) {
  const res = await fetch(path, { cache: "no-store" }).catch(() => {
    throw new Error("cannot reach the switch");
  });
  const body = await res.json();
  if (!res.ok) throw new Error(path + ": " + (body.error || res.status));
  return body;
}

function fill(tbody, rows, columns, emptyText) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {},
    el("td", { className: "empty", colSpan: columns }, emptyText))]));
}

// The port's L2 safety features in a few words; loop guard's block stands out.
function safetyCell(p) {
  const s = p.safety || {};
  const tags = [];
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
  return el("td", { className: s.loopGuard && s.loopGuard.blocked ? "bad" : "",
    title: JSON.stringify(s, null, 1) }, text);
}

function renderPorts(ports, stats) {
  const rates = new Map(stats.ports.map((p) => [p.name, p]));
  const rows = ports.map((p) => {
    const r = rates.get(p.name) || { rxPerSecond: 0, txPerSecond: 0 };
    const c = p.counters;
    const drops = Object.entries(c).filter(([k, v]) => isDrop(k) && v > 0);
    const total = drops.reduce((n, [, v]) => n + v, 0);
    const where = p.type === "vhost-user" ? p.socket : p.type === "vxlan"
      ? "VNI " + p.vni + " " + p.local + " -> " + p.remotes.slice(0, p.flood).join(",")
      : p.interface;
    return el("tr", { dataset: { port: p.name } },
      el("td", {}, el("b", {}, p.name)),
      el("td", {}, p.type === "vhost-user" ? "vhost-user (" + p.mode + ")" : p.type),
      el("td", {}, el("span", { className: "pill " + (STATE_CLASS[p.state] || "") }, p.state)),
      el("td", { className: "mono path", title: where }, where),
      el("td", { className: "n", title: bytes(c.rx_bytes || 0) }, fmt(c.rx_packets || 0)),
      el("td", { className: "n" }, rate(r.rxPerSecond)),
      el("td", { className: "n", title: bytes(c.tx_bytes || 0) }, fmt(c.tx_packets || 0)),
      el("td", { className: "n" }, rate(r.txPerSecond)),
      el("td", { className: "n" + (total ? " bad" : ""),
        title: drops.map(([k, v]) => k + ": " + fmt(v)).join("\\n") || "no drops" }, fmt(total)),
      safetyCell(p));
  });
  fill($("ports"), rows, 10, "no ports");
  const up = ports.filter((p) => STATE_CLASS[p.state] === "ok").length;
  $("c-ports").textContent = up + " / " + ports.length;
  const fps = stats.ports.reduce((n, p) => n + p.rxPerSecond, 0);
  $("c-rate").textContent = rate(fps);
}

function renderWorkers(stats) {
  fill($("workers"), stats.workers.map((w) => el("tr", {},
    el("td", {}, "worker " + w.worker),
    el("td", { className: "n" }, fmt(w.frames)),
    el("td", { className: "n" }, rate(w.framesPerSecond)),
    el("td", { className: "n" }, (w.busyFraction * 100).toFixed(1) + " %"),
    el("td", { className: "n" }, fmt(w.sleeps)))), 5, "no workers");
}

function renderFdb(entries, stats) {
  const q = $("filter").value.trim().toLowerCase();
  const shown = entries
    .filter((e) => !q || [e.mac, e.port, String(e.vlan)].some((v) => v.toLowerCase().includes(q)))
    .sort((a, b) => a.port.localeCompare(b.port) || a.vlan - b.vlan || a.mac.localeCompare(b.mac));
  fill($("fdb"), shown.map((e) => el("tr", { dataset: { mac: e.mac } },
    el("td", { className: "mono" }, e.mac),
    el("td", { className: "n" }, e.vlan),
    el("td", {}, e.port),
    el("td", { className: "n" }, e.static ? "-" : duration(e.ageSeconds)),
    el("td", {}, e.static ? "static" : "learned"))), 5, q ? "no entry matches" : "no entries");
  $("fdb-count").textContent = shown.length === entries.length
    ? entries.length + " entries" : shown.length + " of " + entries.length + " entries";
  $("c-fdb").textContent = fmt(stats.fdb.entries) + " / " + fmt(stats.fdb.capacity);
}

let info = null;
let last = null;
async function tick() {
  try {
    info = info || await get("/info");
    const [ports, stats, fdb] = await Promise.all([get("/ports"), get("/stats"), get("/fdb")]);
    document.title = info.name + " - vswitch";
    $("name").textContent = info.name;
    $("version").textContent = "vswitch " + info.version + ", " + info.threads + " datapath thread"
      + (info.threads === 1 ? "" : "s");
    $("c-uptime").textContent = duration(stats.uptimeSeconds);
    renderPorts(ports.ports, stats);
    renderWorkers(stats);
    renderFdb(fdb.entries, stats);
    last = { entries: fdb.entries, stats };
    $("live").textContent = "live, updated " + new Date().toLocaleTimeString();
    $("live").className = "";
    $("error").style.display = "none";
  } catch (err) {
    $("live").textContent = "not updating";
    $("live").className = "stale";
    $("error").textContent = "Not updating: " + err.message;
    $("error").style.display = "block";
  } finally {
    setTimeout(tick, 1000);
  }
}
$("filter").addEventListener("input", () => last && renderFdb(last.entries, last.stats));
tick();
`;

export const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>vswitch</title>
<style>${STYLE}</style>
</head>
<body>
<main>
  <header>
    <h1 id="name">vswitch</h1>
    <span id="version" class="muted"></span>
    <span id="live" class="stale">connecting...</span>
  </header>
  <div id="error"></div>
  <section class="cards">
    <div class="card"><span>Uptime</span><b id="c-uptime">-</b></div>
    <div class="card"><span>Ports up</span><b id="c-ports">-</b></div>
    <div class="card"><span>Frames/s received</span><b id="c-rate">-</b></div>
    <div class="card"><span>MAC table</span><b id="c-fdb">-</b></div>
  </section>
  <h2>Ports</h2>
  <table>
    <thead><tr><th>Port</th><th>Type</th><th>State</th><th>Socket / interface</th>
      <th class="n">RX packets</th><th class="n">RX/s</th><th class="n">TX packets</th>
      <th class="n">TX/s</th><th class="n">Drops</th><th>L2 safety</th></tr></thead>
    <tbody id="ports"></tbody>
  </table>
  <h2>MAC table <small id="fdb-count"></small>
    <input id="filter" type="search" placeholder="filter by MAC, port or VLAN" aria-label="filter">
  </h2>
  <table>
    <thead><tr><th>MAC</th><th class="n">VLAN</th><th>Port</th><th class="n">Age</th>
      <th>Type</th></tr></thead>
    <tbody id="fdb"></tbody>
  </table>
  <h2>Datapath workers</h2>
  <table>
    <thead><tr><th>Worker</th><th class="n">Frames</th><th class="n">Frames/s</th>
      <th class="n">Busy</th><th class="n">Sleeps</th></tr></thead>
    <tbody id="workers"></tbody>
  </table>
  <footer>Refreshes every second. JSON: <a href="/info">/info</a> <a href="/ports">/ports</a>
    <a href="/fdb">/fdb</a> <a href="/stats">/stats</a>; Prometheus: <a href="/metrics">/metrics</a>.
  </footer>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;
