"""Paying the compile cost at start-up instead of on a user's request.

Every compiled piece a request can reach (the text encoder, the UNet's guided and conditional
calls, the decoder and previews, the image encoder, and each scheduler's small per-step graphs
for each mode) is shape-generic (models/compiled.py): traced and run once here, at the
model's default size, it then serves every size, batch and prompt length. On the default
model a fresh server otherwise charged the first request of each new combination 3-32 s and
the process grew 2.6 GB over sixteen of them (bench/compile_stalls.py).

`warm_up_tasks` lists the work as (label, callable) so a server can run it in a background
thread, one task at a time under its model lock: a request that arrives meanwhile waits for
at most the task in progress, not for the whole list. The default scheduler comes first.
"""

from __future__ import annotations

import contextlib
import logging
import time

import tensorflow as tf

from .sampling import BLEND, CONCAT, NO_INPAINT

log = logging.getLogger(__name__)


def _modes(pipe):
    if pipe.unet.config.is_inpainting:
        return [CONCAT]  # txt2img on a 9-channel UNet is CONCAT too
    return [NO_INPAINT, BLEND]  # BLEND: img2img and inpainting (image latents may come from a client)


def _has(pipe, name) -> bool:
    """Whether the pipeline holds this network (a component server loads only its own)."""
    from .checkpoints.assemble import NotLoaded

    network = getattr(pipe, name)
    return network is not None and not isinstance(network, NotLoaded)


def warm_up_tasks(pipe, schedulers=None) -> list:
    """[(label, fn)] that together trace and run once everything a request can call.
    `schedulers` None: all of them, the pipeline's default first."""
    from .pipeline import DEFAULT_SCHEDULER
    from .schedulers import SCHEDULERS

    names = list(schedulers or SCHEDULERS)
    if DEFAULT_SCHEDULER in names:
        names.remove(DEFAULT_SCHEDULER)
        names.insert(0, DEFAULT_SCHEDULER)
    h = w = pipe.unet.config.sample_size
    latents = tf.zeros([1, h, w, pipe.latent_channels])
    outputs = {}  # the UNet's outputs, which the schedulers' update graphs take (their dtype matters)

    def text():
        outputs["context"] = tf.constant(pipe._unconditional_context(None, 1))

    def unet_context():
        if "context" not in outputs:  # a diffusion server: the contexts come from clients
            outputs["context"] = tf.zeros([1, pipe.tokenizer.max_length, pipe.unet.config.cross_attention_dim])

    def unet():
        unet_context()
        cfg = pipe.unet.config
        x_in = tf.zeros([1, h, w, cfg.in_channels])
        t = tf.fill([1], 500.0)
        ctx = outputs["context"]
        extra = [tf.zeros([1, cfg.time_cond_proj_dim])] if cfg.time_cond_proj_dim else []
        outputs["conditional"] = pipe._compiled("unet")(x_in, t, ctx, *extra)
        if not cfg.time_cond_proj_dim:  # LCM UNets never take the guided pass
            outputs["guided"] = pipe._compiled_guided()(x_in, t, ctx, ctx)

    def decoder():
        pipe._decode(latents).numpy()  # the compiled decoder itself: a step batcher's decode would wait for the lock held here
        pipe.preview(latents)

    def encoder():
        pipe.encode_image(tf.zeros([1, h * pipe.vae_factor, w * pipe.vae_factor, 3]))

    def loops(scheduler, mode):
        def run():
            for conditional_only in (False, True):
                if conditional_only or "guided" in outputs:
                    pipe._loop(scheduler, mode, conditional_only).warm_up(latents, outputs.get("guided"),
                                                                          outputs["conditional"])
        return run

    tasks = [("text encoder", text)] if _has(pipe, "text_encoder") else []
    if _has(pipe, "unet"):
        tasks.append(("UNet", unet))
    if _has(pipe, "decoder"):
        tasks.append(("decoder", decoder))
    if _has(pipe, "encoder"):
        tasks.append(("image encoder", encoder))
    if _has(pipe, "unet"):
        tasks += [(f"{name} ({mode})", loops(name, mode)) for name in names for mode in _modes(pipe)]
    return tasks


def warm_up(pipe, schedulers=None, lock=None) -> list:
    """Run warm_up_tasks one by one (each under `lock` when given) -> [(label, seconds)]."""
    done = []
    for label, fn in warm_up_tasks(pipe, schedulers):
        with lock if lock is not None else contextlib.nullcontext():
            start = time.perf_counter()
            fn()
            done.append((label, time.perf_counter() - start))
        log.debug("warm-up: %s %.2f s", label, done[-1][1])
    return done
