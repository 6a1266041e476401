// Names of virtio-net feature bits, for status output.
const FEATURE_NAMES: Record<number, string> = {
  0: "CSUM",
  1: "GUEST_CSUM",
  3: "MTU",
  5: "MAC",
  15: "MRG_RXBUF",
  16: "STATUS",
  17: "CTRL_VQ",
  21: "GUEST_ANNOUNCE",
  22: "MQ",
  24: "NOTIFY_ON_EMPTY",
  26: "LOG_ALL",
  27: "ANY_LAYOUT",
  28: "RING_INDIRECT_DESC",
  29: "RING_EVENT_IDX",
  30: "PROTOCOL_FEATURES",
  32: "VERSION_1",
  34: "RING_PACKED",
  35: "IN_ORDER",
};

export function featureNames(features: bigint): string[] {
  const names: string[] = [];
  for (let b = 0; b < 64; b++) {
    if (features & (1n << BigInt(b))) names.push(FEATURE_NAMES[b] ?? `bit${b}`);
  }
  return names;
}
