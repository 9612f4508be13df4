"""Smoke tests of bench/deployment_modes.py and bench/tfjs_browser.py (tiny runs: code paths,
JSON fields and charts only; timings are never asserted)."""

import json
import os
import shutil

import pytest

from bench import charts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFJS_MODULES = os.path.join(ROOT, "edge", "web", "node_modules", "@tensorflow", "tfjs", "dist", "tf.min.js")
MODE_FIELDS = {"label", "processes", "latency_s", "latency_s_all", "server_cpu_s", "server_cpu_by_process_s",
               "client_cpu_s", "client_request_bytes", "client_response_bytes", "client_bytes", "total_bytes",
               "max_pixel_diff_vs_all_in_one", "image_shape"}


def _fake_modes():
    rows = {}
    for i, m in enumerate(("all_in_one", "three_endpoints", "hybrid")):
        rows[m] = {"label": m, "processes": ["x"], "latency_s": 0.2 + i / 100, "latency_s_all": [0.2],
                   "server_cpu_s": 0.3, "server_cpu_by_process_s": {"x": 0.3}, "client_cpu_s": 0.01,
                   "client_request_bytes": 72, "client_response_bytes": 5000, "client_bytes": 5072,
                   "total_bytes": 5072, "max_pixel_diff_vs_all_in_one": 0, "image_shape": [64, 64, 3]}
    rows["three_endpoints"].update(internal_bytes=33000, internal_request_bytes=10000, internal_response_bytes=23000)
    return {"steps": 20, "seed": 42, "repeats": 1, "tensor_dtype": "float16", "results": rows}


def test_deployment_modes_table_and_chart(tmp_path):
    from bench.deployment_modes import format_table

    res = _fake_modes()
    assert "three_endpoints" in format_table(res) and "33000" in format_table(res)
    png = charts.deployment_modes_chart(res, tmp_path / "d.png")
    assert os.path.getsize(png) > 1000


@pytest.mark.slow
def test_deployment_modes_tiny(tmp_path):
    """Five real server processes on loopback, a TFLite export, 2 steps, one timed run per mode."""
    pytest.importorskip("ai_edge_litert")
    from bench.deployment_modes import main

    out = tmp_path / "deployment_modes.json"
    assert main(["--steps", "2", "--repeats", "1", "--warmup", "1", "--exports", str(tmp_path / "export"),
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["benchmark"] == "deployment_modes" and res["steps"] == 2 and res["export_built"] is True
    assert set(res["results"]) == {"all_in_one", "three_endpoints", "hybrid"}
    for m, row in res["results"].items():
        assert MODE_FIELDS <= set(row), MODE_FIELDS - set(row)
        assert row["latency_s"] > 0 and row["server_cpu_s"] >= 0 and row["image_shape"] == [64, 64, 3]
        assert row["max_pixel_diff_vs_all_in_one"] <= 2, (m, row)  # float16 tensors: rounding only
    two, three = res["results"]["three_endpoints"], res["results"]["hybrid"]
    assert set(two["server_cpu_by_process_s"]) == {"frontend", "text_encoder", "diffusion", "decoder"}
    assert two["internal_bytes"] > 0 and "internal_bytes" not in three
    assert three["client_request_bytes"] == 9936  # 77 x 64 float16 context, as bench.wire_bytes computes
    assert (tmp_path / "deployment_modes.png").exists()


def _fake_tfjs():
    rows = [{"component": c, "precision": p, "backend_requested": b, "backend": "webgl" if b == "default" else b,
             "ms": ms, "runs": 3}
            for c in ("text_encoder", "decoder") for p in ("float32", "float16")
            for b, ms in (("default", 30.0), ("wasm", 9.0), ("cpu", 40.0))]
    backends = {"default": {"backend": "webgl"}, "webgl": {"backend": "webgl", "skipped": "same"},
                "wasm": {"backend": "wasm"}, "cpu": {"backend": "cpu"}}
    return {"browser": "chromium x", "backends": backends, "rows": rows}


def test_tfjs_browser_table_and_charts(tmp_path):
    from bench.tfjs_browser import format_table

    res = _fake_tfjs()
    table = format_table(res)
    assert "wasm" in table and "webgl" not in table.splitlines()[1]  # skipped backends get no column
    export_latency = {"rows": [{"component": "decoder", "format": "tflite", "precision": "float32", "ms": 7.5},
                               {"component": "decoder", "format": "keras", "precision": "float32", "ms": 0.0},
                               {"component": "decoder", "format": "savedmodel", "precision": "float32", "ms": 9.0}]}
    assert os.path.getsize(charts.tfjs_browser_chart(res, tmp_path / "t.png")) > 1000
    assert os.path.getsize(charts.edge_latency_chart(res, tmp_path / "e.png", export_latency)) > 1000


@pytest.mark.slow
def test_tfjs_browser_tiny(tmp_path):
    """A TF.js text encoder exported here, timed in headless Chromium on the default and cpu backends."""
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not os.path.exists("/usr/bin/chromium") or not os.path.exists(TFJS_MODULES):
        pytest.skip("needs Debian's chromium and edge/web/node_modules (scripts/setup.sh)")
    if not (os.environ.get("SD_TFJS_CONVERTER") or os.path.exists(os.path.join(ROOT, ".venv-tfjs", "bin",
                                                                                "tensorflowjs_converter"))
            or shutil.which("tensorflowjs_converter")):
        pytest.skip("the TF.js converter is not installed (.venv-tfjs)")
    from bench.tfjs_browser import main

    out = tmp_path / "tfjs_browser.json"
    assert main(["--exports", str(tmp_path / "export"), "--components", "text_encoder", "--precisions", "float32",
                 "--backends", "default,cpu", "--warmup", "1", "--repeats", "3", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["benchmark"] == "tfjs_browser" and res["export_built"] is True
    assert res["backends"]["default"]["backend"] in ("webgpu", "webgl", "wasm", "cpu")
    ran = [r for r in res["rows"] if r["component"] == "text_encoder" and r["precision"] == "float32"]
    assert ran and all(r["ms"] > 0 and r["runs"] >= 3 for r in ran)
    assert {r["backend_requested"] for r in ran} <= {"default", "cpu"}
    assert (tmp_path / "tfjs_browser.png").exists() and (tmp_path / "edge_latency.png").exists()
