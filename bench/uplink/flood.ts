// The traffic source of `deno task bench:uplink`: run inside the namespace (`ip netns exec`), it
// sends one fixed frame to `--dst` out of `--if` as fast as it can until it is killed (SIGTERM).
//   --via ring: the AF_PACKET port's own TX ring, bursts of 32 and one send() each (default)
//   --via send: a plain socket, one sendto() per frame
// Prints "flooding" once the socket is open, so the caller knows it started.
import { parseArgs } from "node:util";
import { bindToInterface, ifNameToIndex, openBoundSocket, sendFrame } from "../../ffi/packet.ts";
import { AfPacketPort } from "../../ports/af_packet/af_packet_port.ts";
import { createAfPacketDatapath } from "../../ports/af_packet/datapath.ts";
import { COUNTER_FIELDS } from "../../ports/counters.ts";
import { BURST, EgressFrame } from "../../ports/port.ts";

const { values: o } = parseArgs({
  options: {
    if: { type: "string" },
    len: { type: "string", default: "60" },
    dst: { type: "string", default: "02:00:00:00:00:01" },
    src: { type: "string", default: "02:00:00:00:00:99" },
    via: { type: "string", default: "ring" },
  },
});
if (!o.if) throw new Error("--if is required");
const mac = (s: string) => s.split(":").map((x) => parseInt(x, 16));
const frame = new Uint8Array(Number(o.len));
// Local experimental ethertype 0x88b5: nothing in the kernel answers or forwards it.
frame.set([...mac(o.dst), ...mac(o.src), 0x88, 0xb5]);
for (let i = 14; i < frame.length; i++) frame[i] = i & 0xff;

if (o.via === "send") {
  const fd = openBoundSocket(o.if);
  console.log("flooding");
  for (;;) {
    // EAGAIN (send buffer full) just means: try again.
    for (let i = 0; i < 4096; i++) sendFrame(fd, frame, frame.length);
  }
} else {
  const port = AfPacketPort.open({ name: "flood", interface: o.if }, {
    variant: "ring",
    linkPollMs: 0,
  });
  // Protocol 0: its RX ring takes no copies of what arrives, we only send.
  bindToInterface(port.spec.fd, ifNameToIndex(o.if), 0);
  const dp = createAfPacketDatapath(port.spec, new Float64Array(COUNTER_FIELDS));
  const whole = new EgressFrame().setWhole(frame, 0, frame.length);
  console.log("flooding");
  for (;;) {
    // A full ring (its slots still in flight) drops the frame here: the kernel frees slots
    // as the frames leave, so the next bursts find room again.
    for (let k = 0; k < BURST; k++) dp.transmit(frame, whole);
    dp.flush();
  }
}
