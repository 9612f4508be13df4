"""Schemathesis fuzzing against /openapi.json: no 5xx on anything it generates.

Bounded to a few examples per operation (a minute or two on the tiny model). Binary bodies
are drawn from random bytes and from well-formed tensor messages of random shapes and
dtypes, so both the wire decoder and the shape checks behind it are exercised.
"""

from __future__ import annotations

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as st

from tests.webapp_helpers import make_app
from webapp import wire

pytestmark = pytest.mark.slow
NAMES = ["context", "unconditional_context", "image_latents", "mask", "latents", "image", "junk"]
DTYPES = [np.float16, np.float32, np.uint8, np.int32]


@st.composite
def tensor_messages(draw):
    tensors = {}
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=3, unique=True)):
        shape = draw(st.sampled_from([(1, 77, 64), (2, 77, 64), (1, 8, 8, 4), (64, 64), (1, 64, 64, 3),
                                      (3,), (0, 77, 64), (1, 77, 65), (1, 2, 2, 4)]))
        dtype = draw(st.sampled_from(DTYPES))
        fill = draw(st.sampled_from([0.0, 1.0, -3.5, 200.0]))
        tensors[name] = np.full(shape, fill).astype(dtype)
    return wire.encode(tensors)


schemathesis.openapi.media_type(wire.MEDIA_TYPE, st.one_of(st.binary(max_size=256), tensor_messages()))


@pytest.fixture(scope="module")
def fuzz_app():
    from models import load_pipeline
    from webapp.engine import LocalEngine

    engine = LocalEngine(load_pipeline("tiny"), base_name="tiny")
    return make_app(engine, token="", limits=dict(max_steps=3, max_batch=2, max_side=128, timeout_s=60))


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


def test_no_server_errors(fuzz_schema):
    """Positive (schema-valid) and negative (schema-violating) cases for every operation.
    (Driven with Hypothesis directly: schemathesis' pytest plugin does not load under pytest 9.)"""
    from hypothesis import given

    seen = {"cases": 0, "by_status": {}}
    operations = [r.ok() for r in fuzz_schema.get_all_operations()]
    assert len(operations) >= 8
    for op in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
                      database=None)
            def run(case):
                response = case.call()
                seen["cases"] += 1
                seen["by_status"][response.status_code] = seen["by_status"].get(response.status_code, 0) + 1
                assert response.status_code < 500, (case.method, case.formatted_path, response.status_code,
                                                    response.text[:300])
                if response.status_code >= 400 and case.formatted_path.startswith("/api/"):
                    body = response.json()
                    assert "error" in body and body["error"]["message"], body

            try:
                run()
            except Unsatisfiable:  # nothing to make negative (e.g. GET /health has no inputs)
                assert mode == schemathesis.GenerationMode.NEGATIVE
    print(f"\nschemathesis: {seen['cases']} cases over {len(operations)} operations, statuses {seen['by_status']}")
