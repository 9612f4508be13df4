"""Whole sampling runs against diffusers' StableDiffusionPipeline on the same random weights.

Both start from the same initial latents; the whole loop (text encoding, classifier-free
guidance, scheduler steps, VAE decode) must agree to 1e-3 relative.
"""

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

STEPS = 6


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from models.tokenizer import default_tokenizer
    from bench._common import small_test_configs

    c = small_test_configs()
    root = tmp_path_factory.mktemp("sd")
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, layers_per_block=2,
    ).eval()
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8, layers_per_block=1,
        sample_size=64,
    ).eval()
    te = c["text_encoder"]
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=te.hidden_size, intermediate_size=te.intermediate_size,
        num_hidden_layers=te.num_hidden_layers, num_attention_heads=te.num_attention_heads,
        max_position_embeddings=77, hidden_act="quick_gelu", pad_token_id=49407, bos_token_id=49406,
        eos_token_id=49407,
    )).eval()
    for i, m in enumerate((unet, vae, text)):
        _randomize(m, i)
    default_tokenizer().save_vocab(root / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
        scheduler=diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                          clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "pipe", safe_serialization=True)
    return root / "pipe", pipe


def _diffusers_scheduler(name, base):
    kw = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if name == "ddim":
        return base
    if name == "dpmpp_2m":
        return diffusers.DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2,
                                                     timestep_spacing="linspace", lower_order_final=True)
    return diffusers.EulerDiscreteScheduler(**kw, timestep_spacing="linspace")


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp_2m", "euler"])
def test_full_run_matches_diffusers(folder, scheduler):
    from models import load_pipeline

    path, ref = folder
    ours = load_pipeline(str(path))
    ref.scheduler = _diffusers_scheduler(scheduler, ref.scheduler)
    noise = ours.initial_noise(0, 2, 64, 64)
    prompt, negative = "a red circle on a blue background", "green"
    mine = ours.generate(prompt, negative_prompt=negative, num_steps=STEPS, guidance_scale=6.0, batch_size=2,
                         latents=noise, scheduler=scheduler)
    with torch.no_grad():
        theirs = ref(prompt, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=6.0,
                     num_images_per_prompt=2, latents=torch.from_numpy(noise).permute(0, 3, 1, 2),
                     output_type="latent").images
        theirs_img = ref.vae.decode(theirs / ref.vae.config.scaling_factor).sample
    theirs = theirs.permute(0, 2, 3, 1).numpy()
    rel = np.abs(mine.latents - theirs).max() / np.abs(theirs).max()
    assert rel < 1e-3, f"{scheduler}: latents differ by {rel:.2e} relative"
    img = ours.decode_latents(mine.latents)
    ref_img = theirs_img.permute(0, 2, 3, 1).numpy()
    rel_img = np.abs(img - ref_img).max() / np.abs(ref_img).max()
    assert rel_img < 1e-3, f"{scheduler}: decoded images differ by {rel_img:.2e} relative"
