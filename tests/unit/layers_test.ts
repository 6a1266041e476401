// The layer rule's checker (tools/layers.ts): what it refuses, and that it reads real imports.
import assert from "node:assert/strict";
import { importEdges, violation } from "../../tools/layers.ts";

Deno.test("imports go down the layers; sideways, upward and into tests/ are refused", () => {
  for (
    const [from, to] of [
      ["ports/port.ts", "ports/ethernet.ts"],
      ["ports/af_packet/datapath.ts", "ffi/packet.ts"],
      ["switch/bridge.ts", "ports/port.ts"],
      ["http/app.ts", "switch/view.ts"],
      ["cli/fdb.ts", "switch/view.ts"],
      ["mod.ts", "http/app.ts"],
      ["peers/netns.ts", "ffi/libc.ts"],
      ["demo/lab.ts", "peers/qemu.ts"],
      ["bench/pvp.ts", "switch/switch.ts"],
      ["tests/bridge_test.ts", "tests/helpers/frontend.ts"],
      ["tools/layers.ts", "tools/other.ts"],
    ]
  ) assert.equal(violation(from, to), null, `${from} -> ${to}`);
  for (
    const [from, to, why] of [
      ["switch/switch.ts", "http/app.ts", /switch is below http/],
      ["ffi/fd.ts", "ports/port.ts", /ffi is below ports/],
      ["ports/copy.ts", "switch/bridge.ts", /ports is below switch/],
      ["http/app.ts", "mod.ts", /http is below mod.ts/],
      ["cli/fdb.ts", "http/app.ts", /side by side/],
      ["switch/tap.ts", "peers/pcap.ts", /outside the layers/],
      ["demo/lab.ts", "tests/helpers/netns.ts", /move what they share to peers/],
      ["bench/uplink.ts", "tests/helpers/testpmd.ts", /move what they share to peers/],
      ["peers/qemu.ts", "demo/lab.ts", /peers\/ may not import demo/],
      ["scratch/x.ts", "ffi/fd.ts", /no known part/],
    ] as const
  ) assert.match(violation(from, to) ?? "allowed", why, `${from} -> ${to}`);
});

Deno.test("the import graph includes type-only imports and modules nothing imports", async () => {
  const root = await Deno.makeTempDir({ prefix: "vswitch-layers-test-" });
  try {
    await Deno.mkdir(`${root}/switch`);
    await Deno.mkdir(`${root}/http`);
    await Deno.writeTextFile(`${root}/http/view.ts`, "export interface View { a: number }\n");
    await Deno.writeTextFile(
      `${root}/switch/worker.ts`,
      'import type { View } from "../http/view.ts";\nexport const v: View = { a: 1 };\n',
    );
    const edges = await importEdges(root);
    assert.deepEqual(edges, [["switch/worker.ts", "http/view.ts"]]);
    assert.match(violation(...edges[0]) ?? "", /switch is below http/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
