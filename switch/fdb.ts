/**
 * The MAC learning table (forwarding database), one per switch, shared by every datapath Worker
 * through a SharedArrayBuffer.
 *
 * Open addressing with linear probing over 16-byte slots; key = (vlan, mac). Concurrency:
 * - lookups and timestamp refreshes take no lock and no atomic operation on the datapath
 *   (Atomics.load costs 10-20 ns in V8: a builtin call, not an inlined load);
 * - inserts, moves, deletes and compactions take a spin lock in the buffer (they are rare);
 * - an entry is published by writing its key word last with Atomics.store, and a live slot's key
 *   never changes: deletion leaves a tombstone that is never reused in place, so a reader that
 *   matched a key reads that key's port (the old or the new one across a move);
 * - tombstones are reclaimed by compacting into the other of two tables and bumping GEN. A table
 *   is rebuilt only once no reader can still be in it:
 *   - datapath readers (`Fdb.attach(buffer, { reader })`, one thread per reader slot) report the
 *     GEN they see at the start of each operation, a quiescent-state scheme like DPDK's RCU QSBR:
 *     a plain load and compare per operation. A compaction is deferred while a reader that is
 *     online has not yet seen the current GEN; an idle reader calls `offline()`.
 *   - other readers (no reader slot: control plane, tests) re-check GEN with Atomics.load after
 *     each probe and retry if it moved (a seqlock).
 * The plain loads rely on x86-64's ordered loads (TSO) for the key-then-fields publication.
 * The lock has no owner recovery: a Worker must not be terminated while inside learn().
 *
 * Limits, as Open vSwitch's MAC learning does them: when the table is full, learning a new MAC
 * evicts the least recently seen learned entries of the port that holds the most (so a port
 * flooding source MACs evicts its own entries, not its neighbours'); an optional per-port limit
 * on learned entries refuses new MACs beyond it. Each port's learned count lives in the buffer,
 * written under the lock and read lock-free for the limit check.
 */

import { formatMac } from "../ports/ethernet.ts";

/** learn() results. */
export const LEARN_REFRESHED = 0;
export const LEARN_NEW = 1;
/** The MAC was known on another port; the entry now points at the new one. */
export const LEARN_MOVED = 2;
/**
 * Not known and no room: every entry is static, or a compaction waits for a reader. Not learned,
 * counted in `refusedFull`. (A full table of learned entries evicts instead.)
 */
export const LEARN_REFUSED_FULL = 3;
/** A static entry exists for the key: left as is, whatever the port. */
export const LEARN_STATIC = 4;
/** The port already holds `maxPerPort` learned entries: not learned (or not moved), counted. */
export const LEARN_REFUSED_PORT_LIMIT = 5;

export interface FdbEntry {
  mac: string;
  vlan: number;
  port: number;
  /** Seconds since last seen; 0 for static entries. */
  age: number;
  static: boolean;
}

export interface FdbCounters {
  learned: number;
  moved: number;
  refusedFull: number;
  aged: number;
  flushed: number;
  compactions: number;
  /** Compactions put off because a reader had not yet left the table to be rebuilt. */
  compactionsDeferred: number;
  /** Learned entries evicted (least recently seen first) to make room for a new MAC. */
  evicted: number;
  /** New MACs not learned because their port held `maxPerPort` learned entries. */
  refusedPortLimit: number;
}

/** One port's share of the table. */
export interface FdbPortCounters {
  /** Learned entries on the port now (static ones not included). */
  learned: number;
  /** Its entries evicted to make room in a full table. */
  evicted: number;
  /** Its new MACs refused by the per-port limit. */
  refusedLimit: number;
}

export interface FdbFlushFilter {
  port?: number;
  vlan?: number;
  /** Also remove static entries (default: learned entries only). */
  static?: boolean;
}

// Header, in Int32 words. Line 0 is read by every lookup and written only by compaction, so that
// insert/refusal traffic on lines 1-2 does not invalidate it in the readers' caches.
const GEN = 0; // generation: bumped by each compaction; active table = GEN & 1
const CAPACITY = 1;
const SLOTS = 2;
const MAGIC = 3;
// Bumped by every locked operation (each insert, move, delete, flush, aging, compaction): a
// datapath thread that remembers a result (bridge.ts) re-checks it when this moved.
const VERSION = 4;
/** Learned entries allowed per port, 0 for no limit. */
const MAX_PER_PORT = 5;
const LOCK = 16;
const SIZE = 17; // live entries
const USED = 18; // live + tombstones in the active table
const C_EVICTED = 24;
const C_PORT_LIMIT = 26;
// 64-bit counters, each a (low, high) pair of uint32 words.
const C_LEARNED = 32;
const C_MOVED = 34;
const C_REFUSED = 36;
const C_AGED = 38;
const C_FLUSHED = 40;
const C_COMPACTIONS = 42;
const C_DEFERRED = 44;
/** Reader r's last seen GEN (or OFFLINE) at READERS + r * READER_STRIDE: a cache line each. */
const READERS = 48;
const READER_STRIDE = 16;
export const MAX_READERS = 64;
const OFFLINE = -1;
/** Per port at PORTS + port * PORT_STRIDE: learned count, evicted, refused by the limit. */
const PORTS = READERS + MAX_READERS * READER_STRIDE;
const PORT_STRIDE = 4;
const P_LEARNED = 0;
const P_EVICTED = 1;
const P_REFUSED = 2;
/** Ports with a learned count (the bridge's port numbers are below this). */
export const MAX_FDB_PORTS = 4096;
const TABLE0 = PORTS + MAX_FDB_PORTS * PORT_STRIDE;

const FDB_MAGIC = 0x46444231;
const MAX_CAPACITY = 1 << 22;

// Slot words. KEY is the publication word: written last, with Atomics.store.
const KEY = 0; // EMPTY, TOMBSTONE or LIVE | vlan << 16 | macHi
const LO = 1; // macLo as int32
const PORT = 2; // port | STATIC_BIT
const STAMP = 3; // last seen, seconds
const EMPTY = 0;
const TOMBSTONE = 1;
const LIVE = 1 << 28;
const PORT_MASK = 0xffff;
const STATIC_BIT = 1 << 16;

function keyOf(hi: number, vlan: number): number {
  return LIVE | ((vlan & 0xfff) << 16) | (hi & 0xffff);
}

function hashOf(key: number, lo: number): number {
  let h = Math.imul(lo ^ Math.imul(key, 0x9e3779b1), 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

function checkRange(what: string, v: number, max: number): void {
  if (!Number.isInteger(v) || v < 0 || v > max) {
    throw new RangeError(`${what} must be an integer in 0..${max}, got ${v}`);
  }
}

export class Fdb {
  readonly buffer: SharedArrayBuffer;
  /** Maximum number of entries (learned + static). */
  readonly capacity: number;
  readonly slots: number;
  /** The reader slot this view reports in, or -1 for a seqlock-checked view. */
  readonly reader: number;
  private readonly w: Int32Array;
  private readonly mask: number;
  private readonly tableWords: number;
  /** Live + tombstones allowed before an insert compacts; keeps probe chains short. */
  private readonly maxUsed: number;
  /** Word index of this view's reader slot, or -1. */
  private readonly readerWord: number;
  /** Scratch for evictLocked(), made on first use. */
  private evictSlots: Int32Array | null = null;
  private evictStamps: Int32Array | null = null;

  static create(opts: { capacity: number; maxPerPort?: number }): Fdb {
    const { capacity } = opts;
    checkRange("FDB capacity", capacity, MAX_CAPACITY);
    if (capacity < 1) throw new RangeError("FDB capacity must be at least 1");
    checkRange("FDB maxPerPort", opts.maxPerPort ?? 0, MAX_CAPACITY);
    let slots = 16;
    while (slots < capacity * 2) slots *= 2;
    const buffer = new SharedArrayBuffer((TABLE0 + 2 * slots * 4) * 4);
    const w = new Int32Array(buffer);
    w[CAPACITY] = capacity;
    w[SLOTS] = slots;
    w[MAX_PER_PORT] = opts.maxPerPort ?? 0;
    for (let r = 0; r < MAX_READERS; r++) w[READERS + r * READER_STRIDE] = OFFLINE;
    Atomics.store(w, MAGIC, FDB_MAGIC);
    return new Fdb(buffer, -1);
  }

  /**
   * Views a table made by `Fdb.create`, e.g. inside a Worker. With `reader` (0..MAX_READERS-1,
   * used by one thread only) lookups and refreshes skip the per-operation atomic GEN check.
   */
  static attach(buffer: SharedArrayBuffer, opts: { reader?: number } = {}): Fdb {
    const reader = opts.reader ?? -1;
    if (reader !== -1) checkRange("FDB reader", reader, MAX_READERS - 1);
    return new Fdb(buffer, reader);
  }

  private constructor(buffer: SharedArrayBuffer, reader: number) {
    const w = new Int32Array(buffer);
    if (w.length < TABLE0 || Atomics.load(w, MAGIC) !== FDB_MAGIC) {
      throw new TypeError("buffer does not hold an FDB made by Fdb.create");
    }
    this.buffer = buffer;
    this.w = w;
    this.capacity = w[CAPACITY];
    this.slots = w[SLOTS];
    this.mask = this.slots - 1;
    this.tableWords = this.slots * 4;
    this.maxUsed = (this.slots >> 2) * 3;
    this.reader = reader;
    this.readerWord = reader < 0 ? -1 : READERS + reader * READER_STRIDE;
  }

  /** Changes whenever an entry may have been added, moved or removed. A plain load. */
  get version(): number {
    return this.w[VERSION];
  }

  get size(): number {
    return Atomics.load(this.w, SIZE);
  }

  /** Learned entries allowed per port; 0: no limit. */
  get maxPerPort(): number {
    return Atomics.load(this.w, MAX_PER_PORT);
  }

  /** Changes the per-port limit at once; ports above a lower limit keep what they have. */
  set maxPerPort(n: number) {
    checkRange("FDB maxPerPort", n, MAX_CAPACITY);
    Atomics.store(this.w, MAX_PER_PORT, n);
  }

  /** Port for (mac, vlan), or -1. Lock-free. */
  lookup(macHi: number, macLo: number, vlan: number): number {
    const w = this.w;
    const key = keyOf(macHi, vlan);
    const lo = macLo | 0;
    if (this.readerWord >= 0) {
      const s = this.find(this.enter(), key, lo);
      return s < 0 ? -1 : w[s + PORT] & PORT_MASK;
    }
    let gen = w[GEN];
    for (;;) {
      const s = this.find(gen, key, lo);
      const port = s < 0 ? -1 : w[s + PORT] & PORT_MASK;
      // Orders the probe before it and sees any table switch since.
      const check = Atomics.load(w, GEN);
      if (check === gen) return port;
      gen = check;
    }
  }

  /** Records that (mac, vlan) was seen on `port` at `now` (integer seconds). Returns LEARN_*. */
  learn(macHi: number, macLo: number, vlan: number, port: number, now: number): number {
    const w = this.w;
    const key = keyOf(macHi, vlan);
    const lo = macLo | 0;
    const quiescent = this.readerWord >= 0;
    let gen = quiescent ? this.enter() : w[GEN];
    for (;;) {
      const s = this.find(gen, key, lo);
      if (s >= 0) {
        const p = w[s + PORT];
        if (p === port) {
          // The common case. Skipping a same-value store keeps the cache line shared.
          if (w[s + STAMP] !== now) w[s + STAMP] = now;
          if (quiescent) return LEARN_REFRESHED;
          const check = Atomics.load(w, GEN);
          if (check === gen) return LEARN_REFRESHED;
          gen = check; // a compaction copied the table meanwhile: refresh the new copy
          continue;
        }
        if ((p & STATIC_BIT) !== 0) return LEARN_STATIC;
      } else if (!quiescent) {
        const check = Atomics.load(w, GEN);
        if (check !== gen) {
          gen = check;
          continue;
        }
      }
      // A port at its limit is refused without the lock: a flood of source MACs from one
      // port then costs a probe per frame, not a locked operation.
      if (this.atLimit(port)) return this.refuseLimit(port);
      return this.learnLocked(key, lo, port, now);
    }
  }

  private atLimit(port: number): boolean {
    const limit = this.w[MAX_PER_PORT];
    return limit !== 0 && port < MAX_FDB_PORTS &&
      this.w[PORTS + port * PORT_STRIDE + P_LEARNED] >= limit;
  }

  private refuseLimit(port: number): number {
    this.count(C_PORT_LIMIT, 1);
    if (port < MAX_FDB_PORTS) Atomics.add(this.w, PORTS + port * PORT_STRIDE + P_REFUSED, 1);
    return LEARN_REFUSED_PORT_LIMIT;
  }

  /** A reader about to idle or block: compactions stop waiting for it until its next call. */
  offline(): void {
    if (this.readerWord >= 0) Atomics.store(this.w, this.readerWord, OFFLINE);
  }

  /** Reader slots: the quiescent point at the start of an operation; returns the GEN to use. */
  private enter(): number {
    const w = this.w;
    const gen = w[GEN];
    if (w[this.readerWord] === gen) return gen;
    // Once per table switch, or back from offline: publish with a fence, then re-read GEN so
    // that the table we use was current after our report became visible.
    Atomics.store(w, this.readerWord, gen);
    return Atomics.load(w, GEN);
  }

  /** Adds or overwrites a static entry: never aged, never moved by learning. */
  addStatic(macHi: number, macLo: number, vlan: number, port: number): void {
    checkRange("VLAN", vlan, 4095);
    checkRange("port", port, PORT_MASK);
    checkRange("MAC high bytes", macHi, 0xffff);
    checkRange("MAC low bytes", macLo, 0xffffffff);
    this.lock();
    try {
      const key = keyOf(macHi, vlan);
      const s = this.find(this.w[GEN], key, macLo | 0);
      if (s >= 0) {
        this.forget(this.w[s + PORT]);
        Atomics.store(this.w, s + PORT, port | STATIC_BIT);
      } else if (Atomics.load(this.w, SIZE) >= this.capacity && this.evictLocked() === 0) {
        throw new RangeError(`FDB full (${this.capacity} static entries): cannot add another`);
      } else if (!this.insertLocked(key, macLo | 0, port | STATIC_BIT, 0)) {
        throw new Error("FDB busy: a datapath reader has not left the table to be compacted");
      }
    } finally {
      this.unlock();
    }
  }

  /** Removes one entry, learned or static. */
  delete(macHi: number, macLo: number, vlan: number): boolean {
    this.lock();
    try {
      const s = this.find(this.w[GEN], keyOf(macHi, vlan), macLo | 0);
      if (s >= 0) this.removeLocked(s);
      return s >= 0;
    } finally {
      this.unlock();
    }
  }

  /** Removes learned entries not seen for `agingSeconds` or more. Returns how many. */
  age(now: number, agingSeconds: number): number {
    const removed = this.removeWhere((_k, port, stamp) =>
      (port & STATIC_BIT) === 0 && ((now - stamp) | 0) >= agingSeconds
    );
    this.count(C_AGED, removed);
    return removed;
  }

  /** Removes learned (and with `static: true`, static) entries matching the filter. */
  flush(filter: FdbFlushFilter = {}): number {
    const { port, vlan } = filter;
    const removed = this.removeWhere((key, p) =>
      (filter.static === true || (p & STATIC_BIT) === 0) &&
      (port === undefined || (p & PORT_MASK) === port) &&
      (vlan === undefined || ((key >>> 16) & 0xfff) === vlan)
    );
    this.count(C_FLUSHED, removed);
    return removed;
  }

  /** A snapshot for management APIs, sorted by VLAN then MAC. */
  entries(now: number): FdbEntry[] {
    const w = this.w;
    const rows: { key: number; lo: number; entry: FdbEntry }[] = [];
    this.lock();
    try {
      const base = this.tableBase(w[GEN]);
      for (let s = base; s < base + this.tableWords; s += 4) {
        const k = w[s + KEY];
        if ((k & LIVE) === 0) continue;
        const p = w[s + PORT];
        const lo = w[s + LO] >>> 0;
        const isStatic = (p & STATIC_BIT) !== 0;
        rows.push({
          key: k,
          lo,
          entry: {
            mac: formatMac(k & 0xffff, lo),
            vlan: (k >>> 16) & 0xfff,
            port: p & PORT_MASK,
            age: isStatic ? 0 : Math.max(0, (now - w[s + STAMP]) | 0),
            static: isStatic,
          },
        });
      }
    } finally {
      this.unlock();
    }
    // Key order: vlan, then MAC high bytes, then low bytes.
    rows.sort((a, b) => (a.key - b.key) || (a.lo - b.lo));
    return rows.map((r) => r.entry);
  }

  /** One port's learned count and what happened to its entries; readable from any thread. */
  portCounters(port: number): FdbPortCounters {
    checkRange("port", port, MAX_FDB_PORTS - 1);
    const at = PORTS + port * PORT_STRIDE;
    return {
      learned: Atomics.load(this.w, at + P_LEARNED),
      evicted: Atomics.load(this.w, at + P_EVICTED) >>> 0,
      refusedLimit: Atomics.load(this.w, at + P_REFUSED) >>> 0,
    };
  }

  /** Clears a port's evicted/refused counts (its port number is given to a new port). */
  resetPortCounters(port: number): void {
    checkRange("port", port, MAX_FDB_PORTS - 1);
    const at = PORTS + port * PORT_STRIDE;
    Atomics.store(this.w, at + P_EVICTED, 0);
    Atomics.store(this.w, at + P_REFUSED, 0);
  }

  /** Monotonic counters, readable from any thread. */
  counters(): FdbCounters {
    return {
      learned: this.read(C_LEARNED),
      moved: this.read(C_MOVED),
      refusedFull: this.read(C_REFUSED),
      aged: this.read(C_AGED),
      flushed: this.read(C_FLUSHED),
      compactions: this.read(C_COMPACTIONS),
      compactionsDeferred: this.read(C_DEFERRED),
      evicted: this.read(C_EVICTED),
      refusedPortLimit: this.read(C_PORT_LIMIT),
    };
  }

  private tableBase(gen: number): number {
    return TABLE0 + (gen & 1) * this.tableWords;
  }

  /** Word index of the live slot holding the key in generation `gen`'s table, or -1. */
  private find(gen: number, key: number, lo: number): number {
    const w = this.w;
    const mask = this.mask;
    const base = this.tableBase(gen);
    let i = hashOf(key, lo) & mask;
    // Plain reads (see the top of the file). Bounded, so that a seqlock reader caught in a table
    // being rebuilt cannot spin; its GEN check then retries.
    for (let n = 0; n <= mask; n++) {
      const s = base + (i << 2);
      const k = w[s + KEY];
      if (k === key) {
        if (w[s + LO] === lo) return s;
      } else if (k === EMPTY) {
        return -1;
      }
      i = (i + 1) & mask;
    }
    return -1;
  }

  private learnLocked(key: number, lo: number, port: number, now: number): number {
    const w = this.w;
    this.lock();
    try {
      // We hold no table position now: say so, or a compaction below would wait for us.
      if (this.readerWord >= 0) Atomics.store(w, this.readerWord, w[GEN]);
      // Re-check: another writer may have inserted or moved the key since our lock-free probe.
      const s = this.find(w[GEN], key, lo);
      if (s >= 0) {
        const p = w[s + PORT];
        if ((p & STATIC_BIT) !== 0) return LEARN_STATIC;
        w[s + STAMP] = now;
        if (p === port) return LEARN_REFRESHED;
        // A station moving onto a port at its limit stays where it was (counted).
        if (this.atLimit(port)) return this.refuseLimit(port);
        this.forget(p);
        this.remember(port);
        Atomics.store(w, s + PORT, port);
        this.count(C_MOVED, 1);
        return LEARN_MOVED;
      }
      if (this.atLimit(port)) return this.refuseLimit(port);
      if (w[SIZE] >= this.capacity) this.evictLocked();
      if (w[SIZE] >= this.capacity || !this.insertLocked(key, lo, port, now)) {
        this.count(C_REFUSED, 1);
        return LEARN_REFUSED_FULL;
      }
      this.remember(port);
      this.count(C_LEARNED, 1);
      return LEARN_NEW;
    } finally {
      this.unlock();
    }
  }

  /** False if the table has no room until a deferred compaction can run. */
  private insertLocked(key: number, lo: number, portWord: number, stamp: number): boolean {
    const w = this.w;
    if (w[USED] >= this.maxUsed && !this.compactLocked()) return false;
    const base = this.tableBase(w[GEN]);
    let i = hashOf(key, lo) & this.mask;
    // Only EMPTY slots are taken: reusing a tombstone could hand its old key's reader our port.
    while (Atomics.load(w, base + (i << 2)) !== EMPTY) i = (i + 1) & this.mask;
    const s = base + (i << 2);
    w[s + LO] = lo;
    w[s + PORT] = portWord;
    w[s + STAMP] = stamp;
    Atomics.store(w, s + KEY, key); // publish
    Atomics.store(w, USED, w[USED] + 1);
    Atomics.store(w, SIZE, w[SIZE] + 1);
    return true;
  }

  private removeLocked(s: number): void {
    this.forget(this.w[s + PORT]);
    Atomics.store(this.w, s + KEY, TOMBSTONE);
    Atomics.store(this.w, SIZE, this.w[SIZE] - 1);
  }

  /** Under the lock: one more learned entry on `port`. */
  private remember(port: number): void {
    if (port < MAX_FDB_PORTS) Atomics.add(this.w, PORTS + port * PORT_STRIDE + P_LEARNED, 1);
  }

  /** Under the lock: the entry with port word `portWord` goes away (or becomes static). */
  private forget(portWord: number): void {
    if ((portWord & STATIC_BIT) !== 0) return;
    const port = portWord & PORT_MASK;
    if (port < MAX_FDB_PORTS) Atomics.sub(this.w, PORTS + port * PORT_STRIDE + P_LEARNED, 1);
  }

  /**
   * Under the lock, in a full table: evicts the least recently seen learned entries of the port
   * holding the most (OVS's fair eviction). A batch of up to 1/64 of the table at a time, so that
   * a flood of new MACs pays for one table scan per batch, not per MAC; never more than brings
   * that port down to the next largest one. Returns how many went (0: all entries are static).
   */
  private evictLocked(): number {
    const w = this.w;
    let victim = -1, most = 0, second = 0;
    for (let p = 0, at = PORTS + P_LEARNED; p < MAX_FDB_PORTS; p++, at += PORT_STRIDE) {
      const n = w[at];
      if (n > most) [victim, most, second] = [p, n, most];
      else if (n > second) second = n;
    }
    if (victim < 0) return 0;
    const batch = Math.max(1, Math.min(this.capacity >> 6, most - second));
    const base = this.tableBase(w[GEN]);
    // The victim's slots and stamps, then the `batch` oldest of them.
    const slots = this.evictSlots ??= new Int32Array(this.capacity);
    const stamps = this.evictStamps ??= new Int32Array(this.capacity);
    let n = 0;
    for (let s = base; s < base + this.tableWords && n < slots.length; s += 4) {
      if ((w[s + KEY] & LIVE) !== 0 && w[s + PORT] === victim) {
        slots[n] = s;
        stamps[n++] = w[s + STAMP];
      }
    }
    const cutoff = stamps.slice(0, n).sort()[Math.min(batch, n) - 1];
    let evicted = 0;
    for (let i = 0; i < n && evicted < batch; i++) {
      if (stamps[i] < cutoff) {
        this.removeLocked(slots[i]);
        evicted++;
      }
    }
    for (let i = 0; i < n && evicted < batch; i++) {
      if (stamps[i] === cutoff) {
        this.removeLocked(slots[i]);
        evicted++;
      }
    }
    this.count(C_EVICTED, evicted);
    Atomics.add(w, PORTS + victim * PORT_STRIDE + P_EVICTED, evicted);
    return evicted;
  }

  private removeWhere(match: (key: number, port: number, stamp: number) => boolean): number {
    const w = this.w;
    let removed = 0;
    this.lock();
    try {
      const base = this.tableBase(w[GEN]);
      for (let s = base; s < base + this.tableWords; s += 4) {
        const k = w[s + KEY];
        if ((k & LIVE) !== 0 && match(k, w[s + PORT], w[s + STAMP])) {
          this.removeLocked(s);
          removed++;
        }
      }
      // Reclaim tombstones here, off the datapath, before inserts would have to.
      if (w[USED] - w[SIZE] > this.slots >> 3) this.compactLocked();
    } finally {
      this.unlock();
    }
    return removed;
  }

  /**
   * Copies live entries into the other table, then switches to it by bumping GEN. Returns false
   * (deferred) while a reader slot may still be in that other table.
   */
  private compactLocked(): boolean {
    const w = this.w;
    const mask = this.mask;
    const gen = w[GEN];
    for (let r = READERS; r < PORTS; r += READER_STRIDE) {
      const seen = Atomics.load(w, r);
      if (seen !== OFFLINE && seen < gen) {
        this.count(C_DEFERRED, 1);
        return false;
      }
    }
    const src = this.tableBase(gen);
    const dst = this.tableBase(gen + 1);
    // Safe to clear: reader slots have all seen `gen`; seqlock readers still in `dst` started
    // before the previous switch and will see GEN changed when they re-check.
    w.fill(EMPTY, dst, dst + this.tableWords);
    for (let s = src; s < src + this.tableWords; s += 4) {
      const k = w[s + KEY];
      if ((k & LIVE) === 0) continue;
      let i = hashOf(k, w[s + LO]) & mask;
      while (w[dst + (i << 2)] !== EMPTY) i = (i + 1) & mask;
      const d = dst + (i << 2);
      w[d + LO] = w[s + LO];
      w[d + PORT] = w[s + PORT];
      w[d + STAMP] = w[s + STAMP];
      w[d + KEY] = k;
    }
    Atomics.store(w, USED, w[SIZE]);
    Atomics.add(w, GEN, 1); // seq-cst: publishes the copy before readers can pick the new table
    this.count(C_COMPACTIONS, 1);
    return true;
  }

  private lock(): void {
    const w = this.w;
    // Test-and-test-and-set: waiters spin on Atomics.load (a load, no locked instruction) and
    // try the compareExchange only once the lock looks free, so they do not bounce the line.
    while (Atomics.compareExchange(w, LOCK, 0, 1) !== 0) {
      while (Atomics.load(w, LOCK) !== 0) { /* spin: holders never block */ }
    }
  }

  private unlock(): void {
    Atomics.add(this.w, VERSION, 1);
    Atomics.store(this.w, LOCK, 0);
  }

  /** Adds to a 64-bit counter kept as two uint32 words, carrying into the high word. */
  private count(at: number, n: number): void {
    if (n === 0) return;
    const old = Atomics.add(this.w, at, n) >>> 0;
    if (old + n > 0xffffffff) Atomics.add(this.w, at + 1, 1);
  }

  private read(at: number): number {
    const w = this.w;
    for (;;) {
      const hi = Atomics.load(w, at + 1);
      const lo = Atomics.load(w, at) >>> 0;
      if (Atomics.load(w, at + 1) === hi) return (hi >>> 0) * 0x100000000 + lo;
    }
  }
}
