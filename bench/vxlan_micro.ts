// The VXLAN port's datapath cost per frame on this thread, over loopback: one port sends
// bursts of 32 frames (copy behind the header, one sendmmsg per burst) to a second port that
// receives them (recvmmsg, checks, learning, checksum detection). The kernel's UDP work is
// included in both; no switch, no Workers.
//
//   deno run --allow-all bench/vxlan_micro.ts [frame bytes, default 1464] [seconds, default 3]
import { VxlanDatapath } from "../ports/vxlan/datapath.ts";
import { VxlanPort } from "../ports/vxlan/vxlan_port.ts";
import { BURST, EgressFrame, FrameBatch } from "../ports/port.ts";
import { COUNTER_FIELDS, DROP_NO_BUFFER, RX_PACKETS, TX_PACKETS } from "../ports/counters.ts";
import { Fdb } from "../switch/fdb.ts";

const size = Number(Deno.args[0] ?? 1464);
const seconds = Number(Deno.args[1] ?? 3);
const udpPort = 40000 + Math.floor(Math.random() * 20000);

function open(local: string, remote: string) {
  const table = Fdb.create({ capacity: 1024 });
  const port = VxlanPort.open({
    name: local,
    vni: 42,
    local,
    remotes: [remote],
    udpPort,
    remoteMacs: [],
    strict: false,
    mtu: 8950,
  }, table);
  const c = new Float64Array(COUNTER_FIELDS);
  return { port, c, dp: new VxlanDatapath(port.spec, c, Fdb.attach(table.buffer), true) };
}

const a = open("127.0.0.1", "127.0.0.2");
const b = open("127.0.0.2", "127.0.0.1");
const frame = new Uint8Array(size);
frame.set([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x88, 0xb5]);
const layout = new EgressFrame().setWhole(frame, 0, size);
const batch = new FrameBatch();
let txMs = 0;
let rxMs = 0;
const end = performance.now() + seconds * 1000;
while (performance.now() < end) {
  const t0 = performance.now();
  for (let i = 0; i < BURST; i++) a.dp.transmit(frame, layout);
  a.dp.flush();
  const t1 = performance.now();
  while (b.dp.receive(batch) > 0) b.dp.release();
  rxMs += performance.now() - t1;
  txMs += t1 - t0;
}
const tx = a.c[TX_PACKETS];
const rx = b.c[RX_PACKETS];
console.log(
  `${size} B frames: sent ${tx} (${
    a.c[DROP_NO_BUFFER]
  } dropped, socket buffer full), received ${rx}; ` +
    `transmit ${(txMs * 1e6 / tx).toFixed(0)} ns/frame, receive ${
      (rxMs * 1e6 / Math.max(rx, 1)).toFixed(0)
    } ns/frame ` +
    `(${(tx / (txMs + rxMs)).toFixed(0)} kframes/s on one thread, both ends; load ${
      Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ")
    })`,
);
for (const p of [a, b]) {
  p.dp.close();
  p.port.close();
}
