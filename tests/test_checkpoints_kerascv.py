"""KerasCV weight files -> our models, against KerasCV 0.9 itself, at full SD v1 size.

KerasCV's models are built with seeded random weights (no download), saved the way the
published kcv_*.h5 files are (Keras' legacy HDF5 weight format: layer_names / weight_names
attributes, loaded by order), and loaded by our loader. With KERAS_CV_UNET / KERAS_CV_VAE
(KerasCV's tanh GELU and 1e-5 epsilons) the outputs must equal KerasCV's; with SD's own
maths they must stay close. Slow: full-size models on CPU.
"""

import gc
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

keras_cv = pytest.importorskip("keras_cv")

import keras  # noqa: E402

from models.checkpoints import CheckpointMismatchError  # noqa: E402
from models.checkpoints.kerascv_h5 import classify_kerascv_h5, load_kerascv_folder, read_kerascv_h5  # noqa: E402
from models.loading import load_components, load_unet  # noqa: E402
from models.vae import split_moments  # noqa: E402

LATENT = 32  # 256 x 256 images


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _collect():
    """Full-size models are GBs each: drop them before the next one is built."""
    gc.collect()
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def kerascv(tmp_path_factory):
    """KerasCV's files and outputs, made in a subprocess (tests/kerascv_reference.py) so its
    full-size models never share this process's memory with ours."""
    folder = tmp_path_factory.mktemp("kerascv")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": root}
    subprocess.run([sys.executable, "-m", "tests.kerascv_reference", str(folder), str(LATENT)],
                   cwd=root, env=env, check=True)
    with np.load(folder / "reference.npz") as data:
        out = {k: data[k] for k in data.files}
    out["timestep"] = int(out["timestep"])
    out["folder"] = str(folder)
    yield out
    shutil.rmtree(folder, ignore_errors=True)  # 8 GB of full-size weight files


def errors(comps, k):
    mean, _ = split_moments(comps.encoder(k["images"]))
    t = np.array([k["timestep"]], np.float32)
    return {
        "text_encoder": rel_err(comps.text_encoder(k["ids"]), k["text"]),
        "unet": rel_err(comps.unet([k["latents"], t, k["context"]]), k["noise"]),
        "vae_decode": rel_err(comps.decoder(k["z"] / comps.scaling_factor), k["decoded"]),
        "vae_encode_mean": rel_err(np.asarray(mean) * comps.scaling_factor, k["encoded"]),
    }


def test_kerascv_files_reproduce_kerascv_outputs(kerascv):
    comps = load_components(kerascv["folder"])
    assert comps.unet.config.gelu_approximate and comps.unet.config.attention_norm_eps == 1e-5
    errs = errors(comps, kerascv)
    print("KerasCV configs vs KerasCV:", errs)
    del comps
    _collect()
    assert max(errs.values()) <= 1e-4, errs


def test_sd_maths_stays_close_to_kerascv(kerascv):
    """SD's erf GELU and 1e-6 epsilons on the same weights: a small, reported difference."""
    comps = load_kerascv_folder(kerascv["folder"], match_kerascv=False)
    errs = errors(comps, kerascv)
    print("SD configs vs KerasCV:", errs)
    assert errs["text_encoder"] <= 1e-4  # the text encoder has no such difference
    del comps
    _collect()
    assert max(errs.values()) <= 1e-2, errs


def test_keras3_and_nested_files_hold_the_same_weights(kerascv):
    folder = kerascv["folder"]
    for legacy, modern, kind in (("kcv_encoder.h5", "text_encoder_k3.weights.h5", "text_encoder"),
                                 ("kcv_decoder.h5", "decoder_k3.weights.h5", "decoder"),
                                 ("nested_text_encoder.h5", "kcv_encoder.h5", "text_encoder"),
                                 ("kcv_diffusion_model.h5", "diffusion_model_k3.weights.h5", "diffusion_model")):
        k1, a = read_kerascv_h5(os.path.join(folder, legacy))
        k2, b = read_kerascv_h5(os.path.join(folder, modern))
        assert k1 == k2 == kind
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        del a, b
        _collect()


def test_single_diffusion_file_is_a_unet_replacement(kerascv):
    path = os.path.join(kerascv["folder"], "kcv_diffusion_model.h5")
    assert classify_kerascv_h5(path) == "diffusion_model"
    with pytest.raises(ValueError, match="UNet replacement"):
        load_components(path)
    with pytest.raises(CheckpointMismatchError, match="expected"):
        read_kerascv_h5(os.path.join(kerascv["folder"], "kcv_decoder.h5"), ("diffusion_model",))
    unet = load_unet(path)
    t = np.array([kerascv["timestep"]], np.float32)
    err = rel_err(unet([kerascv["latents"], t, kerascv["context"]]), kerascv["noise"])
    del unet
    _collect()
    assert err <= 1e-4


def test_parts_read_only_the_files_they_need(kerascv, monkeypatch):
    """A decoder server's load of a KerasCV folder opens only the decoder and image encoder files."""
    import models.checkpoints.kerascv_h5 as kh5
    from models.checkpoints.assemble import NotLoaded

    opened, real = [], kh5.read_kerascv_h5
    monkeypatch.setattr(kh5, "read_kerascv_h5", lambda path, *a, **k: opened.append(os.path.basename(path)) or real(path, *a, **k))
    comps = load_components(kerascv["folder"], parts=["decoder", "encoder"])
    assert sorted(opened) == ["kcv_decoder.h5", "vae_encoder.h5"], opened
    assert isinstance(comps.unet, NotLoaded) and isinstance(comps.text_encoder, NotLoaded)
    assert rel_err(comps.decoder(kerascv["z"] / comps.scaling_factor), kerascv["decoded"]) <= 1e-4
