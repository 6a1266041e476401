// The VXLAN port's datapath cost per frame on this thread, over loopback: one port sends
// bursts of 32 frames (copy behind the header, one sendmmsg per burst) to a second port that
// receives them (recvmmsg, checks, learning, checksum detection). The kernel's UDP work is
// included in both; no switch, no Workers.
//
//   deno run --allow-all bench/vxlan_micro.ts [frame bytes, default 1464] [seconds, default 3]
//   deno run --allow-all bench/vxlan_micro.ts gso [seconds]
//
// `gso`: a 64000-byte TCP/IPv4 TSO super-frame per transmit, cut in software into segments for
// the inner MTU 1450 before encapsulation (ports/offload/ fallback), all sent with one sendmmsg.
import { VxlanDatapath } from "../ports/vxlan/datapath.ts";
import { VxlanPort } from "../ports/vxlan/vxlan_port.ts";
import { BURST, EgressFrame, FrameBatch } from "../ports/port.ts";
import {
  COUNTER_FIELDS,
  DROP_NO_BUFFER,
  GSO_SEGMENTED,
  RX_PACKETS,
  TX_PACKETS,
} from "../ports/counters.ts";
import { OFFLOAD_CSUM, OFFLOAD_TSO4 } from "../ports/offload/virtio_net_hdr.ts";
import { Fdb } from "../switch/fdb.ts";

const gso = Deno.args[0] === "gso";
const size = gso ? 54 + 64000 : Number(Deno.args[0] ?? 1464);
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
    mtu: gso ? 1450 : 8950,
  }, table);
  const c = new Float64Array(COUNTER_FIELDS);
  return { port, c, dp: new VxlanDatapath(port.spec, c, Fdb.attach(table.buffer), true) };
}

const a = open("127.0.0.1", "127.0.0.2");
const b = open("127.0.0.2", "127.0.0.1");
const frame = new Uint8Array(size);
frame.set([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x88, 0xb5]);
if (gso) {
  // IPv4 (total length of the whole super-frame) + TCP, checksum left partial.
  const total = size - 14;
  frame.set([0x08, 0x00], 12);
  frame.set([0x45, 0, total >>> 8, total & 0xff, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1], 14);
  frame.set([10, 0, 0, 2, 0x30, 0x39, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18], 30);
}
const layout = new EgressFrame();
/** The frame to send, as the bridge would hand it on (a TSO super-frame with `gso`). */
function describe(): EgressFrame {
  layout.setWhole(frame, 0, size);
  if (gso) {
    layout.offload = OFFLOAD_TSO4 | OFFLOAD_CSUM;
    layout.csumStart = 34;
    layout.csumOffset = 16;
    layout.gsoSize = 1398;
  }
  return layout;
}
const batch = new FrameBatch();
let txMs = 0;
let rxMs = 0;
const end = performance.now() + seconds * 1000;
while (performance.now() < end) {
  const t0 = performance.now();
  for (let i = 0; i < (gso ? 1 : BURST); i++) a.dp.transmit(frame, describe());
  a.dp.flush();
  const t1 = performance.now();
  while (b.dp.receive(batch) > 0) b.dp.release();
  rxMs += performance.now() - t1;
  txMs += t1 - t0;
}
const tx = a.c[TX_PACKETS];
const rx = b.c[RX_PACKETS];
if (gso) {
  const n = a.c[GSO_SEGMENTED];
  console.log(
    `${n} TSO super-frames of 64000 B payload: ${(txMs * 1000 / n).toFixed(0)} us each ` +
      `(segment, encapsulate, sendmmsg of ${(tx / n).toFixed(0)} datagrams), ` +
      `${
        (n * 64000 * 8 / (txMs + rxMs) / 1e6).toFixed(2)
      } Gbit/s of payload on one thread, both ends`,
  );
}
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
