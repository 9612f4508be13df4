"""TAESD (diffusers' AutoencoderTiny) and the VAE swap against diffusers, offline.

Tiny random AutoencoderTiny / AutoencoderKL networks are saved as diffusers folders, as
madebyollin's original taesd_encoder / taesd_decoder files and as an ldm single-file VAE; our
networks decode and encode as diffusers does (1e-4), and a pipeline given `vae=` runs that VAE
with diffusers' latent conventions: decode(latents / scaling_factor), encode(...) * scaling_factor,
where TAESD's scaling factor is 1.0.
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from models.checkpoints import CheckpointMismatchError, read_safetensors, write_safetensors
from models.checkpoints.taesd_files import infer_taesd_config, to_original
from models.checkpoints.vae_files import load_vae
from models.config import TinyAutoencoderConfig

from .test_checkpoints_diffusers import numpy_sd, randomize, rel_err

diffusers = pytest.importorskip("diffusers")

TAESD = dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
             num_encoder_blocks=(1, 2, 2, 1), num_decoder_blocks=(2, 2, 1, 1), latent_channels=4)
KL = dict(block_out_channels=(16, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
          up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8, layers_per_block=1)


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)


def nhwc(t):
    return t.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaes")
    tiny = randomize(diffusers.AutoencoderTiny(**TAESD), 0)
    kl = randomize(diffusers.AutoencoderKL(**KL), 1)
    tiny.save_pretrained(str(root / "taesd"))
    kl.save_pretrained(str(root / "kl"))
    original = to_original(numpy_sd(tiny))
    os.makedirs(root / "original")
    for side in ("encoder", "decoder"):
        write_safetensors(original[side], str(root / "original" / f"taesd_{side}.safetensors"))
    from models.checkpoints.ldm_single_file import to_ldm_state_dict

    ldm = {k[len("first_stage_model."):]: v for k, v in to_ldm_state_dict(vae=numpy_sd(kl)).items()}
    write_safetensors(ldm, str(root / "vae-ft-mse-like.safetensors"))
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 4, 4, 4)).astype(np.float32) * 2.0
    images = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        out = dict(tiny_decoded=nhwc(tiny.decode(nchw(z)).sample), tiny_encoded=nhwc(tiny.encode(nchw(images)).latents),
                   kl_decoded=nhwc(kl.decode(nchw(z) / kl.config.scaling_factor).sample),
                   kl_encoded=nhwc(kl.encode(nchw(images)).latent_dist.mean) * kl.config.scaling_factor)
    return dict(root=root, tiny=tiny, kl=kl, z=z, images=images, **out)


def test_taesd_folder_decodes_and_encodes_like_diffusers(refs):
    encoder, decoder, config = load_vae(str(refs["root"] / "taesd"))
    assert isinstance(config, TinyAutoencoderConfig) and config.scaling_factor == 1.0
    assert config.num_encoder_blocks == (1, 2, 2, 1) and config.num_decoder_blocks == (2, 2, 1, 1)
    errors = {"decode": rel_err(decoder(refs["z"]), refs["tiny_decoded"]),
              "encode": rel_err(encoder(refs["images"]), refs["tiny_encoded"])}
    print("TAESD (diffusers folder) rel. errors", errors)
    assert max(errors.values()) < 1e-4, errors


def test_original_taesd_files(refs):
    folder = refs["root"] / "original"
    assert sorted(read_safetensors(str(folder / "taesd_decoder.safetensors")))[0].startswith("1.")  # clamp at 0
    for source in (folder / "taesd_decoder.safetensors", folder / "taesd_encoder.safetensors", folder):
        encoder, decoder, config = load_vae(str(source))  # the other half is found beside it
        assert encoder is not None and config == TinyAutoencoderConfig(**TAESD)
        errors = {"decode": rel_err(decoder(refs["z"]), refs["tiny_decoded"]),
                  "encode": rel_err(encoder(refs["images"]), refs["tiny_encoded"])}
        assert max(errors.values()) < 1e-4, (source, errors)
    print("TAESD (original files) rel. errors", errors)


def test_decoder_only_original_file(refs, tmp_path):
    sd = read_safetensors(str(refs["root"] / "original" / "taesd_decoder.safetensors"))
    write_safetensors(sd, str(tmp_path / "taesd_decoder.safetensors"))
    encoder, decoder, _ = load_vae(str(tmp_path / "taesd_decoder.safetensors"))
    assert encoder is None and rel_err(decoder(refs["z"]), refs["tiny_decoded"]) < 1e-4


def test_taesd_keys_are_strict(refs, tmp_path):
    sd = dict(read_safetensors(str(refs["root"] / "original" / "taesd_decoder.safetensors")))
    sd.pop("3.conv.2.bias")  # the first block: 0 is the clamp, 1 a conv, 2 a ReLU
    sd["3.conv.2.extra"] = np.zeros(3, np.float32)
    write_safetensors(sd, str(tmp_path / "taesd_decoder.safetensors"))
    with pytest.raises(CheckpointMismatchError) as e:
        load_vae(str(tmp_path / "taesd_decoder.safetensors"))
    assert "decoder.layers.2.conv.2.bias" in str(e.value) and "decoder.layers.2.conv.2.extra" in str(e.value)


def test_config_is_read_off_the_original_keys(refs):
    sd = numpy_sd(refs["tiny"])
    assert infer_taesd_config(sd) == TinyAutoencoderConfig(**TAESD)
    full = diffusers.AutoencoderTiny()  # madebyollin's published sizes
    assert infer_taesd_config(numpy_sd(full)) == TinyAutoencoderConfig()


def test_single_file_and_folder_autoencoder_kl(refs):
    from models.config import VAEConfig

    for source in (refs["root"] / "kl", refs["root"] / "vae-ft-mse-like.safetensors"):
        # a single file has no config: the groups (invisible in the shapes) come from the model it joins
        encoder, decoder, config = load_vae(str(source), base_config=VAEConfig(norm_num_groups=8))
        assert config.class_name == "AutoencoderKL" and config.block_out_channels == (16, 16, 32, 32)
        assert rel_err(decoder(refs["z"] / config.scaling_factor), refs["kl_decoded"]) < 1e-4, source


@pytest.fixture(scope="module")
def pipe():
    from models import load_pipeline

    return load_pipeline("tiny")


@pytest.mark.parametrize("which", ["taesd", "original", "kl", "vae-ft-mse-like.safetensors"])
def test_pipeline_runs_the_swapped_vae_with_diffusers_conventions(refs, which):
    from models import load_pipeline

    pipe = load_pipeline("tiny", vae=str(refs["root"] / which))
    kind = "kl" if which in ("kl", "vae-ft-mse-like.safetensors") else "tiny"
    # the folder's config says 0.18215; the single file takes the tiny model's own (0.27175)
    scale = {"kl": 0.18215, "vae-ft-mse-like.safetensors": 0.27175}.get(which, 1.0)
    assert pipe.scaling_factor == pytest.approx(scale)
    if kind == "kl":
        with torch.no_grad():
            expected = {"decode": nhwc(refs["kl"].decode(nchw(refs["z"]) / scale).sample),
                        "encode": nhwc(refs["kl"].encode(nchw(refs["images"])).latent_dist.mean) * scale}
    else:
        expected = {"decode": refs["tiny_decoded"], "encode": refs["tiny_encoded"]}
    errors = {"decode": rel_err(pipe.decode_latents(refs["z"]), expected["decode"]),
              "encode": rel_err(pipe.encode_image(refs["images"]), expected["encode"])}
    print(f"pipeline with vae={which}: rel. errors", errors)
    assert max(errors.values()) < 1e-4, errors
    info = pipe.info()
    assert info["vae"] == ("AutoencoderTiny" if kind == "tiny" else "AutoencoderKL")
    assert info["scaling_factor"] == pytest.approx(scale)
    if which == "taesd":  # the whole chain through it (one trace is enough)
        image = pipe.generate("a red circle", num_steps=2, seed=0).images
        assert image.shape == (1, 64, 64, 3) and image.dtype == np.uint8


def test_vae_swap_refuses_other_latents(refs, pipe, tmp_path):
    from models.errors import InvalidInput

    wide = diffusers.AutoencoderTiny(**{**TAESD, "latent_channels": 16})
    wide.save_pretrained(str(tmp_path / "taesd3"))
    with pytest.raises(InvalidInput, match="16-channel latents"):
        pipe.swap_vae(*load_vae(str(tmp_path / "taesd3")))
    with open(tmp_path / "taesd3" / "config.json") as f:
        config = json.load(f)
    config["act_fn"] = "silu"
    with open(tmp_path / "taesd3" / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(Exception, match="relu"):
        load_vae(str(tmp_path / "taesd3"))
    with pytest.raises(FileNotFoundError, match="Accepted VAEs"):
        load_vae(str(tmp_path / "nothing-here"))


def test_cli_takes_vae_clip_skip_and_a1111_sampler_names(refs, tmp_path):
    from models.__main__ import main
    from models.png_info import read_parameters

    out = tmp_path / "a.png"
    assert main(["generate", "--model", "tiny", "--prompt", "a red circle", "--steps", "2", "--seed", "1",
                 "--scheduler", "Euler a", "--clip-skip", "2", "--vae", str(refs["root"] / "taesd"),
                 "--out", str(out)]) == 0
    assert read_parameters(str(out))["scheduler"] == "euler_a"
    assert main(["generate", "--model", "tiny", "--prompt", "x", "--steps", "2", "--vae", str(tmp_path / "none"),
                 "--out", str(tmp_path / "b.png")]) == 2
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "x", "--scheduler", "DPM++ SDE", "--out", str(tmp_path / "c.png")])
