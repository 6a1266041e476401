// `deno task ctl` against a running switch served over HTTP (a real socket, a token).
import assert from "node:assert/strict";
import { CliError } from "../cli/common.ts";
import { ctlCommand, UsageError } from "../cli/ctl.ts";
import { createApp } from "../http/app.ts";
import { Switch } from "../switch/switch.ts";
import { loadTopology } from "../switch/topology.ts";

const TOKEN = "s3cret";

Deno.test("ctl: add-port, set-port, show, fdb-add/del, flows, del-port, reload; exit codes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vsw-ctl-" });
  const file = `${dir}/topology.json`;
  await Deno.writeTextFile(
    file,
    JSON.stringify({
      name: "ctl",
      http: { token: TOKEN },
      ports: [{ name: "vm1", type: "vhost-user", socket: `${dir}/vm1.sock` }],
    }),
  );
  const logs: string[] = [];
  const sw = await Switch.start(loadTopology(file), (m) => logs.push(m), file);
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    createApp(sw, { token: TOKEN }).fetch,
  );
  const url = `http://127.0.0.1:${server.addr.port}`;
  const ctl = (...args: string[]) => ctlCommand(["--url", url, "--token", TOKEN, ...args]);
  try {
    assert.equal(
      await ctl("add-port", "vm2", "--type", "vhost-user", "--socket", `${dir}/vm2.sock`),
      `port vm2 (vhost-user, ${dir}/vm2.sock (server)) added as port 1`,
    );
    // Logged with who asked: the peer's address.
    assert.ok(
      logs.some((l) => /^HTTP POST \/ports from 127\.0\.0\.1:\d+: port vm2 /.test(l)),
      logs.join("\n"),
    );
    assert.equal(
      await ctl("set-port", "vm2", "--vlan", "access:30", "--mtu", "9000"),
      [
        "port vm2: mtu 1500 -> 9000 (virtio-net tells the guest its MTU once: from its next connection)",
        'port vm2: vlan default -> {"mode":"access","tag":30}',
      ].join("\n"),
    );
    const show = await ctl("show");
    assert.match(show, /^ctl: 2 ports, 1 datapath thread\(s\), HTTP 127\.0\.0\.1:8080\n/);
    assert.match(show, /\nvm2 +vhost-user +listening +9000 +access 30 +\S+vm2\.sock \(server\)$/);
    assert.equal(
      await ctl("fdb-add", "52:54:00:00:00:09", "vm2", "--vlan", "30"),
      "static MAC 52:54:00:00:00:09 VLAN 30 on vm2",
    );
    assert.equal(await ctl("fdb-del", "52:54:00:00:00:09", "--vlan", "30"), "removed 1 entry");
    assert.equal(await ctl("fdb-del", "52:54:00:00:00:09"), "no entry");
    assert.equal(
      await ctl("flows"),
      "IN  VLAN  SRC  DST  PACKETS  BYTES  USED  ACTIONS",
    );
    await assert.rejects(
      ctl("add-port", "vm3", "--type", "vhost-user", "--mtu", "1"),
      (e: Error) =>
        e instanceof CliError &&
        e.message === [
            "POST /ports: ports[2].mtu: expected an integer from 68 to 9000, got 1",
            "POST /ports: ports[2].socket: required key is missing",
          ].join("\n"),
    );
    await assert.rejects(ctl("set-port", "vm2", "--vlan", "sideways"), UsageError);
    await assert.rejects(ctl("frobnicate"), UsageError);
    await assert.rejects(
      ctlCommand(["--url", url, "del-port", "vm2"]),
      /401 this request needs Authorization: Bearer <token>/,
    );
    assert.equal(await ctl("del-port", "vm2"), "port vm2 deleted");
    assert.equal(await ctl("reload"), "nothing changed");
    assert.match(await ctlCommand(["--help"]), /^Usage: deno task ctl/);

    // Exit statuses, from the command line itself.
    const run = async (...args: string[]) =>
      (await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL("../mod.ts", import.meta.url).pathname,
          "ctl",
          "--url",
          url,
          ...args,
        ],
        stdout: "null",
        stderr: "null",
      }).output()).code;
    assert.equal(await run("--token", TOKEN, "show"), 0);
    assert.equal(await run("--token", TOKEN, "del-port", "nope"), 1);
    assert.equal(await run("bogus"), 2);
  } finally {
    await server.shutdown();
    await sw.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
