"""The browser client's LoRA rule (edge/web/loras.js) against the server's (models.chain.request_loras,
models.lora.prompt_tags): Node runs the JavaScript on the same cases and both must give the same
prompt text, the same set, or the same error code; and planLoras says when the page must have
the server encode (a text-encoder LoRA) or cannot serve the request at all."""

import json
import os
import shutil
import subprocess

import pytest

from models import chain
from models.errors import InvalidInput

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = shutil.which("node")
AVAILABLE = {"ink": {"networks": ["unet"]}, "Word": {"networks": ["text_encoder"]},
             "both": {"networks": ["text_encoder", "unet"]}, **{f"l{i}": {"networks": ["unet"]} for i in range(9)}}

CASES = [
    ("a cat", "", None), ("a cat", "", []),
    ("a cat <lora:ink:0.8>, oil painting", "", None), ("<lora:ink> a cat", "", None),
    ("a cat <lora:ink:-1.5>", "", None), ("a <lora:ink:.5> <LORA:both:2> cat", "", None),
    ("(<lora:ink>red) cat", "", None), ("first line\n<lora:ink:1e-1> second", "", None),
    ("no  tags  here ", "", None), ("a <3 b > c", "", None), ("trailing <lora:ink>  ", "", None),
    ("a cat <lora:ink:0.9>", "", [{"name": "ink", "scale": 0.5}, {"name": "word"}]),
    ("<lora:INK:0.3> a cat <lora:ink:0.6>", "", None), ("a cat", "", ["both", ["ink", 2]]),
    ("x", "", [{"name": f"l{i}"} for i in range(9)]),  # too many after the merge
    ("x <lora:nope:1>", "", None), ("x", "", [{"name": "nope"}]), ("x", "<lora:ink>", None),
    ("x <lora::1>", "", None), ("x <lora:ink:abc>", "", None), ("x <lora:ink:1:2>", "", None),
    ("x <lora:ink", "", None), ("x <lora:ink:1e400>", "", None), ("x", "", [{"name": "ink", "scale": 11}]),
    ("x", "", [{"name": "ink", "weight": 1}]), ("x", "", [{"name": "y" * 201}]),
    ("x", "", [{"name": "ink"}] * 40), ("x", "", [{"name": " ink ", "scale": -10}]),
]


def python(prompt, negative, loras):
    try:
        text, chosen = chain.request_loras(prompt, negative, loras, AVAILABLE)
    except InvalidInput as e:
        return {"error": e.code}
    return {"text": text, "chosen": None if chosen is None else [[n, s] for n, s in chosen]}


NODE_SCRIPT = """
import { requestLoras, planLoras } from "./edge/web/loras.js";
import { readFileSync } from "node:fs";
const { cases, available, plans } = JSON.parse(readFileSync(process.env.SD_CASES, "utf8"));
const out = cases.map(([prompt, negative, loras]) => {
  try { const r = requestLoras(prompt, negative, loras, available); return { text: r.text, chosen: r.chosen }; }
  catch (e) { return { error: e.code || String(e) }; }
});
const planned = plans.map(([prompt, picked, info]) => {
  try { const p = planLoras(prompt, "", picked, info); return { unet: p.unet, te: p.textEncoder, server: p.encodeOnServer, text: p.text }; }
  catch (e) { return { error: e.code || String(e) }; }
});
console.log(JSON.stringify({ out, planned }));
"""


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed (scripts/setup.sh test installs it)")
def test_javascript_gives_the_servers_rule(tmp_path):
    full = {"loras": AVAILABLE, "loaded_networks": ["text_encoder", "unet", "decoder", "encoder"]}
    diffusion_only = {"loras": AVAILABLE, "loaded_networks": ["unet"]}
    plans = [["a <lora:ink:0.5> cat", [], full], ["a cat", [["Word", 1]], full], ["a cat", [["both", 0.7]], full],
             ["a cat", [["Word", 1]], diffusion_only], ["a cat <lora:ink>", [], diffusion_only], ["a cat", [], full]]
    (tmp_path / "cases.json").write_text(json.dumps({"cases": CASES, "available": AVAILABLE, "plans": plans}))
    script = tmp_path / "run.mjs"
    script.write_text(NODE_SCRIPT.replace("./edge/web/loras.js", "file://" + os.path.join(REPO, "edge/web/loras.js")))
    proc = subprocess.run([NODE, str(script)], cwd=REPO, env=dict(os.environ, SD_CASES=str(tmp_path / "cases.json")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    expected = [python(*case) for case in CASES]
    for case, js, py in zip(CASES, result["out"], expected):
        assert js == py, (case, js, py)
    assert {e.get("error") for e in expected} >= {None, "unknown_lora", "bad_lora_tag", "bad_lora_scale", "bad_loras",
                                                   "too_many_loras"}
    assert result["planned"] == [
        {"unet": [["ink", 0.5]], "te": [], "server": False, "text": "a cat"},  # UNet only: the page encodes
        {"unet": [], "te": [["Word", 1]], "server": True, "text": "a cat"},  # text encoder: the server encodes
        {"unet": [["both", 0.7]], "te": [["both", 0.7]], "server": True, "text": "a cat"},
        {"error": "lora_needs_server_text_encoder"},  # and a server without one cannot
        {"unet": [["ink", 1]], "te": [], "server": False, "text": "a cat"},
        {"unet": [], "te": [], "server": False, "text": "a cat"},
    ]
