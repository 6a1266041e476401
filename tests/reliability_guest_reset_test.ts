// A guest resets its NIC or reboots while the switch runs (as its own process, measured from
// /proc). Two QEMU guests ping each other through it:
// - g1 unbinds its virtio_net driver (sysfs) and binds it again, three times: each time the
//   switch stops the port's rings (no queue runs, the kick eventfds are closed) and, once the
//   driver is back, the same vhost-user connection runs again; the switch's fds, eventfds and
//   guest-memory mappings end where they started, and g1 pings g2 again;
// - g1 is reset through QMP (`system_reset`: the whole guest reboots and its init runs again)
//   while g2 pings it every 200 ms: the rings stop, come back when the rebooted driver starts,
//   nothing leaks, and the ping resumes. Each case reports its time to recover.
import assert from "node:assert/strict";
import { parsePing, pingAll } from "./helpers/ping.ts";
import { bootGuest, type Guest, guestToolsAvailable, READY_MARKER } from "../peers/qemu.ts";
import {
  formatStats,
  qmp,
  settledStats,
  sleep,
  SwitchRig,
  until,
  waitForBaseline,
} from "./helpers/reliability.ts";

const missing = guestToolsAvailable();
if (missing) console.warn(`SKIPPING guest reset tests: ${missing}`);

const MAC1 = "52:54:00:00:06:01";
const MAC2 = "52:54:00:00:06:02";
const IP1 = "10.0.6.1";
const IP2 = "10.0.6.2";

/** Inside a guest: ping `ip` once a second until it answers (at most `tries`); prints tries. */
const pingUntil = (ip: string, tries: number) =>
  `i=1; until ping -c 1 -W 1 ${ip} >/dev/null 2>&1; do ` +
  `[ $i -ge ${tries} ] && exit 1; i=$((i + 1)); done; echo tries=$i`;

Deno.test({
  name: "guest NIC driver reset and guest reboot: rings stop, nothing leaks, traffic resumes",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using rig = await SwitchRig.start({
      name: "reset",
      ports: ["vm1", "vm2"].map((name) => ({
        name,
        type: "vhost-user",
        socket: `$DIR/${name}.sock`,
      })),
    });
    const qmpSocket = `${rig.dir}/g1.qmp`;
    const guests: Guest[] = [];
    try {
      guests.push(
        ...await Promise.all([
          bootGuest({
            name: "rr1",
            nics: [{ socket: rig.sock("vm1"), mac: MAC1 }],
            ip: `${IP1}/24`,
            qmp: qmpSocket,
            allowReboot: true,
          }),
          bootGuest({
            name: "rr2",
            nics: [{ socket: rig.sock("vm2"), mac: MAC2 }],
            ip: `${IP2}/24`,
          }),
        ]),
      );
      const [g1, g2] = guests;
      await pingAll(g1, IP2, { count: 2 });
      await sleep(300);
      const base = await settledStats(rig.pid);
      console.log(`  switch with both guests running: ${formatStats(base)}`);
      const dev = (await g1.check("basename $(readlink /sys/class/net/eth0/device)")).trim();
      assert.match(dev, /^virtio\d+$/);

      await t.step("virtio_net unbind / bind in the guest, 3 times", async () => {
        for (let cycle = 1; cycle <= 3; cycle++) {
          const t0 = performance.now();
          await g1.check(`echo ${dev} > /sys/bus/virtio/drivers/virtio_net/unbind`);
          const stopped = await rig.waitPort("vm1", (p) => p.queues.length === 0, "rings stopped");
          const stopMs = performance.now() - t0;
          const down = rig.proc();
          assert.equal(stopped.state, "connected", "the vhost-user connection stays");
          assert.ok(
            down.eventfds < base.eventfds,
            `kick eventfds closed when the rings stopped: ${formatStats(down)}`,
          );
          assert.doesNotMatch(await g1.check("ls /sys/class/net"), /eth0/);

          const t1 = performance.now();
          await g1.check(
            `echo ${dev} > /sys/bus/virtio/drivers/virtio_net/bind && ` +
              `ip addr add ${IP1}/24 dev eth0 && ip link set eth0 up`,
          );
          const ping = await g1.run(pingUntil(IP2, 30), 60_000);
          const recoverMs = performance.now() - t1;
          assert.equal(ping.code, 0, `no ping after the driver came back:\n${ping.output}`);
          await pingAll(g1, IP2); // and once it answers, nothing is lost
          const after = await waitForBaseline(rig.pid, base, `driver reset ${cycle}`);
          const port = await rig.port("vm1");
          console.log(
            `  cycle ${cycle}: rings stopped ${stopMs.toFixed(0)} ms after unbind (` +
              `${down.eventfds} eventfds, ${down.memfdMaps} memfd mappings while unbound); ` +
              `ping answered ${recoverMs.toFixed(0)} ms after bind (${ping.output.trim()}); ` +
              `then ${formatStats(after)}`,
          );
          assert.ok(recoverMs < 15_000, `recovery took ${recoverMs} ms`);
          assert.equal(port.counters.connections, 1, "no reconnection was needed");
          assert.ok(port.queues.length > 0);
        }
      });

      await t.step("QMP system_reset: the guest reboots and runs init again", async () => {
        const interval = 0.2;
        await g2.check(`ping -i ${interval} -W 1 ${IP1} > /tmp/reset-ping.log 2>&1 &`);
        await sleep(2000);
        const t0 = performance.now();
        await qmp(qmpSocket, "system_reset");
        const stopped = await rig.waitPort("vm1", (p) => p.queues.length === 0, "rings stopped");
        const stopMs = performance.now() - t0;
        const down = rig.proc();
        await rig.waitRunning("vm1", 60_000);
        const runMs = performance.now() - t0;
        await until(
          "g1 to print its ready marker again",
          () => g1.transcript.split(READY_MARKER).length === 3,
          60_000,
          50,
        );
        const readyMs = performance.now() - t0;
        await sleep(3000); // ~15 more pings once the guest is back
        const ping = parsePing(
          await g2.check("kill -INT $(pidof ping); sleep 0.5; cat /tmp/reset-ping.log"),
        );
        const after = await waitForBaseline(rig.pid, base, "after the reboot");
        const port = await rig.port("vm1");
        console.log(
          `  system_reset: rings stopped after ${stopMs.toFixed(0)} ms (${formatStats(down)}); ` +
            `running again after ${(runMs / 1000).toFixed(1)} s, guest ready after ${
              (readyMs / 1000).toFixed(1)
            } s; g2 -> g1 ping every ${interval * 1000} ms: ${ping.lost} of ${ping.transmitted} ` +
            `lost, longest unanswered run ${ping.longestLossRun} (${
              (ping.longestLossRun * interval).toFixed(1)
            } s), ${ping.answeredAfterLossRun} answered after it; then ${formatStats(after)}`,
        );
        assert.equal(stopped.state, "connected");
        assert.ok(down.eventfds < base.eventfds, `kick eventfds closed: ${formatStats(down)}`);
        assert.equal(port.counters.connections, 1, "the vhost-user connection survived the reboot");
        assert.ok(ping.transmitted >= 40, `only ${ping.transmitted} pings sent`);
        assert.ok(ping.longestLossRun > 0, "the reboot was seen by the ping");
        assert.ok(
          ping.answeredAfterLossRun >= 10,
          `ping answered again after the reboot: ${ping.answeredAfterLossRun} replies`,
        );
        assert.ok(ping.longestLossRun * interval < 60, "recovered within a minute");
        await pingAll(g1, IP2, { count: 2 });
        const fdb = (await rig.fdb()).map((e) => `${e.mac}@${e.port}`).sort();
        assert.deepEqual(fdb, [`${MAC1}@vm1`, `${MAC2}@vm2`]);
      });
      const dmesg = await g2.dmesg();
      assert.doesNotMatch(dmesg, /virtio.*(error|broken|failed)|id \d+ is not a head/i, dmesg);
    } finally {
      await Promise.allSettled(guests.map((g) => g.shutdown()));
    }
  },
});
