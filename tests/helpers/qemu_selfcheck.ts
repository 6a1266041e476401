// Proves the guest harness against a vhost-user back-end that is not ours: DPDK testpmd with
// two net_vhost ports in io forwarding, one guest on each, pinging each other.
// Run: deno run --allow-all tests/helpers/qemu_selfcheck.ts
import assert from "node:assert/strict";
import { bootGuest, type Guest, guestToolsAvailable } from "../../peers/qemu.ts";

const TESTPMD = "dpdk-testpmd";
const t0 = performance.now();
const log = (who: string) => (line: string) =>
  console.log(`${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s ${who}| ${line}`);

async function waitForPath(path: string, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      await Deno.stat(path);
      return;
    } catch { /* Not yet. */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${path} did not appear within ${timeoutMs} ms`);
}

async function pump(stream: ReadableStream<Uint8Array>, out: (l: string) => void) {
  let partial = "";
  for await (const t of stream.pipeThrough(new TextDecoderStream())) {
    const lines = (partial + t).split("\n");
    partial = lines.pop()!;
    lines.forEach(out);
  }
}

function startTestpmd(dir: string, prefix: string) {
  const args = [
    "--pdeathsig",
    "KILL",
    "--",
    TESTPMD,
    "--lcores",
    "0@0,1@1",
    "--no-pci",
    "--no-huge",
    "-m",
    "1024",
    `--file-prefix=${prefix}`,
    "--vdev",
    `net_vhost0,iface=${dir}/vh0.sock`,
    // client=1: testpmd connects to guest2's QEMU, which listens (server mode).
    "--vdev",
    `net_vhost1,iface=${dir}/vh1.sock,client=1`,
    "--",
    "--total-num-mbufs=16384",
    "--forward-mode=io",
  ];
  console.log(`testpmd: ${TESTPMD} ${args.slice(4).join(" ")}`);
  // stdin stays open: non-interactive testpmd exits when it reads a line (or EOF).
  const child = new Deno.Command("setpriv", {
    args,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const done = Promise.all([
    pump(child.stdout, log("testpmd")),
    pump(child.stderr, log("testpmd")),
    child.status,
  ]);
  return { child, done };
}

async function checkGuest(g: Guest, peer: string) {
  // A few attempts: the first echo also waits for ARP through the forwarder.
  const ping = await g.run(`ping -c 3 -w 20 ${peer}`, 30_000);
  assert.equal(ping.code, 0, `${g.name}: ping ${peer} failed:\n${ping.output}`);
  assert.match(ping.output, /3 packets received/);
  const state = (await g.check("cat /sys/class/net/eth0/operstate /sys/class/net/eth0/carrier"))
    .split("\n");
  assert.deepEqual(state.slice(0, 2), ["up", "1"], `${g.name}: eth0 not up`);
  const dmesg = await g.dmesg();
  // virtio_net logs nothing on probe; the guest's init logs the link state it saw.
  assert.match(dmesg, /vsguest: eth0 operstate up/, `${g.name}: no link-up in dmesg:\n${dmesg}`);
  const driver = await g.check("basename $(readlink /sys/class/net/eth0/device/driver)");
  assert.equal(driver, "virtio_net\n");
  const bad = dmesg.split("\n").filter((l) =>
    /virtio.*(error|fail|timeout|bad)|BUG:|WARNING:|Call Trace|kernel panic/i.test(l)
  );
  assert.deepEqual(bad, [], `${g.name}: errors in dmesg`);
}

async function checkRunner(g: Guest) {
  assert.deepEqual(await g.run("echo 'it''s'; echo \"two\""), { code: 0, output: "its\ntwo\n" });
  assert.deepEqual(await g.run("printf abc"), { code: 0, output: "abc" });
  assert.deepEqual(await g.run("echo oops >&2; exit_code() { return 7; }; exit_code"), {
    code: 7,
    output: "oops\n",
  });
  assert.equal((await g.run("cat")).code, 0, "stdin must be /dev/null");
  await assert.rejects(g.run("sleep 100", 1500), /timeout after 1500 ms/);
  assert.deepEqual(await g.run("echo after-timeout"), { code: 0, output: "after-timeout\n" });
}

async function main() {
  const missing = guestToolsAvailable();
  if (missing) throw new Error(`guest tools missing: ${missing}`);
  const dir = await Deno.makeTempDir({ prefix: "vsguest-selfcheck-" });
  const prefix = `vsck${Deno.pid}`;
  const guests: Guest[] = [];
  let pmd: ReturnType<typeof startTestpmd> | undefined;
  const removeDirs = () => {
    for (const d of [dir, `/var/run/dpdk/${prefix}`]) {
      try {
        Deno.removeSync(d, { recursive: true });
      } catch { /* Already gone. */ }
    }
  };
  // Ctrl-C skips finally blocks: remove files here; QEMU and testpmd die with us (pdeathsig).
  const onSignal = () => {
    console.error("selfcheck: interrupted, cleaning up");
    removeDirs();
    Deno.exit(130);
  };
  const signals = ["SIGINT", "SIGTERM"] as const;
  signals.forEach((sig) => Deno.addSignalListener(sig, onSignal));
  try {
    pmd = startTestpmd(dir, prefix);
    await waitForPath(`${dir}/vh0.sock`, 30_000);
    const boots = await Promise.allSettled([
      bootGuest({
        name: "g1",
        ip: "10.0.0.1/24",
        nics: [{ socket: `${dir}/vh0.sock`, mac: "52:54:00:00:00:01" }],
        log: log("g1"),
      }),
      bootGuest({
        name: "g2",
        ip: "10.0.0.2/24",
        nics: [{ socket: `${dir}/vh1.sock`, mac: "52:54:00:00:00:02", server: true }],
        log: log("g2"),
      }),
    ]);
    for (const b of boots) if (b.status === "fulfilled") guests.push(b.value);
    for (const b of boots) if (b.status === "rejected") throw b.reason;
    const [g1, g2] = guests;
    console.log(`boot times: g1 ${g1.bootMs} ms, g2 ${g2.bootMs} ms`);
    console.log(`qemu g1: ${g1.commandLine.join(" ")}`);
    await checkGuest(g1, "10.0.0.2");
    await checkGuest(g2, "10.0.0.1");
    await checkRunner(g1);
    console.log(`SELFCHECK PASSED in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  } finally {
    await Promise.all(guests.map((g) => g.shutdown()));
    if (pmd) {
      // A line on stdin is testpmd's clean exit; SIGKILL if it hangs.
      const stdin = pmd.child.stdin.getWriter();
      await stdin.write(new TextEncoder().encode("\n")).catch(() => {});
      await stdin.close().catch(() => {});
      const timer = setTimeout(() => pmd?.child.kill("SIGKILL"), 10_000);
      await pmd.done;
      clearTimeout(timer);
    }
    removeDirs();
    signals.forEach((sig) => Deno.removeSignalListener(sig, onSignal));
  }
}

await main();
