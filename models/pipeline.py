"""Stable Diffusion pipeline: txt2img, img2img and inpainting around one compiled loop.

The public methods validate every input up front and fail with a message that names the
problem, because a bad request must never reach the graph (where it would surface as an
opaque TensorFlow error, or silently as a wrong image).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import secrets
import warnings

import numpy as np
import tensorflow as tf

from . import chain, masks
from .checkpoints.assemble import NotLoaded
from .compiled import ShapeGeneric
from .components import Components
from .errors import InvalidInput
from .layers import plan_convolutions
from .lora.merge import LoraMerger
from .sampling import BLEND, CONCAT, NO_INPAINT, DenoiseLoop, guided_eps
from .schedulers import SCHEDULERS, get_scheduler
from .stages import Diffused, Encoded
from .tokenizer import TruncationWarning
from .vae import split_moments

MAX_SEED = 2**32 - 1
# Previews without a TAESD: the model's decoder runs on the x0 latents area-downscaled to at
# most this side (decided here only; see StableDiffusionPipeline.preview)
PREVIEW_MAX_LATENT_SIDE = 16
MAX_STEPS = 1000
DEFAULT_SCHEDULER = "ddim"
RUNTIMES = ("tensorflow", "openvino")  # what runs the networks (see __init__)


class Cancelled(Exception):
    """Raised by a step callback to stop a generation early."""


@dataclasses.dataclass
class Generation:
    """What a generation produced, with what is needed to reproduce it."""

    images: np.ndarray  # uint8 [B, H, W, 3]
    latents: np.ndarray  # float32 [B, h, w, 4], before decoding
    seeds: list
    parameters: dict


def to_uint8(images) -> np.ndarray:
    images = np.asarray(images, np.float32)
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_float_image(image) -> np.ndarray:
    """uint8 [H, W, 3] (or [B, H, W, 3]) -> float32 in [-1, 1]."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InvalidInput(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise InvalidInput(f"image must have shape [H, W, 3], got {list(image.shape)}")
    return image.astype(np.float32) / 127.5 - 1.0


def _max_chunks():
    from .prompt_weighting import MAX_CHUNKS

    return MAX_CHUNKS


def _takes_x0(callback) -> bool:
    """Whether a step callback takes the keyword `x0` (by name, or through **kwargs)."""
    import inspect

    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "x0" and p.kind != p.POSITIONAL_ONLY or p.kind == p.VAR_KEYWORD for p in params)


def preview_latent_size(h: int, w: int, max_side: int | None = None) -> tuple[int, int]:
    """The latent size the full decoder previews at: (h, w) shrunk by the smallest integer factor
    that brings the longer side to at most `max_side` (SD at 512 px: 64 -> 16, a 128 px preview)."""
    factor = max(1, math.ceil(max(h, w) / (max_side or PREVIEW_MAX_LATENT_SIDE)))
    return max(1, math.ceil(h / factor)), max(1, math.ceil(w / factor))


def _require(model):
    """A network left out by load_components(parts=...) raises its NotLoadedError here, before
    any tf.function would wrap it in a StagingError."""
    if isinstance(model, NotLoaded):
        model()


class StableDiffusionPipeline:
    """Text encoder + UNet + VAE + tokenizer + schedule, with the SD v1 sampling features.

    Latents are NHWC and scaled by the VAE scaling factor, as in the SD papers and diffusers.
    """

    def __init__(self, components: Components, jit_compile: bool = False, guidance_batching: str = "auto",
                 empty_prompt_context=None, clip_skip: int = 1, runtime: str = "tensorflow"):
        """`guidance_batching`: "batched" (one UNet call on the doubled batch), "split" (two
        calls) or "auto": split for float32 on a CPU-only machine with TensorFlow, where it is as
        fast and needs less memory (see models/sampling.py), batched otherwise (OpenVINO runs
        one batch-2 call faster than two batch-1 calls).
        `empty_prompt_context` ([1, 77, D]) is the unconditional context used when no negative
        prompt is given; by default the text encoder computes it on first use (a pipeline
        without its text encoder needs it given).
        `clip_skip` (A1111's meaning: 2 = the text encoder's penultimate layer, then its final
        layer norm; 1 = its last layer) applies to every prompt this pipeline encodes.
        `runtime`: what runs the networks: "tensorflow" (compiled graphs) or "openvino" (OpenVINO's
        CPU plugin on the same networks' graphs: faster on a CPU; models/openvino_runtime.py)."""
        if runtime not in RUNTIMES:
            raise InvalidInput(f"runtime must be one of {RUNTIMES}, got {runtime!r}", "bad_runtime")
        if runtime == "openvino":
            from . import openvino_runtime

            openvino_runtime.require()
        self.runtime = runtime
        self.components = components
        self.guidance_batching = self._choose_batching(guidance_batching, components, runtime)
        self.text_encoder = components.text_encoder
        self.unet = components.unet
        self.decoder = components.decoder
        self.encoder = components.encoder
        self.tokenizer = components.tokenizer
        self.jit_compile = jit_compile
        self._loops = {}
        self._uncond = None if empty_prompt_context is None else np.asarray(empty_prompt_context, np.float32)
        self._uncond_given = empty_prompt_context is not None
        self._loras = LoraMerger({"unet": self.unet, "text_encoder": self.text_encoder},
                                 on_change=self._lora_weights_changed)
        self._encoders = {}  # clip_skip -> traced text encoder
        self._clip_skip = 1
        if clip_skip != 1:
            self.clip_skip = clip_skip
        self._traced = {}  # network name -> its compiled call (dropped when the network is swapped)
        self.preview_decoder, self.preview_config = None, None  # a TAESD for previews (set_preview_decoder)
        # set by a server running several requests at once: their loops' UNet calls are shared
        # (models/step_batcher.py); None: each loop calls the UNet itself
        self.step_batcher = None

    def _compiled(self, name):
        """The network's compiled call: every public primitive runs a graph, never op by op (an
        eager UNet call at SD v1 size is 1.5x the graph's time), traced once for every size and
        batch (models/compiled.py) after a representative call fixes its convolution kernels.
        A trace holds the network it was made with, so swap_unet / swap_vae drop theirs."""
        if name not in self._traced:
            network = getattr(self, name)
            _require(network)

            def call_of(network):
                plan_convolutions(network, self._representative_inputs(name))
                return lambda *x: network(list(x) if len(x) > 1 else x[0], training=False)

            self._traced[name] = self._runtime_call(network, call_of, name, jit_compile=self.jit_compile or None)
        return self._traced[name]

    def _runtime_call(self, network, call_of, name, jit_compile=None):
        """`call_of(network)` (a function of tensors) compiled by this pipeline's runtime: a
        shape-generic TensorFlow graph, or OpenVINO (a bfloat16 network through its float32 copy,
        at bfloat16 precision)."""
        if self.runtime == "openvino":
            from .openvino_runtime import OpenVinoFunction, float32_network, precision_of

            return OpenVinoFunction(call_of(float32_network(network)), precision_of(network), name=name)
        return ShapeGeneric(call_of(network), jit_compile=jit_compile)

    def _compiled_guided(self):
        """The guided pass's UNet calls (models.sampling.guided_eps) as one compiled function
        shared by every loop, calling the compiled UNet (its trace is reused)."""
        if "guided" not in self._traced:
            unet, batching = self._compiled("unet"), self.guidance_batching
            guided = lambda x_in, t, context, uncond: guided_eps(  # noqa: E731
                lambda inputs: unet(*inputs), batching, x_in, t, context, uncond)
            # OpenVINO calls run outside TensorFlow's graphs (each one uses every core)
            self._traced["guided"] = guided if self.runtime == "openvino" else ShapeGeneric(
                guided, jit_compile=self.jit_compile or None)
        return self._traced["guided"]

    def _representative_inputs(self, name):
        """Zeros shaped as the call `name` makes most: the default size, one image (the UNet: the
        rows one guided step gives it, two when guidance is batched)."""
        h = w = self.unet.config.sample_size
        c = self.latent_channels
        if name == "encoder":
            return tf.zeros([1, h * self.vae_factor, w * self.vae_factor, 3])
        if name in ("decoder", "preview_decoder"):
            return tf.zeros([1, h, w, c])
        rows = 2 if self.guidance_batching == "batched" else 1
        cfg = self.unet.config
        inputs = [tf.zeros([rows, h, w, cfg.in_channels]), tf.fill([rows], 500.0),
                  tf.zeros([rows, self.tokenizer.max_length, cfg.cross_attention_dim])]
        if cfg.time_cond_proj_dim:
            inputs.append(tf.zeros([rows, cfg.time_cond_proj_dim]))
        return inputs

    @property
    def _decode(self):
        return lambda z: self._compiled("decoder")(z / self.scaling_factor)

    @staticmethod
    def _choose_batching(choice, components, runtime="tensorflow"):
        if choice != "auto":
            return choice
        if runtime == "openvino":  # its one batch-2 call is faster than two batch-1 calls
            return "batched"
        float32 = components.unet.dtype_policy.compute_dtype == "float32"
        return "split" if float32 and not tf.config.list_physical_devices("GPU") else "batched"

    # -- facts clients need --------------------------------------------------------------
    @property
    def scaling_factor(self) -> float:
        return self.components.scaling_factor

    @property
    def vae_factor(self) -> int:
        return self.components.vae_config.downsample_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (VAE factor x UNet downsampling)."""
        return self.vae_factor * self.unet.config.downsample_factor

    @property
    def default_size(self) -> int:
        return self.unet.config.sample_size * self.vae_factor

    @property
    def latent_channels(self) -> int:
        return self.components.vae_config.latent_channels

    @property
    def context_dim(self) -> int:
        return self.text_encoder.config.hidden_size

    @property
    def clip_skip(self) -> int:
        return self._clip_skip

    @clip_skip.setter
    def clip_skip(self, value):
        layers = self.text_encoder.config.num_hidden_layers
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= layers:
            raise InvalidInput(f"clip_skip must be an integer from 1 to {layers}, got {value!r}", "bad_clip_skip")
        if int(value) != self._clip_skip and not self._uncond_given:
            self._uncond = None  # the empty prompt's context depends on the layer read
        self._clip_skip = int(value)

    def swap_unet(self, unet):
        """Replace only the diffusion model (a fine-tuned UNet); the edge parts stay."""
        cfg, new = self.unet.config, unet.config
        if new.cross_attention_dim != cfg.cross_attention_dim:
            raise InvalidInput(
                f"the new UNet expects context width {new.cross_attention_dim}, "
                f"but the text encoder produces {cfg.cross_attention_dim}"
            )
        self._loras.replace_network("unet", unet)  # the old UNet gets its base back; active LoRAs move over
        self.unet = self.components.unet = unet
        self._loops.clear()
        self._traced.pop("unet", None)
        self._traced.pop("guided", None)

    def swap_vae(self, encoder, decoder, config):
        """Replace the VAE (an AutoencoderKL such as vae-ft-mse, or TAESD; models.checkpoints.
        vae_files.load_vae gives the three): latents keep their convention, since each VAE's
        config carries its own scaling factor (TAESD's is 1.0: it works on SD's scaled latents).
        `encoder` None leaves the model without img2img and inpainting."""
        old = self.components.vae_config
        if config.latent_channels != old.latent_channels or config.downsample_factor != old.downsample_factor:
            raise InvalidInput(
                f"the new VAE makes {config.latent_channels}-channel latents at 1/{config.downsample_factor} size, "
                f"this model's UNet needs {old.latent_channels} channels at 1/{old.downsample_factor}")
        self.components.encoder, self.components.decoder, self.components.vae_config = encoder, decoder, config
        self.encoder, self.decoder = encoder, decoder
        self._traced.pop("encoder", None)  # the old traces hold the old VAE
        self._traced.pop("decoder", None)

    # -- previews --------------------------------------------------------------------------
    def set_preview_decoder(self, decoder, config):
        """Use this TAESD decoder (models.checkpoints.vae_files.load_vae gives it, with its
        TinyAutoencoderConfig) for `preview`; None goes back to the model's decoder at preview size."""
        from .config import TinyAutoencoderConfig

        if decoder is not None:
            if not isinstance(config, TinyAutoencoderConfig):
                raise InvalidInput(f"a preview decoder is a TAESD (AutoencoderTiny), got a {type(config).__name__}")
            if config.latent_channels != self.latent_channels:
                raise InvalidInput(f"the preview TAESD decodes {config.latent_channels}-channel latents, this "
                                   f"model makes {self.latent_channels}")
        self.preview_decoder, self.preview_config = decoder, (config if decoder is not None else None)
        self._traced.pop("preview_decoder", None)

    @property
    def preview_method(self) -> str:
        """"taesd" (full size through a TAESD) or "decoder" (the model's VAE at preview size)."""
        from .config import TinyAutoencoderConfig

        if self.preview_decoder is not None or isinstance(self.components.vae_config, TinyAutoencoderConfig):
            return "taesd"
        return "decoder"

    def preview(self, latents) -> np.ndarray:
        """uint8 [B, H', W', 3] pictures of latents for progress previews (pass a step's x0: the
        step callback's `x0`). Through the preview TAESD at full size when one is set (or when the
        model's VAE is a TAESD); otherwise the model's decoder on the latents area-downscaled to
        preview_latent_size (a 128 px picture for SD at 512 px instead of a 512 px one)."""
        latents = tf.constant(np.asarray(latents, np.float32))
        if self.preview_decoder is not None:
            return to_uint8(self._compiled("preview_decoder")(latents / self.preview_config.scaling_factor).numpy())
        if self.preview_method == "decoder":
            h, w = preview_latent_size(int(latents.shape[1]), int(latents.shape[2]))
            if (h, w) != tuple(latents.shape[1:3]):
                latents = tf.image.resize(latents, (h, w), method="area")
        _require(self.decoder)
        return to_uint8(self._decode(latents).numpy())

    # -- LoRAs (models/lora: merged into the weights, restored bit for bit) ---------------
    def load_lora(self, path, scale: float = 1.0, name: str | None = None, *, activate: bool = True,
                  allow_pickle: bool = False) -> str:
        """Read a LoRA file (kohya/A1111, LoCon, diffusers/PEFT .safetensors; a pickle only with
        `allow_pickle`), check that every key fits this model, and with `activate` add it to the
        active set at `scale`. Returns its name (default: the file stem, as <lora:name> uses).
        Loading a name again replaces that LoRA."""
        return self._loras.load(path, scale, name, activate=activate, allow_pickle=allow_pickle)

    def set_loras(self, loras) -> list:
        """Make exactly these active: [(name, scale), ...] (a bare name means 1.0); [] is the base
        model. Only the weights whose update changes are rewritten; nothing is retraced."""
        return self._loras.set(loras)

    def normalized_loras(self, loras) -> list:
        """The set as `active_loras` writes it: [(name as loaded, scale)], in the given order."""
        return self._loras.normalized(loras)

    def unload_loras(self, names=None):
        """Forget these LoRAs (default: all) and restore the weights they changed, bit for bit."""
        self._loras.unload(names)

    def loras_applied(self, loras, restore: bool = True):
        """`with pipe.loras_applied([(name, scale)]):` runs the block with exactly this set, holding
        the LoRA lock so no other thread switches it meanwhile; on exit the previous set returns
        (`restore=False`: this one stays, saving a switch when requests repeat their set)."""
        return self._loras.applied(loras, restore=restore)

    @property
    def active_loras(self) -> list:
        return self._loras.active

    @property
    def loaded_loras(self) -> dict:
        """{name: description} (networks, ranks, modules, bytes, base model) of the loaded LoRAs."""
        return self._loras.loaded

    def lora_memory(self) -> dict:
        return self._loras.memory()

    def _lora_weights_changed(self, networks):
        if "text_encoder" in networks and not self._uncond_given:
            self._uncond = None  # the empty prompt's context depends on the text encoder's weights
        if self.runtime == "openvino":  # converted networks hold their weights as constants
            if "unet" in networks:
                self._traced.pop("unet", None)
                self._traced.pop("guided", None)
            if "text_encoder" in networks:
                self._encoders.clear()

    # -- the four primitives -------------------------------------------------------------
    def encode_text(self, prompts, check=None, clip_skip=None) -> np.ndarray:
        """``check`` is passed to the tokenizer so a cancel can interrupt a long prompt.
        ``clip_skip`` None: the pipeline's (see __init__)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = self.tokenizer.tokenize(list(prompts), check=check)
        _require(self.text_encoder)
        return self._text_encoder_fn(self.clip_skip if clip_skip is None else clip_skip)(tf.constant(ids)).numpy()

    @property
    def _encode(self):
        """The traced text encoder at this pipeline's clip skip."""
        return self._text_encoder_fn(self.clip_skip)

    def _text_encoder_fn(self, clip_skip):
        if clip_skip not in self._encoders:
            def call_of(text_encoder):
                try:
                    model = text_encoder.with_clip_skip(clip_skip)
                except ValueError as e:
                    raise InvalidInput(str(e), "bad_clip_skip") from None
                return lambda ids: tf.cast(model(ids, training=False), tf.float32)

            self._encoders[clip_skip] = self._runtime_call(self.text_encoder, call_of, "text_encoder")
        return self._encoders[clip_skip]

    def predict_noise(self, latents, timestep, context, guidance_scale=None) -> np.ndarray:
        """One UNet call. An LCM-distilled UNet (`time_cond_proj_dim`) also takes the guidance
        scale, as the embedding of guidance_scale - 1."""
        from .unet import guidance_embedding

        latents = np.asarray(latents, np.float32)
        t = np.full([latents.shape[0]], float(timestep), np.float32)
        inputs = [latents, t, np.asarray(context, np.float32)]
        dim = self.unet.config.time_cond_proj_dim
        if dim:
            if guidance_scale is None:
                raise InvalidInput("this LCM-distilled UNet takes the guidance scale: pass guidance_scale")
            inputs.append(np.asarray(guidance_embedding(np.full([latents.shape[0]], guidance_scale - 1.0, np.float32),
                                                        dim)))
        return self._compiled("unet")(*[tf.constant(x) for x in inputs]).numpy()

    def decode_latents(self, latents) -> np.ndarray:
        """With a step batcher, in one call with the other threads' latents waiting to decode."""
        _require(self.decoder)
        latents = tf.constant(np.asarray(latents, np.float32))
        batcher = self.step_batcher
        return (batcher.decode(latents) if batcher is not None else self._decode(latents)).numpy()

    def encode_image(self, images, sample=False, seed=0) -> np.ndarray:
        """Images float32 [B, H, W, 3] in [-1, 1] -> posterior mean (or a sample) * scaling."""
        if self.encoder is None:
            raise InvalidInput("this model has no VAE encoder, so img2img and inpainting are unavailable", "no_image_encoder")
        encoded = self._compiled("encoder")(tf.constant(np.asarray(images, np.float32)))
        if getattr(self.encoder, "outputs_latents", False):  # TAESD: deterministic, no posterior
            return (encoded * self.scaling_factor).numpy()
        mean, logvar = split_moments(encoded)
        if sample:
            noise = tf.random.stateless_normal(tf.shape(mean), seed=[seed, 7])
            mean = mean + tf.exp(0.5 * logvar) * noise
        return (mean * self.scaling_factor).numpy()

    # -- validation ----------------------------------------------------------------------
    def _check_size(self, height, width):
        height = self.default_size if height is None else int(height)
        width = self.default_size if width is None else int(width)
        m = self.size_multiple
        for name, v in (("height", height), ("width", width)):
            if v <= 0 or v % m:
                lower, upper = max(m, v // m * m), (v // m + 1) * m
                raise InvalidInput(
                    f"{name} {v} is not a positive multiple of {m}, which this model needs; "
                    f"try {lower} or {upper}"
                )
        return height, width

    @staticmethod
    def _check_batch(batch_size):
        if not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= 64:
            raise InvalidInput(f"batch_size must be an integer from 1 to 64, got {batch_size!r}")

    @staticmethod
    def _check_common(num_steps, guidance_scale, batch_size, scheduler):
        if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= MAX_STEPS:
            raise InvalidInput(f"num_steps must be an integer from 1 to {MAX_STEPS}, got {num_steps!r}")
        if not isinstance(guidance_scale, (int, float, np.floating)) or not math.isfinite(guidance_scale):
            raise InvalidInput(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        StableDiffusionPipeline._check_batch(batch_size)
        if scheduler not in SCHEDULERS:
            raise InvalidInput(f"unknown scheduler {scheduler!r}; choose one of {sorted(SCHEDULERS)}")

    @staticmethod
    def _check_seed(seed):
        if seed is None:
            return secrets.randbelow(MAX_SEED + 1)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
            raise InvalidInput(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
        return int(seed)

    # -- the four stages (models.stages.Stages; models.chain calls them) -------------------
    def info(self) -> dict:
        """The facts clients and the chain need about this model."""
        from .checkpoints.assemble import PARTS, is_loaded

        return {
            "latent_channels": self.latent_channels,
            "vae_factor": self.vae_factor,
            "default_size": self.default_size,
            "size_multiple": self.size_multiple,
            "latent_size": self.default_size // self.vae_factor,
            "scaling_factor": self.scaling_factor,
            "context_shape": [self.tokenizer.max_length, self.context_dim],
            "max_tokens": self.tokenizer.max_length - 2,  # per chunk; contexts are 77 x k (prompt_weighting)
            "max_chunks": _max_chunks(),
            "inpainting_unet": bool(self.unet.config.is_inpainting),
            "has_image_encoder": self.encoder is not None,
            # what a manifest or a client needs to run this family's text encoder and loop
            "model_family": self.components.family,
            "prediction_type": self.components.schedule.prediction_type,
            "timestep_spacing": self.components.schedule.timestep_spacing,  # None: each scheduler's own
            "clip_skip": self.clip_skip,
            "guidance_embedding": bool(self.unet.config.time_cond_proj_dim),
            "vae": self.components.vae_config.class_name,  # AutoencoderKL, or AutoencoderTiny (TAESD)
            # a component server loads only its stage's networks (load_components(parts=...))
            "loaded_networks": [n for n in PARTS if is_loaded(getattr(self.components, n))],
            "loras": self.loaded_loras,  # {name: description}; models.chain checks request names against it
        }

    # A request's own LoRA set (models.chain passes one): held for the stage call (the LoRA lock
    # keeps other threads from switching it), then the previous set comes back for a Python
    # caller. A server sets restore_loras = False: the set stays, so the next request asking for
    # it (the common case) switches nothing, and the server itself keeps requests in flight from
    # switching it (webapp.weights_lease), so several can run on one set at once.
    restore_loras = True

    def _lora_block(self, loras):
        if loras is None:
            return contextlib.nullcontext()
        if not self.restore_loras:
            self.set_loras(loras)
            return contextlib.nullcontext()
        return self.loras_applied(loras)

    def encode_prompts(self, prompts, check=None, loras=None) -> Encoded:
        """`loras`: [(name, scale)] to encode with (None: the active set)."""
        with self._lora_block(loras):
            return self._encode_prompts(prompts, check)

    def _encode_prompts(self, prompts, check=None) -> Encoded:
        """Emphasis and 75-token chunks (models.prompt_weighting): [B, 77 k, D], nothing cut."""
        from . import prompt_weighting

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        context, counts = prompt_weighting.encode_prompts(
            self.tokenizer, lambda ids: self._encode_ids(ids, check), prompts, check=check)
        return Encoded(context, counts, [0] * len(prompts))

    def _encode_ids(self, ids, check=None) -> np.ndarray:
        """token ids int32 [N, 77] -> context [N, 77, D] at this pipeline's clip skip."""
        if check is not None:
            check()
        _require(self.text_encoder)
        return self._text_encoder_fn(self.clip_skip)(tf.constant(ids)).numpy()

    def decode(self, latents, check=None) -> np.ndarray:
        return to_uint8(self.decode_latents(latents))

    def encode_pixels(self, images, check=None) -> np.ndarray:
        images = np.asarray(images)
        pixels = to_float_image(images) if images.dtype == np.uint8 else images.astype(np.float32)
        return self.encode_image(pixels)

    def diffuse(self, context, unconditional_context=None, *, loras=None, context_loras=None, **options) -> Diffused:
        """The denoising loop (see _diffuse) with this request's LoRAs: `loras` the UNet set,
        `context_loras` the text-encoder LoRAs the contexts were encoded with; both None: the
        active set. models.chain.check_context_loras refuses a context made without a
        text-encoder LoRA the request asks for."""
        if loras is None and context_loras is None:
            return self._diffuse(context, unconditional_context, **options)
        applied = self.diffusion_loras(loras, context_loras, has_unconditional=unconditional_context is not None)
        with self._lora_block(applied):
            gen = self._diffuse(context, unconditional_context, **options)
        if applied:
            gen.parameters["loras"] = [[n, s] for n, s in applied]
        return gen

    def diffusion_loras(self, loras, context_loras, *, has_unconditional: bool) -> list:
        """The LoRA set `diffuse` applies for these (models.chain.check_context_loras)."""
        from .checkpoints.assemble import is_loaded

        return chain.check_context_loras(loras, context_loras, self.loaded_loras, has_unconditional=has_unconditional,
                                         hosts_text_encoder=is_loaded(self.text_encoder))

    def _diffuse(self, context, unconditional_context=None, *, seed=None, steps=20, guidance_scale=7.5,
                 scheduler=None, height=None, width=None, image_latents=None, mask=None, masked_image_latents=None,
                 strength=1.0, mask_blur=0.0, initial_latents=None, model=None, check=None,
                 callback=None) -> Diffused:
        """The denoising loop from text contexts (and, for img2img and inpainting, the image
        latents and the pixel mask, read by models.masks' rule). `unconditional_context` None:
        the empty prompt's context. `initial_latents` replace the seeded starting noise."""
        if model not in (None, self.components.name):
            raise InvalidInput(f"this pipeline holds one diffusion model ({self.components.name!r}), not {model!r}",
                               "unknown_model")
        scheduler = scheduler or DEFAULT_SCHEDULER
        context = np.asarray(context, np.float32)
        if context.ndim != 3 or context.shape[0] < 1:
            raise InvalidInput(f"context must be [B, tokens, width], got {list(context.shape)}", "wrong_shape")
        batch_size = context.shape[0]
        self._check_common(steps, guidance_scale, batch_size, scheduler)
        max_steps = get_scheduler(scheduler, self.components.schedule).max_steps  # LCM: 50
        if steps > max_steps:
            raise InvalidInput(f"{scheduler} runs at most {max_steps} steps, got {steps}", "too_many_steps")
        seed = self._check_seed(seed)
        if not (isinstance(strength, (int, float)) and 0.0 < strength <= 1.0):
            raise InvalidInput(f"strength must be in (0, 1], got {strength!r}", "bad_strength")
        if image_latents is not None:
            image_latents = self._check_latents("image_latents", image_latents, batch_size)
            height, width = image_latents.shape[1] * self.vae_factor, image_latents.shape[2] * self.vae_factor
        height, width = self._check_size(height, width)
        # guidance <= 1 (SD-Turbo, LCM) runs no unconditional pass: models/sampling.py
        conditional_only = float(guidance_scale) <= 1.0 or bool(self.unet.config.time_cond_proj_dim)
        if conditional_only and unconditional_context is None:
            uncond = context  # never read: no need to encode the empty prompt
        else:
            uncond = self._unconditional_context(unconditional_context, batch_size)
        chunk = self.tokenizer.max_length
        if context.shape[1] != chunk or uncond.shape[1] != chunk:  # 77 x k: pad the shorter with empty chunks
            from . import prompt_weighting

            k = prompt_weighting.check_context_length(context.shape[1], chunk)
            j = prompt_weighting.check_context_length(uncond.shape[1], chunk, what="unconditional context")
            if k != j:
                empty = self._unconditional_context(None, 1)
                context = prompt_weighting.pad_chunks(context, max(k, j), empty, chunk)
                uncond = prompt_weighting.pad_chunks(uncond, max(k, j), empty, chunk)
        if context.shape != uncond.shape:
            raise InvalidInput(f"context {list(context.shape)} and unconditional context {list(uncond.shape)} "
                               "differ", "wrong_shape")
        params = dict(steps=steps, guidance=float(guidance_scale), seed=seed, scheduler=scheduler, height=height,
                      width=width)

        h, w = height // self.vae_factor, width // self.vae_factor
        noise = self.initial_noise(seed, batch_size, height, width)
        if initial_latents is not None:
            noise = np.asarray(initial_latents, np.float32)
            expected = (batch_size, h, w, self.latent_channels)
            if noise.shape != expected:
                raise InvalidInput(f"latents must have shape {list(expected)}, got {list(noise.shape)}", "wrong_shape")
        zeros = np.zeros((batch_size, h, w, self.latent_channels), np.float32)
        latent_mask = np.ones((batch_size, h, w, 1), np.float32)
        cond_latents, init_latents, mode = zeros, zeros, NO_INPAINT
        if image_latents is not None:
            init_latents = np.repeat(image_latents, batch_size // image_latents.shape[0], 0)
            mode, cond_latents = BLEND, init_latents  # img2img: all masked, blending is a no-op
            if mask is not None:
                weight = masks.repaint_weight(mask, masks.check_mask_blur(mask_blur), size=(height, width))
                latent_mask = self._latent_mask(weight, h, w, batch_size)
            if self.unet.config.is_inpainting:
                if masked_image_latents is None:
                    raise InvalidInput("this is a 9-channel inpainting model: send masked_image_latents too (the "
                                       "image encoder's latents of the image with the masked pixels set to 0)",
                                       "missing_tensor")
                masked = self._check_latents("masked_image_latents", masked_image_latents, batch_size)
                mode, cond_latents = CONCAT, np.repeat(masked, batch_size // masked.shape[0], 0)
                latent_mask = (latent_mask >= 0.5).astype(np.float32)
            params.update(strength=float(strength), mask_blur=float(mask_blur))
        elif self.unet.config.is_inpainting:
            mode = CONCAT  # txt2img on an inpainting UNet: everything masked, nothing known

        _require(self.unet)
        loop = self._loop(scheduler, mode, conditional_only)
        start = int(loop.scheduler.start_index(steps, strength)) if image_latents is not None else 0
        if start >= steps:
            raise InvalidInput(f"strength {strength} with {steps} steps leaves no step to run", "bad_strength")
        args = dict(
            num_steps=tf.constant(steps, tf.int32), context=tf.constant(context),
            uncond=tf.constant(uncond), guidance=tf.constant(float(guidance_scale), tf.float32),
            seed=tf.constant([seed, 1], tf.int64), mask=tf.constant(latent_mask),
            cond_latents=tf.constant(cond_latents), noise=tf.constant(noise),
        )
        x = loop.prepare(tf.constant(noise), args["num_steps"], tf.constant(start, tf.int32),
                         tf.constant(init_latents), args["noise"])
        if callback is None and check is None and self.runtime == "tensorflow":  # one graph for the whole loop
            x = loop.run(x, start=tf.constant(start, tf.int32), **args)
            return Diffused(x.numpy(), [seed + k for k in range(batch_size)], params)
        batcher = self.step_batcher
        with batcher.joined() if batcher is not None else contextlib.nullcontext():
            state = loop.scheduler.initial_state(x)
            with_x0 = callback is not None and _takes_x0(callback)
            for i in range(start, steps):
                if check is not None:
                    check()
                x, state, x0 = loop.step(x, state, tf.constant(i, tf.int32), **args)
                if with_x0:
                    callback(i - start + 1, steps - start, x.numpy(), x0=x0.numpy())
                elif callback is not None:
                    callback(i - start + 1, steps - start, x.numpy())
        return Diffused(x.numpy(), [seed + k for k in range(batch_size)], params)

    def _unconditional_context(self, given, batch_size):
        if given is None:
            if self._uncond is None:
                self._uncond = self.encode_text([""])
            given = self._uncond
        uncond = np.asarray(given, np.float32)
        return np.repeat(uncond, batch_size, 0) if uncond.shape[0] == 1 else uncond

    # -- generation ----------------------------------------------------------------------
    def initial_noise(self, seed: int, batch_size: int, height: int, width: int) -> np.ndarray:
        """Row k is drawn from seed + k, so image k of a batch equals a single run with seed + k."""
        h, w = height // self.vae_factor, width // self.vae_factor
        rows = [
            tf.random.stateless_normal([h, w, self.latent_channels], seed=[(seed + k) % (MAX_SEED + 1), 0])
            for k in range(batch_size)
        ]
        return tf.stack(rows).numpy()

    def _loop(self, scheduler, mode, conditional_only):
        """One traced loop per (scheduler, mode, whether guidance > 1): each graph holds one UNet
        call path (guided, or conditional only) instead of a runtime branch over both."""
        key = (scheduler, mode, "conditional_only") if conditional_only else (scheduler, mode)
        if key not in self._loops:
            sched = get_scheduler(scheduler, self.components.schedule)
            # `step` calls one compiled UNet shared by every loop (models/sampling.py), made on first use
            loop = DenoiseLoop(self.unet, sched, mode, jit_compile=self.jit_compile,
                               guidance_batching=self.guidance_batching, conditional_only=bool(conditional_only),
                               unet_call=self._unet_conditional, guided_call=self._unet_guided, shape_generic=True)
            self._loops.setdefault(key, loop)  # server threads may race here: one loop per key wins
        return self._loops[key]

    def start_step_batching(self, max_rows: int, lock=None):
        """Share the UNet calls (and the decodes) of loops running at once in several threads
        (models/step_batcher.py): what a server running several requests at once calls. The
        shared calls run under `lock`, so a caller must not hold it while it diffuses or decodes."""
        from .checkpoints.assemble import is_loaded
        from .step_batcher import StepBatcher

        decode = (lambda z: self._decode(z)) if is_loaded(self.decoder) else None
        self.step_batcher = StepBatcher(lambda *a: self._compiled_guided()(*a), lambda *a: self._compiled("unet")(*a),
                                        decode_fn=decode, max_rows=max_rows, lock=lock)

    def _unet_conditional(self, inputs):
        batcher = self.step_batcher
        return batcher.conditional(inputs) if batcher is not None else self._compiled("unet")(*inputs)

    def _unet_guided(self, *inputs):
        batcher = self.step_batcher
        return batcher.guided(*inputs) if batcher is not None else self._compiled_guided()(*inputs)

    def generate(self, prompt, negative_prompt=None, num_steps: int = 20, guidance_scale: float = 7.5,
                 seed: int | None = None, scheduler: str = DEFAULT_SCHEDULER, height: int | None = None,
                 width: int | None = None, batch_size: int = 1, latents=None, image=None, mask=None,
                 strength: float = 1.0, mask_blur: float = 0.0, callback=None, context=None,
                 unconditional_context=None, image_latents=None, masked_image_latents=None,
                 decode: bool = True) -> Generation:
        """One entry point for txt2img, img2img and inpainting, through models.chain.

        `context`/`unconditional_context` (text embeddings computed elsewhere) and `image_latents`
        (with `masked_image_latents` for a 9-channel UNet: the image encoder ran on a client)
        go straight to the diffusion stage; the client then pastes the unmasked pixels back.
        `decode=False` skips the VAE decoder: `images` is then None.
        `callback(step, num_steps, latents)` runs after every step; raise Cancelled to stop. A
        callback that takes the keyword `x0` also gets the scheduler's predicted final latents at that
        step (what `preview` pictures).
        """
        self._check_batch(batch_size)  # the chain sizes its contexts by it before diffuse checks it again
        common = dict(steps=num_steps, guidance_scale=guidance_scale, seed=seed, scheduler=scheduler,
                      callback=callback)
        if image is not None:
            if image_latents is not None:
                raise InvalidInput("give either image or image_latents, not both")
            if mask is None:
                r = chain.img2img(self, prompt, image, negative_prompt, strength=strength, batch_size=batch_size,
                                  **common)
            else:
                r = chain.inpaint(self, prompt, image, mask, negative_prompt, batch_size=batch_size,
                                  strength=strength, mask_blur=mask_blur, **common)
            return Generation(r.images, r.latents, r.seeds, r.parameters)
        if context is None and image_latents is None:
            r = chain.txt2img(self, prompt, negative_prompt, height=height, width=width, batch_size=batch_size,
                              initial_latents=latents, decode=decode, **common)
            return Generation(r.images, r.latents, r.seeds, r.parameters)
        # latent level: contexts and/or image latents computed elsewhere
        if context is None:
            context, negative_context, _, _ = chain.contexts(self, prompt, negative_prompt, batch_size, None)
            unconditional_context = negative_context if unconditional_context is None else unconditional_context
        context = np.asarray(context, np.float32)
        if context.shape[0] == 1 and batch_size > 1:
            context = np.repeat(context, batch_size, 0)
        if context.shape[0] != batch_size:
            raise InvalidInput(f"{context.shape[0]} contexts for a batch of {batch_size}", "wrong_shape")
        gen = self.diffuse(context, unconditional_context, height=height, width=width, image_latents=image_latents,
                           mask=mask, masked_image_latents=masked_image_latents, strength=strength,
                           mask_blur=mask_blur, initial_latents=latents, **common)
        images = self.decode(gen.latents) if decode else None
        params = {**gen.parameters, "prompt": prompt, "negative_prompt": negative_prompt or ""}
        return Generation(images, gen.latents, gen.seeds, params)

    def _check_latents(self, name, latents, batch_size):
        latents = np.asarray(latents, np.float32)
        if latents.ndim != 4 or latents.shape[-1] != self.latent_channels or latents.shape[0] not in (1, batch_size):
            raise InvalidInput(f"{name} must have shape [1 or {batch_size}, h, w, {self.latent_channels}], got "
                               f"{list(latents.shape)}", "wrong_shape")
        if not np.all(np.isfinite(latents)):
            raise InvalidInput(f"{name} contains NaN or infinite values", "not_finite")
        return latents

    def _latent_mask(self, weight, h, w, batch_size):
        """The repaint weight at latent resolution (models.masks.latent_weight), one per row."""
        m = masks.latent_weight(weight, self.vae_factor)
        assert m.shape[:2] == (h, w), (m.shape, h, w)
        return np.repeat(m[None], batch_size, 0)

    # -- the stable public API -----------------------------------------------------------
    def text_to_image(self, prompt, negative_prompt=None, num_steps=20, guidance_scale=7.5, seed=None,
                      scheduler=DEFAULT_SCHEDULER, height=None, width=None, batch_size=1, latents=None,
                      callback=None) -> np.ndarray:
        return self.generate(prompt, negative_prompt, num_steps, guidance_scale, seed, scheduler, height,
                             width, batch_size, latents=latents, callback=callback).images

    def image_to_image(self, prompt, image, strength=0.75, negative_prompt=None, num_steps=20,
                       guidance_scale=7.5, seed=None, scheduler=DEFAULT_SCHEDULER, batch_size=1,
                       callback=None) -> np.ndarray:
        return self.generate(prompt, negative_prompt, num_steps, guidance_scale, seed, scheduler,
                             batch_size=batch_size, image=image, strength=strength, callback=callback).images

    def inpaint(self, prompt, image, mask, negative_prompt=None, num_steps=20, guidance_scale=7.5, seed=None,
                scheduler=DEFAULT_SCHEDULER, batch_size=1, strength=1.0, mask_blur=0.0, invert_mask=False,
                only_masked=False, padding=32, callback=None) -> np.ndarray:
        """`mask` [H, W]: values >= 128 of 255 (>= 0.5 for floats) repaint: white or painted, as in
        diffusers, A1111 and Gradio (models/masks.py has the whole rule). Any image size; with
        `only_masked` the region around the mask (plus `padding` px) is inpainted at the model's
        size and pasted back."""
        if mask is None:
            raise InvalidInput("inpaint needs a mask")
        self._check_batch(batch_size)
        return chain.inpaint(self, prompt, image, mask, negative_prompt, steps=num_steps,
                             guidance_scale=guidance_scale, seed=seed, scheduler=scheduler, batch_size=batch_size,
                             strength=strength, mask_blur=mask_blur, invert_mask=invert_mask,
                             only_masked=only_masked, padding=padding, callback=callback).images
