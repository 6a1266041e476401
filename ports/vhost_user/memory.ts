// Guest memory: the control plane maps the front-end's regions (MemoryTable), the datapath
// views them (GuestMemory) and translates every guest address with a bounds check.
import { libc } from "../../ffi/libc.ts";
import {
  closeFd,
  fdTarget,
  fsInfo,
  fstat,
  HUGETLBFS_MAGIC,
  S_IFREG,
  TMPFS_MAGIC,
} from "../../ffi/fd.ts";
import { type Mapping, mmap, munmap, viewMapping } from "../../ffi/mem.ts";
import { guardGuestMemory, unguardGuestMemory } from "../../ffi/sigbus.ts";
import { type MemoryRegionDesc, ProtocolError } from "./protocol.ts";

const F_ADD_SEALS = 1033;
const F_GET_SEALS = 1034;
const F_SEAL_SHRINK = 0x2;
const PAGE = 4096;
/** Largest single region we map (an ArrayBuffer has to span it). */
const MAX_REGION_BYTES = 64 * 2 ** 30;
const MAX_ADDRESS = 2 ** 52;

/** What a Worker needs to view one mapped region (structured-clone friendly). */
export interface RegionSpec {
  guestPhys: number;
  size: number;
  userAddr: number;
  /** The mapping (page aligned), and where the region's first byte sits inside it. */
  mapAddress: bigint;
  mapLength: number;
  dataOffset: number;
}

interface MappedRegion {
  spec: RegionSpec;
  mapping: Mapping;
  /** Its slot in the SIGBUS handler's table (ffi/sigbus.ts). */
  guard: number;
  fd: number;
  /** mmap_offset + size: how long the file must stay. */
  fileEnd: number;
}

function toSafeNumber(v: bigint, what: string): number {
  if (v >= BigInt(MAX_ADDRESS)) throw new ProtocolError(`memory region: ${what} ${v} too large`);
  return Number(v);
}

/**
 * Maps one region from a front-end's fd after checking the fd is what a guest RAM fd must be:
 * a regular file (memfd, hugetlbfs, tmpfs file) at least mmap_offset + size long. Shrinking is
 * sealed where the fd allows it, so the front-end cannot truncate it under us (SIGBUS).
 */
export function mapRegion(desc: MemoryRegionDesc, fd: number): MappedRegion {
  const size = toSafeNumber(desc.memorySize, "memory_size");
  const guestPhys = toSafeNumber(desc.guestPhysAddr, "guest_phys_addr");
  const userAddr = toSafeNumber(desc.userspaceAddr, "userspace_addr");
  const mmapOffset = toSafeNumber(desc.mmapOffset, "mmap_offset");
  if (size === 0 || size > MAX_REGION_BYTES) {
    throw new ProtocolError(`memory region: size ${size} not in 1..${MAX_REGION_BYTES}`);
  }
  if (guestPhys + size > MAX_ADDRESS || userAddr + size > MAX_ADDRESS) {
    throw new ProtocolError("memory region: address range overflows");
  }
  const st = fstat(fd);
  if (st.mode !== S_IFREG) {
    throw new ProtocolError(`memory region: fd is not a regular file (${fdTarget(fd)})`);
  }
  // Only memory: a page of a disk, network or FUSE file can take as long to fault in as the
  // front-end (or whoever serves it) likes, and a worker touching it would wait that long.
  const fs = fsInfo(fd);
  if (fs.type !== TMPFS_MAGIC && fs.type !== HUGETLBFS_MAGIC) {
    throw new ProtocolError(
      `memory region: fd is not in memory (file system 0x${fs.type.toString(16)}, ` +
        `not tmpfs/memfd or hugetlbfs: ${fdTarget(fd)})`,
    );
  }
  // hugetlbfs maps (and loses pages, see ffi/sigbus.ts) in huge pages, at huge page offsets.
  const page = fs.type === HUGETLBFS_MAGIC ? fs.blockSize : PAGE;
  if (st.size < mmapOffset + size) {
    throw new ProtocolError(
      `memory region: fd holds ${st.size} bytes, region needs ${mmapOffset + size}`,
    );
  }
  const seals = libc.fcntl(fd, F_GET_SEALS, 0);
  if (seals >= 0 && (seals & F_SEAL_SHRINK) === 0) libc.fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK);
  const fileOffset = mmapOffset - (mmapOffset % page);
  const dataOffset = mmapOffset - fileOffset;
  const mapping = mmap(Math.ceil((dataOffset + size) / page) * page, { fd, offset: fileOffset });
  let guard: number;
  try {
    guard = guardGuestMemory(mapping.address, mapping.length, page);
  } catch (err) {
    munmap(mapping);
    throw new ProtocolError(`memory region: ${(err as Error).message}`);
  }
  return {
    spec: {
      guestPhys,
      size,
      userAddr,
      mapAddress: mapping.address,
      mapLength: mapping.length,
      dataOffset,
    },
    mapping,
    guard,
    fd,
    fileEnd: mmapOffset + size,
  };
}

function unmapRegion(r: MappedRegion): void {
  unguardGuestMemory(r.guard);
  munmap(r.mapping);
}

/** The control plane's table of mapped regions for one device. */
export class MemoryTable {
  #regions: MappedRegion[] = [];

  get specs(): RegionSpec[] {
    return this.#regions.map((r) => r.spec);
  }

  get count(): number {
    return this.#regions.length;
  }

  /** Maps a whole new table (SET_MEM_TABLE); on any failure nothing stays mapped or open. */
  static build(descs: MemoryRegionDesc[], fds: number[]): MemoryTable {
    if (fds.length !== descs.length) {
      for (const fd of fds) closeFd(fd);
      throw new ProtocolError(`SET_MEM_TABLE: ${descs.length} regions but ${fds.length} fds`);
    }
    const table = new MemoryTable();
    let taken = 0; // fds handed to add(), which owns them (and closes them when it throws)
    try {
      for (; taken < descs.length; taken++) table.add(descs[taken], fds[taken]);
    } catch (err) {
      table.release();
      for (let i = taken + 1; i < fds.length; i++) closeFd(fds[i]);
      throw err;
    }
    return table;
  }

  /** Adds one region (ADD_MEM_REG); takes ownership of `fd` even when it throws. */
  add(desc: MemoryRegionDesc, fd: number): void {
    let region: MappedRegion;
    try {
      region = mapRegion(desc, fd);
    } catch (err) {
      closeFd(fd);
      throw err;
    }
    const s = region.spec;
    const overlap = this.#regions.find((r) =>
      s.guestPhys < r.spec.guestPhys + r.spec.size && r.spec.guestPhys < s.guestPhys + s.size
    );
    if (overlap) {
      unmapRegion(region);
      closeFd(fd);
      throw new ProtocolError(
        `memory region at 0x${s.guestPhys.toString(16)} overlaps one at 0x${
          overlap.spec.guestPhys.toString(16)
        }`,
      );
    }
    this.#regions.push(region);
  }

  /** Takes out the region matching (REM_MEM_REG); the caller unmaps it once the datapath let go. */
  remove(desc: MemoryRegionDesc): MemoryTable {
    const gpa = Number(desc.guestPhysAddr);
    const size = Number(desc.memorySize);
    const i = this.#regions.findIndex((r) => r.spec.guestPhys === gpa && r.spec.size === size);
    if (i < 0) throw new ProtocolError(`REM_MEM_REG: no region at 0x${gpa.toString(16)}`);
    const removed = new MemoryTable();
    removed.#regions = this.#regions.splice(i, 1);
    return removed;
  }

  /** True when a region's file has shrunk below what we mapped (the front-end truncated it). */
  truncated(): boolean {
    return this.#regions.some((r) => {
      try {
        return fstat(r.fd).size < r.fileEnd;
      } catch {
        return true;
      }
    });
  }

  /** The used ring's idx field (the u16 at byte 2 of the ring), read by the control plane. */
  usedIndex(where: { region: number; offset: number }): number {
    const s = this.#regions[where.region].spec;
    return new DataView(viewMapping(s.mapAddress, s.mapLength)).getUint16(where.offset + 2, true);
  }

  /** The u16 at `byte` past a translated ring address, read by the control plane. */
  readU16(where: { region: number; offset: number }, byte: number): number {
    const s = this.#regions[where.region].spec;
    return new DataView(viewMapping(s.mapAddress, s.mapLength)).getUint16(
      where.offset + byte,
      true,
    );
  }

  /** Translates a front-end virtual address range (ring addresses) to a region and offset. */
  translateUser(uva: number, len: number): { region: number; offset: number } | null {
    for (let i = 0; i < this.#regions.length; i++) {
      const s = this.#regions[i].spec;
      if (uva >= s.userAddr && uva + len <= s.userAddr + s.size) {
        return { region: i, offset: s.dataOffset + (uva - s.userAddr) };
      }
    }
    return null;
  }

  /** The guest physical address of a front-end virtual address inside a region, or -1. */
  guestAddressOf(uva: number): number {
    for (const r of this.#regions) {
      const s = r.spec;
      if (uva >= s.userAddr && uva < s.userAddr + s.size) return s.guestPhys + (uva - s.userAddr);
    }
    return -1;
  }

  /** Unmaps and closes everything (only once no datapath view is in use). */
  release(): void {
    for (const r of this.#regions) {
      unmapRegion(r);
      closeFd(r.fd);
    }
    this.#regions = [];
  }
}

/**
 * The datapath's view of one device's memory. `translate` returns the byte offset of a guest
 * physical range inside `bytes[region]`, or -1 when the range is not wholly inside one region:
 * the caller drops that frame.
 *
 * The hand-off, explicitly: translate() and translatePart() return the offset and leave the
 * region it lies in in `region` (translatePart also the bytes it holds in `partLength`). Read
 * them right after the call that set them, before any other translate on this GuestMemory; they
 * mean nothing after a -1. (One translate per descriptor runs on the datapath: returning an
 * object or a pair would allocate per descriptor.) Every caller reads them on the next line.
 */
export class GuestMemory {
  readonly count: number;
  readonly bytes: Uint8Array[];
  readonly #start: Float64Array;
  readonly #end: Float64Array;
  readonly #base: Float64Array;
  /** Set by translate() and translatePart() when they succeed: see the class comment. */
  region = 0;

  constructor(readonly specs: RegionSpec[]) {
    this.count = specs.length;
    this.bytes = specs.map((s) => new Uint8Array(viewMapping(s.mapAddress, s.mapLength)));
    this.#start = Float64Array.from(specs, (s) => s.guestPhys);
    this.#end = Float64Array.from(specs, (s) => s.guestPhys + s.size);
    this.#base = Float64Array.from(specs, (s) => s.dataOffset - s.guestPhys);
  }

  translate(addr: number, len: number): number {
    const end = addr + len;
    for (let i = 0; i < this.count; i++) {
      if (addr >= this.#start[i] && end <= this.#end[i]) {
        this.region = i;
        return addr + this.#base[i];
      }
    }
    return -1;
  }

  /**
   * For a range that starts inside a region but runs past its end: how many bytes of it that
   * region holds (setting `region` and returning the offset like translate), or -1 if `addr` is
   * in no region. The caller continues at addr + that many bytes (the next region, if adjacent).
   */
  translatePart(addr: number): number {
    for (let i = 0; i < this.count; i++) {
      if (addr >= this.#start[i] && addr < this.#end[i]) {
        this.region = i;
        this.partLength = this.#end[i] - addr;
        return addr + this.#base[i];
      }
    }
    return -1;
  }

  /** Set by translatePart() when it succeeds: bytes of the range inside `region`. */
  partLength = 0;

  /** The guest physical address of byte `offset` of `bytes[region]` (translate's inverse). */
  guestAddress(region: number, offset: number): number {
    return offset - this.#base[region];
  }
}
