// Counters of the L2 safety features, one block of float64 fields per (worker, port) in a
// SharedArrayBuffer, like the port counters: each worker writes only its own blocks, the main
// thread sums them. Names are snake_case; the drop_* ones become /metrics drop reasons.

/** Source MAC not allowed on the port (allowedMacs, or not the MAC learnOnce pinned). */
export const DROP_SPOOFED = 0;
/** IPv4/IPv6 source, ARP sender or ND target address not allowed on the port. */
export const DROP_SPOOFED_IP = 1;
/** Over the port's storm-control limit, by class. */
export const DROP_STORM_BROADCAST = 2;
export const DROP_STORM_MULTICAST = 3;
export const DROP_STORM_UNKNOWN_UNICAST = 4;
/** Over the port's ingress policing rate. */
export const DROP_POLICED = 5;
/** Over the port's egress policing rate (counted on the port frames were sent to). */
export const DROP_EGRESS_POLICED = 6;
/** Received while loop guard blocks the port. */
export const DROP_LOOP = 7;
/** Copies of this port's frames sent to a mirror output (counted on the mirrored port). */
export const MIRRORED = 8;
export const SAFETY_FIELDS = 16;

export const SAFETY_COUNTER_NAMES: Record<number, string> = {
  [DROP_SPOOFED]: "drop_spoofed",
  [DROP_SPOOFED_IP]: "drop_spoofed_ip",
  [DROP_STORM_BROADCAST]: "drop_storm_broadcast",
  [DROP_STORM_MULTICAST]: "drop_storm_multicast",
  [DROP_STORM_UNKNOWN_UNICAST]: "drop_storm_unknown_unicast",
  [DROP_POLICED]: "drop_policed",
  [DROP_EGRESS_POLICED]: "drop_egress_policed",
  [DROP_LOOP]: "drop_loop",
  [MIRRORED]: "mirrored",
};

export class SafetyCounters {
  readonly values: Float64Array;
  constructor(
    readonly buffer: SharedArrayBuffer,
    readonly workers: number,
    readonly ports: number,
  ) {
    this.values = new Float64Array(buffer);
  }

  static create(workers: number, ports: number): SafetyCounters {
    return new SafetyCounters(
      new SharedArrayBuffer(workers * ports * SAFETY_FIELDS * 8),
      workers,
      ports,
    );
  }

  /** The block one worker writes for one port. */
  block(worker: number, port: number): Float64Array {
    const start = (worker * this.ports + port) * SAFETY_FIELDS;
    return this.values.subarray(start, start + SAFETY_FIELDS);
  }

  /** A port's counters summed over all workers, by name. */
  port(port: number): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [field, name] of Object.entries(SAFETY_COUNTER_NAMES)) {
      let sum = 0;
      for (let w = 0; w < this.workers; w++) sum += this.block(w, port)[Number(field)];
      out[name] = sum;
    }
    return out;
  }
}
