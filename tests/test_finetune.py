"""Fine-tuning: exact resume, EMA, precisions, dataset problems, and the output's use."""

import hashlib

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import random_components
from training.ema import EMA
from training.synthetic import write_dataset
from training.trainer import DiffusionTrainer, EncodedDataset, TrainConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from training.datasets import load_dataset, load_images

    folder = tmp_path_factory.mktemp("data")
    write_dataset(folder, 12, seed=0)
    examples, bad = load_dataset(folder)
    components = random_components(seed=3)
    data = EncodedDataset(components, load_images(examples, 64), [e.caption for e in examples], log=lambda *a: None)
    return components, data, folder


def _config(**kw):
    base = dict(batch_size=4, steps=4, learning_rate=1e-3, ema_decay=0.9, checkpoint_every=0, sample_every=0,
                seed=7)
    return TrainConfig(**{**base, **kw})


def _weights(trainer):
    return [v.numpy() for v in trainer.unet.trainable_variables], trainer.ema.values()


def test_resume_gives_the_same_weights_as_training_straight(setup, tmp_path):
    """Train 4 steps straight (checkpointing at 2); a new trainer resumes the step-2 copy."""
    import shutil

    components, data, _ = setup
    straight = DiffusionTrainer(components, data, _config(steps=4, checkpoint_every=2), tmp_path / "a",
                                log=lambda *a: None)
    straight.train()
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-0000002", tmp_path / "b" / "checkpoints" / "step-0000002")
    resumed = DiffusionTrainer(components, data, _config(steps=4), tmp_path / "b", log=lambda *a: None)
    resumed.train(resume=True)
    assert resumed.step == 4
    (w1, e1), (w2, e2) = _weights(straight), _weights(resumed)
    for a, b in zip(w1 + e1, w2 + e2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # and training actually changed something
    base = [v.numpy() for v in components.unet.trainable_variables]
    assert max(np.abs(a - b).max() for a, b in zip(w1, base)) > 1e-4
    lines = (tmp_path / "a" / "loss.csv").read_text().splitlines()
    assert [ln.split(",")[0] for ln in lines[1:]] == ["1", "2", "3", "4"]
    assert (tmp_path / "a" / "loss.png").exists()


def test_ema_uses_the_requested_decay_after_warmup():
    v = tf.Variable([0.0])
    ema = EMA([v], decay=0.99)
    assert float(ema.effective_decay(0)) == pytest.approx(0.1)
    assert float(ema.effective_decay(10**6)) == pytest.approx(0.99)
    expected = 0.0
    for step in range(2000):
        v.assign([1.0 if step % 2 else -1.0])
        d = min(0.99, (1 + step) / (10 + step))
        expected = expected - (1 - d) * (expected - float(v.numpy()[0]))
        ema.update([v], step)
    assert float(ema.shadow[0].numpy()[0]) == pytest.approx(expected, abs=1e-5)
    assert ema.decay == 0.99  # never overwritten


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_trains(setup, tmp_path, precision):
    components, data, _ = setup
    trainer = DiffusionTrainer(components, data, _config(steps=2, mixed_precision=precision), tmp_path,
                               log=lambda *a: None)
    trainer.train()
    assert all(np.isfinite(w).all() for w in trainer.ema.values())


def test_mirrored_strategy_runs_on_one_device(setup, tmp_path):
    components, data, _ = setup
    trainer = DiffusionTrainer(components, data, _config(steps=1, strategy="mirrored"), tmp_path,
                               log=lambda *a: None)
    trainer.train()
    assert trainer.step == 1


def test_bad_config_is_refused(setup, tmp_path):
    components, data, _ = setup
    for bad in (dict(mixed_precision="fp8"), dict(steps=None), dict(ema_decay=1.5), dict(strategy="tpu")):
        with pytest.raises(ValueError):
            DiffusionTrainer(components, data, _config(**bad), tmp_path, log=lambda *a: None)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_finetune_cli_output_swaps_in_and_leaves_edge_parts_alone(setup, tmp_path, capsys):
    """End to end: a base model folder, a dataset with a bad row, the CLI, then the pipeline."""
    from models.checkpoints.diffusers_folder import save_diffusers_folder
    from models import load_pipeline
    from training import finetune

    components, _, data_dir = setup
    base = tmp_path / "base"
    save_diffusers_folder(components, base, dtype="float32")
    before = {p: _sha(p) for p in (base / "text_encoder").iterdir()} | {p: _sha(p) for p in (base / "vae").iterdir()}
    with open(data_dir / "metadata.csv", "a") as f:
        f.write("missing.png,a red circle on a blue background\n")
    out = tmp_path / "ft"
    code = finetune.main(["--model", str(base), "--data", str(data_dir), "--out", str(out), "--steps", "2",
                          "--batch-size", "2", "--sample-every", "2", "--checkpoint-every", "1"])
    err = capsys.readouterr().err
    assert code == 0
    assert "line 14" in err and "missing.png" in err
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert list((out / "samples").glob("*.png"))
    after = {p: _sha(p) for p in before}
    assert before == after
    pipe = load_pipeline(str(base), unet=str(out / "unet"))
    assert pipe.text_to_image("a red circle", num_steps=2, seed=0).shape == (1, 64, 64, 3)
    assert finetune.main(["--model", str(base), "--data", str(data_dir), "--out", str(tmp_path / "x"),
                          "--steps", "1", "--strict-data"]) == 2
