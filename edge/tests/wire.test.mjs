// node --test edge/tests/: wire.js reads what the server's writer (webapp/wire.py) writes and
// writes what it reads; float16 rounding matches numpy's. SD_WIRE_IN names a message written by
// Python (tests/test_edge.py); this test writes SD_WIRE_OUT for Python to check back.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";

import { decode, encode, float32ToFloat16, fromFloat16Bits, toFloat16Bits } from "../web/wire.js";

test("every float16 bit pattern survives float16 -> float32 -> float16", () => {
  for (let h = 0; h < 65536; h++) {
    const x = fromFloat16Bits(h);
    if (Number.isNaN(x)) continue;
    assert.equal(toFloat16Bits(x), h, `bits ${h.toString(16)}`);
  }
});

test("encode/decode round trip with metadata and 8-byte aligned data", () => {
  const msg = encode({
    a: { dtype: "F32", shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) },
    m: { dtype: "U8", shape: [3], data: Uint8Array.from([0, 255, 7]) },
  }, { seeds: [1, 2] });
  const n = Number(new DataView(msg.buffer).getBigUint64(0, true));
  assert.equal(n % 8, 0);
  const { tensors, metadata } = decode(msg);
  assert.deepEqual(Array.from(tensors.a.data), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(tensors.a.shape, [2, 3]);
  assert.deepEqual(Array.from(tensors.m.data), [0, 255, 7]);
  assert.equal(metadata.seeds, "[1,2]");
});

const inFile = process.env.SD_WIRE_IN;
test("messages from the Python writer", { skip: inFile ? false : "SD_WIRE_IN is not set" }, () => {
  const { tensors, metadata } = decode(readFileSync(inFile));
  assert.equal(JSON.parse(metadata.parameters).steps, 20);
  // numpy's float32 -> float16 rounding (x16) is what float32ToFloat16 gives
  const ours = float32ToFloat16(tensors.x.data);
  const theirs = tensors.x16.data;
  let differ = 0;
  for (let i = 0; i < ours.length; i++) if (ours[i] !== theirs[i]) differ++;
  assert.equal(differ, 0, `${differ} of ${ours.length} float16 values differ from numpy's`);
  const out = encode({
    x16: { dtype: "F16", shape: tensors.x.shape, data: ours },
    ids: { dtype: "I32", shape: tensors.ids.shape, data: tensors.ids.data },
    mask: { dtype: "U8", shape: tensors.mask.shape, data: tensors.mask.data },
  }, { from: "js" });
  writeFileSync(process.env.SD_WIRE_OUT, out);
});
