"""Hugging Face Hub ids ("runwayml/stable-diffusion-v1-5") for users who are online.

The Hub is optional: huggingface_hub is imported only when an id is actually used, and only
the files our loader reads are downloaded (safetensors weights, configs, tokenizer files),
not the pickles, fp16/EMA duplicates, safety checker or other frameworks' weights that SD
repos also carry. Failures (package missing, offline, unknown repo) become one clear error.
"""

from __future__ import annotations

import os
import re

from .errors import CheckpointError

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

ALLOW_PATTERNS = [
    "model_index.json",
    "unet/config.json", "vae/config.json", "text_encoder/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "unet/*.safetensors", "vae/*.safetensors", "text_encoder/*.safetensors",
    "unet/*.safetensors.index.json", "vae/*.safetensors.index.json", "text_encoder/*.safetensors.index.json",
]
# Alternative precisions/copies of the same weights; the plain files are enough.
IGNORE_PATTERNS = ["*.fp16.*", "*.non_ema.*", "*.ema.*", "*.bf16.*"]


class HubError(CheckpointError, FileNotFoundError):
    """A Hub id could not be fetched (no huggingface_hub, offline, unknown or gated repo).

    Also a FileNotFoundError: the source exists neither locally nor (reachably) on the Hub.
    """


def looks_like_repo_id(source: str) -> bool:
    """"owner/name" that is not an existing local path."""
    return bool(_REPO_ID.match(str(source))) and not os.path.exists(source)


def _only_variant(repo_id, revision):
    """"fp16" when some network of the repo has its weights only as an fp16 variant (then the
    plain-file patterns would fetch nothing for it); None otherwise, or when the listing fails
    (the download itself then reports what is wrong)."""
    try:
        from huggingface_hub import list_repo_files

        files = set(list_repo_files(repo_id, revision=revision))
    except Exception:
        return None
    for part, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                       ("text_encoder", "model")):
        plain = {f"{part}/{stem}.safetensors", f"{part}/{stem}.safetensors.index.json"}
        fp16 = {f"{part}/{stem}.fp16.safetensors", f"{part}/{stem}.fp16.safetensors.index.json"}
        if not plain & files and fp16 & files:
            return "fp16"
    return None


def download(repo_id: str, *, revision: str | None = None, variant: str | None = None,
             cache_dir: str | None = None, allow_patterns: list | None = None) -> str:
    """Fetch (or reuse the cached copy of) a diffusers repo; returns the local folder.
    `allow_patterns` replaces the pipeline layout's (e.g. a VAE repo's root config.json)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise HubError(
            f"{repo_id!r} looks like a Hugging Face Hub id, but huggingface_hub is not installed "
            "(pip install huggingface_hub), and there is no local path of that name"
        ) from None
    allow = list(ALLOW_PATTERNS if allow_patterns is None else allow_patterns)
    ignore = list(IGNORE_PATTERNS)
    if variant is None:
        variant = _only_variant(repo_id, revision)
    if variant:
        allow += [f"*/*.{variant}.safetensors", f"*/*.{variant}.safetensors.index.json"]
        ignore = [p for p in ignore if variant not in p]
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=allow, ignore_patterns=ignore,
                                 cache_dir=cache_dir)
    except Exception as e:  # offline, 404, gated repo, disk full: all end the same way for the user
        raise HubError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            "There is no local path of that name either; check the id and your connection, or "
            "download the model yourself and pass its folder."
        ) from None
