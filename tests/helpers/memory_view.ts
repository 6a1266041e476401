// An in-memory SwitchView for tests of the pure HTTP layer: the switch's state as plain data.
import {
  type CaptureOptions,
  type FdbEntry,
  type FdbFilter,
  matchesFdbFilter,
  type PortStatus,
  type SwitchStats,
  type SwitchView,
} from "../../switch/view.ts";
import { encodePcap, ethFrame } from "../../peers/pcap.ts";

export const A = "52:54:00:00:00:01";
export const B = "52:54:00:00:00:02";
/** What a capture of vm1 sees: three frames between A and B. */
export const CAPTURED = [
  ethFrame({ src: A, dst: B, seq: 1 }),
  ethFrame({ src: B, dst: A, seq: 2 }),
  ethFrame({ src: A, dst: B, seq: 3, length: 1514 }),
];

export class MemoryView implements SwitchView {
  flushes: FdbFilter[] = [];
  captures: { port: string; opts: CaptureOptions; finished: boolean }[] = [];
  /** When set, a capture yields the header and then waits for its signal instead of frames. */
  endless = false;
  entries: FdbEntry[] = [
    { mac: "52:54:00:00:00:01", vlan: 0, port: "vm1", ageSeconds: 3, static: false },
    { mac: "52:54:00:00:00:02", vlan: 0, port: "vm2", ageSeconds: 12, static: false },
    { mac: "52:54:00:00:00:22", vlan: 10, port: "vm2", ageSeconds: 1, static: false },
    { mac: "52:54:00:00:00:99", vlan: 10, port: "vm2", ageSeconds: 0, static: true },
  ];
  readonly portList: PortStatus[] = [
    {
      name: "vm1",
      type: "vhost-user",
      socket: "/tmp/vswitch/vm1.sock",
      mode: "server",
      state: "connected",
      mtu: 1500,
      features: ["VIRTIO_F_VERSION_1", "VIRTIO_NET_F_MRG_RXBUF"],
      queues: [{ index: 0, worker: 0 }],
      counters: { rx_packets: 10, rx_bytes: 1000, tx_packets: 7, drop_too_big: 2, drop_vlan: 1 },
    },
    {
      name: "vm2",
      type: "vhost-user",
      socket: "/tmp/vswitch/vm2.sock",
      mode: "server",
      state: "listening",
      mtu: 1500,
      features: [],
      queues: [{ index: 0, worker: 1 }],
      counters: { rx_packets: 0, rx_bytes: 0, tx_packets: 0, drop_too_big: 0, drop_vlan: 0 },
    },
    {
      name: "uplink",
      type: "af-packet",
      interface: "vs-uplink0",
      state: "up",
      mtu: 1500,
      features: [],
      queues: [{ index: 0, worker: 0 }],
      counters: { rx_packets: 5, tx_packets: 5 },
    },
  ];
  info() {
    return { name: "br0", version: "0.1.0", uptimeSeconds: 42, threads: 2 };
  }
  ports() {
    return this.portList;
  }
  port(name: string) {
    return this.portList.find((p) => p.name === name);
  }
  fdb() {
    return this.entries;
  }
  flushFdb(filter: FdbFilter) {
    this.flushes.push(filter);
    const before = this.entries.length;
    this.entries = this.entries.filter((e) => e.static || !matchesFdbFilter(e, filter));
    return before - this.entries.length;
  }
  stats(): SwitchStats {
    return {
      uptimeSeconds: 42,
      workers: [
        {
          worker: 0,
          busyRounds: 5,
          idleRounds: 15,
          sleeps: 3,
          frames: 17,
          failures: 0,
          framesPerSecond: 2.5,
          busyFraction: 0.25,
        },
        {
          worker: 1,
          busyRounds: 0,
          idleRounds: 9,
          sleeps: 9,
          frames: 0,
          failures: 0,
          framesPerSecond: 0,
          busyFraction: 0,
        },
      ],
      ports: this.portList.map((p, i) => ({
        name: p.name,
        counters: p.counters,
        rxPerSecond: i,
        txPerSecond: i / 2,
      })),
      fdb: {
        entries: 4,
        capacity: 8192,
        learned: 9,
        moved: 1,
        refusedFull: 0,
        aged: 2,
        flushed: 3,
      },
    };
  }
  capture(port: string, opts: CaptureOptions) {
    if (!this.port(port)) return undefined;
    const record = { port, opts, finished: false };
    this.captures.push(record);
    const file = encodePcap(CAPTURED);
    const endless = this.endless;
    return (async function* () {
      try {
        yield file.subarray(0, 24);
        if (endless) {
          await new Promise((resolve) => opts.signal?.addEventListener("abort", resolve));
          return;
        }
        let off = 24;
        for (const f of CAPTURED.slice(0, opts.maxFrames)) {
          yield file.subarray(off, off + 16 + f.length);
          off += 16 + f.length;
        }
      } finally {
        record.finished = true;
      }
    })();
  }
}
