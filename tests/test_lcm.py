"""LCM against diffusers, offline, on tiny random networks.

An LCM-distilled UNet (`time_cond_proj_dim`) takes the guidance scale as an embedding added to
its timestep features and runs without an unconditional pass; the LCM scheduler re-noises
between consistency steps. Checked: the UNet and the guidance embedding, loading such a UNet
from a diffusers folder, a whole LatentConsistencyModelPipeline run, and an LCM-LoRA style run
(plain UNet, LCM scheduler, guidance 1: diffusers' StableDiffusionPipeline skips CFG there too),
with the per-step noise handed to diffusers from our seeded generator.
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import tensorflow as tf
import torch

from models.loading import load_components
from models.schedulers.noise import stateless_normal
from models.tokenizer import default_tokenizer
from models.unet import guidance_embedding

from .test_checkpoints_diffusers import randomize, rel_err

diffusers = pytest.importorskip("diffusers")
from diffusers.schedulers import scheduling_lcm  # noqa: E402

PROMPT = "a red circle on a blue background"
COND_DIM = 16
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, layers_per_block=1)
VAE = dict(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8, layers_per_block=1)
LCM_CONFIG = {"_class_name": "LCMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
              "beta_schedule": "scaled_linear", "original_inference_steps": 50, "prediction_type": "epsilon",
              "set_alpha_to_one": True, "timestep_scaling": 10.0}


def save_folder(root, unet, vae, text):
    unet.save_pretrained(os.path.join(root, "unet"))
    vae.save_pretrained(os.path.join(root, "vae"))
    text.save_pretrained(os.path.join(root, "text_encoder"))
    default_tokenizer().save_vocab(os.path.join(root, "tokenizer"))
    os.makedirs(os.path.join(root, "scheduler"), exist_ok=True)
    with open(os.path.join(root, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(LCM_CONFIG, f)
    with open(os.path.join(root, "model_index.json"), "w") as f:
        json.dump({"_class_name": "LatentConsistencyModelPipeline"}, f)
    return root


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    text = randomize(CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=2, num_attention_heads=4,
                                                  max_position_embeddings=77)), 2)
    vae = randomize(diffusers.AutoencoderKL(**VAE), 1)
    lcm_unet = randomize(diffusers.UNet2DConditionModel(**UNET, time_cond_proj_dim=COND_DIM), 0)
    plain_unet = randomize(diffusers.UNet2DConditionModel(**UNET), 3)
    root = tmp_path_factory.mktemp("lcm")
    folders = {"lcm": save_folder(str(root / "lcm"), lcm_unet, vae, text),
               "plain": save_folder(str(root / "plain"), plain_unet, vae, text)}
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folders["lcm"], "tokenizer"))
    return dict(text=text, vae=vae, lcm_unet=lcm_unet, plain_unet=plain_unet, folders=folders, tokenizer=tokenizer)


def test_guidance_embedding_matches_diffusers():
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([0.0, 1.5, 7.0])
    for dim in (16, 17, 256):
        ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim).numpy()
        # 1000 w reaches 7000 rad: TensorFlow's and torch's float32 exp differ by an ulp in some
        # frequencies (neither is correctly rounded), which moves those sines by up to 5e-4
        bound = 1e-6 if dim < 64 else 1e-3
        assert np.abs(np.asarray(guidance_embedding(w.numpy(), dim)) - ref).max() < bound, dim


def test_lcm_unet_matches_diffusers(nets):
    comps = load_components(nets["folders"]["lcm"])
    assert comps.unet.config.time_cond_proj_dim == COND_DIM
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 16, 4)).astype(np.float32)
    t = np.array([19.0, 999.0], np.float32)
    ctx = rng.standard_normal((2, 77, 32)).astype(np.float32)
    w = np.array([7.0, 2.0], np.float32)
    cond = np.asarray(guidance_embedding(w, COND_DIM))
    with torch.no_grad():
        ref = nets["lcm_unet"](torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t), torch.from_numpy(ctx),
                               timestep_cond=torch.from_numpy(np.asarray(cond))).sample.permute(0, 2, 3, 1).numpy()
    err = rel_err(comps.unet([x, t, ctx, cond]), ref)
    print("LCM UNet rel. error", err)
    assert err < 1e-4
    other = comps.unet([x, t, ctx, np.asarray(guidance_embedding(w + 3.0, COND_DIM))])
    assert rel_err(other, ref) > 1e-3  # the guidance input matters


def _lcm_noise(monkeypatch, seed, shape, steps):
    """Our LCM scheduler's per-step noise (seed [seed, 1] at step i), given to diffusers' step."""
    noises = [stateless_normal(tf.constant(shape), tf.constant([seed, 1], tf.int64), i).numpy() for i in range(steps)]
    calls = iter(noises)
    monkeypatch.setattr(scheduling_lcm, "randn_tensor",
                        lambda *a, **k: torch.from_numpy(next(calls)).permute(0, 3, 1, 2).contiguous())


@pytest.mark.parametrize("steps", [1, 4])
def test_lcm_pipeline_run_matches_diffusers(nets, monkeypatch, steps):
    from diffusers import LatentConsistencyModelPipeline

    from models import load_pipeline

    ours = load_pipeline(nets["folders"]["lcm"])
    assert ours.info()["guidance_embedding"]
    ref = LatentConsistencyModelPipeline(vae=nets["vae"], text_encoder=nets["text"], tokenizer=nets["tokenizer"],
                                         unet=nets["lcm_unet"], scheduler=diffusers.LCMScheduler(**{
                                             k: v for k, v in LCM_CONFIG.items() if k != "_class_name"}),
                                         safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    noise = ours.initial_noise(7, 2, 64, 64)
    mine = ours.generate(PROMPT, num_steps=steps, guidance_scale=8.0, batch_size=2, seed=7, latents=noise,
                         scheduler="lcm")
    _lcm_noise(monkeypatch, 7, noise.shape, steps)
    with torch.no_grad():
        theirs = ref(PROMPT, num_inference_steps=steps, guidance_scale=8.0, num_images_per_prompt=2,
                     latents=torch.from_numpy(noise).permute(0, 3, 1, 2), output_type="latent").images
    err = rel_err(mine.latents, theirs.permute(0, 2, 3, 1).numpy())
    print(f"LCM pipeline {steps} steps: latents rel. error {err:.2e}")
    assert err < 1e-3


def test_lcm_scheduler_at_guidance_one_matches_diffusers(nets, monkeypatch):
    """LCM-LoRA style: a plain UNet with the LCM scheduler at guidance 1 (no unconditional pass)."""
    from models import load_pipeline

    ours = load_pipeline(nets["folders"]["plain"])
    ref = diffusers.StableDiffusionPipeline(
        vae=nets["vae"], text_encoder=nets["text"], tokenizer=nets["tokenizer"], unet=nets["plain_unet"],
        scheduler=diffusers.LCMScheduler(**{k: v for k, v in LCM_CONFIG.items() if k != "_class_name"}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    steps = 4
    noise = ours.initial_noise(3, 1, 64, 64)
    mine = ours.generate(PROMPT, num_steps=steps, guidance_scale=1.0, seed=3, latents=noise, scheduler="lcm")
    _lcm_noise(monkeypatch, 3, noise.shape, steps)
    with torch.no_grad():
        theirs = ref(PROMPT, num_inference_steps=steps, guidance_scale=1.0,
                     latents=torch.from_numpy(noise).permute(0, 3, 1, 2), output_type="latent").images
    err = rel_err(mine.latents, theirs.permute(0, 2, 3, 1).numpy())
    print(f"LCM scheduler, plain UNet, guidance 1: latents rel. error {err:.2e}")
    assert err < 1e-3


def test_lcm_steps_are_limited_to_the_distillation_schedule(nets):
    from models import load_pipeline
    from models.errors import InvalidInput

    pipe = load_pipeline(nets["folders"]["plain"])
    with pytest.raises(InvalidInput, match="at most 50"):
        pipe.generate(PROMPT, num_steps=51, guidance_scale=1.0, seed=0, scheduler="lcm", decode=False)
