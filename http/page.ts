// GET /: one self-contained page (no external assets, no build step) that shows the switch live:
// its ports with counters and rates, the datapath workers and the MAC table, refreshed every
// second from /ports, /stats and /fdb. Every value goes into the DOM as text, never as markup.
// The script is http/page_script.ts (checked and linted like the rest), inlined as JavaScript.
import { liveView } from "./page_script.ts";

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

/** The page's script: liveView as Deno compiled it (see http/page_script.ts), called at once. */
const SCRIPT = `"use strict";\n(${liveView.toString()})();\n`;

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
  <h2>Flows <small id="flow-count"></small>
    <input id="flow-filter" type="search" placeholder="filter by port, MAC, VLAN or action"
      aria-label="flow filter">
  </h2>
  <table>
    <thead><tr><th>In port</th><th class="n">VLAN</th><th>Source</th><th>Destination</th>
      <th>Actions</th><th class="n">Packets</th><th class="n">Bytes</th><th class="n">Used</th>
    </tr></thead>
    <tbody id="flows"></tbody>
  </table>
  <h2>Datapath workers</h2>
  <table>
    <thead><tr><th>Worker</th><th class="n">Frames</th><th class="n">Frames/s</th>
      <th class="n">Busy</th><th class="n">Sleeps</th></tr></thead>
    <tbody id="workers"></tbody>
  </table>
  <footer>Refreshes every second. JSON: <a href="/info">/info</a> <a href="/ports">/ports</a>
    <a href="/fdb">/fdb</a> <a href="/flows">/flows</a> <a href="/stats">/stats</a>; Prometheus: <a href="/metrics">/metrics</a>.
  </footer>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;
