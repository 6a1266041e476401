// The burst loop at the heart of a datapath worker: receive a burst from each polled port,
// ask the bridge where each frame goes, copy it out to every destination (VLAN tags applied
// during the copy), hand the burst back to the sender, and flush each destination once.
import { BURST, type DatapathPort, EgressFrame, FrameBatch, MAX_GSO_FRAME } from "../ports/port.ts";
import { DROP_LINK_DOWN } from "../ports/counters.ts";
import { copyMemory } from "../ffi/native_copy.ts";
import { copyBytes, wordView } from "../ports/copy.ts";
import { type Bridge, Decision, egressAgain } from "./bridge.ts";
import type { FlowCounter } from "./flows.ts";
import type { TapWriter } from "./tap.ts";
import type { IngressGuard } from "./port_guard.ts";
import { Clock } from "./token_bucket.ts";

/** Room for one frame of any size in the private copies, a multiple of 64 (alignment kept). */
const PRIVATE_SLOT = Math.ceil(MAX_GSO_FRAME / 64) * 64;

export interface PolledPort {
  index: number;
  port: DatapathPort;
}

export class Forwarder {
  /** Ports to receive from, in polling order. */
  polled: PolledPort[] = [];
  /**
   * The port being received from, and the one being sent to (-1: none), so that when a port's
   * code throws the worker knows which port to drop (switch/worker.ts).
   */
  polling = -1;
  sending = -1;
  /** Every port frames can be sent to, by port index (null: not running on this worker). */
  readonly targets: (DatapathPort | null)[];
  /** Per port, the captures running on it (usually none). */
  readonly taps: TapWriter[][];
  /**
   * Per port, its ingress guard (port security, storm control, policing, loop guard block); null
   * for a port with none of them, so such a port costs one null check per frame.
   */
  readonly guards: (IngressGuard | null)[];
  /** What storm control and the policers meter time with: read once per pass, not per frame. */
  readonly clock = new Clock();
  /** Whether anything on this worker meters time (the clock is only read then). */
  timed = false;
  readonly #batch = new FrameBatch();
  /**
   * Private copies of the frames a port guard reads, frame i at i * PRIVATE_SLOT: one buffer for
   * the whole burst, so the bridge and the transmitters, which keep the word view of the last
   * buffer they saw, find it again for every frame (a buffer per frame costs them a WeakMap
   * lookup each). Made when a guard first needs it.
   */
  #privateCopies: Uint8Array | null = null;
  /** The decision on the frame being forwarded, and that frame as sent out one port. */
  readonly decision: Decision;
  readonly #egress = new EgressFrame();
  /** A received frame as captures see it (reused). */
  readonly #rxFrame = new EgressFrame();
  readonly #touched: Uint8Array;
  /**
   * The ports touched in this burst, in order: flushing walks these, not every port number
   * (the switch has room for 64 ports, most bursts go to one or two).
   */
  readonly #touchedList: Int32Array;

  /** Counts what the datapath does per flow (flows.ts); null: not counted. */
  flows: FlowCounter | null = null;

  /** `counters[port]`: this worker's counter block of each port. */
  constructor(readonly bridge: Bridge, portCount: number, readonly counters: Float64Array[]) {
    this.targets = new Array(portCount).fill(null);
    this.taps = Array.from({ length: portCount }, () => []);
    this.guards = new Array(portCount).fill(null);
    this.decision = new Decision(portCount);
    this.#touched = new Uint8Array(portCount);
    this.#touchedList = new Int32Array(portCount);
  }

  #privateWords: Uint32Array = new Uint32Array(0);
  /** The buffer frames were last copied from, and its word view (null: not word-aligned). */
  #copiedFrom: Uint8Array | null = null;
  #copiedFromWords: Uint32Array | null = null;

  /** Copies frame i of the burst, src[off, off + len), into its private slot; returns where. */
  #copyPrivate(i: number, src: Uint8Array, off: number, len: number): number {
    let copies = this.#privateCopies;
    if (copies === null) {
      copies = this.#privateCopies = new Uint8Array(BURST * PRIVATE_SLOT);
      this.#privateWords = wordView(copies);
    }
    if (src !== this.#copiedFrom) {
      this.#copiedFrom = src;
      this.#copiedFromWords = src.byteOffset === 0 ? wordView(src) : null;
    }
    const at = i * PRIVATE_SLOT;
    const sw = this.#copiedFromWords;
    // Small frames go a word at a time (no call); copyBytes hands larger ones to memmove.
    if (sw !== null) copyBytes(copies, this.#privateWords, at, src, sw, off, len);
    else copyMemory(copies, at, src, off, len);
    return at;
  }

  /**
   * After a throw in the middle of a burst (the worker's recovery, before it releases the port
   * being received from): flushes the ports the burst reached, which may still read the
   * received bytes until then, and forgets them, so that the next bursts flush them again. A
   * port whose flush throws too is left to its next use.
   */
  abandonBurst(): void {
    // Rare: the flags are walked rather than the list, whose length poll() keeps in a local.
    const touched = this.#touched;
    for (let dst = 0; dst < touched.length; dst++) {
      if (touched[dst] === 0) continue;
      touched[dst] = 0;
      try {
        this.targets[dst]?.flush();
      } catch { /* reported when it fails again, in the loop */ }
    }
  }

  #sendRun(batch: FrameBatch, dst: number, from: number, to: number, skip: number): void {
    this.sending = dst;
    this.targets[dst]!.transmitRun!(batch, from, to, this.#egress, skip);
    this.sending = -1;
  }

  /** One pass over every polled port; returns the frames moved. */
  poll(now: number): number {
    let moved = 0;
    const batch = this.#batch;
    const decision = this.decision;
    const out = decision.ports;
    const egress = this.#egress;
    const bridge = this.bridge;
    const touched = this.#touched;
    const touchedList = this.#touchedList;
    const targets = this.targets;
    const taps = this.taps;
    const polled = this.polled;
    const guards = this.guards;
    const flows = this.flows;
    if (this.timed) this.clock.tick();
    let nTouched = 0;
    for (let p = 0; p < polled.length; p++) {
      const { index, port } = polled[p];
      this.polling = index;
      const n = port.receive(batch);
      if (n === 0) {
        port.release(); // chains refused as malformed still go back to the guest
        continue;
      }
      const rxTaps = taps[index];
      const guard = guards[index];
      // The port whose frame `egress` holds for the current decision (-1: none): a frame that
      // repeats the decision goes there with only its tail moved.
      let built = -1;
      // The run of frames [runFrom, runTo) waiting to go to runDst as `egress` (-1: none).
      let runDst = -1;
      let runFrom = 0;
      let runTo = 0;
      let runSkip = 0;
      if (flows !== null) flows.begin(index, now);
      for (let i = 0; i < n; i++) {
        let bytes = batch.bytes[i];
        let off = batch.offset[i];
        const len = batch.length[i];
        const offload = batch.offload[i];
        if (rxTaps.length !== 0) tapReceived(rxTaps, batch, i, this.#rxFrame);
        if (guard !== null && guard.readsFrame && bytes !== batch.scratch[i]) {
          // The guard checks bytes past the header the bridge copies (ARP, IP sources): from
          // here on the frame is a private copy, or a guest could rewrite it after the check.
          off = this.#copyPrivate(i, bytes, off, len);
          bytes = this.#privateCopies!;
          // A run sends from the batch: it holds the copy too.
          batch.bytes[i] = bytes;
          batch.offset[i] = off;
        }
        // The guard runs before the bridge learns: a spoofed source never reaches the FDB.
        if (guard !== null && !guard.admit(bytes, off, len)) continue;
        const k = bridge.decide(index, bytes, off, len, now, decision);
        if (!decision.repeated) built = -1;
        if (guard !== null && k > 0 && decision.flooded && !guard.admitFlood(bytes, off)) continue;
        // The decision of the frame before, again, to the same port (in this burst).
        const again = k === 1 && out[0] === built;
        if (flows !== null) {
          if (again) flows.again(len);
          else flows.count(decision, len);
        }
        if (again && offload === 0) {
          // The frame joins the run going there, or starts one if that port sends runs and no
          // capture watches it.
          if (runDst !== -1 && runTo === i) {
            runTo = i + 1;
            continue;
          }
          if (runDst !== -1) this.#sendRun(batch, runDst, runFrom, runTo, runSkip);
          const target = targets[built];
          runDst = -1;
          if (target !== null && target.transmitRun !== undefined && taps[built].length === 0) {
            runDst = built;
            runFrom = i;
            runTo = i + 1;
            runSkip = decision.headerLength;
            continue;
          }
        } else if (runDst !== -1) {
          this.#sendRun(batch, runDst, runFrom, runTo, runSkip);
          runDst = -1;
        }
        for (let j = 0; j < k; j++) {
          const dst = out[j];
          const target = targets[dst];
          if (target === null) {
            // Down, or between the two phases of a reconfiguration: dropped, and counted.
            this.counters[dst][DROP_LINK_DOWN]++;
            continue;
          }
          const frame = dst === built
            ? egressAgain(decision, egress)
            : bridge.egress(decision, dst, egress);
          built = k === 1 ? dst : -1;
          // The frame's offload facts go with it; a tag pushed or popped moves csum_start.
          frame.offload = offload;
          if (offload !== 0) {
            frame.csumStart = batch.csumStart[i] + frame.length - len;
            frame.csumOffset = batch.csumOffset[i];
            frame.gsoSize = batch.gsoSize[i];
          }
          if (touched[dst] === 0) {
            touched[dst] = 1;
            touchedList[nTouched++] = dst;
          }
          this.sending = dst;
          const sent = target.transmit(bytes, frame);
          this.sending = -1;
          if (!sent) continue;
          const txTaps = taps[dst];
          for (let t = 0; t < txTaps.length; t++) txTaps[t].writeEgress(bytes, frame);
        }
      }
      if (runDst !== -1) {
        this.#sendRun(batch, runDst, runFrom, runTo, runSkip);
        runDst = -1;
      }
      moved += n;
      if (flows !== null) flows.end();
      // Flushed before the burst goes back: a port may send from the received bytes where they
      // lie until its flush (a VXLAN port, a cut super-frame's payload).
      for (let t = 0; t < nTouched; t++) {
        const dst = touchedList[t];
        touched[dst] = 0;
        this.sending = dst;
        targets[dst]?.flush();
        this.sending = -1;
      }
      nTouched = 0;
      port.release();
    }
    return moved;
  }
}

/** Frame i of the batch into every receive capture of its port, as the wire would carry it. */
function tapReceived(taps: TapWriter[], batch: FrameBatch, i: number, f: EgressFrame): void {
  const src = batch.bytes[i];
  f.setWhole(src, batch.offset[i], batch.length[i]);
  f.offload = batch.offload[i];
  f.csumStart = batch.csumStart[i];
  f.csumOffset = batch.csumOffset[i];
  f.gsoSize = batch.gsoSize[i];
  for (let t = 0; t < taps.length; t++) taps[t].writeEgress(src, f);
}
