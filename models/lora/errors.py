"""The errors LoRA loading raises: subclasses of the checkpoint loaders' errors, so a caller that
already catches CheckpointError (the web layer, the CLI) handles LoRA files the same way."""

from __future__ import annotations

from ..checkpoints.errors import CheckpointError, CheckpointMismatchError, UnsupportedCheckpointError


class LoraError(CheckpointError):
    """A LoRA file that cannot be read or used (missing, corrupt, not a LoRA, a pickle without opt-in)."""


class LoraMismatchError(LoraError, CheckpointMismatchError):
    """The file's keys or shapes do not fit this model: unknown keys or modules, or a LoRA made for
    another base (SD 2, SDXL). Nothing is applied when this is raised."""


class UnsupportedLoraError(LoraError, UnsupportedCheckpointError):
    """A readable adapter of a kind this loader does not merge (LyCORIS LoHa/LoKr, DoRA, ...)."""


__all__ = ["LoraError", "LoraMismatchError", "UnsupportedLoraError"]
