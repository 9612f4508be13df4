"""Serving functions around the text encoder, the VAE halves and the bare UNet.

Each wrapper owns the pre/post-processing a client would otherwise re-implement (and get
subtly wrong): scaling by the VAE factor, the uint8 conversion with the pipeline's rounding,
the posterior mean. The same functions feed every format, so a SavedModel, a TFLite file and
a TF.js model of one component compute the same thing. `batch`/`size` None means dynamic
(SavedModel, TF.js); TFLite gets fixed shapes, which its runtimes plan memory for.
"""

from __future__ import annotations

import tensorflow as tf

from models.vae import split_moments


class Untracked:
    """Holds a Keras model out of the module's object graph, so the SavedModel stores each
    weight once: as the tf.Variable the signatures capture (see `track_variables`), not a
    second time through the Keras wrapper."""

    def __init__(self, obj):
        self.obj = obj


def track_variables(module):
    """Attach the tf.Variables the signatures capture to `module` before saving or converting.

    Keras 3 variables are wrappers; reached only through them, the TFLite converter sees the
    weights as mutable resource variables and keeps VAR_HANDLE ops (a file without weights
    that computes NaN in a plain interpreter). Tracking the captured tf.Variables themselves,
    as keras.export.ExportArchive does, lets it freeze them into constants.
    """
    found, seen = [], set()
    for fn in module.signatures().values():
        for v in fn.get_concrete_function().variables:
            if id(v) not in seen:
                seen.add(id(v))
                found.append(v)
    module._captured_variables = found
    return module


class _Wrapper(tf.Module):
    def signatures(self):
        return {"serving_default": self.serve}

    def example_inputs(self, signature="serving_default", batch=1):
        """Zero-ish valid inputs with any dynamic dimension set (batch and, if dynamic, the
        model's default spatial size)."""
        out = {}
        for spec in self.signatures()[signature].input_signature:
            shape = spec.shape.as_list()
            shape[0] = batch if shape[0] is None else shape[0]
            shape = [self.default_dims.get(i, 1) if d is None else d for i, d in enumerate(shape)]
            out[spec.name] = tf.zeros(shape, spec.dtype)
        return out


class TextEncoderModule(_Wrapper):
    """token_ids int32 [B, 77] -> context float32 [B, 77, D].

    `clip_skip` (A1111's meaning, as the pipeline's) is baked in: an edge client cannot pick a
    layer of a file, and a context from another layer than the pipeline's would condition the
    served UNet on what it was not run with."""

    def __init__(self, text_encoder, batch=None, jit_compile=False, clip_skip=1):
        super().__init__(name="text_encoder")
        length = text_encoder.config.max_position_embeddings
        self.clip_skip = int(clip_skip)
        self._net = Untracked(text_encoder.with_clip_skip(self.clip_skip))
        self.default_dims = {}
        self.serve = tf.function(self._serve, jit_compile=jit_compile,
                                 input_signature=[tf.TensorSpec([batch, length], tf.int32, name="token_ids")])

    def _serve(self, token_ids):
        return {"context": tf.cast(self._net.obj(token_ids, training=False), tf.float32)}


class DecoderModule(_Wrapper):
    """latents [B, h, w, 4] (SD-scaled) -> images uint8 [B, 8h, 8w, 3] and images_float in [-1, 1].

    uint8 is what a client shows; the float output is there for clients that post-process
    (TF.js turns uint8 into int32 anyway)."""

    def __init__(self, decoder, scaling_factor, latent_channels, latent_size, batch=None, size=None,
                 jit_compile=False, name="decoder"):
        super().__init__(name=name)
        self._net, self.scaling_factor = Untracked(decoder), float(scaling_factor)
        self.default_dims = {1: latent_size, 2: latent_size}
        self.serve = tf.function(self._serve, jit_compile=jit_compile, input_signature=[
            tf.TensorSpec([batch, size, size, latent_channels], tf.float32, name="latents")])

    def _serve(self, latents):
        images = tf.cast(self._net.obj(latents / self.scaling_factor, training=False), tf.float32)
        pixels = tf.clip_by_value(tf.round((images + 1.0) * 127.5), 0.0, 255.0)
        return {"images": tf.cast(pixels, tf.uint8), "images_float": images}


class ImageEncoderModule(_Wrapper):
    """images uint8 [B, H, W, 3] -> latents float32 [B, H/8, W/8, 4]: posterior mean x scaling
    factor, what img2img and inpainting start from (`pipeline.encode_image`). TAESD's encoder
    (`outputs_latents`) has no posterior: its output is the latents, as the pipeline reads it."""

    def __init__(self, encoder, scaling_factor, image_size, batch=None, size=None, jit_compile=False,
                 name="image_encoder"):
        super().__init__(name=name)
        self._net, self.scaling_factor = Untracked(encoder), float(scaling_factor)
        self.posterior = not getattr(encoder, "outputs_latents", False)
        self.default_dims = {1: image_size, 2: image_size}
        self.serve = tf.function(self._serve, jit_compile=jit_compile, input_signature=[
            tf.TensorSpec([batch, size, size, 3], tf.uint8, name="images")])

    def _serve(self, images):
        pixels = tf.cast(images, tf.float32) / 127.5 - 1.0
        encoded = self._net.obj(pixels, training=False)
        mean = split_moments(encoded)[0] if self.posterior else encoded
        return {"latents": tf.cast(mean, tf.float32) * self.scaling_factor}


class UNetStepModule(_Wrapper):
    """One model output (noise, or v for v-prediction models), for runtimes that cannot hold the
    sampling loop (TFLite): the client runs the scheduler itself and feeds [unconditional,
    conditional] as a batch of 2. An LCM-distilled UNet (`time_cond_proj_dim`) also takes
    `guidance_scale` [B]; the graph turns it into the embedding of guidance - 1 the UNet was
    distilled with (models.unet.guidance_embedding), so clients need not reimplement it."""

    def __init__(self, unet, latent_size, context_length, batch=2):
        super().__init__(name="diffusion")
        self._net = Untracked(unet)
        c = unet.config
        self.guidance_dim = c.time_cond_proj_dim
        self.default_dims = {}
        spec = [
            tf.TensorSpec([batch, latent_size, latent_size, c.in_channels], tf.float32, name="latents"),
            tf.TensorSpec([batch], tf.float32, name="timesteps"),
            tf.TensorSpec([batch, context_length, c.cross_attention_dim], tf.float32, name="context"),
        ]
        if self.guidance_dim:
            spec.append(tf.TensorSpec([batch], tf.float32, name="guidance_scale"))
            self.serve = tf.function(self._serve_guided, input_signature=spec)
        else:
            self.serve = tf.function(self._serve, input_signature=spec)

    def _serve(self, latents, timesteps, context):
        return {"noise": tf.cast(self._net.obj([latents, timesteps, context], training=False), tf.float32)}

    def _serve_guided(self, latents, timesteps, context, guidance_scale):
        from models.unet import guidance_embedding

        cond = guidance_embedding(guidance_scale - 1.0, self.guidance_dim)
        return {"noise": tf.cast(self._net.obj([latents, timesteps, context, cond], training=False), tf.float32)}
