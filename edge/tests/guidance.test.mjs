// node --test edge/tests/: the browser client sends the unconditional context only when the
// server would read it (guidance > 1 on a UNet without a guidance embedding).
import { test } from "node:test";
import assert from "node:assert/strict";

import { usesUnconditional } from "../web/guidance.js";

const plain = { model: { model_family: "sd2", guidance_embedding: false } };
const lcm = { model: { model_family: "sd1", guidance_embedding: true } };

test("guidance at or below 1 sends one context", () => {
  for (const g of [0, 0.5, 1, "1", "0"]) assert.equal(usesUnconditional(g, plain), false, String(g));
  for (const g of [1.01, 7.5, "7.5"]) assert.equal(usesUnconditional(g, plain), true, String(g));
});

test("an LCM-distilled UNet never takes an unconditional context", () => {
  assert.equal(usesUnconditional(8, lcm), false);
});

test("a manifest from before the model facts counts as a plain UNet", () => {
  assert.equal(usesUnconditional(7.5, { model: {} }), true);
  assert.equal(usesUnconditional(1, { model: {} }), false);
});
