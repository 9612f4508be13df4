"""The three deployment modes of the web app on loopback, for the embedded default model ("tiny"):
end-to-end latency, server compute seconds and bytes over the wire per image.

    python -m bench.deployment_modes [--steps 20] [--repeats 10] [--exports DIR] [--out FILE]

1. **all in one**: one `python -m webapp --no-ui` process; the client posts
   `POST /api/v1/txt2img` (JSON, `Accept: image/png`) and gets the PNG.
2. **three endpoints**: three processes started with `--component text_encoder|diffusion|decoder`
   and a front-end process configured with their URLs (`--split-dtype float16`, like mode 3);
   the client posts the same txt2img request to the front end.
3. **hybrid**: the client runs the TFLite text encoder and decoder of an export itself
   (`edge/client.py`, float32 files, no TensorFlow) and only calls `POST /api/v1/diffuse` on the
   diffusion process of mode 2, with float16 tensors.

Every server is a separate `python -m webapp` process on 127.0.0.1. Measured per image:
- `latency_s`: wall time at the client, from the request (mode 3: from the prompt) to the
  decoded pixels; median of --repeats warm runs (after --warmup runs), the modes in turns so
  that a burst of other work on the shared machine does not land on one mode only;
- `server_cpu_s`: CPU time (user + system, psutil) that the server processes involved spent
  during the request, summed (mode 2: the front end and the three stages), and per process;
- `client_cpu_s`: CPU time of this (client) process: mode 3's local encode and decode;
- `other_cores_median` / `_max`: cores used meanwhile by every other process on the machine
  (the idle servers included); before each round the benchmark waits up to --quiet-wait
  seconds for the others to quieten (the machine is shared);
- bytes: HTTP bodies (headers excluded, a few hundred bytes each way), `client_*` on the
  client's link and, for mode 2, `internal_*` between the front end and its stages (counted by
  replaying the front end's chain once with `webapp.split_client.RemoteEngine`, the class the
  front end itself uses, with the same dtype).
Same prompt, seed and 20 DDIM steps everywhere; the images of modes 2 and 3 are compared with
mode 1's (max pixel difference). Without --exports, a TFLite export of the text encoder and
decoder is built once into $TMPDIR/sd-bench/exports-tiny (about 15 s).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

from webapp.launch import ServerProcess

from ._common import CpuMeter, loadavg, machine_info, median, r, wait_quiet, write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join("bench", "results", "deployment_modes.json")
PROMPT = "a red circle on a blue background"
SEED = 42
MODES = ("all_in_one", "three_endpoints", "hybrid")
LABELS = {"all_in_one": "1. all in one (POST /txt2img)",
          "three_endpoints": "2. three endpoints + front end",
          "hybrid": "3. hybrid (client TFLite, POST /diffuse)"}


def default_export_dir():
    return os.path.join(tempfile.gettempdir(), "sd-bench", "exports-tiny")


def ensure_export(path, formats="tflite", components="text_encoder,decoder", quantize="float32",
                  need=(("text_encoder", "tflite", "float32"), ("decoder", "tflite", "float32"))):
    """An export with the artifacts in `need` ((component, format, precision)); built with
    `python -m exports` in a child process when missing."""
    def ok():
        m = os.path.join(path, "manifest.json")
        if not os.path.isfile(m):
            return False
        with open(m, encoding="utf-8") as f:
            arts = {(a["component"], a["format"], a["precision"]) for a in json.load(f)["artifacts"]
                    if not a.get("variant")}
        return set(need) <= arts

    if ok():
        return path, False
    cmd = [sys.executable, "-m", "exports", "--model", "tiny", "--out", path, "--formats", formats,
           "--components", components, "--quantize", quantize]
    print("building the export:", " ".join(cmd[1:]), flush=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not ok():
        raise RuntimeError(f"export failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return path, True


class Server(ServerProcess):
    """`python -m webapp --no-ui ...` (webapp.launch), plus its CPU time and resident memory."""

    def __init__(self, name, *args, timeout=180):
        import psutil

        env = {"GRADIO_ANALYTICS_ENABLED": "False", "SD_API_TOKEN": ""}
        super().__init__("--no-ui", "--log-level", "warning", *args, name=f"bench-{name}", env=env,
                         timeout=timeout)
        self.name = name
        self.ps = psutil.Process(self.proc.pid)

    def cpu(self):
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss_mb(self):
        return self.ps.memory_info().rss / 2**20


def _png_pixels(data):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class Modes:
    """The clients of the three modes; each call returns (uint8 image [H, W, 3], request bytes, response bytes)."""

    def __init__(self, servers, exports, steps, dtype):
        import httpx

        from edge import client as edge_client

        self.servers, self.steps = servers, steps
        self.http = httpx.Client(timeout=300)
        self.body = json.dumps({"prompt": PROMPT, "seed": SEED, "steps": steps}).encode()
        self.edge_models = edge_client.EdgeModels(exports, "float32", components=("text_encoder", "decoder"))
        self.edge = edge_client.EdgeClient(servers["diffusion"].url, self.edge_models, dtype=dtype)
        self.involved = {"all_in_one": ["all"], "three_endpoints": ["frontend", "text_encoder", "diffusion", "decoder"],
                         "hybrid": ["diffusion"]}

    def _txt2img(self, url, accept="image/png"):
        resp = self.http.post(url + "/api/v1/txt2img", content=self.body,
                              headers={"Content-Type": "application/json", "Accept": accept})
        resp.raise_for_status()
        return resp.content

    def all_in_one(self):
        data = self._txt2img(self.servers["all"].url)
        return _png_pixels(data), len(self.body), len(data)

    def three_endpoints(self):
        data = self._txt2img(self.servers["frontend"].url)
        return _png_pixels(data), len(self.body), len(data)

    def hybrid(self):
        res = self.edge.txt2img(PROMPT, seed=SEED, steps=self.steps)
        return res.images[0], res.bytes_sent, res.bytes_received

    def run(self, mode):
        """One timed image: wall, CPU of the involved servers and of this process, bytes."""
        servers = [self.servers[n] for n in self.involved[mode]]
        cpu0 = [s.cpu() for s in servers]
        own0 = time.process_time()
        busy0 = CpuMeter._system()[0]
        t0 = time.perf_counter()
        image, sent, received = getattr(self, mode)()
        wall = time.perf_counter() - t0
        own = time.process_time() - own0
        per = {s.name: s.cpu() - c for s, c in zip(servers, cpu0)}
        # cores used by everything else (other servers idling, other jobs on the machine)
        other = max(0.0, (CpuMeter._system()[0] - busy0 - own - sum(per.values())) / wall)
        return image, {"wall_s": wall, "server_cpu_s": sum(per.values()), "server_cpu_by_process_s": per,
                       "client_cpu_s": own, "other_cores": other, "request_bytes": sent, "response_bytes": received}


def internal_bytes(servers, steps, dtype):
    """Bodies between the front end and its three stages for one image: the front end's own chain
    (models.chain.txt2img over webapp.split_client.RemoteEngine) replayed here once."""
    from models import chain
    from webapp.split_client import RemoteEngine

    remote = RemoteEngine(servers["text_encoder"].url, servers["diffusion"].url, servers["decoder"].url, dtype=dtype)
    remote.info()  # the model list the front end fetches once at start, not per image
    sent0, received0 = remote.bytes_sent, remote.bytes_received
    chain.txt2img(remote, PROMPT, "", steps=steps, seed=SEED)
    return {"sent": remote.bytes_sent - sent0, "received": remote.bytes_received - received0}


def measure(steps=20, repeats=10, warmup=2, exports=None, dtype="float16", quiet_wait=3.0, progress=print):
    import numpy as np

    t_start = time.perf_counter()
    load_start = loadavg()
    export_dir, built = ensure_export(exports or default_export_dir())
    servers = {}
    try:
        # one at a time: each loads TensorFlow and the model (the two cores are shared)
        for name in ("all", "text_encoder", "diffusion", "decoder"):
            args = () if name == "all" else ("--component", name)
            servers[name] = Server(name, *args)
            progress(f"started {name} in {servers[name].start_s:.1f} s")
        servers["frontend"] = Server("frontend", "--text-encoder-url", servers["text_encoder"].url,
                                     "--diffusion-url", servers["diffusion"].url,
                                     "--decoder-url", servers["decoder"].url, "--split-dtype", dtype)
        progress(f"started frontend in {servers['frontend'].start_s:.1f} s")
        modes = Modes(servers, export_dir, steps, dtype)

        runs = {m: [] for m in MODES}
        images = {}
        for m in MODES:  # warm-up: graph tracing, TFLite allocation, HTTP connections
            for _ in range(warmup):
                images[m], _ = modes.run(m)
        waited = 0.0
        for _ in range(repeats):  # in turns
            if quiet_wait:
                waited += wait_quiet(max_wait=quiet_wait, window=0.5)[0]
            for m in MODES:
                images[m], run = modes.run(m)
                runs[m].append(run)
        internal = internal_bytes(servers, steps, dtype)
        json_response = len(modes._txt2img(servers["all"].url, accept="application/json"))
        rss = {n: r(s.rss_mb(), 1) for n, s in servers.items()}
        starts = {n: r(s.start_s, 1) for n, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()

    reference = images["all_in_one"].astype(int)
    results = {}
    for m in MODES:
        rs = runs[m]
        sent, received = rs[-1]["request_bytes"], rs[-1]["response_bytes"]
        row = {"label": LABELS[m], "processes": modes.involved[m],
               "latency_s": r(median([x["wall_s"] for x in rs]), 4),
               "latency_s_min": r(min(x["wall_s"] for x in rs), 4),
               "latency_s_all": [r(x["wall_s"], 4) for x in rs],
               "server_cpu_s": r(median([x["server_cpu_s"] for x in rs]), 4),
               "server_cpu_by_process_s": {n: r(median([x["server_cpu_by_process_s"][n] for x in rs]), 4)
                                           for n in modes.involved[m]},
               "client_cpu_s": r(median([x["client_cpu_s"] for x in rs]), 4),
               "other_cores_median": r(median([x["other_cores"] for x in rs]), 2),
               "other_cores_max": r(max(x["other_cores"] for x in rs), 2),
               "client_request_bytes": sent, "client_response_bytes": received,
               "client_bytes": sent + received,
               "max_pixel_diff_vs_all_in_one": int(np.abs(images[m].astype(int) - reference).max()),
               "image_shape": list(images[m].shape)}
        if m == "three_endpoints":
            row["internal_request_bytes"], row["internal_response_bytes"] = internal["sent"], internal["received"]
            row["internal_bytes"] = internal["sent"] + internal["received"]
        row["total_bytes"] = row["client_bytes"] + row.get("internal_bytes", 0)
        results[m] = row
    return {"benchmark": "deployment_modes", "model": "tiny", "steps": steps, "seed": SEED, "prompt": PROMPT,
            "repeats": repeats, "warmup": warmup, "tensor_dtype": dtype, "hybrid_client": "edge/client.py TFLite float32",
            "export": export_dir, "export_built": built, "quiet_wait_s": quiet_wait, "waited_s": r(waited, 1), "png_response": True,
            "all_in_one_json_response_bytes": json_response, "server_start_s": starts, "server_rss_mb": rss,
            "results": results, "machine": machine_info(), "loadavg_start": load_start, "loadavg_end": loadavg(),
            "wall_s": r(time.perf_counter() - t_start, 1)}


def format_table(res):
    lines = [f"tiny model, {res['steps']} steps, seed {res['seed']}, {res['repeats']} warm runs per mode (medians); "
             f"tensors {res['tensor_dtype']}",
             f"{'mode':44} {'latency':>9} {'server CPU':>11} {'client CPU':>11} {'client bytes':>14} "
             f"{'internal':>10} {'max diff':>9} {'others':>7}"]
    for m, row in res["results"].items():
        lines.append(f"{row['label']:44} {row['latency_s'] * 1000:7.0f}ms {row['server_cpu_s']:10.3f}s "
                     f"{row['client_cpu_s']:10.3f}s {row['client_request_bytes']:>6}+{row['client_response_bytes']:<6}"
                     f" {row.get('internal_bytes', 0):>10} {row['max_pixel_diff_vs_all_in_one']:>9}"
                     f" {row.get('other_cores_median') or 0:7.2f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.deployment_modes", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--exports", help="export folder with TFLite text encoder and decoder (default: built once "
                   "into $TMPDIR/sd-bench/exports-tiny)")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"),
                   help="tensors between the processes (modes 2 and 3)")
    p.add_argument("--quiet-wait", type=float, default=3.0, help="before each round of the three modes, wait up "
                   "to this many seconds for other processes to use <= 0.25 cores (0: never)")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON results ('' for none)")
    p.add_argument("--chart", default=None, help="PNG chart (default: beside --out as deployment_modes.png)")
    args = p.parse_args(argv)
    res = measure(args.steps, args.repeats, args.warmup, args.exports, args.dtype, args.quiet_wait)
    print(format_table(res))
    if args.out:
        write_json(args.out, res)
        from .charts import deployment_modes_chart

        chart = args.chart or os.path.join(os.path.dirname(os.path.abspath(args.out)), "deployment_modes.png")
        print("wrote", args.out, "and", deployment_modes_chart(res, chart))
    return 0


if __name__ == "__main__":
    sys.exit(main())
