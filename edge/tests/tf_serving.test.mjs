// node --test edge/tests/: the page's TF Serving request (edge/web/tf_serving.js) is the Python
// client's (edge/tf_serving.py) for the same contexts and settings, to the byte; and it reads the
// latents_bytes answer TF Serving gives. SD_TFS_CASE (written by tests/test_edge_js.py) holds the
// Python side: the contexts, the settings, its request body and an answer.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { latentsFromResponse, txt2imgRequest } from "../web/tf_serving.js";

const path = process.env.SD_TFS_CASE;
const c = path ? JSON.parse(readFileSync(path, "utf8")) : null;
const msg = (t) => ({ dtype: "F32", shape: t.shape, data: Float32Array.from(t.values) });

test("the txt2img_bytes request equals the Python client's", { skip: !c && "run by tests/test_edge_js.py" }, () => {
  const { body, reported } = txt2imgRequest(c.manifest, msg(c.context), msg(c.unconditional), c.params);
  assert.deepEqual(JSON.parse(body), c.python_body);
  assert.deepEqual(reported, c.python_reported);
});

test("latents_bytes answers are read as float16 latents", { skip: !c && "run by tests/test_edge_js.py" }, () => {
  const got = latentsFromResponse(c.answer, c.manifest);
  assert.deepEqual(got.shape, c.answer_shape);
  assert.deepEqual(Array.from(got.data), c.answer_bits);
  assert.throws(() => latentsFromResponse({ outputs: [{ b64: "AAAA" }] }, c.manifest), /bytes per image/);
  assert.throws(() => latentsFromResponse({ error: "x" }, c.manifest), /no latents_bytes/);
});

test("a scheduler the export lacks is refused by name", { skip: !c && "run by tests/test_edge_js.py" }, () => {
  assert.throws(() => txt2imgRequest(c.manifest, msg(c.context), msg(c.unconditional), { ...c.params, scheduler: "heun" }),
    /not heun/);
});
