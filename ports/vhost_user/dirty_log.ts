// The dirty log of live migration (QEMU docs/interop/vhost-user.rst, "Migration"). While the
// front-end has VHOST_F_LOG_ALL on, the back-end marks every page of guest memory it writes
// (RX buffers, used rings, a packed ring's descriptors) in a bitmap the front-end shares with
// SET_LOG_BASE: bit (gpa / 4096) % 8 of byte gpa / 4096 / 8. The front-end's migration thread
// reads and clears those bits while we set them, so each set is an atomic OR.
//
// The control plane maps the area (LogArea); every worker marks through its own view of it
// (DirtyLog), rebuilt from the mapping's address like guest memory.
import { closeFd, fdTarget, fstat, S_IFREG } from "../../ffi/fd.ts";
import { type Mapping, mmap, munmap, viewMapping } from "../../ffi/mem.ts";
import { type LogDesc, ProtocolError, VHOST_LOG_PAGE } from "./protocol.ts";
import { DIRTY_PAGES } from "../counters.ts";

const PAGE = 4096;
/** A log this large covers 2^47 bytes of guest memory; larger ones are refused. */
const MAX_LOG_BYTES = 2 ** 32;

/** What a Worker needs to view the log (structured-clone friendly). */
export interface LogSpec {
  mapAddress: bigint;
  mapLength: number;
  /** Where the log's first byte (guest page 0) sits inside the mapping. */
  dataOffset: number;
  /** Bytes of log: it covers guest physical addresses below size * 8 * VHOST_LOG_PAGE. */
  size: number;
}

/** Guest physical memory a log of `size` bytes covers. */
export function logCoverage(size: number): number {
  return size * 8 * VHOST_LOG_PAGE;
}

/** The control plane's mapping of the front-end's log (SET_LOG_BASE with LOG_SHMFD). */
export class LogArea {
  private constructor(readonly spec: LogSpec, readonly mapping: Mapping, readonly fd: number) {}

  /**
   * Maps the log after checking the fd is shared memory (a regular file: memfd, tmpfs,
   * hugetlbfs) holding the whole area, and that the area covers `guestEnd`, the end of the
   * highest guest region. Takes ownership of `fd` even when it throws.
   */
  static map(desc: LogDesc, fd: number, guestEnd: number): LogArea {
    try {
      if (desc.size === 0n || desc.size > BigInt(MAX_LOG_BYTES)) {
        throw new ProtocolError(`SET_LOG_BASE: log size ${desc.size} not in 1..${MAX_LOG_BYTES}`);
      }
      if (desc.offset > BigInt(Number.MAX_SAFE_INTEGER) - desc.size) {
        throw new ProtocolError(`SET_LOG_BASE: log offset ${desc.offset} too large`);
      }
      const size = Number(desc.size);
      const offset = Number(desc.offset);
      if (logCoverage(size) < guestEnd) {
        throw new ProtocolError(
          `SET_LOG_BASE: a ${size}-byte log covers ${logCoverage(size)} bytes of guest memory, ` +
            `the guest has memory up to ${guestEnd}`,
        );
      }
      const st = fstat(fd);
      if (st.mode !== S_IFREG) {
        throw new ProtocolError(`SET_LOG_BASE: log fd is not shared memory (${fdTarget(fd)})`);
      }
      if (st.size < offset + size) {
        throw new ProtocolError(
          `SET_LOG_BASE: log fd holds ${st.size} bytes, the log needs ${offset + size}`,
        );
      }
      const fileOffset = offset - (offset % PAGE);
      const dataOffset = offset - fileOffset;
      const mapping = mmap(dataOffset + size, { fd, offset: fileOffset });
      const spec = { mapAddress: mapping.address, mapLength: mapping.length, dataOffset, size };
      return new LogArea(spec, mapping, fd);
    } catch (err) {
      closeFd(fd);
      throw err;
    }
  }

  /** Unmaps and closes (only once no worker marks through it any more). */
  release(): void {
    munmap(this.mapping);
    closeFd(this.fd);
  }
}

/** A worker's view of the log: marks the pages of guest physical ranges it wrote. */
export class DirtyLog {
  readonly #bits: Uint8Array;
  readonly #size: number;
  /** Marks that fell beyond the log (the front-end sized it too small for its memory). */
  outside = 0;

  /** `counters`: the port's counter block, where marked pages are counted (DIRTY_PAGES). */
  constructor(spec: LogSpec, readonly counters: Float64Array) {
    this.#bits = new Uint8Array(viewMapping(spec.mapAddress, spec.mapLength), spec.dataOffset);
    this.#size = spec.size;
  }

  /** Marks every page of [gpa, gpa + len); exact for any address below 2^53. */
  mark(gpa: number, len: number): void {
    if (len <= 0) return;
    const first = Math.floor(gpa / VHOST_LOG_PAGE);
    const last = Math.floor((gpa + len - 1) / VHOST_LOG_PAGE);
    const bits = this.#bits;
    for (let page = first; page <= last; page++) {
      const byte = Math.floor(page / 8);
      if (byte >= this.#size) {
        this.outside++;
        return;
      }
      Atomics.or(bits, byte, 1 << (page % 8));
      this.counters[DIRTY_PAGES]++;
    }
  }
}
