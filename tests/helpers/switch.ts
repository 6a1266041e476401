// Starts a real switch in-process on a topology written to a temp dir, for integration tests.
import { Switch } from "../../switch/switch.ts";
import { parseTopology } from "../../switch/topology.ts";

export interface TestSwitch {
  sw: Switch;
  dir: string;
  /** Switch log lines so far (printed when a test fails). */
  logs: string[];
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** `topology` may use "$DIR" in socket paths: it becomes the test's temp dir. */
export async function startSwitch(topology: Record<string, unknown>): Promise<TestSwitch> {
  const dir = await Deno.makeTempDir({ prefix: "vswitch-test-" });
  const text = JSON.stringify(topology).replaceAll("$DIR", dir);
  const logs: string[] = [];
  const log = (msg: string) => {
    logs.push(msg);
    if (Deno.env.get("VSWITCH_TEST_LOG")) console.log(`  switch: ${msg}`);
  };
  const sw = await Switch.start(parseTopology(text, `${dir}/topology.json`), log);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await sw.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  return { sw, dir, logs, stop, [Symbol.asyncDispose]: stop };
}

export { waitFor } from "../../peers/wait.ts";
