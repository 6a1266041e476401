// Flat profile of a V8 `--prof` log: ticks per function (optimised JS, builtins, shared
// libraries). `node --prof-process` leaves most of Deno's V8 14 ticks "unaccounted" (it cannot
// parse the newer code-creation entries), so this reads the log itself.
//   PVP_V8_FLAGS=--prof deno task bench --only switch --threads 1 --sizes 1518 --rounds 1
//   deno run --allow-read bench/ticks.ts isolate-*.log [rows, default 25]
// The switch writes one log per isolate (main thread, each datapath Worker): the largest is
// the busy Worker.

interface Code {
  start: number;
  size: number;
  name: string;
}

export function flatProfile(log: string): { total: number; rows: [string, number][] } {
  const code = new Map<number, Code>();
  const libs: { start: number; end: number; name: string }[] = [];
  const counts = new Map<string, number>();
  const resolved = new Map<number, string>();
  let total = 0;
  for (const line of log.split("\n")) {
    const f = line.split(",");
    if (f[0] === "code-creation") {
      const start = parseInt(f[4], 16);
      code.set(start, { start, size: Number(f[5]), name: `${f[1]} ${f.slice(6).join(",")}` });
      resolved.clear();
    } else if (f[0] === "code-move") {
      const c = code.get(parseInt(f[1], 16));
      if (c) {
        code.delete(c.start);
        c.start = parseInt(f[2], 16);
        code.set(c.start, c);
      }
      resolved.clear();
    } else if (f[0] === "shared-library") {
      libs.push({ name: f[1], start: parseInt(f[2], 16), end: parseInt(f[3], 16) });
    } else if (f[0] === "tick") {
      const pc = parseInt(f[1], 16);
      total++;
      let name = resolved.get(pc);
      if (name === undefined) {
        name = "(unknown)";
        for (const c of code.values()) if (pc >= c.start && pc < c.start + c.size) name = c.name;
        if (name === "(unknown)") {
          name = libs.find((l) => pc >= l.start && pc < l.end)?.name ?? name;
        }
        resolved.set(pc, name);
      }
      counts.set(name, (counts.get(name) ?? 0) + 1);
    }
  }
  return { total, rows: [...counts].sort((a, b) => b[1] - a[1]) };
}

if (import.meta.main) {
  const [file, rows = "25"] = Deno.args;
  if (!file) {
    console.error("usage: deno run --allow-read bench/ticks.ts <isolate-*.log> [rows]");
    Deno.exit(2);
  }
  const { total, rows: all } = flatProfile(await Deno.readTextFile(file));
  console.log(`${total} ticks in ${file}`);
  for (const [name, n] of all.slice(0, Number(rows))) {
    const pct = ((100 * n) / total).toFixed(1).padStart(5);
    console.log(`${String(n).padStart(7)} ${pct}%  ${name.replace(/,0x[0-9a-f]+,/, " ")}`);
  }
}
