// Smoke test of the PVP bench machinery (bench/pvp.ts): a few seconds on the switch only, one
// period at 64 B. It checks the JSON it writes, not how fast anything is.
import assert from "node:assert/strict";
import { testpmdAvailable } from "../peers/testpmd.ts";

const missing = testpmdAvailable();
if (missing) console.warn(`SKIPPING the PVP bench smoke test: ${missing}`);

Deno.test({
  name: "bench/pvp.ts runs a switch-only PVP loop and writes a balanced JSON result",
  ignore: missing !== null,
  async fn() {
    const out = await Deno.makeTempDir({ prefix: "pvp-smoke-" });
    try {
      const bench = new URL("../bench/pvp.ts", import.meta.url).pathname;
      const args = ["run", "--allow-all", bench, "--only", "switch", "--threads", "1"];
      args.push("--sizes", "64", "--periods", "1", "--period-seconds", "1", "--warmup", "1");
      args.push("--rounds", "1", "--quiet-wait", "0", "--out", out);
      const res = await new Deno.Command(Deno.execPath(), { args }).output();
      const text = (b: Uint8Array) => new TextDecoder().decode(b);
      const log = `--- stdout ---\n${text(res.stdout)}\n--- stderr ---\n${text(res.stderr)}`;
      assert.equal(res.code, 0, `bench exited with ${res.code}\n${log}`);

      const result = JSON.parse(await Deno.readTextFile(`${out}/latest.json`));
      assert.equal(result.trials.length, 1, log);
      const [trial] = result.trials;
      assert.equal(trial.config, "switch-t1");
      assert.equal(trial.error, undefined, log);
      assert.equal(trial.periods.length, 1);
      assert.ok(trial.periods[0].mpps.every((m: number) => m > 0), `no frames moved\n${log}`);

      const i = trial.integrity;
      assert.ok(i.sent > 0, log);
      assert.equal(i.sent, i.received + i.targetDrops, `sent != received + drops\n${log}`);
      assert.deepEqual(i.problems, [], log);
      assert.equal(i.frameLen.frontEnd, 60);

      const [row] = result.summary;
      assert.ok(row.mppsPerDirection.median > 0);
      assert.match(text(res.stdout), /switch-t1\s+64 B/);
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  },
});
