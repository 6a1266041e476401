// A guest's virtio_net_hdr is input like any other: headers that lie about the frame behind them
// (gso_size 0, csum_start past the frame, hdr_len beyond it, a GSO type not supported) drop that
// frame, counted as drop_bad_offload, and nothing else; frames after them still cross. A guest
// that negotiated no offload it could send (CSUM, HOST_TSO4/6) must zero the header: it is not
// read, and its frames cross as they are.
import assert from "node:assert/strict";
import { F_CSUM, F_HOST_TSO4, VhostFrontend } from "../peers/vhost_frontend.ts";
import { ethFrame, startSwitch } from "./helpers/frontend_harness.ts";
import { waitFor } from "./helpers/switch.ts";

const MAC_A = "52:54:00:00:0a:0a";
const MAC_B = "52:54:00:00:0b:0b";

/** flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (little-endian u16s). */
function hdr(
  flags: number,
  type: number,
  hdrLen: number,
  size: number,
  start: number,
  off: number,
) {
  const b = new Uint8Array(10);
  const v = new DataView(b.buffer);
  b[0] = flags;
  b[1] = type;
  v.setUint16(2, hdrLen, true);
  v.setUint16(4, size, true);
  v.setUint16(6, start, true);
  v.setUint16(8, off, true);
  return b;
}

Deno.test("lying virtio_net_hdr fields from a guest drop only that frame, counted", async () => {
  const h = await startSwitch([{ name: "a" }, { name: "b" }]);
  const a = await VhostFrontend.open(h.sock("a"), { features: [F_CSUM, F_HOST_TSO4] });
  const b = await VhostFrontend.open(h.sock("b"));
  try {
    b.postRxBuffers(32);
    const len = 300;
    const lies = [
      hdr(1, 1, 54, 0, 34, 16), // TCPv4 GSO with gso_size 0
      hdr(1, 0, 0, 0, len - 10, 16), // csum_start + csum_offset past the frame
      hdr(1, 0, 0, 0, 60000, 16), // csum_start far outside
      hdr(1, 1, 5000, 1448, 34, 16), // hdr_len beyond the frame
      hdr(1, 3, 42, 1400, 34, 6), // UFO: not supported
      hdr(0, 0x80, 0, 0, 0, 0), // ECN without a GSO type
    ];
    for (const [k, l] of lies.entries()) a.send(ethFrame(MAC_B, MAC_A, len, k), { hdr: l });
    const good = ethFrame(MAC_B, MAC_A, len, 99);
    a.send(good);
    const got = await b.waitFrames(1);
    assert.deepEqual(got, [good], "only the frame with an honest header crossed");
    await waitFor(
      "the drops to be counted",
      () => h.counters("a").drop_bad_offload === lies.length,
    );
    assert.equal(h.counters("b").tx_packets, 1);
  } finally {
    a.close();
    b.close();
    await h.stop();
  }
});

Deno.test("a guest without CSUM or HOST_TSO: its header is not read, its frames cross", async () => {
  const h = await startSwitch([{ name: "a" }, { name: "b" }]);
  const a = await VhostFrontend.open(h.sock("a"));
  const b = await VhostFrontend.open(h.sock("b"));
  try {
    b.postRxBuffers(32);
    const f = ethFrame(MAC_B, MAC_A, 300, 1);
    a.send(f, { hdr: hdr(1, 1, 5000, 0, 60000, 16) }); // every field a lie, and not read
    assert.deepEqual(await b.waitFrames(1), [f]);
    assert.equal(h.counters("a").drop_bad_offload, 0);
    assert.equal(h.counters("a").rx_csum_partial, 0);
  } finally {
    a.close();
    b.close();
    await h.stop();
  }
});
