"""An LCM-LoRA in the key layout of `latent-consistency/lcm-lora-sdv1-5`, against diffusers.

That file (pytorch_lora_weights.safetensors, UNet only) is a kohya-style file with diffusers'
module names: `lora_unet_<diffusers module, "_" for ".">.lora_down.weight / .lora_up.weight /
.alpha`, over every module diffusers' LCM-LoRA distillation script targets (to_q, to_k, to_v,
to_out.0, proj_in, proj_out, ff.net.0.proj, ff.net.2, conv1, conv2, conv_shortcut,
downsamplers.0.conv, upsamplers.0.conv, time_emb_proj). Here a random adapter over those
modules of the tiny reference UNet (the LoRA parity tests' one, tests/test_lora.py) is written
with those names and one alpha != rank; it must load strictly through models/lora (every key
bound, none skipped) and give the UNet output diffusers' load_lora_weights gives (1e-4).
Nothing is downloaded.
"""

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from models.checkpoints import write_safetensors  # noqa: E402
from models.loading import load_components  # noqa: E402
from models.pipeline import StableDiffusionPipeline  # noqa: E402

from .test_lora import TOL, _our_outputs, _randomize_lora, _theirs, _torch_outputs  # noqa: E402
from .test_checkpoints_diffusers import reference, rel_err  # noqa: E402

LCM_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
               "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]
RANK, ALPHA = 4, 2.0  # the real file: rank 64; one alpha for every module


def lcm_lora_file(ref, path):
    """The random adapter's tensors under lcm-lora-sdv1-5's key names; returns the key list."""
    from peft import LoraConfig, get_peft_model_state_dict

    unet = copy.deepcopy(ref.unet)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights=False, target_modules=LCM_TARGETS),
                     adapter_name="lcm")
    _randomize_lora(unet, 7)
    sd = {}
    for key, value in get_peft_model_state_dict(unet, adapter_name="lcm").items():
        module, _, role = key.partition(".lora_")
        stem = "lora_unet_" + module.replace(".", "_")
        sd[f"{stem}.{'lora_down' if role.startswith('A') else 'lora_up'}.weight"] = value.detach().numpy().copy()
        sd[f"{stem}.alpha"] = np.array(ALPHA, np.float32)
    write_safetensors(sd, path)
    return sorted(sd)


def test_lcm_lora_layout_loads_strictly_and_matches_diffusers(tmp_path):
    ref = reference("base")
    path = str(tmp_path / "lcm-lora-sdv1-5.safetensors")
    keys = lcm_lora_file(ref, path)
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
    kinds = {m.split("_", 2)[2] for m in modules}
    # the layout's module kinds are all there, in kohya spelling with diffusers names
    for needle in ("downsamplers_0_conv", "upsamplers_0_conv", "time_emb_proj", "ff_net_0_proj", "ff_net_2",
                   "conv_shortcut", "proj_in", "attn1_to_out_0", "attn2_to_k", "mid_block"):
        assert any(needle in m for m in kinds), needle
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys

    pipe = StableDiffusionPipeline(load_components(ref.save_folder(str(tmp_path / "base"))))
    name = pipe.load_lora(path, scale=1.0)
    info = pipe.loaded_loras[name]
    assert info["networks"] == ["unet"] and not info.get("skipped_modules")
    assert info["formats"] == ["kohya", "locon"]  # kohya names; convolutions too (LoCon-style)
    assert info["modules"] == len(modules), (info["modules"], len(modules))

    theirs = _theirs(ref, tmp_path)
    theirs.load_lora_weights(path, adapter_name="lcm")
    ref_noise, _ = _torch_outputs(ref, theirs.unet, None)
    noise, text = _our_outputs(ref, pipe)
    err = rel_err(noise, ref_noise)
    print(f"LCM-LoRA layout ({len(modules)} modules, rank {RANK}, alpha {ALPHA}): UNet rel. error vs diffusers {err:.1e}, "
          f"LoRA's effect {rel_err(ref.ref_noise, ref_noise):.2f}")
    assert err <= TOL
    assert rel_err(ref.ref_noise, ref_noise) > 0.05  # the LoRA matters
    assert rel_err(text, ref.ref_text) <= TOL  # a UNet-only file leaves the text encoder alone
