"""The model side of a server: the four stages (models.stages.Stages) on a local pipeline,
behind one lock, the models directory (fine-tuned diffusion models to swap in) and the LoRAs
directory (every .safetensors LoRA in it, loaded and checked at start, applied per request).

models.chain runs requests over these stages; a three-endpoint front end runs the same chain
over remote stages (webapp.split_client.RemoteEngine), which is why both deployments give the
same image for the same seed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

import numpy as np

from models.checkpoints.assemble import is_loaded
from models.stages import Diffused, Encoded

from .errors import ApiError

UNET_FILE_EXTS = (".safetensors", ".h5")
LORA_FILE_EXT = ".safetensors"
# what GET /api/v1/models says about each LoRA (never its path on the server)
LORA_FIELDS = ("name", "size_bytes", "networks", "base", "formats", "modules", "modules_per_network", "ranks",
               "skipped_modules")
log = logging.getLogger("webapp")


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


def find_loras(loras_dir: str) -> dict:
    """{name (the file stem, as <lora:name> writes it): path} of the .safetensors files in the folder."""
    if not os.path.isdir(loras_dir):
        raise FileNotFoundError(f"--loras-dir {loras_dir}: no such folder")
    found = {}
    for entry in sorted(os.listdir(loras_dir)):
        path = os.path.join(loras_dir, entry)
        if entry.startswith(".") or not entry.endswith(LORA_FILE_EXT) or not os.path.isfile(path):
            continue
        found[entry[:-len(LORA_FILE_EXT)]] = path
    return found


def lora_listing(description: dict) -> dict:
    """One LoRA as GET /api/v1/models lists it: name, size in bytes, the networks it touches,
    the base it fits, and whether the edge parts (the exported text encoder and decoder) stay
    valid with it: a LoRA that changes the text encoder makes an edge text encoder's contexts
    wrong for it, so a hybrid client must have such prompts encoded by a server."""
    out = {k: description.get(k) for k in LORA_FIELDS}
    networks = list(description.get("networks") or ())
    out["edge_parts_valid"] = "text_encoder" not in networks and set(networks) <= {"unet"}
    out["needs_server_text_encoder"] = "text_encoder" in networks
    return out


class LocalEngine:
    """All four stages on one in-process pipeline. Thread-safe: one UNet or VAE call at a time
    (`lock`: their working memory grows with the image, and a server must not hold two such
    peaks at once; the text encoder's does not, so prompts are encoded beside them, which on
    the default model with 8 requests in flight is 15% more throughput); requests in flight
    share one set of weights (the diffusion model and the LoRA
    set, webapp.weights_lease: a request wanting others waits, then switches), so requests
    never see each other's LoRAs or models.

    `batch_requests` > 1: that many requests may denoise at once, their steps sharing UNet
    calls of at most `max_rows` images (models/step_batcher.py); 1: one loop at a time."""

    remote = False

    def __init__(self, pipe, *, base_name: str | None = None, models_dir: str | None = None,
                 loras_dir: str | None = None, batch_requests: int = 1, max_rows: int = 8):
        from .weights_lease import WeightsLease

        self.pipe = pipe
        self.base_name = base_name or pipe.components.name
        self.models_dir = models_dir
        self.current = self.base_name
        self._unets = {self.base_name: pipe.unet}
        self.lock = threading.RLock()
        self.weights = WeightsLease(self._weights_state, self._switch_weights)
        self._warm_up = {"state": "off"}
        pipe.restore_loras = False  # a request's set stays until one asks for another: repeats cost nothing
        self.batch_requests = max(1, int(batch_requests))
        if self.batch_requests > 1 and is_loaded(pipe.unet):
            pipe.start_step_batching(max_rows, lock=self.lock)
        if loras_dir:
            self.load_loras_dir(loras_dir)

    # -- start-up ------------------------------------------------------------------------
    def start_warm_up(self):
        """Compile everything a request can reach (models/warm_up.py) in a background thread,
        one piece at a time under the model lock, so no user pays a trace; requests are served
        meanwhile (one that needs a piece not yet compiled compiles it as before)."""
        from models.warm_up import warm_up

        def run():
            start = time.perf_counter()
            try:
                done = warm_up(self.pipe, lock=self.lock)
            except Exception as e:  # the server serves without it: each piece then compiles on first use
                log.warning("warm-up failed (%s: %s); requests compile what they need", type(e).__name__, e)
                self._warm_up = {"state": "failed", "error": type(e).__name__}  # /health is open: details to the log
                return
            self._warm_up = {"state": "done", "pieces": len(done), "seconds": round(time.perf_counter() - start, 1)}
            log.info("warm-up done: %d compiled pieces in %.1f s", len(done), self._warm_up["seconds"])

        self._warm_up = {"state": "running"}
        threading.Thread(target=run, name="warm-up", daemon=True).start()

    def batching_status(self) -> dict:
        """{"batch_requests", and with a step batcher its counts: UNet calls, requests per call}."""
        batcher = self.pipe.step_batcher
        return {"batch_requests": self.batch_requests, **(batcher.stats() if batcher is not None else {})}

    def warm_up_status(self) -> dict:
        """{"state": "off" | "running" | "done" | "failed", ...} for /health."""
        return dict(self._warm_up)

    # -- LoRAs ---------------------------------------------------------------------------
    def load_loras_dir(self, loras_dir: str) -> list:
        """Load (not activate) every .safetensors LoRA in the folder, each checked strictly
        against this base: a file that does not fit is a start-up error naming it, not a
        request-time surprise. Returns the names."""
        names = []
        for name, path in find_loras(loras_dir).items():
            try:
                names.append(self.pipe.load_lora(path, name=name, activate=False))
            except Exception as e:
                raise ValueError(f"--loras-dir: the LoRA {path} cannot be used with the model "
                                 f"{self.base_name!r}: {type(e).__name__}: {e}") from e
        return names

    def lora_names(self) -> list:
        return sorted(self.pipe.loaded_loras)

    # -- models --------------------------------------------------------------------------
    def model_names(self) -> list:
        return [self.base_name, *[n for n in find_unets(self.models_dir) if n != self.base_name]]

    def use_model(self, name: str | None):
        """Swap in the named diffusion model (only the UNet changes) once no request in flight
        uses the current one. Names are checked against the models directory listing; nothing
        else reaches the file system."""
        if name is None or name == "" or name == self.current:
            return
        with self.weights.hold(model=name):
            pass

    def _weights_state(self) -> dict:
        return {"model": self.current, "loras": tuple(self.pipe.active_loras)}

    def _switch_weights(self, wanted: dict):
        """The weights lease's switch (nobody holds the lease): the model, then the LoRA set."""
        if "model" in wanted and wanted["model"] != self.current:
            self._swap_model(wanted["model"])
        if "loras" in wanted:
            with self.lock:
                self.pipe.set_loras(list(wanted["loras"]))

    def _lora_key(self, loras) -> tuple:
        """A LoRA set as the weights lease compares them, in the request's order, which is the
        merge's (the same LoRAs in another order are merged anew)."""
        return tuple(self.pipe.normalized_loras(loras or ()))

    def _model_path(self, name: str) -> str | None:
        """The file of a fine-tuned model in the models folder (None: the base); an unknown name is a 404."""
        if name == self.base_name:
            return None
        paths = find_unets(self.models_dir)
        if name not in paths:
            raise ApiError(404, "unknown_model", f"unknown model {name!r}; available: {self.model_names()}")
        return paths[name]

    def _swap_model(self, name: str):
        with self.lock:
            path = self._model_path(name)
            if path is None:
                unet = self._unets[name]
            else:
                unet = self._unets.get(name)
                if unet is None:
                    from models.loading import load_unet

                    try:
                        unet = load_unet(path, dtype=self.pipe.unet.dtype_policy.name)
                    except Exception as e:  # a broken file in the models dir is the operator's problem:
                        # the details (with server paths) go to the log, not to the client
                        log.warning("model %r (%s) could not be loaded: %s", name, path, e)
                        raise ApiError(409, "model_unloadable", f"model {name!r} could not be loaded "
                                       f"({type(e).__name__}); the server log has the details") from None
                    if len(self._unets) > 3:  # keep the base and a few recent fine-tunes
                        for key in [k for k in self._unets if k != self.base_name][:1]:
                            del self._unets[key]
                    self._unets[name] = unet
            self.pipe.swap_unet(unet)
            self.current = name

    def info(self) -> dict:
        info = {"base_model": self.base_name, "current": self.current, "models": self.model_names(),
                "fine_tuned": [n for n in self.model_names() if n != self.base_name], **self.pipe.info()}
        # each was checked against this base when loaded: "fits" names it ("base" is the file's own guess)
        info["loras"] = {n: {**lora_listing(d), "fits": self.base_name} for n, d in sorted(info.get("loras", {}).items())}
        return info

    def count_tokens(self, text: str) -> int:
        return self.pipe.tokenizer.count_tokens(text)

    def token_label(self, text: str) -> str:
        """The UI's counter: tokens and 75-token chunks (models.prompt_weighting)."""
        from models.prompt_weighting import token_label

        return token_label(self.pipe.tokenizer, text)

    # -- the four stages (models.stages.Stages), one model run at a time ---------------------
    def encode_prompts(self, prompts: list, check=None, loras=None) -> Encoded:
        """`loras`: the request's [(name, scale)] (None: none, the base text encoder)."""
        with self.weights.hold(loras=self._lora_key(loras)):
            return self.pipe.encode_prompts(list(prompts), check=check, loras=list(loras or ()))

    def diffuse(self, context, unconditional_context=None, *, model=None, loras=None, context_loras=None,
                **options) -> Diffused:
        """As the pipeline's, on the named diffusion model of the models folder (None: the base),
        with the request's UNet LoRAs (None: none) after the pipeline checked `context_loras`.
        With a step batcher the loop runs outside the lock (each shared UNet call takes it), so
        the loops of requests in flight step together."""
        name = model or self.base_name
        self._model_path(name)  # an unknown name is refused before it waits for the weights
        loras, context_loras = list(loras or ()), list(context_loras or ())
        applied = self.pipe.diffusion_loras(loras, context_loras, has_unconditional=unconditional_context is not None)
        with self.weights.hold(model=name, loras=self._lora_key(applied)) as state:
            with contextlib.nullcontext() if self.pipe.step_batcher is not None else self.lock:
                gen = self.pipe.diffuse(context, unconditional_context, loras=loras, context_loras=context_loras,
                                        **options)
        gen.parameters["model"] = state["model"]
        return gen

    def decode(self, latents, check=None) -> np.ndarray:
        """With a step batcher, requests that finish together decode in one call (which takes
        the lock itself)."""
        if self.pipe.step_batcher is None:
            with self.lock:
                return self.pipe.decode(latents, check=check)
        if check is not None:
            check()
        return self.pipe.decode(latents, check=check)

    def encode_pixels(self, images, check=None) -> np.ndarray:
        with self.lock:
            return self.pipe.encode_pixels(images, check=check)

    def preview(self, latents) -> np.ndarray:
        """A progress preview of latents (the step callback's x0): TAESD when the server has one
        (--taesd), else the decoder at preview size (models.pipeline.StableDiffusionPipeline.preview)."""
        with self.lock:
            return self.pipe.preview(latents)
