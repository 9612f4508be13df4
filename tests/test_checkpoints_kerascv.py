"""KerasCV weight files -> our models, against KerasCV 0.9 itself, at full SD v1 size.

KerasCV's models are built with seeded random weights (no download), saved the way the
published kcv_*.h5 files are (Keras' legacy HDF5 weight format: layer_names / weight_names
attributes, loaded by order), and loaded by our loader. With KERAS_CV_UNET / KERAS_CV_VAE
(KerasCV's tanh GELU and 1e-5 epsilons) the outputs must equal KerasCV's; with SD's own
maths they must stay close. Slow: full-size models on CPU.
"""

import gc
import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow

keras_cv = pytest.importorskip("keras_cv")

import h5py  # noqa: E402
import keras  # noqa: E402
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

from models.checkpoints import CheckpointMismatchError  # noqa: E402
from models.checkpoints.kerascv_h5 import classify_kerascv_h5, load_kerascv_folder, read_kerascv_h5  # noqa: E402
from models.loading import load_components, load_unet  # noqa: E402
from models.vae import split_moments  # noqa: E402

LATENT = 32  # 256 x 256 images


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def randomize(model, seed):
    """Every weight random (norm scales and biases too) so a misplaced tensor shows."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape, name = tuple(w.shape), w.path.split("/")[-1]
        noise = rng.standard_normal(shape, dtype=np.float32)
        if name == "gamma":
            value = 1 + 0.1 * noise
        elif name in ("beta", "bias"):
            value = 0.1 * noise
        elif name == "embeddings":
            value = 0.5 * noise
        else:
            value = noise / np.float32(np.sqrt(np.prod(shape[:-1])))
        w.assign(value)


def save_legacy_h5(model, path):
    """What `model.save_weights("x.h5")` wrote in the Keras 2 era (the published files)."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def _collect():
    """Full-size models are GBs each: drop them before the next one is built."""
    gc.collect()
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def kerascv(tmp_path_factory):
    """Saves the four KerasCV models and records their outputs; only files stay in memory."""
    from keras_cv.src.models.stable_diffusion.decoder import Decoder
    from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModel
    from keras_cv.src.models.stable_diffusion.image_encoder import ImageEncoder
    from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusionBase
    from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoder

    from models.tokenizer import default_tokenizer

    folder = tmp_path_factory.mktemp("kerascv")
    rng = np.random.default_rng(0)
    out = {"folder": str(folder)}
    out["ids"] = default_tokenizer().tokenize(["a photograph of an astronaut riding a horse"])
    out["latents"] = rng.standard_normal((1, LATENT, LATENT, 4)).astype(np.float32)
    out["context"] = rng.standard_normal((1, 77, 768)).astype(np.float32)
    out["timestep"] = 601
    out["z"] = rng.standard_normal((1, LATENT, LATENT, 4)).astype(np.float32)
    out["images"] = rng.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    keras.utils.set_random_seed(0)

    model = TextEncoder(77, download_weights=False)
    randomize(model, 1)
    save_legacy_h5(model, folder / "kcv_encoder.h5")
    model.save_weights(str(folder / "text_encoder_k3.weights.h5"))
    inputs = [keras.Input((77,), dtype="int32"), keras.Input((77,), dtype="int32")]
    trainer = keras.Model(inputs, model(inputs), name="trainer")  # a model nested in another
    save_legacy_h5(trainer, folder / "nested_text_encoder.h5")
    positions = np.arange(77, dtype=np.int32)[None]
    out["text"] = model.predict_on_batch({"tokens": out["ids"], "positions": positions})
    del model, trainer
    _collect()

    model = DiffusionModel(LATENT * 8, LATENT * 8, 77, download_weights=False)
    randomize(model, 2)
    save_legacy_h5(model, folder / "kcv_diffusion_model.h5")
    model.save_weights(str(folder / "diffusion_model_k3.weights.h5"))
    t_emb = StableDiffusionBase._get_timestep_embedding(None, out["timestep"], 1)
    out["noise"] = model.predict_on_batch([out["latents"], t_emb, out["context"]])
    del model
    _collect()

    model = Decoder(LATENT * 8, LATENT * 8, download_weights=False)
    randomize(model, 3)
    save_legacy_h5(model, folder / "kcv_decoder.h5")
    model.save_weights(str(folder / "decoder_k3.weights.h5"))
    out["decoded"] = model.predict_on_batch(out["z"])
    del model
    _collect()

    model = ImageEncoder(download_weights=False)
    randomize(model, 4)
    save_legacy_h5(model, folder / "vae_encoder.h5")
    out["encoded"] = model.predict_on_batch(out["images"])  # mean * 0.18215
    del model
    _collect()
    return out


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
    assert max(errs.values()) <= 5e-2, errs


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
