// Worker side of the shared-FDB tests (tests/fdb_test.ts): hammers one table from another thread.
/// <reference lib="deno.worker" />
import { Fdb, LEARN_NEW, LEARN_REFRESHED } from "../switch/fdb.ts";

/** Int32 control words shared by the test and its workers. */
export interface Control {
  /** Barrier: workers that are ready to start. */
  ready: SharedArrayBuffer;
  /** Barrier: workers done learning. */
  done: SharedArrayBuffer;
  /** Set to 1 by the test to end lookup loops. */
  stop: SharedArrayBuffer;
  /** Per worker: rounds completed (lookup jobs) or MACs learned (learn jobs). */
  rounds: SharedArrayBuffer;
}

/** Learns `count` MACs of its own while reading the peer's; then checks all of the peer's. */
export interface LearnJob {
  mode: "learn";
  fdb: SharedArrayBuffer;
  /** FDB reader slot (datapath path), or undefined for the seqlock-checked path. */
  reader?: number;
  ctrl: Control;
  workers: number;
  myHi: number;
  myPort: number;
  peerHi: number;
  peerPort: number;
  count: number;
  /** MACs (sharedHi, 0..sharedCount-1) that every worker learns on its own port. */
  sharedHi: number;
  sharedCount: number;
}

/** Looks up a stable set (and refreshes its own half) until told to stop. */
export interface LookupJob {
  mode: "lookup";
  fdb: SharedArrayBuffer;
  reader?: number;
  ctrl: Control;
  workers: number;
  index: number;
  vlan: number;
  /** stable[i] = [hi, port]: MACs (hi, 0..stableCount-1) that are never removed. */
  stable: [number, number][];
  stableCount: number;
  /** MACs (churnHi, 0..churnCount-1) come and go on churnPort. */
  churnHi: number;
  churnPort: number;
  churnCount: number;
  now: number;
}

export interface JobResult {
  /** Lookups that returned a port the key never had, or lost a key that was never removed. */
  wrong: number;
  /** learn() of a fresh own MAC that did not return LEARN_NEW / of a stable one not REFRESHED. */
  unexpected: number;
  rounds: number;
}

function barrier(buffer: SharedArrayBuffer, parties: number): void {
  const word = new Int32Array(buffer);
  Atomics.add(word, 0, 1);
  for (let v = Atomics.load(word, 0); v < parties; v = Atomics.load(word, 0)) {
    Atomics.wait(word, 0, v, 10);
  }
}

function runLearn(job: LearnJob): JobResult {
  const fdb = Fdb.attach(job.fdb, { reader: job.reader });
  const progress = new Int32Array(job.ctrl.rounds);
  const me = job.myPort - 1;
  let wrong = 0;
  let unexpected = 0;
  barrier(job.ctrl.ready, job.workers);
  for (let i = 0; i < job.count; i++) {
    if (fdb.learn(job.myHi, i, 0, job.myPort, 1000) !== LEARN_NEW) unexpected++;
    Atomics.store(progress, me, i + 1);
    if (i < job.sharedCount) fdb.learn(job.sharedHi, i, 0, job.myPort, 1000);
    if (fdb.lookup(job.myHi, i, 0) !== job.myPort) wrong++;
    // The peer's next MAC is likely being inserted right now: never half-written.
    const peerNext = Atomics.load(progress, 1 - me);
    for (let j = peerNext; j <= peerNext + 1; j++) {
      const peer = fdb.lookup(job.peerHi, j, 0);
      if (peer !== -1 && peer !== job.peerPort) wrong++;
    }
    const shared = fdb.lookup(job.sharedHi, i % job.sharedCount, 0);
    if (shared !== -1 && shared !== job.myPort && shared !== job.peerPort) wrong++;
  }
  barrier(job.ctrl.done, job.workers);
  for (let i = 0; i < job.count; i++) {
    if (fdb.lookup(job.peerHi, i, 0) !== job.peerPort) wrong++;
  }
  fdb.offline();
  return { wrong, unexpected, rounds: 1 };
}

function runLookup(job: LookupJob): JobResult {
  const fdb = Fdb.attach(job.fdb, { reader: job.reader });
  const stop = new Int32Array(job.ctrl.stop);
  const roundsDone = new Int32Array(job.ctrl.rounds);
  const [ownHi, ownPort] = job.stable[job.index];
  let wrong = 0;
  let unexpected = 0;
  let rounds = 0;
  barrier(job.ctrl.ready, job.workers);
  do {
    for (let i = 0; i < job.stableCount; i++) {
      for (const [hi, port] of job.stable) {
        if (fdb.lookup(hi, i, job.vlan) !== port) wrong++;
      }
      if (fdb.learn(ownHi, i, job.vlan, ownPort, job.now) !== LEARN_REFRESHED) unexpected++;
    }
    for (let i = 0; i < job.churnCount; i++) {
      const p = fdb.lookup(job.churnHi, i, job.vlan);
      if (p !== -1 && p !== job.churnPort) wrong++;
    }
    Atomics.store(roundsDone, job.index, ++rounds);
  } while (Atomics.load(stop, 0) === 0);
  fdb.offline();
  return { wrong, unexpected, rounds };
}

self.onmessage = (e: MessageEvent<LearnJob | LookupJob>) => {
  const job = e.data;
  self.postMessage(job.mode === "learn" ? runLearn(job) : runLookup(job));
};
