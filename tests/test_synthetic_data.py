"""The synthetic dataset must say exactly what it draws, and keep held-out combinations out."""

import csv

import numpy as np
import pytest

from training import synthetic
from training.synthetic import (ALL_SHAPES, COLOURS, HELD_OUT, POSITIONS, SHAPES, SIZES,
                                all_combinations, held_out_combinations, make_example,
                                parse_caption, training_combinations, write_dataset)


def _captions(meta):
    with open(meta, newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def test_captions_name_what_was_asked():
    rng = np.random.default_rng(0)
    for i, (colour, shape, background) in enumerate(all_combinations(ALL_SHAPES)):
        size = (None, *SIZES)[i % 3]
        position = (None, *POSITIONS)[i % 6]
        image, caption = make_example(rng, colour, shape, background, size, position)
        assert image.size == (64, 64) and image.mode == "RGB"
        assert parse_caption(caption) == {"colour": colour, "shape": shape, "background": background,
                                          "size": size, "position": position}
        words = caption.split()
        assert colour in words and shape in words and words[-1] == "background"
        if size is None and position is None:
            article = "an" if colour == "orange" else "a"
            bg_article = "an" if background == "orange" else "a"
            assert caption == f"{article} {colour} {shape} on {bg_article} {background} background"


def test_caption_grammar_examples():
    assert synthetic.make_caption("red", "circle", "blue") == "a red circle on a blue background"
    assert (synthetic.make_caption("red", "circle", "blue", "small", "on the left")
            == "a small red circle on the left on a blue background")
    assert synthetic.make_caption("orange", "square", "white") == "an orange square on a white background"
    with pytest.raises(ValueError):
        parse_caption("a red circle on a blue")
    with pytest.raises(ValueError):
        parse_caption("a pink circle on a blue background")


def test_background_never_the_shape_colour():
    assert all(c != b for c, _, b in all_combinations(ALL_SHAPES))
    with pytest.raises(ValueError):
        make_example(np.random.default_rng(0), "red", "circle", "red")
    rng = np.random.default_rng(1)
    palette = np.array(list(COLOURS.values()), np.float32)
    names = list(COLOURS)
    for colour, shape, background in training_combinations()[::5]:
        image, _ = make_example(rng, colour, shape, background)
        a = np.asarray(image, np.float32)
        corner = a[0, 0]
        center = a[32, 32]
        assert names[np.argmin(np.linalg.norm(palette - corner, axis=1))] == background
        assert names[np.argmin(np.linalg.norm(palette - center, axis=1))] == colour


def test_held_out_split():
    held = set(HELD_OUT)
    assert len(held) == len(HELD_OUT)
    base = held_out_combinations()
    assert 10 <= len(base) <= 14
    assert {s for _, s, _ in base} == set(SHAPES)
    assert {c for c, _, _ in base} == set(COLOURS) == {b for _, _, b in base}
    assert not held & set(training_combinations(ALL_SHAPES))
    assert set(training_combinations()) | set(base) == set(all_combinations())
    # Every (colour, shape) pair is still seen in training, on some other background.
    assert {(c, s) for c, s, _ in training_combinations()} == {(c, s) for c, s, _ in all_combinations()}
    # Hexagon is drawable but not in the base dataset.
    assert "hexagon" not in SHAPES and "hexagon" in ALL_SHAPES
    assert not any(s == "hexagon" for _, s, _ in all_combinations())


def test_write_dataset_excludes_held_out_and_is_deterministic(tmp_path):
    meta = write_dataset(tmp_path / "a", n=300, seed=3, resolution=32, p_size=0.5, p_position=0.5)
    captions = _captions(meta)
    assert len(captions) == 300
    parsed = [parse_caption(c) for c in captions]
    combos = {(p["colour"], p["shape"], p["background"]) for p in parsed}
    assert not combos & set(HELD_OUT)
    assert all(p["shape"] in SHAPES for p in parsed)
    assert any(p["size"] for p in parsed) and any(p["position"] for p in parsed)
    assert any(p["size"] is None and p["position"] is None for p in parsed)
    meta2 = write_dataset(tmp_path / "b", n=5, seed=3, resolution=32, p_size=0.5, p_position=0.5)
    assert _captions(meta2) == captions[:5]
    assert (tmp_path / "a" / "000004.png").read_bytes() == (tmp_path / "b" / "000004.png").read_bytes()


def test_cli_held_out_only_with_hexagon(tmp_path, capsys):
    synthetic.main(["--out", str(tmp_path), "--n", "40", "--seed", "1", "--resolution", "32",
                    "--shapes", "circle,square,triangle,hexagon", "--held-out", "only"])
    parsed = [parse_caption(c) for c in _captions(tmp_path / "metadata.csv")]
    assert {(p["colour"], p["shape"], p["background"]) for p in parsed} <= set(HELD_OUT)
    assert any(p["shape"] == "hexagon" for p in parsed)
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path), "--shapes", "star"])
