// node --test edge/tests/: the browser client's decoder choice (models.js): "taesd" loads the
// export's taesd_decoder / taesd_encoder TF.js files in the decoder's and image encoder's places.
import { test } from "node:test";
import assert from "node:assert/strict";

import { findArtifact, storedComponent, vaeChoices } from "../web/models.js";

const art = (component, precision = "float32") => ({ component, format: "tfjs", precision, path: `tfjs/${component}` });
const withTaesd = { artifacts: [art("text_encoder"), art("decoder"), art("image_encoder"), art("taesd_decoder"),
  art("taesd_encoder"), { component: "taesd_decoder", format: "tflite", precision: "float32" }] };
const without = { artifacts: [art("text_encoder"), art("decoder"), { component: "taesd_decoder", format: "tflite",
  precision: "float32" }] };

test("taesd swaps the decoder and image encoder files, nothing else", () => {
  assert.equal(findArtifact(withTaesd, "decoder", "float32", "taesd").component, "taesd_decoder");
  assert.equal(findArtifact(withTaesd, "image_encoder", "float32", "taesd").component, "taesd_encoder");
  assert.equal(findArtifact(withTaesd, "text_encoder", "float32", "taesd").component, "text_encoder");
  assert.equal(findArtifact(withTaesd, "decoder", "float32").component, "decoder");
  assert.equal(findArtifact(withTaesd, "decoder", "float16", "taesd"), null);
});

test("the choice is offered only when the export has TAESD in TF.js", () => {
  assert.deepEqual(vaeChoices(withTaesd), ["full", "taesd"]);
  assert.deepEqual(vaeChoices(without), ["full"]); // a TFLite-only TAESD does not count in the browser
});

test("an unknown choice is an error naming the valid ones", () => {
  assert.throws(() => storedComponent("decoder", "tiny"), /vae must be one of full, taesd/);
});
