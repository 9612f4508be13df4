"""The default model's second training stage: captions said many ways, text encoder trained too."""

import re
import shutil

import numpy as np
import pytest

from tests.conftest import random_components
from training.captions import (HELD_OUT_FORMS, ISSUE_FAMILIES, Scene, filler_vocabulary, random_scene,
                               training_phrasing)
from training.synthetic import COLOURS, SHAPES, make_example, training_combinations
from training.trainer import DiffusionTrainer, EncodedDataset, TrainConfig

QUIET = dict(log=lambda *a: None)


def _phrasings(n, seed=0, fillers=("zebra", "quantum"), mix="phrasings"):
    rng = np.random.default_rng(seed)
    combos = training_combinations()
    scenes = [random_scene(combos[rng.integers(len(combos))], rng) for _ in range(n)]
    return scenes, [training_phrasing(s, rng, fillers, mix=mix) for s in scenes]


def _words(text):
    return re.findall(r"[a-z]+|[^a-z\s]", text.lower())


@pytest.mark.parametrize("mix", ["phrasings", "connected"])
def test_training_phrasings_never_use_the_held_out_forms_words(mix):
    """The held-out forms measure phrasings training never drew from: their connectors and
    fillers must not occur in any training caption, in either stage's mix."""
    _, captions = _phrasings(20000, mix=mix)
    seen = {w for c in captions for w in _words(c)}
    held_out_only = {"against", "behind", "is", "there", "showing", "illustration", "masterpiece", "over", "wall",
                     "front", "and", ":"}
    assert not seen & held_out_only
    # ...while the held-out forms do use them (so the check above means something)
    scene = Scene("red", "circle", "blue")
    used = {w for form in HELD_OUT_FORMS.values() for w in _words(form(scene, np.random.default_rng(0)))}
    assert held_out_only <= used
    # and every training caption names the scene's three words
    scenes, captions = _phrasings(2000, seed=1, mix=mix)
    for scene, caption in zip(scenes, captions):
        words = _words(caption)
        assert {scene.colour, scene.shape, scene.background} <= set(words), caption


def test_issue_families_say_what_the_issue_measured():
    rng = np.random.default_rng(0)
    got = {name: form(Scene("red", "circle", "blue"), rng) for name, form in ISSUE_FAMILIES.items()}
    assert got == {
        "A red circle on a blue background.": "A red circle on a blue background.",
        "red circle on blue background": "red circle on blue background",
        "red circle, blue background": "red circle, blue background",
        "a blue background with a red circle": "a blue background with a red circle",
        "a circle, red, on blue": "a circle, red, on blue",
        "a orange square on an yellow background": "an red circle on an blue background",
    }
    assert ISSUE_FAMILIES["a orange square on an yellow background"](Scene("orange", "square", "yellow"), rng) == \
        "a orange square on an yellow background"


def test_filler_vocabulary_has_no_scene_words():
    from models.tokenizer import default_tokenizer

    words = filler_vocabulary(default_tokenizer(), n=3000)
    assert len(words) == len(set(words)) == 3000
    assert not set(words) & (set(COLOURS) | set(SHAPES) | {"background", "left", "right", "small", "large"})
    assert words == filler_vocabulary(default_tokenizer(), n=3000)  # seeded


@pytest.fixture(scope="module")
def variants_setup():
    rng = np.random.default_rng(0)
    scenes, captions = _phrasings(8)
    images = np.stack([np.asarray(make_example(rng, s.colour, s.shape, s.background)[0], np.float32) / 127.5 - 1
                       for s in scenes])
    variants = [[c, f"{c}, variant {k}", f"another {k}"] for k, c in enumerate(captions)]
    components = random_components(seed=3)
    return components, EncodedDataset(components, images, variants, **QUIET), variants


def _config(**kw):
    base = dict(batch_size=4, steps=4, learning_rate=1e-3, ema_decay=0.9, checkpoint_every=0, sample_every=0, seed=7)
    return TrainConfig(**{**base, **kw})


def test_each_step_draws_one_of_each_images_captions(variants_setup, tmp_path):
    components, data, variants = variants_setup
    trainer = DiffusionTrainer(components, data, _config(), tmp_path, **QUIET)
    by_context = {data.contexts[k].tobytes(): k for k in range(len(data.contexts))}
    unique = sorted({c for v in variants for c in v})
    drawn = []
    for step in range(30):
        _, _, ctx, _, _ = trainer._batch(step)
        idx = trainer.order.indices(step)
        for row, image in zip(ctx.numpy(), idx):
            caption = unique[by_context[row.tobytes()]]
            assert caption in variants[image]
            drawn.append(variants[image].index(caption))
    assert set(drawn) == {0, 1, 2}  # all variants get drawn
    again = DiffusionTrainer(components, data, _config(), tmp_path / "again", **QUIET)
    for step in (0, 7, 29):  # a pure function of (seed, step): the same on resume
        np.testing.assert_array_equal(trainer._batch(step)[2].numpy(), again._batch(step)[2].numpy())


def test_one_caption_per_image_is_unchanged_by_variant_support(variants_setup):
    components, data, variants = variants_setup
    firsts = [v[0] for v in variants]
    single = EncodedDataset(components, np.zeros((8, 64, 64, 3), np.float32), firsts, **QUIET)
    assert single.caption_index.shape == (8, 1)
    assert single.captions == data.captions == firsts
    with pytest.raises(ValueError, match="non-empty list of captions"):
        EncodedDataset(components, np.zeros((2, 64, 64, 3), np.float32), [["a"], []], **QUIET)


def test_text_encoder_trains_except_its_token_table_and_resumes_exactly(variants_setup, tmp_path):
    components, data, _ = variants_setup
    config = dict(steps=4, checkpoint_every=2, train_text_encoder=True)
    straight = DiffusionTrainer(components, data, _config(**config), tmp_path / "a", **QUIET)
    straight.train()
    base = {v.path: v.numpy() for v in components.text_encoder.weights}
    trained = {v.path: v.numpy() for v in straight.text_encoder.weights}
    table = [p for p in base if p.endswith("token_embedding/embeddings")]
    assert len(table) == 1
    np.testing.assert_array_equal(trained[table[0]], base[table[0]])
    assert max(np.abs(trained[p] - base[p]).max() for p in base if p not in table) > 1e-4

    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-0000002", tmp_path / "b" / "checkpoints" / "step-0000002")
    resumed = DiffusionTrainer(components, data, _config(**config), tmp_path / "b", **QUIET)
    resumed.train(resume=True)
    for a, b in zip(straight.text_encoder.weights, resumed.text_encoder.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)

    # the shipped text encoder holds the EMA values, and save_unet writes it beside the UNet
    final = straight.final_text_encoder()
    ema = straight.ema.values()[len(straight.unet.trainable_variables):]
    for v, e in zip(final.trainable_variables, ema):
        np.testing.assert_array_equal(v.numpy(), e)
    from models.checkpoints.diffusers_folder import load_text_encoder_folder

    straight.save_unet(tmp_path / "out")
    loaded = load_text_encoder_folder(tmp_path / "out" / "text_encoder")
    ids = components.tokenizer.tokenize(["a red circle on a blue background"])
    np.testing.assert_allclose(loaded(ids).numpy(), final(ids).numpy(), atol=1e-6)

    # a checkpoint of the other kind is refused rather than half-restored
    plain = DiffusionTrainer(components, data, _config(steps=4), tmp_path / "b", **QUIET)
    with pytest.raises(ValueError, match="train_text_encoder"):
        plain.train(resume=True)


def test_score_reads_scenes_as_well_as_captions():
    from training.evaluate import score

    rng = np.random.default_rng(0)
    image, caption = make_example(rng, "red", "circle", "blue")
    by_caption = score([np.asarray(image)], [caption])
    by_scene = score([np.asarray(image)], [Scene("red", "circle", "blue")])
    assert by_caption["all"] == by_scene["all"] == 1.0
    assert score([np.asarray(image)], [Scene("green", "circle", "blue")])["colour"] == 0.0


def test_connected_mix_puts_nouns_on_either_side_of_their_colours():
    """The third stage's point: colour-noun binding from word order, with unknown words joining
    the parts; the phrasings mix never names a background before its colour with noise between."""
    def orders(mix):
        scenes, captions = _phrasings(3000, seed=2, mix=mix)
        counts = {"shape first": 0, "background noun first": 0, "noise joined": 0}
        for scene, caption in zip(scenes, captions):
            words = _words(caption)
            if scene.colour == scene.background:
                continue
            if words.index(scene.shape) < words.index(scene.colour):
                counts["shape first"] += 1
            if "background" in words and words.index("background") < words.index(scene.background):
                counts["background noun first"] += 1
                if {"zebra", "quantum"} & set(words[words.index("background"):words.index(scene.background)]):
                    counts["noise joined"] += 1
        return counts

    connected, phrasings = orders("connected"), orders("phrasings")
    assert connected["shape first"] > 1.3 * phrasings["shape first"]
    assert connected["background noun first"] > 1.5 * phrasings["background noun first"]
    assert connected["noise joined"] > 100 and phrasings["noise joined"] == 0
