// Guest memory that shrinks under us. A front-end may ftruncate() the file behind its guest
// memory while we have it mapped; the next access to a page past the new end raises SIGBUS,
// which would kill the whole switch. Sealing prevents that only for files made sealable
// (QEMU's memfd is; DPDK's and hugetlbfs files are not), so this module installs a handler.
//
// What the handler repairs: a SIGBUS with si_code BUS_ADRERR (an access beyond the end of the
// mapped file) whose address lies in a range registered with guardGuestMemory() (every mapped
// guest region: ports/vhost_user/memory.ts). It maps a private, zero-filled anonymous page of
// the range's page size (4 KiB for memfd/tmpfs, 2 MiB or 1 GiB for hugetlbfs, whose mappings
// cannot be split at a smaller boundary) over the faulting page and returns: the access is
// retried, reads zeros, and writes go to that private page. It counts the repair, and the
// control plane hangs up on the front-end whose file shrank (switch/port_control.ts).
//
// Every other SIGBUS (another si_code, an address outside guest memory, or a repair whose mmap
// failed) goes to the handler that was installed before ours, called with the same arguments;
// if there was none (SIG_DFL or SIG_IGN), the default action is restored and the handler
// returns, so the access faults again and the process ends with SIGBUS as it would without us.
//
// The handler runs on the faulting thread inside the signal context, where JavaScript cannot
// run, so it is x86-64 machine code (ffi/signal.ts); its data (the repair counter, the previous
// handler, the ranges) lives in pages of its own that the control plane writes.
import { MAP_ANONYMOUS, MAP_PRIVATE, mmap, PROT_READ, PROT_WRITE, viewMapping } from "./mem.ts";
import { executable, SA_SIGINFO, setHandler } from "./signal.ts";

const SIGBUS = 7;
/** Ranges the handler can hold: 32 memory slots each for 64 ports. */
const SLOTS = 2048;
const SLOT_WORDS = 3; // start, end, page size (0: free)
// The data pages, in 64-bit words.
const COUNTER = 0;
const PREVIOUS = 1;
/** A zeroed struct kernel_sigaction (handler SIG_DFL), 4 words. */
const DEFAULT_ACTION = 8;
const TABLE = 16;
const DATA_BYTES = 8 * (TABLE + SLOTS * SLOT_WORDS);

const u64 = (x: bigint) => [...new Uint8Array(new BigUint64Array([x]).buffer)];
const u32 = (x: number) => [...new Uint8Array(new Uint32Array([x]).buffer)];

/** void handler(int sig [edi], siginfo_t *si [rsi], void *context [rdx]). */
function handlerCode(data: bigint): Uint8Array {
  const word = (i: number) => u64(data + BigInt(8 * i));
  // deno-fmt-ignore
  const code = [
    0x83, 0x7e, 0x08, 0x02, //         00 cmp dword [rsi+8], 2      si_code BUS_ADRERR?
    0x75, 0x74, //                     04 jne chain
    0x4c, 0x8b, 0x5e, 0x10, //         06 mov r11, [rsi+16]         si_addr
    0x49, 0xb8, ...word(TABLE), //     0a movabs r8, table
    0xb9, ...u32(SLOTS), //            14 mov ecx, SLOTS
    0x49, 0x8b, 0x40, 0x10, //   find: 19 mov rax, [r8+16]          the range's page size
    0x48, 0x85, 0xc0, //               1d test rax, rax             0: a free slot
    0x74, 0x50, //                     20 je next
    0x4d, 0x3b, 0x18, //               22 cmp r11, [r8]             below the start?
    0x72, 0x4b, //                     25 jb next
    0x4d, 0x3b, 0x58, 0x08, //         27 cmp r11, [r8+8]           at or past the end?
    0x73, 0x45, //                     2b jae next
    0x57, //                           2d push rdi                  kept for the chain
    0x56, //                           2e push rsi
    0x52, //                           2f push rdx
    0x48, 0x89, 0xc6, //               30 mov rsi, rax              length: one page
    0x48, 0xf7, 0xd8, //               33 neg rax                   -page size: the mask
    0x49, 0x21, 0xc3, //               36 and r11, rax              the page's first byte
    0x4c, 0x89, 0xdf, //               39 mov rdi, r11
    0xba, 0x03, 0x00, 0x00, 0x00, //   3c mov edx, 3                PROT_READ | PROT_WRITE
    0x41, 0xba, 0x32, 0x00, 0x00, 0x00, // 41 mov r10d, 0x32        MAP_PRIVATE|MAP_FIXED|MAP_ANONYMOUS
    0x49, 0xc7, 0xc0, 0xff, 0xff, 0xff, 0xff, // 47 mov r8, -1      no fd
    0x45, 0x31, 0xc9, //               4e xor r9d, r9d              offset 0
    0xb8, 0x09, 0x00, 0x00, 0x00, //   51 mov eax, 9                SYS_mmap
    0x0f, 0x05, //                     56 syscall
    0x5a, //                           58 pop rdx
    0x5e, //                           59 pop rsi
    0x5f, //                           5a pop rdi
    0x48, 0x3d, 0x00, 0xf0, 0xff, 0xff, // 5b cmp rax, -4096        an error?
    0x77, 0x17, //                     61 ja chain                  not repaired
    0x48, 0xb8, ...word(COUNTER), //   63 movabs rax, counter
    0xf0, 0x48, 0xff, 0x00, //         6d lock inc qword [rax]
    0xc3, //                           71 ret                       the access is retried
    0x49, 0x83, 0xc0, 0x18, //   next: 72 add r8, 24                the next slot
    0xff, 0xc9, //                     76 dec ecx
    0x75, 0x9f, //                     78 jne find
    0x48, 0xb8, ...word(PREVIOUS), // chain: 7a movabs rax, previous
    0x48, 0x8b, 0x00, //               84 mov rax, [rax]            the previous handler
    0x48, 0x83, 0xf8, 0x01, //         87 cmp rax, 1                SIG_DFL (0) or SIG_IGN (1)?
    0x76, 0x02, //                     8b jbe restore
    0xff, 0xe0, //                     8d jmp rax                   it runs with our arguments
    0xbf, 0x07, 0x00, 0x00, 0x00, // restore: 8f mov edi, 7         SIGBUS
    0x48, 0xbe, ...word(DEFAULT_ACTION), // 94 movabs rsi, default action
    0x31, 0xd2, //                     9e xor edx, edx              no old action
    0x41, 0xba, 0x08, 0x00, 0x00, 0x00, // a0 mov r10d, 8           sizeof the kernel's sigset
    0xb8, 0x0d, 0x00, 0x00, 0x00, //   a6 mov eax, 13               SYS_rt_sigaction
    0x0f, 0x05, //                     ab syscall
    0xc3, //                           ad ret                       faults again: default action
  ];
  return Uint8Array.from(code);
}

let words: BigUint64Array | null = null;
let nextFree = 0;

/** Installs the handler once per process (idempotent), chained to the one installed before. */
export function installSigbusHandler(): void {
  if (words || Deno.build.arch !== "x86_64") return; // the machine code is x86-64 only
  const data = mmap(DATA_BYTES, {
    prot: PROT_READ | PROT_WRITE,
    flags: MAP_PRIVATE | MAP_ANONYMOUS,
  });
  const w = new BigUint64Array(viewMapping(data.address, DATA_BYTES));
  const previous = setHandler(SIGBUS, executable(handlerCode(data.address)), SA_SIGINFO);
  Atomics.store(w, PREVIOUS, new DataView(previous.buffer).getBigUint64(0, true));
  words = w;
}

/**
 * Registers [address, address + length) as guest memory whose lost pages (a file truncated
 * under us) the handler replaces with zero pages of `pageSize` bytes. Returns the slot to pass
 * to unguardGuestMemory before the range is unmapped; -1 if no handler is installed.
 */
export function guardGuestMemory(address: bigint, length: number, pageSize: number): number {
  const w = words;
  if (w === null) return -1;
  for (let k = 0; k < SLOTS; k++) {
    const slot = (nextFree + k) % SLOTS;
    const at = TABLE + SLOT_WORDS * slot;
    if (Atomics.load(w, at + 2) !== 0n) continue;
    Atomics.store(w, at, address);
    Atomics.store(w, at + 1, address + BigInt(length));
    Atomics.store(w, at + 2, BigInt(pageSize)); // last: the slot is live from here on
    nextFree = slot + 1;
    return slot;
  }
  throw new Error(`more than ${SLOTS} guest memory regions mapped`);
}

/** Forgets a range (call before unmapping it: the address may be reused). */
export function unguardGuestMemory(slot: number): void {
  if (words === null || slot < 0) return;
  Atomics.store(words, TABLE + SLOT_WORDS * slot + 2, 0n);
}

/** How many guest-memory pages were replaced after their file shrank (0 if not installed). */
export function sigbusCount(): number {
  return words ? Number(Atomics.load(words, COUNTER)) : 0;
}
