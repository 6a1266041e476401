// A front-end may ftruncate() the file behind its guest memory while we have it mapped; the
// next access to a page past the new end raises SIGBUS, which would kill the whole switch.
// Sealing prevents that only for files made sealable (QEMU's memfd is; DPDK's is not), so
// this module installs a SIGBUS handler: for BUS_ADRERR (a page beyond the end of the mapped
// file) it maps a private zero page over the faulting page of our mapping and returns, so the
// access is retried and reads zeros; it also counts the event so the control plane can drop
// the front-end responsible. Any other SIGBUS still ends the process (ud2 raises SIGILL).
//
// The handler must run on the faulting thread inside the signal context, where JavaScript
// cannot run, so it is 90 bytes of x86-64 machine code in an executable page of its own.
import { libc } from "./libc.ts";
import { check } from "./errno.ts";
import { MAP_ANONYMOUS, MAP_PRIVATE, mmap, PROT_READ, PROT_WRITE, viewMapping } from "./mem.ts";

const SIGBUS = 7;
const SA_SIGINFO = 4;
const PROT_EXEC = 4;

/** The handler: void handler(int sig, siginfo_t *si, void *ctx). */
function handlerCode(counterAddress: bigint): Uint8Array {
  const code = [
    0x8b,
    0x46,
    0x08, //                   mov eax, [rsi+8]         si_code
    0x83,
    0xf8,
    0x02, //                   cmp eax, 2               BUS_ADRERR?
    0x74,
    0x02, //                         je  remap
    0x0f,
    0x0b, //                         ud2                      anything else: crash
    0x48,
    0x8b,
    0x7e,
    0x10, //             remap: mov rdi, [rsi+16] si_addr
    0x48,
    0x81,
    0xe7,
    0x00,
    0xf0,
    0xff,
    0xff, // and rdi, -4096     its page
    0xbe,
    0x00,
    0x10,
    0x00,
    0x00, //       mov esi, 4096
    0xba,
    0x03,
    0x00,
    0x00,
    0x00, //       mov edx, PROT_READ|PROT_WRITE
    0x41,
    0xba,
    0x32,
    0x00,
    0x00,
    0x00, // mov r10d, MAP_PRIVATE|MAP_FIXED|MAP_ANONYMOUS
    0x49,
    0xc7,
    0xc0,
    0xff,
    0xff,
    0xff,
    0xff, // mov r8, -1         fd
    0x45,
    0x31,
    0xc9, //                   xor r9d, r9d             offset
    0xb8,
    0x09,
    0x00,
    0x00,
    0x00, //       mov eax, SYS_mmap
    0x0f,
    0x05, //                         syscall
    0x48,
    0x3d,
    0x00,
    0xf0,
    0xff,
    0xff, // cmp rax, -4096
    0x76,
    0x02, //                         jbe counted              mmap failed: crash
    0x0f,
    0x0b, //                         ud2
    0x48,
    0xb8, //                         counted: mov rax, counter address
    ...new Uint8Array(new BigUint64Array([counterAddress]).buffer),
    0xf0,
    0x48,
    0xff,
    0x00, //             lock inc qword [rax]
    0xc3, //                               ret
  ];
  return Uint8Array.from(code);
}

let counter: BigUint64Array | null = null;

/** Installs the handler once per process (idempotent). */
export function installSigbusHandler(): void {
  if (counter) return;
  if (Deno.build.arch !== "x86_64") return; // the machine code is x86-64 only
  const page = mmap(4096, { prot: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE | MAP_ANONYMOUS });
  const bytes = new Uint8Array(viewMapping(page.address, 4096));
  // The code page becomes read+exec (never writable and executable at once); the counter
  // lives in a page of its own.
  const data = mmap(4096, { prot: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE | MAP_ANONYMOUS });
  bytes.set(handlerCode(data.address), 0);
  check("mprotect", libc.mprotect(page.pointer, 4096n, PROT_READ | PROT_EXEC));
  // struct sigaction (glibc, x86_64): handler 8, sa_mask 128, sa_flags 4 (+4 pad), restorer 8.
  const act = new Uint8Array(new ArrayBuffer(152));
  const view = new DataView(act.buffer);
  view.setBigUint64(0, page.address, true);
  view.setInt32(136, SA_SIGINFO, true);
  check("sigaction", libc.sigaction(SIGBUS, act, null));
  counter = new BigUint64Array(viewMapping(data.address, 8));
}

/** How many guest-memory pages were replaced after their file shrank (0 if not installed). */
export function sigbusCount(): number {
  return counter ? Number(Atomics.load(counter, 0)) : 0;
}
