"""Errors every checkpoint loader raises, so callers can catch one family."""

from __future__ import annotations


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not fit the architecture (raised by the strict key map)."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: missing, truncated, corrupt or not a checkpoint."""


class PickleNotAllowedError(CheckpointError):
    """A pickle checkpoint (.ckpt/.bin/.pt) was given without `allow_pickle=True`."""


class UnsupportedCheckpointError(CheckpointError):
    """A readable checkpoint of an architecture these models do not implement (e.g. SD 2's OpenCLIP)."""


__all__ = ["CheckpointError", "CheckpointMismatchError", "PickleNotAllowedError", "UnsupportedCheckpointError"]
