"""Training LoRAs: low-rank factors on frozen Dense / 1x1-conv kernels, written as a LoRA file.

Each targeted layer gets Keras' own LoRA (`layer.enable_lora(rank, lora_alpha)`): the kernel is
frozen and the layer computes with W + alpha / rank * A @ B, A [in, r] (he-uniform) and B [r, out]
(zeros, so step 0 is the base model), both float32 under mixed precision. The merged kernel is
formed inside the traced step (one small matmul per layer per step), so the graph stays compiled
and the rest of the layer (the CPU matmul path of our Conv2D included) is unchanged. Every other
variable of the network is frozen too (biases, norms, convolutions), so only A and B train and
the base weights stay bit for bit as they were.

The file is written through models/lora: module names by targets.NetworkTargets (the same
table that reads LoRA files, inverted and checked against it), layouts by delta.torch_factors,
keys by formats.lora_state_dict; then it is read back and resolved against the base networks,
so a file this module writes always loads.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from models.lora.formats import WRITE_FORMATS, file_style

# Which layers each --lora-targets group adds, by our module path (diffusers' names).
TARGET_GROUPS = {
    "unet": {
        "attn": r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$",
        "proj": r"\.attentions\.\d+\.(proj_in|proj_out)$",
        "ff": r"\.ff\.net\.(0\.proj|2)$",
    },
    "text_encoder": {
        "attn": r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$",
        "ff": r"\.mlp\.(fc1|fc2)$",
    },
}
GROUPS = ("attn", "proj", "ff")


class LoraConfigError(ValueError):
    """A bad LoRA training setting; `field` is the LoraTrainConfig field at fault."""

    def __init__(self, field, message):
        super().__init__(message)
        self.field = field


@dataclasses.dataclass
class LoraTrainConfig:
    rank: int
    alpha: float | None = None  # None: alpha = rank (scale 1)
    text_encoder: bool = False  # also train the text encoder's targets (then it runs every step)
    targets: tuple = ("attn",)  # groups of TARGET_GROUPS
    format: str = "kohya"  # or "diffusers"
    name: str = "lora"  # the file stem: the name <lora:name> tags use

    def __post_init__(self):
        self.targets = tuple(self.targets)

    @property
    def scale_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    def validate(self):
        """Raises LoraConfigError naming the field (the command line turns it into its flag)."""
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise LoraConfigError("rank", f"LoRA rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise LoraConfigError("alpha", f"LoRA alpha must be a positive number, got {self.alpha!r}")
        unknown = [t for t in self.targets if t not in GROUPS]
        if unknown or not self.targets:
            raise LoraConfigError("targets", f"LoRA targets {list(self.targets)}: choose from {', '.join(GROUPS)}")
        try:
            file_style(self.format)
        except ValueError as e:
            raise LoraConfigError("format", str(e)) from None
        if not self.name or any(c in self.name for c in "<>:/\\"):
            raise LoraConfigError("name", f"LoRA name {self.name!r} cannot be a file stem used in <lora:name> tags")

    def layout(self) -> dict:
        """What a checkpoint must have been trained with to be resumed (the format may differ)."""
        return {"rank": self.rank, "alpha": self.scale_alpha, "text_encoder": self.text_encoder,
                "targets": sorted(self.targets)}


class LoraAdapters:
    """Keras LoRA on the targeted layers of some networks ({"unet": ..., "text_encoder": ...})."""

    def __init__(self, networks: dict, config: LoraTrainConfig):
        import keras

        from models.lora.targets import NetworkTargets

        config.validate()
        self.config = config
        self.layers = []  # (network, module, layer)
        for kind, network in networks.items():
            targets = NetworkTargets(kind, network)
            patterns = [re.compile(TARGET_GROUPS[kind][g]) for g in config.targets if g in TARGET_GROUPS[kind]]
            found = []
            for layer in network._flatten_layers(include_self=False, recursive=True):
                kernel = getattr(layer, "_kernel", None)
                if not isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)) or kernel is None:
                    continue
                module = targets.module_of(kernel)
                if any(p.search(module) for p in patterns):
                    if isinstance(layer, keras.layers.Conv2D) and tuple(layer.kernel_size) != (1, 1):
                        raise ValueError(f"{kind} {module}: only Dense layers and 1x1 convolutions take a LoRA here")
                    found.append((kind, module, layer))
            if not found:
                raise ValueError(f"no {kind} layer matches the LoRA targets {list(config.targets)}")
            self.layers += sorted(found, key=lambda x: x[1])
            for kind_, module, layer in found:
                layer.enable_lora(config.rank, lora_alpha=config.scale_alpha)
            self._targets = getattr(self, "_targets", {})
            self._targets[kind] = targets
        lora = {id(v) for _, _, layer in self.layers for v in (layer.lora_kernel_a, layer.lora_kernel_b)}
        for network in networks.values():
            for v in network.weights:
                if id(v) not in lora:
                    v.trainable = False

    @property
    def trainable_variables(self) -> list:
        return [v for _, _, layer in self.layers for v in (layer.lora_kernel_a, layer.lora_kernel_b)]

    def variable_names(self) -> list:
        """Each trainable variable as `network:module/a|b [shape]`, to check a checkpoint against."""
        return [f"{kind}:{module}/{ab} {list(v.shape)}" for kind, module, layer in self.layers
                for ab, v in (("a", layer.lora_kernel_a), ("b", layer.lora_kernel_b))]

    def modules(self, values=None, fmt=None) -> list:
        """(network, name in the style of `fmt` (default: the config's), down, up, alpha) per
        layer, PyTorch layout, from `values` (e.g. the EMA's, in trainable_variables order) or the
        variables themselves."""
        from models.lora.delta import torch_factors

        values = list(values) if values is not None else [np.asarray(v.numpy()) for v in self.trainable_variables]
        style = file_style(fmt or self.config.format)
        out = []
        for i, (kind, module, layer) in enumerate(self.layers):
            down, up = torch_factors(values[2 * i], values[2 * i + 1], layer._kernel.shape)
            out.append((kind, self._targets[kind].file_name(module, style), down, up, self.config.scale_alpha))
        return out

    def parameter_count(self) -> int:
        return sum(int(np.prod(v.shape)) for v in self.trainable_variables)


def save_lora(path, adapters: LoraAdapters, base_networks: dict, values=None, metadata=None, fmt=None):
    """Write the LoRA file and check it: read back by our loader, every module resolves to the
    same weight of the base networks with the same update shape (LoraMismatchError otherwise)."""
    from models.checkpoints import write_safetensors
    from models.lora.files import read_lora
    from models.lora.formats import lora_state_dict
    from models.lora.targets import NetworkTargets, resolve

    fmt = fmt or adapters.config.format
    tensors, meta = lora_state_dict(adapters.modules(values, fmt), fmt)
    write_safetensors(tensors, path, metadata={**(metadata or {}), **meta})
    parsed = read_lora(path)
    targets = {k: NetworkTargets(k, n) for k, n in base_networks.items() if k in {m[0] for m in adapters.layers}}
    bound, _ = resolve(parsed, targets, f"written LoRA {path}")
    wanted = sorted((kind, module) for kind, module, _ in adapters.layers)
    if sorted((b.network, b.module) for b in bound) != wanted:
        raise AssertionError(f"{path} does not resolve back to the trained modules")
    return path


__all__ = ["LoraConfigError", "LoraTrainConfig", "LoraAdapters", "save_lora", "TARGET_GROUPS", "GROUPS", "WRITE_FORMATS"]
