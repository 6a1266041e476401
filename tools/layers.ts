// The layer rule, checked (part of `deno task check`). Layers depend downward only:
//
//   ffi/  ->  ports/  ->  switch/  ->  http/, cli/  ->  mod.ts
//
// A module may import its own layer and the layers below it, never one above it, and http/ and
// cli/ (side by side) not each other. peers/ (drivers for QEMU, testpmd, namespaces, pcap, the
// switch process), demo/, bench/, tests/ and tools/ sit outside the layers: they may use every
// layer and no layer may use them; only tests/ and tools/ may import tests/.
//
// The import graph comes from `deno info --json` over every module of the repository (so a
// Worker's module, which nothing imports, is checked too), type-only imports included.
//   deno run --allow-read --allow-run --allow-write=/tmp tools/layers.ts
import { relative } from "node:path";
import { fileURLToPath as fromFileUrl } from "node:url";

export const LAYERS: Readonly<Record<string, number>> = {
  ffi: 0,
  ports: 1,
  switch: 2,
  http: 3,
  cli: 3,
  "mod.ts": 4,
};
/** Outside the layers, and what each of them may import besides the layers. */
export const OUTSIDE: Readonly<Record<string, readonly string[]>> = {
  peers: ["peers"],
  demo: ["demo", "peers"],
  bench: ["bench", "peers"],
  tests: ["tests", "peers", "demo", "bench", "tools"],
  tools: ["tools", "tests", "peers"],
};

/** The part of the tree a repository-relative path belongs to: its top directory, or mod.ts. */
export function areaOf(path: string): string {
  return path.split("/")[0];
}

/** Why `from` may not import `to` (repository-relative paths), or null if it may. */
export function violation(from: string, to: string): string | null {
  const a = areaOf(from);
  const b = areaOf(to);
  if (a in LAYERS) {
    if (!(b in LAYERS)) return `a layer (${a}) imports ${b}/, which is outside the layers`;
    if (LAYERS[b] > LAYERS[a]) return `${a} is below ${b}: layers depend downward only`;
    if (LAYERS[b] === LAYERS[a] && a !== b) return `${a} and ${b} sit side by side`;
    return null;
  }
  const allowed = OUTSIDE[a];
  if (allowed === undefined) return `${from} is in no known part of the tree (${a})`;
  if (b in LAYERS || allowed.includes(b)) return null;
  return b === "tests"
    ? `${a}/ imports tests/: move what they share to peers/ (or a layer)`
    : `${a}/ may not import ${b}/`;
}

/** Every .ts module of the repository, repository-relative. */
function modules(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(`${root}/${dir}`)) {
      const path = dir ? `${dir}/${e.name}` : e.name;
      if (e.name.startsWith(".") || e.name === "node_modules") continue;
      if (e.isDirectory) walk(path);
      else if (e.isFile && e.name.endsWith(".ts")) out.push(path);
    }
  };
  walk("");
  return out.sort();
}

interface DenoInfo {
  modules: {
    specifier: string;
    dependencies?: {
      specifier: string;
      code?: { specifier: string };
      type?: { specifier: string };
    }[];
  }[];
}

/** [importer, imported] pairs between the repository's own modules. */
export async function importEdges(root: string): Promise<[string, string][]> {
  // One `deno info` over a module that imports them all: one graph, one process.
  const entry = await Deno.makeTempFile({ prefix: "vswitch-layers-", suffix: ".ts" });
  try {
    const url = (p: string) => new URL(p, `file://${root}/`).href;
    await Deno.writeTextFile(
      entry,
      modules(root).map((p) => `import type {} from ${JSON.stringify(url(p))};\n`).join(""),
    );
    const run = await new Deno.Command("deno", {
      args: ["info", "--json", entry],
      cwd: root,
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!run.success) {
      throw new Error(`deno info failed: ${new TextDecoder().decode(run.stderr)}`);
    }
    const info = JSON.parse(new TextDecoder().decode(run.stdout)) as DenoInfo;
    const local = (spec: string | undefined) => {
      if (!spec?.startsWith("file://")) return null;
      const path = relative(root, fromFileUrl(spec));
      return path.startsWith("..") ? null : path;
    };
    const edges: [string, string][] = [];
    for (const m of info.modules) {
      const from = local(m.specifier);
      if (from === null) continue;
      for (const d of m.dependencies ?? []) {
        for (const to of new Set([local(d.code?.specifier), local(d.type?.specifier)])) {
          if (to !== null) edges.push([from, to]);
        }
      }
    }
    return edges;
  } finally {
    await Deno.remove(entry);
  }
}

if (import.meta.main) {
  const root = fromFileUrl(new URL("..", import.meta.url)).replace(/\/$/, "");
  const problems = (await importEdges(root))
    .map(([from, to]) => ({ from, to, why: violation(from, to) }))
    .filter((p) => p.why !== null);
  for (const p of problems) console.error(`${p.from} imports ${p.to}: ${p.why}`);
  if (problems.length) {
    console.error(
      `layer check: ${problems.length} import(s) against the layer rule (tools/layers.ts)`,
    );
    Deno.exit(1);
  }
  console.log("layer check: every import goes down the layers");
}
