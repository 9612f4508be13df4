"""KerasCV's Stable Diffusion weight files (kcv_encoder.h5, kcv_diffusion_model.h5,
kcv_decoder.h5, vae_encoder.h5) and fine-tunes saved from KerasCV's models.

KerasCV's layers have auto-generated names (dense_17, res_block_3, ...) that depend on what
else was built in the session, so names cannot be mapped. Keras' own legacy loader ignores
them too and loads by ORDER: the file's `layer_names`, each layer's `weight_names`. We do the
same: the tables below list, for each KerasCV model, its layers in `model.layers` order and
each layer's weights in creation order (e.g. a ResBlock creates its 1x1 residual projection
last, in build()), with the diffusers key each weight becomes. Every shape is checked, so a
file of another model or another ordering fails instead of loading scrambled.

Keras 3 `.weights.h5` files (saved from KerasCV models under Keras 3) name groups after the
attribute path instead (`layers/res_block_3/entry_flow/padded_conv2d/conv2d/vars/0`, the
top-level names numbered per class in `model.layers` order); the same tables carry those paths.

KerasCV's port differs from SD in two numerical details (tanh GELU, 1e-5 attention GroupNorm
eps); by default the models are built with KERAS_CV_UNET / KERAS_CV_VAE to reproduce
KerasCV's outputs exactly, `match_kerascv=False` uses SD's original maths instead.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from ..config import KERAS_CV_UNET, KERAS_CV_VAE, TextEncoderConfig, UNetConfig, VAEConfig
from .assemble import build_text_encoder, build_unet, build_vae, wanted
from .errors import CheckpointError, CheckpointMismatchError
from .safetensors_io import require_file

KINDS = ("text_encoder", "diffusion_model", "decoder", "image_encoder")
# The published file names (huggingface.co/fchollet/stable-diffusion) and Keras 3 equivalents.
FILE_NAMES = {
    "text_encoder": ("kcv_encoder.h5", "text_encoder.h5", "text_encoder.weights.h5"),
    "diffusion_model": ("kcv_diffusion_model.h5", "diffusion_model.h5", "diffusion_model.weights.h5"),
    "decoder": ("kcv_decoder.h5", "decoder.h5", "decoder.weights.h5"),
    "image_encoder": ("vae_encoder.h5", "image_encoder.h5", "image_encoder.weights.h5"),
}


@dataclasses.dataclass(frozen=True)
class W:
    """One weight: its path inside the layer (Keras 3 files), diffusers key, PyTorch shape."""

    path: str
    key: str
    shape: tuple
    embedding: bool = False


@dataclasses.dataclass(frozen=True)
class KLayer:
    """A KerasCV layer with weights: its class (snake case) and weights in creation order."""

    cls: str
    weights: tuple


# -- weight groups of KerasCV's building blocks --------------------------------------------

def _dense(key, cin, cout, at="", bias=True):
    ws = [W(f"{at}vars/0", f"{key}.weight", (cout, cin))]
    return ws + ([W(f"{at}vars/1", f"{key}.bias", (cout,))] if bias else [])


def _conv(key, cin, cout, k, at=""):
    """PaddedConv2D: a ZeroPadding2D and a Conv2D named `conv2d` inside."""
    return [W(f"{at}conv2d/vars/0", f"{key}.weight", (cout, cin, k, k)), W(f"{at}conv2d/vars/1", f"{key}.bias", (cout,))]


def _norm(key, c, at=""):
    return [W(f"{at}vars/0", f"{key}.weight", (c,)), W(f"{at}vars/1", f"{key}.bias", (c,))]


def _unet_resblock(key, cin, cout, temb):
    ws = (_norm(f"{key}.norm1", cin, "entry_flow/group_normalization/")
          + _conv(f"{key}.conv1", cin, cout, 3, "entry_flow/padded_conv2d/")
          + _dense(f"{key}.time_emb_proj", temb, cout, "embedding_flow/dense/")
          + _norm(f"{key}.norm2", cout, "exit_flow/group_normalization/")
          + _conv(f"{key}.conv2", cout, cout, 3, "exit_flow/padded_conv2d/"))
    if cin != cout:
        ws += _conv(f"{key}.conv_shortcut", cin, cout, 1, "residual_projection/")
    return KLayer("res_block", tuple(ws))


def _attention(key, c, ctx, at):
    return (_dense(f"{key}.to_q", c, c, f"{at}to_q/", bias=False) + _dense(f"{key}.to_k", ctx, c, f"{at}to_k/", bias=False)
            + _dense(f"{key}.to_v", ctx, c, f"{at}to_v/", bias=False) + _dense(f"{key}.to_out.0", c, c, f"{at}out_proj/"))


def _spatial_transformer(key, c, ctx):
    b, at = f"{key}.transformer_blocks.0", "transformer_block/"
    ws = (_norm(f"{key}.norm", c, "norm/") + _conv(f"{key}.proj_in", c, c, 1, "proj1/")
          + _norm(f"{b}.norm1", c, f"{at}norm1/") + _attention(f"{b}.attn1", c, c, f"{at}attn1/")
          + _norm(f"{b}.norm2", c, f"{at}norm2/") + _attention(f"{b}.attn2", c, ctx, f"{at}attn2/")
          + _norm(f"{b}.norm3", c, f"{at}norm3/")
          + _dense(f"{b}.ff.net.0.proj", c, 8 * c, f"{at}geglu/dense/") + _dense(f"{b}.ff.net.2", 4 * c, c, f"{at}dense/")
          + _conv(f"{key}.proj_out", c, c, 1, "proj2/"))
    return KLayer("spatial_transformer", tuple(ws))


def _vae_resblock(key, cin, cout):
    ws = (_norm(f"{key}.norm1", cin, "norm1/") + _conv(f"{key}.conv1", cin, cout, 3, "conv1/")
          + _norm(f"{key}.norm2", cout, "norm2/") + _conv(f"{key}.conv2", cout, cout, 3, "conv2/"))
    if cin != cout:
        ws += _conv(f"{key}.conv_shortcut", cin, cout, 1, "residual_projection/")
    return KLayer("resnet_block", tuple(ws))


def _vae_attention(key, c):
    ws = _norm(f"{key}.group_norm", c, "norm/")
    for ours, theirs in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
        ws += _conv(f"{key}.{ours}", c, c, 1, f"{theirs}/")  # 1x1 convs in KerasCV, linear in ours
    return KLayer("attention_block", tuple(ws))


def _padded_conv(key, cin, cout, k):
    return KLayer("padded_conv2d", tuple(_conv(key, cin, cout, k)))


def _group_norm(key, c):
    return KLayer("group_normalization", tuple(_norm(key, c)))


# -- the four models, in `model.layers` order -------------------------------------------------

def diffusion_model_layers(c: UNetConfig) -> list[KLayer]:
    """KerasCV's DiffusionModel. Keras orders functional layers by depth, so the second
    timestep Dense comes after conv_in (both hang off the inputs, the Dense one step deeper)."""
    ch, L, last = c.block_out_channels, c.layers_per_block, len(c.block_out_channels) - 1
    temb, ctx = 4 * ch[0], c.cross_attention_dim
    layers = [KLayer("dense", tuple(_dense("time_embedding.linear_1", ch[0], temb))),
              _padded_conv("conv_in", c.in_channels, ch[0], 3),
              KLayer("dense", tuple(_dense("time_embedding.linear_2", temb, temb)))]
    x, skips = ch[0], [ch[0]]
    for i, kind in enumerate(c.down_block_types):
        for j in range(L):
            layers.append(_unet_resblock(f"down_blocks.{i}.resnets.{j}", x, ch[i], temb))
            x = ch[i]
            if kind.startswith("CrossAttn"):
                layers.append(_spatial_transformer(f"down_blocks.{i}.attentions.{j}", x, ctx))
            skips.append(x)
        if i < last:
            layers.append(_padded_conv(f"down_blocks.{i}.downsamplers.0.conv", x, x, 3))
            skips.append(x)
    layers += [_unet_resblock("mid_block.resnets.0", x, x, temb), _spatial_transformer("mid_block.attentions.0", x, ctx),
               _unet_resblock("mid_block.resnets.1", x, x, temb)]
    for i, kind in enumerate(c.up_block_types):
        out = ch[last - i]
        for j in range(L + 1):
            layers.append(_unet_resblock(f"up_blocks.{i}.resnets.{j}", x + skips.pop(), out, temb))
            x = out
            if kind.startswith("CrossAttn"):
                layers.append(_spatial_transformer(f"up_blocks.{i}.attentions.{j}", x, ctx))
        if i < last:
            layers.append(KLayer("upsample", tuple(_conv(f"up_blocks.{i}.upsamplers.0.conv", x, x, 3, "conv/"))))
    return layers + [_group_norm("conv_norm_out", x), _padded_conv("conv_out", x, c.out_channels, 3)]


def decoder_layers(c: VAEConfig) -> list[KLayer]:
    """KerasCV's Decoder (a Sequential): Rescaling(1/0.18215) has no weights, then post_quant_conv."""
    ch, L, n = c.block_out_channels, c.layers_per_block, len(c.block_out_channels)
    x = ch[-1]
    layers = [_padded_conv("post_quant_conv", c.latent_channels, c.latent_channels, 1),
              _padded_conv("decoder.conv_in", c.latent_channels, x, 3),
              _vae_resblock("decoder.mid_block.resnets.0", x, x), _vae_attention("decoder.mid_block.attentions.0", x),
              _vae_resblock("decoder.mid_block.resnets.1", x, x)]
    for i, out in enumerate(reversed(ch)):
        for j in range(L + 1):
            layers.append(_vae_resblock(f"decoder.up_blocks.{i}.resnets.{j}", x, out))
            x = out
        if i < n - 1:
            layers.append(_padded_conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", x, x, 3))
    return layers + [_group_norm("decoder.conv_norm_out", x), _padded_conv("decoder.conv_out", x, c.out_channels, 3)]


def image_encoder_layers(c: VAEConfig) -> list[KLayer]:
    """KerasCV's ImageEncoder: ends with quant_conv (its Lambda keeps mean * 0.18215)."""
    ch, L, n = c.block_out_channels, c.layers_per_block, len(c.block_out_channels)
    x = ch[0]
    layers = [_padded_conv("encoder.conv_in", c.in_channels, x, 3)]
    for i, out in enumerate(ch):
        for j in range(L):
            layers.append(_vae_resblock(f"encoder.down_blocks.{i}.resnets.{j}", x, out))
            x = out
        if i < n - 1:
            layers.append(_padded_conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", x, x, 3))
    z = 2 * c.latent_channels
    return layers + [
        _vae_resblock("encoder.mid_block.resnets.0", x, x), _vae_attention("encoder.mid_block.attentions.0", x),
        _vae_resblock("encoder.mid_block.resnets.1", x, x), _group_norm("encoder.conv_norm_out", x),
        _padded_conv("encoder.conv_out", x, z, 3), _padded_conv("quant_conv", z, z, 1),
    ]


def text_encoder_layers(c: TextEncoderConfig) -> list[KLayer]:
    """KerasCV's TextEncoder: CLIPEmbedding, the encoder layers, the final LayerNorm."""
    h, f = c.hidden_size, c.intermediate_size
    layers = [KLayer("clip_embedding", (
        W("token_embedding/vars/0", "text_model.embeddings.token_embedding.weight", (c.vocab_size, h), True),
        W("position_embedding/vars/0", "text_model.embeddings.position_embedding.weight",
          (c.max_position_embeddings, h), True)))]
    for i in range(c.num_hidden_layers):
        k = f"text_model.encoder.layers.{i}"
        ws = (_norm(f"{k}.layer_norm1", h, "layer_norm1/") + _dense(f"{k}.self_attn.q_proj", h, h, "clip_attn/q_proj/")
              + _dense(f"{k}.self_attn.k_proj", h, h, "clip_attn/k_proj/")
              + _dense(f"{k}.self_attn.v_proj", h, h, "clip_attn/v_proj/")
              + _dense(f"{k}.self_attn.out_proj", h, h, "clip_attn/out_proj/")
              + _norm(f"{k}.layer_norm2", h, "layer_norm2/") + _dense(f"{k}.mlp.fc1", h, f, "fc1/")
              + _dense(f"{k}.mlp.fc2", f, h, "fc2/"))
        layers.append(KLayer("clip_encoder_layer", tuple(ws)))
    return layers + [KLayer("layer_normalization", tuple(_norm("text_model.final_layer_norm", h)))]


def default_configs(match_kerascv: bool = True) -> dict:
    return {
        "text_encoder": TextEncoderConfig(),
        "diffusion_model": KERAS_CV_UNET if match_kerascv else UNetConfig(),
        "decoder": KERAS_CV_VAE if match_kerascv else VAEConfig(),
        "image_encoder": KERAS_CV_VAE if match_kerascv else VAEConfig(),
    }


_LAYERS = {"text_encoder": text_encoder_layers, "diffusion_model": diffusion_model_layers,
           "decoder": decoder_layers, "image_encoder": image_encoder_layers}


def keras3_paths(layers: list[KLayer]) -> list[tuple[str, W]]:
    """Paths in a Keras 3 .weights.h5: `layers/<class>[_n]/...`, numbered per class in order."""
    counts: dict[str, int] = {}
    out = []
    for layer in layers:
        n = counts.get(layer.cls, 0)
        counts[layer.cls] = n + 1
        name = layer.cls if n == 0 else f"{layer.cls}_{n}"
        out += [(f"layers/{name}/{w.path}", w) for w in layer.weights]
    return out


# -- reading files --------------------------------------------------------------------------

def _attr_list(group, name) -> list[str]:
    """Keras splits attributes over 64 kB into name0, name1, ...; values may be bytes."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values += list(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _legacy_candidates(f) -> list[tuple[str, list]]:
    """Flat weight lists the legacy loader would see: the whole file (layers in layer_names
    order), and each single layer group (a model nested in a trainer model)."""
    root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
    if "layer_names" not in root.attrs and "layer_names0" not in root.attrs:
        return []
    per_layer = []
    for name in _attr_list(root, "layer_names"):
        g = root[name]
        per_layer.append((name, [(f"{name}/{w}", g[w]) for w in _attr_list(g, "weight_names")]))
    flat = [x for _, ws in per_layer for x in ws]
    return [("all layers", flat)] + [(f"layer {n!r}", ws) for n, ws in per_layer if ws and len(per_layer) > 1]


def _torch_shape(shape, embedding):
    shape = tuple(shape)
    if embedding:
        return shape
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return shape[::-1]
    return shape


def _array(ds, path):
    """The dataset's values, memory-mapped when stored plainly (Keras writes contiguous,
    unfiltered datasets), so a 3.4 GB diffusion model costs page cache, not a RAM copy."""
    offset = ds.id.get_offset()
    if offset is not None and ds.chunks is None and ds.dtype.kind == "f" and ds.size:
        return np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)
    return ds[()]


def _to_torch(array, embedding):
    a = np.asarray(array)
    if a.dtype.kind == "f" and a.dtype != np.float32:
        a = a.astype(np.float32)
    if embedding:
        return a
    if a.ndim == 4:
        return a.transpose(3, 2, 0, 1)
    if a.ndim == 2:
        return a.T
    return a


def _match(entries, weights: list[W]) -> str | None:
    """None when `entries` (name, dataset) fit `weights` one to one, else why not."""
    if len(entries) != len(weights):
        return f"{len(entries)} weights, expected {len(weights)}"
    for i, ((name, ds), w) in enumerate(zip(entries, weights)):
        if _torch_shape(ds.shape, w.embedding) != w.shape:
            return (f"weight #{i} {name!r} has shape {tuple(ds.shape)}, expected {w.key} "
                    f"with PyTorch shape {w.shape}")
    return None


def _keras3_candidates(f) -> list:
    groups = []
    if "layers" in f:
        groups.append(f)

    def visit(name, obj):
        if hasattr(obj, "keys") and "layers" in obj and name:
            groups.append(obj)

    f.visititems(visit)
    return groups


def _open(path):
    import h5py

    path = require_file(path)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"{path} is not a readable HDF5 (.h5) file: {e}") from None


def _locate(f, path, kinds, configs):
    """(kind, [(name, dataset)], [W]) for the first of `kinds` whose layout the file fits."""
    legacy = _legacy_candidates(f)
    keras3 = _keras3_candidates(f) if not legacy else []
    if not legacy and not keras3:
        raise CheckpointError(
            f"{path} is an HDF5 file but not a Keras weight file (no layer_names attribute, no layers/ group)"
        )
    reasons = []
    for kind in kinds:
        layers = _LAYERS[kind](configs[kind])
        weights = [w for layer in layers for w in layer.weights]
        for where, entries in legacy:
            why = _match(entries, weights)
            if why is None:
                return kind, entries, weights
            reasons.append(f"as {kind} ({where}): {why}")
        paths = keras3_paths(layers)
        for group in keras3:
            missing = [p for p, _ in paths if p not in group]
            if missing:
                reasons.append(f"as {kind} (group {group.name!r}): {len(missing)} paths missing, e.g. {missing[0]}")
                continue
            entries = [(p, group[p]) for p, _ in paths]
            why = _match(entries, weights)
            if why is None:
                return kind, entries, weights
            reasons.append(f"as {kind} (group {group.name!r}): {why}")
    raise CheckpointMismatchError(
        f"{path} does not match KerasCV's SD v1 {' / '.join(kinds)} layout:\n  " + "\n  ".join(reasons[:8])
    )


def classify_kerascv_h5(path, kinds=KINDS, configs: dict | None = None) -> str:
    """Which KerasCV model a file holds, from shapes only (nothing large is read)."""
    with _open(path) as f:
        return _locate(f, path, kinds, {**default_configs(), **(configs or {})})[0]


def read_kerascv_h5(path, kinds=KINDS, configs: dict | None = None) -> tuple[str, dict]:
    """(kind, diffusers-named state dict) for the first of `kinds` whose layout the file fits."""
    path = require_file(path)
    with _open(path) as f:
        kind, entries, weights = _locate(f, path, kinds, {**default_configs(), **(configs or {})})
        return kind, {w.key: _to_torch(_array(ds, path), w.embedding) for (_, ds), w in zip(entries, weights)}


def find_kerascv_file(folder, kind):
    for name in FILE_NAMES[kind]:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def is_kerascv_folder(folder) -> bool:
    return find_kerascv_file(folder, "diffusion_model") is not None or find_kerascv_file(folder, "text_encoder") is not None


def load_kerascv_unet(path, *, match_kerascv=True, dtype=None, unet_config: UNetConfig | None = None):
    """A KerasCV diffusion model file (published or fine-tuned) as our UNet."""
    config = unet_config or default_configs(match_kerascv)["diffusion_model"]
    _, sd = read_kerascv_h5(path, ("diffusion_model",), {"diffusion_model": config})
    return build_unet(config, sd, dtype=dtype, what=f"KerasCV diffusion model {path}")


def load_kerascv_folder(folder, *, match_kerascv=True, dtype=None):
    """Components from a folder of KerasCV files (text encoder, diffusion model, decoder
    required; without the image encoder, img2img/inpainting are unavailable)."""
    from ..components import Components
    from .diffusers_folder import load_schedule, load_tokenizer_folder

    folder = os.fspath(folder)
    configs = default_configs(match_kerascv)
    paths = {kind: find_kerascv_file(folder, kind) for kind in KINDS}
    missing = [FILE_NAMES[k][0] for k in ("text_encoder", "diffusion_model", "decoder") if paths[k] is None]
    if missing:
        raise CheckpointError(f"{folder} is missing the KerasCV files {missing}")
    part = {"text_encoder": "text_encoder", "diffusion_model": "unet", "decoder": "decoder", "image_encoder": "encoder"}
    sds = {kind: read_kerascv_h5(p, (kind,), configs)[1] if wanted(part[kind]) else {}  # (h5 reads are eager)
           for kind, p in paths.items() if p is not None}
    text_encoder = build_text_encoder(configs["text_encoder"], sds["text_encoder"], dtype=dtype,
                                      what=paths["text_encoder"])
    unet = build_unet(configs["diffusion_model"], sds["diffusion_model"], dtype=dtype, what=paths["diffusion_model"])
    vae_sd = {**sds["decoder"], **sds.get("image_encoder", {})}
    encoder, decoder = build_vae(configs["decoder"], vae_sd, dtype=dtype, what=f"KerasCV VAE in {folder}",
                                 with_encoder=paths["image_encoder"] is not None)
    return Components(
        text_encoder=text_encoder, unet=unet, decoder=decoder, encoder=encoder,
        tokenizer=load_tokenizer_folder(None), vae_config=configs["decoder"], schedule=load_schedule(None),
        name=os.path.basename(os.path.normpath(folder)), source=folder,
    )
