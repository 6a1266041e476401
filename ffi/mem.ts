import { libc } from "./libc.ts";
import { check, errno, SysError } from "./errno.ts";

export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MAP_PRIVATE = 2;
export const MAP_ANONYMOUS = 0x20;
export const MAP_POPULATE = 0x8000;
const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;
const MAP_FAILED = -1n;

const encoder = new TextEncoder();

export function cString(s: string): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(s.length * 3 + 1);
  const { written } = encoder.encodeInto(s, bytes);
  return bytes.subarray(0, written + 1);
}

export function memfdCreate(name: string, size: number, flags = 0): number {
  const fd = check("memfd_create", libc.memfd_create(cString(name), MFD_CLOEXEC | flags), name);
  if (size > 0) {
    const r = libc.ftruncate(fd, BigInt(size));
    if (r < 0) {
      const e = errno();
      libc.close(fd);
      throw new SysError("ftruncate", e, name);
    }
  }
  return fd;
}

/** A live mmap: `address` is the pointer's value, so Workers can rebuild a view of it. */
export interface Mapping {
  readonly pointer: Deno.PointerObject;
  readonly address: bigint;
  readonly length: number;
}

export function mmap(
  length: number,
  opts: { fd?: number; offset?: number; prot?: number; flags?: number } = {},
): Mapping {
  const fd = opts.fd ?? -1;
  const prot = opts.prot ?? (PROT_READ | PROT_WRITE);
  const flags = opts.flags ?? (fd < 0 ? MAP_SHARED | MAP_ANONYMOUS : MAP_SHARED);
  const p = libc.mmap(null, BigInt(length), prot, flags, fd, BigInt(opts.offset ?? 0));
  const address = p === null ? 0n : Deno.UnsafePointer.value(p);
  if (p === null || BigInt.asIntN(64, address) === MAP_FAILED) {
    throw new SysError("mmap", errno(), `fd ${fd} length ${length} offset ${opts.offset ?? 0}`);
  }
  return { pointer: p, address, length };
}

export function munmap(m: Mapping): void {
  check("munmap", libc.munmap(m.pointer, BigInt(m.length)));
}

/** An ArrayBuffer over mapped memory, in this thread or a Worker (rebuilt from the address). */
export function viewMapping(address: bigint, length: number): ArrayBuffer {
  const p = Deno.UnsafePointer.create(address);
  if (p === null) throw new Error("viewMapping: null address");
  return Deno.UnsafePointerView.getArrayBuffer(p, length);
}
