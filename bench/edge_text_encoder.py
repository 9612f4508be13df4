"""The full-size text encoder on the edge: SD v1's CLIP ViT-L/14 text tower in TFLite and TF.js.

    python -m bench.edge_text_encoder [--repeats 3] [--precisions float32,float16] [--out bench/results/edge_text_encoder.json]

In the hybrid mode the client encodes the prompt (and the empty prompt, once) before it sends
the contexts: this is what that costs a phone or a browser at full size, with the export code
the project ships (exports.signatures.TextEncoderModule, exports.tflite.convert, the TF.js
converter of exports.tfjs). Random weights (the cost does not depend on the values), one
prompt of 77 token ids, batch 1. TFLite: ai-edge-litert with XNNPACK, --threads threads, one
warm-up call, then the median of --repeats. TF.js: Debian's chromium headless, the WebAssembly
backend, single-threaded as the /edge/ page runs it, a fresh page per precision
(bench/edge_decoders.py has the same harness for the decoders).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from ._common import loadavg, machine_info, r, write_json
from .edge_decoders import _params, _time_tflite, _time_tfjs, add_runtime_arguments, table, tfjs_row, tflite_row

DEFAULT_OUT = os.path.join("bench", "results", "edge_text_encoder.json")


def measure(repeats=3, threads=2, precisions=("float32", "float16"), runtimes=("tflite", "tfjs"), warmup=1,
            progress=print):
    import keras
    import numpy as np

    from exports import savedmodel, tfjs, tflite
    from exports.signatures import TextEncoderModule
    from models.config import SD_V1
    from models.text_encoder import TextEncoder

    t_start, load_start = time.perf_counter(), loadavg()
    keras.utils.set_random_seed(0)
    config = SD_V1["text_encoder"]
    encoder = TextEncoder(config)
    length, vocab = config.max_position_embeddings, config.vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, (1, length)).astype(np.int32)
    params, rows = _params(encoder), []
    work = tempfile.mkdtemp(prefix="edge-text-encoder-")
    try:
        for precision in precisions if "tflite" in runtimes else ():
            path = os.path.join(work, f"text_encoder.{precision}.tflite")
            with open(path, "wb") as f:
                f.write(tflite.convert(TextEncoderModule(encoder, batch=1), precision))
            times = _time_tflite(path, {"token_ids": ids}, threads, repeats)
            rows.append(tflite_row(path, times, component="text_encoder", params=params, precision=precision))
            progress(f"  tflite {threads} threads text_encoder {precision:8} {rows[-1]['ms']:10.1f} ms")
        browser = info = None
        if "tfjs" in runtimes:
            saved = savedmodel.save(TextEncoderModule(encoder, batch=None), os.path.join(work, "savedmodel"),
                                    "text_encoder")
            keys = []
            for precision in precisions:
                keys.append(f"text_encoder_{precision}")
                tfjs.convert(saved, os.path.join(work, "tfjs", keys[-1]), precision)
            spec = {"token_ids": {"dtype": "int32", "shape": [1, length], "max": vocab}}
            times, info, browser = _time_tfjs(os.path.join(work, "tfjs"), keys, repeats, progress, warmup, spec=spec)
            for key, precision in zip(keys, precisions):
                rows.append(tfjs_row(os.path.join(work, "tfjs", key), times[key], component="text_encoder",
                                     params=params, precision=precision))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"benchmark": "edge_text_encoder", "tokens": length, "batch": 1, "threads": threads, "repeats": repeats,
            "warmup": warmup, "rows": rows, "browser": browser and f"chromium {browser}", "wasm": info,
            "machine": machine_info(), "loadavg_start": load_start, "loadavg_end": loadavg(),
            "wall_s": r(time.perf_counter() - t_start, 1)}


def format_table(res):
    return "\n".join(table(res["rows"], "component", "prompt"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_arguments(ap)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    res = measure(args.repeats, args.threads, tuple(args.precisions.split(",")), tuple(args.runtimes.split(",")),
                  args.warmup)
    print(format_table(res))
    write_json(args.out, res)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
