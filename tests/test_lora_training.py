"""Training LoRAs (python -m training.finetune --lora-rank R): only the factors train, the file
loads in our pipeline and in diffusers alike, resume is exact, and bad flags are named.

The parity test trains on the tiny random diffusers model of the checkpoint tests (the same
weights on both sides), then sets the trained factors to large random values before writing, so
that any layout or naming mistake (a transposed factor, a conv written as linear, a module under
another's name, alpha applied twice or not at all) moves the outputs far past the tolerance.
"""

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from tests.conftest import random_components
from training.lora import LoraConfigError, LoraTrainConfig
from training.synthetic import write_dataset
from training.trainer import DiffusionTrainer, EncodedDataset, TrainConfig

TOL = 1e-4
QUIET = dict(log=lambda *a: None)


def _data(components, folder, size):
    from training.datasets import load_dataset, load_images

    write_dataset(folder, 6, seed=0)
    examples, _ = load_dataset(folder)
    return EncodedDataset(components, load_images(examples, size), [e.caption for e in examples], **QUIET)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    components = random_components(seed=3)
    folder = tmp_path_factory.mktemp("data")
    return components, _data(components, folder, 64), folder


def _config(lora, **kw):
    base = dict(batch_size=2, steps=2, learning_rate=1e-2, ema_decay=0.9, checkpoint_every=0, sample_every=0, seed=5)
    return TrainConfig(**{**base, **kw}, lora=lora)


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


def test_training_changes_only_the_lora_factors(setup, tmp_path):
    components, data, _ = setup
    base = {net: _values(getattr(components, net).weights) for net in ("unet", "text_encoder")}
    lora = LoraTrainConfig(rank=2, alpha=3.0, text_encoder=True, targets=("attn", "proj"))
    trainer = DiffusionTrainer(components, data, _config(lora, mixed_precision="bfloat16"), tmp_path, **QUIET)
    factors = {id(v) for v in trainer.train_variables}
    # exactly the A and B of every targeted layer, nothing else, train
    assert len(factors) == 2 * len(trainer.lora.layers)
    for net in (trainer.unet, trainer.text_encoder):
        assert {id(v) for v in net.trainable_variables} <= factors
    kinds = {(kind, module.rsplit(".", 1)[-1]) for kind, module, _ in trainer.lora.layers}
    assert kinds == {("unet", "to_q"), ("unet", "to_k"), ("unet", "to_v"), ("unet", "0"), ("unet", "proj_in"),
                     ("unet", "proj_out"), ("text_encoder", "q_proj"), ("text_encoder", "k_proj"),
                     ("text_encoder", "v_proj"), ("text_encoder", "out_proj")}
    b_before = [np.array(layer.lora_kernel_b.numpy()) for _, _, layer in trainer.lora.layers]
    assert all(not b.any() for b in b_before)  # B starts at zero: step 0 is the base model
    path = trainer.train()
    assert path == tmp_path / "lora.safetensors" and path.exists()
    for net_name, net in (("unet", trainer.unet), ("text_encoder", trainer.text_encoder)):
        rest = [v for v in net.weights if id(v) not in factors]
        assert len(rest) == len(base[net_name])
        assert all(np.array_equal(np.asarray(v.numpy()), w) for v, w in zip(rest, base[net_name])), net_name
    moved = [np.abs(layer.lora_kernel_b.numpy()).max() for _, _, layer in trainer.lora.layers]
    assert min(moved) > 1e-4  # every B trained, the text encoder's too
    for net in ("unet", "text_encoder"):  # and the components given were never touched
        assert all(np.array_equal(np.asarray(v.numpy()), w) for v, w in zip(getattr(components, net).weights, base[net]))


# -- the file against diffusers ----------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LoRA (UNet attn/proj/ff + text encoder, rank 3, alpha 5) trained for one step on the
    reference model, its factors then set to random values of a size that matters."""
    from models.loading import load_components

    from .test_checkpoints_diffusers import reference

    ref = reference("base")
    folder = ref.save_folder(str(tmp_path_factory.mktemp("ref")))
    components = load_components(folder)
    data = _data(components, tmp_path_factory.mktemp("refdata"), 32)
    lora = LoraTrainConfig(rank=3, alpha=5.0, text_encoder=True, targets=("attn", "proj", "ff"))
    trainer = DiffusionTrainer(components, data, _config(lora, steps=1, ema_decay=None, caption_dropout=0.0),
                               tmp_path_factory.mktemp("run"), **QUIET)
    trainer.train()
    rng = np.random.default_rng(11)
    for v in trainer.train_variables:
        fan_in = int(np.prod(v.shape[:-1]))
        v.assign((rng.standard_normal(v.shape) / np.sqrt(fan_in)).astype(np.float32))
    return ref, folder, trainer


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_written_lora_matches_diffusers_and_the_trained_networks(trained, fmt, tmp_path):
    from models.loading import load_components
    from models.pipeline import StableDiffusionPipeline

    from .test_checkpoints_diffusers import rel_err
    from .test_lora import _our_outputs, _theirs, _torch_outputs

    ref, folder, trainer = trained
    path = trainer.save_lora(tmp_path / f"style_{fmt}.safetensors", fmt=fmt)
    keys = list(__import__("safetensors").safe_open(str(path), "np").keys())
    if fmt == "kohya":
        assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha" in keys
        assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in keys
    else:
        assert all(k.startswith(("unet.", "text_encoder.")) and ".lora_" in k for k in keys)
        assert "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight" in keys
    pipe = StableDiffusionPipeline(load_components(folder))
    assert pipe.load_lora(path) == f"style_{fmt}"
    info = pipe.loaded_loras[f"style_{fmt}"]
    assert info["networks"] == ["text_encoder", "unet"] and info["ranks"] == [3]
    noise, text = _our_outputs(ref, pipe)
    # the file is the trained model: the training networks (Keras LoRA layers, which add the
    # update on the fly) give the same outputs as the base with the file merged in
    trained_noise = trainer.unet([ref.latents, ref.timesteps, ref.context]).numpy()
    assert rel_err(trained_noise, noise) <= TOL and rel_err(trainer.text_encoder(ref.ids).numpy(), text) <= TOL
    theirs = _theirs(ref, tmp_path)
    theirs.load_lora_weights(str(path), adapter_name="trained")
    ref_noise, ref_text = _torch_outputs(ref, theirs.unet, theirs.text_encoder)
    errors = {"unet": rel_err(noise, ref_noise), "text_encoder": rel_err(text, ref_text)}
    print(fmt, errors)
    assert max(errors.values()) <= TOL, errors
    # and the LoRA matters on both networks, in both implementations
    assert rel_err(ref.ref_noise, ref_noise) > 0.05 and rel_err(ref.ref_text, ref_text) > 0.05


# -- resume ------------------------------------------------------------------------------------

def test_resume_gives_the_same_lora_as_training_straight(setup, tmp_path):
    components, data, _ = setup
    lora = LoraTrainConfig(rank=2, targets=("attn",))
    straight = DiffusionTrainer(components, data, _config(lora, steps=4, checkpoint_every=2), tmp_path / "a", **QUIET)
    a = straight.train()
    step2 = tmp_path / "a" / "checkpoints" / "step-0000002"
    assert step2.exists()
    shutil.copytree(step2, tmp_path / "b" / "checkpoints" / step2.name)
    resumed = DiffusionTrainer(components, data, _config(lora, steps=4), tmp_path / "b", **QUIET)
    b = resumed.train(resume=True)
    assert resumed.step == 4
    from models.lora.files import read_lora_file

    ta, tb = read_lora_file(a)[0], read_lora_file(b)[0]
    assert sorted(ta) == sorted(tb)
    for k in ta:
        np.testing.assert_allclose(ta[k], tb[k], rtol=1e-5, atol=1e-7, err_msg=k)
    assert max(np.abs(v).max() for k, v in ta.items() if k.endswith("lora_up.weight")) > 1e-4
    # a checkpoint of another LoRA layout (or of a full fine-tune) is refused by name
    other = DiffusionTrainer(components, data, _config(LoraTrainConfig(rank=4), steps=4), tmp_path / "b", **QUIET)
    with pytest.raises(ValueError, match="trained a LoRA .*'rank': 2.* this run trains a LoRA .*'rank': 4"):
        other.train(resume=True)
    full = DiffusionTrainer(components, data, _config(None, steps=4), tmp_path / "b", **QUIET)
    with pytest.raises(ValueError, match="this run trains the whole UNet"):
        full.train(resume=True)


# -- the command line --------------------------------------------------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--lora-rank", "0"], "--lora-rank: LoRA rank must be a positive integer, got 0"),
    (["--lora-rank", "-3"], "--lora-rank: LoRA rank must be a positive integer"),
    (["--lora-rank", "4", "--lora-format", "lycoris"], "--lora-format: LoRA format 'lycoris' cannot be written; "
                                                       "choose one of kohya, diffusers"),
    (["--lora-text-encoder"], "--lora-text-encoder need --lora-rank"),
    (["--lora-format", "diffusers", "--lora-alpha", "4"], "--lora-alpha, --lora-format need --lora-rank"),
    (["--lora-rank", "4", "--lora-alpha", "0"], "--lora-alpha: LoRA alpha must be a positive number"),
    (["--lora-rank", "4", "--lora-targets", "attn,conv"], "--lora-targets: LoRA targets ['attn', 'conv']"),
])
def test_bad_lora_flags_are_named(flags, needle, capsys, tmp_path):
    from training import finetune

    with pytest.raises(SystemExit) as e:
        finetune.parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "o"), *flags])
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_config_is_checked_outside_the_command_line_too():
    for bad, field in ((dict(rank=0), "rank"), (dict(rank=2.5), "rank"), (dict(rank=2, format="ckpt"), "format"),
                       (dict(rank=2, targets=()), "targets"), (dict(rank=2, name="a:b"), "name")):
        with pytest.raises(LoraConfigError) as e:
            LoraTrainConfig(**bad).validate()
        assert e.value.field == field


def test_finetune_cli_writes_a_diffusers_lora_that_load_pipeline_applies(setup, tmp_path, capsys):
    from models import load_pipeline
    from models.checkpoints.diffusers_folder import save_diffusers_folder
    from training import finetune

    components, _, data_dir = setup
    base = tmp_path / "base"
    save_diffusers_folder(components, base, dtype="float32")
    out = tmp_path / "ink"
    code = finetune.main(["--model", str(base), "--data", str(data_dir), "--out", str(out), "--steps", "2",
                          "--batch-size", "2", "--learning-rate", "1e-2", "--sample-every", "2",
                          "--lora-rank", "2", "--lora-format", "diffusers"])
    printed = capsys.readouterr().out
    assert code == 0
    path = out / "ink.safetensors"
    assert f"wrote {path}" in printed and f"--lora {path}" in printed
    assert list((out / "samples").glob("*.png")) and (out / "loss.csv").exists()
    assert not (out / "unet").exists()  # a LoRA run writes no UNet
    import json

    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["unet.r"] == 2 and meta["unet.lora_alpha"] == 2.0
    plain = load_pipeline(str(base))
    pipe = load_pipeline(str(base), loras=[(str(path), 1.0)])
    assert pipe.active_loras == [("ink", 1.0)]
    kw = dict(num_steps=2, seed=0)
    assert np.abs(pipe.text_to_image("a red circle", **kw).astype(int)
                  - plain.text_to_image("a red circle", **kw).astype(int)).max() > 0
