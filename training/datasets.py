"""Read users' captioned image folders for fine-tuning.

Two layouts people already have are accepted as they are, so nobody converts data:

(a) Hugging Face "imagefolder": images plus ``metadata.csv`` (columns ``file_name``,
    ``text``) or ``metadata.jsonl`` (one object per line with those keys); ``file_name`` is
    relative to the metadata file and may not leave its folder.
(b) The KerasCV fine-tuning example: ``data.csv`` with columns ``image_path``, ``caption``;
    ``image_path`` is relative to the csv's folder, or absolute.

A hand-made dataset always has a few broken rows; one of them should not cost a
fine-tuning run hours in, nor be dropped silently. Every row is checked up front and each
bad one is reported with its line number in the metadata file (1-based; a csv header is
line 1) and the reason, then skipped, or, with ``strict=True``, all of them are raised
together in a ``DatasetError``.
"""

from __future__ import annotations

import csv
import json
import posixpath
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageOps

# Looked for in this order in a dataset folder.
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "data.csv")
_COLUMNS = {"imagefolder": ("file_name", "text"), "kerascv": ("image_path", "caption")}


class Example(NamedTuple):
    image_path: Path
    caption: str
    line: int


class BadRow(NamedTuple):
    line: int
    reason: str


class DatasetError(ValueError):
    """The dataset cannot be used as asked; ``bad_rows`` holds the row problems, if any."""

    def __init__(self, message: str, bad_rows: Sequence[BadRow] = ()):
        super().__init__(message)
        self.bad_rows = list(bad_rows)


def format_bad_rows(bad_rows: Sequence[BadRow], limit: int = 20) -> str:
    lines = [f"  line {b.line}: {b.reason}" for b in bad_rows[:limit]]
    if len(bad_rows) > limit:
        lines.append(f"  ... and {len(bad_rows) - limit} more")
    return "\n".join(lines)


def find_metadata(path) -> tuple[Path, str]:
    """The metadata file for ``path`` (a dataset folder, or the file itself) and its
    layout, "imagefolder" or "kerascv"."""
    p = Path(path)
    if p.is_dir():
        for name in METADATA_FILES:
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise DatasetError(f"no {', '.join(METADATA_FILES[:-1])} or {METADATA_FILES[-1]} "
                               f"found in {p}")
    elif not p.is_file():
        raise DatasetError(f"dataset not found: {p}")
    if p.suffix == ".jsonl":
        return p, "imagefolder"
    if p.suffix != ".csv":
        raise DatasetError(f"{p}: expected a .csv or .jsonl metadata file")
    header = _read_csv_header(p)
    for layout, cols in _COLUMNS.items():
        if all(c in header for c in cols):
            return p, layout
    raise DatasetError(f"{p}: header has columns {header}; expected "
                       f"{','.join(_COLUMNS['imagefolder'])} (imagefolder) or "
                       f"{','.join(_COLUMNS['kerascv'])} (KerasCV data.csv)")


def _read_csv_header(p: Path) -> list[str]:
    try:
        with open(p, encoding="utf-8-sig", newline="") as f:
            row = next(csv.reader(f), [])
    except UnicodeDecodeError as e:
        raise DatasetError(f"{p}: not UTF-8 text ({e})") from e
    return [c.strip() for c in row]


def _csv_records(p: Path):
    """(line, dict or None if fields are missing, missing column names) per data row."""
    with open(p, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = [c.strip() for c in next(reader, [])]
        line_end = reader.line_num
        for row in reader:
            line = line_end + 1  # a quoted field may span lines; report where the row starts
            line_end = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            missing = header[len(row):]
            yield line, dict(zip(header, row)), missing


def _jsonl_records(p: Path):
    with open(p, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield line, None, f"invalid JSON ({e.msg})"
                continue
            if not isinstance(obj, dict):
                yield line, None, "not a JSON object"
                continue
            yield line, obj, None


def _check_image(path: Path) -> str | None:
    if not path.is_file():
        return "file not found"
    try:
        with Image.open(path) as im:
            im.verify()  # catches truncation even if ImageFile.LOAD_TRUNCATED_IMAGES is set
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # PIL raises many types for bad files
        return f"unreadable image ({type(e).__name__}: {e})"
    return None


def _resolve(root: Path, name: str, layout: str) -> tuple[Path | None, str | None]:
    if layout == "kerascv":
        p = Path(name)
        return (p if p.is_absolute() else root / p), None
    norm = posixpath.normpath(name.replace("\\", "/"))
    if posixpath.isabs(norm) or Path(name).is_absolute():
        return None, "absolute path not allowed in imagefolder metadata"
    if norm == ".." or norm.startswith("../"):
        return None, "path leaves the dataset folder"
    return root / norm, None


def load_dataset(path, strict: bool = False, check_images: bool = True
                 ) -> tuple[list[Example], list[BadRow]]:
    """Examples and bad rows of the dataset at ``path`` (folder or metadata file).

    Raises ``DatasetError`` when no metadata file is found, its header lacks the needed
    columns, no row is usable, or (``strict=True``) any row is bad.
    ``check_images=False`` skips decoding every image (only existence is checked).
    """
    meta, layout = find_metadata(path)
    root = meta.parent
    name_key, caption_key = _COLUMNS[layout]
    examples: list[Example] = []
    bad: list[BadRow] = []

    if meta.suffix == ".jsonl":
        records = ((line, obj, err) for line, obj, err in _jsonl_records(meta))
    else:
        records = ((line, rec, (f"missing column(s) {', '.join(missing)}" if missing else None))
                   for line, rec, missing in _csv_records(meta))
    try:
        for line, rec, err in records:
            if err is None:
                absent = [k for k in (name_key, caption_key) if k not in rec]
                if absent:
                    err = f"missing key(s) {', '.join(absent)}"
            if err is None:
                name, caption = rec[name_key], rec[caption_key]
                if not isinstance(name, str) or not name.strip():
                    err = f"empty {name_key}"
                elif not isinstance(caption, str):
                    err = f"{caption_key} is not text"
                elif not caption.strip():
                    err = "empty caption"
            if err is None:
                image_path, err = _resolve(root, name.strip(), layout)
            if err is None:
                err = _check_image(image_path) if check_images else (
                    None if image_path.is_file() else "file not found")
                if err:
                    err = f"{name.strip()}: {err}"
            if err:
                bad.append(BadRow(line, err))
            else:
                examples.append(Example(image_path, " ".join(caption.split()), line))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{meta}: not UTF-8 text ({e})") from e

    if bad and strict:
        raise DatasetError(f"{meta}: {len(bad)} bad row(s):\n{format_bad_rows(bad)}", bad)
    if not examples:
        detail = f":\n{format_bad_rows(bad)}" if bad else ""
        raise DatasetError(f"{meta}: no usable rows{detail}", bad)
    return examples, bad


def load_images(examples: Iterable[Example | str | Path], resolution: int) -> np.ndarray:
    """Images as float32 [N, resolution, resolution, 3] in [-1, 1]: center-cropped to a
    square (a stretched image would teach the model stretched shapes) and resized with
    Lanczos; EXIF rotation applied, transparency composited onto white."""
    out = []
    for ex in examples:
        path = ex.image_path if isinstance(ex, Example) else Path(ex)
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im)
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.resize((resolution, resolution), Image.Resampling.LANCZOS,
                           box=(left, top, left + side, top + side))
            out.append(np.asarray(im, dtype=np.float32))
    if not out:
        return np.zeros((0, resolution, resolution, 3), np.float32)
    return np.stack(out) / 127.5 - 1.0
