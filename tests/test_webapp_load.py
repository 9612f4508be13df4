"""A smoke version of bench/load_test.py: a few clients for a few seconds, no errors."""

import pytest

from tests.webapp_helpers import free_port

pytestmark = pytest.mark.slow


def test_load_smoke():
    import asyncio

    from bench.load_test import parse_args, run

    report = asyncio.run(run(parse_args(["--clients", "16", "--seconds", "8", "--queue-size", "4",
                                         "--port", str(free_port()), "--steps", "3", "--check-images", "3",
                                         "--no-warm-up"])))  # the smoke test: errors, not speed
    assert report["error_count"] == 0, report["errors"]
    assert report["requests_ok"] > 10
    assert report["rejected_503"] > 0  # 16 clients > 8 running (batched) + 4 waiting: some were turned away
    assert report["server_queue_after"]["admitted"] == 0
    assert report["batching"]["batch_requests"] == 8 and report["batching"]["unet_calls"] > 0
    assert report["images"]["replayed"] == 3 and report["images"]["max_pixel_difference"] <= 1
