"""Time per classifier-free-guided denoising step of SD v1 on this CPU: ours vs KerasCV vs diffusers.

    python -m bench.unet_step [--size 256] [--steps 3] [--repeats 3] [--out bench/results/unet_step.json]

Every variant builds the full-size SD v1 UNet (860M parameters, float32, random weights, nothing
downloaded) at batch 1 and runs `--steps` guided DDIM steps per repetition, after a warm-up that
traces / compiles. The reported time per step is the MEDIAN over `--repeats` repetitions of
(loop time / steps), because other jobs may share the CPU; the load average is recorded.

Variants (each in its own subprocess, so that peak RSS figures do not mix):
  ours       models.sampling.DenoiseLoop.run (the whole loop is one tf.function), float32, with
             the pipeline's CPU default guidance_batching="split" (two batch-1 UNet calls)
  ours_xla   the same with jit_compile=True (XLA on CPU)
  ours_bf16  bfloat16 weights and math (load_pipeline(dtype="bfloat16")), CFG as one batch-2 call
  kerascv    keras_cv 0.9.0 StableDiffusion.generate_image itself: per step two batch-1
             predict_on_batch calls (unconditional, conditional) + guidance + DDIM update in
             numpy/eager ops. Its sub-models are built with download_weights=False; the text
             encoder and decoder are replaced by stubs returning fixed arrays (they run once per
             image, not per step, and would only add memory and noise)
  diffusers  diffusers.UNet2DConditionModel with the same config (torch CPU, eval,
             inference_mode, torch threads = CPU count), one batch-2 call per step + DDIMScheduler

  ours_openvino, ours_openvino_bf16 (only when named in --variants): our pipeline with
             runtime="openvino" (models/openvino_runtime.py), float32 / bfloat16 weights: the
             user's path, `pipe.diffuse(context, uncond, steps=N)` on a UNet-only pipeline (what
             a diffusion server runs), OpenVINO's CPU plugin running our UNet per step

  diffusers_bf16, torch_compile, torch_compile_bf16 (only when named in --variants): the
             diffusers variant with `.to(torch.bfloat16)`, and/or torch.compile (inductor,
             freezing) around its UNet call; the first call pays the compile

  openvino, openvino_bf16, openvino_ours (only when named in --variants; `pip install
             openvino`): OpenVINO's CPU plugin runs the UNet inside the diffusers variant's DDIM
             loop, converted with ov.convert_model from the diffusers UNet at float32 / bfloat16
             inference precision, or from our own TensorFlow graph (float32)

A calibration child (skipped with --no-calibrate) measures what the figures are shares of: the
work of one guided step (FLOPs of two batch-1 UNet forwards, counted by torch's FlopCounterMode
on the diffusers UNet of the same config: convolutions, matmuls, attention) and this machine's
matmul peak (the best of a 2048^3 matmul in OpenVINO and in TensorFlow, float32 and bfloat16
inference precision); each variant then gets GFLOP/s and its share of the peak at its precision.

Each variant also reports `unet_call_ms`: one bare UNet forward at the batch the loop uses
(2 for ours/diffusers, 1 for KerasCV), to show how much of a step is loop overhead.

`--tiny` swaps in the tiny test configs (and skips KerasCV, whose architecture is fixed) so the
code paths can be smoke-tested in seconds. `--only VARIANT --child-out FILE` is the child mode.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

from . import _common as C

VARIANTS = ("ours", "ours_xla", "ours_bf16", "kerascv", "diffusers")
# Further variants, run only when named in --variants: guidance as one batch-2 call in float32
# (what "auto" avoids on CPUs), XLA + bfloat16, and mixed_bfloat16 (float32 weights cast per call).
EXPERIMENTS = ("ours_batched", "ours_xla_batched", "ours_xla_bf16", "ours_mixed_bf16",
               "openvino", "openvino_bf16", "openvino_ours", "ours_openvino", "ours_openvino_bf16",
               "diffusers_bf16", "torch_compile", "torch_compile_bf16")
# OpenVINO variants (`pip install openvino`): the diffusers UNet (the diffusers variant's weights
# and loop) converted with ov.convert_model and compiled for the CPU at float32 / bfloat16
# inference precision (OpenVINO's default on a CPU with AMX or AVX-512 BF16 is bfloat16), and
# our own TensorFlow graph converted the same way (float32): what OpenVINO as our runtime would give.
OPENVINO = {"openvino": ("diffusers", "f32"), "openvino_bf16": ("diffusers", "bf16"), "openvino_ours": ("ours", "f32")}
ALL_VARIANTS = VARIANTS + EXPERIMENTS
# What each of our variants is: (jit_compile, guidance_batching, Keras dtype policy)
OURS = {
    "ours": (False, "split", "float32"),  # = the pipeline's default on a CPU (guidance_batching="auto")
    "ours_xla": (True, "split", "float32"),
    "ours_bf16": (False, "batched", "bfloat16"),  # = load_pipeline(..., dtype="bfloat16") on a CPU
    "ours_batched": (False, "batched", "float32"),
    "ours_xla_batched": (True, "batched", "float32"),
    "ours_xla_bf16": (True, "batched", "bfloat16"),
    "ours_mixed_bf16": (False, "batched", "mixed_bfloat16"),
}
# Our pipeline with runtime="openvino": the Keras dtype policy of its networks
OURS_OPENVINO = {"ours_openvino": "float32", "ours_openvino_bf16": "bfloat16"}
TARGETS = {"ours_over_kerascv": 0.8, "ours_over_diffusers": 1.0}
PEERS = ("kerascv", "diffusers", "openvino", "openvino_bf16", "openvino_ours", "diffusers_bf16", "torch_compile",
         "torch_compile_bf16")  # what ours is divided by
CONTEXT_LEN = 77
GUIDANCE = 7.5


# --------------------------------------------------------------------------- children
def calibrate(size, tiny=False, matmul_side=2048, repeats=10):
    """GFLOP per guided step and this machine's matmul GFLOP/s at float32 and bfloat16."""
    t_start = time.perf_counter()
    import numpy as np
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = C.configs(tiny)["unet"]
    lat = size // 8
    with torch.device("meta"):  # shapes only: no weights allocated, nothing computed
        unet = UNet2DConditionModel(**diffusers_kwargs(cfg))
        x, t, ctx = (torch.zeros([2, cfg.in_channels, lat, lat]), torch.tensor([500, 500]),
                     torch.zeros([2, CONTEXT_LEN, cfg.cross_attention_dim]))
        with FlopCounterMode(display=False) as counter:
            unet(x, t, encoder_hidden_states=ctx)
    result = {"variant": "calibrate", "gflop_per_step": C.r(counter.get_total_flops() / 1e9, 1),
              "flops_counted_by": f"torch {torch.__version__} FlopCounterMode, diffusers UNet2DConditionModel, batch 2"}
    n = matmul_side
    a = np.random.default_rng(0).standard_normal([n, n]).astype(np.float32)
    peaks = {}

    def gflops(fn):  # the best of `repeats` calls after a warm one
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return C.r(2 * n ** 3 / min(times) / 1e9, 1)

    try:
        import openvino as ov
        import openvino.opset13 as ops

        param = ops.parameter([n, n], np.float32)
        model = ov.Model([ops.matmul(param, ops.constant(a), False, False)], [param])
        for precision in ("f32", "bf16"):
            request = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision}).create_infer_request()
            peaks[f"openvino_{precision}"] = gflops(lambda: request.infer([a]))
    except ImportError:
        pass
    C.quiet_tf()
    import tensorflow as tf

    for dtype, name in ((tf.float32, "f32"), (tf.bfloat16, "bf16")):
        x = tf.cast(tf.constant(a), dtype)
        fn = tf.function(lambda m: tf.matmul(m, m))
        peaks[f"tensorflow_{name}"] = gflops(lambda: fn(x).numpy())
    result["matmul_gflops"] = peaks
    result["peak_gflops"] = {p: max(v for k, v in peaks.items() if k.endswith(p)) for p in ("f32", "bf16")}
    result["matmul_side"] = n
    return _finish(result, t_start)


def precision_of_variant(variant: str) -> str:
    return "bf16" if "bf16" in variant else "f32"


def _finish(result, t_start):
    result["peak_rss_gb"] = C.r(C.peak_rss_gb())
    result["loadavg_end"] = C.loadavg()
    result["wall_s"] = C.r(time.perf_counter() - t_start, 1)
    return result


QUIET = 0.25  # other processes' cores above which a repetition counts as contended
QUIET_WAIT = {"s": 20.0}  # set by measure(); 0 skips the waiting (tiny smoke runs)


def _repeat(fn, repeats, divide=1):
    """Time `fn` until `repeats` uncontended runs (others used <= QUIET cores) or 2x attempts.

    Before each run, waits up to QUIET_WAIT s for the machine to be quiet; with no waiting
    (QUIET_WAIT 0) it makes exactly `repeats` runs. Returns (seconds / divide per run, CPU use
    per run).
    """
    times, cpu = [], []
    wait = QUIET_WAIT["s"]
    for _ in range(2 * repeats if wait else repeats):
        if sum(_is_clean(c) for c in cpu) >= repeats:
            break
        waited, _ = C.wait_quiet(QUIET, max_wait=wait) if wait else (0.0, None)
        with C.CpuMeter() as m:
            fn()
        times.append(m.wall / divide)
        cpu.append({**m.as_dict(), "waited_s": C.r(waited, 1)})
    return times, cpu


def _is_clean(cpu):
    return cpu.get("other_cores") is None or cpu["other_cores"] <= QUIET


def _stats(prefix, times_ms, cpu):
    """Median of the clean runs (of all runs if none was clean), min, CPU time, raw lists.

    `times_ms` and `cpu` are aligned per run; this also merges runs from several rounds.
    """
    clean = [t for t, c in zip(times_ms, cpu) if _is_clean(c)]
    cpu_ms = [t * c["own_cores"] for t, c in zip(times_ms, cpu) if c.get("own_cores") is not None]
    return {
        f"{prefix}": C.r(C.median(clean or times_ms), 1),
        f"{prefix}_min": C.r(min(times_ms), 1),
        f"{prefix}_all": [C.r(t, 1) for t in times_ms],
        f"{prefix}_clean_runs": len(clean),
        # CPU time this process used per step/call: less sensitive to other load than wall
        # time (but it also counts thread-pool spinning).
        f"{prefix}_cpu": C.r(C.median(cpu_ms), 1),
        f"{prefix}_cpu_per_run": cpu,
    }


def _step_stats(steps_rep, unet_rep):
    (st, sc), (ut, uc) = steps_rep, unet_rep
    out = {**_stats("ms_per_step", [1000 * t for t in st], sc),
           **_stats("unet_call_ms", [1000 * t for t in ut], uc)}
    out["contended"] = out["ms_per_step_clean_runs"] == 0
    return out


def merge_rounds(runs):
    """One variant's child results from several rounds -> one result (stats over all runs)."""
    ok = [x for x in runs if "error" not in x and "ms_per_step_all" in x]
    if not ok:
        return runs[-1]
    merged = dict(ok[0])
    for prefix in ("ms_per_step", "unet_call_ms"):
        times = [t for x in ok for t in x[f"{prefix}_all"]]
        cpu = [c for x in ok for c in x[f"{prefix}_cpu_per_run"]]
        merged.update(_stats(prefix, times, cpu))
    merged["contended"] = merged["ms_per_step_clean_runs"] == 0
    for key in ("build_s", "first_call_s"):
        merged[key] = C.r(C.median([x[key] for x in ok if x.get(key) is not None]), 2)
    for key in ("peak_rss_gb", "rss_after_build_gb", "rss_after_warmup_gb"):
        merged[key] = max((x[key] for x in ok if x.get(key) is not None), default=None)
    merged["loadavg_start"], merged["loadavg_end"] = ok[0].get("loadavg_start"), ok[-1].get("loadavg_end")
    merged["rounds"] = len(runs)
    merged["round_errors"] = [x["error"] for x in runs if "error" in x]
    merged["per_round_ms_per_step"] = [x.get("ms_per_step") for x in ok]
    return merged


def measure_ours(size, steps, repeats, tiny=False, variant="ours"):
    """DenoiseLoop.run with DDIM: warm-up (trace/compile) call, then `repeats` timed runs."""
    jit_compile, batching, policy = OURS[variant]
    with C.dtype_policy(policy):
        result = _measure_ours(size, steps, repeats, tiny, jit_compile, batching)
    result.update(variant=variant, guidance_batching=batching, dtype_policy=policy)
    return result


def _measure_ours(size, steps, repeats, tiny=False, jit_compile=False, batching="split"):
    C.quiet_tf()
    t_start = time.perf_counter()
    import keras
    import tensorflow as tf

    from models.sampling import DenoiseLoop
    from models.schedulers import get_scheduler
    from models.unet import UNet

    cfg = C.configs(tiny)["unet"]
    lat = size // 8
    if lat % cfg.downsample_factor:
        raise ValueError(f"size {size} gives latent side {lat}, not a multiple of {cfg.downsample_factor}")
    result = {"variant": "ours_xla" if jit_compile else "ours", "jit_compile": jit_compile,
              "loadavg_start": C.loadavg(), "tensorflow": tf.__version__, "keras": keras.__version__,
              "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
              "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
              "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default(on)")}
    keras.utils.set_random_seed(0)
    unet, build_s = C.timed(lambda: UNet(cfg))
    result.update(build_s=C.r(build_s, 2), params_m=C.r(unet.count_params() / 1e6, 1),
                  rss_after_build_gb=C.r(C.rss_gb()))

    loop = DenoiseLoop(unet, get_scheduler("ddim"), jit_compile=jit_compile, guidance_batching=batching)
    d = cfg.cross_attention_dim
    x = tf.random.stateless_normal([1, lat, lat, cfg.in_channels], seed=[0, 0])
    args = dict(
        start=tf.constant(0, tf.int32),
        context=tf.random.stateless_normal([1, CONTEXT_LEN, d], seed=[1, 0]),
        uncond=tf.random.stateless_normal([1, CONTEXT_LEN, d], seed=[2, 0]),
        guidance=tf.constant(GUIDANCE, tf.float32), seed=tf.constant([0, 1], tf.int64),
        mask=tf.ones([1, lat, lat, 1]), cond_latents=tf.zeros([1, lat, lat, 4]),
        noise=tf.zeros([1, lat, lat, 4]),
    )

    # The pipeline passes num_steps as a tensor. Under XLA the plan's tf.range(num_steps) needs a
    # compile-time length, so if the tensor form does not compile, fall back to a Python int
    # (one compiled graph per step count) and record that.
    num_steps = tf.constant(steps, tf.int32)
    result["num_steps_input"] = "tensor"
    t0 = time.perf_counter()
    try:
        loop.run(x, num_steps=num_steps, **args).numpy()
    except Exception as e:  # noqa: BLE001 - any XLA compile failure
        if not jit_compile:
            raise
        result["tensor_num_steps_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        num_steps, result["num_steps_input"] = steps, "python_int"
        loop = DenoiseLoop(unet, get_scheduler("ddim"), jit_compile=jit_compile)
        t0 = time.perf_counter()
        loop.run(x, num_steps=num_steps, **args).numpy()
    result["first_call_s"] = C.r(time.perf_counter() - t0, 2)
    result["rss_after_warmup_gb"] = C.r(C.rss_gb())

    outs = []
    per_step = _repeat(lambda: outs.append(loop.run(x, num_steps=num_steps, **args).numpy()), repeats, steps)
    result["output_finite"] = bool(tf.reduce_all(tf.math.is_finite(outs[-1])).numpy())

    # The bare UNet at batch 2 (what one loop iteration calls once).
    call = tf.function(lambda a, b, c: unet([a, b, c], training=False), jit_compile=jit_compile)
    x2 = tf.concat([x, x], 0)
    t2 = tf.fill([2], 500.0)
    c2 = tf.concat([args["uncond"], args["context"]], 0)
    call(x2, t2, c2).numpy()
    unet_s = _repeat(lambda: call(x2, t2, c2).numpy(), repeats)
    result.update(_step_stats(per_step, unet_s))
    return _finish(result, t_start)


def measure_ours_openvino(size, steps, repeats, tiny=False, variant="ours_openvino"):
    """pipe.diffuse on a UNet-only pipeline with runtime="openvino": warm-up call (conversion and
    compilation), then `repeats` timed runs of `steps` guided DDIM steps."""
    C.quiet_tf()
    t_start = time.perf_counter()
    import keras
    import numpy as np
    import openvino as ov

    from models.checkpoints.assemble import NotLoaded
    from models.components import Components
    from models.pipeline import StableDiffusionPipeline
    from models.schedulers import NoiseSchedule
    from models.tokenizer import default_tokenizer
    from models.unet import UNet

    policy = OURS_OPENVINO[variant]
    configs = C.configs(tiny)
    cfg = configs["unet"]
    result = {"variant": variant, "loadavg_start": C.loadavg(), "openvino": ov.__version__, "dtype_policy": policy,
              "threads": os.cpu_count()}
    keras.utils.set_random_seed(0)
    with C.dtype_policy(policy):
        unet, build_s = C.timed(lambda: UNet(cfg))
    comps = Components(text_encoder=NotLoaded("text_encoder", configs["text_encoder"]), unet=unet,
                       decoder=NotLoaded("decoder", configs["vae"]), encoder=None, tokenizer=default_tokenizer(),
                       vae_config=configs["vae"], schedule=NoiseSchedule(), name="sd-v1-random")
    d = cfg.cross_attention_dim
    rng = np.random.default_rng(1)
    context, uncond = (rng.standard_normal([1, CONTEXT_LEN, d]).astype(np.float32) for _ in range(2))
    pipe = StableDiffusionPipeline(comps, runtime="openvino", empty_prompt_context=uncond)
    result.update(build_s=C.r(build_s, 2), params_m=C.r(unet.count_params() / 1e6, 1),
                  rss_after_build_gb=C.r(C.rss_gb()), guidance_batching=pipe.guidance_batching)

    def run():
        return pipe.diffuse(context, uncond, steps=steps, seed=0, height=size, width=size,
                            guidance_scale=GUIDANCE).latents

    t0 = time.perf_counter()
    run()
    result["first_call_s"] = C.r(time.perf_counter() - t0, 2)
    result["inference_precision"] = pipe._compiled("unet").precision
    result["rss_after_warmup_gb"] = C.r(C.rss_gb())
    outs = []
    per_step = _repeat(lambda: outs.append(run()), repeats, steps)
    result["output_finite"] = bool(np.isfinite(outs[-1]).all())
    lat = size // 8
    x2 = rng.standard_normal([2, lat, lat, cfg.in_channels]).astype(np.float32)
    c2 = np.concatenate([uncond, context])
    pipe.predict_noise(x2, 500, c2)
    unet_s = _repeat(lambda: pipe.predict_noise(x2, 500, c2), repeats)
    result.update(_step_stats(per_step, unet_s))
    return _finish(result, t_start)


class _Stub:
    """Stands in for a KerasCV sub-model that runs once per image, not once per step."""

    def __init__(self, array):
        self.array = array

    def predict_on_batch(self, *_args, **_kwargs):
        return self.array


def measure_kerascv(size, steps, repeats, tiny=False):
    """keras_cv's own generate_image loop with a random-weight DiffusionModel."""
    if tiny:
        raise ValueError("KerasCV's diffusion model has a fixed full-size architecture; no --tiny")
    C.quiet_tf()
    t_start = time.perf_counter()
    import keras
    import keras_cv
    import numpy as np
    import tensorflow as tf
    from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModel
    from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusion

    result = {"variant": "kerascv", "loadavg_start": C.loadavg(), "keras_cv": keras_cv.__version__,
              "tensorflow": tf.__version__, "keras": keras.__version__,
              "stubbed": ["text_encoder (unconditional context)", "decoder"]}
    keras.utils.set_random_seed(0)
    dm, build_s = C.timed(lambda: DiffusionModel(size, size, CONTEXT_LEN, download_weights=False))
    result.update(build_s=C.r(build_s, 2), params_m=C.r(dm.count_params() / 1e6, 1),
                  rss_after_build_gb=C.r(C.rss_gb()))

    sd = StableDiffusion(img_height=size, img_width=size, jit_compile=False)
    rng = np.random.default_rng(0)
    sd._diffusion_model = dm
    sd._text_encoder = _Stub(rng.standard_normal((1, CONTEXT_LEN, 768), dtype=np.float32))
    sd._decoder = _Stub(np.zeros((1, size, size, 3), np.float32))
    encoded = rng.standard_normal((1, CONTEXT_LEN, 768), dtype=np.float32)
    result["predict_jit_compile"] = bool(dm.jit_compile)

    def generate(n):
        return sd.generate_image(encoded, batch_size=1, num_steps=n,
                                 unconditional_guidance_scale=GUIDANCE, seed=0)

    _, result["first_call_s"] = C.timed(lambda: generate(min(2, steps)))
    result["first_call_s"] = C.r(result["first_call_s"], 2)
    result["rss_after_warmup_gb"] = C.r(C.rss_gb())
    per_step = _repeat(lambda: generate(steps), repeats, steps)

    # One bare predict_on_batch (a step makes two).
    inputs = {"latent": rng.standard_normal((1, size // 8, size // 8, 4), dtype=np.float32),
              "timestep_embedding": np.asarray(sd._get_timestep_embedding(500, 1)),
              "context": encoded}
    unet_s = _repeat(lambda: dm.predict_on_batch(inputs), repeats)
    result.update(_step_stats(per_step, unet_s))
    return _finish(result, t_start)


def diffusers_kwargs(cfg):
    """Our UNetConfig uses diffusers' field names; pass the ones UNet2DConditionModel takes."""
    keys = ("in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types",
            "layers_per_block", "cross_attention_dim", "attention_head_dim", "norm_num_groups",
            "norm_eps", "use_linear_projection", "flip_sin_to_cos", "freq_shift", "sample_size")
    return {k: getattr(cfg, k) for k in keys}


# diffusers-side variants: (torch dtype name, torch.compile)
DIFFUSERS = {"diffusers": ("float32", False), "diffusers_bf16": ("bfloat16", False),
             "torch_compile": ("float32", True), "torch_compile_bf16": ("bfloat16", True)}


def measure_diffusers(size, steps, repeats, tiny=False, threads=None, variant="diffusers"):
    """diffusers' UNet2DConditionModel + DDIMScheduler, as StableDiffusionPipeline's loop does it;
    `variant` picks the UNet's dtype (`.to(torch.bfloat16)`) and torch.compile (inductor, with
    freezing: weights folded as constants, what its CPU inference guide recommends). The first
    call (in first_call_s) pays torch.compile's compile."""
    t_start = time.perf_counter()
    import diffusers
    import torch
    from diffusers import UNet2DConditionModel

    threads = threads or os.cpu_count()
    torch.set_num_threads(threads)
    cfg = C.configs(tiny)["unet"]
    lat = size // 8
    dtype_name, compiled = DIFFUSERS[variant]
    dtype = getattr(torch, dtype_name)
    result = {"variant": variant, "loadavg_start": C.loadavg(), "torch": torch.__version__,
              "diffusers": diffusers.__version__, "torch_threads": torch.get_num_threads(), "torch_dtype": dtype_name,
              "torch_compile": compiled}
    torch.manual_seed(0)
    unet, build_s = C.timed(lambda: UNet2DConditionModel(**diffusers_kwargs(cfg)).eval().to(dtype))
    result.update(build_s=C.r(build_s, 2), params_m=C.r(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
                  rss_after_build_gb=C.r(C.rss_gb()),
                  attn_processor=sorted({type(p).__name__ for p in unet.attn_processors.values()}))
    def forward(x, t, ctx):
        return unet(x.to(dtype), t, encoder_hidden_states=ctx.to(dtype)).sample.float()

    if compiled:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        forward = torch.compile(forward)
    _time_ddim_loop(forward, cfg, lat, steps, repeats, result)
    return _finish(result, t_start)


def _time_ddim_loop(unet, cfg, lat, steps, repeats, result):
    """StableDiffusionPipeline's guided DDIM loop around `unet(x [2, C, h, w], t, ctx) -> eps`
    (the diffusers variant and the OpenVINO ones), timed into `result`."""
    import torch
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, cfg.in_channels, lat, lat, generator=g)
    ctx = torch.randn(2, CONTEXT_LEN, cfg.cross_attention_dim, generator=g)  # [uncond; cond]

    def loop(n):
        sched.set_timesteps(n)
        latents = x0 * sched.init_noise_sigma
        for t in sched.timesteps:
            eps_uncond, eps_text = unet(sched.scale_model_input(torch.cat([latents] * 2), t), t, ctx).chunk(2)
            latents = sched.step(eps_uncond + GUIDANCE * (eps_text - eps_uncond), t, latents).prev_sample
        return latents

    with torch.inference_mode():
        _, first = C.timed(lambda: loop(min(2, steps)))
        result["first_call_s"] = C.r(first, 2)
        result["rss_after_warmup_gb"] = C.r(C.rss_gb())
        outs = []
        per_step = _repeat(lambda: outs.append(loop(steps)), repeats, steps)
        result["output_finite"] = bool(torch.isfinite(outs[-1]).all())
        x2, t2 = torch.cat([x0, x0]), torch.tensor(500)
        unet_s = _repeat(lambda: unet(x2, t2, ctx), repeats)
    result.update(_step_stats(per_step, unet_s))


def _openvino_model(source, cfg, lat, tiny):
    """(ov.Model, how it was made, parameters): the diffusers UNet (seed-0 torch weights, as the diffusers
    variant) or our UNet's graph (seed-0 Keras weights, as ours), at the loop's fixed shapes."""
    import openvino as ov

    shapes = ([2, cfg.in_channels, lat, lat], [2], [2, CONTEXT_LEN, cfg.cross_attention_dim])
    if source == "diffusers":
        import torch
        from diffusers import UNet2DConditionModel

        torch.manual_seed(0)
        unet = UNet2DConditionModel(**diffusers_kwargs(cfg)).eval()

        class Sample(torch.nn.Module):  # the tensor, not diffusers' output dataclass
            def __init__(self, unet):
                super().__init__()
                self.unet = unet

            def forward(self, x, t, ctx):
                return self.unet(x, t, encoder_hidden_states=ctx).sample

        example = tuple(torch.randn(s) for s in shapes)
        with torch.inference_mode():
            params = sum(p.numel() for p in unet.parameters())
            return ov.convert_model(Sample(unet), example_input=example), "diffusers UNet2DConditionModel, NCHW", params
    import keras
    import tensorflow as tf

    from models.layers import plan_convolutions
    from models.unet import UNet

    keras.utils.set_random_seed(0)
    unet = UNet(cfg)
    nhwc = [tf.zeros([2, lat, lat, cfg.in_channels]), tf.fill([2], 500.0), tf.zeros(shapes[2])]
    plan_convolutions(unet, nhwc)  # the CPU kernels our generic graphs use (matmul convolutions)
    fn = tf.function(lambda x, t, c: unet([x, t, c], training=False))
    concrete = fn.get_concrete_function(*(tf.TensorSpec(v.shape) for v in nhwc))
    return ov.convert_model(concrete), "our UNet's TensorFlow graph, NHWC", unet.count_params()


def measure_openvino(size, steps, repeats, tiny=False, variant="openvino"):
    """OpenVINO's CPU plugin running the UNet, inside the diffusers variant's DDIM loop."""
    t_start = time.perf_counter()
    import numpy as np
    import openvino as ov
    import torch

    source, precision = OPENVINO[variant]
    cfg = C.configs(tiny)["unet"]
    lat = size // 8
    threads = os.cpu_count()
    result = {"variant": variant, "loadavg_start": C.loadavg(), "openvino": ov.__version__,
              "inference_precision": precision, "threads": threads}
    (model, result["model"], params), build_s = C.timed(lambda: _openvino_model(source, cfg, lat, tiny))
    result.update(build_s=C.r(build_s, 2), params_m=C.r(params / 1e6, 1))
    result["rss_after_build_gb"] = C.r(C.rss_gb())
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                     "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    nhwc = source == "ours"

    def unet(x, t, ctx):
        x = x.numpy()
        if nhwc:
            x = x.transpose(0, 2, 3, 1)
        out = request.infer([x, np.full([2], float(t), np.float32), ctx.numpy()])[0]
        return torch.from_numpy(out.transpose(0, 3, 1, 2) if nhwc else out)

    _time_ddim_loop(unet, cfg, lat, steps, repeats, result)
    return _finish(result, t_start)


def measure(variant, size, steps, repeats, tiny=False, quiet_wait=None):
    """One variant's result dict. `quiet_wait`: seconds to wait for a quiet machine before each
    timed run (default 20, or 0 with `tiny`)."""
    if variant == "calibrate":
        return calibrate(size, tiny)
    QUIET_WAIT["s"] = (0.0 if tiny else 20.0) if quiet_wait is None else float(quiet_wait)
    if variant in OURS:
        return measure_ours(size, steps, repeats, tiny, variant=variant)
    if variant in OURS_OPENVINO:
        return measure_ours_openvino(size, steps, repeats, tiny, variant)
    if variant == "kerascv":
        return measure_kerascv(size, steps, repeats, tiny)
    if variant in DIFFUSERS:
        return measure_diffusers(size, steps, repeats, tiny, variant=variant)
    if variant in OPENVINO:
        return measure_openvino(size, steps, repeats, tiny, variant)
    raise ValueError(f"unknown variant {variant!r}; choose from {ALL_VARIANTS}")


# --------------------------------------------------------------------------- parent
def run_child(variant, args, timeout=None):
    """Re-invoke this module for one variant; returns its JSON (or an error record)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", "bench.unet_step", "--only", variant, "--child-out", out,
               "--size", str(args.size), "--steps", str(args.steps), "--repeats", str(args.repeats)]
        if args.tiny:
            cmd.append("--tiny")
        if args.quiet_wait is not None:
            cmd += ["--quiet-wait", str(args.quiet_wait)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=root, env=env, timeout=timeout, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        except subprocess.TimeoutExpired:
            return {"variant": variant, "error": f"timed out after {timeout} s"}
        if os.path.exists(out):
            with open(out, encoding="utf-8") as f:
                return json.load(f)
        return {"variant": variant, "error": f"exit code {proc.returncode}",
                "log_tail": proc.stdout[-3000:], "wall_s": C.r(time.perf_counter() - t0, 1)}


def summarize(results, meta):
    """Ratios against the targets; `results` maps variant -> child JSON."""
    def ms(v):
        return (results.get(v) or {}).get("ms_per_step")

    ours_names = [v for v in ALL_VARIANTS if v.startswith("ours") and v in results]
    ratios = {}
    for ours in ours_names:
        for other in PEERS:
            if ms(ours) and ms(other):
                ratios[f"{ours}_over_{other}"] = C.r(ms(ours) / ms(other))
    def ms_min(v):
        return (results.get(v) or {}).get("ms_per_step_min")

    def ms_cpu(v):
        return (results.get(v) or {}).get("ms_per_step_cpu")

    ratios_min, ratios_cpu = {}, {}
    for ours in ours_names:
        for other in PEERS:
            if ms_min(ours) and ms_min(other):
                ratios_min[f"{ours}_over_{other}"] = C.r(ms_min(ours) / ms_min(other))
            if ms_cpu(ours) and ms_cpu(other):
                ratios_cpu[f"{ours}_over_{other}"] = C.r(ms_cpu(ours) / ms_cpu(other))
    # The targets are stated for float32: they judge "ours" (the pipeline's default). The fastest
    # of what models/ ships (ours, ours_xla, ours_bf16 = load_pipeline(dtype="bfloat16")) is shown too.
    best = min((v for v in ("ours", "ours_xla", "ours_bf16") if ms(v)), key=ms, default=None)
    checks = {}
    for key, target in TARGETS.items():
        other = key.split("_over_")[1]
        if ms("ours") and ms(other):
            ratio = ms("ours") / ms(other)
            checks[key] = {"variant": "ours", "ratio": C.r(ratio), "target": target, "met": bool(ratio <= target),
                           "best_ours": best, "best_ratio": C.r(ms(best) / ms(other))}
    calibration = results.pop("calibrate", None)
    if calibration and "gflop_per_step" in calibration:
        for v, x in results.items():
            if x.get("ms_per_step"):
                x["gflops"] = C.r(calibration["gflop_per_step"] / (x["ms_per_step"] / 1000), 1)
                peak = calibration["peak_gflops"].get(precision_of_variant(v))
                x["share_of_matmul_peak"] = C.r(x["gflops"] / peak, 3) if peak else None
        meta = {**meta, "calibration": calibration}
    contended = [v for v, x in results.items() if x.get("contended")]
    return {"benchmark": "unet_step", **meta, "results": results, "ratios": ratios,
            "ratios_of_min": ratios_min, "ratios_of_cpu_time": ratios_cpu, "targets": checks, "contended_variants": contended}


def format_table(summary):
    res = summary["results"]
    lines = [
        f"SD v1 UNet, {summary['size']}x{summary['size']} px (latent {summary['latent']}), batch 1, "
        f"CFG, fp32, {summary['steps']} steps x {summary['repeats']} repeats"
        f" x {summary.get('rounds', 1)} rounds"
        + ("  [TINY config]" if summary.get("tiny") else ""),
        f"load average at start {summary['loadavg_start']}, end {summary.get('loadavg_end')}; "
        f"{summary['machine']['cpu_count']} CPUs ({summary['machine']['cpu_model']})",
        "",
        f"{'variant':<15} {'ms/step':>9} {'min':>9} {'cpu ms':>9} {'unet call':>10} {'build s':>8} "
        f"{'1st call s':>10} {'peak RSS GB':>11} {'cores own/others':>16} {'clean':>6} {'GFLOP/s':>8} {'of peak':>7}",
    ]
    for v in ALL_VARIANTS:
        x = res.get(v)
        if x is None:
            continue
        if "error" in x or "skipped" in x:
            lines.append(f"{v:<15} " + (f"ERROR: {x['error']}" if "error" in x else f"skipped: {x['skipped']}"))
            continue
        cpu = x.get("ms_per_step_cpu_per_run") or []
        own = C.median([c["own_cores"] for c in cpu if c.get("own_cores") is not None])
        other = C.median([c["other_cores"] for c in cpu if c.get("other_cores") is not None])
        cores = f"{own:.2f}/{other:.2f}" if own is not None and other is not None else "-"

        def f(key, fmt):
            val = x.get(key)
            return format(val, fmt) if val is not None else "-"

        lines.append(f"{v:<15} {f('ms_per_step', '9.1f')} {f('ms_per_step_min', '9.1f')} "
                     f"{f('ms_per_step_cpu', '9.1f')} {f('unet_call_ms', '10.1f')} {f('build_s', '8.2f')} {f('first_call_s', '10.2f')} "
                     f"{f('peak_rss_gb', '11.2f')} {cores:>16} "
                     f"{x.get('ms_per_step_clean_runs', '-')}/{len(x.get('ms_per_step_all', []))} "
                     f"{f('gflops', '8.1f')} {f('share_of_matmul_peak', '7.1%')}")
    lines.append("ms/step: median of the clean runs (other processes used <= "
                 f"{QUIET} cores), of all runs if none was clean; min: fastest run")
    lines.append("cpu ms: CPU time this process used per step (median); unet call: one bare UNet forward "
                 "at the loop's batch (2; 1 for kerascv)")
    if any(v in res for v in EXPERIMENTS):
        lines.append("ours_batched: float32 with guidance as one batch-2 call (the pipeline's choice on GPUs); "
                     "ours_mixed_bf16: float32 weights cast to bfloat16 per call")
    if any(v in res for v in OPENVINO):
        lines.append("openvino*: OpenVINO's CPU plugin on the diffusers UNet (f32 / bf16 inference precision) "
                     "or on our TensorFlow graph (openvino_ours), in the diffusers DDIM loop")
    lines.append("cores own/others: median CPU cores used by the variant / by other processes while timed")
    cal = summary.get("calibration")
    if cal:
        lines.append(f"GFLOP/s: {cal['gflop_per_step']} GFLOP per guided step / ms per step; of peak: that over this "
                     f"machine's matmul peak at the variant's precision, measured in this run: "
                     f"{cal['peak_gflops']['f32']} GFLOP/s float32, {cal['peak_gflops']['bf16']} bfloat16 "
                     f"({cal['matmul_gflops']})")
    if summary.get("contended_variants"):
        lines.append(f"WARNING: no clean run for {summary['contended_variants']}: their ms/step is contended")
    lines.append("")
    lines.append(f"{'ratio':<29} {'median':>7} {'min':>7} {'cpu':>7}")
    for k, v in summary["ratios"].items():
        m = summary.get("ratios_of_min", {}).get(k)
        c = summary.get("ratios_of_cpu_time", {}).get(k)
        lines.append(f"{k:<29} {v:7.3f} " + " ".join(f"{x:7.3f}" if x is not None else "      -" for x in (m, c)))
    for k, c in summary["targets"].items():
        lines.append(f"target {k} <= {c['target']} (float32): ours {c['ratio']:.3f} "
                     f"-> {'MET' if c['met'] else 'NOT MET'}; fastest shipped variant {c['best_ours']} {c['best_ratio']:.3f}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.unet_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=None, help="image side in px (default 256; 64 with --tiny)")
    p.add_argument("--steps", type=int, default=3, help="denoising steps per timed repetition")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (the median is reported)")
    p.add_argument("--out", default="bench/results/unet_step.json", help="JSON output ('' for none)")
    p.add_argument("--tiny", action="store_true", help="tiny test configs; skips KerasCV")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated, from " + ",".join(ALL_VARIANTS) + " (default: ours, ours_xla, ours_bf16, kerascv, diffusers)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per child")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="seconds to wait for other processes to go quiet before each timed run "
                        "(default 20; 0 with --tiny)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the variants in turn this many times (fresh child each time) and pool "
                        "the repetitions, so that other jobs' load spreads over all variants")
    p.add_argument("--no-calibrate", action="store_true", help="skip the GFLOP and matmul-peak calibration child")
    p.add_argument("--only", choices=ALL_VARIANTS + ("calibrate",), help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.size is None:
        args.size = 64 if args.tiny else 256
    if args.size % 8 or args.steps < 1 or args.repeats < 1 or args.rounds < 1:
        p.error("--size must be a multiple of 8, --steps, --repeats and --rounds >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.only:  # child mode
        try:
            result = measure(args.only, args.size, args.steps, args.repeats, args.tiny, args.quiet_wait)
        except Exception as e:  # noqa: BLE001 - reported to the parent as data
            traceback.print_exc()
            result = {"variant": args.only, "error": f"{type(e).__name__}: {e}"[:2000],
                      "peak_rss_gb": C.r(C.peak_rss_gb())}
        C.write_json(args.child_out, result)
        if not args.child_out:
            print(json.dumps(result, indent=2))
        return 0 if "error" not in result else 1

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in ALL_VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {ALL_VARIANTS}")
    meta = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "size": args.size, "latent": args.size // 8,
            "batch": 1, "steps": args.steps, "repeats": args.repeats, "rounds": args.rounds, "tiny": args.tiny,
            "guidance": GUIDANCE, "dtype": "float32", "loadavg_start": C.loadavg(),
            "machine": C.machine_info()}
    runs = {v: [] for v in variants}
    if not args.no_calibrate:
        print("[bench] calibrate: GFLOP per step and the matmul peak ...", file=sys.stderr, flush=True)
        runs["calibrate"] = [run_child("calibrate", args, timeout=args.timeout)]
    for k in range(args.rounds):
        for v in variants:
            if v == "kerascv" and args.tiny:
                continue
            print(f"[bench] round {k + 1}/{args.rounds} {v} ... (load {C.loadavg()})", file=sys.stderr, flush=True)
            x = run_child(v, args, timeout=args.timeout)
            runs[v].append(x)
            print(f"[bench] {v}: " + (x.get("error") or f"{x.get('ms_per_step')} ms/step "
                                      f"({x.get('ms_per_step_clean_runs')} clean runs), "
                                      f"peak RSS {x.get('peak_rss_gb')} GB"), file=sys.stderr, flush=True)
    results = {"calibrate": runs["calibrate"][0]} if "calibrate" in runs else {}
    for v in variants:
        if v == "kerascv" and args.tiny:
            results[v] = {"variant": v, "skipped": "fixed full-size architecture; not run under --tiny"}
        else:
            results[v] = merge_rounds(runs[v]) if args.rounds > 1 else runs[v][0]
    meta["loadavg_end"] = C.loadavg()
    summary = summarize(results, meta)
    print(format_table(summary))
    C.write_json(args.out, summary)
    if args.out:
        print(f"\nwrote {args.out}")
    return 0 if all("error" not in x for x in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
