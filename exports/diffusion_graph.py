"""The whole sampling loop as one servable graph: seeds in, latents out.

A TF Serving client must get exactly what `StableDiffusionPipeline.generate` gives for the
same seed, and TF Serving's batcher may merge unrelated requests into one batch. So every
input has a batch axis, and nothing about a row may depend on the other rows:

* initial noise is drawn per row from that row's seed, as `pipeline.initial_noise` draws row k
  from seed + k (so a batch of consecutive seeds equals the pipeline's batch);
* Euler-ancestral's per-step noise is drawn per row from [seed, 1], which is what a
  single-image pipeline run uses (a *batched* pipeline run draws one tensor for the whole
  batch from the first seed, so there rows k > 0 differ; a served row never depends on
  whatever else the batcher put next to it);
* guidance is per row (it broadcasts in the guidance formula);
* rows are grouped by (scheduler, num_steps, start step, guidance <= 1): each group runs its
  own loop on its own rows, so requests with different settings can share a batch safely, and
  a group whose guidance is at most 1 runs the UNet without the unconditional pass (as the
  pipeline does), without another group's rows forcing it to.

The loops themselves are `models.sampling.DenoiseLoop`, the same code the pipeline runs.

Compact tensors for TF Serving's REST API (`txt2img_bytes`, `inpaint_bytes`): JSON number lists
make one 77 x 768 context about 1.2 MB, so these signatures take every float tensor as one
string per row of raw little-endian float16 values (`<name>_bytes`; the request sends it as
{"b64": ...}, which TF Serving decodes into the string) and answer `latents_bytes` the same way
(TF Serving base64-encodes outputs whose name ends in `_bytes`). They call the float signatures'
functions, so the saved graph holds the loops once and the numbers are the same.
"""

from __future__ import annotations

import tensorflow as tf

from models.pipeline import MAX_SEED, MAX_STEPS
from models.sampling import BLEND, CONCAT, DenoiseLoop
from models.schedulers import SCHEDULERS
from models.schedulers.euler_ancestral import stateless_normal

from .signatures import Untracked

SEED_COUNT = MAX_SEED + 1  # seeds are 0 .. MAX_SEED (models.pipeline); larger ones wrap


# Every scheduler of the registry, in the order of the `scheduler` input's indices (written to
# the manifest, which TF Serving clients and the edge clients read). The four the first exports
# had keep their indices 0-3; later ones are appended, so an index never changes meaning between
# exporter versions. tests/test_export_families.py checks that this covers the registry.
EXPORTED_SCHEDULERS = ("ddim", "dpmpp_2m", "euler", "euler_a", "dpmpp_2m_karras", "euler_karras", "lcm")


def scheduler_names():
    """The order of the `scheduler` input's indices (also written to the manifest)."""
    unknown = [name for name in EXPORTED_SCHEDULERS if name not in SCHEDULERS]
    if unknown:
        raise ValueError(f"EXPORTED_SCHEDULERS names {unknown}, which models.schedulers does not have")
    return list(EXPORTED_SCHEDULERS)


def _export_scheduler(name, schedule, row_shape, pad_to=None):
    """The registry scheduler, with per-row ancestral noise and (for XLA) padded plans.

    `pad_to` gives every plan a static length so one XLA program serves all step counts
    (see models/schedulers/base.py); without XLA the plans stay exactly the pipeline's.
    """
    base = SCHEDULERS[name]
    fixed_length = pad_to

    class Exported(base):
        def plan(self, num_steps, pad_to=None):
            return super().plan(num_steps, pad_to=fixed_length if pad_to is None else pad_to)

        def _noise(self, shape, seed, i):
            seed = tf.convert_to_tensor(seed, tf.int64)
            if seed.shape.rank == 1:
                return super()._noise(shape, seed, i)
            rows = tf.map_fn(lambda s: stateless_normal(tf.constant(row_shape), s, i), seed,
                             fn_output_signature=tf.TensorSpec(row_shape, tf.float32))
            return tf.reshape(rows, shape)

    Exported.__name__ = f"Exported{base.__name__}"
    return Exported(schedule)


_BYTE_STRINGS = [bytes([i]) for i in range(256)]


def _bytes_spec(spec):
    """A tensor input (more than a batch axis) as one string per row; per-row numbers stay."""
    if spec.shape.rank > 1:
        return tf.TensorSpec(spec.shape[:1], tf.string, name=f"{spec.name}_bytes")
    return spec


def floats_from_bytes(data, tail, what, multiple_of=None):
    """[B] strings of little-endian float16 -> float32 [B, *tail] (tail may hold one -1, then the
    row's value count must be a positive multiple of `multiple_of`). Wrong sizes and NaN or
    infinite values fail the request with a message naming the input."""
    flat = tf.io.decode_raw(data, tf.float16, little_endian=True)
    count = tf.shape(flat)[1]
    if multiple_of is None:
        expected = 1
        for d in tail:
            expected *= d
        tf.debugging.assert_equal(count, expected, message=f"{what}: each row must hold {expected} float16 values "
                                  f"({' x '.join(map(str, tail))}, {2 * expected} bytes)")
    else:
        tf.debugging.assert_positive(count, message=f"{what} is empty")
        tf.debugging.assert_equal(tf.math.floormod(count, multiple_of), 0,
                                  message=f"{what}: each row must hold a multiple of {multiple_of} float16 values "
                                          f"(77-token chunks x the context width)")
    values = tf.reshape(tf.cast(flat, tf.float32), tf.concat([tf.shape(flat)[:1], tail], 0))
    tf.debugging.assert_all_finite(values, f"{what} holds NaN or infinite values")
    return values


def bytes_from_floats(values):
    """float [B, ...] -> [B] strings of its rows as little-endian float16 (tf.bitcast gives the
    host's byte order: little-endian on the x86 and ARM machines TF Serving runs on)."""
    octets = tf.reshape(tf.bitcast(tf.cast(values, tf.float16), tf.uint8), [tf.shape(values)[0], -1])
    return tf.strings.reduce_join(tf.gather(tf.constant(_BYTE_STRINGS), tf.cast(octets, tf.int32)), axis=1)


class DiffusionModule(tf.Module):
    """`serving_default` (txt2img) and `inpaint` signatures around the UNet.

    Height and width are fixed at the model's default size: the UNet is convolutional, but a
    fixed latent shape keeps every served graph (and its XLA program) static.
    """

    def __init__(self, unet, schedule, latent_size, latent_channels, context_length, batch=None,
                 jit_compile=False):
        super().__init__(name="diffusion")
        self._unet = Untracked(unet)
        self.schedulers = scheduler_names()
        self.latent_shape = (latent_size, latent_size, latent_channels)
        self.inpainting_unet = unet.config.is_inpainting
        # txt2img reuses the inpainting loop with mask 1 (BLEND: 1 * x + 0 * known is exactly x;
        # CONCAT: what the pipeline does for 9-channel UNets): half the traced loops to save.
        self.modes = (CONCAT, CONCAT) if self.inpainting_unet else (BLEND, BLEND)
        pad_to = MAX_STEPS if jit_compile else None
        row_shape = (1, *self.latent_shape)
        self._loops = {
            (k, mode): DenoiseLoop(unet, _export_scheduler(name, schedule, row_shape, pad_to), mode,
                                   jit_compile=jit_compile)
            for k, name in enumerate(self.schedulers) for mode in set(self.modes)
        }
        h, w, c = self.latent_shape
        dim = unet.config.cross_attention_dim
        self.context_length = context_length
        # 77 x k tokens (models.prompt_weighting: k 75-token chunks; both contexts of a request
        # padded to the same k by the client); an XLA program keeps one shape: 77
        seq = context_length if jit_compile else None
        common = [
            tf.TensorSpec([batch, seq, dim], tf.float32, name="context"),
            tf.TensorSpec([batch, seq, dim], tf.float32, name="unconditional_context"),
            tf.TensorSpec([batch], tf.int64, name="seed"),
            tf.TensorSpec([batch], tf.float32, name="guidance_scale"),
            tf.TensorSpec([batch], tf.int32, name="num_steps"),
            tf.TensorSpec([batch], tf.int32, name="scheduler"),
        ]
        inpaint = common + [
            tf.TensorSpec([batch, h, w, 1], tf.float32, name="mask"),
            tf.TensorSpec([batch, h, w, c], tf.float32, name="image_latents"),
            tf.TensorSpec([batch], tf.float32, name="strength"),
        ]
        if self.inpainting_unet:
            inpaint.append(tf.TensorSpec([batch, h, w, c], tf.float32, name="masked_image_latents"))
            self.inpaint = tf.function(self._inpaint_concat, input_signature=inpaint)
        else:
            self.inpaint = tf.function(self._inpaint_blend, input_signature=inpaint)
        self.serve = tf.function(self._txt2img, input_signature=common)
        # the compact-tensor twins (module docstring): float inputs and the output as float16 bytes
        self._byte_shapes = {"context": ((-1, dim), context_length * dim),
                             "unconditional_context": ((-1, dim), context_length * dim),
                             "mask": ((h, w, 1), None), "image_latents": ((h, w, c), None),
                             "masked_image_latents": ((h, w, c), None)}
        bytes_specs = [_bytes_spec(spec) for spec in inpaint]
        self.txt2img_bytes = tf.function(lambda *a: self._from_bytes(self.serve, bytes_specs[:len(common)], a),
                                         input_signature=bytes_specs[:len(common)])
        self.inpaint_bytes = tf.function(lambda *a: self._from_bytes(self.inpaint, bytes_specs, a),
                                         input_signature=bytes_specs)

    def signatures(self):
        return {"serving_default": self.serve, "inpaint": self.inpaint, "txt2img_bytes": self.txt2img_bytes,
                "inpaint_bytes": self.inpaint_bytes}

    def _from_bytes(self, signature, specs, args):
        inputs = {}
        for spec, value in zip(specs, args):
            name = spec.name.removesuffix("_bytes")
            if name in self._byte_shapes:
                tail, multiple_of = self._byte_shapes[name]
                value = floats_from_bytes(value, tail, spec.name, multiple_of)
            inputs[name] = value
        return {"latents_bytes": bytes_from_floats(signature(**inputs)["latents"])}

    # -- signatures ----------------------------------------------------------------------
    def _txt2img(self, context, unconditional_context, seed, guidance_scale, num_steps, scheduler):
        noise = self.initial_noise(seed)
        zeros = tf.zeros_like(noise)
        ones = tf.ones_like(noise[..., :1])
        start = tf.zeros_like(num_steps)
        latents = self._sample(self.modes[0], noise, context, unconditional_context, seed, guidance_scale,
                               num_steps, scheduler, start, mask=ones, cond_latents=zeros, init_latents=zeros)
        return {"latents": latents}

    def _inpaint_blend(self, context, unconditional_context, seed, guidance_scale, num_steps, scheduler,
                       mask, image_latents, strength):
        """`mask` 1 = repaint (the pipeline's area-resized latent mask); known latents are
        blended back after every step, noised to the next timestep."""
        noise = self.initial_noise(seed)
        start = self._start(num_steps, scheduler, strength)
        latents = self._sample(BLEND, noise, context, unconditional_context, seed, guidance_scale, num_steps,
                               scheduler, start, mask=mask, cond_latents=image_latents,
                               init_latents=image_latents)
        return {"latents": latents}

    def _inpaint_concat(self, context, unconditional_context, seed, guidance_scale, num_steps, scheduler,
                        mask, image_latents, strength, masked_image_latents):
        """9-channel UNets see the (binarised, as the pipeline does) mask and the masked image's
        latents as extra channels; `image_latents` only seeds strength < 1."""
        noise = self.initial_noise(seed)
        start = self._start(num_steps, scheduler, strength)
        mask = tf.cast(mask >= 0.5, tf.float32)
        latents = self._sample(CONCAT, noise, context, unconditional_context, seed, guidance_scale, num_steps,
                               scheduler, start, mask=mask, cond_latents=masked_image_latents,
                               init_latents=image_latents)
        return {"latents": latents}

    # -- pieces --------------------------------------------------------------------------
    def initial_noise(self, seed):
        """Row k: stateless_normal(seed=[seed_k, 0]), exactly `StableDiffusionPipeline.initial_noise`.

        Drawn outside any XLA cluster: XLA maps Philox bits to floats differently."""
        seed = tf.math.floormod(tf.cast(seed, tf.int64), SEED_COUNT)
        shape = tf.constant(self.latent_shape, tf.int32)
        return tf.map_fn(
            lambda s: tf.random.stateless_normal(shape, seed=tf.stack([s, tf.constant(0, tf.int64)])),
            seed, fn_output_signature=tf.TensorSpec(self.latent_shape, tf.float32),
        )

    def _start(self, num_steps, scheduler, strength):
        """First step index per row for an inpainting/img2img `strength`, as the pipeline."""
        starts = tf.stack([self._loops[(k, self.modes[1])].scheduler.start_index(num_steps, strength)
                           for k in range(len(self.schedulers))])
        index = tf.clip_by_value(scheduler, 0, len(self.schedulers) - 1)
        start = tf.gather(tf.transpose(starts), index, batch_dims=1)
        tf.debugging.assert_less(start, num_steps, message="strength leaves no denoising step to run; "
                                 "raise strength or num_steps")
        return start

    def _sample(self, mode, noise, context, uncond, seed, guidance, num_steps, scheduler, start, mask,
                cond_latents, init_latents):
        count = len(self.schedulers)
        tf.debugging.assert_non_negative(scheduler, message=f"scheduler must be an index into {self.schedulers}")
        tf.debugging.assert_less(scheduler, count, message=f"scheduler must be an index into {self.schedulers}")
        tf.debugging.assert_greater_equal(num_steps, 1, message="num_steps must be >= 1")
        tf.debugging.assert_less_equal(num_steps, MAX_STEPS, message=f"num_steps must be <= {MAX_STEPS}")
        steps = tf.cast(num_steps, tf.int64)
        key = (tf.cast(scheduler, tf.int64) * (MAX_STEPS + 1) + steps) * (MAX_STEPS + 1) + tf.cast(start, tf.int64)
        key = key * 2 + tf.cast(guidance <= 1.0, tf.int64)  # DenoiseLoop skips the unconditional pass
        groups, group_of_row = tf.unique(key)
        seed = tf.math.floormod(tf.cast(seed, tf.int64), SEED_COUNT)
        per_row = (noise, context, uncond, seed, tf.reshape(guidance, [-1, 1, 1, 1]), mask, cond_latents,
                   init_latents)

        def run_group(g, out):
            rows = tf.reshape(tf.where(tf.equal(group_of_row, tf.cast(g, group_of_row.dtype))), [-1])
            x0, ctx, unc, sd, gd, m, cond, init = [tf.gather(t, rows) for t in per_row]
            first = rows[0]
            n, s, st = num_steps[first], scheduler[first], start[first]
            seeds = tf.stack([sd, tf.ones_like(sd)], axis=1)  # the pipeline's scheduler seed [seed, 1]

            def branch(k):
                loop = self._loops[(k, mode)]

                def run():
                    x = loop.prepare(x0, n, st, init, x0)
                    return loop.run(x, num_steps=n, start=st, context=ctx, uncond=unc, guidance=gd, seed=seeds,
                                    mask=m, cond_latents=cond, noise=x0)
                return run

            x = tf.switch_case(s, [branch(k) for k in range(count)])
            return g + 1, tf.tensor_scatter_nd_update(out, rows[:, None], x)

        _, latents = tf.while_loop(lambda g, _: g < tf.size(groups), run_group,
                                   (tf.constant(0), tf.zeros_like(noise)))
        return latents

    def example_inputs(self, signature="serving_default", batch=1, num_steps=1, scheduler=0):
        """Small valid requests (warm-up records, export self-checks)."""
        spec = self.signatures()[signature].input_signature
        out = {}
        for s in spec:
            shape = [batch if d is None else d for d in s.shape.as_list()]
            if s.name in ("context", "unconditional_context"):
                shape[1] = self.context_length
            out[s.name] = tf.zeros(shape, s.dtype)
        out["seed"] = tf.range(batch, dtype=tf.int64)
        out["guidance_scale"] = tf.fill([batch], 7.5)
        out["num_steps"] = tf.fill([batch], num_steps)
        out["scheduler"] = tf.fill([batch], scheduler)
        if signature == "inpaint":
            out["strength"] = tf.ones([batch])
        return out
