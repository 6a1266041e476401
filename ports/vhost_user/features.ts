// virtio feature bits (virtio 1.2: 5.1.3 "Feature bits" of the network device, 6 "Reserved
// Feature Bits") and the vhost bits 26 and 30, name -> bit: the one table of them. The constants
// device.ts negotiates with and the names /ports shows are derived from it.

export const VIRTIO_FEATURES = {
  VIRTIO_NET_F_CSUM: 0,
  VIRTIO_NET_F_GUEST_CSUM: 1,
  VIRTIO_NET_F_MTU: 3,
  VIRTIO_NET_F_MAC: 5,
  VIRTIO_NET_F_GUEST_TSO4: 7,
  VIRTIO_NET_F_GUEST_TSO6: 8,
  VIRTIO_NET_F_GUEST_ECN: 9,
  VIRTIO_NET_F_HOST_TSO4: 11,
  VIRTIO_NET_F_HOST_TSO6: 12,
  VIRTIO_NET_F_HOST_ECN: 13,
  VIRTIO_NET_F_MRG_RXBUF: 15,
  VIRTIO_NET_F_STATUS: 16,
  VIRTIO_NET_F_CTRL_VQ: 17,
  /**
   * The guest announces itself after a migration, through the control queue QEMU serves. Not
   * offered: a QEMU 7.2 TCG guest's driver spun forever on that control command after an
   * incoming migration (soft lockup seen here); without it QEMU asks the back-end to announce
   * the guest (SEND_RARP), which needs nothing from the guest.
   */
  VIRTIO_NET_F_GUEST_ANNOUNCE: 21,
  VIRTIO_NET_F_MQ: 22,
  VIRTIO_F_NOTIFY_ON_EMPTY: 24,
  /**
   * A vhost bit: the back-end marks what it writes into guest memory in the front-end's dirty
   * log while SET_FEATURES has it on (live migration).
   */
  VHOST_F_LOG_ALL: 26,
  VIRTIO_F_ANY_LAYOUT: 27,
  VIRTIO_RING_F_INDIRECT_DESC: 28,
  VIRTIO_RING_F_EVENT_IDX: 29,
  /** A vhost-user bit: the back-end speaks GET/SET_PROTOCOL_FEATURES. */
  VHOST_USER_F_PROTOCOL_FEATURES: 30,
  VIRTIO_F_VERSION_1: 32,
  VIRTIO_F_RING_PACKED: 34,
  VIRTIO_F_IN_ORDER: 35,
} as const;

export const {
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_GUEST_ECN,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_HOST_ECN,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_GUEST_ANNOUNCE,
  VIRTIO_NET_F_MQ,
  VIRTIO_F_NOTIFY_ON_EMPTY,
  VHOST_F_LOG_ALL,
  VIRTIO_F_ANY_LAYOUT,
  VIRTIO_RING_F_INDIRECT_DESC,
  VIRTIO_RING_F_EVENT_IDX,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VIRTIO_F_VERSION_1,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_IN_ORDER,
} = VIRTIO_FEATURES;

/**
 * Bit -> the name /ports shows: the spec name less its VIRTIO_NET_F_ / VIRTIO_F_ / VHOST_(USER_)F_
 * prefix ("MRG_RXBUF", "VERSION_1"); ring bits keep RING_ ("RING_EVENT_IDX").
 */
const SHORT_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(VIRTIO_FEATURES).map((
    [name, bit],
  ) => [
    bit,
    name.replace(/^(VIRTIO_NET_F_|VIRTIO_F_|VHOST_USER_F_|VHOST_F_)/, "").replace(
      /^VIRTIO_RING_F_/,
      "RING_",
    ),
  ]),
);

export function featureNames(features: bigint): string[] {
  const names: string[] = [];
  for (let b = 0; b < 64; b++) {
    if (features & (1n << BigInt(b))) names.push(SHORT_NAMES.get(b) ?? `bit${b}`);
  }
  return names;
}
