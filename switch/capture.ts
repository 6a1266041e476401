// Live captures: a pcap stream of the frames passing one port in both directions (as received,
// and as transmitted, tags included). Workers copy frames into their tap rings only while a
// capture runs; this side drains the rings and merges them in time order.
import type { Datapath } from "./datapath.ts";
import { concatBytes, pcapHeader, pcapRecord, TapReader } from "./tap.ts";
import type { CaptureOptions } from "./view.ts";

/** How long a capture waits when every worker's ring is empty. */
const IDLE_MS = 20;

export async function* captureStream(
  datapath: Datapath,
  index: number,
  opts: CaptureOptions,
  /** Aborted at shutdown: the stream ends as a valid pcap file. */
  shutdown: AbortSignal,
  /** Told how many frames a reader too slow for its port lost. */
  lost: (dropped: number) => void,
): AsyncGenerator<Uint8Array> {
  const maxFrames = opts.maxFrames ?? Infinity;
  const deadline = performance.now() + (opts.seconds ?? Infinity) * 1000;
  const signal = opts.signal;
  const rings = await datapath.addTap(index);
  try {
    yield pcapHeader();
    const readers = rings.map((r) => new TapReader(r));
    let frames = 0;
    while (
      frames < maxFrames && performance.now() < deadline && !signal?.aborted && !shutdown.aborted
    ) {
      const batch: { ts: number; data: Uint8Array }[] = [];
      for (const reader of readers) {
        frames += reader.drain(maxFrames - frames, (ts, data) => batch.push({ ts, data }));
      }
      if (batch.length) {
        // Each worker's ring is in time order; merge them so the capture reads in order.
        batch.sort((a, b) => a.ts - b.ts);
        yield concatBytes(batch.map((r) => pcapRecord(r.ts, r.data)));
      } else {
        await new Promise((r) => setTimeout(r, IDLE_MS));
      }
    }
    const dropped = readers.reduce((n, r) => n + r.dropped, 0);
    if (dropped) lost(dropped);
  } finally {
    await datapath.removeTap(index, rings);
  }
}
