"""Users' captioned folders: every layout the generator writes reads back, and broken rows
are reported by their line in the metadata file."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from training.datasets import (BadRow, DatasetError, Example, find_metadata, load_dataset,
                               load_images)
from training.synthetic import FORMATS, write_dataset


def _png(path, colour=(200, 30, 30), size=(16, 16)):
    Image.new("RGB", size, colour).save(path)
    return path


def _truncated_png(path):
    _png(path.with_suffix(".full.png"), size=(64, 64))
    data = path.with_suffix(".full.png").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    path.with_suffix(".full.png").unlink()
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_generated_dataset_round_trips(tmp_path, fmt):
    meta = write_dataset(tmp_path, n=12, seed=0, resolution=32, fmt=fmt)
    assert find_metadata(tmp_path) == (meta, "kerascv" if fmt == "data.csv" else "imagefolder")
    examples, bad = load_dataset(tmp_path, strict=True)
    assert bad == []
    if fmt == "metadata.jsonl":
        written = [json.loads(line) for line in meta.read_text().splitlines()]
        want = [(r["file_name"], r["text"]) for r in written]
        first_line = 1
    else:
        with open(meta, newline="") as f:
            want = [tuple(r) for r in list(csv.reader(f))[1:]]
        first_line = 2
    assert [(e.image_path.name, e.caption) for e in examples] == want
    assert [e.line for e in examples] == list(range(first_line, first_line + 12))
    images = load_images(examples, 16)
    assert images.shape == (12, 16, 16, 3) and images.dtype == np.float32
    assert -1.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.1


def _broken_folder(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    _png(root / "good1.png")
    _png(root / "good2.png")
    _png(root / "good3.png")
    _truncated_png(root / "trunc.png")
    _png(tmp_path / "outside.png")  # exists, so only the traversal makes row 6 bad
    (root / "metadata.csv").write_text(
        "file_name,text\n"                      # 1
        "good1.png,a red square\n"              # 2
        "missing.png,a blue circle\n"           # 3
        "trunc.png,a green circle\n"            # 4
        "good2.png,   \n"                       # 5
        "../outside.png,a sneaky caption\n"     # 6
        "good2.png,\"a caption over\n"          # 7
        "two lines\"\n"                         # 8
        "\n"                                    # 9 (blank, ignored)
        "good3.png\n"                           # 10 (no text column)
        "/etc/passwd,absolute\n"                # 11
        "good3.png,a fine one\n"                # 12
    )
    return root


def test_bad_rows_are_reported_by_line_and_skipped(tmp_path):
    root = _broken_folder(tmp_path)
    examples, bad = load_dataset(root)
    assert [(e.image_path.name, e.line) for e in examples] == [("good1.png", 2), ("good2.png", 7), ("good3.png", 12)]
    assert examples[1].caption == "a caption over two lines"
    assert [b.line for b in bad] == [3, 4, 5, 6, 10, 11]
    reasons = dict(bad)
    assert "not found" in reasons[3]
    assert "unreadable" in reasons[4]
    assert "empty caption" in reasons[5]
    assert "leaves the dataset folder" in reasons[6]
    assert "missing column" in reasons[10] and "text" in reasons[10]
    assert "absolute" in reasons[11]
    assert all(isinstance(b, BadRow) for b in bad) and all(isinstance(e, Example) for e in examples)


def test_strict_raises_listing_every_bad_row(tmp_path):
    root = _broken_folder(tmp_path)
    with pytest.raises(DatasetError) as err:
        load_dataset(root / "metadata.csv", strict=True)
    assert [b.line for b in err.value.bad_rows] == [3, 4, 5, 6, 10, 11]
    for line in (3, 4, 5, 6, 10, 11):
        assert f"line {line}:" in str(err.value)


def test_jsonl_bad_rows(tmp_path):
    _png(tmp_path / "a.png")
    lines = [
        {"file_name": "a.png", "text": "a red square"},   # 1
        "{not json",                                      # 2
        {"file_name": "a.png"},                           # 3
        {"file_name": "nope.png", "text": "x"},           # 4
        {"file_name": "a.png", "text": ""},               # 5
        {"file_name": "../a.png", "text": "x"},           # 6
    ]
    (tmp_path / "metadata.jsonl").write_text(
        "\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    examples, bad = load_dataset(tmp_path)
    assert [e.line for e in examples] == [1]
    assert [b.line for b in bad] == [2, 3, 4, 5, 6]
    assert "JSON" in bad[0].reason and "text" in bad[1].reason


def test_kerascv_paths_relative_or_absolute(tmp_path):
    (tmp_path / "imgs").mkdir()
    _png(tmp_path / "imgs" / "a.png")
    elsewhere = _png(tmp_path / "b.png")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "data.csv").write_text(f",image_path,caption\n0,../imgs/a.png,one\n1,{elsewhere},two\n")
    examples, bad = load_dataset(sub)
    assert bad == [] and [e.caption for e in examples] == ["one", "two"]
    assert examples[1].image_path == elsewhere


def test_missing_metadata_and_wrong_header(tmp_path):
    with pytest.raises(DatasetError, match="metadata.csv.*metadata.jsonl.*data.csv"):
        load_dataset(tmp_path)
    (tmp_path / "metadata.csv").write_text("file,caption\na.png,x\n")
    with pytest.raises(DatasetError, match="file_name,text"):
        load_dataset(tmp_path)
    (tmp_path / "metadata.csv").write_text("file_name,text\nnope.png,x\n")
    with pytest.raises(DatasetError, match="no usable rows"):
        load_dataset(tmp_path)


def test_load_images_center_crops(tmp_path):
    im = Image.new("RGB", (30, 10), (255, 255, 255))
    im.paste((0, 0, 0), (0, 0, 10, 10))          # left third black: cropped away
    im.paste((255, 0, 0), (10, 0, 20, 10))       # centre red: kept
    im.save(tmp_path / "wide.png")
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.save(tmp_path / "clear.png")
    out = load_images([tmp_path / "wide.png", Example(tmp_path / "clear.png", "x", 2)], 8)
    assert out.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(out[0, 4, 4], [1.0, -1.0, -1.0], atol=0.02)
    np.testing.assert_allclose(out[1], 1.0, atol=1e-6)  # transparent -> white
