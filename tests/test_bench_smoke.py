"""Smoke tests of the CPU benchmarks (bench/) at the tiny configs: code paths and JSON fields only.

Timings are never asserted: they depend on whatever else the machine is doing.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_FIELDS = {"variant", "build_s", "params_m", "first_call_s", "ms_per_step", "ms_per_step_all",
               "unet_call_ms", "peak_rss_gb", "rss_after_build_gb", "loadavg_start", "ms_per_step_cpu_per_run",
               "ms_per_step_cpu", "ms_per_step_min", "contended"}


def _check_step_result(res, variant, repeats):
    assert "error" not in res, res.get("error")
    assert STEP_FIELDS <= set(res), STEP_FIELDS - set(res)
    assert res["variant"] == variant
    assert res["ms_per_step"] > 0 and res["peak_rss_gb"] > 0
    # Tiny runs do not wait for a quiet machine, so they make exactly `repeats` runs.
    assert len(res["ms_per_step_all"]) == repeats == len(res["ms_per_step_cpu_per_run"])
    assert 0 <= res["ms_per_step_clean_runs"] <= repeats
    assert res["output_finite"] is True


def test_unet_step_ours_tiny():
    from bench.unet_step import measure

    res = measure("ours", 64, steps=2, repeats=2, tiny=True)
    _check_step_result(res, "ours", 2)
    assert res["jit_compile"] is False and res["num_steps_input"] == "tensor"


def test_unet_step_diffusers_tiny():
    pytest.importorskip("diffusers")
    from bench.unet_step import measure

    res = measure("diffusers", 64, steps=2, repeats=1, tiny=True)
    _check_step_result(res, "diffusers", 1)
    assert res["torch_threads"] >= 1


@pytest.mark.parametrize("variant", ["openvino", "openvino_ours", "ours_openvino_bf16"])
def test_unet_step_openvino_tiny(variant):
    pytest.importorskip("openvino")
    pytest.importorskip("diffusers")
    from bench.unet_step import measure

    res = measure(variant, 64, steps=2, repeats=1, tiny=True)
    _check_step_result(res, variant, 1)
    if variant == "ours_openvino_bf16":  # the pipeline's runtime="openvino" on a bfloat16 UNet
        assert res["inference_precision"] == "bf16" and res["dtype_policy"] == "bfloat16"
    else:
        assert res["inference_precision"] == "f32" and res["model"]


def test_unet_step_calibration_and_shares_of_peak():
    pytest.importorskip("diffusers")
    from bench.unet_step import format_table, measure, summarize

    cal = measure("calibrate", 64, steps=1, repeats=1, tiny=True)
    assert cal["gflop_per_step"] > 0 and cal["peak_gflops"]["f32"] > 0 and cal["peak_gflops"]["bf16"] > 0
    meta = {"size": 64, "latent": 8, "steps": 1, "repeats": 1, "tiny": True, "loadavg_start": [0, 0, 0],
            "loadavg_end": [0, 0, 0], "machine": {"cpu_count": 2, "cpu_model": "x"}}
    cal = {**cal, "gflop_per_step": 100.0, "peak_gflops": {"f32": 400.0, "bf16": 2000.0}}
    s = summarize({"calibrate": cal, "ours": {"ms_per_step": 500.0}, "ours_bf16": {"ms_per_step": 250.0}}, meta)
    assert "calibrate" not in s["results"] and s["calibration"]["gflop_per_step"] == 100.0
    assert (s["results"]["ours"]["gflops"], s["results"]["ours"]["share_of_matmul_peak"]) == (200.0, 0.5)
    assert (s["results"]["ours_bf16"]["gflops"], s["results"]["ours_bf16"]["share_of_matmul_peak"]) == (400.0, 0.2)
    assert "matmul peak" in format_table(s)


def test_unet_step_kerascv_refuses_tiny():
    from bench.unet_step import measure

    with pytest.raises(ValueError, match="fixed full-size"):
        measure("kerascv", 64, steps=1, repeats=1, tiny=True)


def test_summary_ratios_and_table():
    from bench.unet_step import format_table, summarize

    meta = {"size": 256, "latent": 32, "steps": 3, "repeats": 3, "tiny": False, "loadavg_start": [0, 0, 0],
            "loadavg_end": [0, 0, 0], "machine": {"cpu_count": 2, "cpu_model": "x"}}
    res = {"ours": {"ms_per_step": 80.0}, "ours_xla": {"ms_per_step": 60.0},
           "kerascv": {"ms_per_step": 100.0}, "diffusers": {"error": "boom"}}
    s = summarize(res, meta)
    assert s["ratios"] == {"ours_over_kerascv": 0.8, "ours_xla_over_kerascv": 0.6}
    assert s["targets"]["ours_over_kerascv"] == {"variant": "ours", "ratio": 0.8, "target": 0.8, "met": True,
                                                 "best_ours": "ours_xla", "best_ratio": 0.6}
    assert "ours_over_diffusers" not in s["targets"]
    table = format_table(s)
    assert "ERROR: boom" in table and "MET" in table


def test_merge_rounds_pools_repetitions():
    from bench.unet_step import merge_rounds

    quiet, busy = {"own_cores": 2.0, "other_cores": 0.0}, {"own_cores": 1.0, "other_cores": 1.0}
    r1 = {"variant": "ours", "ms_per_step_all": [100.0, 300.0], "ms_per_step_cpu_per_run": [quiet, busy],
          "unet_call_ms_all": [50.0], "unet_call_ms_cpu_per_run": [quiet], "build_s": 1.0,
          "first_call_s": 2.0, "peak_rss_gb": 4.0}
    r2 = {**r1, "ms_per_step_all": [120.0, 90.0], "ms_per_step_cpu_per_run": [quiet, quiet], "peak_rss_gb": 4.5}
    m = merge_rounds([r1, {"variant": "ours", "error": "killed"}, r2])
    assert m["ms_per_step"] == 100.0 and m["ms_per_step_min"] == 90.0  # median of the 3 clean runs
    assert m["ms_per_step_clean_runs"] == 3 and len(m["ms_per_step_all"]) == 4
    assert m["ms_per_step_cpu"] == 220.0  # CPU ms per run: 200, 300, 240, 180
    assert m["peak_rss_gb"] == 4.5 and m["rounds"] == 3 and m["round_errors"] == ["killed"]
    assert m["contended"] is False


@pytest.mark.slow
def test_unet_step_cli_tiny(tmp_path):
    """The parent/child orchestration: one subprocess per variant, one JSON."""
    out = tmp_path / "unet_step.json"
    variants = "ours,ours_xla,kerascv" + (",diffusers" if _has("diffusers") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.unet_step", "--tiny", "--steps", "1", "--repeats", "1",
         "--variants", variants, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["tiny"] is True and data["size"] == 64 and data["latent"] == 8
    assert {"loadavg_start", "loadavg_end", "machine", "results", "ratios", "targets"} <= set(data)
    assert "skipped" in data["results"]["kerascv"]
    for v in variants.split(","):
        if v != "kerascv":
            _check_step_result(data["results"][v], v, 1)
    assert data["results"]["ours_xla"]["jit_compile"] is True
    if "diffusers" in variants:
        assert set(data["ratios"]) == {"ours_over_diffusers", "ours_xla_over_diffusers"}
        assert data["targets"]["ours_over_diffusers"]["target"] == 1.0
    assert "ms/step" in proc.stdout


def test_pipeline_memory_tiny(tmp_path, capsys):
    from bench.pipeline_memory import main

    out = tmp_path / "pm.json"
    assert main(["--tiny", "--steps", "2", "--repeats", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["benchmark"] == "pipeline_memory" and res["tiny"] is True and res["size"] == 64
    assert {"peak_rss_gb", "rss_after_build_gb", "build_s", "generate_calls", "decode_only", "params_m",
            "weights_gb", "target_gb", "target_met", "loadavg_start", "loadavg_end"} <= set(res)
    assert res["image_shape"] == [1, 64, 64, 3] and res["image_finite"] is True
    assert len(res["generate_calls"]) == 1 and res["generate_calls"][0]["first"] is True
    assert res["peak_rss_gb"] > 0 and set(res["params_m"]) == {"text_encoder", "unet", "decoder", "encoder"}
    assert "PEAK RSS" in capsys.readouterr().out


def test_pipeline_memory_from_a_checkpoint(tmp_path, capsys):
    from bench.pipeline_memory import main
    from models.checkpoints.diffusers_folder import save_diffusers_folder

    from .conftest import random_components

    save_diffusers_folder(random_components(), tmp_path / "model", dtype="float32")
    out = tmp_path / "pm.json"
    assert main(["--checkpoint", str(tmp_path / "model"), "--size", "64", "--steps", "1", "--repeats", "1",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["checkpoint"] == str(tmp_path / "model") and res["image_shape"] == [1, 64, 64, 3]
    assert 0 < res["peak_rss_after_load_gb"] <= res["peak_rss_gb"]
    assert "loaded " in capsys.readouterr().out


def test_component_memory_tiny(tmp_path, capsys):
    from bench.component_memory import main

    out = tmp_path / "cm.json"
    assert main(["--model", "tiny", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    networks = {s["role"]: s["networks"] for s in res["servers"]}
    assert networks == {"all": ["text_encoder", "unet", "decoder", "encoder"], "text_encoder": ["text_encoder"],
                        "diffusion": ["unet"], "decoder": ["decoder", "encoder"]}
    params = {s["role"]: s["params_m"] for s in res["servers"]}
    assert params["all"] == pytest.approx(params["text_encoder"] + params["diffusion"] + params["decoder"], abs=0.2)
    assert all(s["peak_rss_gb"] > 0 for s in res["servers"]) and res["split_total_rss_gb"] > 0
    assert "three component servers together" in capsys.readouterr().out


def _has(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_conv_kernels_small_shapes():
    from bench import conv_kernels

    res = conv_kernels.run(repeats=1, shapes=[(4, 16, 8), (8, 8, 16)])
    assert [(r["side"], r["c_in"], r["c_out"]) for r in res["rows"]] == [(4, 16, 8), (8, 8, 16)]
    for row in res["rows"]:
        assert row["max_rel_diff_b1"] < 1e-5 and row["max_rel_diff_b2"] < 1e-5
        assert row["conv_ms_b2"] > 0 and row["matmul_ms_b2"] > 0 and row["speedup_b1"] > 0
    assert "4x4" in conv_kernels.format_row(res["rows"][0])


def test_generic_graphs_tiny(tmp_path):
    from bench.generic_graphs import main

    out = tmp_path / "gg.json"
    assert main(["--tiny", "--size", "64", "--rounds", "1", "--repeats", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["runs"]) == {"per_shape", "generic"} and res["summary"]["generic_vs_per_shape"] > 0
    assert all(run["first_call_s"] > 0 and len(run["step_ms"]) == 1 for runs in res["runs"].values() for run in runs)
    assert res["runs"]["generic"][0]["plan_s"] > 0 and "warm_up" not in res
