"""Export of model variants: a 9-channel inpainting UNet (concat mode) and a swapped-in
fine-tuned UNet (--diffusion)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from exports import export, find_artifact
from models import masks
from exports import tflite as tflite_mod
from tests.conftest import random_components
from tests.test_export import rel_err


@pytest.mark.slow
def test_inpainting_unet_exports_concat_signatures(tmp_path, monkeypatch):
    from exports import diffusion_graph
    from models.pipeline import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(random_components(seed=3, in_channels=9))
    # Both signatures are checked with DDIM (index 0), so the served graph holds only DDIM's loop:
    # each further scheduler is one more traced CONCAT loop (about 30 s on two shared cores), and
    # tests/test_export.py exports all seven.
    monkeypatch.setattr(diffusion_graph, "EXPORTED_SCHEDULERS", ("ddim",))
    manifest = export("tiny", str(tmp_path / "x"), formats="savedmodel", components="diffusion", pipeline=pipe,
                      progress=False)
    assert manifest["schedulers"] == ["ddim"]
    assert manifest["diffusion"]["inpainting"] == "concat"
    model = tf.saved_model.load(str(tmp_path / "x" / "savedmodel" / "diffusion" / "1"))
    art = find_artifact(manifest, "diffusion", "savedmodel")
    inputs = {i["name"] for i in art["signatures"]["inpaint"]["inputs"]}
    assert "masked_image_latents" in inputs

    ctx, unc = pipe.encode_text(["a cat"]), pipe.encode_text([""])
    common = dict(context=tf.constant(ctx), unconditional_context=tf.constant(unc), seed=tf.constant([5], tf.int64),
                  guidance_scale=tf.constant([7.5]), num_steps=tf.constant([3]), scheduler=tf.constant([0]))
    got = model.signatures["serving_default"](**common)["latents"].numpy()
    assert rel_err(got, pipe.generate("a cat", seed=5, num_steps=3).latents) < 1e-4

    size = pipe.default_size
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.clip(np.round(np.stack([x, y, x * y], -1) * 255), 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[: size // 2] = 255
    ref = pipe.generate("a cat", seed=5, num_steps=3, image=image, mask=mask, strength=1.0)
    h = size // pipe.vae_factor
    pixel_mask = masks.repaint_weight(mask, 0.0)
    pixels = image[None].astype(np.float32) / 127.5 - 1.0
    got = model.signatures["inpaint"](
        **common, mask=tf.constant(pipe._latent_mask(pixel_mask, h, h, 1)),
        image_latents=tf.constant(pipe.encode_image(pixels)), strength=tf.constant([1.0]),
        masked_image_latents=tf.constant(pipe.encode_image(pixels * (pixel_mask[None, :, :, None] < 0.5))),
    )["latents"].numpy()
    assert rel_err(got, ref.latents) < 1e-4


def test_diffusion_flag_swaps_in_a_finetuned_unet(tmp_path):
    from models.checkpoints.tiny import BUNDLED_DIR
    from models.loading import load_unet

    unet_dir = os.path.join(BUNDLED_DIR, "unet")
    if not os.path.isdir(unet_dir):
        pytest.skip("no bundled tiny UNet folder to use as the fine-tuned one")
    manifest = export("tiny", str(tmp_path / "x"), diffusion=unet_dir, formats="tflite", components="diffusion",
                      quantize="float32", progress=False)
    assert manifest["model"]["diffusion_source"] == unet_dir
    unet = load_unet(unet_dir)
    h = unet.config.sample_size
    rng = np.random.default_rng(0)
    inputs = {"latents": rng.standard_normal((2, h, h, 4)).astype(np.float32), "timesteps": np.array([500.0, 500.0], np.float32),
              "context": rng.standard_normal((2, 77, unet.config.cross_attention_dim)).astype(np.float32)}
    got = tflite_mod.run(str(tmp_path / "x" / "tflite" / "diffusion.tflite"), inputs)["noise"]
    ref = unet([inputs["latents"], inputs["timesteps"], inputs["context"]], training=False).numpy()
    assert rel_err(got, ref) < 1e-4
