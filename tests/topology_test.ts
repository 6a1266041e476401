import assert from "node:assert/strict";
import { join } from "node:path";
import { NO_SAFETY } from "../switch/safety_config.ts";
import {
  loadTopology,
  parseTopology,
  type Topology,
  TopologyError,
  type VhostUserPortConfig,
} from "../switch/topology.ts";

// Each test gets its own directory: the topology file and the sockets it names live there.
async function tempDir() {
  const path = await Deno.makeTempDir({ prefix: "vswitch-topology-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

async function writeTopology(dir: string, topology: unknown): Promise<string> {
  const file = join(dir, "topo.json");
  const text = typeof topology === "string" ? topology : JSON.stringify(topology, null, 2);
  await Deno.writeTextFile(file, text);
  return file;
}

/** The problems loadTopology reports for `topology`, with the file name stripped to "F". */
async function problems(topology: unknown): Promise<string[]> {
  await using dir = await tempDir();
  const file = await writeTopology(dir.path, topology);
  try {
    loadTopology(file);
  } catch (e) {
    if (!(e instanceof TopologyError)) throw e;
    assert.equal(e.message, e.problems.join("\n"));
    return e.problems.map((p) => p.replaceAll(file, "F").replaceAll(dir.path, "D"));
  }
  throw new Error("the topology was accepted");
}

const vm = (name = "vm1", extra: object = {}) => ({
  name,
  type: "vhost-user",
  socket: `${name}.sock`,
  ...extra,
});
const uplink = (extra: object = {}) => ({
  name: "uplink",
  type: "af-packet",
  interface: "eth0",
  ...extra,
});
const topo = (ports: unknown[], extra: object = {}) => ({ name: "br0", ports, ...extra });

Deno.test("defaults fill every optional field", async () => {
  await using dir = await tempDir();
  const file = await writeTopology(dir.path, topo([vm(), uplink()]));
  const expected: Topology = {
    name: "br0",
    http: {
      listen: "127.0.0.1:8080",
      hostname: "127.0.0.1",
      port: 8080,
      token: null,
      readOnly: false,
      allowedHosts: [],
    },
    threads: 1,
    poll: { mode: "adaptive", idleAfterMs: 200, cpus: null, flowStats: true },
    fdb: { agingSeconds: 300, maxEntries: 8192, maxPerPort: 0, static: [] },
    ports: [
      {
        type: "vhost-user",
        name: "vm1",
        mtu: 1500,
        vlan: { mode: "trunk", allowed: "all", native: 0 },
        queues: 1,
        rxqAffinity: [0],
        socket: join(dir.path, "vm1.sock"), // relative to the topology file
        mode: "server",
        packedRing: true,
        offloads: true,
        safety: NO_SAFETY,
      },
      {
        type: "af-packet",
        name: "uplink",
        mtu: 1500,
        vlan: { mode: "trunk", allowed: "all", native: 0 },
        queues: 1,
        rxqAffinity: [0],
        interface: "eth0",
        io: "ring",
        safety: NO_SAFETY,
      },
    ],
    mirrors: [],
  };
  assert.deepEqual(loadTopology(file), expected);
});

Deno.test("a full topology keeps every value given", async () => {
  await using dir = await tempDir();
  await Deno.mkdir(join(dir.path, "run"));
  const file = await writeTopology(dir.path, {
    name: "lab.br-1",
    http: {
      listen: "[::1]:9090",
      token: "s3cret-t0ken",
      readOnly: true,
      allowedHosts: ["switch.lab"],
    },
    threads: 4,
    poll: { mode: "busy", idleAfterMs: 50, cpus: [3, 2, 1, 0], flowStats: false },
    fdb: {
      agingSeconds: 60,
      maxEntries: 1024,
      maxPerPort: 100,
      static: [{ mac: "52-54-00-AB-CD-01", vlan: 10, port: "vm1" }],
    },
    ports: [
      vm("vm1", {
        socket: join(dir.path, "run", "vm1.sock"),
        mode: "client",
        queues: 2,
        mtu: 9000,
        vlan: { mode: "access", tag: 10 },
        rxqAffinity: [3, 1],
        packedRing: false,
        offloads: false,
      }),
      uplink({ mtu: 1400, vlan: { mode: "trunk", allowed: [20, 10, 20], native: 20 } }),
    ],
  });
  const t = loadTopology(file);
  assert.deepEqual(t.http, {
    listen: "[::1]:9090",
    hostname: "::1",
    port: 9090,
    token: "s3cret-t0ken",
    readOnly: true,
    allowedHosts: ["switch.lab"],
  });
  assert.equal(t.name, "lab.br-1");
  assert.equal(t.threads, 4);
  assert.deepEqual(t.poll, { mode: "busy", idleAfterMs: 50, cpus: [3, 2, 1, 0], flowStats: false });
  assert.deepEqual(t.fdb, {
    agingSeconds: 60,
    maxEntries: 1024,
    maxPerPort: 100,
    static: [{ mac: "52:54:00:ab:cd:01", vlan: 10, port: "vm1" }],
  });
  assert.deepEqual(t.ports[0], {
    type: "vhost-user",
    name: "vm1",
    mtu: 9000,
    vlan: { mode: "access", tag: 10 },
    queues: 2,
    rxqAffinity: [3, 1],
    socket: join(dir.path, "run", "vm1.sock"),
    mode: "client",
    packedRing: false,
    offloads: false,
    safety: NO_SAFETY,
  });
  // allowed is de-duplicated and sorted; the unpinned uplink queue goes round-robin from worker 0.
  assert.deepEqual(t.ports[1].vlan, { mode: "trunk", allowed: [10, 20], native: 20 });
  assert.deepEqual(t.ports[1].rxqAffinity, [0]);
  assert.equal(t.ports[1].mtu, 1400);
});

Deno.test("io: af-packet ports pick ring or syscall; vhost-user ports refuse it", async () => {
  const t = parseTopology(
    JSON.stringify(topo([uplink({ io: "syscall" }), uplink({ name: "u2", interface: "eth1" })])),
    join(Deno.cwd(), "x.json"),
  );
  assert.deepEqual(t.ports.map((p) => p.type === "af-packet" && p.io), ["syscall", "ring"]);
  assert.deepEqual(
    await problems(topo([
      uplink({ io: "rings" }),
      uplink({ name: "u2", interface: "eth1", io: 1 }),
      vm("vm1", { io: "ring" }),
    ])),
    [
      'F: ports[0].io: expected one of "ring", "syscall", got "rings" (did you mean "ring"?)',
      'F: ports[1].io: expected one of "ring", "syscall", got 1',
      "F: ports[2].io: not used by vhost-user ports (af-packet only)",
    ],
  );
});

Deno.test("queues without rxqAffinity are spread round-robin over the workers", () => {
  const text = JSON.stringify(
    topo([vm("a", { queues: 3 }), vm("b", { queues: 2 })], { threads: 2 }),
  );
  const t = parseTopology(text, join(Deno.cwd(), "x.json"));
  assert.deepEqual(t.ports.map((p) => p.rxqAffinity), [[0, 1, 0], [1, 0]]);
});

Deno.test("the shipped examples are valid", () => {
  for (const name of ["two-vms", "three-vms-uplink", "vlans", "vxlan", "l2-safety"]) {
    const t = loadTopology(new URL(`../examples/${name}.json`, import.meta.url).pathname);
    assert.ok(t.ports.length >= 2, name);
  }
});

Deno.test("invalid JSON reports line and column", async () => {
  assert.deepEqual(await problems('{\n  "name": "br0",\n  "ports": [,]\n}'), [
    `F:3:13: invalid JSON: expected a value, found ","`,
  ]);
  assert.deepEqual(await problems('{\n  "name": "br0",\n}'), [
    `F:3:1: invalid JSON: expected a double-quoted key, found "}"`,
  ]);
  assert.deepEqual(await problems('{"name": "br0"'), [
    `F:1:15: invalid JSON: expected ',' or '}', found end of file`,
  ]);
  assert.deepEqual(await problems('{"name": tru}'), [
    `F:1:10: invalid JSON: expected a value, found "t"`,
  ]);
});

Deno.test("wrong types name the path and what was found", async () => {
  assert.deepEqual(await problems([]), ["F: $: expected an object, got an array"]);
  assert.deepEqual(
    await problems(topo([vm("vm1", { queues: "2" }), "vm2"], { name: 7, threads: 1.5 })),
    [
      "F: name: expected a string, got 7",
      "F: threads: expected an integer from 1 to 64, got 1.5",
      'F: ports[0].queues: expected an integer from 1 to 8, got "2"',
      'F: ports[1]: expected an object, got "vm2"',
    ],
  );
  assert.deepEqual(await problems(topo([vm()], { http: { readOnly: "yes" }, poll: [] })), [
    'F: http.readOnly: expected true or false, got "yes"',
    "F: poll: expected an object, got an array",
  ]);
  assert.deepEqual(await problems({ name: "br0", ports: {} }), [
    "F: ports: expected an array, got an object",
  ]);
});

Deno.test("missing required fields", async () => {
  assert.deepEqual(await problems({}), [
    "F: name: required key is missing",
    "F: ports: required key is missing",
  ]);
  assert.deepEqual(
    await problems(topo([
      { type: "vhost-user" },
      { name: "up", type: "af-packet" },
      { name: "x" },
      vm("vm9", { vlan: { mode: "access" } }),
    ])),
    [
      "F: ports[0].name: required key is missing",
      "F: ports[0].socket: required key is missing",
      "F: ports[1].interface: required key is missing",
      "F: ports[2].type: required key is missing",
      "F: ports[3].vlan.tag: required key is missing",
    ],
  );
});

Deno.test("values out of range or not among the choices", async () => {
  assert.deepEqual(
    await problems(
      topo([vm("vm1", { mtu: 67, queues: 9, mode: "sever" }), { ...uplink(), type: "tap" }], {
        name: "br 0",
        threads: 65,
        poll: { mode: "fast", idleAfterMs: -1 },
        fdb: { agingSeconds: 5, maxEntries: 2_000_000, maxPerPort: -1 },
      }),
    ),
    [
      `F: name: "br 0" is not valid: use 1 to 32 letters, digits, '_', '.' or '-'`,
      "F: threads: expected an integer from 1 to 64, got 65",
      'F: poll.mode: expected one of "adaptive", "busy", got "fast"',
      "F: poll.idleAfterMs: expected an integer from 0 to 60000, got -1",
      "F: ports[0].mtu: expected an integer from 68 to 9000, got 67",
      "F: ports[0].queues: expected an integer from 1 to 8, got 9",
      'F: ports[0].mode: expected one of "server", "client", got "sever" (did you mean "server"?)',
      'F: ports[1].type: expected one of "vhost-user", "af-packet", "vxlan", got "tap"',
      "F: fdb.agingSeconds: expected an integer from 10 to 1000000, got 5",
      "F: fdb.maxEntries: expected an integer from 16 to 1048576, got 2000000",
      "F: fdb.maxPerPort: expected an integer from 0 to 8192, got -1",
    ],
  );
  assert.deepEqual(await problems(topo([])), ["F: ports: expected 1 to 64 ports, got 0"]);
  const many = Array.from({ length: 65 }, (_, i) => vm(`vm${i}`));
  assert.deepEqual(await problems(topo(many)), ["F: ports: expected 1 to 64 ports, got 65"]);
});

Deno.test("http.listen and http.token are checked", async () => {
  assert.deepEqual(
    await problems(topo([vm()], { http: { listen: "localhost:70000", token: "has space" } })),
    [
      'F: http.listen: expected host:port or [ipv6]:port, got "localhost:70000"',
      'F: http.token: "has space" is not valid: use letters, digits and ._~+/- (a Bearer token)',
    ],
  );
  assert.deepEqual(await problems(topo([vm()], { http: { listen: "8080" } })), [
    'F: http.listen: expected host:port or [ipv6]:port, got "8080"',
  ]);
});

Deno.test("unknown keys at every level, with a suggestion when one is close", async () => {
  assert.deepEqual(
    await problems({
      name: "br0",
      thread: 2,
      http: { listen: "127.0.0.1:1", tokn: "x" },
      poll: { idleAfterMS: 5 },
      fdb: { agingSecs: 60, static: [{ mac: "52:54:00:00:00:01", port: "uplink", vlna: 0 }] },
      ports: [
        vm("vm1", { sockett: "x", vlan: { mode: "access", tag: 1, tags: [2] } }),
        uplink({ socket: "/x", colour: "red" }),
      ],
    }),
    [
      'F: thread: unknown key "thread" (did you mean "threads"?)',
      'F: http.tokn: unknown key "tokn" (did you mean "token"?)',
      'F: poll.idleAfterMS: unknown key "idleAfterMS" (did you mean "idleAfterMs"?)',
      'F: ports[0].sockett: unknown key "sockett" (did you mean "socket"?)',
      'F: ports[0].vlan.tags: unknown key "tags" (did you mean "tag"?)',
      'F: ports[1].socket: unknown key "socket"',
      'F: ports[1].colour: unknown key "colour"',
      'F: fdb.agingSecs: unknown key "agingSecs" (did you mean "agingSeconds"?)',
      'F: fdb.static[0].vlna: unknown key "vlna" (did you mean "vlan"?)',
    ],
  );
  // A key of the other VLAN mode is known, just misplaced.
  assert.deepEqual(
    await problems(topo([vm("vm1", { vlan: { mode: "access", tag: 5, native: 5 } })])),
    [
      "F: ports[0].vlan.native: not used by access ports",
    ],
  );
});

Deno.test("duplicate port names, socket paths and interfaces", async () => {
  assert.deepEqual(
    await problems(topo([
      vm("vm1"),
      vm("vm1", { socket: "other.sock" }),
      vm("vm3", { socket: "./vm1.sock" }), // the same file as ports[0]'s once resolved
      uplink(),
      uplink({ name: "uplink2" }),
    ])),
    [
      'F: ports[1].name: duplicate port name "vm1" (also used by ports[0])',
      'F: ports[2].socket: duplicate socket "D/vm1.sock" (also used by ports[0])',
      'F: ports[4].interface: duplicate interface "eth0" (also used by ports[3])',
    ],
  );
});

Deno.test("socket directories: server mode may create one level, client mode needs it", async () => {
  assert.deepEqual(
    await problems(topo([
      vm("a", { socket: "missing/a.sock", mode: "client" }),
      vm("b", { socket: "missing/deeper/b.sock" }),
      vm("c", { socket: "topo.json/c.sock" }),
    ])),
    [
      "F: ports[0].socket: directory D/missing does not exist",
      "F: ports[1].socket: directory D/missing/deeper does not exist and D/missing does not either",
      "F: ports[2].socket: F is not a directory",
    ],
  );
  // One missing level in server mode is accepted: the port creates it when it starts.
  await using dir = await tempDir();
  const t = loadTopology(await writeTopology(dir.path, topo([vm("a", { socket: "run/a.sock" })])));
  assert.equal((t.ports[0] as VhostUserPortConfig).socket, join(dir.path, "run", "a.sock"));
});

Deno.test("a socket path that exists must be a socket", async () => {
  await using dir = await tempDir();
  await Deno.writeTextFile(join(dir.path, "vm1.sock"), "not a socket");
  using listener = Deno.listen({ transport: "unix", path: join(dir.path, "vm2.sock") });
  const file = await writeTopology(dir.path, topo([vm("vm1"), vm("vm2")]));
  assert.throws(() => loadTopology(file), (e: Error) => {
    assert.equal(
      e.message,
      `${file}: ports[0].socket: ${dir.path}/vm1.sock exists and is not a socket`,
    );
    return true;
  });
  // A stale socket is fine (the switch replaces it).
  await Deno.remove(join(dir.path, "vm1.sock"));
  assert.equal(loadTopology(file).ports.length, 2);
  assert.ok(listener.addr);
});

Deno.test("a socket path too long for sun_path", async () => {
  const long = `${"s".repeat(120)}.sock`;
  assert.deepEqual(await problems(topo([vm("vm1", { socket: `/tmp/${long}` })])), [
    `F: ports[0].socket: /tmp/${long} is 130 bytes; a unix socket path holds 107`,
  ]);
});

Deno.test("VLAN ids must be 1..4094; 0 only as a trunk's native VLAN", async () => {
  assert.deepEqual(
    await problems(topo([
      vm("a", { vlan: { mode: "access", tag: 0 } }),
      vm("b", { vlan: { mode: "access", tag: 4095 } }),
      vm("c", { vlan: { mode: "trunk", allowed: [10, 5000], native: -1 } }),
      vm("d", { vlan: { mode: "trunk", allowed: [] } }),
      vm("e", { vlan: { mode: "trunk", native: 0 } }),
      vm("f", { vlan: { mode: "hybrid" } }),
    ])),
    [
      "F: ports[0].vlan.tag: expected a VLAN id from 1 to 4094, got 0",
      "F: ports[1].vlan.tag: expected a VLAN id from 1 to 4094, got 4095",
      "F: ports[2].vlan.allowed[1]: expected a VLAN id from 1 to 4094, got 5000",
      "F: ports[2].vlan.native: expected a VLAN id from 1 to 4094 (or 0 for untagged), got -1",
      "F: ports[3].vlan.allowed: is empty: omit it to allow every VLAN",
      'F: ports[5].vlan.mode: expected one of "access", "trunk", got "hybrid"',
    ],
  );
});

Deno.test("a vhost-user port's offloads option is true or false", async () => {
  assert.deepEqual(await problems(topo([vm("a", { offloads: "no" })])), [
    'F: ports[0].offloads: expected true or false, got "no"',
  ]);
});

Deno.test("a trunk's native VLAN must be allowed", async () => {
  assert.deepEqual(
    await problems(topo([uplink({ vlan: { mode: "trunk", allowed: [10, 20], native: 30 } })])),
    ["F: ports[0].vlan.native: native VLAN 30 is not in allowed [10, 20]"],
  );
});

Deno.test("rxqAffinity: one existing worker per queue pair", async () => {
  assert.deepEqual(
    await problems(topo([
      vm("a", { queues: 2, rxqAffinity: [0, 2] }),
      vm("b", { queues: 2, rxqAffinity: [1] }),
      uplink({ rxqAffinity: ["0"] }),
    ], { threads: 2 })),
    [
      "F: ports[0].rxqAffinity[1]: worker 2 does not exist: threads is 2",
      "F: ports[1].rxqAffinity: has 1 entries but the port has 2 queue pair(s): one per queue",
      'F: ports[2].rxqAffinity[0]: expected a worker index, got "0"',
    ],
  );
});

Deno.test("static FDB entries: unicast MAC, known port, VLAN carried, no duplicates", async () => {
  const ports = [vm("vm1", { vlan: { mode: "access", tag: 10 } }), vm("vm2")];
  const entry = (mac: string, port: string, vlan?: number) => ({ mac, port, vlan });
  assert.deepEqual(
    await problems(topo(ports, {
      fdb: {
        static: [
          entry("01:00:5e:00:00:01", "vm2"),
          entry("ff:ff:ff:ff:ff:ff", "vm2"),
          entry("52:54:00:00:00", "vm2"),
          entry("52:54:00:00:00:01", "vm3"),
          entry("52:54:00:00:00:02", "vm1"),
          entry("52:54:00:00:00:03", "vm2", 7),
          entry("52:54:00:00:00:03", "vm2", 7),
          entry("00:00:00:00:00:00", "vm2"),
        ],
      },
    })),
    [
      "F: fdb.static[0].mac: 01:00:5e:00:00:01 is multicast: static entries must be unicast",
      "F: fdb.static[1].mac: ff:ff:ff:ff:ff:ff is multicast: static entries must be unicast",
      'F: fdb.static[2].mac: "52:54:00:00:00" is not a MAC address like 52:54:00:00:00:01',
      'F: fdb.static[3].port: no port named "vm3" (did you mean "vm1"?)',
      "F: fdb.static[4].vlan: port vm1 does not carry VLAN 0",
      "F: fdb.static[6]: duplicate entry for 52:54:00:00:00:03 on VLAN 7 (also fdb.static[5])",
      "F: fdb.static[7].mac: the all-zero MAC is not a station address",
    ],
  );
});

Deno.test("every problem is reported at once", async () => {
  const lines = await problems({
    name: "",
    threads: 0,
    ports: [vm("vm1", { mtu: 1 }), vm("vm1")],
  });
  assert.equal(lines.length, 5);
  assert.ok(lines.every((line) => line.startsWith("F: ")));
});

Deno.test("an unreadable file is a TopologyError naming it", () => {
  assert.throws(
    () => loadTopology("/nonexistent/topo.json"),
    (e: Error) =>
      e instanceof TopologyError &&
      e.message.startsWith("/nonexistent/topo.json: cannot read the topology file:"),
  );
});

Deno.test("poll.cpus: one CPU number per worker", async () => {
  assert.deepEqual(
    await problems(topo([vm("vm1")], { threads: 2, poll: { cpus: [0, -1, 2] } })),
    [
      "F: poll.cpus: has 3 entries but threads is 2: one CPU per worker",
      "F: poll.cpus[1]: expected a CPU number 0..1023, got -1",
    ],
  );
  assert.deepEqual(
    await problems(topo([vm("vm1")], { poll: { cpus: "0" } })),
    ['F: poll.cpus: expected an array of CPU numbers, got "0"'],
  );
});

const vx = (extra: object = {}) => ({
  name: "vx42",
  type: "vxlan",
  vni: 42,
  local: "192.0.2.1",
  remotes: ["192.0.2.2", "192.0.2.3"],
  ...extra,
});

Deno.test("vxlan ports: defaults (UDP 4789, inner MTU 1450, not strict, no static MACs, no tap)", async () => {
  await using dir = await tempDir();
  const file = await writeTopology(
    dir.path,
    topo([vm(), vx({ remoteMacs: { "52-54-00-AA-00-02": "192.0.2.9" } })]),
  );
  const port = loadTopology(file).ports[1];
  assert.deepEqual(port, {
    name: "vx42",
    type: "vxlan",
    mtu: 1450,
    vlan: { mode: "trunk", allowed: "all", native: 0 },
    queues: 1,
    rxqAffinity: [0],
    vni: 42,
    local: "192.0.2.1",
    remotes: ["192.0.2.2", "192.0.2.3"],
    udpPort: 4789,
    remoteMacs: [{ mac: "52:54:00:aa:00:02", remote: "192.0.2.9" }],
    strict: false,
    tunnelGso: false,
    safety: NO_SAFETY,
  });
});

Deno.test("vxlan ports: every problem named by its path", async () => {
  assert.deepEqual(
    await problems(topo([
      vx({
        vni: 1 << 24,
        local: "fe80::1",
        remotes: ["192.0.2.2", "192.0.2.2", "192.0.2.1", "239.1.1.1", "10.0.0"],
        udpPort: 0,
        mtu: 8951,
        remoteMacs: { "01:00:5e:00:00:01": "192.0.2.2", "nope": "x" },
        strict: "yes",
        tunnelGso: 1,
        socket: "x.sock",
      }),
      vx({ name: "vx43", vni: 43, local: "192.0.2.1", remotes: "192.0.2.2" }),
      vx({ name: "vx44", vni: undefined, remotes: undefined }),
    ])),
    [
      'F: ports[0].socket: unknown key "socket"',
      "F: ports[0].mtu: expected an integer from 68 to 8950, got 8951",
      "F: ports[0].vni: expected an integer from 0 to 16777215, got 16777216",
      'F: ports[0].local: "fe80::1" is not an IPv4 address like 192.0.2.1 (IPv6 VTEPs are not supported)',
      "F: ports[0].udpPort: expected an integer from 1 to 65535, got 0",
      "F: ports[0].remotes[1]: duplicate remote 192.0.2.2",
      "F: ports[0].remotes[3]: 239.1.1.1 is not a unicast address (multicast flooding is not supported)",
      'F: ports[0].remotes[4]: "10.0.0" is not an IPv4 address like 192.0.2.1',
      'F: ports[0].remoteMacs["01:00:5e:00:00:01"]: 01:00:5e:00:00:01 is multicast: a station is unicast',
      'F: ports[0].remoteMacs["nope"]: "nope" is not a MAC address like 52:54:00:00:00:01',
      'F: ports[0].remoteMacs["nope"]: "x" is not an IPv4 address like 192.0.2.1',
      'F: ports[0].strict: expected true or false, got "yes"',
      "F: ports[0].tunnelGso: expected true or false, got 1",
      'F: ports[1].remotes: expected an array of IPv4 addresses, got "192.0.2.2"',
      "F: ports[2].vni: required key is missing",
      "F: ports[2].remotes: required key is missing",
      'F: ports[2].local: duplicate VTEP "192.0.2.1:4789" (also used by ports[1])',
    ],
  );
});
