"""TAESD exported as a second decoder and image encoder for the edge (`--taesd`): a tiny random
diffusers AutoencoderTiny folder, exported to TFLite and TF.js next to the model's own VAE, must
decode and encode as the pipeline does with that TAESD swapped in (`load_pipeline(vae=...)`),
and the manifest lists both decoders and both image encoders.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from exports import ExportError, export, find_artifact
from exports import node_runner
from exports import tflite as tflite_mod
from models.checkpoints.vae_files import load_vae

from .conftest import random_components
from .test_export import rel_err

diffusers = pytest.importorskip("diffusers")

TAESD = dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
             num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(pipeline with the TAESD swapped in, export folder, manifest)."""
    from models.pipeline import StableDiffusionPipeline

    from .test_checkpoints_diffusers import randomize

    root = tmp_path_factory.mktemp("taesd")
    randomize(diffusers.AutoencoderTiny(**TAESD), 0).save_pretrained(str(root / "taesd"))
    pipe = StableDiffusionPipeline(random_components(seed=7))
    out = str(root / "export")
    manifest = export("tiny", out, pipeline=pipe, taesd=str(root / "taesd"), formats="tflite,tfjs",
                      components="decoder,taesd_decoder,taesd_encoder", quantize="float32", progress=False)
    reference = StableDiffusionPipeline(random_components(seed=7))
    reference.swap_vae(*load_vae(str(root / "taesd")))
    return reference, out, manifest


def _inputs(pipe):
    rng = np.random.default_rng(0)
    h = pipe.unet.config.sample_size
    size = pipe.default_size
    latents = (rng.standard_normal((1, h, h, 4)) * 2).astype(np.float32)
    image = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    return latents, image


def test_manifest_lists_both_decoders_and_encoders(setup):
    _, _, manifest = setup
    assert manifest["decoders"] == [{"component": "decoder", "vae": "AutoencoderKL"},
                                    {"component": "taesd_decoder", "vae": "AutoencoderTiny"}]
    assert manifest["image_encoders"] == [{"component": "taesd_encoder", "vae": "AutoencoderTiny"}]
    for component in ("taesd_decoder", "taesd_encoder"):
        for fmt in ("tflite", "tfjs"):
            assert find_artifact(manifest, component, fmt, "float32") is not None, (component, fmt)
    vae, taesd = (find_artifact(manifest, c, "tflite", "float32") for c in ("decoder", "taesd_decoder"))
    assert vae["signatures"]["serving_default"]["inputs"] == taesd["signatures"]["serving_default"]["inputs"]


def test_tflite_taesd_decodes_and_encodes_as_the_pipeline(setup):
    pipe, out, manifest = setup
    latents, image = _inputs(pipe)
    dec = tflite_mod.run(os.path.join(out, find_artifact(manifest, "taesd_decoder", "tflite")["path"]),
                         {"latents": latents})
    # uint8 by the pipeline's rounding (one grey level where float32 rounding lands on .5)
    assert np.abs(dec["images"].astype(int) - pipe.decode(latents).astype(int)).max() <= 1
    assert rel_err(dec["images_float"], pipe.decode_latents(latents)) < 1e-5
    enc = tflite_mod.run(os.path.join(out, find_artifact(manifest, "taesd_encoder", "tflite")["path"]),
                         {"images": image})["latents"]
    assert rel_err(enc, pipe.encode_pixels(image)) < 1e-5


@pytest.mark.parametrize("component", ["taesd_decoder", "taesd_encoder"])
def test_tfjs_taesd_runs_in_node(setup, component):
    reason = node_runner.unavailable_reason()
    if reason:
        pytest.skip(reason)
    pipe, out, manifest = setup
    latents, image = _inputs(pipe)
    art = find_artifact(manifest, component, "tfjs", "float32")
    if component == "taesd_decoder":
        got, _ = node_runner.run(os.path.join(out, art["path"]), {"latents": latents})
        assert rel_err(got["images_float"], pipe.decode_latents(latents)) < 1e-4
    else:
        got, _ = node_runner.run(os.path.join(out, art["path"]), {"images": image})
        assert rel_err(got["latents"], pipe.encode_pixels(image)) < 1e-4


def test_taesd_components_need_a_taesd_and_refuse_another_vae(tmp_path):
    with pytest.raises(ExportError, match="no TAESD decoder: pass --taesd"):
        export("tiny", str(tmp_path / "x"), formats="tflite", components="taesd_decoder", progress=False)
    with pytest.raises(ExportError, match="TAESD is exported for the edge clients"):
        export("tiny", str(tmp_path / "x"), formats="savedmodel", components="taesd_decoder",
               taesd=str(tmp_path), progress=False)


def test_python_edge_client_picks_taesd(setup):
    from edge.client import EdgeError, EdgeModels

    pipe, out, _ = setup
    latents, image = _inputs(pipe)
    taesd = EdgeModels(out, components=("decoder", "image_encoder"), vae="taesd")
    assert taesd.files == {"decoder": "tflite/taesd_decoder.tflite", "image_encoder": "tflite/taesd_encoder.tflite"}
    assert np.abs(taesd.decode(latents).astype(int) - pipe.decode(latents).astype(int)).max() <= 1
    assert rel_err(taesd.encode_image(image[0]), pipe.encode_pixels(image)) < 1e-5
    full = EdgeModels(out, components=("decoder",))
    assert full.files == {"decoder": "tflite/decoder.tflite"}
    assert np.abs(full.decode(latents).astype(int) - taesd.decode(latents).astype(int)).max() > 10  # another VAE
    with pytest.raises(EdgeError, match="vae must be one of full, taesd"):
        EdgeModels(out, components=("decoder",), vae="tiny")
