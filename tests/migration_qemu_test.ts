// Live migration of a running QEMU guest between two vhost-user ports of one switch, the way an
// operator moves a VM between two QEMU processes: both run with -only-migratable (QEMU refuses
// to start when a device, like a vhost-user back-end without dirty logging, blocks migration);
// echoes from the network reach the guest all through pre-copy (the switch marks the pages it
// writes) and resume after a bounded gap; QEMU has the switch announce the guest (SEND_RARP),
// the MAC moves to the destination port, the source port stops counting, and the migrated guest
// takes a hashed TCP transfer at its new port.
import assert from "node:assert/strict";
import { createVethNetns, netnsSkipReason, run } from "../peers/netns.ts";
import { bootGuest, type Guest, guestToolsAvailable, incomingGuest } from "../peers/qemu.ts";
import { qmp } from "./helpers/reliability.ts";
import { parsePing } from "./helpers/ping.ts";
import { startSwitch, waitFor } from "./helpers/switch.ts";

const missing = guestToolsAvailable() ?? netnsSkipReason();
if (missing) console.warn(`SKIPPING migration test: ${missing}`);

const VM_MAC = "52:54:00:00:19:01";
const VM_IP = "10.19.0.1";
const HOST_IP = "10.19.0.254";
const MIB = 24;
/** Echoes every 100 ms from the network to the guest, for 40 s at most. */
const PING_INTERVAL_MS = 100;

Deno.test({
  name: "a guest migrates between two ports under ping: announced, MAC moves, transfer intact",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using ns = await createVethNetns({ nsAddr: `${HOST_IP}/24` });
    await ns.waitOperUp();
    await using ts = await startSwitch({
      name: "migration",
      threads: 1,
      http: { listen: "127.0.0.1:0" },
      ports: [
        { name: "src", type: "vhost-user", socket: "$DIR/src.sock" },
        { name: "dst", type: "vhost-user", socket: "$DIR/dst.sock" },
        { name: "uplink", type: "af-packet", interface: ns.hostIf },
      ],
    });
    const dir = ts.dir;
    const machine = { name: "mig1", ip: `${VM_IP}/24`, onlyMigratable: true };
    const guests: Guest[] = [];
    const detail = () => `switch log:\n${ts.logs.join("\n")}`;
    try {
      // Both QEMUs start at once: the destination waits for the source's state.
      const [src, dst] = await Promise.all([
        bootGuest({
          ...machine,
          nics: [{ socket: `${dir}/src.sock`, mac: VM_MAC }],
          qmp: `${dir}/src.qmp`,
        }),
        incomingGuest({
          ...machine,
          nics: [{ socket: `${dir}/dst.sock`, mac: VM_MAC }],
          qmp: `${dir}/dst.qmp`,
        }, `unix:${dir}/migrate.sock`),
      ]);
      guests.push(src, dst);
      // Both QEMUs started with -only-migratable: the back-end raised no migration blocker.
      // The guest is reachable, and its MAC is on the source port.
      assert.match(
        await ns.exec(["busybox", "ping", "-c", "3", "-W", "5", VM_IP]),
        /3 packets received/,
      );
      assert.ok(ts.sw.fdb().some((e) => e.mac === VM_MAC && e.port === "src"), detail());

      // Echoes every 100 ms while the guest migrates: the switch writes each request into the
      // guest's RX buffers during pre-copy, pages only the dirty log tells QEMU to send again.
      const pinger = new Deno.Command("ip", {
        args: [
          "netns",
          "exec",
          ns.name,
          "busybox",
          "ping",
          "-i",
          String(PING_INTERVAL_MS / 1000),
          "-w",
          "60",
          VM_IP,
        ],
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      await waitFor("echoes to flow", () => ts.sw.port("uplink")!.counters.rx_packets > 10);
      // A bandwidth cap keeps pre-copy going for a few seconds.
      await qmp(`${dir}/src.qmp`, "migrate-set-parameters", { "max-bandwidth": 32 << 20 });
      await qmp(`${dir}/src.qmp`, "migrate", { uri: `unix:${dir}/migrate.sock` });
      const migrateStart = Date.now();
      await waitFor(
        "the migration to complete",
        async () => {
          const info = await qmp(`${dir}/src.qmp`, "query-migrate") as Record<string, unknown>;
          if (info.status === "failed") {
            throw new Error(`migration failed: ${JSON.stringify(info)}`);
          }
          return info.status === "completed";
        },
        120_000,
        detail,
      );
      const migrateMs = Date.now() - migrateStart;
      const running = await qmp(`${dir}/dst.qmp`, "query-status") as { status: string };
      assert.equal(running.status, "running");
      const logged = (port: string, text: string) =>
        ts.logs.some((l) => l.includes(`[${port}]`) && l.includes(text));
      assert.ok(logged("src", "migration: dirty logging on"), detail());
      assert.ok(logged("src", "migration: dirty log shared"), detail());
      assert.ok(logged("dst", "resumes at avail position"), detail());
      // QEMU asked the switch to announce the guest at its new port (SEND_RARP).
      assert.ok(logged("dst", `migration: announcing ${VM_MAC} (RARP)`), detail());
      const dirtyPages = ts.sw.port("src")!.counters.dirty_pages;
      assert.ok(dirtyPages > 0, "the switch marked the pages it wrote during pre-copy");
      // The source QEMU is done with the guest; its port stops counting.
      await src.kill("SIGTERM");
      await waitFor(
        "the source port to lose its front-end",
        () => ts.sw.port("src")!.state !== "connected",
        30_000,
        detail,
      );
      const srcRx = ts.sw.port("src")!.counters.rx_packets;

      // The migrated guest takes a transfer at its new port, byte for byte.
      await dst.check(
        `rm -f /tmp/rx /tmp/rx.done; ` +
          `setsid sh -c '(sleep 600 &) | nc -l -p 5001 >/tmp/rx; echo $? >/tmp/rx.done' >/dev/null 2>&1 &`,
      );
      await dst.check(`i=0; until netstat -ltn | grep -q ":5001 "; do i=$((i+1)); sleep 0.1; done`);
      const file = `${dir}/tx.bin`;
      await run("sh", ["-c", `head -c ${MIB}M /dev/urandom >${file}`]);
      const sentHash = (await run("sha256sum", [file])).split(" ")[0];
      await ns.exec(["sh", "-c", `busybox nc ${VM_IP} 5001 <${file}`]);
      await dst.check(
        `i=0; until [ -s /tmp/rx.done ]; do i=$((i+1)); [ $i -ge 600 ] && break; sleep 0.1; done`,
        90_000,
      );
      const got = await dst.check("cat /tmp/rx.done; wc -c </tmp/rx; sha256sum /tmp/rx");
      const [code, size, hashLine] = got.trim().split("\n");
      assert.equal(code.trim(), "0", got);
      assert.equal(Number(size), MIB << 20, got);
      assert.equal(hashLine.split(" ")[0], sentHash, "the bytes received after the migration");

      // The ping resumed; its longest gap is the migration's downtime as the network saw it.
      pinger.kill("SIGINT");
      const ping = parsePing(new TextDecoder().decode((await pinger.output()).stdout));
      assert.ok(ping.answeredAfterLossRun >= 5, `ping resumed after the gap:\n${ping.output}`);
      const gapMs = ping.longestLossRun * PING_INTERVAL_MS;
      console.log(
        `  migration: ${migrateMs} ms, ${dirtyPages} dirty pages marked, ping gap ${gapMs} ms ` +
          `(${ping.received}/${ping.transmitted} answered)`,
      );
      assert.ok(gapMs <= 5000, `ping gap ${gapMs} ms`);
      // The MAC is on the destination port, and the source port received nothing more.
      assert.ok(ts.sw.fdb().some((e) => e.mac === VM_MAC && e.port === "dst"), detail());
      assert.equal(ts.sw.port("src")!.counters.rx_packets, srcRx);
      assert.ok(ts.sw.port("dst")!.counters.rx_packets > 0);
      assert.ok(ts.sw.port("dst")!.counters.tx_packets > 0);
    } finally {
      await Promise.all(guests.map((g) => g.kill()));
    }
  },
});
