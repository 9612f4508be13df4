"""Both edge clients encode a prompt by the server's rule (models.prompt_weighting): the browser's
edge/web/prompt_weighting.js gives Python's parse, chunk ids, weights, token counts and labels on a
corpus of prompts (Node), and, fed the server's text-encoder output for each chunk, the server's
context; the TFLite client (edge/client.py, which calls the Python module) gives the server's
context for weighted and long prompts through its own TFLite text encoder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from models import prompt_weighting as pw
from models.errors import InvalidInput
from models.tokenizer import default_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = shutil.which("node")
LONG = ", ".join(["a (red:1.3) circle on a [blue] background"] * 12)

CORPUS = [
    "a red circle on a blue background", "", " ", "an (important) word", "(unbalanced", "[unbalanced",
    r"\(literal\]", r"a \\ backslash \ lone", "(unnecessary)(parens)",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", "((a:2)) [[b]] (((c)))", "(a: 1.25 ) b (c:.5) (d:-1)",
    "(a:1.) (b:+.5) (c:00.25)", "a:1.3) b] c) : d", "time: 12:30", "red BREAK blue", "(red BREAK blue)",
    "BREAK red", "red BREAK", "BREAK", "aBREAK b BREAKc", "éBREAK b", "red\u3000BREAK\u3000blue", "red\x1cBREAK b",
    "red " * 75, "red " * 76, "red " * 80, "red " * 70 + ", " + "blue " * 10, "red " * 30 + ", " + "blue " * 50,
    ", ".join(["a red circle on a blue background"] * 12), LONG, "(" + "red " * 100 + ")",
    "red " * 74 + "(blue:1.4) green " * 3, "a, " * 60, "[a, b, c:1.5]", "(a [b (c:0.3) d] e:1.2)",
    "café (crème brûlée:1.2) 日本語 (猫)", "emoji 🐱 (🐶:1.1)", "<lora:ink:0.8> a (cat)", "&amp; (a&lt;b)",
    "(a:1.2.3)", "(" * 60 + "a", "a, " * (40 * pw.MAX_CHUNKS), "x\n(y)\n[z]", "((a)", "a))((b",
]


def python_case(tok, text):
    try:
        pieces = pw.parse(text)
        c = pw.chunk_prompt(tok, text)
    except InvalidInput as e:
        return {"error": e.code}
    return {"pieces": [list(p) for p in pieces], "ids": c.ids.tolist(),
            "weights": [[float(w) for w in row] for row in c.weights], "count": c.token_count,
            "label": pw.token_label(tok, text)}


NODE_SCRIPT = r"""
import { CLIPTokenizer } from "./edge/web/tokenizer.js";
import * as pw from "./edge/web/prompt_weighting.js";
import { readFileSync } from "node:fs";
const dir = process.env.SD_TOKENIZER_DIR;
const read = (n) => readFileSync(`${dir}/${n}`, "utf8");
const tok = new CLIPTokenizer(JSON.parse(read("vocab.json")), read("merges.txt"), JSON.parse(read("tokenizer_config.json")));
const { corpus, encoded, applyCases } = JSON.parse(readFileSync(process.env.SD_CASES, "utf8"));
const cases = corpus.map((text) => {
  try {
    const pieces = pw.parse(text);
    const c = pw.chunkPrompt(tok, text);
    return { pieces, ids: c.ids.map((r) => Array.from(r)), weights: c.weights.map((r) => Array.from(r)),
             count: c.tokenCount, label: pw.tokenLabel(tok, text) };
  } catch (e) { return { error: e.code || String(e) }; }
});
const contexts = [];
for (const { prompt, chunks } of encoded) {
  const lookup = new Map(chunks.map(([ids, z]) => [ids.join(","), Float32Array.from(z)]));
  const r = await pw.encodePrompt(tok, prompt, async (ids) => lookup.get(Array.from(ids).join(",")));
  contexts.push({ shape: r.shape, values: Array.from(r.values) });
}
const applied = applyCases.map(([z, w, dim]) => Array.from(pw.applyWeights(Float32Array.from(z), Float32Array.from(w), dim)));
console.log(JSON.stringify({ cases, contexts, applied }));
"""


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed (scripts/setup.sh test installs it)")
def test_javascript_gives_the_servers_chunks_weights_and_contexts(tmp_path, tiny_pipeline):
    assert len(CORPUS) >= 30
    tok = tiny_pipeline.tokenizer
    tok.save_vocab(str(tmp_path / "tokenizer"))  # what the exporter writes
    # the server's text encoder output for every chunk the JS will ask for
    prompts = [LONG, "a (red:1.5) circle on a [blue] background", "red " * 80, "BREAK (red)",
               "(a:0.2) (b:1.8) c, " * 30]
    encoded = []
    for p in prompts:
        ids = pw.chunk_prompt(tok, p).ids
        z = tiny_pipeline._encode(ids).numpy()
        encoded.append({"prompt": p, "chunks": [[ids[k].tolist(), z[k].ravel().tolist()] for k in range(len(ids))]})
    rng = np.random.default_rng(0)
    apply_cases = []
    for mean in (0.0, 0.5, -2.0):
        z = rng.normal(mean, 1.0, (77, 8)).astype(np.float32)
        w = np.ones(77, np.float32)
        w[rng.integers(0, 77, 10)] = rng.uniform(0.3, 1.8, 10).astype(np.float32)
        apply_cases.append([z.ravel().tolist(), w.tolist(), 8])
    (tmp_path / "cases.json").write_text(json.dumps({"corpus": CORPUS, "encoded": encoded, "applyCases": apply_cases}))
    script = tmp_path / "run.mjs"
    script.write_text(NODE_SCRIPT.replace("./edge/web/", "file://" + os.path.join(REPO, "edge/web/")))
    proc = subprocess.run([NODE, str(script)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, SD_TOKENIZER_DIR=str(tmp_path / "tokenizer"),
                                   SD_CASES=str(tmp_path / "cases.json")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    expected = [python_case(tok, text) for text in CORPUS]
    for text, js, py in zip(CORPUS, out["cases"], expected):
        assert js == py, (text[:80], js.get("error"), py.get("error"))
    assert {e.get("error") for e in expected} == {None, "bad_prompt_weight", "prompt_too_long"}
    assert sum(len(e.get("ids", [])) > 1 for e in expected) >= 10  # long prompts are covered
    worst = 0.0
    for p, js in zip(prompts, out["contexts"]):
        want = tiny_pipeline.encode_prompts([p]).context
        got = np.asarray(js["values"], np.float32).reshape(js["shape"])
        assert got.shape == want.shape
        worst = max(worst, float(np.abs(got - want).max()))
    print(f"JS vs server contexts: max abs difference {worst:.3g}")
    assert worst < 1e-4  # the server encodes all chunks in one batch, the JS one by one
    for (z, w, dim), js in zip(apply_cases, out["applied"]):
        want = pw.apply_weights(np.asarray(z, np.float32).reshape(77, dim), np.asarray(w, np.float32)).ravel()
        np.testing.assert_allclose(np.asarray(js, np.float32), want, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def tflite_export(tmp_path_factory):
    """The tiny model's TFLite text encoder and decoder (what the Python edge client loads)."""
    pytest.importorskip("ai_edge_litert")
    from exports import export

    out = str(tmp_path_factory.mktemp("pw_export") / "tiny")
    export("tiny", out, formats="tflite", components="text_encoder,decoder", quantize="float32", progress=False)
    return out


def test_tflite_client_context_equals_the_servers(tflite_export):
    from edge.client import EdgeModels
    from models import load_pipeline

    models = EdgeModels(tflite_export)
    pipe = load_pipeline("tiny")
    worst = 0.0
    for p in ["a red circle on a blue background", "a (red:1.5) circle on a [blue] background", LONG,
              "red " * 80, "red BREAK (blue:1.3)"]:
        got, want = models.encode_text(p), pipe.encode_prompts([p]).context
        assert got.shape == want.shape, p
        worst = max(worst, float(np.abs(got - want).max()))
    print(f"TFLite client vs server contexts: max abs difference {worst:.3g}")
    assert worst < 1e-4
    assert models.encode_text(LONG).shape[1] == 154


@pytest.fixture(scope="module")
def hybrid_server(tflite_export):
    """The real app, all in one, on a loopback port (uvicorn in a thread), serving the export."""
    import socket
    import threading
    import time
    import urllib.request

    import uvicorn

    from webapp.server import Config, create_app

    app = create_app(Config(model="tiny", exports=tflite_export, ui=False, token=""))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/v1/health", timeout=2):
                break
        except OSError:
            time.sleep(0.2)
    yield url
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_hybrid_txt2img_with_a_long_weighted_prompt_matches_all_in_one(tflite_export, hybrid_server):
    """Mode 3: the TFLite client encodes a 154-token weighted prompt (and a one-chunk negative
    prompt, which the server pads), sends it through /diffuse, decodes; the all-in-one server's
    /txt2img gives the same image."""
    import io
    import urllib.request

    from PIL import Image

    from edge.client import EdgeClient, EdgeModels

    client = EdgeClient(hybrid_server, EdgeModels(tflite_export), dtype="float32")
    result = client.txt2img(LONG, negative_prompt="green", seed=3, steps=4)
    body = json.dumps({"prompt": LONG, "negative_prompt": "green", "seed": 3, "steps": 4}).encode()
    req = urllib.request.Request(f"{hybrid_server}/api/v1/txt2img", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Accept": "image/png"})
    with urllib.request.urlopen(req, timeout=300) as r:
        reference = np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))
    err = np.mean((result.images[0].astype(np.float64) - reference) ** 2)
    psnr = float("inf") if err == 0 else 10 * np.log10(255.0 ** 2 / err)
    print(f"hybrid (TFLite client, 154-token weighted prompt) vs all in one: PSNR {psnr:.1f} dB")
    assert psnr >= 30.0
