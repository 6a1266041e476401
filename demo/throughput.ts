// TCP throughput between two guests: busybox nc sends a file of /dev/urandom bytes, both sides
// hash it. iperf3 is not in the guest image, and a hashed file also proves nothing was mangled.
import type { Guest } from "../peers/qemu.ts";

export interface Transfer {
  bytes: number;
  seconds: number;
  /** 10^6 bytes per second. */
  mbPerSecond: number;
  sentSha256: string;
  receivedSha256: string;
}

const PORT = 5001;

export async function transfer(
  sender: Guest,
  receiver: Guest,
  receiverIp: string,
  mib = 8,
): Promise<Transfer> {
  // The listener's stdin must stay open: busybox nc half-closes the socket when its stdin ends,
  // and the sender quits on that EOF, possibly before it has sent everything. A background sleep
  // holds the pipe open without the pipeline waiting for it.
  await receiver.check(
    `rm -f /tmp/rx /tmp/rx.done; ` +
      `setsid sh -c '(sleep 600 &) | nc -l -p ${PORT} >/tmp/rx; echo $? >/tmp/rx.done' >/dev/null 2>&1 &`,
  );
  await receiver.check(waitUntil(`netstat -ltn | grep -q ":${PORT} "`, 100));
  const made = await sender.check(
    `dd if=/dev/urandom of=/tmp/tx bs=1M count=${mib} 2>/dev/null && sha256sum /tmp/tx`,
    120_000,
  );
  // /proc/uptime on both ends of the send: guest time, no serial-console round trips in it.
  // The sender returns once the receiver has read everything and closed.
  const sent = await sender.check(
    `a=$(cut -d" " -f1 /proc/uptime); nc ${receiverIp} ${PORT} </tmp/tx; r=$?; ` +
      `b=$(cut -d" " -f1 /proc/uptime); echo "took $a $b"; [ $r = 0 ]`,
    300_000,
  );
  await receiver.check(waitUntil("[ -s /tmp/rx.done ]", 300), 60_000);
  const got = await receiver.check("cat /tmp/rx.done; wc -c </tmp/rx; sha256sum /tmp/rx");
  await receiver.run("kill $(pidof sleep) 2>/dev/null; rm -f /tmp/rx; true");
  await sender.run("rm -f /tmp/tx");
  const [, a, b] = sent.match(/took ([\d.]+) ([\d.]+)/) ?? [];
  if (!a) throw new Error(`no timing from the sender:\n${sent}`);
  const [code, size] = got.trim().split("\n");
  if (code.trim() !== "0") throw new Error(`receiving nc exited ${code}:\n${got}`);
  const seconds = Math.max(Number(b) - Number(a), 0.01); // uptime ticks in 10 ms
  return {
    bytes: Number(size),
    seconds,
    mbPerSecond: Number(size) / 1e6 / seconds,
    sentSha256: hashOf(made),
    receivedSha256: hashOf(got),
  };
}

/** A shell loop that polls `test` every 0.1 s, at most `tries` times; its status is the test's. */
function waitUntil(test: string, tries: number): string {
  return `i=0; until ${test}; do i=$((i+1)); [ $i -ge ${tries} ] && break; sleep 0.1; done; ${test}`;
}

function hashOf(output: string): string {
  const m = output.match(/\b([0-9a-f]{64})\b/);
  if (!m) throw new Error(`no sha256 in:\n${output}`);
  return m[1];
}
