// The checksum and segmentation routines (ports/offload/) against the kernel: the fixtures are
// TCP streams (IPv4 and IPv6, 150001 bytes: an odd last segment, PSH and FIN) captured here with
// tcpdump on both sides of a Linux bridge whose outgoing port had TSO and checksum offload off:
// super4/super6.pcap hold what a namespace sent with the kernel's defaults (GSO super-frames and
// frames with their checksum left partial), segs4/segs6.pcap what the kernel's own software
// GSO and checksum made of them. The switch's routines must produce the same bytes.
import assert from "node:assert/strict";
import { firstDifference, readPcapFrames } from "../peers/pcap.ts";
import { checksumOf, completeChecksum, onesSum } from "../ports/offload/checksum.ts";
import {
  FrameHeaders,
  GSO_BAD_IP,
  GSO_UNSUPPORTED_EXT,
  parseHeaders,
  pseudoSum,
  segment,
} from "../ports/offload/gso.ts";
import {
  BAD_CSUM_START,
  BAD_GSO_SIZE,
  BAD_GSO_TYPE,
  BAD_HDR_LEN,
  OFFLOAD_CSUM,
  OFFLOAD_ECN,
  OFFLOAD_TSO4,
  readVirtioNetHdr,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_UDP,
  writeVirtioNetHdr,
} from "../ports/offload/virtio_net_hdr.ts";
import { OffloadFallback, type PlainTransmit } from "../ports/offload/fallback.ts";
import { CSUM_FILLED, DROP_BAD_OFFLOAD, GSO_SEGMENTED } from "../ports/counters.ts";
import { COUNTER_FIELDS } from "../ports/counters.ts";
import { EgressFrame, FrameBatch, MAX_FRAME_LEN } from "../ports/port.ts";
import { createTapBuffer, TapReader, TapWriter } from "../switch/tap.ts";

const FIXTURES = new URL("./fixtures/offload/", import.meta.url);
const fixture = (name: string) => readPcapFrames(new URL(name, FIXTURES).pathname);

/** Collects segments as copies. */
class Collect implements PlainTransmit {
  readonly frames: Uint8Array[] = [];
  segment(seg: Uint8Array, len: number): boolean {
    this.frames.push(seg.slice(0, len));
    return true;
  }
  transmitPlain(src: Uint8Array, f: EgressFrame): boolean {
    const out = new Uint8Array(f.length);
    out.set(f.head.subarray(0, f.headLength));
    out.set(src.subarray(f.tailStart, f.tailEnd), f.headLength);
    this.frames.push(out);
    return true;
  }
}

/** An independent check: the L4 checksum of a complete frame verifies (sums to 0xffff). */
function l4ChecksumOk(f: Uint8Array): boolean {
  const h = new FrameHeaders();
  assert.equal(parseHeaders(f, f.length, h), 0);
  const sum = onesSum(f, h.l4, f.length, pseudoSum(f, h, f.length - h.l4));
  return checksumOf(sum) === 0;
}

const payloadOf = (f: Uint8Array) => {
  const h = new FrameHeaders();
  assert.equal(parseHeaders(f, f.length, h), 0);
  return f.length - h.end;
};

for (const v of ["4", "6"]) {
  Deno.test(`IPv${v} TCP: segments and checksums are byte-identical to the kernel's`, async () => {
    const supers = await fixture(`super${v}.pcap`);
    const kernel = await fixture(`segs${v}.pcap`);
    const mine: Uint8Array[] = [];
    const h = new FrameHeaders();
    const seg = new Uint8Array(MAX_FRAME_LEN);
    const out = new Collect();
    let gsoFrames = 0;
    let k = 0; // next kernel frame
    for (const s of supers) {
      const f = s.slice();
      assert.equal(parseHeaders(f, f.length, h), 0);
      if (f.length > 1514) {
        // gso_size is the MSS: the payload of the kernel's first segment of this frame.
        const mss = payloadOf(kernel[k]);
        const n = segment(f, f.length, h, mss, seg, { segment: (b, l) => out.segment(b, l) });
        gsoFrames++;
        k += n;
      } else {
        completeChecksum(f, f.length, h.l4, 16);
        out.frames.push(f);
        k++;
      }
    }
    mine.push(...out.frames);
    assert.ok(gsoFrames >= 2, `the fixture has GSO frames (${gsoFrames})`);
    assert.equal(mine.length, kernel.length, "as many frames as the kernel made");
    for (let i = 0; i < kernel.length; i++) {
      assert.deepEqual(mine[i], kernel[i], `frame ${i} (${kernel[i].length} B)`);
    }
    // The stream's last data segment has an odd length and PSH; only last segments have PSH.
    assert.ok(kernel.some((f) => payloadOf(f) % 2 === 1), "an odd-length segment is in there");
  });
}

// A sink that sends payloads from where they lie (a VXLAN port) gets each segment as its headers
// and a range of the caller's buffer: together they are the kernel's segment, byte for byte. A
// payload at an odd address is copied instead (its sum would go a byte at a time).
Deno.test("segments whose payload stays where it lies are the kernel's segments", async () => {
  const supers = await fixture("super4.pcap");
  const kernel = await fixture("segs4.pcap");
  const h = new FrameHeaders();
  const seg = new Uint8Array(MAX_FRAME_LEN);
  for (const shift of [0, 1]) {
    let inPlace = 0;
    let copied = 0;
    let k = 0; // next kernel frame
    const sink = {
      segment(b: Uint8Array, len: number) {
        copied++;
        assert.ok(
          firstDifference(b.subarray(0, len), kernel[k++]) < 0,
          `shift ${shift}: frame ${k - 1}`,
        );
        return true;
      },
      segmentInPlace(b: Uint8Array, headerLen: number, src: Uint8Array, at: number, n: number) {
        inPlace++;
        const out = new Uint8Array(headerLen + n);
        out.set(b.subarray(0, headerLen));
        out.set(src.subarray(at, at + n), headerLen);
        assert.ok(firstDifference(out, kernel[k++]) < 0, `shift ${shift}: frame ${k - 1}`);
        return true;
      },
    };
    for (const f of supers) {
      assert.equal(parseHeaders(f, f.length, h), 0);
      if (f.length <= 1514) {
        k++;
        continue;
      }
      // The caller gathered the headers alone; the payload is read from `src`, `shift` bytes in.
      const src = new Uint8Array(f.length + 1);
      src.set(f, shift);
      segment(f.slice(0, h.end), f.length, h, payloadOf(kernel[k]), seg, sink, src, shift);
    }
    assert.equal(k, kernel.length, "every kernel frame compared");
    assert.ok(shift === 0 ? inPlace > 40 && copied === 0 : inPlace === 0 && copied > 40);
  }
});

/** A TCP/IPv4 super-frame with IP options and the given flags, checksum partial. */
function tcp4(payload: number, flags: number, options = 4): Uint8Array {
  const ihl = 20 + options;
  const f = new Uint8Array(14 + ihl + 20 + payload);
  f.set([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
  const ip = 14;
  f[ip] = 0x40 | (ihl / 4);
  f[ip + 8] = 64;
  f[ip + 9] = 6;
  f.set([10, 0, 0, 1, 10, 0, 0, 2], ip + 12);
  for (let i = 20; i < ihl; i++) f[ip + i] = 1; // NOP options
  f[ip + 4] = 0x12;
  f[ip + 5] = 0x34;
  const tcp = ip + ihl;
  f[tcp + 4] = 0xff; // a sequence number that wraps
  f[tcp + 5] = 0xff;
  f[tcp + 6] = 0xfa;
  f[tcp + 12] = 5 << 4;
  f[tcp + 13] = flags;
  for (let i = tcp + 20; i < f.length; i++) f[i] = (i * 7) & 0xff;
  return f;
}

Deno.test("IPv4 with options: lengths, ids, sequence numbers, FIN/PSH last, CWR first", () => {
  const f = tcp4(5001, 0x80 | 0x08 | 0x01 | 0x10); // CWR PSH FIN ACK
  const h = new FrameHeaders();
  assert.equal(parseHeaders(f, f.length, h), 0);
  assert.equal(h.l4, 14 + 24);
  const out = new Collect();
  const n = segment(f, f.length, h, 1000, new Uint8Array(MAX_FRAME_LEN), out);
  assert.equal(n, 6);
  let seq = 0xfffffa00;
  out.frames.forEach((s, i) => {
    const last = i === n - 1;
    assert.equal(s.length, 14 + 24 + 20 + (last ? 1 : 1000));
    assert.equal((s[16] << 8) | s[17], s.length - 14, "IPv4 total length");
    assert.equal((s[18] << 8) | s[19], 0x1234 + i, "IPv4 id counts up");
    assert.equal(checksumOf(onesSum(s, 14, 38, 0)), 0, "IPv4 header checksum");
    const got = ((s[42] << 24) | (s[43] << 16) | (s[44] << 8) | s[45]) >>> 0;
    assert.equal(got, seq >>> 0, "sequence number");
    seq = (seq + 1000) >>> 0;
    assert.equal(s[38 + 13], (i === 0 ? 0x80 : 0) | (last ? 0x09 : 0) | 0x10, `flags ${i}`);
    assert.ok(l4ChecksumOk(s), `TCP checksum of segment ${i}`);
  });
});

Deno.test("IPv6 with a destination options header segments; a routing header is refused", () => {
  const payload = 3333;
  const f = new Uint8Array(14 + 40 + 8 + 20 + payload);
  f.set([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd]);
  f[14] = 0x60;
  f[14 + 6] = 60; // next: destination options
  f[14 + 7] = 64;
  f[14 + 8] = 0xfd;
  f[14 + 23] = 1;
  f[14 + 24] = 0xfd;
  f[14 + 39] = 2;
  f[54] = 6; // then TCP; length 0 = 8 bytes; PadN
  f[56] = 1;
  f[57] = 4;
  f[62 + 12] = 5 << 4;
  f[62 + 13] = 0x18;
  for (let i = 82; i < f.length; i++) f[i] = i & 0xff;
  const h = new FrameHeaders();
  assert.equal(parseHeaders(f, f.length, h), 0);
  assert.deepEqual([h.l4, h.end, h.ipv6, h.tcp], [62, 82, true, true]);
  const out = new Collect();
  assert.equal(segment(f, f.length, h, 1220, new Uint8Array(MAX_FRAME_LEN), out), 3);
  for (const s of out.frames) {
    assert.equal((s[18] << 8) | s[19], s.length - 54, "IPv6 payload length");
    assert.ok(l4ChecksumOk(s));
  }
  f[14 + 6] = 43; // routing header: the L4 checksum's pseudo-header would need its last address
  assert.equal(parseHeaders(f, f.length, h), GSO_UNSUPPORTED_EXT);
  f[12] = 0x08; // says IPv4, holds IPv6
  f[13] = 0x00;
  assert.equal(parseHeaders(f, f.length, h), GSO_BAD_IP);
});

Deno.test("UDP segmentation (GSO_UDP_L4): each datagram with its length and checksum", () => {
  const f = new Uint8Array(14 + 20 + 8 + 2501);
  f.set([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00, 0x45]);
  f[14 + 9] = 17;
  f.set([10, 0, 0, 1, 10, 0, 0, 2], 26);
  for (let i = 42; i < f.length; i++) f[i] = (i * 13) & 0xff;
  const h = new FrameHeaders();
  assert.equal(parseHeaders(f, f.length, h), 0);
  const out = new Collect();
  assert.equal(segment(f, f.length, h, 1000, new Uint8Array(MAX_FRAME_LEN), out), 3);
  for (const s of out.frames) {
    assert.equal((s[38] << 8) | s[39], s.length - 34, "UDP length");
    assert.ok(l4ChecksumOk(s));
  }
});

Deno.test("checksum completion over odd and even lengths verifies", () => {
  for (const payload of [0, 1, 2, 3, 1447, 1448]) {
    const f = tcp4(payload, 0x18, 0);
    const h = new FrameHeaders();
    assert.equal(parseHeaders(f, f.length, h), 0);
    // What a sender leaves: the pseudo-header sum in the field (not complemented).
    const p = pseudoSum(f, h, f.length - h.l4) % 0xffff;
    f[h.l4 + 16] = p >>> 8;
    f[h.l4 + 17] = p & 0xff;
    completeChecksum(f, f.length, h.l4, 16);
    assert.ok(l4ChecksumOk(f), `payload ${payload}`);
  }
});

/** A batch slot read from a 10-byte header; returns readVirtioNetHdr's result. */
function readHdr(fields: number[], len: number): number {
  const b = new Uint8Array(10);
  writeVirtioNetHdr(b, 0, 0, 0, 0, 0, 0);
  const [flags, type, hdrLen, gsoSize, start, off] = fields;
  b[0] = flags;
  b[1] = type;
  b[2] = hdrLen & 0xff;
  b[3] = hdrLen >> 8;
  b[4] = gsoSize & 0xff;
  b[5] = gsoSize >> 8;
  b[6] = start & 0xff;
  b[7] = start >> 8;
  b[8] = off & 0xff;
  b[9] = off >> 8;
  return readVirtioNetHdr(b, 0, len, new FrameBatch(), 0);
}

Deno.test("lying virtio_net_hdr fields are refused, each with its reason", () => {
  const N = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  const T4 = VIRTIO_NET_HDR_GSO_TCPV4;
  assert.equal(readHdr([N, T4, 54, 1448, 34, 16], 3000), OFFLOAD_CSUM | OFFLOAD_TSO4);
  assert.equal(readHdr([N, T4 | VIRTIO_NET_HDR_GSO_ECN, 54, 1448, 34, 16], 3000) & OFFLOAD_ECN, 16);
  assert.equal(readHdr([N, T4, 54, 0, 34, 16], 3000), BAD_GSO_SIZE, "gso_size 0");
  assert.equal(readHdr([N, 0, 0, 0, 2990, 16], 3000), BAD_CSUM_START, "csum_start past the frame");
  assert.equal(readHdr([N, 0, 0, 0, 4, 16], 3000), BAD_CSUM_START, "csum_start in the MACs");
  assert.equal(readHdr([N, T4, 3001, 1448, 34, 16], 3000), BAD_HDR_LEN, "hdr_len past the frame");
  assert.equal(readHdr([N, VIRTIO_NET_HDR_GSO_UDP, 42, 1400, 34, 6], 3000), BAD_GSO_TYPE, "UFO");
  assert.equal(readHdr([0, 9, 0, 1, 0, 0], 3000), BAD_GSO_TYPE, "unknown GSO type");
});

Deno.test("the fallback counts what it did and drops headers it cannot segment", () => {
  const c = new Float64Array(COUNTER_FIELDS);
  const fb = new OffloadFallback(c);
  const out = new Collect();
  const f = tcp4(4000, 0x18, 0);
  const e = new EgressFrame().setWhole(f, 0, f.length);
  e.offload = OFFLOAD_CSUM | OFFLOAD_TSO4;
  e.csumStart = 34;
  e.csumOffset = 16;
  e.gsoSize = 1448;
  assert.ok(fb.send(f, e, out, 1514));
  assert.equal(out.frames.length, 3);
  assert.ok(out.frames.every((s) => s.length <= 1514 && l4ChecksumOk(s)));
  assert.equal(c[GSO_SEGMENTED], 1);
  // Segments are cut to the destination's MTU even when gso_size is larger.
  out.frames.length = 0;
  assert.ok(fb.send(f, e, out, 1014));
  assert.ok(out.frames.every((s) => s.length <= 1014), "fits MTU 1000");
  // A checksum-only frame.
  const small = tcp4(333, 0x18, 0);
  const e2 = new EgressFrame().setWhole(small, 0, small.length);
  e2.offload = OFFLOAD_CSUM;
  e2.csumStart = 34;
  e2.csumOffset = 16;
  out.frames.length = 0;
  assert.ok(fb.send(small, e2, out, 1514));
  assert.equal(c[CSUM_FILLED], 1);
  // A TSO4 claim on a frame that holds UDP: dropped, counted.
  const udp = tcp4(4000, 0x18, 0);
  udp[23] = 17;
  assert.equal(fb.send(udp, new EgressFrame().setWhole(udp, 0, udp.length), out, 1514), true);
  const e3 = new EgressFrame().setWhole(udp, 0, udp.length);
  e3.offload = OFFLOAD_CSUM | OFFLOAD_TSO4;
  e3.csumStart = 34;
  e3.csumOffset = 6;
  e3.gsoSize = 1000;
  assert.equal(fb.send(udp, e3, out, 1514), false);
  assert.equal(c[DROP_BAD_OFFLOAD], 1);
});

Deno.test("a capture shows what the wire carries: GSO frames as segments, checksums filled", () => {
  const ring = createTapBuffer();
  const writer = new TapWriter(ring);
  const reader = new TapReader(ring);
  const f = tcp4(3000, 0x18, 0);
  const e = new EgressFrame().setWhole(f, 0, f.length);
  e.offload = OFFLOAD_CSUM | OFFLOAD_TSO4;
  e.csumStart = 34;
  e.csumOffset = 16;
  e.gsoSize = 1448;
  writer.writeEgress(f, e);
  const small = tcp4(100, 0x18, 0);
  const sh = new FrameHeaders();
  assert.equal(parseHeaders(small, small.length, sh), 0);
  const p = pseudoSum(small, sh, small.length - sh.l4) % 0xffff; // what a sender leaves there
  small[50] = p >>> 8;
  small[51] = p & 0xff;
  const e2 = new EgressFrame().setWhole(small, 0, small.length);
  e2.offload = OFFLOAD_CSUM;
  e2.csumStart = 34;
  e2.csumOffset = 16;
  writer.writeEgress(small, e2);
  const got: Uint8Array[] = [];
  reader.drain(100, (_, data) => got.push(data));
  assert.deepEqual(got.map((g) => g.length), [54 + 1448, 54 + 1448, 54 + 104, 54 + 100]);
  assert.ok(got.every(l4ChecksumOk), "every captured frame's checksum verifies");
  assert.equal(f[50], 0, "the source frame was not touched");
});
