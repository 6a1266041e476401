// Classic pcap files (LINKTYPE_ETHERNET) and self-verifying Ethernet test frames.
// Frames go into DPDK's pcap PMD (rx_pcap=) and come back out of it (tx_pcap=), so tests
// can compare exact bytes after a trip through a vhost-user back-end.

export const LINKTYPE_ETHERNET = 1;
const MAGIC_US = 0xa1b2c3d4;
const MAGIC_NS = 0xa1b23c4d;

export interface PcapPacket {
  data: Uint8Array;
  /** Original length on the wire (>= data.length when truncated by snaplen). */
  origLen: number;
  tsSec: number;
  /** Sub-second part, in microseconds or nanoseconds depending on the file. */
  tsFrac: number;
}

export interface PcapFile {
  nano: boolean;
  snaplen: number;
  linktype: number;
  packets: PcapPacket[];
}

/** Encodes frames as a little-endian pcap file; timestamps are 1 µs (or ns) apart. */
export function encodePcap(
  frames: readonly Uint8Array[],
  opts: { nano?: boolean; snaplen?: number } = {},
): Uint8Array {
  const snaplen = opts.snaplen ?? 262144;
  const total = 24 + frames.reduce((n, f) => n + 16 + f.length, 0);
  const out = new Uint8Array(total);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, opts.nano ? MAGIC_NS : MAGIC_US, true);
  dv.setUint16(4, 2, true);
  dv.setUint16(6, 4, true);
  dv.setUint32(16, snaplen, true);
  dv.setUint32(20, LINKTYPE_ETHERNET, true);
  let off = 24;
  frames.forEach((f, i) => {
    if (f.length > snaplen) {
      throw new Error(`frame ${i} (${f.length} B) exceeds snaplen ${snaplen}`);
    }
    dv.setUint32(off, 1, true);
    dv.setUint32(off + 4, i, true);
    dv.setUint32(off + 8, f.length, true);
    dv.setUint32(off + 12, f.length, true);
    out.set(f, off + 16);
    off += 16 + f.length;
  });
  return out;
}

/** Decodes a classic pcap file of either byte order, µs or ns magic. */
export function decodePcap(bytes: Uint8Array): PcapFile {
  if (bytes.length < 24) throw new Error(`pcap too short: ${bytes.length} bytes`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let le = true;
  let magic = dv.getUint32(0, true);
  if (magic !== MAGIC_US && magic !== MAGIC_NS) {
    le = false;
    magic = dv.getUint32(0, false);
  }
  if (magic !== MAGIC_US && magic !== MAGIC_NS) {
    throw new Error(`not a classic pcap file (magic 0x${dv.getUint32(0, true).toString(16)})`);
  }
  const file: PcapFile = {
    nano: magic === MAGIC_NS,
    snaplen: dv.getUint32(16, le),
    linktype: dv.getUint32(20, le) & 0x0fffffff,
    packets: [],
  };
  let off = 24;
  while (off < bytes.length) {
    if (off + 16 > bytes.length) throw new Error(`truncated record header at offset ${off}`);
    const incl = dv.getUint32(off + 8, le);
    if (off + 16 + incl > bytes.length) throw new Error(`truncated record at offset ${off}`);
    file.packets.push({
      tsSec: dv.getUint32(off, le),
      tsFrac: dv.getUint32(off + 4, le),
      origLen: dv.getUint32(off + 12, le),
      data: bytes.slice(off + 16, off + 16 + incl),
    });
    off += 16 + incl;
  }
  return file;
}

export async function writePcap(
  path: string,
  frames: readonly Uint8Array[],
  opts: { nano?: boolean; snaplen?: number } = {},
): Promise<void> {
  await Deno.writeFile(path, encodePcap(frames, opts));
}

export async function readPcap(path: string): Promise<PcapFile> {
  return decodePcap(await Deno.readFile(path));
}

/** Just the frames of a pcap file, checking that none was truncated. */
export async function readPcapFrames(path: string): Promise<Uint8Array[]> {
  const file = await readPcap(path);
  if (file.linktype !== LINKTYPE_ETHERNET) throw new Error(`${path}: linktype ${file.linktype}`);
  return file.packets.map((p, i) => {
    if (p.origLen !== p.data.length) {
      throw new Error(`${path}: packet ${i} truncated (${p.data.length} of ${p.origLen} B)`);
    }
    return p.data;
  });
}

export function macToBytes(mac: string): Uint8Array {
  const parts = mac.split(/[:-]/);
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{1,2}$/.test(p))) {
    throw new Error(`bad MAC address: ${mac}`);
  }
  return Uint8Array.from(parts, (p) => parseInt(p, 16));
}

export function formatMac(bytes: Uint8Array, offset = 0): string {
  return Array.from(bytes.subarray(offset, offset + 6), (b) => b.toString(16).padStart(2, "0"))
    .join(":");
}

/** IEEE "local experimental" ethertype: never interpreted by any stack. */
export const ETHERTYPE_TEST = 0x88b5;
const TEST_MAGIC = 0x56535754; // "VSWT"
/** Bytes of our test header after the ethertype: magic, seq, frame length. */
const TEST_HDR = 12;

export interface EthFrameOptions {
  dst: string | Uint8Array;
  src: string | Uint8Array;
  ethertype?: number;
  /** 802.1Q tag: VLAN id, or id plus priority. */
  vlan?: number | { id: number; pcp?: number };
  /**
   * Explicit payload (after the ethertype), zero-padded up to `length` if given; no padding
   * to the 60-byte minimum otherwise. Without it a test header + pattern is generated.
   */
  payload?: Uint8Array;
  /** Total frame length without FCS (60 = the 64-byte minimum on the wire). */
  length?: number;
  /** Sequence number written into generated payloads and seeding their pattern. */
  seq?: number;
}

/** Deterministic per-(seq, offset) byte, so swapped, shifted or corrupted bytes show up. */
function patternByte(seq: number, i: number): number {
  return (Math.imul(seq + 1, 0x9e3779b1) >>> 24 ^ i * 7 ^ i >>> 8) & 0xff;
}

function l2HeaderLength(vlan: EthFrameOptions["vlan"]): number {
  return vlan === undefined ? 14 : 18;
}

/**
 * Builds an Ethernet frame. Without `payload`, the body is the "VSWT" magic, `seq`,
 * the frame length and a pattern derived from `seq`; `checkTestFrame` verifies it.
 */
export function ethFrame(o: EthFrameOptions): Uint8Array {
  const hdr = l2HeaderLength(o.vlan);
  const len = o.payload ? Math.max(hdr + o.payload.length, o.length ?? 0) : (o.length ?? 60);
  if (!o.payload && len < hdr + TEST_HDR) throw new Error(`frame length ${len} too short`);
  const f = new Uint8Array(len);
  const dv = new DataView(f.buffer);
  f.set(typeof o.dst === "string" ? macToBytes(o.dst) : o.dst, 0);
  f.set(typeof o.src === "string" ? macToBytes(o.src) : o.src, 6);
  if (o.vlan !== undefined) {
    const v = typeof o.vlan === "number" ? { id: o.vlan } : o.vlan;
    dv.setUint16(12, 0x8100);
    dv.setUint16(14, ((v.pcp ?? 0) << 13) | (v.id & 0xfff));
  }
  dv.setUint16(hdr - 2, o.ethertype ?? ETHERTYPE_TEST);
  if (o.payload) {
    f.set(o.payload, hdr);
    return f;
  }
  const seq = o.seq ?? 0;
  dv.setUint32(hdr, TEST_MAGIC);
  dv.setUint32(hdr + 4, seq >>> 0);
  dv.setUint32(hdr + 8, len);
  for (let i = hdr + TEST_HDR; i < len; i++) f[i] = patternByte(seq, i);
  return f;
}

export interface TestFrameInfo {
  dst: string;
  src: string;
  vlan?: number;
  ethertype: number;
  seq: number;
  length: number;
}

/** Parses and verifies a frame built by `ethFrame` (generated payload); throws on any damage. */
export function checkTestFrame(f: Uint8Array): TestFrameInfo {
  const dv = new DataView(f.buffer, f.byteOffset, f.byteLength);
  if (f.length < 14 + TEST_HDR) throw new Error(`frame too short: ${f.length} B`);
  const tagged = dv.getUint16(12) === 0x8100;
  const hdr = tagged ? 18 : 14;
  if (f.length < hdr + TEST_HDR || dv.getUint32(hdr) !== TEST_MAGIC) {
    throw new Error(`not a test frame (${f.length} B)`);
  }
  const seq = dv.getUint32(hdr + 4);
  const length = dv.getUint32(hdr + 8);
  if (length !== f.length) throw new Error(`seq ${seq}: length ${f.length}, expected ${length}`);
  for (let i = hdr + TEST_HDR; i < f.length; i++) {
    if (f[i] !== patternByte(seq, i)) throw new Error(`seq ${seq}: payload differs at byte ${i}`);
  }
  return {
    dst: formatMac(f, 0),
    src: formatMac(f, 6),
    vlan: tagged ? dv.getUint16(14) & 0xfff : undefined,
    ethertype: dv.getUint16(hdr - 2),
    seq,
    length,
  };
}

/** First differing byte offset of two frames, or -1 when identical. */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** Describes how `actual` differs from `expected` (order matters), or null when identical. */
export function diffFrames(expected: readonly Uint8Array[], actual: readonly Uint8Array[]) {
  const problems: string[] = [];
  if (actual.length !== expected.length) {
    problems.push(`got ${actual.length} frames, expected ${expected.length}`);
  }
  for (let i = 0; i < Math.min(expected.length, actual.length) && problems.length < 5; i++) {
    const at = firstDifference(expected[i], actual[i]);
    if (at >= 0) {
      problems.push(
        `frame ${i}: ${actual[i].length} B vs ${
          expected[i].length
        } B expected, first difference at byte ${at}`,
      );
    }
  }
  return problems.length ? problems.join("; ") : null;
}
