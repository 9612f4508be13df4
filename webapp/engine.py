"""The model side of the server: the four stages (encode, diffuse, decode, encode_image) on a
local pipeline, and the models directory (fine-tuned diffusion models to swap in).

A front end (webapp.frontend) chains the stages; in the split deployment the same chain runs
against remote stages (webapp.split_client.RemoteEngine), which is why both deployments give
the same image for the same seed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import warnings

import numpy as np

from .errors import ApiError

UNET_FILE_EXTS = (".safetensors", ".h5")
log = logging.getLogger("webapp")


@dataclasses.dataclass
class Encoded:
    context: np.ndarray  # float32 [B, 77, D]
    token_counts: list  # tokens per prompt, without the start/end tokens
    truncated: list  # tokens dropped per prompt (0 when it fit)


def _inside(root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def _stays_inside(root: str, path: str) -> bool:
    """Whether `path`, and for a folder every file and folder reached from it (links
    followed), resolves inside the models folder `root`: a symlink must not let a client's
    model name reach files elsewhere on the server."""
    if not _inside(root, path):
        return False
    seen = set()
    for folder, dirs, files in os.walk(path, followlinks=True):
        real = os.path.realpath(folder)
        if not _inside(root, real) or any(not _inside(root, os.path.join(folder, f)) for f in files):
            return False
        if real in seen:  # a link back up: walked already
            dirs[:] = []
        seen.add(real)
    return True


def find_unets(models_dir: str | None) -> dict:
    """{name: path} of the fine-tuned diffusion models in the models directory: sub-folders
    holding a diffusers unet/ (or being one), KerasCV diffusion .h5 and .safetensors files.
    Names are the entries' own names, so a client can only pick what is listed; entries that
    lead out of the folder through symlinks are not listed."""
    found = {}
    if not models_dir or not os.path.isdir(models_dir):
        return found
    root = os.path.realpath(models_dir)
    for entry in sorted(os.listdir(models_dir)):
        path = os.path.join(models_dir, entry)
        if entry.startswith(".") or not _stays_inside(root, path):
            continue
        if os.path.isdir(path):
            if (os.path.isfile(os.path.join(path, "unet", "config.json"))
                    or os.path.isfile(os.path.join(path, "config.json"))
                    or any(f.endswith(".h5") for f in os.listdir(path))):
                found[entry] = path
        elif entry.endswith(UNET_FILE_EXTS):
            found[entry] = path
    return found


class LocalEngine:
    """All four stages on one in-process pipeline. Thread-safe: one model run at a time."""

    remote = False

    def __init__(self, pipe, *, base_name: str | None = None, models_dir: str | None = None):
        self.pipe = pipe
        self.base_name = base_name or pipe.components.name
        self.models_dir = models_dir
        self.current = self.base_name
        self._unets = {self.base_name: pipe.unet}
        self.lock = threading.RLock()

    # -- models --------------------------------------------------------------------------
    def model_names(self) -> list:
        return [self.base_name, *[n for n in find_unets(self.models_dir) if n != self.base_name]]

    def use_model(self, name: str | None):
        """Swap in the named diffusion model (only the UNet changes). Names are checked
        against the models directory listing; nothing else reaches the file system."""
        if name is None or name == "" or name == self.current:
            return
        with self.lock:
            if name == self.base_name:
                unet = self._unets[name]
            else:
                paths = find_unets(self.models_dir)
                if name not in paths:
                    raise ApiError(404, "unknown_model", f"unknown model {name!r}; available: {self.model_names()}")
                unet = self._unets.get(name)
                if unet is None:
                    from models.loading import load_unet

                    try:
                        unet = load_unet(paths[name])
                    except Exception as e:  # a broken file in the models dir is the operator's problem:
                        # the details (with server paths) go to the log, not to the client
                        log.warning("model %r (%s) could not be loaded: %s", name, paths[name], e)
                        raise ApiError(409, "model_unloadable", f"model {name!r} could not be loaded "
                                       f"({type(e).__name__}); the server log has the details") from None
                    if len(self._unets) > 3:  # keep the base and a few recent fine-tunes
                        for key in [k for k in self._unets if k != self.base_name][:1]:
                            del self._unets[key]
                    self._unets[name] = unet
            self.pipe.swap_unet(unet)
            self.current = name

    def info(self) -> dict:
        from models.checkpoints.assemble import PARTS, is_loaded

        p = self.pipe
        tok = p.tokenizer
        return {
            "base_model": self.base_name,
            "current": self.current,
            "models": self.model_names(),
            "fine_tuned": [n for n in self.model_names() if n != self.base_name],
            "latent_channels": p.latent_channels,
            "vae_factor": p.vae_factor,
            "default_size": p.default_size,
            "size_multiple": p.size_multiple,
            "latent_size": p.default_size // p.vae_factor,
            "scaling_factor": p.scaling_factor,
            "context_shape": [tok.max_length, p.context_dim],
            "max_tokens": tok.max_length - 2,
            "inpainting_unet": bool(p.unet.config.is_inpainting),
            "has_image_encoder": p.encoder is not None,
            # a component server loads only its stage's networks (webapp.server.NETWORKS)
            "loaded_networks": [n for n in PARTS if is_loaded(getattr(p.components, n))],
        }

    def count_tokens(self, text: str) -> int:
        return self.pipe.tokenizer.count_tokens(text)

    # -- the four stages -----------------------------------------------------------------
    def encode(self, prompts: list, job=None) -> Encoded:
        tok = self.pipe.tokenizer
        limit = tok.max_length - 2
        check = job.check if job is not None else None  # Stop and the time limit reach tokenization
        counts = [tok.count_tokens(p, check=check) for p in prompts]
        with self.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            context = self.pipe.encode_text(list(prompts), check=check)
        return Encoded(context, counts, [max(0, n - limit) for n in counts])

    def diffuse(self, context, unconditional_context=None, *, seed=None, steps=20, guidance_scale=7.5,
                scheduler=None, height=None, width=None, image_latents=None, mask=None,
                masked_image_latents=None, strength=1.0, mask_blur=0.0, model=None, job=None, callback=None):
        from models.pipeline import DEFAULT_SCHEDULER

        def step(i, n, latents):
            if job is not None:
                job.check()
            if callback is not None:
                callback(i, n, latents)

        with self.lock:
            self.use_model(model)
            gen = self.pipe.generate(
                None, num_steps=steps, guidance_scale=guidance_scale, seed=seed,
                scheduler=scheduler or DEFAULT_SCHEDULER, height=height, width=width,
                batch_size=int(context.shape[0]), context=context, unconditional_context=unconditional_context,
                image_latents=image_latents, mask=mask, masked_image_latents=masked_image_latents,
                strength=strength, mask_blur=mask_blur, callback=step, decode=False,
            )
        gen.parameters["model"] = self.current
        for key in ("prompt", "negative_prompt", "batch_size"):
            gen.parameters.pop(key, None)  # the diffusion stage never sees the prompts
        return gen

    def decode(self, latents, job=None) -> np.ndarray:
        from models.pipeline import to_uint8

        with self.lock:
            return to_uint8(self.pipe.decode_latents(latents))

    def decode_float(self, latents) -> np.ndarray:
        with self.lock:
            return self.pipe.decode_latents(latents)

    def encode_image(self, images, job=None) -> np.ndarray:
        """uint8 [B, H, W, 3] (or float32 in [-1, 1]) -> image latents (posterior mean x scaling)."""
        from models.pipeline import to_float_image

        images = np.asarray(images)
        pixels = to_float_image(images) if images.dtype == np.uint8 else images.astype(np.float32)
        with self.lock:
            return self.pipe.encode_image(pixels)
