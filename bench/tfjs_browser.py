"""TF.js latency of the exported edge models in headless Chromium, per backend and precision.

    python -m bench.tfjs_browser [--exports DIR] [--backends default,webgl,wasm,cpu] [--repeats 10]
                                 [--out bench/results/tfjs_browser.json]

For the default model ("tiny"): the text encoder, decoder and image encoder of an export
(`python -m exports --formats tfjs,tflite ...`; built once into $TMPDIR/sd-bench/exports-tiny
when --exports is not given), float32 and float16 weights. A loopback HTTP server (a thread in
this process) serves bench/tfjs_page/ at /page/, TensorFlow.js from edge/web/node_modules at
/tf/ and the export at /exports/, with the cross-origin-isolation headers that let the wasm
backend use threads. Debian's chromium (Playwright, the flags tests/test_edge.py uses:
--headless --no-sandbox --disable-gpu ...) loads the page once per backend:

- `default`: TF.js's own choice (its highest-priority backend that starts; WebGL runs on the
  software rasteriser under --disable-gpu); the backend that ran is recorded;
- `webgl`, `wasm`, `cpu` forced (a backend that ran already as `default` is not run again).

Per model: load time from loopback, the first call (WebGL shader compilation, wasm/JIT
warm-up), then after --warmup calls, --repeats timed calls (at least 3, stopping once
--max-seconds have passed); each call waits for every output's values (`tensor.data()`), as an
app does before drawing. Batch 1: token ids [1, 77], latents [1, 8, 8, 4], images [1, 64, 64, 3].
Reported: median ms per call. `python -m bench.charts` also draws edge_latency.png, these
figures beside the Keras, TFLite and TF.js-in-Node figures of bench/results/export_latency.json.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import sys
import tempfile
import threading
import time

from ._common import loadavg, machine_info, median, r, write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join("bench", "results", "tfjs_browser.json")
PAGE = os.path.join(REPO, "bench", "tfjs_page")
TFJS = os.path.join(REPO, "edge", "web", "node_modules", "@tensorflow")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
COMPONENTS = ("text_encoder", "decoder", "image_encoder")
PRECISIONS = ("float32", "float16")
BACKENDS = ("default", "webgl", "wasm", "cpu")
PROMPT = "a photograph of an astronaut riding a horse"  # as bench/export_latency.py


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files from a folder of links; cross-origin isolated unless told otherwise (wasm
    threads need SharedArrayBuffer); quiet."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".js": "text/javascript", ".json": "application/json", ".bin": "application/octet-stream"}
    isolated = True

    def end_headers(self):
        if self.isolated:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        # No "Cache-Control: no-store": with it, headless Chromium stalls for good loading a
        # 48-shard model (SD v1's decoder, 194 MB). Each page gets a fresh browser context instead,
        # so nothing is cached between load-time measurements.
        super().end_headers()

    def log_message(self, *args):
        pass


class StaticServer:
    """/page/ -> bench/tfjs_page, /tf/ -> edge/web/node_modules/@tensorflow, /exports/ -> the export.

    `isolated=False` serves without the cross-origin-isolation headers, as the /edge/ page is
    served: TF.js then runs its single-threaded wasm build."""

    def __init__(self, exports, isolated=True):
        self.root = tempfile.mkdtemp(prefix="tfjs-bench-")
        for name, target in (("page", PAGE), ("tf", TFJS), ("exports", os.path.abspath(exports))):
            os.symlink(target, os.path.join(self.root, name))
        handler = functools.partial(type("Handler", (_Handler,), {"isolated": isolated}), directory=self.root)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        for name in ("page", "tf", "exports"):
            os.unlink(os.path.join(self.root, name))
        os.rmdir(self.root)


def model_inputs(manifest, component, token_ids):
    lat, img = manifest["latent"], manifest["image"]
    if component == "text_encoder":
        return {"token_ids": {"dtype": "int32", "shape": [1, len(token_ids)], "values": token_ids}}
    if component == "decoder":
        return {"latents": {"dtype": "float32", "shape": [1, lat["height"], lat["width"], lat["channels"]]}}
    if component == "image_encoder":  # uint8 in the graph, an int32 tensor in TF.js
        return {"images": {"dtype": "int32", "shape": [1, img["height"], img["width"], 3], "max": 256}}
    raise ValueError(component)


def find_tfjs(manifest, component, precision):
    return next((a for a in manifest["artifacts"] if a["component"] == component and a["format"] == "tfjs"
                 and a["precision"] == precision and not a.get("variant")), None)


def measure(exports=None, backends=BACKENDS, components=COMPONENTS, precisions=PRECISIONS, warmup=2, repeats=10,
            max_seconds=8.0, min_runs=3, progress=print):
    from playwright.sync_api import sync_playwright

    from .deployment_modes import default_export_dir, ensure_export

    t_start = time.perf_counter()
    load_start = loadavg()
    need = [(c, "tfjs", p) for c in components for p in precisions]
    # without --exports: the full edge export (TFLite too, for bench.deployment_modes), or, for a
    # subset of components or precisions, only those TF.js models (the smoke test)
    full = set(components) == set(COMPONENTS) and set(precisions) == set(PRECISIONS)
    export_dir, built = ensure_export(exports or default_export_dir(), formats="tfjs,tflite" if full else "tfjs",
                                      components=",".join(COMPONENTS if full else components),
                                      quantize=",".join(PRECISIONS if full else precisions), need=need)
    with open(os.path.join(export_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    from models.tokenizer import CLIPTokenizer

    tok_dir = os.path.join(export_dir, os.path.dirname(manifest["tokenizer"]["files"]["vocab"]))
    token_ids = [int(i) for i in CLIPTokenizer.from_pretrained_folder(tok_dir).tokenize([PROMPT], warn=False)[0]]

    server = StaticServer(export_dir)
    rows, backend_info, ran = [], {}, set()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            version = browser.version
            try:
                for requested in backends:
                    page = browser.new_context().new_page()  # its own cache: load times from loopback
                    page.goto(f"{server.url}/page/index.html")
                    info = page.evaluate("b => window.benchSetup(b)", requested)
                    backend_info[requested] = info
                    if info.get("error"):
                        progress(f"backend {requested}: {info['error']}")
                        page.context.close()
                        continue
                    if info["backend"] in ran:
                        info["skipped"] = f"same as an earlier run ({info['backend']})"
                        page.context.close()
                        continue
                    ran.add(info["backend"])
                    progress(f"backend {requested} -> {info['backend']}"
                             + (f" ({info.get('renderer')})" if info.get("renderer") else ""))
                    for component in components:
                        for precision in precisions:
                            art = find_tfjs(manifest, component, precision)
                            url = f"{server.url}/exports/{art['path']}/model.json"
                            res = page.evaluate(
                                "([u, i, w, n, s, m]) => window.benchModel(u, i, w, n, s, m)",
                                [url, model_inputs(manifest, component, token_ids), warmup, repeats, max_seconds,
                                 min_runs])
                            ms = res["times_ms"]
                            row = {"component": component, "precision": precision, "backend_requested": requested,
                                   "backend": res["backend"], "bytes": art["bytes"], "ms": r(median(ms), 2),
                                   "ms_min": r(min(ms), 2), "runs": len(ms), "first_call_ms": r(res["first_ms"], 1),
                                   "load_ms": r(res["load_ms"], 1), "ms_all": [r(t, 2) for t in ms]}
                            rows.append(row)
                            progress(f"  {component:14} {precision:8} {row['ms']:9.2f} ms (min {row['ms_min']:.2f}, "
                                     f"{row['runs']} runs; first call {row['first_call_ms']:.0f} ms)")
                    page.context.close()
            finally:
                browser.close()
    finally:
        server.close()
    return {"benchmark": "tfjs_browser", "model": manifest["model"], "export": export_dir, "export_built": built,
            "browser": f"chromium {version}", "chromium_args": CHROMIUM_ARGS, "batch": 1,
            "warmup": warmup, "repeats": repeats, "max_seconds": max_seconds, "backends": backend_info,
            "rows": rows, "machine": machine_info(), "loadavg_start": load_start, "loadavg_end": loadavg(),
            "wall_s": r(time.perf_counter() - t_start, 1)}


def format_table(res):
    lines = [f"TF.js in headless {res['browser']}, batch 1, ms per call (median)",
             f"{'component':14} {'precision':9} " + " ".join(f"{b:>16}" for b in _ran(res))]
    for component in dict.fromkeys(x["component"] for x in res["rows"]):
        for precision in dict.fromkeys(x["precision"] for x in res["rows"]):
            cells = []
            for b in _ran(res):
                row = next((x for x in res["rows"] if x["component"] == component and x["precision"] == precision
                            and x["backend_requested"] == b), None)
                cells.append(f"{row['ms']:16.2f}" if row else f"{'-':>16}")
            lines.append(f"{component:14} {precision:9} " + " ".join(cells))
    return "\n".join(lines)


def _ran(res):
    return [b for b, info in res["backends"].items() if not info.get("error") and not info.get("skipped")]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.tfjs_browser", description=__doc__.split("\n\n")[0])
    p.add_argument("--exports", help="export folder with tfjs/ models (default: built once into "
                   "$TMPDIR/sd-bench/exports-tiny)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="default = TF.js's own choice")
    p.add_argument("--components", default=",".join(COMPONENTS))
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=8.0, help="per model: stop timing after this (>= 3 runs)")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON results ('' for none)")
    args = p.parse_args(argv)
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    res = measure(args.exports, split(args.backends), split(args.components), split(args.precisions), args.warmup,
                  args.repeats, args.max_seconds)
    print(format_table(res))
    if args.out:
        write_json(args.out, res)
        from .charts import edge_latency_chart, tfjs_browser_chart

        d = os.path.dirname(os.path.abspath(args.out))
        print("wrote", args.out, tfjs_browser_chart(res, os.path.join(d, "tfjs_browser.png")),
              edge_latency_chart(res, os.path.join(d, "edge_latency.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
