// node --test edge/tests/: the JavaScript CLIP tokenizer gives the Python tokenizer's ids.
// The fixture (edge/tests/fixtures/tokenizer_cases.json) comes from models/tokenizer.py
// (python -m edge.tests.make_tokenizer_fixture). The tokenizer files come from
// $SD_TOKENIZER_DIR (an export's tokenizer/ folder) or are the fixture's own copy written
// by the pytest wrapper; without either, the test reads models/assets via the pytest wrapper.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { CLIPTokenizer, cleanText, htmlUnescape } from "../web/tokenizer.js";

const here = dirname(fileURLToPath(import.meta.url));
const dir = process.env.SD_TOKENIZER_DIR;
const fixture = JSON.parse(readFileSync(join(here, "fixtures", "tokenizer_cases.json"), "utf8"));

test("tokenizer files are given", { skip: dir ? false : "SD_TOKENIZER_DIR is not set" }, () => {});

if (dir) {
  const tok = await CLIPTokenizer.load(dir, async (name) => readFileSync(join(dir, name), "utf8"));

  test("fixture holds at least 200 prompts, some past the 77-token limit", () => {
    assert.ok(fixture.cases.length >= 200, `${fixture.cases.length} cases`);
    assert.ok(fixture.cases.some((c) => c.count > fixture.max_length - 2));
  });

  test("special ids and length match the Python tokenizer", () => {
    assert.equal(tok.maxLength, fixture.max_length);
    assert.equal(tok.startId, 49406);
    assert.equal(tok.endId, 49407);
    assert.equal(tok.padId, 49407);
    assert.equal(tok.vocabSize, 49408);
  });

  test("every fixture prompt gives the Python ids", () => {
    const wrong = [];
    for (const c of fixture.cases) {
      const ids = Array.from(tok.tokenize(c.prompt));
      const count = tok.countTokens(c.prompt);
      if (JSON.stringify(ids) !== JSON.stringify(c.ids) || count !== c.count) {
        wrong.push({ prompt: c.prompt, clean: cleanText(c.prompt), got: ids.slice(0, 12), want: c.ids.slice(0, 12) });
      }
    }
    assert.deepEqual(wrong, [], `${wrong.length} of ${fixture.cases.length} prompts differ`);
  });

  test("long prompts are cut to 75 ids between start and end", () => {
    const ids = tok.tokenize("red ".repeat(200));
    assert.equal(ids.length, 77);
    assert.equal(ids[0], tok.startId);
    assert.equal(ids[76], tok.endId);
  });
}

test("html.unescape edge cases", () => {
  assert.equal(htmlUnescape("&amp;amp;"), "&amp;");
  assert.equal(htmlUnescape("&copy 2020"), "\u00a9 2020");
  assert.equal(htmlUnescape("&#128;"), "\u20ac");
  assert.equal(htmlUnescape("&#0;"), "\ufffd");
  assert.equal(htmlUnescape("&bogus;"), "&bogus;");
  assert.equal(htmlUnescape("&notit;"), "\u00acit;");
});
