// The last resort of the control plane (mod.ts): an error nothing caught, a rejected promise or an
// exception thrown from a timer, is logged with its stack and the process keeps running.
import assert from "node:assert/strict";

Deno.test("a stray rejection or exception is logged and the process goes on", async () => {
  const script = `
    import { keepServingAfterStrayErrors } from "${new URL("../mod.ts", import.meta.url)}";
    keepServingAfterStrayErrors((msg) => console.log(msg.split("\\n")[0]));
    Promise.reject(new Error("a rejected promise"));
    setTimeout(() => { throw new Error("a throwing timer"); }, 10);
    setTimeout(() => console.log("still serving"), 200);
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, text);
  assert.match(
    text,
    /internal error \(unhandled rejection\), still serving: Error: a rejected promise/,
  );
  assert.match(
    text,
    /internal error \(uncaught exception\), still serving: Error: a throwing timer/,
  );
  assert.match(text, /still serving\n/);
});
