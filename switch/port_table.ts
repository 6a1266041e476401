// Port numbers. The bridge, the datapath workers and the counter tables are sized for
// MAX_PORTS ports when the switch starts, so a port added while it runs only takes a free
// number (the lowest) and a deleted port gives its number back: nothing on the datapath is
// resized or rebuilt, and a number's counters start again from zero for its next port.
import { MAX_PORTS, type PortConfig } from "./topology.ts";

export class PortTable {
  readonly #slots: (PortConfig | null)[] = new Array(MAX_PORTS).fill(null);

  /** The topology's ports take numbers 0, 1, ... in file order. */
  constructor(ports: PortConfig[]) {
    ports.forEach((p, i) => this.#slots[i] = p);
  }

  get(port: number): PortConfig | undefined {
    return this.#slots[port] ?? undefined;
  }

  /** The number of the port named `name`, or -1. */
  indexOf(name: string): number {
    return this.#slots.findIndex((p) => p?.name === name);
  }

  /** [number, config] of every port, by number. */
  entries(): [number, PortConfig][] {
    return this.#slots.flatMap((p, i) => p ? [[i, p] as [number, PortConfig]] : []);
  }

  /** The ports' configs, by number (the order GET /topology lists them). */
  configs(): PortConfig[] {
    return this.#slots.filter((p): p is PortConfig => p !== null);
  }

  /** Gives `cfg` the lowest free number. */
  take(cfg: PortConfig): number {
    const port = this.#slots.indexOf(null);
    if (port < 0) throw new RangeError(`the switch has ${MAX_PORTS} ports, its maximum`);
    this.#slots[port] = cfg;
    return port;
  }

  /** Replaces the config of a port (a change made live). */
  set(port: number, cfg: PortConfig): void {
    this.#slots[port] = cfg;
  }

  free(port: number): void {
    this.#slots[port] = null;
  }
}
