"""Compile stalls: what a fresh server charges the first request of each new combination.

    python -m bench.compile_stalls                      # starts its own server on the default model
    python -m bench.compile_stalls --url http://127.0.0.1:7860 --pid 1234

A TensorFlow graph traced for one size, batch or scheduler used to be traced again for the
next one, and the user who asked first waited (issue 16: a new scheduler 9-11 s, the first
non-default size 30-70 s, 100-450 MB each). This sends every combination below twice through
the REST API, as a browser or script would, and reports for each: the first call, the second
(the work itself), the difference (the stall), and the server's resident memory after it. The
server is started fresh; the benchmark waits until /health says its start-up compile
(models/warm_up.py) is done, as a readiness probe would, so the first row shows what start-up
left undone. `--server-args --no-warm-up` measures without it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np

from ._common import machine_info, save_result

PROMPT = "a red circle on a blue background"
# (label, route, fields): each adds one new size, batch, scheduler or mode to what ran before
COMBINATIONS = [
    ("64x64 ddim", "txt2img", {}),
    ("96x64", "txt2img", {"width": 96}),
    ("128x128", "txt2img", {"width": 128, "height": 128}),
    ("64x128", "txt2img", {"height": 128}),
    ("192x128", "txt2img", {"width": 192, "height": 128}),
    ("batch 2", "txt2img", {"batch_size": 2}),
    ("batch 4", "txt2img", {"batch_size": 4}),
    ("96x96 batch 3", "txt2img", {"width": 96, "height": 96, "batch_size": 3}),
    ("euler_a", "txt2img", {"scheduler": "euler_a"}),
    ("dpmpp_2m", "txt2img", {"scheduler": "dpmpp_2m"}),
    ("euler", "txt2img", {"scheduler": "euler"}),
    ("dpmpp_2m_karras 128x64", "txt2img", {"scheduler": "dpmpp_2m_karras", "height": 128}),
    ("guidance 1", "txt2img", {"guidance_scale": 1.0}),
    ("long prompt (2 chunks)", "txt2img", {"prompt": ", ".join([PROMPT] * 12)}),
    ("img2img 64", "img2img", {}),
    ("inpaint 96x64", "inpaint", {"width": 96}),
]


def _png(array):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def request(client, url, route, fields, steps):
    body = {"prompt": PROMPT, "steps": steps, "seed": 1, **fields}
    if route == "txt2img":
        r = client.post(f"{url}/api/v1/txt2img", json=body)
    else:
        w, h = body.pop("width", 64), body.pop("height", 64)
        rng = np.random.default_rng(0)
        files = {"image": ("image.png", _png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), "image/png")}
        if route == "inpaint":
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4:3 * h // 4, w // 4:3 * w // 4] = 255
            files["mask"] = ("mask.png", _png(mask), "image/png")
        r = client.post(f"{url}/api/v1/{route}", data={k: str(v) for k, v in body.items()}, files=files)
    if r.status_code != 200:
        raise RuntimeError(f"{route} {fields}: HTTP {r.status_code}: {r.text[:300]}")


def run(args):
    import httpx
    import psutil

    from webapp.launch import is_ready

    from .load_test import start_server

    proc = None
    url, pid = args.url, args.pid
    started = time.perf_counter()
    if url is None:
        proc = start_server(args.port, 16, extra=args.server_args)
        url, pid = f"http://127.0.0.1:{args.port}", proc.pid
    rows = []
    try:
        with httpx.Client(timeout=600) as client:
            warm_up = None
            while True:
                try:
                    r = client.get(url + "/api/v1/health")
                    warm_up = r.json().get("warm_up") if r.status_code == 200 else None
                    if is_ready(r):
                        break
                except httpx.HTTPError:
                    pass
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError("the server exited during start-up")
                time.sleep(0.5)
            ready = time.perf_counter() - started
            process = psutil.Process(pid) if pid else None
            rss = lambda: process.memory_info().rss / 2**20 if process else None  # noqa: E731
            print(f"server ready after {ready:.1f} s (warm-up: {warm_up}), RSS {rss() or 0:.0f} MB", flush=True)
            start_rss = rss()
            for label, route, fields in COMBINATIONS:
                times = []
                for _ in range(2):
                    t = time.perf_counter()
                    request(client, url, route, fields, args.steps)
                    times.append(time.perf_counter() - t)
                row = {"combination": label, "first_s": round(times[0], 3), "again_s": round(times[1], 3),
                       "stall_s": round(times[0] - times[1], 3), "rss_mb": round(rss(), 1) if process else None}
                rows.append(row)
                print(f"{label:28s} first {times[0]:6.2f} s  again {times[1]:6.2f} s  stall {row['stall_s']:6.2f} s"
                      f"  RSS {row['rss_mb'] or 0:7.0f} MB", flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    stalls = [r["stall_s"] for r in rows]
    summary = {"max_stall_s": max(stalls), "worst": rows[int(np.argmax(stalls))]["combination"],
               "rss_growth_mb": round(rows[-1]["rss_mb"] - start_rss, 1) if rows and start_rss else None,
               "ready_s": round(ready, 1), "warm_up": warm_up, "start_rss_mb": round(start_rss, 1) if start_rss else None}
    print(json.dumps(summary))
    return {"machine": machine_info(), "steps": args.steps, "server_args": args.server_args, "rows": rows,
            "summary": summary}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running server (default: start one on the default model)")
    p.add_argument("--pid", type=int, help="that server's process id, for its memory")
    p.add_argument("--port", type=int, default=7871)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--server-args", nargs="*", default=[], help="extra arguments for `python -m webapp`")
    p.add_argument("--out", default=os.path.join("bench", "results", "compile_stalls.json"))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    save_result(args.out, run(args))


if __name__ == "__main__":
    sys.exit(main())
