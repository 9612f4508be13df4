"""Export at full SD v1 size (random weights): size problems only show there.

The 123M-parameter CLIP text encoder (490 MB in float32) and the 512 px VAE decoder (a 64x64
latent) go through the same code as the tiny export: TFLite in every precision and TF.js,
each run in its runtime and compared with Keras. Also the XLA SavedModels (tiny model, slow
because XLA compiles the exported schedulers' loops into one program).
"""

import gc
import os

import numpy as np
import pytest
import tensorflow as tf

from exports import node_runner, savedmodel, tfjs, tflite
from exports.signatures import DecoderModule, TextEncoderModule
from tests.test_export import BOUNDS, LOOP_BOUND, check_outputs, rel_err

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture(scope="module")
def text_encoder():
    import keras

    from models.config import TextEncoderConfig
    from models.text_encoder import TextEncoder

    keras.utils.set_random_seed(0)
    return TextEncoder(TextEncoderConfig())


@pytest.fixture(scope="module")
def decoder():
    import keras

    from models.config import VAEConfig
    from models.vae import VAEDecoder

    keras.utils.set_random_seed(0)
    return VAEDecoder(VAEConfig())


@pytest.fixture(scope="module")
def decoder_reference(decoder):
    """(latents, float64 images, Keras float32 images) for a 64x64 latent, computed once.

    At 512 px TensorFlow's own float32 result is off by 3.7e-4 (max, relative to float64),
    while TFLite with XNNPACK is within 1e-5; comparing TFLite with Keras float32 would measure
    Keras' rounding, not the export. The float64 model is dropped again (memory)."""
    import gc

    import keras

    from models.config import VAEConfig
    from models.vae import VAEDecoder

    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        model = VAEDecoder(VAEConfig())
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
    for a, b in zip(model.weights, decoder.weights):
        assert a.path == b.path
        a.assign(b.numpy().astype("float64"))
    z = np.random.default_rng(0).standard_normal((1, 64, 64, 4)).astype(np.float32)
    # Graph mode frees activations as it goes: half the peak memory of an eager call.
    images = tf.function(lambda x: model(x, training=False))(tf.constant(z / 0.18215, tf.float64)).numpy()
    del model
    gc.collect()
    keras32 = tf.function(lambda x: decoder(x, training=False))(tf.constant(z / 0.18215)).numpy()
    return z, images, keras32


def _available_memory():
    try:
        import psutil
    except ImportError:
        return None
    return psutil.virtual_memory().available


def _convert_and_run(module, precision, inputs, tmp_path, num_threads=2):
    path = str(tmp_path / f"{module.name}.{precision}.tflite")
    with open(path, "wb") as f:
        f.write(tflite.convert(module, precision))
    gc.collect()  # the converter's copies of a few hundred MB of weights
    size = os.path.getsize(path)
    return tflite.run(path, inputs, num_threads=num_threads), size


@pytest.mark.parametrize("precision", ["float32", "float16", "int8"])
def test_full_size_text_encoder_to_tflite(text_encoder, precision, tmp_path):
    from models.tokenizer import default_tokenizer

    ids = default_tokenizer().tokenize(["a photograph of an astronaut riding a horse"])
    expected = {"context": text_encoder(ids, training=False).numpy()}
    got, size = _convert_and_run(TextEncoderModule(text_encoder, batch=1), precision, {"token_ids": ids}, tmp_path)
    print(f"full-size text_encoder tflite {precision}: {size / 1e6:.1f} MB")
    check_outputs(got, expected, precision, f"full-size tflite text_encoder {precision}")
    params = sum(int(np.prod(v.shape)) for v in text_encoder.weights)
    assert size < params * {"float32": 4.1, "float16": 2.1, "int8": 1.1}[precision]


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_full_size_decoder_to_tflite(decoder, decoder_reference, precision, tmp_path):
    from models.pipeline import to_uint8

    z, images, keras32 = decoder_reference
    print(f"full-size decoder keras float32 vs float64: rel err {rel_err(keras32, images):.2e}")
    expected = {"images_float": images, "images": to_uint8(images)}
    module = DecoderModule(decoder, 0.18215, 4, 64, batch=1, size=64)
    got, size = _convert_and_run(module, precision, {"latents": z}, tmp_path)
    print(f"full-size decoder tflite {precision}: {size / 1e6:.1f} MB, output {got['images'].shape}")
    assert got["images"].shape == (1, 512, 512, 3) and got["images"].dtype == np.uint8
    check_outputs(got, expected, precision, f"full-size tflite decoder {precision} (vs float64)")


@pytest.mark.parametrize("component", ["text_encoder", "decoder"])
def test_full_size_to_tfjs_runs_in_node(component, text_encoder, decoder, tmp_path):
    """Converted from the dynamic-shape SavedModel; the decoder runs on a 4x4 latent in Node
    (the pure-JS backend would need many minutes at 64x64; the graph is the same)."""
    tfjs.converter_path()
    if component == "text_encoder":
        module = TextEncoderModule(text_encoder)
        from models.tokenizer import default_tokenizer

        inputs = {"token_ids": default_tokenizer().tokenize(["a photograph of an astronaut"])}
        expected = {"context": text_encoder(inputs["token_ids"], training=False).numpy()}
    else:
        module = DecoderModule(decoder, 0.18215, 4, 64)
        inputs = {"latents": np.random.default_rng(1).standard_normal((1, 4, 4, 4)).astype(np.float32)}
        expected = {"images_float": decoder(inputs["latents"] / 0.18215, training=False).numpy()}
    # tensorflowjs_converter peaks at about 20x the weights (9.8 GB RSS for the 490 MB text
    # encoder: graph freezing and grappler copy the GraphDef many times).
    weights = sum(int(np.prod(v.shape)) * 4 for v in (text_encoder if component == "text_encoder" else decoder).weights)
    need = 20 * weights + 2**30
    available = _available_memory()
    if available is not None and available < need:
        pytest.skip(f"tensorflowjs_converter needs ~{need / 2**30:.0f} GB free memory, {available / 2**30:.1f} GB available")
    sm = str(tmp_path / "sm")
    savedmodel.save(module, sm, component)
    out = str(tmp_path / "tfjs")
    tfjs.convert(sm, out, "float32")
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"full-size {component} tfjs float32: {size / 1e6:.1f} MB in {len(os.listdir(out)) - 1} shards")
    reason = node_runner.unavailable_reason()
    if reason:
        pytest.skip(reason)
    got, info = node_runner.run(out, inputs)
    print(f"full-size {component} tfjs run: {info['run_ms']} ms")
    check_outputs(got, expected, "float32", f"full-size tfjs {component} float32")


# XLA compiles every exported scheduler's loop into one program, twice (export, then load):
# three schedulers with different state (none, the previous step's output, per-row noise) cover
# the export's XLA path at under half the compile time; every scheduler's padded plan under XLA
# is checked in tests/test_schedulers.py, and every served loop in tests/test_export*.py.
XLA_SCHEDULERS = ("ddim", "dpmpp_2m", "euler_a")


def test_xla_savedmodels_match_and_are_jit_compiled(tmp_path, monkeypatch):
    from tensorflow.core.protobuf import saved_model_pb2

    from exports import diffusion_graph, export
    from models import load_pipeline

    monkeypatch.setattr(diffusion_graph, "EXPORTED_SCHEDULERS", XLA_SCHEDULERS)
    pipe = load_pipeline("tiny")
    manifest = export("tiny", str(tmp_path / "x"), formats="savedmodel", components="diffusion,decoder",
                      xla=True, xla_batch=2, pipeline=pipe, progress=False)
    assert manifest["schedulers"] == list(XLA_SCHEDULERS)
    assert manifest["serving"]["models"]["diffusion_xla"] == "savedmodel/diffusion_xla"
    root = tmp_path / "x" / "savedmodel"
    proto = saved_model_pb2.SavedModel.FromString((root / "diffusion_xla" / "1" / "saved_model.pb").read_bytes())
    jit = [f for f in proto.meta_graphs[0].graph_def.library.function if f.attr["_XlaMustCompile"].b]
    assert jit, "no jit-compiled function in the XLA SavedModel"

    fn = tf.saved_model.load(str(root / "diffusion_xla" / "1")).signatures["serving_default"]
    spec = {s["name"]: s["shape"] for s in
            next(a for a in manifest["artifacts"] if a["path"].endswith("diffusion_xla/1"))["signatures"]
            ["serving_default"]["inputs"]}
    assert spec["seed"] == [2]  # fixed batch
    prompts = ["a cat", "a dog"]
    for k, scheduler in enumerate(manifest["schedulers"]):
        got = fn(context=tf.constant(pipe.encode_text(prompts)), unconditional_context=tf.constant(pipe.encode_text(["", ""])),
                 seed=tf.constant([5, 9], tf.int64), guidance_scale=tf.fill([2], 7.5), num_steps=tf.constant([3, 4]),
                 scheduler=tf.fill([2], k))["latents"].numpy()
        for row, prompt, seed, steps in zip(got, prompts, (5, 9), (3, 4)):
            ref = pipe.generate(prompt, seed=seed, num_steps=steps, scheduler=scheduler).latents[0]
            err = rel_err(row, ref)
            print(f"xla diffusion {scheduler}: rel err {err:.2e}")
            assert err < LOOP_BOUND
    dec = tf.saved_model.load(str(root / "decoder_xla" / "1")).signatures["serving_default"]
    z = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype(np.float32)
    assert rel_err(dec(latents=tf.constant(z))["images_float"], pipe.decode_latents(z)) < BOUNDS["float32"]
