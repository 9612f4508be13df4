"""TensorFlow.js for the browser client (/edge/) without Node.js: the pinned npm tarballs, checked.

The page loads TF.js from edge/web/node_modules, which `npm ci` makes (scripts/setup.sh, the
Docker image's web stage). A Hugging Face Space runs only `pip install -r requirements.txt` and
`python app.py` and has no Node.js, so app.py calls ensure() at start: the files index.html loads
(and the WebAssembly binaries beside the wasm bundle) are taken from the package tarballs that
edge/web/package-lock.json pins, each tarball checked against the lock's sha512 integrity before
a byte is written. Nothing else of the packages is unpacked (about 3 MB instead of 90).

    python -m edge.runtime [--registry URL] [--force]

SD_NPM_REGISTRY names another registry (a mirror; a file:// URL works).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import urllib.request

WEB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
DEFAULT_REGISTRY = "https://registry.npmjs.org"
SCRIPT = re.compile(r'<script[^>]+src="node_modules/((?:@[^/"]+/)?[^/"]+)/([^"]+)"')
WASM_PACKAGE = "@tensorflow/tfjs-backend-wasm"  # backend.js points setWasmPaths at its dist/


class EdgeRuntimeError(Exception):
    """The runtime could not be fetched or failed its integrity check (message says which)."""


def needed_files(web: str = WEB) -> dict[str, list[str]]:
    """{package: [path in the package]} that the page loads, read from index.html itself."""
    with open(os.path.join(web, "index.html"), encoding="utf-8") as f:
        html = f.read()
    needed: dict[str, list[str]] = {}
    for package, path in SCRIPT.findall(html):
        needed.setdefault(package, []).append(path)
    if not needed:
        raise EdgeRuntimeError(f"{web}/index.html loads nothing from node_modules/")
    return needed


def locked(web: str = WEB) -> dict[str, dict]:
    """{package: {"version", "integrity"}} from package-lock.json."""
    with open(os.path.join(web, "package-lock.json"), encoding="utf-8") as f:
        packages = json.load(f)["packages"]
    return {k[len("node_modules/"):]: v for k, v in packages.items() if k.startswith("node_modules/")}


def missing(web: str = WEB) -> list[str]:
    """node_modules paths the page needs and does not have ([] = ready)."""
    root = os.path.join(web, "node_modules")
    out = [f"{p}/{f}" for p, files in needed_files(web).items() for f in files
           if not os.path.isfile(os.path.join(root, p, f))]
    wasm_dir = os.path.join(root, WASM_PACKAGE, "dist")
    if WASM_PACKAGE in needed_files(web) and not (os.path.isdir(wasm_dir)
                                                  and any(n.endswith(".wasm") for n in os.listdir(wasm_dir))):
        out.append(f"{WASM_PACKAGE}/dist/*.wasm")
    return out


def tarball_url(registry: str, package: str, version: str) -> str:
    base = package.rsplit("/", 1)[-1]
    return f"{registry.rstrip('/')}/{package}/-/{base}-{version}.tgz"


def check_integrity(data: bytes, integrity: str, what: str) -> None:
    """Subresource-integrity check (the lock's "sha512-<base64>"): raise naming what failed."""
    algo, _, expected = integrity.partition("-")
    if algo not in ("sha512", "sha384", "sha256"):
        raise EdgeRuntimeError(f"{what}: the lock's integrity {integrity[:20]}... uses {algo!r}, not sha256/384/512")
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != expected:
        raise EdgeRuntimeError(f"{what}: {algo} of the download is {got[:16]}..., the lock pins {expected[:16]}...; "
                            "nothing was written")


def _fetch(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except OSError as e:
        raise EdgeRuntimeError(f"could not download {url}: {e}") from None


def _members(data: bytes, files: list[str], with_wasm: bool) -> dict[str, bytes]:
    """{path in the package: bytes} for the wanted files (npm tarballs keep them under package/)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            if not m.isfile() or not m.name.startswith("package/"):
                continue
            path = m.name[len("package/"):]
            wanted = path in files or (with_wasm and path.startswith("dist/") and path.endswith(".wasm")
                                       and "/" not in path[len("dist/"):])
            if wanted:
                out[path] = tar.extractfile(m).read()
    return out


def ensure(web: str = WEB, registry: str | None = None, *, force: bool = False, timeout: float = 120,
           log=print) -> list[str]:
    """Fetch what the page lacks (all of it with force); returns the paths written."""
    if not force and not missing(web):
        return []
    registry = registry or os.environ.get("SD_NPM_REGISTRY") or DEFAULT_REGISTRY
    lock = locked(web)
    plan = []
    for package, files in needed_files(web).items():
        if package not in lock:
            raise EdgeRuntimeError(f"index.html loads {package}, which package-lock.json does not pin")
        plan.append((package, files, lock[package]))
    fetched = {}
    for package, files, pin in plan:  # everything downloaded and checked before anything is written
        url = tarball_url(registry, package, pin["version"])
        log(f"edge runtime: fetching {package}@{pin['version']} ({url})")
        data = _fetch(url, timeout)
        check_integrity(data, pin["integrity"], f"{package}@{pin['version']}")
        members = _members(data, files, package == WASM_PACKAGE)
        absent = [f for f in files if f not in members]
        if absent:
            raise EdgeRuntimeError(f"{package}@{pin['version']} has no {', '.join(absent)}")
        fetched[package] = members
    written = []
    for package, members in fetched.items():
        for path, blob in members.items():
            dest = os.path.join(web, "node_modules", package, *path.split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            tmp = dest + ".part"
            with open(tmp, "wb") as f:
                f.write(blob)
            os.replace(tmp, dest)
            written.append(f"{package}/{path}")
    log(f"edge runtime: wrote {len(written)} files, {sum(len(b) for m in fetched.values() for b in m.values()) / 1e6:.1f} MB, "
        f"under {os.path.join(web, 'node_modules')}")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--web", default=WEB, help="the browser client's folder (default edge/web)")
    ap.add_argument("--registry", default=None, help=f"npm registry (default $SD_NPM_REGISTRY or {DEFAULT_REGISTRY})")
    ap.add_argument("--force", action="store_true", help="fetch even if the files are there")
    args = ap.parse_args(argv)
    try:
        ensure(args.web, args.registry, force=args.force)
    except EdgeRuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    left = missing(args.web)
    print("edge runtime: ready" if not left else f"edge runtime: still missing {left}")
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
