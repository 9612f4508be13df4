"""The evaluator's own error rate, measured on freshly drawn ground truth: every training
and held-out combination (hexagon included), every size and position, colour jitter on,
clean and degraded the way a small generator's outputs are (blurred, noisy)."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from training.evaluate import judge, judge_region, outside_difference, score, unchanged_outside
from training.synthetic import (ALL_SHAPES, POSITIONS, SIZES, all_combinations, make_example,
                                parse_caption)


def _ground_truth(n_rounds=2, resolution=64, seed=123):
    rng = np.random.default_rng(seed)
    combos = all_combinations(ALL_SHAPES)  # training + held-out, 4 shapes: 224 combinations
    images, captions = [], []
    for i in range(n_rounds * len(combos)):
        size = (None, *SIZES)[i % 3]
        position = (None, *POSITIONS)[(i // 3) % 6]
        image, caption = make_example(rng, *combos[i % len(combos)], size, position, resolution)
        images.append(image)
        captions.append(caption)
    return images, captions


def _degrade(image, rng, blur=1.0, sigma=8.0):
    a = np.asarray(image.filter(ImageFilter.GaussianBlur(blur)), np.float32)
    a = a + rng.normal(0.0, sigma, a.shape)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ground_truth():
    return _ground_truth()


def _check(result, n):
    assert result["n"] == n >= 300
    assert result["background"] >= 0.99, result["errors"]
    assert result["colour"] >= 0.99, result["errors"]
    assert result["shape"] >= 0.97, result["errors"]


def test_accuracy_on_clean_images(ground_truth):
    images, captions = ground_truth
    result = score([np.asarray(im) for im in images], captions)
    _check(result, len(images))
    print(f"clean: {result['background']:.4f} {result['colour']:.4f} {result['shape']:.4f}")


def test_accuracy_on_blurred_noisy_images(ground_truth):
    images, captions = ground_truth
    rng = np.random.default_rng(7)
    result = score([_degrade(im, rng) for im in images], captions)
    _check(result, len(images))
    print(f"degraded: {result['background']:.4f} {result['colour']:.4f} {result['shape']:.4f}")


def test_rotation_and_resolution_do_not_matter():
    rng = np.random.default_rng(3)
    combos = all_combinations(ALL_SHAPES)
    for i in range(0, len(combos), 7):
        colour, shape, background = combos[i]
        image, caption = make_example(rng, colour, shape, background, resolution=256)
        image = image.rotate(rng.uniform(0, 360), Image.Resampling.BICUBIC,
                             fillcolor=image.getpixel((0, 0)))
        j = judge(image)
        assert (j.colour, j.shape, j.background) == (colour, shape, background), caption
        assert 0.0 <= j.confidence <= 1.0


def test_no_shape_and_bad_input():
    blank = np.full((64, 64, 3), (40, 80, 220), np.uint8)
    j = judge(blank)
    assert j.background == "blue" and j.shape is None and j.colour is None
    with pytest.raises(TypeError):
        judge(blank.astype(np.float32))
    with pytest.raises(ValueError):
        score([blank], [])


def test_score_reports_errors():
    image, caption = make_example(np.random.default_rng(0), "red", "square", "blue")
    wrong = caption.replace("square", "circle").replace("blue background", "green background")
    result = score([np.asarray(image)] * 2, [caption, wrong])
    assert result["shape"] == 0.5 and result["background"] == 0.5 and result["colour"] == 1.0
    assert result["all"] == 0.5 and result["correct"] == {"background": 1, "colour": 2, "shape": 1}
    assert {(e["index"], e["field"]) for e in result["errors"]} == {(1, "shape"), (1, "background")}
    assert parse_caption(wrong)["shape"] == "circle"


def test_inpainting_checks():
    rng = np.random.default_rng(0)
    before = np.asarray(make_example(rng, "white", "square", "blue")[0])
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    after = before.copy()
    after[mask] = (225, 45, 35)  # the region repainted red
    after = _degrade(Image.fromarray(after), rng, blur=0.5, sigma=3)
    region = judge_region(after, mask)
    assert region.colour == "red" and region.fraction > 0.8
    assert judge_region(before, mask).colour in ("white", "blue")
    # Outside the mask only noise and the blur seam changed.
    assert unchanged_outside(before, after, mask, tol=8.0, margin=2)
    assert outside_difference(before, after, mask, margin=2) < 5
    broken = after.copy()
    broken[50:, :] = 0
    assert not unchanged_outside(before, broken, mask, tol=8.0, margin=2)
    # uint8 and PIL masks are accepted too.
    pil_mask = Image.fromarray(mask.astype(np.uint8) * 255)
    assert judge_region(after, pil_mask).colour == "red"
