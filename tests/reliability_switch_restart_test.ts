// The switch restarts under running VMs. Two QEMU guests stay up the whole time: g1's NIC is on
// a client-mode port (QEMU listens with chardev server=on, the switch connects), g2's on a
// server-mode port (the switch listens, QEMU connects with reconnect=1). While g1 pings g2 every
// 100 ms, the switch process is stopped (SIGTERM, then SIGKILL in a second round) and started
// again on the same topology: it reconnects to g1, g2 re-attaches by itself, and the ping goes
// on without the guests being touched. Each round reports pings lost, the longest run of
// unanswered pings, the worst round trip, and the time from the signal to both ports running.
// The same with DPDK testpmd's virtio-user in server mode (server=1) on a client-mode port: it
// keeps running across the restarts, and frames pass both ways after each one.
import assert from "node:assert/strict";
import { VhostFrontend } from "../peers/vhost_frontend.ts";
import { bootGuest, type Guest, guestToolsAvailable, READY_MARKER } from "../peers/qemu.ts";
import { parsePing, pingAll } from "./helpers/ping.ts";
import { macString, seqFrame, sleep, SwitchRig, until } from "./helpers/reliability.ts";
import { Testpmd, testpmdAvailable, virtioUserVdev } from "../peers/testpmd.ts";

const missing = guestToolsAvailable();
if (missing) console.warn(`SKIPPING switch restart tests with QEMU: ${missing}`);
const testpmdMissing = testpmdAvailable();
if (testpmdMissing) console.warn(`SKIPPING switch restart test with testpmd: ${testpmdMissing}`);

const MAC1 = "52:54:00:00:07:01";
const MAC2 = "52:54:00:00:07:02";
const PINGS = 80;
const INTERVAL_S = 0.1;

Deno.test({
  name: "switch restart (SIGTERM, SIGKILL) under running guests: client and server ports recover",
  ignore: missing !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using rig = await SwitchRig.start({
      name: "restart",
      ports: [
        { name: "vm1", type: "vhost-user", socket: "$DIR/vm1.sock", mode: "client" },
        { name: "vm2", type: "vhost-user", socket: "$DIR/vm2.sock", mode: "server" },
      ],
    });
    const guests: Guest[] = [];
    try {
      guests.push(
        ...await Promise.all([
          bootGuest({
            name: "rs1",
            // Packed virtqueues on g1: after a restart the switch must find where the ring
            // stands (QEMU cannot tell it: it resends its initial base).
            nics: [{ socket: rig.sock("vm1"), mac: MAC1, server: true, deviceOpts: "packed=on" }],
            ip: "10.0.7.1/24",
          }),
          bootGuest({
            name: "rs2",
            nics: [{ socket: rig.sock("vm2"), mac: MAC2, reconnect: 1 }],
            ip: "10.0.7.2/24",
          }),
        ]),
      );
      const [g1, g2] = guests;
      await pingAll(g1, "10.0.7.2", { count: 2 });
      assert.ok((await rig.port("vm1")).features?.includes("RING_PACKED"));
      // Enough traffic that both of g1's rings wrap (256 entries, ~730 full frames each way)
      // before the first restart, so the wrap counters matter when it resumes.
      const serve = "mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/f bs=1024 count=1024" +
        " 2>/dev/null && httpd -p 8080 -h /tmp/www";
      await Promise.all([g1.check(serve), g2.check(serve)]);
      await g2.check("wget -q -O /dev/null http://10.0.7.1:8080/f", 120_000);
      await g1.check("wget -q -O /dev/null http://10.0.7.2:8080/f", 120_000);
      const pids = guests.map((g) => g.pid);

      for (const signal of ["SIGTERM", "SIGKILL"] as const) {
        await t.step(`${signal}, then start again`, async () => {
          const pinging = g1.run(
            `ping -i ${INTERVAL_S} -c ${PINGS} -W 1 10.0.7.2`,
            PINGS * INTERVAL_S * 1000 + 60_000,
          );
          await sleep(2000);
          const oldPid = rig.pid;
          const t0 = performance.now();
          const { status, ms: stopMs } = await rig.stop(signal);
          await rig.spawn();
          const listening = performance.now() - t0;
          const [vm1Ms, vm2Ms] = await Promise.all(["vm1", "vm2"].map(async (p) => {
            await rig.waitRunning(p, 20_000);
            return performance.now() - t0;
          }));
          const recoverMs = Math.max(vm1Ms, vm2Ms);
          const ping = parsePing((await pinging).output);
          const answeredLast = ping.seqs.filter((s) => s >= PINGS - 20).length;
          console.log(
            `  ${signal}: exit ${status.signal ?? `code ${status.code}`} after ${
              stopMs.toFixed(0)
            } ms; after the signal: new switch listening ${listening.toFixed(0)} ms, vm1 ` +
              `(client mode) running ${vm1Ms.toFixed(0)} ms, vm2 (server mode, QEMU ` +
              `reconnect=1) running ${vm2Ms.toFixed(0)} ms; g1 -> g2 ping every ${
                INTERVAL_S * 1000
              } ms: ${ping.lost} of ${ping.transmitted} lost, longest unanswered run ${ping.longestLossRun}, worst round trip ${
                ping.maxRttMs.toFixed(0)
              } ms`,
          );
          if (signal === "SIGTERM") assert.equal(status.code, 0, rig.log());
          else assert.equal(status.signal, "SIGKILL");
          assert.notEqual(rig.pid, oldPid);
          assert.ok(recoverMs < 10_000, `both ports running only after ${recoverMs} ms`);
          assert.equal(ping.transmitted, PINGS);
          assert.ok(ping.lost <= 30, `${ping.lost} pings lost (more than 3 s of outage)`);
          assert.equal(answeredLast, 20, "traffic resumed: the last 20 pings were answered");
          // The guests were not touched: same QEMU processes, never rebooted.
          assert.deepEqual(guests.map((g) => g.pid), pids);
          for (const g of guests) {
            assert.equal(g.transcript.split(READY_MARKER).length, 2, `${g.name} rebooted`);
          }
          const ports = await Promise.all(["vm1", "vm2"].map((p) => rig.port(p)));
          assert.deepEqual(ports.map((p) => [p.state, p.counters.connections]), [
            ["connected", 1],
            ["connected", 1],
          ]);
          await pingAll(g2, "10.0.7.1", { count: 2 });
          await until("both MACs learned by the new switch", async () => {
            const fdb = (await rig.fdb()).map((e) => `${e.mac}@${e.port}`).sort();
            return fdb.join() === [`${MAC1}@vm1`, `${MAC2}@vm2`].join();
          }, 5000);
        });
      }
      for (const g of guests) {
        const dmesg = await g.dmesg();
        assert.doesNotMatch(dmesg, /virtio.*(error|broken|failed)|id \d+ is not a head/i, dmesg);
      }
    } finally {
      await Promise.allSettled(guests.map((g) => g.shutdown()));
    }
  },
});

const PMD_MAC = "02:00:00:00:0d:03";
const PEER_MAC = "52:54:00:00:07:09";

interface Exchange {
  what: string;
  /** Frames from testpmd at the peer after one `start tx_first` (one burst: 32). */
  burst: number;
  /** Of 10 frames the peer sent to testpmd, how many testpmd received. */
  delivered: number;
  counters: Record<string, number>;
  /** Frames the new switch took from testpmd before testpmd sent anything new. */
  resent: number;
}

// DPDK virtio-user in server mode (server=1) reconnects to a restarted switch and sends
// SET_VRING_BASE 0 for rings whose indexes are far past 0. Like DPDK's vhost library, the switch
// resumes such a ring at its used index; once it took the 0 as is, re-sent old frames and could
// never deliver to testpmd again. The last step checks that this stays fixed.
// With packed_vq=1 testpmd resets its rings when it reconnects (DPDK drops what was in flight)
// and sends a fresh base; the switch must not mistake the stale descriptors for a position.
for (const packed of [false, true]) {
  Deno.test({
    name: `switch restart (SIGTERM, SIGKILL) under testpmd virtio-user server=1${
      packed ? ", packed_vq=1" : ""
    }: it reconnects`,
    ignore: testpmdMissing !== null,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn(t) {
      await using rig = await SwitchRig.start({
        name: "restart-pmd",
        ports: [
          { name: "pmd", type: "vhost-user", socket: "$DIR/pmd.sock", mode: "client" },
          { name: "peer", type: "vhost-user", socket: "$DIR/peer.sock" },
        ],
      });
      let peer: VhostFrontend | null = null;
      const pmd = await Testpmd.launch({
        name: "server-mode",
        lcores: "0@1,1@0",
        totalNumMbufs: 2048,
        vdevs: [
          virtioUserVdev({
            index: 0,
            path: rig.sock("pmd"),
            mac: PMD_MAC,
            server: true,
            packedVq: packed,
          }),
        ],
        args: ["--forward-mode=rxonly"],
      });
      const results: Exchange[] = [];
      try {
        await pmd.waitLinkUp([0]);
        /** testpmd sends one burst to a fresh TS front-end, which sends 10 frames back. */
        const exchange = async (what: string, resent = 0) => {
          peer?.close();
          peer = await VhostFrontend.open(rig.sock("peer"));
          const fe = peer;
          fe.postRxBuffers(128);
          const [pmdTx0] = await pmd.portStats();
          const taken0 = (await rig.port("pmd")).counters.rx_packets;
          const handed0 = (await rig.port("peer")).counters.tx_packets;
          await pmd.cmd("start tx_first");
          let burst = 0;
          // Settled once testpmd's burst left, the switch took at least that many frames from
          // testpmd's ring, and the peer holds every frame the switch handed it. A frame sent
          // twice then shows as more taken than testpmd sent, or more than 32 at the peer.
          await until(`${what}: testpmd's burst at the peer, everything handed over`, async () => {
            for (const f of fe.receive()) if (macString(f, 6) === PMD_MAC) burst++;
            const sent = (await pmd.portStats())[0].txPackets - pmdTx0.txPackets;
            const taken = (await rig.port("pmd")).counters.rx_packets - taken0;
            const handed = (await rig.port("peer")).counters.tx_packets - handed0;
            return sent >= 32 && taken >= sent && handed === burst && burst >= 32;
          }, 10_000);
          const sent = (await pmd.portStats())[0].txPackets - pmdTx0.txPackets;
          const taken = (await rig.port("pmd")).counters.rx_packets - taken0;
          assert.equal(
            taken,
            sent,
            `${what}: the switch took ${taken} frames, testpmd sent ${sent}`,
          );
          const [before] = await pmd.portStats();
          for (let i = 0; i < 10; i++) fe.send(seqFrame(PMD_MAC, PEER_MAC, 6, i, 80));
          const delivered = async () => (await pmd.portStats())[0].rxPackets - before.rxPackets;
          await until(`${what}: 10 frames at testpmd`, async () => await delivered() >= 10, 10_000)
            .catch(() => {});
          await pmd.cmd("stop");
          const r = {
            what,
            resent,
            burst,
            delivered: await delivered(),
            counters: (await rig.port("pmd")).counters,
          };
          results.push(r);
          return r;
        };
        const first = await exchange("before the restarts");
        assert.equal(first.burst, 32);
        assert.equal(first.delivered, 10);
        for (const signal of ["SIGTERM", "SIGKILL"] as const) {
          const t0 = performance.now();
          const { status } = await rig.stop(signal);
          await rig.spawn();
          await rig.waitRunning("pmd", 20_000);
          const runningMs = performance.now() - t0;
          await pmd.waitLinkUp([0], 20_000);
          const linkMs = performance.now() - t0;
          await sleep(300);
          const resent = (await rig.port("pmd")).counters.rx_packets;
          const r = await exchange(`after ${signal}`, resent);
          console.log(
            `  ${signal} (exit ${status.signal ?? status.code}): the new switch reconnected to ` +
              `testpmd ${runningMs.toFixed(0)} ms after the signal, testpmd link up after ${
                linkMs.toFixed(0)
              } ms; frames it had sent before, taken again: ${r.resent}; one new burst from ` +
              `testpmd arrived as ${r.burst} frames, ${r.delivered} of 10 ` +
              `frames reached testpmd (switch: drop_no_buffer ${r.counters.drop_no_buffer})`,
          );
          assert.ok(runningMs < 10_000, `reconnected after ${runningMs} ms`);
          assert.equal(r.counters.connections, 1);
          assert.ok(r.burst >= 32, "testpmd's frames reach the switch again");
          assert.ok(!pmd.exited, "testpmd kept running");
        }
        await t.step({
          name: "no frame sent twice, and frames reach testpmd again after the restart",
          fn() {
            assert.deepEqual(
              results.map((r) => [r.what, r.resent, r.burst, r.delivered]),
              results.map((r) => [r.what, 0, 32, 10]),
            );
          },
        });
      } finally {
        (peer as VhostFrontend | null)?.close();
        await pmd.quit();
      }
    },
  });
}
