"""Checkpoint loaders against the reference implementations (diffusers, transformers), offline.

Tiny seeded-random PyTorch models are saved the way real checkpoints are (diffusers folders by
`save_pretrained`, ldm single files by `to_ldm_state_dict`), loaded by our loaders, and their
outputs compared with PyTorch's. The ldm direction is verified independently by diffusers' own
single-file converter, and its key names against real SD v1.5 key names at full size.
"""

import functools
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from models.checkpoints import (CheckpointError, CheckpointMismatchError, PickleNotAllowedError,
                                read_safetensors, write_safetensors)
from models.checkpoints import hub
from models.checkpoints.diffusers_folder import save_diffusers_folder
from models.checkpoints.assemble import build_vae

from .conftest import random_components
from models.checkpoints.ldm_single_file import (ema_key, load_ldm_checkpoint, load_ldm_unet, split_ldm_state_dict,
                                                to_ldm_state_dict)
from models.config import TextEncoderConfig, UNetConfig, VAEConfig
from models.loading import load_components, load_unet
from models.tokenizer import default_tokenizer
from models.vae import split_moments

PROMPT = "a photograph of an astronaut riding a horse"

CASES = {
    # SD-like: attention levels then a plain level, 2 resnets per level, VAE downsampling 4x.
    "base": dict(
        unet=dict(in_channels=4, block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=2,
                  cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, sample_size=8),
        vae=dict(block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=8, latent_channels=4),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    ),
    # Inpainting: 9 input channels, three levels, one resnet per level.
    "inpaint": dict(
        unet=dict(in_channels=9, block_out_channels=(32, 64, 64),
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                  cross_attention_dim=48, attention_head_dim=2, norm_num_groups=16, sample_size=8),
        vae=dict(block_out_channels=(32, 32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4),
        text=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4),
    ),
}


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def randomize(module, seed):
    """Every parameter random (norms and biases too), so a swapped key cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1:
                p.copy_(1 + 0.1 * noise if ("norm" in name and name.endswith("weight")) else 0.1 * noise)
            elif "embedding" in name and p.ndim == 2 and "linear" not in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / np.sqrt(np.prod(p.shape[1:])))
    return module.eval()


def numpy_sd(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


class Reference:
    """Seeded diffusers/transformers models of one case, our configs, and shared inputs."""

    def __init__(self, case, seed=0):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        c = CASES[case]
        n = len(c["vae"]["block_out_channels"])
        self.unet = randomize(UNet2DConditionModel(**c["unet"]), seed)
        self.vae = randomize(AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n,
                                           up_block_types=("UpDecoderBlock2D",) * n, **c["vae"]), seed + 1)
        self.text = randomize(CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **c["text"])),
                              seed + 2)
        self.unet_config = UNetConfig(**c["unet"])
        self.vae_config = VAEConfig(**c["vae"])
        self.text_config = TextEncoderConfig(**c["text"])
        rng = np.random.default_rng(seed)
        cin, ctx = c["unet"]["in_channels"], c["unet"]["cross_attention_dim"]
        self.ids = default_tokenizer().tokenize([PROMPT])
        self.latents = rng.standard_normal((2, 16, 16, cin)).astype(np.float32)
        self.timesteps = np.array([10.0, 601.0], np.float32)
        self.context = rng.standard_normal((2, 77, ctx)).astype(np.float32)
        self.z = rng.standard_normal((1, 8, 8, 4)).astype(np.float32)
        self.images = rng.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
        with torch.no_grad():
            nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)
            nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
            self.ref_text = self.text(torch.from_numpy(self.ids).long()).last_hidden_state.numpy()
            self.ref_noise = nhwc(self.unet(nchw(self.latents), torch.from_numpy(self.timesteps),
                                            torch.from_numpy(self.context)).sample)
            self.ref_decoded = nhwc(self.vae.decode(nchw(self.z)).sample)
            self.ref_mean = nhwc(self.vae.encode(nchw(self.images)).latent_dist.mean)

    def diffusers_sds(self):
        return numpy_sd(self.unet), numpy_sd(self.vae), numpy_sd(self.text)

    def save_folder(self, root):
        self.unet.save_pretrained(os.path.join(root, "unet"))
        self.vae.save_pretrained(os.path.join(root, "vae"))
        self.text.save_pretrained(os.path.join(root, "text_encoder"))
        default_tokenizer().save_vocab(os.path.join(root, "tokenizer"))
        os.makedirs(os.path.join(root, "scheduler"))
        with open(os.path.join(root, "scheduler", "scheduler_config.json"), "w") as f:
            json.dump({"_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                       "beta_end": 0.012, "beta_schedule": "scaled_linear", "skip_prk_steps": True}, f)
        with open(os.path.join(root, "model_index.json"), "w") as f:
            json.dump({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                       "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
                       "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"]}, f)
        return root

    def save_ldm(self, path, **extra):
        sd = to_ldm_state_dict(*self.diffusers_sds())
        sd.update(extra)
        write_safetensors(sd, path)
        return path

    def errors(self, comps):
        """Relative error of each output of our components against the PyTorch reference."""
        mean, _ = split_moments(comps.encoder(self.images))
        return {
            "text_encoder": rel_err(comps.text_encoder(self.ids), self.ref_text),
            "unet": rel_err(comps.unet([self.latents, self.timesteps, self.context]), self.ref_noise),
            "vae_decode": rel_err(comps.decoder(self.z), self.ref_decoded),
            "vae_encode_mean": rel_err(mean, self.ref_mean),
        }


@functools.lru_cache(maxsize=None)
def reference(case):
    return Reference(case)


@pytest.fixture(scope="module", params=sorted(CASES))
def ref(request):
    return reference(request.param)


@pytest.fixture(scope="module")
def base_ref():
    return reference("base")


@pytest.fixture(scope="module")
def folder(base_ref, tmp_path_factory):
    return base_ref.save_folder(str(tmp_path_factory.mktemp("sd_folder")))


@pytest.fixture(scope="module")
def ldm_file(base_ref, tmp_path_factory):
    return base_ref.save_ldm(str(tmp_path_factory.mktemp("ldm") / "model.safetensors"))


def ldm_configs(r):
    return dict(unet_config=r.unet_config, vae_config=r.vae_config, text_encoder_config=r.text_config)


# -- parity -------------------------------------------------------------------------------

def test_diffusers_folder_matches_pytorch(ref, tmp_path):
    comps = load_components(ref.save_folder(str(tmp_path)))
    errors = ref.errors(comps)
    print("diffusers folder", errors)
    assert max(errors.values()) <= 1e-4, errors
    assert comps.unet.config == ref.unet_config
    assert comps.vae_config.replace(sample_size=512) == ref.vae_config  # diffusers writes its own sample_size
    assert comps.schedule.to_config()["beta_schedule"] == "scaled_linear"
    np.testing.assert_array_equal(comps.tokenizer.tokenize([PROMPT]), ref.ids)


def test_ldm_single_file_matches_pytorch(ref, tmp_path):
    comps = load_ldm_checkpoint(ref.save_ldm(str(tmp_path / "m.safetensors")), **ldm_configs(ref))
    errors = ref.errors(comps)
    print("ldm single file", errors)
    assert max(errors.values()) <= 1e-4, errors
    # Everything but heads/groups (invisible in the shapes, passed above) was read off the weights.
    assert comps.unet.config == ref.unet_config
    assert comps.text_encoder.config == ref.text_config


def test_inpainting_checkpoint_is_detected_from_conv_in(tmp_path):
    r = reference("inpaint")
    path = r.save_ldm(str(tmp_path / "inpaint.safetensors"))
    comps = load_ldm_checkpoint(path, **ldm_configs(r))
    assert comps.unet.config.in_channels == 9 and comps.unet.config.is_inpainting
    # Through the dispatcher with SD's defaults for what the weights cannot show.
    unet = load_unet(path)
    assert unet.config.in_channels == 9 and unet.config.block_out_channels == (32, 64, 64)
    assert unet.config.cross_attention_dim == 48 and unet.config.layers_per_block == 1


def test_ldm_file_through_load_components(ldm_file):
    comps = load_components(ldm_file)  # SD v1 defaults: 32 groups fit these widths, 8 heads
    assert comps.unet.config.block_out_channels == (32, 64)
    assert comps.vae_config.block_out_channels == (32, 64, 64)
    assert comps.encoder is not None and comps.name == "model"


# -- the ldm key map, checked independently --------------------------------------------------

def test_ldm_file_loads_in_diffusers_own_single_file_loader(base_ref, folder, ldm_file):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    unet = UNet2DConditionModel.from_single_file(ldm_file, config=folder, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_single_file(ldm_file, config=folder, subfolder="vae", local_files_only=True)
    for theirs, ours in ((unet, base_ref.unet), (vae, base_ref.vae)):
        a, b = theirs.state_dict(), ours.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    clip = convert_ldm_clip_checkpoint({k: torch.from_numpy(np.array(v)) for k, v in read_safetensors(ldm_file).items()})
    expected = {"text_model." + k if not k.startswith("text_model.") else k for k in base_ref.text.state_dict()}
    expected.discard("text_model.embeddings.position_ids")
    assert set(clip) == expected


REAL_SD15_KEYS = {  # names and shapes as in v1-5-pruned-emaonly.safetensors
    "model.diffusion_model.time_embed.0.weight": (1280, 320),
    "model.diffusion_model.time_embed.2.bias": (1280,),
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.1.0.in_layers.0.weight": (320,),
    "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight": (320, 1280),
    "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
    "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
    "model.diffusion_model.input_blocks.11.0.out_layers.3.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
    "model.diffusion_model.middle_block.2.out_layers.0.bias": (1280,),
    "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
    "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
    "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
    "model.diffusion_model.out.0.weight": (320,),
    "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
    "first_stage_model.encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
    "first_stage_model.encoder.down.1.downsample.conv.weight": (256, 256, 3, 3),
    "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
    "first_stage_model.encoder.norm_out.weight": (512,),
    "first_stage_model.decoder.up.3.block.0.conv1.weight": (512, 512, 3, 3),
    "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
    "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight": (256, 512, 1, 1),
    "first_stage_model.decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
    "first_stage_model.decoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
    "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
    "first_stage_model.post_quant_conv.weight": (4, 4, 1, 1),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
}


def test_full_size_ldm_names_match_real_sd15_and_diffusers_converter():
    """At SD v1.5 size (meta tensors: shapes only): our names are the real file's, and
    diffusers' converter maps them back onto exactly the diffusers model's keys."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = {f"text_model.{k}": torch.empty(s, device="meta") for k, s in (
        ("embeddings.token_embedding.weight", (49408, 768)), ("encoder.layers.11.mlp.fc2.weight", (768, 3072)),
        ("final_layer_norm.weight", (768,)))}
    sd = to_ldm_state_dict(unet.state_dict(), vae.state_dict(), text)
    for key, shape in REAL_SD15_KEYS.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, (key, tuple(sd[key].shape), shape)
    assert sum(k.startswith("model.diffusion_model.") for k in sd) == 686
    assert sum(k.startswith("first_stage_model.") for k in sd) == 248
    unet_back = convert_ldm_unet_checkpoint(sd, dict(unet.config))
    assert set(unet_back) == set(unet.state_dict())
    vae_back = convert_ldm_vae_checkpoint(sd, dict(vae.config))
    assert set(vae_back) == set(vae.state_dict())
    # And our own reverse direction is the identity on names.
    parts = split_ldm_state_dict(sd)
    assert set(parts["unet"]) == set(unet.state_dict()) and set(parts["vae"]) == set(vae.state_dict())


def test_ema_weights_are_used_when_present(base_ref, tmp_path):
    unet_sd, vae_sd, text_sd = base_ref.diffusers_sds()
    sd = to_ldm_state_dict(unet_sd, vae_sd, text_sd)
    # EMA copies are the real weights; model.* gets a perturbed copy that must be ignored.
    ema = {ema_key(k): v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    for k in list(sd):
        if k.startswith("model.diffusion_model."):
            sd[k] = sd[k] + 0.5
    sd.update(ema)
    sd.update({"model_ema.decay": np.array(0.9999, np.float32), "model_ema.num_updates": np.array(5, np.int32),
               "alphas_cumprod": np.ones(1000, np.float32), "betas": np.ones(1000, np.float32),
               "cond_stage_model.transformer.text_model.embeddings.position_ids": np.arange(77)[None]})
    assert "model_ema.diffusion_modelinput_blocks00weight" in sd  # ldm's flattened EMA names
    path = str(tmp_path / "ema.safetensors")
    write_safetensors(sd, path)
    inputs = [base_ref.latents, base_ref.timesteps, base_ref.context]
    ema_unet = load_ldm_unet(path, unet_config=base_ref.unet_config)
    assert rel_err(ema_unet(inputs), base_ref.ref_noise) <= 1e-4
    plain_unet = load_ldm_unet(path, prefer_ema=False, unet_config=base_ref.unet_config)
    assert rel_err(plain_unet(inputs), base_ref.ref_noise) > 1e-2


def test_ckpt_pickle_needs_allow_pickle(base_ref, tmp_path):
    sd = to_ldm_state_dict(*base_ref.diffusers_sds())
    path = str(tmp_path / "model.ckpt")
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}, "global_step": 1}, path)
    with pytest.raises(PickleNotAllowedError, match="allow_pickle=True"):
        load_components(path)
    with pytest.raises(PickleNotAllowedError, match="allow_pickle=True"):
        load_unet(path)
    unet = load_ldm_unet(path, allow_pickle=True, unet_config=base_ref.unet_config)
    assert rel_err(unet([base_ref.latents, base_ref.timesteps, base_ref.context]), base_ref.ref_noise) <= 1e-4


# -- diffusers folder variants --------------------------------------------------------------

def test_sharded_fp16_variant_and_old_vae_names(base_ref, folder, tmp_path):
    import shutil

    root = str(tmp_path / "variants")
    shutil.copytree(folder, root)
    unet_dir, vae_dir = os.path.join(root, "unet"), os.path.join(root, "vae")
    sd = read_safetensors(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    os.remove(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    keys = sorted(sd)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        write_safetensors({k: sd[k] for k in ks}, os.path.join(unet_dir, name))
    with open(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}, f)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    vae = read_safetensors(os.path.join(vae_dir, "diffusion_pytorch_model.safetensors"))
    renamed = {}
    for k, v in vae.items():
        for new, legacy in old.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{legacy}.")
        renamed[k] = v
    os.remove(os.path.join(vae_dir, "diffusion_pytorch_model.safetensors"))
    write_safetensors(renamed, os.path.join(vae_dir, "diffusion_pytorch_model.fp16.safetensors"), dtype="float16")
    errors = base_ref.errors(load_components(root))
    assert errors["unet"] <= 1e-4 and errors["text_encoder"] <= 1e-4
    assert errors["vae_decode"] <= 3e-3 and errors["vae_encode_mean"] <= 3e-3  # float16 storage


def test_bin_weights_need_allow_pickle(base_ref, folder, tmp_path):
    import shutil

    root = str(tmp_path / "bin")
    shutil.copytree(folder, root)
    unet_dir = os.path.join(root, "unet")
    sd = read_safetensors(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    os.remove(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, os.path.join(unet_dir, "diffusion_pytorch_model.bin"))
    with pytest.raises(PickleNotAllowedError, match="allow_pickle=True"):
        load_components(root)
    unet = load_unet(root, allow_pickle=True)
    assert rel_err(unet([base_ref.latents, base_ref.timesteps, base_ref.context]), base_ref.ref_noise) <= 1e-4


def test_unet_only_folder_is_a_unet_replacement(base_ref, folder, tmp_path):
    import shutil

    root = str(tmp_path / "finetune")
    shutil.copytree(os.path.join(folder, "unet"), os.path.join(root, "unet"))
    for source in (root, os.path.join(root, "unet", "diffusion_pytorch_model.safetensors")):
        unet = load_unet(source)
        assert rel_err(unet([base_ref.latents, base_ref.timesteps, base_ref.context]), base_ref.ref_noise) <= 1e-4
    with pytest.raises(ValueError, match="load_unet"):
        load_components(root)


@pytest.mark.slow
def test_saved_folder_round_trips_and_loads_in_diffusers(base_ref, folder, tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    comps = load_components(folder)
    out = save_diffusers_folder(comps, str(tmp_path / "ours"), dtype="float32")
    again = load_components(out)
    assert max(base_ref.errors(again).values()) <= 1e-4
    # diffusers / transformers read what we wrote.
    unet = UNet2DConditionModel.from_pretrained(os.path.join(out, "unet"))
    vae = AutoencoderKL.from_pretrained(os.path.join(out, "vae"))
    text = CLIPTextModel.from_pretrained(os.path.join(out, "text_encoder"))
    for theirs, ours in ((unet, base_ref.unet), (vae, base_ref.vae), (text, base_ref.text)):
        a, b = theirs.state_dict(), ours.state_dict()
        for k in b:
            if not k.endswith("position_ids"):
                torch.testing.assert_close(a[k], b[k], msg=k)
    # float16 storage halves the files and stays close.
    half = save_diffusers_folder(comps, str(tmp_path / "half"), dtype="float16", parts=("unet",))
    assert not os.path.exists(os.path.join(half, "model_index.json"))
    size = lambda p: os.path.getsize(os.path.join(p, "unet", "diffusion_pytorch_model.safetensors"))
    assert size(half) < 0.6 * size(out)
    unet16 = load_unet(half)
    assert rel_err(unet16([base_ref.latents, base_ref.timesteps, base_ref.context]), base_ref.ref_noise) <= 3e-3


def test_tiny_fallback_builds_the_bundled_networks_and_is_deterministic():
    """One definition of the tiny architecture: the random-weight fallback (no bundled weights)
    builds exactly the networks the bundled folder holds, and the bundle's configs say so."""
    from models.checkpoints import tiny
    from models.checkpoints.keymap import model_state_dict

    bundled = load_components("tiny")
    assert bundled.source == "tiny" and bundled.name == "tiny", "the bundled tiny model is missing"
    assert bundled.encoder is not None and bundled.vae_config.downsample_factor == 8
    fallback = tiny.random_tiny_components()
    for part in ("text_encoder", "unet", "decoder", "encoder"):
        want = {k: v.shape for k, v in model_state_dict(getattr(bundled, part)).items()}
        got = {k: v.shape for k, v in model_state_dict(getattr(fallback, part)).items()}
        assert got == want, part
    for part, config in (("text_encoder", tiny.TINY_TEXT_ENCODER), ("unet", tiny.TINY_UNET), ("vae", tiny.TINY_VAE)):
        on_disk = json.load(open(os.path.join(tiny.BUNDLED_DIR, part, "config.json")))
        for field, value in config.to_dict().items():
            if field in on_disk and field != "scaling_factor":  # the trained VAE measured its own
                assert on_disk[field] == (list(value) if isinstance(value, tuple) else value), (part, field)
    # The random weights are a pure function of (seed, key): any machine, any build order.
    w = fallback.unet.get_layer("conv_in").kernel.numpy()
    key = "conv_in.weight"
    expected = tiny.random_state_dict({key: (32, 4, 3, 3)}, tiny.SEED)[key].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(w, expected)


# -- errors ---------------------------------------------------------------------------------

def _edited_ldm(base_ref, tmp_path, edit):
    sd = to_ldm_state_dict(*base_ref.diffusers_sds())
    edit(sd)
    path = str(tmp_path / "edited.safetensors")
    write_safetensors(sd, path)
    return path


def test_missing_unexpected_and_misshaped_keys_are_named(base_ref, tmp_path):
    key = "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight"
    path = _edited_ldm(base_ref, tmp_path, lambda sd: sd.pop(key))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: down_blocks\.0\.resnets\.0\.time_emb_proj\.weight"):
        load_ldm_unet(path, unet_config=base_ref.unet_config)

    def stray(sd):
        sd["some_other_model.weight"] = np.zeros(3, np.float32)

    with pytest.raises(CheckpointMismatchError, match="some_other_model.weight"):
        load_components(_edited_ldm(base_ref, tmp_path, stray))

    vae = split_ldm_state_dict(to_ldm_state_dict(*base_ref.diffusers_sds()))["vae"]
    vae["decoder.up_blocks.0.resnets.0.extra.weight"] = np.zeros(3, np.float32)
    vae["encoder.conv_out.bias"] = np.zeros(5, np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        build_vae(base_ref.vae_config, vae)
    assert "unexpected keys: decoder.up_blocks.0.resnets.0.extra.weight" in str(e.value)
    assert "wrong shapes: encoder.conv_out.bias" in str(e.value)


def test_ldm_keys_fitting_no_block_are_named(base_ref):
    sd = to_ldm_state_dict(*base_ref.diffusers_sds())
    sd["model.diffusion_model.middle_block.7.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointMismatchError, match=r"fit no block.*middle_block\.7\.weight"):
        split_ldm_state_dict(sd)


def test_mismatch_in_a_diffusers_folder_is_named(folder, tmp_path):
    import shutil

    root = str(tmp_path / "broken")
    shutil.copytree(folder, root)
    path = os.path.join(root, "text_encoder", "model.safetensors")
    sd = read_safetensors(path)
    sd.pop("encoder.layers.1.mlp.fc2.bias")
    write_safetensors(sd, path)
    with pytest.raises(CheckpointMismatchError, match=r"text_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
        load_components(root)


def test_truncated_and_corrupt_safetensors(ldm_file, tmp_path):
    data = open(ldm_file, "rb").read()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_components(str(truncated))
    assert "truncated.safetensors" in str(e.value)
    header_cut = tmp_path / "header_cut.safetensors"
    header_cut.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        read_safetensors(str(header_cut))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(data[:8] + b"#" * 20 + data[28:])
    with pytest.raises(CheckpointError, match="not JSON"):
        load_components(str(corrupt))


def test_garbage_and_missing_paths(tmp_path):
    garbage = tmp_path / "model.bin.weird"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(CheckpointError, match="not a checkpoint format"):
        load_components(str(garbage))
    garbage_st = tmp_path / "model.safetensors"
    garbage_st.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_components(str(garbage_st))
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    with pytest.raises(ValueError, match="Accepted sources"):
        load_components(str(not_a_model))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_components(str(tmp_path / "nope.safetensors"))
    with pytest.raises(FileNotFoundError):
        load_unet(str(tmp_path / "nope" / "unet"))
    with pytest.raises(FileNotFoundError):
        read_safetensors(str(tmp_path / "nope.safetensors"))


def test_bfloat16_safetensors_are_widened(tmp_path):
    from safetensors.torch import save_file

    t = torch.randn(3, 5).to(torch.bfloat16)
    save_file({"w": t, "i": torch.arange(4)}, str(tmp_path / "bf16.safetensors"))
    sd = read_safetensors(str(tmp_path / "bf16.safetensors"))
    assert sd["w"].dtype == np.float32 and sd["i"].dtype == np.int64
    np.testing.assert_array_equal(sd["w"], t.float().numpy())


def test_loaders_read_tensors_in_stored_precision(tmp_path):
    """read_weights hands float16/bfloat16 tensors over unconverted, as views of the file:
    widening a whole float16 SD v1 file first made its load peak 7.6 GiB instead of 4.9."""
    from safetensors.torch import save_file

    from models.checkpoints.files import read_weights

    half, brain = torch.randn(4, 6).half(), torch.randn(3, 5).to(torch.bfloat16)
    save_file({"h": half, "b": brain, "f": half.float()}, str(tmp_path / "mixed.safetensors"))
    sd = read_weights(str(tmp_path / "mixed.safetensors"))
    assert sd["h"].dtype == np.float16 and sd["f"].dtype == np.float32
    assert str(sd["b"].dtype) == "bfloat16"
    base = sd["h"]
    while base.base is not None and isinstance(base.base, np.ndarray):
        base = base.base
    assert not base.flags.owndata  # a view of the memory map, not a copy
    np.testing.assert_array_equal(sd["h"].astype(np.float32), half.float().numpy())
    np.testing.assert_array_equal(sd["b"].astype(np.float32), brain.float().numpy())
    pickled = tmp_path / "mixed.ckpt"
    torch.save({"state_dict": {"h": half, "b": brain}}, str(pickled))
    sd = read_weights(str(pickled), allow_pickle=True)
    assert sd["h"].dtype == np.float16 and sd["b"].dtype == np.float32  # numpy has no bfloat16


def test_float16_folder_loads_into_float32_networks(base_ref, folder, tmp_path):
    """Per-tensor casting on assign: a float16 folder gives float32 variables holding the float16 values."""
    from models.checkpoints.diffusers_folder import save_diffusers_folder

    ref = load_components(folder)
    half = str(tmp_path / "half")
    save_diffusers_folder(ref, half, dtype="float16")
    comps = load_components(half)
    for name in ("text_encoder", "unet", "decoder", "encoder"):
        for a, b in zip(getattr(ref, name).weights, getattr(comps, name).weights):
            assert b.dtype == "float32", b.path
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a).astype(np.float16).astype(np.float32), err_msg=b.path)


@pytest.mark.parametrize("which", ["folder", "ldm_file"])
def test_parts_load_only_the_named_networks(which, request):
    """What a split deployment's component server loads: its own networks, bit-equal to a full
    load; the others are NotLoaded stand-ins with the same configs, and calling one says so."""
    from models import load_pipeline
    from models.checkpoints.assemble import NotLoaded, NotLoadedError

    source = request.getfixturevalue(which)
    whole = load_pipeline(source)
    full = whole.components  # the full load (load_pipeline's load_components(source)), compared with below
    names = ("text_encoder", "unet", "decoder", "encoder")
    for parts in (["text_encoder"], ["unet"], ["decoder", "encoder"], ["encoder"]):
        comps = load_components(source, parts=parts)
        for name in names:
            ours, ref = getattr(comps, name), getattr(full, name)
            assert ours.config == ref.config, name
            if name in parts:
                assert not isinstance(ours, NotLoaded)
                for a, b in zip(ours.weights, ref.weights, strict=True):
                    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
            else:
                assert isinstance(ours, NotLoaded) and ours.count_params() == 0
    pipe = load_pipeline(source, parts=["unet"])  # the diffusion server: the empty prompt's context computed up front
    context = whole.encode_text(["a prompt"])
    ours = pipe.generate("", num_steps=2, seed=0, decode=False, context=context).latents
    np.testing.assert_allclose(ours, whole.generate("a prompt", num_steps=2, seed=0, decode=False).latents,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(NotLoadedError, match="text_encoder is not loaded"):
        pipe.encode_text(["a prompt"])
    with pytest.raises(NotLoadedError, match="decoder is not loaded"):
        pipe.decode_latents(np.zeros((1, 8, 8, 4), np.float32))
    with pytest.raises(ValueError, match="subset"):
        load_components(source, parts=["vae"])


def test_hub_ids_are_recognised_and_failures_are_clear(monkeypatch, tmp_path):
    import sys

    assert hub.looks_like_repo_id("runwayml/stable-diffusion-v1-5")
    assert not hub.looks_like_repo_id("tiny") and not hub.looks_like_repo_id("/abs/path")
    monkeypatch.chdir(tmp_path)

    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("we are offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(hub.HubError, match="runwayml/stable-diffusion-v1-5.*offline"):
        load_components("runwayml/stable-diffusion-v1-5")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(hub.HubError, match="huggingface_hub is not installed"):
        load_unet("someone/finetuned-unet")


def test_unsupported_config_values_are_refused(folder, tmp_path):
    import shutil

    root = str(tmp_path / "scale_shift")
    shutil.copytree(folder, root)
    path = os.path.join(root, "unet", "config.json")
    config = json.load(open(path))
    config["time_embedding_type"] = "fourier"
    json.dump(config, open(path, "w"))
    with pytest.raises(CheckpointError, match="time_embedding_type"):
        load_components(root)


def test_loading_releases_the_pages_of_the_file(tmp_path):
    """Assigned tensors' file pages leave this process's RSS (else a 4 GB load peaks at weights + file)."""
    from models.checkpoints.safetensors_io import read_safetensors, release_pages, write_safetensors

    def rss_file_kb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssFile"))

    values = np.random.default_rng(0).standard_normal((64, 1024, 1024)).astype(np.float32)  # 256 MiB
    write_safetensors({"w": values}, tmp_path / "big.safetensors")
    tensor = read_safetensors(tmp_path / "big.safetensors")["w"]
    before = rss_file_kb()
    assert float(tensor.sum()) == pytest.approx(float(values.sum()), rel=1e-4)  # touches every page
    touched = rss_file_kb()
    assert touched - before > 200 * 1024
    release_pages(tensor.transpose(2, 1, 0))  # views of the mapping are enough
    assert rss_file_kb() - before < 16 * 1024
    np.testing.assert_array_equal(tensor[5, 7], values[5, 7])  # still readable: pages come back from the file
    release_pages(np.ones(4))  # not a mapping: nothing to do


def test_loaders_create_variables_from_the_checkpoint_without_initialising_them():
    from keras.src.backend.common import global_state

    from models.checkpoints import deferred_init
    from models.checkpoints.assemble import build_unet
    from models.checkpoints.keymap import model_state_dict

    source = random_components().unet
    state = model_state_dict(source)
    with deferred_init.uninitialized():
        probe = type(source)(source.config)
    assert all(deferred_init.is_uninitialized(v) for v in probe.weights)  # nothing allocated yet
    deferred_init.discard(probe.weights)

    loaded = build_unet(source.config, state)
    assert not any(deferred_init.is_uninitialized(v) for v in loaded.weights)
    for a, b in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not global_state.get_global_attribute("uninitialized_variables")

    broken = dict(state)
    broken.pop(next(iter(broken)))
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        build_unet(source.config, broken)
    assert not global_state.get_global_attribute("uninitialized_variables")  # no orphans left behind
