"""Load test: many concurrent clients against a loopback server on the tiny model.

    python -m bench.load_test --clients 100 --seconds 180     # starts its own server
    python -m bench.load_test --url http://127.0.0.1:7860      # or hits a running one
    python -m bench.load_test --compare-batching --clients 8 --kinds txt2img --steps 20 --seconds 60

Each client loops over a mix of requests (txt2img, the split stages encode / diffuse /
decode, health) until the time is up. A 503 is the server's deliberate "queue full" answer:
the client waits for its Retry-After and goes on. Anything else that is not a 2xx, and any
connection error or timeout, counts as an error. Reports latency percentiles per request
kind and the server's resident memory after warm-up and at the end (it must stay within 10%).

Batching across users (models/step_batcher.py): `--batch-requests N` starts the server with
it, and the report carries the server's own count of requests per shared UNet call.
`--check-images K` replays K of the load's txt2img requests one at a time afterwards and
reports the largest pixel difference from the image the request got under load.
`--compare-batching` runs the same load twice, on a one-at-a-time server (--batch-requests 1)
and on a batching one, and reports the throughput and p95 ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red circle on a blue background", "a green square on a yellow background",
           "a purple triangle on a white background", "a blue circle on an orange background"]


def percentile(values, q):
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q))


def rss_mb(pid):
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def start_server(port, queue_size, extra=()):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"load-test-server-{port}.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "webapp", "--no-ui", "--port", str(port), "--queue-size",
                             str(queue_size), "--log-level", "warning", *extra], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    return proc


async def wait_ready(client, url, proc=None, timeout=300):
    """Until /health says ready (webapp.launch.is_ready: serving and done compiling at start):
    load measured meanwhile would be measuring the compiler."""
    from webapp.launch import is_ready

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        try:
            if is_ready(await client.get(url + "/api/v1/health")):
                return
        except Exception:
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError("the server did not start")


class Stats:
    def __init__(self):
        self.latency = {}
        self.ok = 0
        self.busy = 0
        self.errors = {}

    def error(self, kind, what):
        key = f"{kind}: {what}"
        self.errors[key] = self.errors.get(key, 0) + 1


def txt2img_body(rng, steps):
    return {"prompt": rng.choice(PROMPTS), "steps": steps, "seed": rng.randrange(2**32)}


async def txt2img_png(client, url, body):
    return await client.post(url + "/api/v1/txt2img", json=body, headers={"accept": "image/png"})


async def one_request(client, url, kind, rng, context_body, latents_body, steps, record=None):
    from webapp import wire

    if kind == "txt2img":
        body = txt2img_body(rng, steps)
        r = await txt2img_png(client, url, body)
        if record is not None and r.status_code == 200:
            record.append((body, r.content))
        return r
    if kind == "encode":
        return await client.post(url + "/api/v1/encode", json={"prompts": [rng.choice(PROMPTS)]})
    if kind == "diffuse":
        return await client.post(url + "/api/v1/diffuse", params={"steps": steps, "seed": rng.randrange(2**32)},
                                 content=context_body, headers={"content-type": wire.MEDIA_TYPE})
    if kind == "decode":
        return await client.post(url + "/api/v1/decode", content=latents_body, headers={"content-type": wire.MEDIA_TYPE})
    return await client.get(url + "/api/v1/health")


MIXES = {"mixed": ["txt2img", "txt2img", "diffuse", "encode", "decode", "health"], "txt2img": ["txt2img"]}


async def client_loop(i, client, url, stop_at, stats, bodies, steps, max_wait, kinds, record):
    rng = random.Random(i)
    while time.monotonic() < stop_at:
        kind = rng.choice(kinds)
        t0 = time.monotonic()
        try:
            r = await one_request(client, url, kind, rng, *bodies, steps, record)
        except Exception as e:  # connection refused/reset, timeouts: the server did not stay up
            stats.error(kind, type(e).__name__)
            await asyncio.sleep(0.5)
            continue
        dt = time.monotonic() - t0
        if r.status_code == 503:
            stats.busy += 1
            wait = min(max_wait, float(r.headers.get("retry-after", 1)))
            await asyncio.sleep(wait * (0.5 + rng.random()))
        elif r.status_code >= 400:
            stats.error(kind, r.status_code)
        else:
            stats.ok += 1
            stats.latency.setdefault(kind, []).append(dt)


async def check_images(client, url, record, k):
    """Replay k recorded txt2img requests one at a time: the largest pixel difference from
    what each got under load (batching must not change an image by more than a grey level)."""
    import io

    from PIL import Image

    worst = 0
    for body, png in record[:k]:
        r = await txt2img_png(client, url, body)
        assert r.status_code == 200, (r.status_code, r.text[:200])
        a, b = (np.asarray(Image.open(io.BytesIO(x)).convert("RGB"), np.int16) for x in (png, r.content))
        worst = max(worst, int(np.abs(a - b).max()))
    return {"replayed": min(k, len(record)), "max_pixel_difference": worst}


async def run(args):
    import httpx

    from webapp import wire

    proc = None
    url = args.url
    if url is None:
        port = args.port
        extra = ["--no-warm-up"] if args.no_warm_up else []
        if args.batch_requests is not None:
            extra += ["--batch-requests", str(args.batch_requests)]
        proc = start_server(port, args.queue_size, extra=extra)
        url = f"http://127.0.0.1:{port}"
    limits = httpx.Limits(max_connections=args.clients + 10, max_keepalive_connections=args.clients + 10)
    async with httpx.AsyncClient(timeout=args.request_timeout, limits=limits) as client:
        await wait_ready(client, url, proc)
        info = (await client.get(url + "/api/v1/models")).json()
        T, D = info["context_shape"]
        s = info["latent_size"]
        rng = np.random.default_rng(0)
        context_body = wire.encode({"context": (rng.standard_normal((1, T, D)) * 0.5).astype(np.float16)})
        latents_body = wire.encode({"latents": rng.standard_normal((1, s, s, info["latent_channels"])).astype(np.float16)})
        bodies = (context_body, latents_body)
        # warm-up: every request kind once, so graph tracing is not counted as growth
        warm_rng = random.Random(0)
        for kind in ("txt2img", "encode", "diffuse", "decode", "health"):
            for _ in range(3):
                r = await one_request(client, url, kind, warm_rng, *bodies, args.steps)
                assert r.status_code == 200, (kind, r.status_code, r.text[:200])
        pid = proc.pid if proc else args.pid
        rss_start = rss_mb(pid) if pid else None
        stats = Stats()
        samples = []

        async def sample():
            while True:
                if pid:
                    samples.append(rss_mb(pid))
                await asyncio.sleep(2)

        sampler = asyncio.create_task(sample())
        t0 = time.monotonic()
        stop_at = t0 + args.seconds
        record = []
        await asyncio.gather(*[client_loop(i, client, url, stop_at, stats, bodies, args.steps, args.max_wait,
                                           MIXES[args.kinds], record) for i in range(args.clients)])
        elapsed = time.monotonic() - t0
        sampler.cancel()
        health = (await client.get(url + "/api/v1/health")).json()
        rss_end = rss_mb(pid) if pid else None
        images = await check_images(client, url, record, args.check_images) if args.check_images else None
    if proc is not None:
        proc.terminate()
        proc.wait(30)
    all_lat = [x for v in stats.latency.values() for x in v]
    report = {
        "clients": args.clients, "seconds": round(elapsed, 1), "steps": args.steps, "queue_size": args.queue_size,
        "requests_ok": stats.ok, "rejected_503": stats.busy, "errors": stats.errors,
        "error_count": sum(stats.errors.values()), "throughput_ok_per_s": round(stats.ok / elapsed, 2),
        "latency_s": {"p50": percentile(all_lat, 50), "p95": percentile(all_lat, 95), "p99": percentile(all_lat, 99),
                      "max": max(all_lat) if all_lat else None},
        "latency_by_kind_s": {k: {"n": len(v), "p50": percentile(v, 50), "p95": percentile(v, 95)}
                              for k, v in sorted(stats.latency.items())},
        "rss_mb": {"start": rss_start, "end": rss_end, "max": max(samples) if samples else None,
                   "growth_pct": (rss_end / rss_start - 1) * 100 if rss_start else None},
        "server_queue_after": health["queue"], "kinds": args.kinds,
        "batching": health.get("batching"), "images": images,
    }
    report["passed"] = (report["error_count"] == 0 and (rss_start is None or abs(report["rss_mb"]["growth_pct"]) <= 10)
                        and (images is None or images["max_pixel_difference"] <= 1))
    return report


def compare_batching(args):
    """The same load on a one-at-a-time server and on a batching one (each started fresh)."""
    runs = {}
    for name, n in (("one_at_a_time", 1), ("batched", args.batch_requests or 8)):
        one = argparse.Namespace(**{**vars(args), "batch_requests": n, "url": None})
        print(f"[{name}] --batch-requests {n}: {args.clients} clients, {args.seconds:g} s", file=sys.stderr)
        runs[name] = asyncio.run(run(one))
    a, b = runs["one_at_a_time"], runs["batched"]
    ratio = {"throughput": b["throughput_ok_per_s"] / a["throughput_ok_per_s"],
             "p95_latency": b["latency_s"]["p95"] / a["latency_s"]["p95"],
             "p50_latency": b["latency_s"]["p50"] / a["latency_s"]["p50"]}
    return {"runs": runs, "batched_over_one_at_a_time": ratio,
            "passed": a["passed"] and b["passed"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.load_test", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--seconds", type=float, default=180)
    p.add_argument("--url", default=None, help="a running server (default: start one on the tiny model)")
    p.add_argument("--pid", type=int, default=None, help="the running server's pid, for RSS")
    p.add_argument("--port", type=int, default=7871)
    p.add_argument("--queue-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--max-wait", type=float, default=2.0, help="cap on a client's Retry-After wait")
    p.add_argument("--request-timeout", type=float, default=300)
    p.add_argument("--kinds", default="mixed", choices=sorted(MIXES), help="request mix: mixed (txt2img, the "
                   "split stages, health) or txt2img only")
    p.add_argument("--batch-requests", type=int, default=None, help="start the server with this --batch-requests")
    p.add_argument("--check-images", type=int, default=0, metavar="K", help="replay K txt2img requests alone "
                   "afterwards and compare their images with those they got under load")
    p.add_argument("--compare-batching", action="store_true", help="run the load on a one-at-a-time server "
                   "and on a batching one (--batch-requests, default 8) and report the ratios")
    p.add_argument("--no-warm-up", action="store_true", help="start the server without its start-up compile "
                   "(the first requests of each kind then compile what they need)")
    p.add_argument("--out", default=None, help="write the JSON report here too")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    report = compare_batching(args) if args.compare_batching else asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
