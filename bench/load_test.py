"""Load test: many concurrent clients against a loopback server on the tiny model.

    python -m bench.load_test --clients 100 --seconds 180     # starts its own server
    python -m bench.load_test --url http://127.0.0.1:7860      # or hits a running one

Each client loops over a mix of requests (txt2img, the split stages encode / diffuse /
decode, health) until the time is up. A 503 is the server's deliberate "queue full" answer:
the client waits for its Retry-After and goes on. Anything else that is not a 2xx, and any
connection error or timeout, counts as an error. Reports latency percentiles per request
kind and the server's resident memory after warm-up and at the end (it must stay within 10%).
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


async def one_request(client, url, kind, rng, context_body, latents_body, steps):
    from webapp import wire

    if kind == "txt2img":
        return await client.post(url + "/api/v1/txt2img", json={"prompt": rng.choice(PROMPTS), "steps": steps,
                                                                "seed": rng.randrange(2**32)})
    if kind == "encode":
        return await client.post(url + "/api/v1/encode", json={"prompts": [rng.choice(PROMPTS)]})
    if kind == "diffuse":
        return await client.post(url + "/api/v1/diffuse", params={"steps": steps, "seed": rng.randrange(2**32)},
                                 content=context_body, headers={"content-type": wire.MEDIA_TYPE})
    if kind == "decode":
        return await client.post(url + "/api/v1/decode", content=latents_body, headers={"content-type": wire.MEDIA_TYPE})
    return await client.get(url + "/api/v1/health")


async def client_loop(i, client, url, stop_at, stats, bodies, steps, max_wait):
    rng = random.Random(i)
    kinds = ["txt2img", "txt2img", "diffuse", "encode", "decode", "health"]
    while time.monotonic() < stop_at:
        kind = rng.choice(kinds)
        t0 = time.monotonic()
        try:
            r = await one_request(client, url, kind, rng, *bodies, steps)
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


async def run(args):
    import httpx

    from webapp import wire

    proc = None
    url = args.url
    if url is None:
        port = args.port
        proc = start_server(port, args.queue_size, extra=["--no-warm-up"] if args.no_warm_up else [])
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
        await asyncio.gather(*[client_loop(i, client, url, stop_at, stats, bodies, args.steps, args.max_wait)
                               for i in range(args.clients)])
        elapsed = time.monotonic() - t0
        sampler.cancel()
        health = (await client.get(url + "/api/v1/health")).json()
        rss_end = rss_mb(pid) if pid else None
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
        "server_queue_after": health["queue"],
    }
    report["passed"] = report["error_count"] == 0 and (rss_start is None or abs(report["rss_mb"]["growth_pct"]) <= 10)
    return report


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
    p.add_argument("--no-warm-up", action="store_true", help="start the server without its start-up compile "
                   "(the first requests of each kind then compile what they need)")
    p.add_argument("--out", default=None, help="write the JSON report here too")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
