// Ring ops that also mark what they write in the migration dirty log (dirty_log.ts). A ring
// opened while the front-end logs gets one of these classes instead of the plain one, so the
// datapath of a ring that is not logged carries no logging branch at all.
//
// What the device writes into guest memory, and where it is marked:
// - an RX chain's buffers: putUsed(token, len) follows the walk of that very chain (the
//   virtio-net layer writes a chain, then puts it), so the chain's segments are still in
//   seg*; the first `len` bytes of them are what was written; a frame's num_buffers, written
//   after its last buffer was taken, is marked again by wroteLate();
// - the used ring (split) or the descriptor ring and device event area (packed), and
//   avail_event / the used flags: storeUsed() and setGuestKicks() mark the ring areas the
//   control plane listed (QueueSpec.ringLog), at the address VHOST_VRING_F_LOG asked for.
import type { DirtyLog } from "./dirty_log.ts";
import type { GuestMemory } from "./memory.ts";
import { PackedQueue } from "./packed_queue.ts";
import { SplitQueue } from "./split_queue.ts";
import type { VirtQueue } from "./virtqueue.ts";

// deno-lint-ignore no-explicit-any
type QueueClass = new (...args: any[]) => VirtQueue & { readonly mem: GuestMemory };

function logging<B extends QueueClass>(Base: B) {
  return class LoggedQueue extends Base {
    log: DirtyLog | null = null;
    /** Guest physical [address, length] pairs of the ring areas the device writes. */
    ringLog: number[] = [];

    override putUsed(token: number, len: number): void {
      super.putUsed(token, len);
      const log = this.log!;
      const mem = this.mem;
      for (let s = 0; s < this.segCount && len > 0; s++) {
        const n = Math.min(len, this.segLength[s]);
        log.mark(mem.guestAddress(this.segRegion[s], this.segOffset[s]), n);
        len -= n;
      }
    }

    override wroteLate(region: number, offset: number, len: number): void {
      this.log!.mark(this.mem.guestAddress(region, offset), len);
    }

    override storeUsed(): void {
      super.storeUsed();
      this.#markRings();
    }

    override setGuestKicks(on: boolean): void {
      super.setGuestKicks(on);
      this.#markRings();
    }

    #markRings(): void {
      const r = this.ringLog;
      for (let i = 0; i < r.length; i += 2) this.log!.mark(r[i], r[i + 1]);
    }
  };
}

export const LoggedSplitQueue = logging(SplitQueue);
export const LoggedPackedQueue = logging(PackedQueue);
