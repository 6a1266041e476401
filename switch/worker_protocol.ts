// Messages between the main thread (control plane) and the datapath Workers. Every request
// that changes what a worker touches is acknowledged: the control plane frees memory or closes
// fds only after the ack, so a worker never reads an unmapped region or writes a reused fd.
import type { DatapathState } from "../ports/vhost_user/device.ts";
import type { AfPacketSpec } from "../ports/af_packet/tpacket.ts";
import type { VxlanSpec } from "../ports/vxlan/vxlan.ts";
import type { PortVlanConfig } from "./bridge.ts";
import type { SafetyPlan } from "./safety.ts";

/** What a worker needs to attach to the shared bridge: FDB, link state and counters. */
export interface BridgeShare {
  vlans: (PortVlanConfig | undefined | null)[];
  fdb: SharedArrayBuffer;
  state: SharedArrayBuffer;
}

export interface WorkerInit {
  type: "init";
  worker: number;
  workers: number;
  /** Shared between all workers and the main thread. */
  counters: SharedArrayBuffer;
  /** The learning table, VLAN config, link state and bridge counters, shared by all. */
  bridge: BridgeShare;
  /** The L2 safety counters (safety_counters.ts), shared like `counters`. */
  safety: SharedArrayBuffer;
  /** Raised by the main thread when a message waits, so a busy-polling worker yields to it. */
  mailbox: SharedArrayBuffer;
  /** WORKER_STATS float64 fields this worker writes. */
  stats: SharedArrayBuffer;
  portCount: number;
  /** This worker's flow table (flows.ts), or null when flows are not counted. */
  flows: SharedArrayBuffer | null;
  busyPoll: boolean;
  idleAfterMs: number;
  /** The CPU to pin this worker's thread to, or -1. */
  cpu: number;
}

/** Install (or, with state null, remove) a vhost-user port's datapath on this worker. */
export interface WorkerApplyPort {
  type: "apply";
  id: number;
  port: number;
  state: DatapathState | null;
  /** Guest TX rings (odd ring indexes) this worker polls. */
  pollRings: number[];
  /** The guest RX ring this worker fills when it transmits to the port, -1 for none. */
  fillRing: number;
}

/** Attach an AF_PACKET port (spec null: detach); `poll` for the one worker that receives. */
export interface WorkerAttachPacket {
  type: "packet";
  id: number;
  port: number;
  spec: AfPacketSpec | null;
  poll: boolean;
}

/** Attach a VXLAN port (spec null: detach); `poll` for the one worker that receives. */
export interface WorkerAttachVxlan {
  type: "vxlan";
  id: number;
  port: number;
  spec: VxlanSpec | null;
  poll: boolean;
}

/** Start (add) or stop (remove) copying the frames that pass a port into a capture ring. */
export interface WorkerTap {
  type: "tap";
  id: number;
  port: number;
  add?: SharedArrayBuffer;
  remove?: SharedArrayBuffer;
}

/** Replace the port guards and mirrors (the whole plan: it changes rarely). */
export interface WorkerSafety {
  type: "safety";
  id: number;
  plan: SafetyPlan;
}

/** A port's VLAN config changed (null: the port number was freed). */
export interface WorkerSetVlan {
  type: "vlan";
  id: number;
  port: number;
  vlan: PortVlanConfig | undefined | null;
}

/** Forward `frame` as if port `port` had received it (an announcement made for a guest). */
export interface WorkerInject {
  type: "inject";
  id: number;
  port: number;
  frame: Uint8Array;
}

export interface WorkerStop {
  type: "stop";
  id: number;
}

export type ToWorker =
  | WorkerInit
  | WorkerApplyPort
  | WorkerAttachPacket
  | WorkerAttachVxlan
  | WorkerTap
  | WorkerSafety
  | WorkerSetVlan
  | WorkerInject
  | WorkerStop;

export interface WorkerAck {
  type: "ack";
  id: number;
  /** Rings this worker stopped, with where each stands (SET_VRING_BASE encoding): [ring, base]. */
  stopped: [number, number][];
  error?: string;
}

export interface WorkerReady {
  type: "ready";
  worker: number;
  /** The worker thread's pthread_t, for interrupting a call stuck on a peer's fd. */
  thread: bigint;
  /** Its kernel thread id, to tell a blocked write from a descheduled thread. */
  tid: number;
  /** Written by the control plane after each message, so a sleeping worker wakes for it. */
  wakeFd: number;
  /** Set when the worker could not start as asked (e.g. pinning to a CPU failed). */
  error?: string;
}

// Per-worker statistics, float64 fields of the worker's `stats` buffer (written only by it).
/** Poll rounds (64 passes over the worker's ports) that moved frames / moved none. */
export const STAT_BUSY_ROUNDS = 0;
export const STAT_IDLE_ROUNDS = 1;
/** Times the worker went to sleep waiting for kicks. */
export const STAT_SLEEPS = 2;
export const STAT_FRAMES = 3;
/** Milliseconds spent in poll rounds that moved frames (OVS's "processing cycles"). */
export const STAT_BUSY_MS = 4;
/** Non-zero while the worker writes a peer's eventfd (ports/peer_eventfd.ts). */
export const STAT_PEER_WRITE = 5;
/** Times the worker's loop threw and went on without the port at fault. */
export const STAT_FAILURES = 6;
export const WORKER_STATS = 8;

/**
 * A write to a front-end's call eventfd blocked and was interrupted: the front-end made it
 * blocking. The worker stopped signalling that ring; the control plane disconnects the port.
 */
export interface WorkerPeerBlocked {
  type: "peer-blocked";
  worker: number;
  port: number;
  ring: number;
}

/**
 * The worker's loop threw while handling `port` (-1 when it cannot tell): it dropped the port
 * and carries on with the others; the control plane disconnects the port.
 */
export interface WorkerFailed {
  type: "failed";
  worker: number;
  port: number;
  error: string;
}

export type FromWorker = WorkerAck | WorkerReady | WorkerPeerBlocked | WorkerFailed;
