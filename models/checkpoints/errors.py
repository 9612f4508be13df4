"""Errors every checkpoint loader raises, so callers can catch one family.

`CheckpointMismatchError` (wrong keys or shapes) lives in models.weights because the strict
assignment raises it; it is re-exported here so loaders and callers need one import.
"""

from __future__ import annotations

from ..weights import CheckpointMismatchError


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: missing, truncated, corrupt or not a checkpoint."""


class PickleNotAllowedError(CheckpointError):
    """A pickle checkpoint (.ckpt/.bin/.pt) was given without `allow_pickle=True`."""


class UnsupportedCheckpointError(CheckpointError):
    """A readable checkpoint of an architecture these models do not implement (e.g. SD 2's OpenCLIP)."""


__all__ = ["CheckpointError", "CheckpointMismatchError", "PickleNotAllowedError", "UnsupportedCheckpointError"]
