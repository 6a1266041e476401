// Live migration of a running QEMU guest between two vhost-user ports of one switch, the way an
// operator moves a VM between two QEMU processes: both run with -only-migratable (QEMU refuses
// to start when a device, like a vhost-user back-end without dirty logging, blocks migration);
// echoes from the network reach the guest all through pre-copy (the switch marks the pages it
// writes) and resume after a bounded gap; a paced TCP transfer into the guest runs through
// pre-copy and finishes in the destination QEMU byte for byte (what the switch wrote into guest
// memory while QEMU copied it arrived, because the dirty log named those pages); QEMU has the
// switch announce the guest (SEND_RARP), the MAC moves to the destination port and the source
// port stops counting.
//
// QEMU 7.2 with TCG sometimes loses pages the guest's own CPU dirtied while it is busy with network
// traffic during pre-copy (reproduced with QEMU's own virtio-net and no switch; see the README's
// "Live migration"), and the destination guest's kernel then crashes. Only that outcome, recognised
// by the kernel's own crash report on the destination's console, is retried (three attempts in
// all, everything set up afresh; one attempt in nine crashed here); anything else (a wrong hash, a
// stall without a kernel crash) fails at once.
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
/**
 * The transfer: pieces of CHUNK_KIB KiB, one every CHUNK_GAP_S seconds, from before the migration
 * until a few seconds after it (at most MAX_CHUNKS).
 */
const CHUNK_KIB = 16;
const MAX_CHUNKS = 1200;
const CHUNK_GAP_S = 0.05;
/** What a guest kernel prints when it crashes. */
const KERNEL_CRASH =
  /BUG:|kernel BUG|Oops|soft lockup|list_del corruption|general protection fault/;
/** Echoes every 100 ms from the network to the guest, for 40 s at most. */
const PING_INTERVAL_MS = 100;

Deno.test({
  name: "a guest migrates between two ports under ping: announced, MAC moves, transfer intact",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    for (let attempt = 1;; attempt++) {
      const crash = await migrateOnce();
      if (crash === null) return;
      if (attempt === 3) {
        throw new Error(`the destination guest's kernel crashed in all three attempts:\n${crash}`);
      }
      console.warn(
        `  attempt ${attempt}: the destination guest's kernel crashed after the migration ` +
          `(QEMU TCG lost pages the guest dirtied, see the README); trying again:\n${crash}`,
      );
    }
  },
});

/**
 * One migration with fresh namespace, switch and guests: null when every check passed, or the
 * destination kernel's crash report when its kernel crashed (any other failure throws).
 */
async function migrateOnce(): Promise<string | null> {
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
    const pinger = ns.spawn([
      "busybox",
      "ping",
      "-i",
      String(PING_INTERVAL_MS / 1000),
      "-w",
      "60",
      VM_IP,
    ]);
    await waitFor("echoes to flow", () => ts.sw.port("uplink")!.counters.rx_packets > 10);

    // The transfer starts before the migration and ends after it: the guest's nc keeps
    // receiving in the source, then in the destination, into a file in its RAM.
    await src.check(
      `rm -f /tmp/rx /tmp/rx.done; ` +
        `setsid sh -c '(sleep 600 &) | nc -l -p 5001 >/tmp/rx; echo $? >/tmp/rx.done' >/dev/null 2>&1 &`,
    );
    await src.check(`i=0; until netstat -ltn | grep -q ":5001 "; do i=$((i+1)); sleep 0.1; done`);
    const file = `${dir}/tx.bin`;
    const stop = `${dir}/tx.stop`;
    const count = `${dir}/tx.count`;
    await run("sh", ["-c", `head -c ${MAX_CHUNKS * CHUNK_KIB}K /dev/urandom >${file}`]);
    const sender = ns.spawn([
      "sh",
      "-c",
      `(i=0; while [ $i -lt ${MAX_CHUNKS} ] && [ ! -e ${stop} ]; do ` +
      `dd if=${file} bs=${CHUNK_KIB}K skip=$i count=1 2>/dev/null; ` +
      `i=$((i+1)); sleep ${CHUNK_GAP_S}; done; echo $i >${count}) | busybox nc ${VM_IP} 5001`,
    ]);
    let senderDone = false;
    sender.status.then(() => senderDone = true);
    // Part of the file is in the guest before QEMU starts copying its memory.
    const uplinkRx = ts.sw.port("uplink")!.counters.rx_bytes;
    await waitFor(
      "the transfer to start",
      () => ts.sw.port("uplink")!.counters.rx_bytes - uplinkRx > 4 * CHUNK_KIB * 1024,
    );

    // A bandwidth cap keeps pre-copy going for a few seconds.
    await qmp(`${dir}/src.qmp`, "migrate-set-parameters", { "max-bandwidth": 32 << 20 });
    await qmp(`${dir}/src.qmp`, "migrate", { uri: `unix:${dir}/migrate.sock` });
    const migrateStart = Date.now();
    const rxAtStart = ts.sw.port("uplink")!.counters.rx_bytes;
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
    assert.ok(!senderDone, "the transfer was still running when the migration completed");
    const { downtime } = await qmp(`${dir}/src.qmp`, "query-migrate") as { downtime?: number };
    // Transfer bytes the switch wrote into the guest while QEMU was copying its memory.
    const preCopyBytes = ts.sw.port("uplink")!.counters.rx_bytes - rxAtStart;
    assert.ok(preCopyBytes > 256 << 10, `only ${preCopyBytes} bytes crossed during pre-copy`);
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

    // The transfer that began in the source ends in the destination, byte for byte, after a
    // few more seconds of it there.
    await new Promise((r) => setTimeout(r, 3000));
    await Deno.writeTextFile(stop, "");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const sent = await Promise.race([
      sender.output(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`the transfer stalled\n${detail()}`)), 120_000);
      }),
    ]).finally(() => clearTimeout(timer));
    assert.equal(sent.code, 0, new TextDecoder().decode(sent.stderr));
    await dst.check(
      `i=0; until [ -s /tmp/rx.done ]; do i=$((i+1)); [ $i -ge 600 ] && break; sleep 0.1; done`,
      90_000,
    );
    const got = await dst.check("cat /tmp/rx.done; wc -c </tmp/rx; sha256sum /tmp/rx");
    const [code, size, hashLine] = got.trim().split("\n");
    assert.equal(code.trim(), "0", got);
    const chunks = Number((await Deno.readTextFile(count)).trim());
    const sentHash = (await run("sh", ["-c", `head -c ${chunks * CHUNK_KIB}K ${file} | sha256sum`]))
      .split(" ")[0];
    assert.equal(Number(size), chunks * CHUNK_KIB * 1024, got);
    assert.equal(hashLine.split(" ")[0], sentHash, "the bytes received across the migration");

    // The ping resumed; its longest gap is the migration's downtime as the network saw it.
    pinger.kill("SIGINT");
    const ping = parsePing(new TextDecoder().decode((await pinger.output()).stdout));
    assert.ok(ping.answeredAfterLossRun >= 5, `ping resumed after the gap:\n${ping.output}`);
    const gapMs = ping.longestLossRun * PING_INTERVAL_MS;
    console.log(
      `  migration: ${migrateMs} ms, ${dirtyPages} dirty pages marked, ` +
        `${(chunks * CHUNK_KIB / 1024).toFixed(1)} MiB transferred in all, ` +
        `${(preCopyBytes / 1048576).toFixed(1)} MiB received in pre-copy, ping gap ${gapMs} ms ` +
        `(${ping.received}/${ping.transmitted} answered), QEMU's downtime ${downtime} ms`,
    );
    // Bounded, with room for two TCG guests and the switch sharing two loaded CPUs (up to 12 s
    // was seen here at a load average of 15; 0.1-0.6 s on a quiet host).
    assert.ok(gapMs <= 20_000, `ping gap ${gapMs} ms (QEMU: downtime ${downtime} ms)\n${detail()}`);
    // The MAC is on the destination port, and the source port received nothing more.
    assert.ok(ts.sw.fdb().some((e) => e.mac === VM_MAC && e.port === "dst"), detail());
    assert.equal(ts.sw.port("src")!.counters.rx_packets, srcRx);
    assert.ok(ts.sw.port("dst")!.counters.rx_packets > 0);
    assert.ok(ts.sw.port("dst")!.counters.tx_packets > 0);
    return null;
  } catch (err) {
    // The destination guest's own crash report (guests[1] is the destination).
    const transcript = guests[1]?.transcript ?? "";
    const at = transcript.search(KERNEL_CRASH);
    if (at < 0) throw err;
    return `${transcript.slice(at, at + 1500)}\n(the check that failed: ${err})`;
  } finally {
    await Promise.all(guests.map((g) => g.kill()));
  }
}
