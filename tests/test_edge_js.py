"""The browser client's JavaScript, run by Node's test runner (edge/tests/*.test.mjs): the CLIP
tokenizer (edge/web/tokenizer.js) gives the Python tokenizer's ids on a fixture of prompts, with
the tokenizer files written the way the exporter writes them; the wire codec (edge/web/wire.js)
reads and writes what the server's codec (webapp/wire.py) does, float16 rounding included."""

import json
import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest

from edge.tests import make_tokenizer_fixture
from models.tokenizer import TruncationWarning, default_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = shutil.which("node")


def test_fixture_is_current():
    """The fixture's ids are today's Python ids (regenerate with python -m edge.tests.make_tokenizer_fixture)."""
    with open(make_tokenizer_fixture.OUT, encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    assert len(cases) >= 200
    assert [c["prompt"] for c in cases] == make_tokenizer_fixture.prompts()
    tok = default_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        got = tok.tokenize([c["prompt"] for c in cases]).tolist()
    assert got == [c["ids"] for c in cases]
    assert sum(c["count"] > 75 for c in cases) >= 10  # truncation is covered


def _tf_serving_case(rng):
    """The Python TF Serving client's request for a batch of 2 (two chunks), and an answer."""
    import base64

    from edge.tf_serving import TFServingDiffusion, predict_body

    manifest = {"schedulers": ["ddim", "dpmpp_2m", "euler"], "context": {"length": 77}, "model": {},
                "latent": {"height": 2, "width": 3, "channels": 4, "vae_factor": 8}, "image": {"height": 16, "width": 24}}
    context = (rng.standard_normal((2, 154, 8)) * 2).astype(np.float32)
    uncond = rng.standard_normal((2, 154, 8)).astype(np.float32)
    params = {"seed": 4294967290, "steps": 12, "guidance_scale": 6.5, "scheduler": "euler"}
    signature, inputs, reported = TFServingDiffusion("unused", manifest, None).request(
        {"context": context, "unconditional_context": uncond}, params)
    latents = rng.standard_normal((2, 2, 3, 4)).astype(np.float16)
    answer = {"outputs": [{"b64": base64.b64encode(row.astype("<f2").tobytes()).decode()} for row in latents]}
    return {"manifest": manifest, "context": {"shape": list(context.shape), "values": context.ravel().tolist()},
            "unconditional": {"shape": list(uncond.shape), "values": uncond.ravel().tolist()}, "params": params,
            "python_body": json.loads(predict_body(signature, inputs)), "python_reported": reported,
            "answer": answer, "answer_shape": list(latents.shape), "answer_bits": latents.view(np.uint16).ravel().tolist()}


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed (scripts/setup.sh test installs it)")
def test_javascript_node_tests(tmp_path):
    from webapp import wire as server_wire

    default_tokenizer().save_vocab(str(tmp_path / "tokenizer"))  # what the exporter writes
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20000) * 3, rng.standard_normal(2000) * 1e-5,
                        [0.0, -0.0, 65504.0, 65519.0, -65504.0, 6e-8, 3e-8, 1 + 2**-11]]).astype(np.float32)
    ids = np.arange(-5, 5, dtype=np.int32).reshape(2, 5)
    mask = (rng.random((8, 8)) > 0.5).astype(np.uint8) * 255
    (tmp_path / "in.st").write_bytes(server_wire.encode(
        {"x": x, "x16": x.astype(np.float16), "ids": ids, "mask": mask}, {"parameters": {"steps": 20}}))
    (tmp_path / "tfs.json").write_text(json.dumps(_tf_serving_case(rng)))
    env = dict(os.environ, SD_TOKENIZER_DIR=str(tmp_path / "tokenizer"), SD_WIRE_IN=str(tmp_path / "in.st"),
               SD_WIRE_OUT=str(tmp_path / "out.st"), SD_TFS_CASE=str(tmp_path / "tfs.json"))
    proc = subprocess.run([NODE, "--test", "edge/tests/"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout and "# skipped 0" in proc.stdout, proc.stdout[-2000:]

    tensors, metadata = server_wire.decode((tmp_path / "out.st").read_bytes(), allow_nonfinite=True)
    assert metadata == {"from": "js"}
    np.testing.assert_array_equal(tensors["x16"].view(np.uint16), x.astype(np.float16).view(np.uint16))
    np.testing.assert_array_equal(tensors["ids"], ids)
    np.testing.assert_array_equal(tensors["mask"], mask)


def test_python_client_codec_round_trips():
    """edge/client.py speaks webapp/wire.py (numpy only) both ways: every dtype, shape and the
    metadata survive a round trip."""
    from webapp import wire

    rng = np.random.default_rng(1)
    tensors = {"context": rng.standard_normal((1, 77, 8)).astype(np.float16),
               "image_latents": rng.standard_normal((1, 8, 8, 4)).astype(np.float32),
               "mask": (rng.random((64, 64)) > 0.5).astype(np.uint8), "ids": np.arange(6, dtype=np.int32)}
    body = wire.encode(tensors, {"seeds": [3], "parameters": {"steps": 2}})
    got, meta = wire.decode(body)
    assert json.loads(meta["seeds"]) == [3] and json.loads(meta["parameters"]) == {"steps": 2}
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        np.testing.assert_array_equal(got[k], v)


def test_text_tables_are_current():
    """edge/web/text_tables.js is generated from Python's html module (python -m edge.gen_text_tables)."""
    from edge import gen_text_tables

    with open(gen_text_tables.OUT, encoding="utf-8") as f:
        assert f.read() == gen_text_tables.build()
