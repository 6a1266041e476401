// Who can reach what by default: requests under a Host name the switch is not known by (DNS
// rebinding from a web page) are refused; captures are limited in number; a listening socket's
// directory must be writable by its owner only.
import assert from "node:assert/strict";
import { createApp } from "../http/app.ts";
import { MAX_CAPTURES } from "../http/capture.ts";
import { hostAllowed } from "../http/host_check.ts";
import { privateSocketDir } from "../ports/vhost_user/vhost_user_port.ts";
import { MemoryView } from "./helpers/memory_view.ts";

Deno.test("Host names other than the switch's address, localhost and IP literals get 421", async () => {
  const app = createApp(new MemoryView(), { hosts: ["switch.lab"] });
  const get = async (host: string) =>
    (await app.request("http://127.0.0.1:8080/health", { headers: { host } })).status;
  for (const ok of ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "switch.lab", "10.1.2.3"]) {
    assert.equal(await get(ok), 200, ok);
  }
  for (const bad of ["evil.example:8080", "evil.example", "127.0.0.1.evil.example", "lab"]) {
    assert.equal(await get(bad), 421, bad);
  }
  // Reads and writes alike: a rebound page could otherwise flush the FDB or start a capture.
  const del = await app.request("http://127.0.0.1:8080/fdb", {
    method: "DELETE",
    headers: { host: "evil.example:8080" },
  });
  assert.equal(del.status, 421);
  const body = await del.json();
  assert.match(body.error, /evil\.example.*allowedHosts/);
  assert.equal(hostAllowed(undefined, []), false);
});

Deno.test(`at most ${MAX_CAPTURES} captures run at once; another starts once one ends`, async () => {
  const view = new MemoryView();
  view.endless = true;
  const app = createApp(view);
  const open: ReadableStreamDefaultReader<Uint8Array>[] = [];
  for (let i = 0; i < MAX_CAPTURES; i++) {
    const res = await app.request("/ports/vm1/capture?seconds=60");
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    await reader.read(); // the pcap header: it runs
    open.push(reader);
  }
  const refused = await app.request("/ports/vm1/capture?seconds=60");
  assert.equal(refused.status, 429);
  assert.match((await refused.json()).error, /captures are running/);
  await open[0].cancel();
  const again = await app.request("/ports/vm1/capture?seconds=60");
  assert.equal(again.status, 200);
  await again.body!.cancel();
  for (const reader of open.slice(1)) await reader.cancel();
});

Deno.test("a socket directory others can write is refused; a missing one is created 0700", () => {
  const base = Deno.makeTempDirSync({ prefix: "vsw-sockdir-" });
  try {
    const fresh = `${base}/a/b`;
    privateSocketDir(fresh);
    assert.equal(Deno.statSync(fresh).mode! & 0o777, 0o700);
    privateSocketDir(fresh); // an existing private one is fine
    const open = `${base}/open`;
    Deno.mkdirSync(open);
    Deno.chmodSync(open, 0o1777);
    assert.throws(() => privateSocketDir(open), /writable by other users \(mode 1777\)/);
    Deno.chmodSync(open, 0o775);
    assert.throws(() => privateSocketDir(open), /writable by other users/);
  } finally {
    Deno.removeSync(base, { recursive: true });
  }
});
