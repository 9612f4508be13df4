"""Checkpoint loaders: every format becomes a diffusers-named state dict, then one strict assign.

    diffusers_folder  unet/ vae/ text_encoder/ tokenizer/ scheduler/ folders (read and write)
    ldm_single_file   CompVis/ldm single files (v1-5-pruned-emaonly.safetensors, .ckpt)
    kerascv_h5        KerasCV's published .h5 weights and KerasCV fine-tunes
    hub               Hugging Face Hub ids, when online
    safetensors_io    .safetensors reading/writing; pickle_io: opt-in .ckpt/.bin

`models.loading` picks the right one for a user-given source.
"""

from .errors import (CheckpointError, CheckpointMismatchError, PickleNotAllowedError,
                     UnsupportedCheckpointError)
from .safetensors_io import MissingCheckpointError, read_safetensors, write_safetensors

__all__ = ["CheckpointError", "CheckpointMismatchError", "MissingCheckpointError", "PickleNotAllowedError",
           "UnsupportedCheckpointError", "read_safetensors", "write_safetensors"]
