"""Size and CPU latency of exported artifacts, next to the Keras model they came from.

    python -m bench.export_latency --exports DIR [--repeats 5] [--threads 2] [--tfjs]
    python -m bench.export_latency --full-size [--repeats 3]

--exports: every component of an export (python -m exports ...) whose model the manifest
names (`model.source`, loaded again for the Keras side): Keras (a tf.function around the
model, as the pipeline calls it), the SavedModel signature (what TF Serving runs), each
TFLite precision (ai-edge-litert, XNNPACK) and, with --tfjs, each TF.js precision in Node
(pure-JS CPU backend). Diffusion is timed as one UNet call (batch 2, the guided step), since
only TFLite holds the bare UNet; the SavedModel's whole loop is not comparable.

--full-size: the SD v1 text encoder and the 512 px VAE decoder with random weights (sizes
and latencies do not depend on the values), converted to TFLite here, since no full-size
checkpoint is available offline.

Batch 1 everywhere (TFLite files have fixed batch 1). Median of --repeats runs after one
warm-up run; on a shared machine each timing also records the CPU used by others.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from ._common import CpuMeter, loadavg, machine_info, median, quiet_tf, r, save_result, wait_quiet

DEFAULT_OUT = os.path.join("bench", "results", "export_latency.json")


def _time(fn, repeats, quiet_wait):
    fn()  # warm-up: graph building, XNNPACK packing, JIT in V8
    times, meters = [], []
    for _ in range(repeats):
        if quiet_wait:
            wait_quiet(max_wait=quiet_wait)
        with CpuMeter() as m:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        meters.append(m.as_dict())
    return {"ms": r(median(times), 1), "ms_min": r(min(times), 1), "runs": len(times),
            "other_cores_max": max((m["other_cores"] or 0.0) for m in meters)}


def _inputs(pipe, component):
    import numpy as np

    rng = np.random.default_rng(0)
    h = pipe.unet.config.sample_size
    if component == "text_encoder":
        return {"token_ids": pipe.tokenizer.tokenize(["a photograph of an astronaut riding a horse"])}
    if component == "decoder":
        return {"latents": rng.standard_normal((1, h, h, 4)).astype(np.float32)}
    if component == "image_encoder":
        size = pipe.default_size
        return {"images": rng.integers(0, 256, (1, size, size, 3)).astype(np.uint8)}
    d = pipe.unet.config.cross_attention_dim
    return {"latents": rng.standard_normal((2, h, h, pipe.unet.config.in_channels)).astype(np.float32),
            "timesteps": np.full([2], 981.0, np.float32), "context": rng.standard_normal((2, 77, d)).astype(np.float32)}


def _keras_fn(pipe, component, inputs):
    """The Keras model as the pipeline calls it: a tf.function around the model call."""
    import tensorflow as tf

    c = pipe.components
    if component == "text_encoder":
        fn = tf.function(lambda x: c.text_encoder(x, training=False))
        args = (tf.constant(inputs["token_ids"]),)
    elif component == "decoder":
        fn = tf.function(lambda z: c.decoder(z / c.scaling_factor, training=False))
        args = (tf.constant(inputs["latents"]),)
    elif component == "image_encoder":
        fn = tf.function(lambda x: c.encoder(tf.cast(x, tf.float32) / 127.5 - 1.0, training=False))
        args = (tf.constant(inputs["images"]),)
    else:
        fn = tf.function(lambda x, t, ctx: pipe.unet([x, t, ctx], training=False))
        args = tuple(tf.constant(inputs[k]) for k in ("latents", "timesteps", "context"))
    return lambda: fn(*args).numpy()


def _tflite_fn(path, inputs, threads):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner("serving_default")
    return lambda: runner(**inputs)


def bench_export(root, repeats, threads, tfjs, quiet_wait):
    import tensorflow as tf

    from exports import find_artifact, read_manifest
    from models import load_pipeline

    manifest = read_manifest(root)
    pipe = load_pipeline(manifest["model"]["source"], unet=manifest["model"].get("diffusion_source"))
    rows = []
    for component in ("text_encoder", "decoder", "image_encoder", "diffusion"):
        if not any(a["component"] == component for a in manifest["artifacts"]):
            continue
        inputs = _inputs(pipe, component)
        first = len(rows)
        rows.append({"component": component, "format": "keras", "precision": "float32",
                     **_time(_keras_fn(pipe, component, inputs), repeats, quiet_wait)})
        sm = find_artifact(manifest, component, "savedmodel")
        if sm and component != "diffusion":
            fn = tf.saved_model.load(os.path.join(root, sm["path"])).signatures["serving_default"]
            feed = {k: tf.constant(v) for k, v in inputs.items()}
            rows.append({"component": component, "format": "savedmodel", "precision": "float32",
                         "bytes": sm["bytes"], **_time(lambda: fn(**feed), repeats, quiet_wait)})
        for precision in ("float32", "float16", "int8"):
            art = find_artifact(manifest, component, "tflite", precision)
            if art:
                rows.append({"component": component, "format": "tflite", "precision": precision,
                             "bytes": art["bytes"],
                             **_time(_tflite_fn(os.path.join(root, art["path"]), inputs, threads), repeats,
                                     quiet_wait)})
        for precision in ("float32", "float16") if tfjs else ():
            art = find_artifact(manifest, component, "tfjs", precision)
            if art:
                rows.append({"component": component, "format": "tfjs", "precision": precision,
                             "bytes": art["bytes"], **_time_tfjs(os.path.join(root, art["path"]), inputs, repeats)})
        _print_rows(rows[first:])
    return {"exports": os.path.abspath(root), "model": manifest["model"], "rows": rows}


def _time_tfjs(model_dir, inputs, repeats):
    from exports import node_runner

    _, info = node_runner.run(model_dir, inputs, repeats=repeats + 1)
    runs = info["run_ms"][1:]  # the first run includes V8 warm-up
    return {"ms": r(median(runs), 1), "ms_min": r(min(runs), 1), "runs": len(runs), "backend": info["backend"]}


def bench_full_size(repeats, threads, quiet_wait, keep=None):
    """Random-weight SD v1 text encoder and 512 px decoder: Keras vs TFLite per precision."""
    import keras
    import numpy as np
    import tensorflow as tf

    from exports import tflite
    from exports.signatures import DecoderModule, TextEncoderModule
    from models.config import TextEncoderConfig, VAEConfig
    from models.text_encoder import TextEncoder
    from models.tokenizer import default_tokenizer
    from models.vae import VAEDecoder

    keras.utils.set_random_seed(0)
    rows = []
    folder = keep or tempfile.mkdtemp(prefix="export-bench-")
    os.makedirs(folder, exist_ok=True)
    specs = [
        ("text_encoder", lambda: TextEncoder(TextEncoderConfig()),
         lambda m: TextEncoderModule(m, batch=1), {"token_ids": default_tokenizer().tokenize(["an astronaut"])}),
        ("decoder", lambda: VAEDecoder(VAEConfig()), lambda m: DecoderModule(m, 0.18215, 4, 64, batch=1, size=64),
         {"latents": np.random.default_rng(0).standard_normal((1, 64, 64, 4)).astype(np.float32)}),
    ]
    for component, build, wrap, inputs in specs:
        model = build()
        module = wrap(model)
        arg = tf.constant(next(iter(inputs.values())))
        keras_call = tf.function(lambda x, model=model: model(x, training=False))
        rows.append({"component": component, "format": "keras", "precision": "float32",
                     "bytes": sum(int(np.prod(v.shape)) * 4 for v in model.weights),
                     **_time(lambda: keras_call(arg).numpy(), repeats, quiet_wait)})
        _print_rows(rows[-1:])
        for precision in ("float32", "float16", "int8"):
            path = os.path.join(folder, f"{component}.{precision}.tflite")
            with open(path, "wb") as f:
                f.write(tflite.convert(module, precision))
            rows.append({"component": component, "format": "tflite", "precision": precision,
                         "bytes": os.path.getsize(path), **_time(_tflite_fn(path, inputs, threads), repeats, quiet_wait)})
            _print_rows(rows[-1:])
            if not keep:
                os.remove(path)
        del model, module
    return {"full_size": True, "rows": rows}


def _print_rows(rows):
    for row in rows:
        size = f"{row['bytes'] / 1e6:9.2f} MB" if row.get("bytes") else " " * 12
        print(f"{row['component']:14s} {row['format']:10s} {row['precision']:8s} {size} {row['ms']:10.1f} ms "
              f"(min {row['ms_min']:.1f}, others {row.get('other_cores_max', 0):.1f} cores)", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.export_latency", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--exports", help="an export folder (python -m exports --out DIR)")
    src.add_argument("--full-size", action="store_true", help="SD v1 text encoder + 512 px decoder, random weights")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="TFLite threads (default: all cores)")
    p.add_argument("--tfjs", action="store_true", help="also time TF.js models in Node (slow, pure JS)")
    p.add_argument("--quiet-wait", type=float, default=10.0,
                   help="before each run wait up to this many seconds for other processes to go quiet")
    p.add_argument("--keep", help="--full-size: keep the TFLite files in this folder")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    quiet_tf()
    import tensorflow as tf

    start_load = loadavg()
    if args.full_size:
        result = bench_full_size(args.repeats, args.threads, args.quiet_wait, args.keep)
    else:
        result = bench_export(args.exports, args.repeats, args.threads, args.tfjs, args.quiet_wait)
    result.update(machine=machine_info(), tensorflow=tf.__version__, threads=args.threads, repeats=args.repeats,
                  loadavg_start=start_load, loadavg_end=loadavg())
    out = args.out
    if args.full_size and out == DEFAULT_OUT:
        out = out.replace(".json", "_full_size.json")
    save_result(out, result)


if __name__ == "__main__":
    main()
