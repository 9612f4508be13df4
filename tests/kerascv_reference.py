"""Writes KerasCV 0.9's SD v1 models (seeded random weights) as weight files, plus their outputs.

Run as `python -m tests.kerascv_reference FOLDER LATENT`; test_checkpoints_kerascv.py calls it in
a subprocess so the full-size KerasCV models (3.4 GB for the diffusion model alone) are freed by
the process exiting, not left in the test process's allocator. Files written:

    kcv_encoder.h5, kcv_diffusion_model.h5, kcv_decoder.h5, vae_encoder.h5   legacy HDF5 weights,
        as the published files (layer_names/weight_names attributes, loaded by order)
    text_encoder_k3.weights.h5, decoder_k3.weights.h5, diffusion_model_k3.weights.h5
        the same weights in Keras 3's format (layers/<class>/.../vars/N)
    nested_text_encoder.h5   the text encoder as one layer of an outer model (trainer-style save)
    reference.npz            inputs and KerasCV's outputs
"""

import gc
import os
import sys

import numpy as np


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
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def main(folder, latent):
    import keras
    from keras_cv.src.models.stable_diffusion.decoder import Decoder
    from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModel
    from keras_cv.src.models.stable_diffusion.image_encoder import ImageEncoder
    from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusionBase
    from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoder

    from models.tokenizer import default_tokenizer

    path = lambda name: os.path.join(folder, name)  # noqa: E731
    rng = np.random.default_rng(0)
    out = {
        "ids": default_tokenizer().tokenize(["a photograph of an astronaut riding a horse"]),
        "latents": rng.standard_normal((1, latent, latent, 4)).astype(np.float32),
        "context": rng.standard_normal((1, 77, 768)).astype(np.float32),
        "timestep": np.array(601),
        "z": rng.standard_normal((1, latent, latent, 4)).astype(np.float32),
        "images": rng.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32),
    }
    keras.utils.set_random_seed(0)

    model = TextEncoder(77, download_weights=False)
    randomize(model, 1)
    save_legacy_h5(model, path("kcv_encoder.h5"))
    model.save_weights(path("text_encoder_k3.weights.h5"))
    inputs = [keras.Input((77,), dtype="int32"), keras.Input((77,), dtype="int32")]
    save_legacy_h5(keras.Model(inputs, model(inputs), name="trainer"), path("nested_text_encoder.h5"))
    positions = np.arange(77, dtype=np.int32)[None]
    out["text"] = model.predict_on_batch({"tokens": out["ids"], "positions": positions})
    del model
    gc.collect()

    model = DiffusionModel(latent * 8, latent * 8, 77, download_weights=False)
    randomize(model, 2)
    save_legacy_h5(model, path("kcv_diffusion_model.h5"))
    model.save_weights(path("diffusion_model_k3.weights.h5"))
    # KerasCV's diffusion model takes the sinusoidal embedding; computed by KerasCV's own code.
    t_emb = StableDiffusionBase._get_timestep_embedding(None, int(out["timestep"]), 1)
    out["noise"] = model.predict_on_batch([out["latents"], t_emb, out["context"]])
    del model
    gc.collect()

    model = Decoder(latent * 8, latent * 8, download_weights=False)
    randomize(model, 3)
    save_legacy_h5(model, path("kcv_decoder.h5"))
    model.save_weights(path("decoder_k3.weights.h5"))
    out["decoded"] = model.predict_on_batch(out["z"])
    del model

    model = ImageEncoder(download_weights=False)
    randomize(model, 4)
    save_legacy_h5(model, path("vae_encoder.h5"))
    out["encoded"] = model.predict_on_batch(out["images"])  # posterior mean * 0.18215
    np.savez(path("reference.npz"), **{k: np.asarray(v) for k, v in out.items()})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
