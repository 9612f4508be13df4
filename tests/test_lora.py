"""LoRAs against diffusers + PEFT on the same random weights, and what merging promises.

Two adapters are made with PEFT on the tiny diffusers UNet and CLIP text encoder of the
checkpoint tests (attention to_q/to_k/to_v/to_out.0, LoCon-style convolutions conv1/conv2/
conv_shortcut/proj_in, CLIP q/k/v/out_proj and fc1), with random non-zero lora_B and alphas that
differ from the ranks (per-module rank_pattern / alpha_pattern too). Each is written in every
format we read, by diffusers' own writers where it has one (save_lora_weights with its
lora_adapter_metadata; a model's save_lora_adapter for the unprefixed form) and by renaming
the keys here otherwise (kohya, kohya with ldm UNet names, diffusers' old attention-processor
names). diffusers loads the same files with load_lora_weights (its own kohya conversion) and
`set_adapters([a, b], adapter_weights=[0.5, 1.0])`; our UNet noise prediction and text-encoder
output must agree to 1e-4 relative, and must differ clearly from the base model's.
"""

import copy
import os
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from models.checkpoints import write_safetensors  # noqa: E402
from models.checkpoints.ldm_single_file import ldm_unet_keys  # noqa: E402
from models.loading import load_components  # noqa: E402
from models.pipeline import StableDiffusionPipeline  # noqa: E402

from .test_checkpoints_diffusers import reference, rel_err  # noqa: E402

TOL = 1e-4
SCALES = {"a": 0.5, "b": 1.0}
UNET_TARGETS = {
    "a": dict(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2",
                                                  "conv_shortcut", "proj_in"],
              rank_pattern={"conv1": 2}, alpha_pattern={"to_k": 3}),
    "b": dict(r=2, lora_alpha=1, target_modules=["to_k", "to_out.0", "proj_out", "time_emb_proj", "ff.net.2"]),
}
TEXT_TARGETS = {
    "a": dict(r=4, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]),
    "b": dict(r=2, lora_alpha=6, target_modules=["q_proj", "out_proj", "fc1"]),
}
# (with MLP modules but no out_proj, diffusers 0.42.1 takes a kohya file's CLIP keys for its own
# newer naming and silently drops the attention ones: its detection looks for "to_out_lora")
# kohya files carry one alpha per module; diffusers' kohya reader only honours a file-wide one,
# so the kohya variants use this alpha everywhere (!= every rank) for both sides.
KOHYA_ALPHA = 3.0


def _randomize_lora(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:  # PEFT starts lora_B at zero: the adapter would be a no-op
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(np.prod(p.shape[1:])))


class Adapter:
    """One PEFT adapter on copies of the reference networks, and its state dicts and configs."""

    def __init__(self, ref, name, seed):
        from peft import LoraConfig, get_peft_model_state_dict

        self.name = name
        self.unet = copy.deepcopy(ref.unet)
        self.unet_config = LoraConfig(init_lora_weights=False, **UNET_TARGETS[name])
        self.unet.add_adapter(self.unet_config, adapter_name=name)
        _randomize_lora(self.unet, seed)
        self.unet_sd = get_peft_model_state_dict(self.unet, adapter_name=name)
        text = copy.deepcopy(ref.text)
        self.text_config = LoraConfig(init_lora_weights=False, **TEXT_TARGETS[name])
        text.add_adapter(self.text_config, adapter_name=name)
        _randomize_lora(text, seed + 100)
        self.text_sd = get_peft_model_state_dict(text, adapter_name=name)
        self.ldm_names = ldm_unet_keys([k.split(".lora_")[0] + ".weight" for k in self.unet_sd],
                                       ref.unet_config.down_block_types, ref.unet_config.layers_per_block)

    # -- writers, one per format -------------------------------------------------------
    def save_diffusers(self, folder):
        diffusers.StableDiffusionPipeline.save_lora_weights(
            folder, unet_lora_layers=self.unet_sd, text_encoder_lora_layers=self.text_sd,
            unet_lora_adapter_metadata=self.unet_config.to_dict(),
            text_encoder_lora_adapter_metadata=self.text_config.to_dict(), weight_name=f"{self.name}.safetensors")
        return os.path.join(folder, f"{self.name}.safetensors")

    def save_unprefixed(self, folder):
        """A UNet-only file as a diffusers model writes it: no prefix, unprefixed metadata."""
        self.unet.save_lora_adapter(folder, adapter_name=self.name, weight_name=f"{self.name}.safetensors")
        return os.path.join(folder, f"{self.name}.safetensors")

    def _modules(self, sd):
        out = {}
        for key, value in sd.items():
            module, _, role = key.partition(".lora_")
            out.setdefault(module, {})[role.split(".")[0]] = value.detach().numpy().copy()
        return out

    def save_kohya(self, folder, ldm=False):
        sd = {}
        for module, t in self._modules(self.unet_sd).items():
            name = self.ldm_names[module + ".weight"][: -len(".weight")] if ldm else module
            self._kohya(sd, "lora_unet_" + name.replace(".", "_"), t)
        for module, t in self._modules(self.text_sd).items():
            self._kohya(sd, "lora_te_text_model_" + module.replace(".", "_"), t)
        path = os.path.join(folder, f"{self.name}.safetensors")
        write_safetensors(sd, path, dtype="float16" if ldm else None)  # kohya files are often float16
        return path

    @staticmethod
    def _kohya(sd, stem, t):
        sd[stem + ".lora_down.weight"], sd[stem + ".lora_up.weight"] = t["A"], t["B"]
        sd[stem + ".alpha"] = np.array(KOHYA_ALPHA, np.float32)

    def save_diffusers_old(self, folder):
        """diffusers' pre-PEFT names: attention processors' to_q_lora.down/up, `.lora.down/up`
        elsewhere; no alphas (so both sides use scale 1)."""
        sd = {}
        procs = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
        for module, t in self._modules(self.unet_sd).items():
            if module.endswith(".to_out.0"):
                parent, leaf = module[: -len(".to_out.0")], "to_out.0"
            else:
                parent, leaf = module.rsplit(".", 1)
            if leaf in procs and parent.endswith((".attn1", ".attn2")):
                stem = f"unet.{parent}.processor.{procs[leaf]}"
            else:
                stem = f"unet.{module}.lora"
            sd[stem + ".down.weight"], sd[stem + ".up.weight"] = t["A"], t["B"]
        # CLIP: the attention-processor era wrote self_attn.to_q_lora (attention only); later
        # releases <module>.lora_linear_layer for every module (diffusers reads a file of one or
        # the other, and silently drops to_q_lora keys in a file that also has lora_linear_layer)
        text_procs = {"q_proj": "to_q_lora", "k_proj": "to_k_lora", "v_proj": "to_v_lora", "out_proj": "to_out_lora"}
        text = self._modules(self.text_sd)
        oldest = all(m.rsplit(".", 1)[1] in text_procs for m in text)
        for module, t in text.items():
            parent, leaf = module.rsplit(".", 1)
            stem = (f"text_encoder.text_model.{parent}.{text_procs[leaf]}" if oldest
                    else f"text_encoder.text_model.{module}.lora_linear_layer")
            sd[stem + ".down.weight"], sd[stem + ".up.weight"] = t["A"], t["B"]
        path = os.path.join(folder, f"{self.name}.safetensors")
        write_safetensors(sd, path)
        return path


@pytest.fixture(scope="module")
def ref():
    return reference("base")


@pytest.fixture(scope="module")
def adapters(ref):
    return {name: Adapter(ref, name, seed) for seed, name in enumerate(SCALES)}


@pytest.fixture(scope="module")
def ours(ref, tmp_path_factory):
    return StableDiffusionPipeline(load_components(ref.save_folder(str(tmp_path_factory.mktemp("base")))))


@pytest.fixture
def pipe(ours):
    """The module's pipeline with no LoRA; whatever a test loads is unloaded after it."""
    assert not ours.loaded_loras and not ours.active_loras
    yield ours
    ours.unload_loras()


def _theirs(ref, tmp_path):
    from transformers import CLIPTokenizer

    from models.tokenizer import default_tokenizer

    default_tokenizer().save_vocab(tmp_path / "tokenizer")
    return diffusers.StableDiffusionPipeline(
        vae=ref.vae, text_encoder=copy.deepcopy(ref.text), tokenizer=CLIPTokenizer.from_pretrained(tmp_path / "tokenizer"),
        unet=copy.deepcopy(ref.unet), scheduler=diffusers.DDIMScheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def _torch_outputs(ref, unet, text):
    nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
    with torch.no_grad():
        noise = unet(nchw(ref.latents), torch.from_numpy(ref.timesteps), torch.from_numpy(ref.context)).sample
        hidden = None if text is None else text(torch.from_numpy(ref.ids).long()).last_hidden_state.numpy()
    return noise.permute(0, 2, 3, 1).numpy(), hidden


def _our_outputs(ref, pipe):
    return (pipe.unet([ref.latents, ref.timesteps, ref.context]).numpy(), pipe.text_encoder(ref.ids).numpy())


def _weights(pipe):
    return [np.array(v.numpy()) for net in (pipe.unet, pipe.text_encoder) for v in net.weights]


# -- numerics against diffusers ---------------------------------------------------------------

WRITERS = {"diffusers": "save_diffusers", "kohya": "save_kohya", "kohya_ldm_names": "save_kohya",
           "diffusers_old": "save_diffusers_old"}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_two_loras_match_diffusers_set_adapters(fmt, ref, adapters, pipe, tmp_path):
    paths = {}
    for name, adapter in adapters.items():
        folder = str(tmp_path / name)
        writer = getattr(adapter, WRITERS[fmt])
        paths[name] = writer(folder, ldm=True) if fmt == "kohya_ldm_names" else writer(folder)
    theirs = _theirs(ref, tmp_path)
    extra = {"unet_config": theirs.unet.config} if fmt == "kohya_ldm_names" else {}
    for name, path in paths.items():
        theirs.load_lora_weights(path, adapter_name=name, **extra)
        assert pipe.load_lora(path, activate=False) == name  # the file stem
    theirs.set_adapters(list(SCALES), adapter_weights=list(SCALES.values()))
    pipe.set_loras(list(SCALES.items()))
    ref_noise, ref_text = _torch_outputs(ref, theirs.unet, theirs.text_encoder)
    noise, text = _our_outputs(ref, pipe)
    errors = {"unet": rel_err(noise, ref_noise), "text_encoder": rel_err(text, ref_text)}
    print(fmt, errors)
    assert max(errors.values()) <= TOL, errors
    # the LoRAs matter: far from the base model, and from either LoRA alone
    assert rel_err(ref.ref_noise, ref_noise) > 0.05 and rel_err(ref.ref_text, ref_text) > 0.05
    pipe.set_loras([("a", SCALES["a"])])
    assert rel_err(pipe.unet([ref.latents, ref.timesteps, ref.context]).numpy(), ref_noise) > 0.01


def test_unprefixed_unet_file_matches_diffusers_load_lora_adapter(ref, adapters, pipe, tmp_path):
    unet = copy.deepcopy(ref.unet)
    for name, adapter in adapters.items():
        path = adapter.save_unprefixed(str(tmp_path / name))
        # use_safetensors: without it diffusers reads the file through its .bin path and drops
        # the lora_adapter_metadata (alpha would silently become the rank)
        unet.load_lora_adapter(path, prefix=None, adapter_name=name, use_safetensors=True)
        pipe.load_lora(path, activate=False)
    unet.set_adapters(list(SCALES), weights=list(SCALES.values()))
    pipe.set_loras(list(SCALES.items()))
    ref_noise, _ = _torch_outputs(ref, unet, None)
    noise, text = _our_outputs(ref, pipe)
    assert rel_err(noise, ref_noise) <= TOL
    assert rel_err(ref.ref_noise, ref_noise) > 0.05
    assert rel_err(text, ref.ref_text) <= TOL  # a UNet-only file leaves the text encoder alone
    info = pipe.loaded_loras["a"]
    assert info["networks"] == ["unet"] and info["ranks"] == [2, 4] and info["formats"] == ["peft"]


def test_one_lora_at_a_scale_matches_diffusers(ref, adapters, pipe, tmp_path):
    path = adapters["a"].save_diffusers(str(tmp_path))
    theirs = _theirs(ref, tmp_path)
    theirs.load_lora_weights(path, adapter_name="a")
    theirs.set_adapters(["a"], adapter_weights=[-0.7])
    pipe.load_lora(path, scale=-0.7)
    assert pipe.active_loras == [("a", -0.7)]
    ref_noise, ref_text = _torch_outputs(ref, theirs.unet, theirs.text_encoder)
    noise, text = _our_outputs(ref, pipe)
    assert rel_err(noise, ref_noise) <= TOL and rel_err(text, ref_text) <= TOL


# -- merging: exact restore, switching, no retrace, threads -----------------------------------

def test_unload_and_switching_restore_the_base_bit_for_bit(ref, adapters, pipe, tmp_path):
    base = _weights(pipe)
    a = adapters["a"].save_diffusers(str(tmp_path / "a"))
    b = adapters["b"].save_kohya(str(tmp_path / "b"))
    pipe.load_lora(a, scale=0.5)
    pipe.load_lora(b, scale=1.3)
    after = _weights(pipe)
    assert sum(not np.array_equal(x, y) for x, y in zip(base, after)) > 50
    for loras in ([("a", 1.0)], [("b", -2.0), ("a", 0.25)], [], [("a", 1e3)], [("a", 0.5), ("b", 1.3)]):
        pipe.set_loras(loras)
    np.testing.assert_array_equal(np.concatenate([w.ravel() for w in _weights(pipe)]),
                                  np.concatenate([w.ravel() for w in after]))  # same set, same bits
    pipe.set_loras([])
    assert all(np.array_equal(x, y) for x, y in zip(base, _weights(pipe)))
    assert pipe.lora_memory()["original_copies_bytes"] == 0
    pipe.set_loras([("b", 0.7)])
    pipe.unload_loras()
    assert all(np.array_equal(x, y) for x, y in zip(base, _weights(pipe)))
    assert pipe.loaded_loras == {} and pipe.active_loras == []


def test_switching_does_not_retrace_and_changes_the_image(adapters, pipe, tmp_path):
    path = adapters["a"].save_diffusers(str(tmp_path))
    pipe.load_lora(path, activate=False)
    kw = dict(num_steps=2, seed=3, height=64, width=64)
    base = pipe.generate("a red circle", **kw).latents
    loop = pipe._loops[("ddim", "none")]
    traces = (loop.run.experimental_get_tracing_count(), pipe._encode.experimental_get_tracing_count())
    pipe.set_loras([("a", 1.0)])
    with_lora = pipe.generate("a red circle", **kw).latents
    pipe.set_loras([])
    again = pipe.generate("a red circle", **kw).latents
    assert traces == (loop.run.experimental_get_tracing_count(), pipe._encode.experimental_get_tracing_count())
    assert rel_err(with_lora, base) > 0.01
    np.testing.assert_array_equal(again, base)


def test_text_encoder_lora_changes_the_empty_prompt_context(adapters, pipe, tmp_path):
    path = adapters["a"].save_diffusers(str(tmp_path))
    empty = pipe._unconditional_context(None, 1).copy()
    pipe.load_lora(path)
    with_lora = pipe._unconditional_context(None, 1)
    np.testing.assert_allclose(with_lora, pipe.encode_text([""]), rtol=0, atol=0)
    assert np.abs(with_lora - empty).max() > 1e-3
    pipe.set_loras([])
    np.testing.assert_array_equal(pipe._unconditional_context(None, 1), empty)


def test_loras_applied_holds_the_set_for_the_block(adapters, pipe, tmp_path, ref):
    pipe.load_lora(adapters["a"].save_diffusers(str(tmp_path / "a")), activate=False)
    pipe.load_lora(adapters["b"].save_diffusers(str(tmp_path / "b")), activate=False)
    pipe.set_loras([("b", 1.0)])
    seen, started = [], threading.Event()

    def other():
        started.set()
        pipe.set_loras([])  # must wait for the block to end
        seen.append(("switched", time.perf_counter()))

    with pipe.loras_applied([("a", 0.5)]) as active:
        assert active == [("a", 0.5)]
        t = threading.Thread(target=other)
        t.start()
        started.wait()
        time.sleep(0.3)
        inside = pipe.unet([ref.latents, ref.timesteps, ref.context]).numpy()
        assert pipe.active_loras == [("a", 0.5)] and not seen
        ended = time.perf_counter()
    t.join()
    assert seen and seen[0][1] >= ended
    assert pipe.active_loras == []
    pipe.set_loras([("a", 0.5)])
    np.testing.assert_array_equal(pipe.unet([ref.latents, ref.timesteps, ref.context]).numpy(), inside)
    with pipe.loras_applied([("b", 2.0)], restore=False):
        pass
    assert pipe.active_loras == [("b", 2.0)]
    with pipe.loras_applied([]):
        assert pipe.active_loras == []
    assert pipe.active_loras == [("b", 2.0)]


def test_swap_unet_moves_the_active_loras(adapters, pipe, ref, tmp_path):
    from models.loading import load_unet

    path = adapters["a"].save_diffusers(str(tmp_path))
    old = pipe.unet
    old_base = [np.array(v.numpy()) for v in old.weights]
    pipe.load_lora(path, scale=0.5)
    with_lora = pipe.unet([ref.latents, ref.timesteps, ref.context]).numpy()
    ref.unet.save_pretrained(str(tmp_path / "unet"))
    pipe.swap_unet(load_unet(str(tmp_path)))  # the same base weights, new variables
    try:
        assert pipe.unet is not old and pipe.active_loras == [("a", 0.5)]
        np.testing.assert_allclose(pipe.unet([ref.latents, ref.timesteps, ref.context]).numpy(), with_lora,
                                   rtol=0, atol=1e-5 * np.abs(with_lora).max())
        # the old UNet got its base weights back when it was swapped out
        assert all(np.array_equal(np.asarray(v.numpy()), w) for v, w in zip(old.weights, old_base))
    finally:
        pipe.unload_loras()
        pipe.swap_unet(old)
