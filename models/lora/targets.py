"""Which of our weights each LoRA module updates, by every name the files use for it.

The tables are built from the model's real variables, not from guessed patterns: every Dense
or conv kernel `a.b/c/kernel` is the module `a.b.c` (the checkpoint key map's rule). Each
module is also known by its aliases: CLIP's path without `text_model.` (transformers 5 drops
it), the UNet's original ldm name (`input_blocks.1.1.proj_in`, by the ldm converter's rows),
and kohya's spelling of each with "_" for "." (a collision between two modules is kept as
ambiguous and reported rather than resolved by chance).
Resolution is strict: a module that is no weight of ours, an update whose shape does not fit
(a LoRA for SD 2 or SDXL), a weight updated twice by one file, or a network these models lack
is an error naming the keys and the shapes, before anything is applied.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..checkpoints.keymap import torch_key
from ..checkpoints.ldm_single_file import ldm_unet_keys
from .delta import ShapeMismatch, keras_factors, torch_shape
from .describe import context_width, guess_base
from .errors import LoraMismatchError
from .formats import SDXL_TEXT_ENCODER_1, SDXL_TEXT_ENCODER_2, TRANSFORMER, ParsedLora

NETWORKS = ("unet", "text_encoder")
_AMBIGUOUS = object()


class NetworkTargets:
    """One network's LoRA-able kernels, by module path and by every alias files use."""

    def __init__(self, kind: str, network):
        self.kind, self.network = kind, network
        self.variables = {}
        for v in network.weights:
            if v.path.endswith("/kernel") and len(v.shape) in (2, 4):
                self.variables[torch_key(v.path)[: -len(".weight")]] = v
        dotted = {m: m for m in self.variables}
        if kind == "text_encoder":
            for m in self.variables:
                if m.startswith("text_model."):
                    dotted.setdefault(m[len("text_model."):], m)
        elif kind == "unet":
            cfg = network.config
            ldm = ldm_unet_keys([m + ".weight" for m in self.variables], cfg.down_block_types, cfg.layers_per_block)
            for key, ldm_key in ldm.items():
                dotted.setdefault(ldm_key[: -len(".weight")], key[: -len(".weight")])
        self.dotted = dotted
        self.underscored = {}
        for alias, module in dotted.items():
            u = alias.replace(".", "_")
            seen = self.underscored.get(u)
            self.underscored[u] = module if seen in (None, module) else _AMBIGUOUS

    def find(self, style: str, name: str):
        module = (self.underscored if style == "kohya" else self.dotted).get(name)
        return None if module is _AMBIGUOUS else module

    def module_of(self, variable) -> str:
        """Our module path of one of this network's kernels (the name training writes from)."""
        if not hasattr(self, "_by_path"):
            self._by_path = {v.path: m for m, v in self.variables.items()}
        try:
            return self._by_path[variable.path]
        except KeyError:
            raise KeyError(f"{variable.path} is no LoRA-able kernel of this {self.kind}") from None

    def file_name(self, module: str, style: str) -> str:
        """How a file of `style` names `module`: the inverse of find(), checked against it, so a
        written file resolves back to exactly this weight (an ambiguous kohya spelling is refused)."""
        name = module.replace(".", "_") if style == "kohya" else module
        if self.find(style, name) != module:
            raise LoraMismatchError(f"{self.kind} module {module} has no unambiguous {style} name ({name!r})")
        return name


@dataclasses.dataclass
class Bound:
    """One LoRA module bound to one of our variables, with its update as Keras-layout factors."""

    network: str
    module: str  # our module path
    variable: object
    factor: float
    a: np.ndarray  # [K, r]
    b: np.ndarray  # [r, out]
    keys: tuple
    extra_bytes: int = 0  # memory of factors that are copies, not views, of the file's tensors


def _shown(items, n=8):
    items = list(items)
    return "; ".join(items[:n]) + (f"; ... ({len(items)} in all)" if len(items) > n else "")


def _foreign(network):
    if network in (SDXL_TEXT_ENCODER_1, SDXL_TEXT_ENCODER_2):
        return "SDXL (it has lora_te1_/lora_te2_ or text_encoder_2 weights: two text encoders)"
    if network == TRANSFORMER:
        return "a transformer-based model such as SD3 or Flux (its weights are under transformer.)"
    return None


def resolve(parsed: ParsedLora, targets: dict, what: str = "LoRA file", *, context_dim=None) -> tuple[list, dict]:
    """(bound modules, {network: modules skipped}) for the networks in `targets`; modules of a
    network of ours that this process did not load (a split deployment's stage server) are
    skipped and counted. Raises LoraMismatchError listing every problem."""
    bound, skipped = [], {}
    foreign, unknown, misfit, twice = [], [], [], []
    seen = {}
    for m in parsed.modules:
        if _foreign(m.network):
            foreign.append(m)
            continue
        if m.network not in targets:
            skipped[m.network] = skipped.get(m.network, 0) + 1
            continue
        t = targets[m.network]
        module = t.find(m.style, m.name)
        if module is None:
            unknown.append(f"{m.keys[0]} ({m.network} module {m.name!r})")
            continue
        variable = t.variables[module]
        if (m.network, module) in seen:
            twice.append(f"{seen[(m.network, module)]} and {m.keys[0]} both update {m.network} {module}")
            continue
        seen[(m.network, module)] = m.keys[0]
        try:
            a, b = keras_factors(m.down, m.up, variable.shape)
        except ShapeMismatch as e:
            misfit.append(f"{m.keys[0]} {list(m.down.shape)} with {m.keys[1]} {list(m.up.shape)}: {e} "
                          f"({m.network} {module}, shape {list(torch_shape(variable.shape))})")
            continue
        extra = sum(int(x.nbytes) for x, src in ((a, m.down), (b, m.up)) if not np.shares_memory(x, src))
        bound.append(Bound(m.network, module, variable, m.factor, a, b, m.keys, extra))
    if foreign or unknown or misfit or twice:
        lines = [f"{what} does not fit this model; nothing was applied:"]
        if foreign:
            lines.append(f"  made for {_foreign(foreign[0].network)}, not for this model: e.g. {foreign[0].keys[0]}")
        if misfit:
            lines.append(f"  wrong shapes: {_shown(misfit, 4)}")
        if unknown:
            lines.append(f"  modules this model does not have: {_shown(unknown, 6)}")
        if twice:
            lines.append(f"  weights updated twice: {_shown(twice, 4)}")
        base, ctx = guess_base(parsed), context_width(parsed)
        if ctx is not None and context_dim is not None and ctx != context_dim:
            lines.append(f"  its cross-attention context width is {ctx} (a {base} LoRA), this model's is {context_dim}")
        elif base not in ("sd1", "unknown"):
            lines.append(f"  by its shapes it was made for {base}")
        raise LoraMismatchError("\n".join(lines))
    return bound, skipped


__all__ = ["NETWORKS", "NetworkTargets", "Bound", "resolve"]
