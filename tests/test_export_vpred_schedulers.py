"""The served SavedModel loop with a v-prediction model for DPM++ 2M, Euler and Euler ancestral.

tests/test_export_families.py covers v-prediction for ddim, dpmpp_2m_karras, euler_karras and
lcm; this exports a tiny random v-prediction model once, with only these three schedulers in
the served graph (each one more traced loop), and checks one batch per scheduler: a guided row
(7.5, negative prompt) and a guidance-off row (1.0, with an unconditional context of garbage the
loop must not read), each equal to its own pipeline run.
"""

import dataclasses
import os

import pytest
import tensorflow as tf

from exports import export
from models.schedulers import NoiseSchedule

from .conftest import random_components
from .test_export import LOOP_BOUND, rel_err
from .test_export_families import STEPS, served_rows_against_the_pipeline

SCHEDULERS = ("dpmpp_2m", "euler", "euler_a")


@pytest.fixture(scope="module")
def vpred(tmp_path_factory):
    from exports import diffusion_graph
    from models.pipeline import StableDiffusionPipeline

    comps = dataclasses.replace(random_components(seed=8), schedule=NoiseSchedule(prediction_type="v_prediction"),
                                name="tiny-vpred")
    pipe = StableDiffusionPipeline(comps)
    out = str(tmp_path_factory.mktemp("vpred") / "export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diffusion_graph, "EXPORTED_SCHEDULERS", SCHEDULERS)
        manifest = export("tiny", out, pipeline=pipe, formats="savedmodel", components="diffusion",
                          quantize="float32", progress=False)
    assert manifest["model"]["prediction_type"] == "v_prediction"
    assert manifest["schedulers"] == list(SCHEDULERS)
    return pipe, tf.saved_model.load(os.path.join(out, "savedmodel", "diffusion", "1")), manifest


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_served_v_prediction_loop_equals_the_pipeline(vpred, scheduler):
    pipe, model, manifest = vpred
    errs, _, plain = served_rows_against_the_pipeline(model, manifest, pipe, scheduler)
    print(f"v-prediction {scheduler}: rel err guided {errs[0]:.2e}, guidance off {errs[1]:.2e}")
    assert max(errs) < LOOP_BOUND
    if scheduler == "euler":  # the prediction type matters: the same UNet read as epsilon runs otherwise
        from models.pipeline import StableDiffusionPipeline

        eps = StableDiffusionPipeline(dataclasses.replace(pipe.components, schedule=NoiseSchedule()))
        other = eps.generate("a cat", seed=4, num_steps=STEPS, guidance_scale=1.0, scheduler=scheduler)
        assert rel_err(other.latents, plain.latents) > 1e-2
