"""The edge decoders at 512 px: SD v1's VAE decoder against TAESD, in TFLite and in TF.js.

    python -m bench.edge_decoders [--repeats 3] [--precisions float32,float16] [--out bench/results/edge_decoders.json]

Why: decoding is what a phone or a browser pays per image in the hybrid mode, and the full VAE
decoder is too slow there (seconds in TFLite on a server CPU). TAESD (about 1.2 M parameters
in its decoder) decodes the same latents; this measures by how much it is cheaper on the edge
runtimes, with the export code the project ships (exports.signatures.DecoderModule,
exports.tflite.convert, the TF.js converter of exports.tfjs).

Both networks get random weights (the cost does not depend on the values): the SD v1 decoder
(VAEConfig()) and TAESD's (TinyAutoencoderConfig()), on a 64 x 64 x 4 latent (a 512 x 512
image), batch 1. TFLite: ai-edge-litert with XNNPACK, --threads threads, one warm-up call,
then the median of --repeats. TF.js: Debian's chromium headless, the WebAssembly backend
(SIMD; single-threaded, as the /edge/ page is not cross-origin isolated; --wasm-threads for
the threaded build), bench/tfjs_page/, each model in a fresh page, one warm-up call, then up to
--repeats timed calls; a model the runtime cannot run is recorded with its error (SD v1's
decoder at 512 px aborts in the wasm allocator once the page has grown to about 3 GB: the wasm
heap is 32-bit, and its activations at 256 and 512 px, up to 512 x 512 x 256 floats, with the
weights do not fit). The load average is recorded: on a shared machine both
decoders are slowed alike, so the ratio is the figure to read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from ._common import loadavg, machine_info, median, r, write_json

DEFAULT_OUT = os.path.join("bench", "results", "edge_decoders.json")
LATENT = 64  # 512 px


def _decoders():
    import keras

    from models.config import TinyAutoencoderConfig, VAEConfig
    from models.vae import VAEDecoder

    from .previews import _random_taesd

    keras.utils.set_random_seed(0)
    vae = VAEDecoder(VAEConfig())
    taesd_config = TinyAutoencoderConfig()
    return [("vae_decoder", vae, 0.18215), ("taesd_decoder", _random_taesd(taesd_config), taesd_config.scaling_factor)]


def _params(model):
    import numpy as np

    return int(sum(np.prod(v.shape) for v in model.weights))


def _time_tflite(path, feed, threads, repeats):
    """ms of `repeats` calls of the model's serving_default on `feed` ({input name: array}) after one."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner("serving_default")
    runner(**feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner(**feed)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def tflite_row(path, times, **fields):
    """A result row for a .tflite file timed by _time_tflite (fields: what was measured)."""
    return {**fields, "runtime": "tflite", "bytes": os.path.getsize(path), "ms": r(median(times), 1),
            "ms_all": [r(t, 1) for t in times]}


def tfjs_runtime(isolated=False):
    return "tfjs-wasm (chromium, " + ("threads)" if isolated else "one thread, as the /edge/ page)")


def tfjs_row(folder, result, isolated=False, **fields):
    """A result row for the TF.js model in `folder` from its _time_tfjs result (timings or an error)."""
    row = {**fields, "runtime": tfjs_runtime(isolated),
           "bytes": sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))}
    if "error" in result:
        return {**row, "ms": None, "error": result["error"], "seconds_until_error": result["seconds_until_error"]}
    runs = result["times_ms"]
    return {**row, "ms": r(median(runs), 1), "ms_all": [r(t, 1) for t in runs], "first_call_ms": r(result["first_ms"], 1),
            "load_ms": r(result["load_ms"], 1)}


def table(rows, key, unit):
    """Markdown rows of results (`key`: the field naming the network; `unit`: what a call makes)."""
    lines = [f"| {key} | parameters | runtime | precision | MB | ms per {unit} |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        ms = f"{row['ms']:.0f}" if row["ms"] is not None else f"fails: {row['error']}"
        lines.append(f"| {row[key]} | {row['params'] / 1e6:.1f} M | {row['runtime']} | {row['precision']} | "
                     f"{row['bytes'] / 1e6:.1f} | {ms} |")
    return lines


def add_runtime_arguments(ap):
    """The options both edge benchmarks take."""
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="TFLite threads (default 2, this machine's cores)")
    ap.add_argument("--precisions", default="float32,float16")
    ap.add_argument("--runtimes", default="tflite,tfjs", help="tflite, tfjs (the TF.js converter and chromium) or both")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls after the first (TF.js)")


def _time_tfjs(exports_dir, models, repeats, progress, warmup=1, isolated=False, spec=None):
    """{key: timings or {"error": ...}}: each model in a fresh page, so that one the wasm
    runtime aborts on (it runs out of its 32-bit heap) does not take the others with it.
    `spec`: the inputs, as bench/tfjs_page/bench.js makes them (default: one 512 px latent)."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    from .tfjs_browser import CHROMIUM, CHROMIUM_ARGS, StaticServer

    server = StaticServer(exports_dir, isolated=isolated)
    out, info = {}, None
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                for key in models:
                    page = browser.new_context().new_page()
                    page.goto(f"{server.url}/page/index.html")
                    info = page.evaluate("b => window.benchSetup(b)", "wasm")
                    if info.get("error"):
                        raise RuntimeError(f"wasm backend: {info['error']}")
                    spec = spec or {"latents": {"dtype": "float32", "shape": [1, LATENT, LATENT, 4]}}
                    t0 = time.perf_counter()
                    try:
                        res = page.evaluate("([u, i, w, n, s, m]) => window.benchModel(u, i, w, n, s, m)",
                                            [f"{server.url}/exports/{key}/model.json", spec, warmup, repeats, 600.0,
                                             repeats])
                        progress(f"  tfjs wasm {key:26} {median(res['times_ms']):10.1f} ms ({len(res['times_ms'])} runs)")
                    except PlaywrightError as e:
                        res = {"error": str(e).splitlines()[0][:300], "seconds_until_error": r(time.perf_counter() - t0, 1)}
                        progress(f"  tfjs wasm {key:26} failed after {res['seconds_until_error']} s: {res['error']}")
                    out[key] = res
                    page.context.close()
            finally:
                browser.close()
    finally:
        server.close()
    return out, info, browser.version


def measure(repeats=3, threads=2, precisions=("float32", "float16"), runtimes=("tflite", "tfjs"), warmup=1,
            progress=print, isolated=False):
    import numpy as np

    from exports import savedmodel, tfjs, tflite
    from exports.signatures import DecoderModule

    t_start, load_start = time.perf_counter(), loadavg()
    latents = np.random.default_rng(0).standard_normal((1, LATENT, LATENT, 4)).astype(np.float32)
    work = tempfile.mkdtemp(prefix="edge-decoders-")
    rows, tfjs_dirs = [], {}
    try:
        for name, model, scale in _decoders():
            params = _params(model)
            fixed = DecoderModule(model, scale, 4, LATENT, batch=1, size=LATENT)
            for precision in precisions if "tflite" in runtimes else ():
                path = os.path.join(work, f"{name}.{precision}.tflite")
                with open(path, "wb") as f:
                    f.write(tflite.convert(fixed, precision))
                times = _time_tflite(path, {"latents": latents}, threads, repeats)
                rows.append(tflite_row(path, times, decoder=name, params=params, precision=precision))
                progress(f"  tflite {threads} threads {name:14} {precision:8} {rows[-1]['ms']:10.1f} ms")
            if "tfjs" in runtimes:
                saved = savedmodel.save(DecoderModule(model, scale, 4, LATENT, batch=None, size=None),
                                        os.path.join(work, f"{name}-savedmodel"), name)
                for precision in precisions:
                    key = f"{name}_{precision}"
                    tfjs.convert(saved, os.path.join(work, "tfjs", key), precision)
                    tfjs_dirs[key] = (name, params, precision)
        browser = info = None
        if tfjs_dirs:
            times, info, browser = _time_tfjs(os.path.join(work, "tfjs"), list(tfjs_dirs), repeats, progress, warmup,
                                              isolated)
            for key, (name, params, precision) in tfjs_dirs.items():
                rows.append(tfjs_row(os.path.join(work, "tfjs", key), times[key], isolated, decoder=name, params=params,
                                     precision=precision))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = {}
    for row in rows:
        if row["decoder"] == "taesd_decoder":
            full = next((x for x in rows if x["decoder"] == "vae_decoder" and x["runtime"] == row["runtime"]
                         and x["precision"] == row["precision"]), None)
            if full and full["ms"] and row["ms"]:
                ratios[f"{row['runtime']} {row['precision']}"] = r(full["ms"] / row["ms"], 1)
    return {"benchmark": "edge_decoders", "latent": [LATENT, LATENT, 4], "image": [LATENT * 8, LATENT * 8, 3],
            "batch": 1, "threads": threads, "repeats": repeats, "warmup": warmup, "rows": rows, "speedup_taesd": ratios,
            "browser": browser and f"chromium {browser}", "wasm": info, "machine": machine_info(),
            "loadavg_start": load_start, "loadavg_end": loadavg(), "wall_s": r(time.perf_counter() - t_start, 1)}


def format_table(res):
    lines = table(res["rows"], "decoder", "512 px image")
    lines.append("")
    lines.append("TAESD speed-up: " + ", ".join(f"{k} {v}x" for k, v in res["speedup_taesd"].items()))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_arguments(ap)
    ap.add_argument("--wasm-threads", action="store_true",
                    help="serve the TF.js page cross-origin isolated (threaded wasm); the /edge/ page is not, and "
                         "there an out-of-memory abort hangs the page instead of failing")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    res = measure(args.repeats, args.threads, tuple(args.precisions.split(",")), tuple(args.runtimes.split(",")),
                  args.warmup, isolated=args.wasm_threads)
    print(format_table(res))
    write_json(args.out, res)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
