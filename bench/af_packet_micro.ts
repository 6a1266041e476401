// AF_PACKET port: TPACKET_V3 rings vs one syscall per frame, on a veth pair into a namespace.
//   drain:  the namespace fills the receive side, then we time receive()+release() alone
//   stream: a Worker floods from inside the namespace while this thread receives
//   tx:     transmit() bursts of 32 + flush() into the veth
// Run as root: deno run --allow-all bench/af_packet_micro.ts [seconds-per-stream-case]
import { libc } from "../ffi/libc.ts";
import { check } from "../ffi/errno.ts";
import { cString } from "../ffi/mem.ts";
import { bindToInterface, ifNameToIndex } from "../ffi/packet.ts";
import { AfPacketPort } from "../ports/af_packet/af_packet_port.ts";
import { createAfPacketDatapath } from "../ports/af_packet/datapath.ts";
import { COUNTER_FIELDS, DROP_NO_BUFFER } from "../ports/counters.ts";
import { BURST, type DatapathPort, EgressFrame, FrameBatch } from "../ports/port.ts";
import { createVethNetns, netnsSkipReason } from "../peers/netns.ts";

type Variant = "ring" | "syscall";

function frame(len: number): Uint8Array {
  const f = new Uint8Array(len);
  f.set([0x02, 0, 0, 0, 0, 0x99, 0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5]);
  return f;
}
const whole = (f: Uint8Array): EgressFrame => new EgressFrame().setWhole(f, 0, f.length);

function open(ifname: string, variant: Variant): { port: AfPacketPort; dp: DatapathPort } {
  const port = AfPacketPort.open({ name: "bench", interface: ifname }, { variant, linkPollMs: 0 });
  return { port, dp: createAfPacketDatapath(port.spec, new Float64Array(COUNTER_FIELDS)) };
}

/** Sends `count` frames through a datapath in bursts; returns how many the ring took. */
function blast(dp: DatapathPort, f: Uint8Array, count: number): number {
  const e = whole(f);
  let sent = 0;
  for (let i = 0; i < count; i += BURST) {
    for (let k = 0; k < BURST && i + k < count; k++) if (dp.transmit(f, e)) sent++;
    dp.flush();
  }
  return sent;
}

// --- Worker side: flood from inside the namespace until told to stop. ---
interface FloodMsg {
  netns: string;
  ifname: string;
  len: number;
  stop: SharedArrayBuffer;
}
interface WorkerScope {
  onmessage: (e: MessageEvent<FloodMsg>) => void;
  postMessage(value: unknown): void;
}
if (new URL(import.meta.url).searchParams.has("flood")) {
  const scope = self as unknown as WorkerScope;
  scope.onmessage = (e) => {
    const { netns, ifname, len, stop } = e.data;
    // setns(2) moves only this Worker's thread into the namespace.
    const fd = check("open", libc.open(cString(`/run/netns/${netns}`), 0o2000000));
    check("setns", libc.setns(fd, 0x40000000));
    libc.close(fd);
    const { port, dp } = open(ifname, "ring");
    const flag = new Int32Array(stop);
    const f = frame(len);
    let sent = 0;
    while (Atomics.load(flag, 0) === 0) sent += blast(dp, f, 1024);
    port.close();
    scope.postMessage(sent);
  };
} else if (import.meta.main) {
  await main();
}

/** Receives until a burst comes back empty: everything that was waiting. */
function drain(dp: DatapathPort, batch: FrameBatch): number {
  let got = 0;
  for (;;) {
    const n = dp.receive(batch);
    dp.release();
    if (n === 0) return got;
    got += n;
  }
}

async function main(): Promise<void> {
  const skip = netnsSkipReason();
  if (skip) {
    console.log(`af_packet_micro: skipped: ${skip}`);
    return;
  }
  const seconds = Number(Deno.args[0] ?? 2);
  await using ns = await createVethNetns();
  // The namespace side only sends: rebound to protocol 0 its RX ring takes no copies of our TX.
  const sender = ns.inside(() => {
    const s = open(ns.nsIf, "ring");
    bindToInterface(s.port.spec.fd, ifNameToIndex(ns.nsIf), 0);
    return s;
  });
  const batch = new FrameBatch();
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const row = (name: string, frames: number, ms: number, extra = "") =>
    console.log(
      `${name.padEnd(30)} ${(frames / ms / 1000).toFixed(3).padStart(7)} Mframes/s ${
        (ms * 1e6 / frames).toFixed(0).padStart(6)
      } ns/frame  ${extra}`,
    );

  const median = (xs: number[]) => xs.sort((a, b) => a - b)[xs.length >> 1];

  console.log(`veth ${ns.hostIf} <-> ${ns.nsIf} (netns ${ns.name}), 60-byte and 1514-byte frames`);
  for (const variant of ["ring", "syscall"] as Variant[]) {
    for (const len of [60, 1514]) {
      const { port, dp } = open(ns.hostIf, variant);
      const c = (dp as unknown as { counters: Float64Array }).counters;
      const f = frame(len);
      // Drain: what the receive side alone costs per frame, the frames already waiting (2000
      // a round: the syscall variant's 8 MiB socket buffer holds them too). Median of rounds.
      const perFrame: number[] = [];
      for (let round = -3; round < 20; round++) { // three rounds to warm the JIT up
        blast(sender.dp, f, 2000);
        await sleep(15); // the V3 retire timer hands the last block over
        const t0 = performance.now();
        const n = drain(dp, batch);
        if (round >= 0) perFrame.push((performance.now() - t0) * 1e6 / n);
      }
      const ns1 = median(perFrame);
      console.log(
        `rx drain  ${variant.padEnd(7)} ${String(len).padStart(4)}B  ${
          (1e3 / ns1).toFixed(2).padStart(6)
        } Mframes/s ${ns1.toFixed(0).padStart(5)} ns/frame (median of 20 rounds of 2000)`,
      );

      // Stream: a Worker floods from the namespace while this thread polls.
      const stop = new SharedArrayBuffer(4);
      const worker = new Worker(new URL("?flood", import.meta.url), { type: "module" });
      const sent = new Promise<number>((r) => worker.onmessage = (e) => r(e.data));
      worker.postMessage({ netns: ns.name, ifname: ns.nsIf, len, stop });
      let polls = 0;
      let empty = 0;
      const poll = (ms: number) => {
        const t0 = performance.now();
        let got = 0;
        polls = empty = 0;
        while (performance.now() - t0 < ms) {
          for (let i = 0; i < 1000; i++) {
            const n = dp.receive(batch);
            dp.release();
            got += n;
            if (n === 0) empty++;
          }
          polls += 1000;
        }
        return got;
      };
      await sleep(100); // the Worker starts...
      poll(300); // ...and floods for a while before we count
      const k0 = port.kernelStats();
      const t0 = performance.now();
      const got = poll(seconds * 1000);
      const t1 = performance.now();
      const k1 = port.kernelStats();
      Atomics.store(new Int32Array(stop), 0, 1);
      const total = await sent;
      worker.terminate();
      const arrived = k1.packets - k0.packets;
      row(
        `rx stream ${variant} ${len}B`,
        got,
        t1 - t0,
        `kernel drops ${k1.drops - k0.drops} of ${arrived}; flooder ${
          (total / (seconds + 0.4) / 1e6).toFixed(3)
        } Mframes/s; ${(100 * empty / polls).toFixed(1)}% of polls found nothing`,
      );

      // Transmit: bursts of 32 + one flush (ring) or 32 sends (syscall), kernel work included.
      const t2 = performance.now();
      let tx = 0;
      while (performance.now() - t2 < seconds * 1000) tx += blast(dp, f, 1024);
      row(`tx ${variant} ${len}B`, tx, performance.now() - t2, `ring full ${c[DROP_NO_BUFFER]}`);
      if (variant === "ring") {
        // The userspace half alone: fill 416 slots (13 bursts), kick outside the clock.
        const e = whole(f);
        const perFill: number[] = [];
        for (let round = 0; round < 50; round++) {
          const t3 = performance.now();
          for (let i = 0; i < 416; i++) dp.transmit(f, e);
          perFill.push((performance.now() - t3) * 1e6 / 416);
          dp.flush();
          await sleep(1);
        }
        const best = Math.min(...perFill).toFixed(0);
        console.log(
          `tx enqueue ring  ${len}B: ${median(perFill).toFixed(0)} ns/frame median, ${best} best`,
        );
      }
      port.close();
    }
  }
  sender.port.close();
}
