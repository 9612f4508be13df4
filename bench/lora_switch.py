"""How fast LoRAs switch, and what the exact restore costs in memory, at SD v1 full size.

    python -m bench.lora_switch [--rank 16] [--repeats 5] [--scenarios attention,everything]
                                [--out bench/results/lora_switch.json] [--tiny]

Full-size SD v1 UNet and CLIP text encoder, float32, random weights (nothing is downloaded).
Two random LoRAs per scenario are written as kohya .safetensors files and loaded through
models.lora (read, parse, bind to the weights with shape checks), then timed:

    apply      no LoRA -> A            switch     A -> B (same modules, other factors)
    both       B -> A + B at 0.5/1.0   same       A + B again (nothing to do)
    unload     -> no LoRA (every touched weight restored from its exact copy)

Scenarios: "attention" is a rank-r LoRA on the UNet's attention projections (to_q, to_k, to_v,
to_out.0 of attn1 and attn2 in all 16 transformer blocks: 128 weights), the common kind;
"everything" puts one on every Dense and conv kernel of the UNet and text encoder (LoCon on
all convolutions): the worst case. Each switch is the median of `--repeats` runs, each run
after waiting up to `--quiet-wait` s for other processes to leave the cores (the cores they
used anyway are recorded: `other_cores_per_repeat`, `contended`). Memory:
the exact copies kept to restore the base, and the LoRA factors, as the merger counts them,
plus the process RSS before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from . import _common as C

ATTENTION = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
             "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")


def _modules(targets, scenario):
    out = []
    for kind, t in targets.items():
        for module in t.variables:
            if scenario == "everything" or (kind == "unet" and module.endswith(ATTENTION)):
                out.append((kind, module))
    return out


def _write_lora(path, targets, modules, rank, seed):
    import numpy as np

    from models.checkpoints import write_safetensors
    from models.lora.delta import torch_shape

    rng = np.random.default_rng(seed)
    sd = {}
    for kind, module in modules:
        shape = torch_shape(targets[kind].variables[module].shape)
        stem = ("lora_unet_" if kind == "unet" else "lora_te_") + module.replace(".", "_")
        fan_in = int(np.prod(shape[1:]))
        sd[stem + ".lora_down.weight"] = (rng.standard_normal((rank, *shape[1:])) / np.sqrt(fan_in)).astype(np.float32)
        sd[stem + ".lora_up.weight"] = (rng.standard_normal((shape[0], rank, *[1] * (len(shape) - 2))) * 0.01).astype(
            np.float32)
        sd[stem + ".alpha"] = np.array(rank / 2, np.float32)
    write_safetensors(sd, path, dtype="float16")  # as most published LoRAs are
    return path


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(scenario, networks, rank, repeats, folder, quiet_wait=20.0):
    from models.lora.merge import LoraMerger
    from models.lora.targets import NetworkTargets

    targets = {kind: NetworkTargets(kind, net) for kind, net in networks.items()}
    modules = _modules(targets, scenario)
    paths = [_write_lora(os.path.join(folder, f"{scenario}_{n}.safetensors"), targets, modules, rank, seed)
             for seed, n in enumerate("ab")]
    rss_before = C.rss_gb()
    merger = LoraMerger(networks)
    load_s = [_timed(lambda p=p, n=n: merger.load(p, name=n, activate=False)) for p, n in zip(paths, "ab")]
    times = {k: [] for k in ("apply", "switch", "both", "same", "unload")}
    other_cores, memory = [], None
    for _ in range(repeats):
        if quiet_wait:
            C.wait_quiet(max_wait=quiet_wait)  # others' bursts on the shared cores skew the timings
        with C.CpuMeter() as cpu:
            times["apply"].append(_timed(lambda: merger.set([("a", 1.0)])))
            times["switch"].append(_timed(lambda: merger.set([("b", 1.0)])))
            times["both"].append(_timed(lambda: merger.set([("a", 0.5), ("b", 1.0)])))
            times["same"].append(_timed(lambda: merger.set([("a", 0.5), ("b", 1.0)])))
            memory = merger.memory()
            rss_applied = C.rss_gb()
            times["unload"].append(_timed(lambda: merger.set([])))
        other_cores.append(C.r(cpu.other_cores, 2))
    touched_params = sum(_numel(targets[k].variables[m].shape) for k, m in modules)
    result = {
        "scenario": scenario, "rank": rank, "modules": len(modules), "touched_params_m": C.r(touched_params / 1e6, 1),
        "file_mb": [C.r(os.path.getsize(p) / 2**20, 2) for p in paths],
        "load_s": [C.r(s, 3) for s in load_s],
        **{f"{k}_s": C.r(C.median(v), 3) for k, v in times.items()},
        **{f"{k}_s_all": [C.r(x, 3) for x in v] for k, v in times.items()},
        "original_copies_mb": C.r(memory["original_copies_bytes"] / 2**20, 1),
        "lora_tensors_mb": C.r(memory["lora_tensor_bytes"] / 2**20, 1),
        "rss_before_gb": C.r(rss_before), "rss_with_both_applied_gb": C.r(rss_applied),
        "other_cores_per_repeat": other_cores,
        "contended": any(c is not None and c > 0.25 for c in other_cores),
    }
    merger.unload()
    return result


def _numel(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def run(rank=16, repeats=5, scenarios=("attention", "everything"), tiny=False, quiet_wait=20.0):
    C.quiet_tf()
    import keras
    import tensorflow as tf

    from models.text_encoder import TextEncoder
    from models.unet import UNet

    cfg = C.configs(tiny)
    keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    networks = {"unet": UNet(cfg["unet"]), "text_encoder": TextEncoder(cfg["text_encoder"])}
    build_s = time.perf_counter() - t0
    result = {"benchmark": "lora_switch", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tiny": tiny,
              "machine": C.machine_info(), "loadavg_start": C.loadavg(), "tensorflow": tf.__version__,
              "build_s": C.r(build_s, 1), "params_m": C.r(sum(n.count_params() for n in networks.values()) / 1e6, 1),
              "units": "MB = 2**20 bytes, GB = 2**30 bytes; times in seconds, medians", "scenarios": []}
    with tempfile.TemporaryDirectory() as folder:
        for scenario in scenarios:
            res = measure(scenario, networks, rank, repeats, folder, 0.0 if tiny else quiet_wait)
            print(f"[lora_switch] {scenario}: {res['modules']} weights ({res['touched_params_m']} M params), "
                  f"apply {res['apply_s']:.3f} s, switch {res['switch_s']:.3f} s, two at once {res['both_s']:.3f} s, "
                  f"same set {res['same_s']:.4f} s, unload {res['unload_s']:.3f} s; kept for restoring "
                  f"{res['original_copies_mb']} MB + LoRA tensors {res['lora_tensors_mb']} MB"
                  f"{' (CONTENDED: other processes used the cores)' if res['contended'] else ''}", file=sys.stderr,
                  flush=True)
            result["scenarios"].append(res)
    result["loadavg_end"] = C.loadavg()
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.lora_switch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--scenarios", default="attention,everything")
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="seconds to wait before each repetition for other processes to leave the cores")
    p.add_argument("--tiny", action="store_true", help="the tiny test configs (smoke test)")
    p.add_argument("--out", default=None, help="write the JSON result here")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    result = run(args.rank, args.repeats, tuple(s for s in args.scenarios.split(",") if s), args.tiny,
                 args.quiet_wait)
    text = json.dumps(result, indent=2)
    print(text)
    C.save_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
