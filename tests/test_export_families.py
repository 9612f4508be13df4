"""Exports of the newer model families (issue 15) and with LoRAs baked in (issue 14), on tiny
random networks, each artifact against the Python pipeline for the same inputs and seed:

* an SD 2.x-shaped model (exact-GELU text tower 1024 wide, the real SD 2 context width; a UNet
  with linear projections and per-level heads; v-prediction, "trailing" spacing), exported with
  clip skip 2 and a kohya LoRA on the UNet and the text encoder at scale 0.7: the served loop
  for DDIM and the schedulers added since the first exports (DPM++ 2M Karras, Euler Karras,
  LCM), guided and guidance-off rows in one batch; the text
  encoder as SavedModel and TFLite; the one-step UNet in TFLite; the manifest's model facts;
  and the Python edge client's request (one 1024-wide context when guidance is off);
* an LCM-distilled UNet (time_cond_proj_dim): the served loop and the TFLite step take the
  guidance scale as the embedding the UNet was distilled with.
"""

import dataclasses
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from exports import export, find_artifact, read_manifest
from exports import tflite as tflite_mod
from exports.diffusion_graph import scheduler_names
from models.schedulers import SCHEDULERS, NoiseSchedule

from .conftest import random_components
from .test_export import LOOP_BOUND, rel_err
from .test_lora_formats import ATTN, kohya, save

PROMPT = "a red circle on a blue background"
STEPS = 3
LORA_SCALE = 0.7
LORA_MODULES = [("unet", f"{ATTN}.attn2.to_k"), ("unet", f"{ATTN}.attn1.to_out.0"),
                ("unet", "down_blocks.0.resnets.0.conv1"),
                ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj"),
                ("text_encoder", "text_model.encoder.layers.0.mlp.fc1")]


def sd2_components(seed=5):
    """SD 2.x's architecture at toy size but with its 1024-wide context (the token embedding is
    then 50 M parameters: 0.2 GB, about 10 s to convert to TFLite)."""
    from models.config import TextEncoderConfig

    comps = random_components(seed=seed)
    text = TextEncoderConfig(hidden_size=1024, intermediate_size=64, num_hidden_layers=2, num_attention_heads=16,
                             hidden_act="gelu")
    unet = dataclasses.replace(comps.unet.config, cross_attention_dim=1024, use_linear_projection=True,
                               attention_head_dim=(2, 4))
    return _rebuild(comps, seed, text=text, unet=unet,
                    schedule=NoiseSchedule(prediction_type="v_prediction", timestep_spacing="trailing"))


def _rebuild(comps, seed, text=None, unet=None, schedule=None):
    import keras

    from models.text_encoder import TextEncoder
    from models.unet import UNet

    keras.utils.set_random_seed(seed)
    return dataclasses.replace(
        comps, text_encoder=TextEncoder(text) if text else comps.text_encoder,
        unet=UNet(unet) if unet else comps.unet, schedule=schedule or comps.schedule, name="tiny-family")


def _weights(pipe):
    return [np.array(v.numpy()) for net in (pipe.unet, pipe.text_encoder) for v in net.weights]


# The served graphs of these tests hold the schedulers the first exports did not have, plus DDIM:
# every scheduler is one more traced loop (minutes on two shared cores), and tests/test_export.py
# runs the full export, with all seven, against the pipeline for the original four.
SD2_SCHEDULERS = ("ddim", "dpmpp_2m_karras", "euler_karras", "lcm")


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    """(pipeline, LoRA file, export folder, manifest, base weights) of one export with
    --lora FILE:0.7 --clip-skip 2."""
    from exports import diffusion_graph
    from models.pipeline import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(sd2_components())
    assert pipe.components.family == "sd2" and pipe.context_dim == 1024
    root = tmp_path_factory.mktemp("families")
    lora = save(kohya(pipe, LORA_MODULES, rank=4, seed=1), root / "style.safetensors")
    base = _weights(pipe)
    out = str(root / "export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diffusion_graph, "EXPORTED_SCHEDULERS", SD2_SCHEDULERS)
        export("tiny", out, pipeline=pipe, formats="savedmodel,tflite", components="text_encoder,diffusion",
               quantize="float32", loras=[f"{lora}:{LORA_SCALE}"], clip_skip=2, progress=False)
    return pipe, lora, out, read_manifest(out), base


@pytest.fixture(scope="module")
def sd2_reference(sd2):
    """The pipeline as the export should have been made: the LoRA at 0.7, clip skip 2."""
    pipe, lora, _, _, _ = sd2
    pipe.load_lora(lora, LORA_SCALE)
    pipe.clip_skip = 2
    yield pipe
    pipe.clip_skip = 1
    pipe.unload_loras()


def test_the_pipeline_is_given_back_as_it_was(sd2):
    pipe, _, _, _, base = sd2
    assert pipe.loaded_loras == {} and pipe.active_loras == [] and pipe.clip_skip == 1
    assert all(np.array_equal(a, b) for a, b in zip(base, _weights(pipe)))


def test_manifest_records_family_lora_and_every_scheduler(sd2):
    _, lora, _, manifest, _ = sd2
    model = manifest["model"]
    assert (model["model_family"], model["prediction_type"], model["timestep_spacing"]) == \
        ("sd2", "v_prediction", "trailing")
    assert model["clip_skip"] == 2 and model["guidance_embedding"] is False
    assert manifest["context"]["dim"] == 1024 and manifest["context"]["shape"] == [77, 1024]
    assert manifest["schedulers"] == list(SD2_SCHEDULERS)
    (entry,) = manifest["loras"]
    with open(lora, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert entry["name"] == "style" and entry["scale"] == LORA_SCALE and entry["sha256"] == digest
    assert entry["networks"] == ["text_encoder", "unet"] and entry["modules"] == len(LORA_MODULES)
    assert entry["file"] == "style.safetensors" and entry["bytes"] == os.path.getsize(lora)


def test_text_encoder_has_the_lora_and_clip_skip(sd2, sd2_reference):
    pipe = sd2_reference
    _, _, out, manifest, _ = sd2
    ids = pipe.tokenizer.tokenize([PROMPT, "a cat"])
    ref = pipe.encode_text([PROMPT, "a cat"])
    saved = tf.saved_model.load(os.path.join(out, "savedmodel", "text_encoder", "1"))
    got = saved.signatures["serving_default"](token_ids=tf.constant(ids, tf.int32))["context"].numpy()
    assert got.shape == (2, 77, 1024)
    assert rel_err(got, ref) < 1e-5
    art = find_artifact(manifest, "text_encoder", "tflite", "float32")
    lite = tflite_mod.run(os.path.join(out, art["path"]), {"token_ids": ids[:1].astype(np.int32)})["context"]
    assert rel_err(lite, ref[:1]) < 1e-4
    # the test can fail: without the LoRA, or at clip skip 1, the context is another one
    assert rel_err(pipe.encode_text([PROMPT, "a cat"], clip_skip=1), ref) > 1e-2
    with pipe.loras_applied([]):
        assert rel_err(pipe.encode_text([PROMPT, "a cat"]), ref) > 1e-2


def served_rows_against_the_pipeline(model, manifest, pipe, scheduler):
    """One served batch of a guided row (7.5, negative prompt "blurry") and a guidance-off row
    (1.0, an unconditional context of garbage the loop must not read) against the pipeline's own
    runs: ((guided error, guidance-off error), guided run, guidance-off run)."""
    context = pipe.encode_text([PROMPT, "a cat"])
    uncond = np.concatenate([pipe.encode_text(["blurry"]), np.full((1, 77, context.shape[-1]), 50.0, np.float32)])
    k = manifest["schedulers"].index(scheduler)
    got = model.signatures["serving_default"](
        context=tf.constant(context), unconditional_context=tf.constant(uncond),
        seed=tf.constant([3, 4], tf.int64), guidance_scale=tf.constant([7.5, 1.0]),
        num_steps=tf.constant([STEPS, STEPS]), scheduler=tf.constant([k, k]))["latents"].numpy()
    guided = pipe.generate(PROMPT, "blurry", seed=3, num_steps=STEPS, guidance_scale=7.5, scheduler=scheduler)
    plain = pipe.generate("a cat", seed=4, num_steps=STEPS, guidance_scale=1.0, scheduler=scheduler)
    return (rel_err(got[:1], guided.latents), rel_err(got[1:], plain.latents)), guided, plain


@pytest.mark.parametrize("scheduler", SD2_SCHEDULERS)
def test_served_loop_equals_the_pipeline(sd2, sd2_reference, scheduler):
    """One batch: a guided row (7.5, negative prompt) and a guidance-off row (1.0, whose
    unconditional context is garbage the loop must not read), each equal to its own pipeline run."""
    pipe = sd2_reference
    _, _, out, manifest, _ = sd2
    errs, guided, _ = served_rows_against_the_pipeline(_loaded(out), manifest, pipe, scheduler)
    print(f"sd2 v-prediction {scheduler}: rel err guided {errs[0]:.2e}, guidance off {errs[1]:.2e}")
    assert max(errs) < LOOP_BOUND
    if scheduler == "ddim":  # the LoRA is in the served UNet: without it the run differs
        with pipe.loras_applied([]):
            assert rel_err(pipe.generate(PROMPT, "blurry", seed=3, num_steps=STEPS, guidance_scale=7.5,
                                         scheduler=scheduler).latents, guided.latents) > 1e-2


def test_lcm_step_count_limit_holds_in_the_served_graph(sd2):
    _, _, out, manifest, _ = sd2
    fn = _loaded(out).signatures["serving_default"]
    ctx = tf.zeros([1, 77, 1024])
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_steps must be <= 50"):
        fn(context=ctx, unconditional_context=ctx, seed=tf.constant([0], tf.int64), guidance_scale=tf.constant([1.0]),
           num_steps=tf.constant([51]), scheduler=tf.constant([manifest["schedulers"].index("lcm")]))


def test_tflite_step_is_the_v_prediction_unet_with_the_lora(sd2, sd2_reference):
    pipe = sd2_reference
    _, _, out, manifest, _ = sd2
    art = find_artifact(manifest, "diffusion", "tflite", "float32")
    rng = np.random.default_rng(0)
    h = pipe.unet.config.sample_size
    inputs = {"latents": rng.standard_normal((2, h, h, 4)).astype(np.float32),
              "timesteps": np.array([901.0, 901.0], np.float32),
              "context": pipe.encode_text(["", PROMPT])}
    got = tflite_mod.run(os.path.join(out, art["path"]), inputs)["noise"]
    ref = pipe.predict_noise(inputs["latents"], 901.0, inputs["context"])
    assert rel_err(got, ref) < 1e-4


_SAVED = {}


def _loaded(out):
    if out not in _SAVED:
        _SAVED[out] = tf.saved_model.load(os.path.join(out, "savedmodel", "diffusion", "1"))
    return _SAVED[out]


class _Recorder:
    """The EdgeClient's HTTP call replaced by a recorder answering zero latents."""

    def __init__(self, latent_shape):
        self.latent_shape, self.requests = latent_shape, []

    def __call__(self, tensors, params):
        self.requests.append((tensors, params))
        return np.zeros((1, *self.latent_shape), np.float32), {"seeds": "[0]", "parameters": "{}"}, 0, 0


def test_python_edge_client_sends_one_1024_wide_context_with_guidance_off(sd2, sd2_reference):
    from edge.client import EdgeClient, EdgeModels

    pipe = sd2_reference
    _, _, out, manifest, _ = sd2
    models = EdgeModels(out, components=("text_encoder",))
    models.decode = lambda latents: np.zeros((len(latents), 8, 8, 3), np.uint8)  # no decoder in this export
    client = EdgeClient("http://unused", models, dtype="float32")
    client.diffuse = _Recorder((8, 8, 4))
    client.txt2img(PROMPT, negative_prompt="blurry", guidance_scale=1.0, steps=2)
    client.txt2img(PROMPT, negative_prompt="blurry", guidance_scale=7.5, steps=2)
    (off, _), (guided, _) = client.diffuse.requests
    assert sorted(off) == ["context"] and sorted(guided) == ["context", "unconditional_context"]
    assert off["context"].shape == (1, 77, 1024)
    assert rel_err(off["context"], pipe.encode_text([PROMPT])) < 1e-4  # the edge file's context: LoRA, clip skip
    assert rel_err(guided["unconditional_context"], pipe.encode_text(["blurry"])) < 1e-4


# -- LCM-distilled UNet ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def lcm(tmp_path_factory):
    """The served graph holds only the two schedulers tested here: every other one is one more
    traced loop (minutes on two shared cores), and the SD 2 export above covers them all."""
    from exports import diffusion_graph
    from models.pipeline import StableDiffusionPipeline

    comps = random_components(seed=6)
    pipe = StableDiffusionPipeline(_rebuild(comps, 6, unet=dataclasses.replace(comps.unet.config,
                                                                                time_cond_proj_dim=16)))
    out = str(tmp_path_factory.mktemp("lcm") / "export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diffusion_graph, "EXPORTED_SCHEDULERS", ("euler", "lcm"))
        manifest = export("tiny", out, pipeline=pipe, formats="savedmodel,tflite", components="diffusion",
                          quantize="float32", progress=False)
    assert manifest["schedulers"] == ["euler", "lcm"]
    return pipe, out, manifest


@pytest.mark.parametrize("scheduler,guidance", [("lcm", 8.0), ("euler", 3.0)])
def test_lcm_unet_served_loop_takes_guidance_as_its_embedding(lcm, scheduler, guidance):
    pipe, out, manifest = lcm
    assert manifest["model"]["guidance_embedding"] is True
    context = pipe.encode_text([PROMPT, PROMPT])
    k = manifest["schedulers"].index(scheduler)
    got = _loaded(out).signatures["serving_default"](
        context=tf.constant(context), unconditional_context=tf.constant(context),
        seed=tf.constant([7, 7], tf.int64), guidance_scale=tf.constant([guidance, 2.0]),
        num_steps=tf.constant([4, 4]), scheduler=tf.constant([k, k]))["latents"].numpy()
    ref = pipe.generate(PROMPT, seed=7, num_steps=4, guidance_scale=guidance, scheduler=scheduler).latents
    other = pipe.generate(PROMPT, seed=7, num_steps=4, guidance_scale=2.0, scheduler=scheduler).latents
    err = rel_err(got[:1], ref)
    print(f"lcm unet {scheduler} guidance {guidance}: rel err {err:.2e}")
    assert err < LOOP_BOUND and rel_err(got[1:], other) < LOOP_BOUND
    assert rel_err(other, ref) > 1e-2  # the guidance embedding matters


def test_lcm_unet_tflite_step_takes_guidance_scale(lcm):
    pipe, out, manifest = lcm
    art = find_artifact(manifest, "diffusion", "tflite", "float32")
    names = [i["name"] for i in art["signatures"]["serving_default"]["inputs"]]
    assert sorted(names) == ["context", "guidance_scale", "latents", "timesteps"]
    rng = np.random.default_rng(1)
    h = pipe.unet.config.sample_size
    inputs = {"latents": rng.standard_normal((2, h, h, 4)).astype(np.float32),
              "timesteps": np.array([499.0, 499.0], np.float32),
              "context": pipe.encode_text(["", PROMPT]), "guidance_scale": np.array([8.0, 8.0], np.float32)}
    got = tflite_mod.run(os.path.join(out, art["path"]), inputs)["noise"]
    ref = pipe.predict_noise(inputs["latents"], 499.0, inputs["context"], guidance_scale=8.0)
    assert rel_err(got, ref) < 1e-4
    low = pipe.predict_noise(inputs["latents"], 499.0, inputs["context"], guidance_scale=1.5)
    assert rel_err(low, ref) > 1e-3


def test_exported_schedulers_cover_the_registry_and_keep_the_first_indices():
    names = scheduler_names()
    assert sorted(names) == sorted(SCHEDULERS)  # every scheduler the pipeline has
    assert names[:4] == ["ddim", "dpmpp_2m", "euler", "euler_a"]  # indices 0-3 as in earlier exports


# -- the command line -----------------------------------------------------------------------

def test_cli_bakes_a_lora_and_clip_skip_into_the_edge_text_encoder(tmp_path, capsys):
    from exports.__main__ import main
    from models import load_pipeline

    pipe = load_pipeline("tiny")
    lora = save(kohya(pipe, [("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj")], seed=2),
                tmp_path / "te only.safetensors")
    out = tmp_path / "x"
    assert main(["--model", "tiny", "--out", str(out), "--formats", "tflite", "--components", "text_encoder",
                 "--quantize", "float32", "--lora", f"{lora}:0.5", "--clip-skip", "2", "--quiet"]) == 0
    assert "baked in LoRA te only at 0.5 (text_encoder)" in capsys.readouterr().out
    manifest = read_manifest(str(out))
    assert manifest["model"]["clip_skip"] == 2
    assert [(e["name"], e["scale"], e["networks"]) for e in manifest["loras"]] == [("te only", 0.5, ["text_encoder"])]
    ids = pipe.tokenizer.tokenize([PROMPT]).astype(np.int32)
    got = tflite_mod.run(str(out / "tflite" / "text_encoder.tflite"), {"token_ids": ids})["context"]
    pipe.load_lora(lora, 0.5)
    assert rel_err(got, pipe.encode_text([PROMPT], clip_skip=2)) < 1e-4
    pipe.unload_loras()
    assert rel_err(got, pipe.encode_text([PROMPT], clip_skip=2)) > 1e-3


def test_cli_names_a_missing_lora_before_loading_anything(tmp_path, capsys):
    from exports.__main__ import main

    assert main(["--model", "tiny", "--out", str(tmp_path / "x"), "--formats", "savedmodel",
                 "--lora", str(tmp_path / "nope.safetensors:0.5"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "LoRA file" in err and "nope.safetensors does not exist" in err
    assert not (tmp_path / "x").exists()
