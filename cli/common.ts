// What the terminal views share: finding the endpoint, fetching JSON from it, aligned tables.
import { loadTopology, TopologyError } from "../switch/topology.ts";

export const DEFAULT_URL = "http://127.0.0.1:8080";

/** A failure to report in one line (exit status 1), without a stack trace. */
export class CliError extends Error {}

export interface Endpoint {
  /** Without a trailing slash. */
  base: string;
  /** The topology file it came from, to name in "start it with ...". */
  topology?: string;
}

/** The endpoint to ask: --url, else the listen address of --topology, else the default. */
export function endpoint(opts: { url?: string; topology?: string }): Endpoint {
  return { base: endpointUrl(opts), topology: opts.topology };
}

function endpointUrl(opts: { url?: string; topology?: string }): string {
  if (opts.url !== undefined) {
    let url: URL;
    try {
      url = new URL(opts.url);
    } catch {
      throw new CliError(`--url: not a URL: ${JSON.stringify(opts.url)}`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new CliError(`--url: expected http:// or https://, got ${opts.url}`);
    }
    return url.href.replace(/\/+$/, "");
  }
  if (opts.topology === undefined) return DEFAULT_URL;
  let http;
  try {
    http = loadTopology(opts.topology).http;
  } catch (err) {
    if (err instanceof TopologyError) throw new CliError(err.message);
    throw err;
  }
  if (http.port === 0) {
    throw new CliError(`${opts.topology}: http.listen has port 0 (any free port); give --url`);
  }
  // A wildcard listen address is reached through loopback.
  const host = http.hostname === "0.0.0.0"
    ? "127.0.0.1"
    : http.hostname === "::"
    ? "::1"
    : http.hostname;
  return `http://${host.includes(":") ? `[${host}]` : host}:${http.port}`;
}

/** GET `path` from the endpoint as JSON; errors name the endpoint and what it answered. */
export function getJson<T>(at: Endpoint, path: string): Promise<T> {
  return requestJson<T>(at, "GET", path);
}

/**
 * One request to the endpoint, its answer as JSON. A refusal is a CliError listing every problem
 * the switch gave, one per line.
 */
export async function requestJson<T>(
  { base, topology }: Endpoint,
  method: string,
  path: string,
  opts: { body?: unknown; token?: string } = {},
): Promise<T> {
  let res: Response;
  const headers: Record<string, string> = {};
  if (opts.token) headers.Authorization = `Bearer ${opts.token}`;
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  try {
    res = await fetch(base + path, {
      method,
      headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      // A change may wait for a port to stop (a front-end to let go): longer than a read.
      signal: AbortSignal.timeout(method === "GET" ? 10_000 : 30_000),
    });
  } catch (err) {
    if (err instanceof Deno.errors.NotCapable) {
      throw new CliError(`no permission to reach ${base}: run with --allow-net`);
    }
    if (err instanceof DOMException && err.name === "TimeoutError") {
      throw new CliError(`${base} did not answer ${method} ${path} in time`);
    }
    throw new CliError(
      `no switch answering at ${base}; is it running? start it with deno task start ${
        topology ?? "<topology>"
      }`,
    );
  }
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new CliError(`${base}${path}: HTTP ${res.status}, not JSON; is this a vswitch endpoint?`);
  }
  if (!res.ok) {
    const { error, problems } = body as { error?: unknown; problems?: unknown };
    if (Array.isArray(problems) && problems.length) throw new CliError(problems.join("\n"));
    throw new CliError(`${base}${path}: ${res.status} ${error ?? text}`);
  }
  return body as T;
}

export interface Column {
  title: string;
  /** Numbers read best right-aligned. */
  right?: boolean;
}

/** Columns two spaces apart, the header first; no trailing spaces. */
export function table(columns: Column[], rows: string[][]): string {
  const widths = columns.map((c, i) => Math.max(c.title.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells.map((cell, i) => columns[i].right ? cell.padStart(widths[i]) : cell.padEnd(widths[i]))
      .join("  ").trimEnd();
  return [line(columns.map((c) => c.title)), ...rows.map(line)].join("\n");
}

export const count = (n: number) => String(Math.round(n));

export function rate(n: number): string {
  return n >= 100 ? String(Math.round(n)) : n.toFixed(1);
}

export function duration(seconds: number): string {
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  return [d && `${d}d`, (d || h) && `${h}h`, (d || h || m) && `${m}m`, `${s}s`]
    .filter(Boolean).join(" ");
}
