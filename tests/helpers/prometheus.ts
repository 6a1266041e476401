// A strict parser of the Prometheus text exposition format 0.0.4, for tests: it throws on
// anything the format (or its naming conventions) does not allow, naming the line.
import { commandMissing } from "./peers.ts";

export type MetricType = "counter" | "gauge" | "histogram" | "summary" | "untyped";

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface MetricFamily {
  name: string;
  type: MetricType;
  help?: string;
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);
const FLOAT = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;

function parseValue(text: string): number {
  if (text === "NaN") return NaN;
  if (text === "+Inf" || text === "Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  if (!FLOAT.test(text)) throw new Error(`bad value ${JSON.stringify(text)}`);
  return Number(text);
}

/** `\\`, `\"` and `\n` only (`quote` false: HELP text, where `\"` is not an escape). */
function unescape(text: string, quote: boolean): string {
  return text.replace(/\\(.?)/g, (_, c: string) => {
    if (c === "\\") return "\\";
    if (c === "n") return "\n";
    if (c === '"' && quote) return '"';
    throw new Error(`bad escape \\${c} in ${JSON.stringify(text)}`);
  });
}

/** Reads `{a="x",b="y"}` at the start of `text`; returns the labels and what follows. */
function parseLabels(text: string): [Record<string, string>, string] {
  const labels: Record<string, string> = {};
  let rest = text.slice(1);
  while (!rest.startsWith("}")) {
    const m = /^([^=\s]*)="((?:[^"\\\n]|\\.)*)"(,?)/.exec(rest);
    if (!m) throw new Error(`bad label at ${JSON.stringify(rest)}`);
    const [whole, name, raw, comma] = m;
    if (!LABEL_NAME.test(name) || name.startsWith("__")) throw new Error(`bad label name ${name}`);
    if (name in labels) throw new Error(`label ${name} given twice`);
    labels[name] = unescape(raw, true);
    rest = rest.slice(whole.length);
    if (!comma && !rest.startsWith("}")) throw new Error(`expected , or } at ${rest}`);
    if (comma && rest.startsWith("}")) throw new Error("trailing comma in labels");
  }
  return [labels, rest.slice(1)];
}

function familyOf(sample: string, families: Map<string, MetricFamily>): string {
  for (const suffix of ["_bucket", "_sum", "_count"]) {
    const base = sample.slice(0, -suffix.length);
    const type = families.get(base)?.type;
    if (sample.endsWith(suffix) && (type === "histogram" || type === "summary")) return base;
  }
  return sample;
}

/** Families by name, in order. Counters must end in `_total` and never be negative. */
export function parseExposition(text: string): Map<string, MetricFamily> {
  if (!text.endsWith("\n")) throw new Error("the exposition must end with a newline");
  const families = new Map<string, MetricFamily>();
  const series = new Set<string>();
  const closed = new Set<string>();
  let current = "";
  const enter = (name: string) => {
    if (name === current) return;
    if (closed.has(name)) throw new Error(`samples of ${name} are not all together`);
    if (current) closed.add(current);
    current = name;
  };
  const family = (name: string) => {
    let f = families.get(name);
    if (!f) families.set(name, f = { name, type: "untyped", samples: [] });
    return f;
  };
  text.slice(0, -1).split("\n").forEach((line, i) => {
    const where = `line ${i + 1} (${JSON.stringify(line)})`;
    try {
      if (line.trim() === "") return;
      const meta = /^#\s+(HELP|TYPE)\s+(\S+)(?:\s(.*))?$/.exec(line);
      if (meta) {
        const [, kind, name, arg = ""] = meta;
        if (!METRIC_NAME.test(name)) throw new Error(`bad metric name ${name}`);
        enter(name);
        const f = family(name);
        if (kind === "HELP") {
          if (f.help !== undefined) throw new Error(`second HELP for ${name}`);
          f.help = unescape(arg, false);
        } else {
          if (!TYPES.has(arg)) throw new Error(`unknown type ${arg}`);
          if (f.samples.length || f.type !== "untyped") {
            throw new Error(`TYPE of ${name} must come once, before its samples`);
          }
          f.type = arg as MetricType;
        }
        return;
      }
      if (line.startsWith("#")) return; // a comment
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(.*)$/.exec(line);
      if (!m) throw new Error("not a sample");
      let [, name, rest] = m;
      let labels: Record<string, string> = {};
      if (rest.startsWith("{")) [labels, rest] = parseLabels(rest);
      const parts = rest.split(" ");
      if (parts[0] !== "" || parts.length < 2 || parts.length > 3) {
        throw new Error("expected one space, the value and an optional timestamp");
      }
      const value = parseValue(parts[1]);
      if (parts[2] !== undefined && !/^-?\d+$/.test(parts[2])) throw new Error("bad timestamp");
      const fam = familyOf(name, families);
      enter(fam);
      const f = family(fam);
      const key = name + JSON.stringify(Object.entries(labels).sort());
      if (series.has(key)) throw new Error(`duplicate series ${key}`);
      series.add(key);
      if (f.type === "counter" && !(value >= 0)) throw new Error(`counter ${name} is ${value}`);
      f.samples.push({ name, labels, value });
    } catch (err) {
      throw new Error(`${where}: ${(err as Error).message}`);
    }
  });
  for (const f of families.values()) {
    if (f.type === "counter" && !f.name.endsWith("_total")) {
      throw new Error(`counter ${f.name} should end in _total`);
    }
    if (f.help === undefined) throw new Error(`${f.name} has no HELP`);
  }
  return families;
}

/** The value of one series, by metric name and exact labels; throws when it is missing. */
export function sampleValue(
  families: Map<string, MetricFamily>,
  name: string,
  labels: Record<string, string> = {},
): number {
  const want = JSON.stringify(Object.entries(labels).sort());
  for (const f of families.values()) {
    const s = f.samples.find((s) =>
      s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want
    );
    if (s) return s.value;
  }
  throw new Error(`no sample ${name}${want}`);
}

/** Why `promtool` cannot run here (Debian ships it in `prometheus`), or null. */
export const promtoolMissing = commandMissing("promtool", "prometheus");

/** `promtool check metrics` on the text (see promtoolMissing). */
export async function promtoolCheck(text: string): Promise<{ ok: boolean; output: string }> {
  const child = new Deno.Command("promtool", {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const out = await child.output();
  const dec = new TextDecoder();
  return { ok: out.success, output: dec.decode(out.stdout) + dec.decode(out.stderr) };
}
