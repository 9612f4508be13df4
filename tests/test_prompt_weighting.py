"""models.prompt_weighting: A1111's emphasis syntax and 75-token chunks, in the pipeline and the REST API."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models import prompt_weighting as pw
from models.errors import InvalidInput
from models.tokenizer import default_tokenizer
from tests.webapp_helpers import PROMPT, client, engine, post_wire, tensors  # noqa: F401
from webapp import wire


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


# -- the parser -------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("[unbalanced", [("unbalanced", 1 / 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    (r"a \\ b", [("a \\ b", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",  # A1111's own example
     [("a ", 1.0), ("house", 1.3 * 1.1 * 1.1), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),
    ("((a:2))", [("a", 2.2)]),
    ("[[a]]", [("a", 1 / 1.1 / 1.1)]),
    ("(a: 1.25 ) b", [("a", 1.25), (" b", 1.0)]),
    ("(a:.5)", [("a", 0.5)]),
    ("(a:-1)", [("a", -1.0)]),
    ("a:1.3) b] c)", [("a:1.3) b] c)", 1.0)]),  # nothing open: text
    ("time: 12", [("time: 12", 1.0)]),
    ("a BREAK b", [("a", 1.0), (None, None), ("b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), (None, None), ("b", 1.1)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),  # a whole word only
    ("", [("", 1.0)]),
])
def test_parse(text, want):
    got = pw.parse(text)
    assert len(got) == len(want), got
    for (text_got, w_got), (text_want, w_want) in zip(got, want):
        assert text_got == text_want and (w_got is None if w_want is None else w_got == pytest.approx(w_want))


def test_parse_errors():
    with pytest.raises(InvalidInput, match="not a number"):
        pw.parse("(a:1.2.3)")
    with pytest.raises(InvalidInput, match="limit"):
        pw.parse("(" * 60 + "a")  # 1.1 ** 60 = 304


# -- chunks -----------------------------------------------------------------------------
def test_short_plain_prompt_has_todays_ids(tok):
    for p in [PROMPT, "", "red " * 75]:
        c = pw.chunk_prompt(tok, p)
        assert c.chunks == 1 and np.array_equal(c.ids, tok.tokenize([p], warn=False))
        assert np.all(c.weights == 1.0)


def test_chunk_boundaries(tok):
    assert pw.chunk_prompt(tok, "red " * 75).chunks == 1
    c = pw.chunk_prompt(tok, "red " * 80)
    assert c.chunks == 2 and c.token_count == 80
    red, = tok.encode("red")
    assert c.ids[0, 1:76].tolist() == [red] * 75 and c.ids[0, 76] == tok.end_id
    assert c.ids[1, :7].tolist() == [tok.start_id, *[red] * 5, tok.end_id]


def test_chunk_split_after_a_late_comma(tok):
    red, comma, blue = tok.encode("red")[0], tok.encode(",")[0], tok.encode("blue")[0]
    c = pw.chunk_prompt(tok, "red " * 70 + ", " + "blue " * 10)  # comma at token 71: within the last 20
    assert c.chunks == 2 and c.token_count == 81
    assert c.ids[0, 1:73].tolist() == [red] * 70 + [comma, tok.end_id]
    assert c.ids[1, 1:12].tolist() == [blue] * 10 + [tok.end_id]
    early = pw.chunk_prompt(tok, "red " * 30 + ", " + "blue " * 50)  # comma 45 tokens before the end: no split
    assert early.ids[0, 76] == tok.end_id and early.ids[0, 75] == blue and early.token_count == 81


def test_weights_follow_the_tokens(tok):
    c = pw.chunk_prompt(tok, "a (red:1.5) circle, [blue] square")
    ids = c.ids[0].tolist()
    red, blue = tok.encode("red")[0], tok.encode("blue")[0]
    assert c.weights[0, ids.index(red)] == pytest.approx(1.5)
    assert c.weights[0, ids.index(blue)] == pytest.approx(1 / 1.1)
    assert sorted(set(np.round(c.weights[0].astype(np.float64), 4).tolist())) == [0.9091, 1.0, 1.5]


def test_break(tok):
    assert pw.chunk_prompt(tok, "red BREAK blue").chunks == 2
    assert pw.chunk_prompt(tok, "red BREAK").chunks == 1  # nothing after it
    first = pw.chunk_prompt(tok, "BREAK red")
    assert first.chunks == 2 and np.array_equal(first.ids[0], pw.empty_chunk(tok)[0])


def test_limits_and_label(tok):
    with pytest.raises(InvalidInput, match="chunks") as e:
        pw.chunk_prompt(tok, "red " * (75 * pw.MAX_CHUNKS + 1))
    assert e.value.code == "prompt_too_long"
    assert pw.token_label(tok, PROMPT) == "7/75 tokens"
    assert pw.token_label(tok, "red " * 80) == "80/150 tokens, 2 chunks"
    assert pw.token_label(tok, PROMPT + " <lora:ink:0.8>") == "7/75 tokens"  # tags are not encoded
    assert "chunks" in pw.token_label(tok, "red " * 3000)


def test_batch_is_padded_with_empty_chunks(tok):
    ids, weights, counts = pw.tokenize_prompts(tok, ["red " * 80, "blue"])
    assert ids.shape == (2, 2, 77) and counts == [80, 1]
    assert np.array_equal(ids[1, 1], pw.empty_chunk(tok)[0]) and np.all(weights[1] == 1)


# -- encoding ---------------------------------------------------------------------------
def test_apply_weights_rescales_to_the_mean(rng):
    z = rng.normal(0.3, 1.0, (77, 16)).astype(np.float32)
    w = np.ones(77, np.float32)
    assert pw.apply_weights(z, w) is not None and np.array_equal(pw.apply_weights(z, w), z)
    w[3], w[5] = 1.5, 0.7
    out = pw.apply_weights(z, w)
    assert out.mean(dtype=np.float64) == pytest.approx(z.mean(dtype=np.float64), rel=1e-5)
    ratio = out / z  # z * w * c with one scalar c
    c = ratio[0, 0]
    np.testing.assert_allclose(ratio[[0, 1, 2, 4, 6]], c, rtol=1e-5)
    np.testing.assert_allclose(ratio[3], 1.5 * c, rtol=1e-5)
    np.testing.assert_allclose(ratio[5], 0.7 * c, rtol=1e-5)


def test_a_zero_mean_output_is_weighted_without_rescale(rng):
    """An encoder whose last layer norm leaves every token's mean at 0 (the small test models): the
    mean is rounding noise, and a scale from it would be too."""
    z = rng.normal(0, 1, (77, 16)).astype(np.float32)
    z -= z.mean(axis=1, keepdims=True)
    w = np.ones(77, np.float32)
    w[4] = 1.5
    np.testing.assert_array_equal(pw.apply_weights(z, w), z * w[:, None])


def test_pipeline_plain_prompt_is_bit_for_bit_todays(tiny_pipeline):
    for prompts in ([PROMPT], [PROMPT, "green"]):
        got = tiny_pipeline.encode_prompts(prompts)
        assert np.array_equal(got.context, tiny_pipeline.encode_text(prompts)) and got.truncated == [0] * len(prompts)


def test_pipeline_weighted_prompt_differs_only_where_expected(tiny_pipeline):
    tok = tiny_pipeline.tokenizer
    plain = tiny_pipeline.encode_prompts(["a red circle on a blue background"]).context[0]
    weighted = tiny_pipeline.encode_prompts(["a (red:1.5) circle on a blue background"]).context[0]
    at = tok.tokenize(["a red circle"])[0].tolist().index(tok.encode("red")[0])
    ratio = weighted.astype(np.float64) / plain
    c = np.median(ratio)
    others = np.delete(np.arange(77), at)
    np.testing.assert_allclose(ratio[others], c, rtol=1e-4)
    np.testing.assert_allclose(ratio[at], 1.5 * c, rtol=1e-4)
    assert weighted.mean(dtype=np.float64) == pytest.approx(plain.mean(dtype=np.float64), abs=1e-6)
    # same tokens: "(red:1)" only splits the text where the tokenizer splits it anyway
    assert np.array_equal(tiny_pipeline.encode_prompts(["a (red:1) circle on a blue background"]).context[0], plain)


def test_long_prompt_gives_154_tokens_and_the_pipeline_runs(tiny_pipeline):
    long = ", ".join(["a red circle on a blue background"] * 12)  # 95 tokens
    enc = tiny_pipeline.encode_prompts([long])
    assert enc.context.shape == (1, 154, tiny_pipeline.context_dim) and enc.token_counts == [95]
    ids = pw.chunk_prompt(tiny_pipeline.tokenizer, long).ids
    chunks = np.concatenate([tiny_pipeline._encode(ids[k:k + 1]).numpy() for k in range(2)], 1)
    np.testing.assert_allclose(enc.context, chunks, atol=1e-5)  # batch 2 vs 1: float round-off
    kw = dict(num_steps=2, seed=3, height=64, width=64, decode=False)
    gen = tiny_pipeline.generate(long, negative_prompt="blurry", **kw)
    assert np.isfinite(gen.latents).all()
    # the one-chunk negative prompt is padded with the empty prompt's chunk
    neg = tiny_pipeline.encode_prompts(["blurry"]).context
    padded = np.concatenate([neg, tiny_pipeline.encode_text([""])], 1)
    again = tiny_pipeline.generate(None, context=enc.context, unconditional_context=padded, **kw)
    np.testing.assert_allclose(gen.latents, again.latents, atol=1e-6)
    with pytest.raises(InvalidInput, match="77 x k"):
        tiny_pipeline.generate(None, context=enc.context[:, :100], **kw)


# -- REST -------------------------------------------------------------------------------
LONG = ", ".join(["a (red:1.3) circle on a [blue] background"] * 12)


def test_rest_encode_and_txt2img_with_a_long_weighted_prompt(client, engine):
    r = client.post("/api/v1/encode", json={"prompts": [LONG, "green"], "dtype": "float32"})
    assert r.status_code == 200, r.text
    t, meta = wire.decode(r.content)
    assert t["context"].shape == (2, 154, 64) and json.loads(meta["truncated"]) == [0, 0]
    np.testing.assert_allclose(t["context"], engine.pipe.encode_prompts([LONG, "green"]).context, atol=1e-6)
    r = client.post("/api/v1/txt2img", json={"prompt": LONG, "negative_prompt": "blurry", "steps": 2, "seed": 0})
    assert r.status_code == 200, r.text
    assert r.json()["truncated"] == [0, 0] and r.json()["token_counts"][0] > 75


def test_rest_diffuse_with_a_154_token_context(client, engine):
    ctx = engine.pipe.encode_prompts([LONG]).context
    r = post_wire(client, "/api/v1/diffuse", tensors(context=ctx), seed=4, steps=2)
    assert r.status_code == 200, r.text
    got = wire.decode(r.content)[0]["latents"]
    want = engine.pipe.generate(LONG, num_steps=2, seed=4, callback=lambda *a: None, decode=False).latents
    np.testing.assert_allclose(got, want, atol=1e-5)
    for bad in (ctx[:, :100], np.zeros((1, 77 * (pw.MAX_CHUNKS + 1), 64), np.float32)):
        r = post_wire(client, "/api/v1/diffuse", tensors(context=bad), seed=4, steps=2)
        assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_shape"
