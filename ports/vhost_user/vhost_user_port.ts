// A vhost-user port's control side: owns the socket in server mode (the switch listens and
// one front-end connects) or client mode (the switch connects, retrying until the front-end
// listens), and gives every new connection a fresh device.
import { dirname } from "node:path";
import type { Reactor } from "../../ffi/epoll.ts";
import { closeFd } from "../../ffi/fd.ts";
import { SysError } from "../../ffi/errno.ts";
import { unixAccept, unixConnect, unixListen } from "../../ffi/unix.ts";
import { VhostUserConnection } from "./connection.ts";
import { type DeviceDatapath, VhostUserDevice } from "./device.ts";

export interface VhostUserPortConfig {
  name: string;
  socket: string;
  mode: "server" | "client";
  queues: number;
  mtu: number;
  /** Offer packed virtqueues. */
  packedRing: boolean;
  /** Offer the checksum and TSO offloads (DeviceConfig.offloads). */
  offloads: boolean;
}

export type VhostUserPortState = "listening" | "connecting" | "connected" | "running" | "stopped";

const RECONNECT_MS = 1000;

/**
 * The directory of a listening socket must be writable by its owner only: anyone else who can
 * write there can remove our socket and bind their own in its place, and the next guest to
 * connect hands its memory to them. A missing directory is created 0700; an existing one that
 * others may write (even with the sticky bit, which does not stop them binding the name before
 * us) or that another user owns is refused.
 */
export function privateSocketDir(dir: string): void {
  Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = Deno.statSync(dir);
  const mode = st.mode ?? 0;
  const problems: string[] = [];
  if (mode & 0o022) problems.push(`writable by other users (mode ${(mode & 0o7777).toString(8)})`);
  const me = Deno.uid();
  if (st.uid !== null && me !== null && st.uid !== me && st.uid !== 0) {
    problems.push(`owned by another user (uid ${st.uid})`);
  }
  if (problems.length) {
    throw new Error(
      `socket directory ${dir} is ${problems.join(" and ")}: another user could put their own ` +
        `socket in place of the switch's; use a directory only you can write ` +
        `(a missing one is created with mode 0700)`,
    );
  }
}

export class VhostUserPort {
  #listenFd = -1;
  #conn: VhostUserConnection | null = null;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #stopped = false;
  connections = 0;
  /** Protocol errors of earlier connections (the live one adds its own). */
  #pastErrors = 0;
  rejected = 0;
  #lastConnectError = "";

  constructor(
    readonly config: VhostUserPortConfig,
    readonly reactor: Reactor,
    readonly datapath: DeviceDatapath,
    readonly log: (msg: string) => void,
  ) {}

  start(): void {
    if (this.config.mode === "server") {
      privateSocketDir(dirname(this.config.socket));
      try {
        this.#listenFd = unixListen(this.config.socket);
      } catch (err) {
        if (err instanceof SysError && err.code === "EADDRINUSE") {
          throw new Error(
            `socket ${this.config.socket} is in use by another process ` +
              `(is another switch running with this topology? stop it first)`,
            { cause: err },
          );
        }
        throw err;
      }
      this.reactor.watch(this.#listenFd, () => this.#accept());
      this.log(`listening on ${this.config.socket}`);
    } else {
      this.#connect();
    }
  }

  /** Malformed or refused messages over every connection this port had. */
  get protocolErrors(): number {
    return this.#pastErrors + (this.#conn?.stats.errors ?? 0);
  }

  get connection(): VhostUserConnection | null {
    return this.#conn;
  }

  get state(): VhostUserPortState {
    if (this.#stopped) return "stopped";
    if (this.#conn) return this.#conn.device.running?.queues.length ? "running" : "connected";
    return this.config.mode === "server" ? "listening" : "connecting";
  }

  #accept(): void {
    for (;;) {
      const fd = unixAccept(this.#listenFd);
      if (fd < 0) return;
      if ((this.#conn && !this.#conn.closing) || this.#stopped) {
        // One front-end per port: a second one is turned away, the first keeps working.
        this.rejected++;
        this.log("refused a second front-end connection (port already connected)");
        closeFd(fd);
        continue;
      }
      this.#attach(fd);
    }
  }

  #connect(): void {
    this.#retry = undefined;
    if (this.#stopped || this.#conn) return;
    let fd: number;
    try {
      fd = unixConnect(this.config.socket);
    } catch (err) {
      const text = err instanceof Error ? err.message : String(err);
      if (text !== this.#lastConnectError) {
        this.log(`waiting for the front-end to listen on ${this.config.socket} (${text})`);
        this.#lastConnectError = text;
      }
      this.#retry = setTimeout(() => this.#connect(), RECONNECT_MS);
      return;
    }
    this.#lastConnectError = "";
    this.#attach(fd);
  }

  #attach(fd: number): void {
    this.connections++;
    const device = new VhostUserDevice(
      {
        name: this.config.name,
        queuePairs: this.config.queues,
        mtu: this.config.mtu,
        packedRing: this.config.packedRing,
        offloads: this.config.offloads,
      },
      this.datapath,
      this.log,
    );
    // A front-end may reconnect at once: its new device starts when the old one is torn down.
    const previous = this.#conn?.closed ?? Promise.resolve();
    const conn = new VhostUserConnection(fd, device, this.reactor, this.log, previous);
    this.#conn = conn;
    this.log("front-end connected");
    conn.closed.then(() => {
      this.#pastErrors += conn.stats.errors;
      if (this.#conn === conn) this.#conn = null;
      if (this.config.mode === "client" && !this.#stopped) {
        this.#retry = setTimeout(() => this.#connect(), RECONNECT_MS);
      }
    });
  }

  /** Closes the connection (stopping its rings and freeing its memory) and the socket. */
  async stop(reason = "switch shutting down"): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#retry);
    const conn = this.#conn;
    if (conn) {
      conn.close(reason);
      await conn.closed;
    }
    if (this.#listenFd >= 0) {
      this.reactor.unwatch(this.#listenFd);
      closeFd(this.#listenFd);
      this.#listenFd = -1;
      try {
        Deno.removeSync(this.config.socket);
      } catch { /* already gone */ }
    }
  }
}
