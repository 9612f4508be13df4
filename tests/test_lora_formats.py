"""LoRA files that must be refused, described, or parsed: strictness, descriptions, prompt tags,
the command line and load_pipeline(loras=...).

The LoRAs here are made for our own models from their variables' shapes (numbers are checked
against diffusers in tests/test_lora.py); every error test also checks that nothing was applied.
"""

import os

import numpy as np
import pytest

from models.checkpoints import write_safetensors
from models.checkpoints.errors import CheckpointError, CheckpointMismatchError, PickleNotAllowedError
from models.errors import InvalidInput
from models.lora import (LoraError, LoraMismatchError, UnsupportedLoraError, describe_lora, lookup_loras,
                         parse_lora_spec, parse_lora_tags, prompt_loras)
from models.lora.delta import torch_shape
from models.lora.targets import NetworkTargets
from models.pipeline import StableDiffusionPipeline

from .conftest import random_components

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0"


@pytest.fixture(scope="module")
def pipe():
    return StableDiffusionPipeline(random_components(seed=3))


@pytest.fixture
def clean(pipe):
    """The module's pipeline, checked to be back at its base weights after the test."""
    base = _weights(pipe)
    yield pipe
    pipe.unload_loras()
    assert all(np.array_equal(a, b) for a, b in zip(base, _weights(pipe)))


def _weights(pipe):
    return [np.array(v.numpy()) for net in (pipe.unet, pipe.text_encoder) for v in net.weights]


def kohya(pipe, modules, rank=2, seed=0, alpha=1.0, prefix_te="lora_te_"):
    """A kohya file for our model: lora_unet_/lora_te_ + the module path with '_' for '.'."""
    rng = np.random.default_rng(seed)
    sd = {}
    for network, module in modules:
        shape = torch_shape(NetworkTargets(network, getattr(pipe, network)).variables[module].shape)
        stem = ("lora_unet_" if network == "unet" else prefix_te) + module.replace(".", "_")
        sd[stem + ".lora_down.weight"] = rng.standard_normal((rank, *shape[1:])).astype(np.float32) * 0.3
        sd[stem + ".lora_up.weight"] = rng.standard_normal((shape[0], rank, *[1] * (len(shape) - 2))).astype(
            np.float32) * 0.3
        if alpha is not None:
            sd[stem + ".alpha"] = np.array(alpha, np.float32)
    return sd


MODULES = [("unet", f"{ATTN}.attn2.to_k"), ("unet", f"{ATTN}.attn1.to_out.0"),
           ("unet", "down_blocks.0.resnets.0.conv1"), ("unet", "down_blocks.0.attentions.0.proj_in"),
           ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj")]


def save(sd, path, metadata=None):
    write_safetensors(sd, path, metadata=metadata)
    return str(path)


# -- strictness -----------------------------------------------------------------------------

def _refused(pipe, path, error, *needles):
    before = _weights(pipe)
    with pytest.raises(error) as e:
        pipe.load_lora(path)
    message = str(e.value)
    for needle in needles:
        assert needle in message, (needle, message)
    assert pipe.loaded_loras == {} and pipe.active_loras == []
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(pipe)))  # nothing applied
    return message


def test_a_kohya_file_applies(clean, tmp_path):
    base = _weights(clean)
    name = clean.load_lora(save(kohya(clean, MODULES), tmp_path / "my style.safetensors"), scale=0.8)
    assert name == "my style" and clean.active_loras == [("my style", 0.8)]
    changed = sum(not np.array_equal(a, b) for a, b in zip(base, _weights(clean)))
    assert changed == len(MODULES)
    info = clean.loaded_loras[name]
    assert info["networks"] == ["text_encoder", "unet"] and info["modules"] == 5 and info["ranks"] == [2]
    assert info["formats"] == ["kohya", "locon"] and info["conv_modules"] == 1 and info["alphas"] == [1.0]


def test_unknown_module_and_stray_keys_are_named(clean, tmp_path):
    sd = kohya(clean, MODULES)
    sd["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn3_to_q.lora_down.weight"] = np.zeros((2, 32))
    sd["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn3_to_q.lora_up.weight"] = np.zeros((32, 2))
    _refused(clean, save(sd, tmp_path / "a.safetensors"), LoraMismatchError, "modules this model does not have",
             "attn3_to_q")
    sd = kohya(clean, MODULES)
    sd["model.diffusion_model.out.2.weight"] = np.zeros((4,))  # a checkpoint key, not a LoRA weight
    _refused(clean, save(sd, tmp_path / "b.safetensors"), LoraMismatchError, "model.diffusion_model.out.2.weight")
    sd = kohya(clean, MODULES)
    del sd[f"lora_unet_{ATTN.replace('.', '_')}_attn2_to_k.lora_up.weight"]
    _refused(clean, save(sd, tmp_path / "c.safetensors"), LoraMismatchError, "without both their down and up",
             "attn2_to_k.lora_down.weight")
    sd = kohya(clean, MODULES)  # the same module twice, in two spellings
    sd[f"unet.{ATTN}.attn2.to_k.lora_A.weight"] = sd[f"lora_unet_{ATTN.replace('.', '_')}_attn2_to_k.lora_down.weight"]
    sd[f"unet.{ATTN}.attn2.to_k.lora_B.weight"] = sd[f"lora_unet_{ATTN.replace('.', '_')}_attn2_to_k.lora_up.weight"]
    _refused(clean, save(sd, tmp_path / "d.safetensors"), LoraMismatchError, "updated twice")


def test_a_lora_for_another_base_names_the_key_and_both_shapes(clean, tmp_path):
    sd = kohya(clean, MODULES)
    stem = f"lora_unet_{ATTN.replace('.', '_')}_attn2_to_k"
    sd[stem + ".lora_down.weight"] = np.ones((2, 48), np.float32)  # a wider text context (SD 2's is 1024)
    message = _refused(clean, save(sd, tmp_path / "wide.safetensors"), LoraMismatchError, "wrong shapes",
                       stem + ".lora_down.weight", "[2, 48]", "[32, 48]", "[32, 32]")
    assert "context width is 48" in message and "this model's is 32" in message
    assert isinstance(LoraMismatchError("x"), CheckpointMismatchError) and isinstance(LoraMismatchError("x"),
                                                                                     CheckpointError)


def test_sd2_and_sdxl_files_say_what_they_were_made_for(clean, tmp_path):
    sd = kohya(clean, MODULES)
    stem = f"lora_unet_{ATTN.replace('.', '_')}_attn2_to_k"
    sd[stem + ".lora_down.weight"] = np.ones((2, 1024), np.float32)
    sd[stem + ".lora_up.weight"] = np.ones((32, 2), np.float32)
    assert describe_lora(save(sd, tmp_path / "sd2.safetensors"))["base"] == "sd2"
    _refused(clean, str(tmp_path / "sd2.safetensors"), LoraMismatchError, "a sd2 LoRA")
    sd = kohya(clean, MODULES[:1], prefix_te="lora_te2_") | kohya(clean, MODULES[4:], prefix_te="lora_te2_")
    path = save(sd, tmp_path / "xl.safetensors")
    assert describe_lora(path)["base"] == "sdxl"
    _refused(clean, path, LoraMismatchError, "SDXL", "lora_te2_text_model")


@pytest.mark.parametrize("key, kind", [
    ("lora_unet_x.hada_w1_a", "LoHa"), ("lora_unet_x.lokr_w1", "LoKr"), ("lora_unet_x.dora_scale", "DoRA"),
    ("lora_unet_x.lora_mid.weight", "Tucker"), ("unet.x.lora_magnitude_vector", "DoRA"),
    ("lora_unet_x.oft_blocks", "OFT"), ("unet.x.lora_B.bias", "bias"),
])
def test_unsupported_adapter_kinds_are_refused_by_name(clean, tmp_path, key, kind):
    sd = kohya(clean, MODULES)
    sd[key] = np.ones((2, 2), np.float32)
    message = _refused(clean, save(sd, tmp_path / "x.safetensors"), UnsupportedLoraError, kind, "not support")
    assert key in message


def test_peft_metadata_is_checked(clean, tmp_path):
    import json

    sd = {f"unet.{ATTN}.attn1.to_q.lora_A.weight": np.ones((2, 32), np.float32),
          f"unet.{ATTN}.attn1.to_q.lora_B.weight": np.ones((32, 2), np.float32)}
    md = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 4})}
    _refused(clean, save(sd, tmp_path / "r.safetensors", md), LoraError, "rank 2 tensors", "r=4")
    md = {"lora_adapter_metadata": json.dumps({"unet.r": 2, "unet.lora_alpha": 4, "unet.use_dora": True})}
    _refused(clean, save(sd, tmp_path / "d.safetensors", md), UnsupportedLoraError, "DoRA")
    _refused(clean, save(sd, tmp_path / "j.safetensors", {"lora_adapter_metadata": "{"}), LoraError, "not valid JSON")


def test_peft_scaling_rules(clean, tmp_path):
    """alpha / r, alpha_pattern by PEFT's regex rule (first match, anchored at a dot), rslora."""
    import json

    from models.lora import read_lora

    sd = {}
    for proj in ("to_q", "to_k"):
        sd[f"unet.{ATTN}.attn1.{proj}.lora_A.weight"] = np.ones((4, 32), np.float32)
        sd[f"unet.{ATTN}.attn1.{proj}.lora_B.weight"] = np.ones((32, 4), np.float32)
    meta = {"unet.r": 4, "unet.lora_alpha": 8, "unet.alpha_pattern": {"o_k": 1, "attn1.to_k": 2}}
    parsed = read_lora(save(sd, tmp_path / "a.safetensors", {"lora_adapter_metadata": json.dumps(meta)}))
    factors = {m.name.rsplit(".", 1)[1]: m.factor for m in parsed.modules}
    assert factors == {"to_q": 2.0, "to_k": 0.5}  # "o_k" is no whole name part, so it does not match
    meta["unet.use_rslora"] = True
    parsed = read_lora(save(sd, tmp_path / "b.safetensors", {"lora_adapter_metadata": json.dumps(meta)}))
    assert {m.name.rsplit(".", 1)[1]: m.factor for m in parsed.modules} == {"to_q": 4.0, "to_k": 1.0}
    parsed = read_lora(save(sd, tmp_path / "c.safetensors"))
    assert {m.factor for m in parsed.modules} == {1.0}  # no metadata, no alpha: alpha = rank


def test_unprefixed_text_encoder_names_are_found(clean, tmp_path):
    """transformers 5 drops CLIP's text_model. prefix; unprefixed files are split by their names."""
    sd = kohya(clean, MODULES)
    a = clean.load_lora(save(sd, tmp_path / "kohya.safetensors"), activate=False)
    dotted = {}
    for key, value in sd.items():
        stem, _, role = key.partition(".")
        for network, module in MODULES:
            if stem.endswith(module.replace(".", "_")):
                name = module.removeprefix("text_model.")
        new_role = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight", "alpha": "alpha"}[role]
        dotted[f"{name}.{new_role}"] = value
    b = clean.load_lora(save(dotted, tmp_path / "peft.safetensors"), activate=False)
    assert clean.loaded_loras[b]["networks"] == ["text_encoder", "unet"]
    clean.set_loras([a])
    with_a = _weights(clean)
    clean.set_loras([b])
    assert all(np.array_equal(x, y) for x, y in zip(with_a, _weights(clean)))


def test_containers(clean, tmp_path):
    import torch

    from models.checkpoints.safetensors_io import MissingCheckpointError

    sd = kohya(clean, MODULES)
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "x.pt")
    _refused(clean, str(tmp_path / "x.pt"), PickleNotAllowedError, "allow_pickle")
    assert clean.load_lora(str(tmp_path / "x.pt"), allow_pickle=True) == "x"
    clean.unload_loras()
    (tmp_path / "x.txt").write_text("hello")
    _refused(clean, str(tmp_path / "x.txt"), LoraError, ".safetensors")
    _refused(clean, str(tmp_path / "none.safetensors"), MissingCheckpointError, "does not exist")
    save({"a": np.zeros(2, np.int32)}, tmp_path / "ints.safetensors")
    _refused(clean, str(tmp_path / "ints.safetensors"), LoraError, "floating point")
    write_safetensors(sd, tmp_path / "half.safetensors", dtype="float16")
    clean.load_lora(str(tmp_path / "half.safetensors"))


def test_describe_without_a_model(pipe, tmp_path):
    path = save(kohya(pipe, MODULES, rank=3, alpha=1.5), tmp_path / "d.safetensors")
    info = describe_lora(path)
    assert info["name"] == "d" and info["size_bytes"] == os.path.getsize(path)
    assert info["networks"] == ["text_encoder", "unet"] and info["modules_per_network"] == {"text_encoder": 1,
                                                                                            "unet": 4}
    assert info["ranks"] == [3] and info["alphas"] == [1.5] and info["context_width"] == 32
    assert info["base"] == "unknown"  # the tiny test model is no SD release
    sd = kohya(pipe, MODULES)
    stem = f"lora_unet_{ATTN.replace('.', '_')}_attn2_to_k"
    sd[stem + ".lora_down.weight"] = np.ones((2, 768), np.float32)
    assert describe_lora(save(sd, tmp_path / "sd1.safetensors"))["base"] == "sd1"


# -- the active set ---------------------------------------------------------------------------

def test_scales_names_and_the_active_set(clean, tmp_path):
    base = _weights(clean)
    a = clean.load_lora(save(kohya(clean, MODULES, seed=1), tmp_path / "a.safetensors"), activate=False)
    assert all(np.array_equal(x, y) for x, y in zip(base, _weights(clean)))  # loaded, not applied
    clean.load_lora(save(kohya(clean, MODULES[:2], seed=2), tmp_path / "b.safetensors"), scale=0.0)
    assert clean.active_loras == [("b", 0.0)]
    assert all(np.array_equal(x, y) for x, y in zip(base, _weights(clean)))  # scale 0 is the base
    assert clean.set_loras(["A", ("b", 2)]) == [("a", 1.0), ("b", 2.0)]  # a bare name is 1.0; case folds
    with pytest.raises(InvalidInput, match=r"unknown LoRA 'c'; available: a, b") as e:
        clean.set_loras([("c", 1.0)])
    assert e.value.code == "unknown_lora" and clean.active_loras == [("a", 1.0), ("b", 2.0)]
    for bad in (float("nan"), "1", True):
        with pytest.raises(InvalidInput, match="finite number"):
            clean.set_loras([(a, bad)])
    with pytest.raises(InvalidInput, match="cannot be written"):
        clean.load_lora(str(tmp_path / "a.safetensors"), name="x:y")
    # a name given twice counts twice (the merge is linear)
    clean.set_loras([(a, 0.5), (a, 0.5)])
    twice = _weights(clean)
    clean.set_loras([(a, 1.0)])
    assert all(np.allclose(x, y, rtol=1e-6, atol=1e-6) for x, y in zip(twice, _weights(clean)))
    clean.unload_loras("b")
    assert clean.active_loras == [("a", 1.0)] and list(clean.loaded_loras) == ["a"]
    with pytest.raises(InvalidInput, match="unknown LoRA 'b'"):
        clean.unload_loras(["b"])
    mem = clean.lora_memory()
    touched = [v for net in (clean.unet, clean.text_encoder) for v in net.weights
               if not np.array_equal(np.asarray(v.numpy()), base[[w.path for n in (clean.unet, clean.text_encoder)
                                                                  for w in n.weights].index(v.path)])]
    assert mem["touched_weights"] == len(MODULES) == len(touched)
    assert mem["original_copies_bytes"] == sum(int(np.prod(v.shape)) * 4 for v in touched)


def test_reloading_a_name_replaces_it_in_place(clean, tmp_path):
    path = tmp_path / "a.safetensors"
    clean.load_lora(save(kohya(clean, MODULES, seed=1), path), scale=0.5)
    first = _weights(clean)
    clean.load_lora(save(kohya(clean, MODULES, seed=2), path), activate=False)
    assert clean.active_loras == [("a", 0.5)]
    assert any(not np.array_equal(x, y) for x, y in zip(first, _weights(clean)))  # the new file's weights


@pytest.mark.slow
def test_bfloat16_weights_merge_and_restore_exactly(tmp_path):
    from models import load_pipeline

    pipe = load_pipeline("tiny", dtype="bfloat16")
    base = _weights(pipe)
    modules = [("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
               ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj")]
    pipe.load_lora(save(kohya(pipe, modules), tmp_path / "a.safetensors"))
    after = _weights(pipe)
    assert after[0].dtype == base[0].dtype and sum(not np.array_equal(a, b) for a, b in zip(base, after)) == 2
    pipe.unload_loras()
    assert all(np.array_equal(a, b) for a, b in zip(base, _weights(pipe)))


@pytest.mark.slow
def test_a_stage_server_applies_its_own_network(tmp_path):
    """A split deployment's UNet server has no text encoder: that part is skipped and counted."""
    from models import load_pipeline

    full = load_pipeline("tiny")
    modules = [("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
               ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj")]
    path = save(kohya(full, modules), tmp_path / "a.safetensors")
    unet_only = load_pipeline("tiny", parts=["unet"])
    unet_only.load_lora(path)
    info = unet_only.loaded_loras["a"]
    assert info["skipped_modules"] == {"text_encoder": 1} and unet_only.lora_memory()["touched_weights"] == 1


# -- prompt tags, FILE:SCALE, load_pipeline, CLI ------------------------------------------------

@pytest.mark.parametrize("prompt, text, tags", [
    ("a cat <lora:ink:0.8>, oil painting", "a cat, oil painting", [("ink", 0.8)]),
    ("<lora:ink> a cat", "a cat", [("ink", 1.0)]),
    ("a cat <lora:ink:-1.5>", "a cat", [("ink", -1.5)]),
    ("a <lora:ink:.5> <LORA:detail:2> cat", "a cat", [("ink", 0.5), ("detail", 2.0)]),
    ("(<lora:ink>red) cat", "(red) cat", [("ink", 1.0)]),
    ("first line\n<lora:ink:1e-1> second", "first line\nsecond", [("ink", 0.1)]),
    ("no  tags  here ", "no  tags  here ", []),
    ("a <3 b > c", "a <3 b > c", []),
])
def test_prompt_tags(prompt, text, tags):
    assert parse_lora_tags(prompt) == (text, tags)


@pytest.mark.parametrize("prompt, needle", [
    ("<lora:ink:abc>", "'abc' is not a number"), ("<lora:ink:nan>", "'nan' is not a number"),
    ("<lora::0.5>", "names no LoRA"), ("<lora:ink:0.5:0.3>", "one scale"), ("a <lora:ink:0.5", "unclosed"),
    ("<lora:ink:1e999>", "too large"), ("<lora:ink:>", "'' is not a number"),
])
def test_malformed_prompt_tags_are_errors(prompt, needle):
    with pytest.raises(InvalidInput, match=needle) as e:
        parse_lora_tags(prompt)
    assert e.value.code == "bad_lora_tag"


def test_prompt_tag_lookup():
    available = {"ink": {}, "Detail": {}}
    assert prompt_loras("x <lora:ink:0.3> <lora:detail>", available) == ("x", [("ink", 0.3), ("Detail", 1.0)])
    with pytest.raises(InvalidInput, match=r"unknown LoRA 'inc'; available: Detail, ink") as e:
        lookup_loras([("inc", 1.0)], available)
    assert e.value.code == "unknown_lora"
    with pytest.raises(InvalidInput, match="none"):
        lookup_loras([("x", 1.0)], {})


@pytest.mark.parametrize("spec, expected", [
    ("style.safetensors", ("style.safetensors", 1.0)),
    ("style.safetensors:0.7", ("style.safetensors", 0.7)),
    ("style.safetensors:-1", ("style.safetensors", -1.0)),
    (r"C:\loras\style.safetensors", (r"C:\loras\style.safetensors", 1.0)),
    (r"C:\loras\style.safetensors:.5", (r"C:\loras\style.safetensors", 0.5)),
    ("a:b.safetensors", ("a:b.safetensors", 1.0)),
    ("a:b.safetensors:2e-1", ("a:b.safetensors", 0.2)),
    ("x.safetensors:nan", ("x.safetensors:nan", 1.0)),
    ("x.safetensors:", ("x.safetensors:", 1.0)),
])
def test_lora_file_specs(spec, expected):
    assert parse_lora_spec(spec) == expected


def test_an_existing_file_named_like_a_spec_stays_whole(tmp_path):
    path = tmp_path / "odd:0.5"
    path.write_bytes(b"")
    assert parse_lora_spec(str(path)) == (str(path), 1.0)


@pytest.mark.slow
def test_load_pipeline_and_cli_take_loras(tmp_path, capsys):
    from models import load_pipeline
    from models.__main__ import main, parse_args
    from models.png_info import read_parameters

    base = load_pipeline("tiny")
    modules = [("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"),
               ("unet", "up_blocks.1.resnets.0.conv1"),
               ("text_encoder", "text_model.encoder.layers.1.self_attn.out_proj")]
    a = save(kohya(base, modules, seed=1), tmp_path / "ink.safetensors")
    b = save(kohya(base, modules[:1], seed=2), tmp_path / "detail.safetensors")
    pipe = load_pipeline("tiny", loras=[(a, 0.5), f"{b}:2"])
    assert pipe.active_loras == [("ink", 0.5), ("detail", 2.0)]
    assert sum(not np.array_equal(x, y) for x, y in zip(_weights(pipe), _weights(base))) == 3
    base.load_lora(a, 0.5)
    base.load_lora(b, 2.0)
    assert all(np.array_equal(x, y) for x, y in zip(_weights(pipe), _weights(base)))

    args = parse_args(["generate", "--prompt", "p", "--out", "o.png", "--lora", a, "--lora", f"{b}:0.25"])
    assert args.lora == [(a, 1.0), (b, 0.25)]
    out = tmp_path / "x.png"
    common = ["generate", "--model", "tiny", "--steps", "1", "--seed", "4", "--height", "64", "--width", "64"]
    seen = {}
    real_generate = StableDiffusionPipeline.generate

    def generate(self, prompt, **kw):
        seen.update(prompt=prompt, active=self.active_loras, weights=_weights(self))
        return real_generate(self, prompt, **kw)

    import unittest.mock

    with unittest.mock.patch.object(StableDiffusionPipeline, "generate", generate):
        assert main(common + ["--prompt", "a red circle <lora:detail:0>", "--lora", f"{a}:0.5", "--lora", b,
                              "--out", str(out)]) == 0
    assert seen["prompt"] == "a red circle" and seen["active"] == [("ink", 0.5), ("detail", 0.0)]
    base.set_loras([("ink", 0.5)])
    assert all(np.array_equal(x, y) for x, y in zip(seen["weights"], _weights(base)))
    params = read_parameters(str(out))  # A1111 keeps the tags in the stored prompt
    assert params["prompt"] == "a red circle <lora:ink:0.5> <lora:detail:0>"
    assert main(common + ["--prompt", "x <lora:nope>", "--lora", a, "--out", str(out)]) == 2
    assert "unknown LoRA 'nope'; available: ink" in capsys.readouterr().err
    wrong = save({"lora_unet_nothing_here.lora_down.weight": np.ones((2, 4), np.float32),
                  "lora_unet_nothing_here.lora_up.weight": np.ones((4, 2), np.float32)}, tmp_path / "w.safetensors")
    assert main(common + ["--prompt", "x", "--lora", wrong, "--out", str(out)]) == 2
    assert "lora_unet_nothing_here" in capsys.readouterr().err


# -- real SD v1.5 names at full size (variables without values: shapes only) -------------------

# kohya names seen in published SD 1.5 LoRAs/LoCons (diffusers layout, and the ldm layout some
# trainers write), each with the module it must update and that module's PyTorch weight shape.
REAL_KOHYA_NAMES = {
    "lora_unet_down_blocks_0_attentions_0_proj_in": ("down_blocks.0.attentions.0.proj_in", (320, 320, 1, 1)),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0":
        ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", (320, 320)),
    "lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_attn2_to_k":
        ("down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k", (1280, 768)),
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj":
        ("mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj", (10240, 1280)),
    "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2":
        ("up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2", (320, 1280)),
    "lora_unet_down_blocks_1_resnets_0_conv_shortcut": ("down_blocks.1.resnets.0.conv_shortcut", (640, 320, 1, 1)),
    "lora_unet_down_blocks_0_resnets_0_time_emb_proj": ("down_blocks.0.resnets.0.time_emb_proj", (320, 1280)),
    "lora_unet_down_blocks_0_downsamplers_0_conv": ("down_blocks.0.downsamplers.0.conv", (320, 320, 3, 3)),
    "lora_unet_up_blocks_0_upsamplers_0_conv": ("up_blocks.0.upsamplers.0.conv", (1280, 1280, 3, 3)),
    "lora_unet_conv_in": ("conv_in", (320, 4, 3, 3)),
    "lora_unet_time_embedding_linear_1": ("time_embedding.linear_1", (1280, 320)),
    "lora_unet_input_blocks_1_1_proj_in": ("down_blocks.0.attentions.0.proj_in", None),
    "lora_unet_input_blocks_4_0_in_layers_2": ("down_blocks.1.resnets.0.conv1", (640, 320, 3, 3)),
    "lora_unet_input_blocks_4_0_skip_connection": ("down_blocks.1.resnets.0.conv_shortcut", None),
    "lora_unet_input_blocks_3_0_op": ("down_blocks.0.downsamplers.0.conv", None),
    "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q":
        ("mid_block.attentions.0.transformer_blocks.0.attn1.to_q", (1280, 1280)),
    "lora_unet_output_blocks_2_1_conv": ("up_blocks.0.upsamplers.0.conv", None),
    "lora_unet_output_blocks_11_1_proj_out": ("up_blocks.3.attentions.2.proj_out", (320, 320, 1, 1)),
    "lora_unet_output_blocks_5_0_emb_layers_1": ("up_blocks.1.resnets.2.time_emb_proj", (1280, 1280)),
    "lora_unet_time_embed_2": ("time_embedding.linear_2", (1280, 1280)),
    "lora_unet_out_2": ("conv_out", (4, 320, 3, 3)),
    "lora_te_text_model_encoder_layers_11_self_attn_out_proj":
        ("text_model.encoder.layers.11.self_attn.out_proj", (768, 768)),
    "lora_te_text_model_encoder_layers_0_mlp_fc1": ("text_model.encoder.layers.0.mlp.fc1", (3072, 768)),
}


@pytest.fixture(scope="module")
def full_size_targets():
    from models.checkpoints import deferred_init
    from models.config import SD_V1
    from models.text_encoder import TextEncoder
    from models.unet import UNet

    with deferred_init.uninitialized():
        nets = {"unet": UNet(SD_V1["unet"]), "text_encoder": TextEncoder(SD_V1["text_encoder"])}
    yield {kind: NetworkTargets(kind, net) for kind, net in nets.items()}
    deferred_init.discard([v for net in nets.values() for v in net.weights])


def _shaped(targets, names, width=None):
    sd = {}
    for stem, (module, _) in names.items():
        kind = "unet" if stem.startswith("lora_unet_") else "text_encoder"
        shape = torch_shape(targets[kind].variables[module].shape)
        in_shape = shape[1:] if width is None else (width, *shape[2:])
        sd[stem + ".lora_down.weight"] = np.ones((1, *in_shape), np.float32)
        sd[stem + ".lora_up.weight"] = np.ones((shape[0], 1, *[1] * (len(shape) - 2)), np.float32)
    return sd


@pytest.mark.slow
def test_real_sd15_kohya_names_resolve_at_full_size(full_size_targets):
    from models.lora import parse_lora
    from models.lora.targets import resolve

    for stem, (module, shape) in REAL_KOHYA_NAMES.items():
        if shape is not None:
            kind = "unet" if stem.startswith("lora_unet_") else "text_encoder"
            assert torch_shape(full_size_targets[kind].variables[module].shape) == shape, stem
        # one file per name: the ldm and diffusers spellings of a module may not share a file
        bound, skipped = resolve(parse_lora(_shaped(full_size_targets, {stem: (module, shape)})), full_size_targets)
        assert [b.module for b in bound] == [module] and not skipped, stem


@pytest.mark.slow
def test_an_sd2_lora_on_sd15_is_named_as_such(full_size_targets):
    from models.lora import parse_lora
    from models.lora.describe import guess_base
    from models.lora.targets import resolve

    names = {k: v for k, v in REAL_KOHYA_NAMES.items() if k.endswith("attn2_to_k")}
    parsed = parse_lora(_shaped(full_size_targets, names, width=1024))
    assert guess_base(parsed) == "sd2"
    with pytest.raises(LoraMismatchError, match=r"(?s)attn2_to_k.lora_down.weight \[1, 1024\].*"
                                                r"its update is \[1280, 1024\] but the weight is \[1280, 768\].*"
                                                r"context width is 1024 \(a sd2 LoRA\), this model's is 768"):
        resolve(parsed, full_size_targets, context_dim=768)


@pytest.mark.slow
def test_bench_lora_switch_tiny():
    from bench.lora_switch import run

    res = run(rank=4, repeats=1, tiny=True)
    attention, everything = res["scenarios"]
    assert attention["modules"] == 48 and everything["modules"] > attention["modules"]
    for s in (attention, everything):
        assert s["original_copies_mb"] > 0 and s["lora_tensors_mb"] > 0 and s["switch_s"] >= 0
