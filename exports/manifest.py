"""manifest.json: the one file a client reads instead of hard-coding model facts.

It lists every artifact (with sizes and sha256 so a deployment can verify what it fetched)
and the facts that differ between models: latent shape, VAE scaling factor, context width,
tokenizer ids, scheduler indices. A web page, an Android app and a TF Serving client all
read the same file, so they cannot drift apart from the export.
"""

from __future__ import annotations

import hashlib
import json
import os

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def sha256_file(path, chunk=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_entries(root, paths):
    """[{path, bytes, sha256}] for files (or every file under folders), paths relative to root."""
    out = []
    for rel in paths:
        full = os.path.join(root, rel)
        if os.path.isdir(full):
            found = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(full) for f in fs)
        else:
            found = [rel]
        for f in found:
            p = os.path.join(root, f)
            out.append({"path": f.replace(os.sep, "/"), "bytes": os.path.getsize(p), "sha256": sha256_file(p)})
    return out


def tensor_entry(name, shape, dtype, **extra):
    """Shapes as lists with -1 for dynamic axes (the convention of TF Serving and TFLite)."""
    shape = [-1 if d is None or (isinstance(d, int) and d < 0) else int(d) for d in shape]
    return {"name": name, "shape": shape, "dtype": str(dtype), **extra}


def weights_digest(models) -> str:
    """sha256 over every weight of the given Keras models: the model's version string changes
    exactly when some weight does, whatever the artifacts exported this time."""
    h = hashlib.sha256()
    for model in models:
        if model is None:
            continue
        for v in sorted(model.weights, key=lambda v: v.path):
            h.update(v.path.encode())
            h.update(v.numpy().tobytes())
    return h.hexdigest()


def write_manifest(root, manifest):
    path = os.path.join(root, MANIFEST)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


def read_manifest(root):
    with open(os.path.join(root, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise ValueError(f"{root}: manifest version {manifest.get('manifest_version')} is not {MANIFEST_VERSION}")
    return manifest


def find_artifact(manifest, component, fmt, precision="float32", variant=None):
    for a in manifest["artifacts"]:
        if (a["component"], a["format"], a["precision"], a.get("variant")) == (component, fmt, precision, variant):
            return a
    return None


def verify(root, manifest=None):
    """Problems found re-hashing every listed file ([] when the export is intact)."""
    manifest = manifest or read_manifest(root)
    problems = []
    for a in manifest["artifacts"]:
        for f in a["files"]:
            p = os.path.join(root, f["path"])
            if not os.path.isfile(p):
                problems.append(f"missing {f['path']}")
            elif os.path.getsize(p) != f["bytes"] or sha256_file(p) != f["sha256"]:
                problems.append(f"changed {f['path']}")
    return problems
