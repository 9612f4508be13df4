"""Applying LoRAs by merging them into the weights, and taking them out again bit for bit.

    W = W0 + sum_i scale_i * factor_i * up_i @ down_i      (factor = alpha / rank, or PEFT's)

is computed in float32 from an exact copy of W0 and cast to the variable's dtype. The copy of
every touched weight is kept for as long as some active LoRA touches it, so switching to
another set (or to none) starts again from W0: the base is restored bit for bit whatever was
applied in between, and no error accumulates. Only the weights whose update changes are
rewritten, and a set that is already active costs nothing.

The networks are never rebuilt: the traced denoising loop and text encoder read their
variables at every call, so a switch takes effect at the next call without retracing.

Thread safety: every method takes one re-entrant lock, and `applied(...)` holds it for the
whole `with` block, so a generation run inside the block sees exactly that set while other
threads wanting to switch (through this API) wait. A generation started outside any block is
not protected from a concurrent switch; a server that runs each request inside
`with pipe.loras_applied(request_loras):` (an empty list for none) needs nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import numbers
import os
import threading

import numpy as np

from ..checkpoints.assemble import is_loaded
from ..errors import InvalidInput
from .delta import merged
from .describe import describe
from .files import default_name, file_size, read_lora
from .prompt_tags import lookup_loras
from .targets import NETWORKS, NetworkTargets, resolve

_serial = itertools.count(1)


@dataclasses.dataclass
class LoadedLora:
    name: str
    path: str
    parsed: object  # formats.ParsedLora: the factors as stored (re-bound when a network is swapped)
    bound: list  # targets.Bound, one per updated weight
    skipped: dict  # {network: modules} of networks this process did not load
    description: dict
    serial: int  # tells two loads of one name apart (what is merged is keyed by it)

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.parsed.modules) + sum(b.extra_bytes for b in self.bound)


class LoraMerger:
    """The LoRAs a pipeline has loaded, the active set, and the original weights it replaced."""

    def __init__(self, networks: dict, on_change=None):
        """`networks`: {"unet": ..., "text_encoder": ...}; NotLoaded stand-ins are left out.
        `on_change(networks)` is called with the names of the networks whose weights changed."""
        self._lock = threading.RLock()
        self._networks = {k: n for k, n in networks.items() if k in NETWORKS and is_loaded(n)}
        self._targets: dict = {}
        self._loaded: dict[str, LoadedLora] = {}
        self._active: list = []
        self._originals: dict = {}  # id(variable) -> (variable, exact copy of W0, network)
        self._merged: dict = {}  # id(variable) -> what is merged into it now
        self._on_change = on_change

    # -- facts -------------------------------------------------------------------------
    @property
    def lock(self):
        return self._lock

    @property
    def active(self) -> list:
        with self._lock:
            return list(self._active)

    @property
    def loaded(self) -> dict:
        """{name: description} of every loaded LoRA (see models.lora.describe)."""
        with self._lock:
            return {n: dict(lora.description) for n, lora in self._loaded.items()}

    def memory(self) -> dict:
        """Bytes held: exact copies of the touched weights, and the LoRA factors."""
        with self._lock:
            return {"original_copies_bytes": sum(int(np.prod(o.shape)) * o.dtype.size for _, o, _ in self._originals.values()),
                    "lora_tensor_bytes": sum(lora.nbytes for lora in self._loaded.values()),
                    "touched_weights": len(self._originals)}

    # -- loading -----------------------------------------------------------------------
    def _targets_for(self, kind):
        if kind not in self._targets:
            self._targets[kind] = NetworkTargets(kind, self._networks[kind])
        return self._targets[kind]

    def _context_dim(self):
        unet = self._networks.get("unet")
        return getattr(getattr(unet, "config", None), "cross_attention_dim", None)

    def load(self, path, scale: float = 1.0, name: str | None = None, *, activate: bool = True,
             allow_pickle: bool = False) -> str:
        """Read, check and register a LoRA file (replacing one of the same name); with `activate`
        add it to the active set at `scale` (or change its scale there). Returns its name."""
        path = os.fspath(path)
        name = default_name(path) if name is None else str(name)
        if not name or "<" in name or ">" in name or ":" in name:
            raise InvalidInput(f"LoRA name {name!r} cannot be written in a <lora:name> tag", "bad_lora_name")
        scale = _check_scale(scale, name)
        what = f"LoRA file {path}"
        parsed = read_lora(path, allow_pickle=allow_pickle)  # outside the lock: file reading
        with self._lock:
            targets = {k: self._targets_for(k) for k in self._networks}
            bound, skipped = resolve(parsed, targets, what, context_dim=self._context_dim())
            info = describe(parsed, name=name, path=path, size_bytes=file_size(path))
            info["skipped_modules"] = skipped
            self._loaded[name] = LoadedLora(name, path, parsed, bound, skipped, info, next(_serial))
            if activate:
                self._apply([(n, s) for n, s in self._active if n != name] + [(name, scale)])
            else:  # a replaced LoRA that was active stays so, with its new weights
                self._apply(list(self._active))
        return name

    def unload(self, names=None):
        """Forget these LoRAs (None: all), restoring the weights they changed."""
        with self._lock:
            if names is None:
                drop = set(self._loaded)
            else:
                names = [names] if isinstance(names, str) else list(names)
                drop = {n for n, _ in lookup_loras([(n, 0.0) for n in names], self._loaded)}  # unknown: an error
            self._apply([(n, s) for n, s in self._active if n not in drop])
            for n in drop:
                del self._loaded[n]

    # -- the active set ----------------------------------------------------------------
    def normalized(self, loras) -> list:
        """[(name as loaded, scale)] for [(name, scale)] or names (at 1.0): what `active` will say
        once `set(loras)` ran. An unknown name is InvalidInput("unknown_lora")."""
        with self._lock:
            return lookup_loras(_pairs(loras), self._loaded)

    def set(self, loras) -> list:
        """Make exactly these [(name, scale)] (or names, at 1.0) active; [] restores the base."""
        with self._lock:
            wanted = self.normalized(loras)
            self._apply(wanted)
            return list(self._active)

    @contextlib.contextmanager
    def applied(self, loras, restore: bool = True):
        """Within the block exactly this set is active and no other thread can change it.
        On exit the previous set comes back (`restore=False` leaves this one: cheaper when the
        next block is likely to ask for the same set)."""
        with self._lock:
            previous = list(self._active)
            self.set(loras)
            try:
                yield list(self._active)
            finally:
                if restore:
                    self._apply([(n, s) for n, s in previous if n in self._loaded])

    def replace_network(self, kind: str, network):
        """Before a pipeline swaps `kind` (its UNet) for `network`: the old one gets its base
        weights back and the loaded LoRAs are re-bound to the new one and re-applied. Raises,
        changing nothing, when a loaded LoRA does not fit the new network."""
        with self._lock:
            new_targets = NetworkTargets(kind, network) if is_loaded(network) else None
            rebound = {}
            for name, lora in self._loaded.items():
                kept = [b for b in lora.bound if b.network != kind]
                if new_targets is None:
                    count = sum(1 for m in lora.parsed.modules if m.network == kind)
                    rebound[name] = kept, count
                    continue
                bound, _ = resolve(lora.parsed, {kind: new_targets}, f"LoRA file {lora.path}",
                                   context_dim=getattr(network.config, "cross_attention_dim", None))
                rebound[name] = kept + bound, 0
            active = list(self._active)
            self._apply([])
            self._targets.pop(kind, None)
            self._networks.pop(kind, None)
            if new_targets is not None:
                self._networks[kind], self._targets[kind] = network, new_targets
            for name, (bound, skipped) in rebound.items():
                lora = self._loaded[name]
                lora.bound, lora.serial = bound, next(_serial)
                lora.skipped.pop(kind, None)
                if skipped:
                    lora.skipped[kind] = skipped
                lora.description["skipped_modules"] = dict(lora.skipped)
            self._apply(active)

    # -- the merge ---------------------------------------------------------------------
    def _apply(self, loras):
        try:
            self._merge(loras)
        except BaseException:
            self._merge([])  # never leave half a set applied
            raise

    def _merge(self, loras):
        plan: dict = {}
        for name, scale in loras:
            lora = self._loaded[name]
            if scale == 0.0:
                continue
            for b in lora.bound:
                entry = plan.setdefault(id(b.variable), (b.variable, b.network, [], []))
                entry[2].append((scale * b.factor, b.a, b.b))
                entry[3].append((lora.serial, scale))
        changed = set()
        for key in [k for k in self._originals if k not in plan]:
            variable, original, network = self._originals.pop(key)
            variable.assign(original)
            self._merged.pop(key, None)
            changed.add(network)
        for key, (variable, network, parts, signature) in plan.items():
            signature = tuple(signature)
            if self._merged.get(key) == signature:
                continue
            if key not in self._originals:
                self._originals[key] = (variable, _exact_copy(variable), network)
            original = self._originals[key][1]
            variable.assign(merged(original, parts, tuple(original.shape)))
            self._merged[key] = signature
            changed.add(network)
        self._active = [(n, s) for n, s in loras]
        if changed and self._on_change is not None:
            self._on_change(changed)


def _exact_copy(variable):
    """A tensor that owns a copy of the variable's value (restoring assigns it back, bit for bit;
    TensorFlow copies before any in-place update of a shared buffer, so the copy stays intact)."""
    import tensorflow as tf

    return tf.raw_ops.DeepCopy(x=tf.convert_to_tensor(variable))


def _check_scale(scale, name):
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise InvalidInput(f"LoRA {name!r}: scale must be a finite number, got {scale!r}", "bad_lora_scale")
    return float(scale)


def _pairs(loras):
    out = []
    for item in loras or ():
        if isinstance(item, str):
            out.append((item, 1.0))
            continue
        try:
            name, scale = item
        except (TypeError, ValueError):
            raise InvalidInput(f"a LoRA is a name or a (name, scale) pair, got {item!r}", "bad_lora_scale") from None
        out.append((str(name), _check_scale(scale, name)))
    return out


__all__ = ["LoraMerger", "LoadedLora"]
