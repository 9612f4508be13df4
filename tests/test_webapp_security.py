"""The security catalogue: hundreds of bad inputs, generated from families (route x bad field x
bad value), against every door of the web app, on both server-side deployments, with and
without an API token.

Surfaces: the REST API (JSON and multipart), the tensor format (application/x-safetensors
bodies to /diffuse, /decode, /encode_image), the Gradio API (/gradio_api/call/<api_name>, the
queue, /gradio_api/upload, /gradio_api/file=, /config) and the static mounts (/edge, /exports).
Deployments: one all-in-one process, and the three-endpoint layout (text_encoder, diffusion
and decoder servers plus a front end), all loopback processes started with `python -m webapp`.
Each deployment runs without a token and with one (SD_API_TOKEN); with one, the whole
catalogue runs twice: with the token (the same answers as without one) and without it
(missing, wrong, wrong-case or forged credentials: 401 on every route but health and the
static files, before the body is even looked at).

For each case: its own status and error code (no 5xx anywhere; Gradio's call API ends its
event stream with an error event that names the problem), no disclosed content (the servers'
environment, /etc/passwd, a secret file outside Gradio's cache, the server's source, the
token; and nothing of theirs copied into Gradio's cache). Afterwards each server is healthy,
still makes an image, and its resident memory is within 10% of its value after warm-up.

`pytest -s` prints the counts per surface and deployment and the memory figures.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import http.client
import io
import json
import os
import re
import struct
import time
import urllib.parse
import uuid

import httpx
import numpy as np
import pytest

from tests.webapp_helpers import PROMPT, REPO, ServerProcess, png
from webapp import wire

pytestmark = pytest.mark.slow

TOKEN = "tok-" + uuid.uuid4().hex
MARKER = "marker-" + uuid.uuid4().hex  # in every server's environment and in the secret file
ESCAPE = f"escape-{uuid.uuid4().hex}.png"  # an upload named ../../../tmp/<this> must stay in the cache
SOURCE_LINE = "The application factory: one FastAPI app"  # webapp/server.py: the server's own source
PASSWD_LINE = "root:x:0:0"
MAX_STEPS, MAX_BATCH, MAX_SIDE, MAX_BODY, MAX_CHARS, MAX_PROMPTS = 8, 2, 128, 2**20, 300, 4
SERVER_ARGS = ["--max-steps", str(MAX_STEPS), "--max-batch", str(MAX_BATCH), "--max-side", str(MAX_SIDE),
               "--max-body-mb", "1", "--queue-size", "8", "--timeout", "60"]
SERVER_ENV = {"SD_MAX_PROMPT_CHARS": str(MAX_CHARS), "SD_MAX_PROMPTS": str(MAX_PROMPTS),
              "SECURITY_TEST_MARKER": MARKER, "GRADIO_ANALYTICS_ENABLED": "False"}
ROLE = {"/api/v1/encode": "text_encoder", "/api/v1/diffuse": "diffusion", "/api/v1/decode": "decoder",
        "/api/v1/encode_image": "decoder"}  # where a path goes in the three-endpoint layout; else the front end
OPEN_PREFIXES = ("/edge", "/exports", "/api/v1/health")  # open with a token too (and /api/docs, /api/redoc, /openapi.json)
RSS_TOLERANCE = 0.10
START_S = 300  # four servers loading at once on a shared 2-core machine


# -- the deployments ---------------------------------------------------------------------
def plant(root: str) -> None:
    """The files a bad input must not reach: a secret outside Gradio's cache, links out of the
    cache, the models folder and the static folders, and a broken model."""
    out = os.path.join(root, "outside")
    os.makedirs(out)
    with open(os.path.join(out, "secret.txt"), "w") as f:
        f.write(f"SD_API_TOKEN={MARKER}\n")
    with open(os.path.join(out, "secret.safetensors"), "w") as f:
        f.write(MARKER)
    os.symlink("/etc/passwd", os.path.join(out, "passwd-link"))
    cache = os.path.join(root, "gradio")
    os.makedirs(os.path.join(cache, "planted"))
    os.symlink(os.path.join(out, "secret.txt"), os.path.join(cache, "planted", "secret-link.png"))
    models = os.path.join(root, "models")
    os.makedirs(models)
    with open(os.path.join(models, "broken.safetensors"), "wb") as f:
        f.write(b"not a model")
    os.symlink(os.path.join(out, "secret.safetensors"), os.path.join(models, "link.safetensors"))
    os.symlink(out, os.path.join(models, "linkdir"))
    for static in ("edge", "exports"):
        d = os.path.join(root, static)
        os.makedirs(d)
        with open(os.path.join(d, "index.html"), "w") as f:
            f.write(f"<p>{static} ok</p>")
        os.symlink("/etc/passwd", os.path.join(d, "passwd"))
        os.symlink(os.path.join(REPO, "webapp", "server.py"), os.path.join(d, "server.py"))
        os.symlink(os.path.join(out, "secret.txt"), os.path.join(d, "secret.txt"))
        os.symlink("/", os.path.join(d, "up"))
    with open(os.path.join(root, "exports", "manifest.json"), "w") as f:
        f.write("{}")


@dataclasses.dataclass
class Deployment:
    kind: str  # "all-in-one" | "three endpoints"
    token: str | None
    root: str
    servers: dict  # role -> ServerProcess (all-in-one: "ui"; else ui, text_encoder, diffusion, decoder)

    def url(self, role="ui"):
        return self.servers.get(role, self.servers["ui"]).url

    @property
    def name(self):
        return f"{self.kind}, {'token' if self.token else 'no token'}"

    @property
    def cache(self):
        return os.path.join(self.root, "gradio")

    def rss(self) -> dict:
        return {role: vm_rss(s.proc.pid) for role, s in self.servers.items()}

    def stop(self):
        for s in self.servers.values():
            s.stop()


def vm_rss(pid: int) -> int:
    """Resident memory of a process in bytes (/proc/<pid>/status VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def start(kind: str, token: str | None, root: str, pool) -> Deployment:
    plant(root)
    env = {**SERVER_ENV, "SD_API_TOKEN": token or "", "GRADIO_TEMP_DIR": os.path.join(root, "gradio")}
    static = ["--edge-dir", os.path.join(root, "edge"), "--exports", os.path.join(root, "exports")]
    models = ["--models-dir", os.path.join(root, "models")]
    tag = "tok" if token else "open"
    if kind == "all-in-one":
        return Deployment(kind, token, root, {"ui": pool.submit(
            ServerProcess, *SERVER_ARGS, *static, *models, name=f"sec-all-{tag}", env=env, timeout=START_S)})
    stages = {role: pool.submit(ServerProcess, "--component", role, "--no-ui", *SERVER_ARGS,
                                *(models if role == "diffusion" else ()), name=f"sec-{role}-{tag}", env=env,
                                timeout=START_S)
              for role in ("text_encoder", "diffusion", "decoder")}
    return Deployment(kind, token, root, stages)


def finish(d: Deployment, pool) -> Deployment:
    """Wait for the servers; a three-endpoint deployment then starts its front end."""
    d.servers = {role: f.result() for role, f in d.servers.items()}
    if d.kind != "all-in-one":
        env = {**SERVER_ENV, "SD_API_TOKEN": d.token or "", "GRADIO_TEMP_DIR": d.cache}
        urls = [a for role in ("text_encoder", "diffusion", "decoder")
                for a in (f"--{role.replace('_', '-')}-url", d.servers[role].url)]
        d.servers["ui"] = ServerProcess(*urls, *SERVER_ARGS, "--edge-dir", os.path.join(d.root, "edge"),
                                        "--exports", os.path.join(d.root, "exports"),
                                        name=f"sec-frontend-{'tok' if d.token else 'open'}", env=env, timeout=START_S)
    return d


@pytest.fixture(scope="module", params=["no token", "token"])
def deployments(request, tmp_path_factory):
    """Both deployments, started together (the stage servers load in parallel); per token mode."""
    token = TOKEN if request.param == "token" else None
    out = {}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pending = [start(kind, token, str(tmp_path_factory.mktemp(kind.replace(" ", "-"))), pool)
                   for kind in ("all-in-one", "three endpoints")]
        try:
            for d in pending:
                out[d.kind] = finish(d, pool)
            yield out
        finally:
            for d in pending:
                for s in d.servers.values():
                    if isinstance(s, ServerProcess):
                        s.stop()
                    elif s.done() and s.exception() is None:
                        s.result().stop()


# -- talking to them ---------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    status: int
    text: str  # everything the server sent (for the call API: both answers)
    code: str | None = None  # the error envelope's code
    event: str | None = None  # the call API's last event
    data: object = None  # and its data
    files: list = dataclasses.field(default_factory=list)  # paths in a FileData the server returned


class Ctx:
    """What a case needs at run time: URLs, credentials, uploads, the planted paths."""

    def __init__(self, d: Deployment, headers: dict, cookies: dict | None = None, real: bool = True):
        self.d, self.headers, self.cookies, self.real = d, headers, cookies or {}, real
        self._uploads = {}
        self.client = httpx.Client(headers=headers, cookies=self.cookies, timeout=60)  # one connection per server

    def close(self):
        self.client.close()

    def url(self, role="ui"):
        return self.d.url(role)

    @property
    def root(self):
        return self.d.root

    def http(self, method, path, role=None, timeout=60, **kw):
        url = self.url(role or ROLE.get(path.split("?")[0], "ui")) + path
        try:
            return self.client.request(method, url, timeout=timeout, **kw)
        finally:  # only the cookies this context was given, none a server set
            self.client.cookies = httpx.Cookies(self.cookies)

    def stream(self, method, path, timeout=60):
        return self.client.stream(method, self.url() + path, timeout=timeout)

    def upload(self, data: bytes, name="x.png") -> str:
        """A file uploaded the legitimate way (POST /gradio_api/upload): its cache path."""
        if not self.real:  # the request is refused before any file is read
            return os.path.join(self.d.cache, "0" * 40, name)
        key = (data, name)
        if key not in self._uploads:
            r = self.http("POST", "/gradio_api/upload", files={"files": (name, data, "image/png")})
            r.raise_for_status()
            self._uploads[key] = r.json()[0]
        return self._uploads[key]


def envelope_code(r) -> str | None:
    return text_code(r.text)


def text_code(text: str) -> str | None:
    """The error envelope's code in an answer, if it is one."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get("code")
    return None


def outcome(r) -> Outcome:
    return Outcome(r.status_code, r.text, envelope_code(r))


def file_paths(value) -> list:
    """Paths of FileData values in a Gradio answer."""
    found = []
    if isinstance(value, dict):
        if isinstance(value.get("path"), str):
            found.append(value["path"])
        for v in value.values():
            found += file_paths(v)
    elif isinstance(value, list):
        for v in value:
            found += file_paths(v)
    return found


def gradio_call(ctx: Ctx, api: str, data, *, raw: bytes | None = None) -> Outcome:
    """POST /gradio_api/call/<api>, then read the whole event stream (60 s at most: no hang)."""
    body = raw if raw is not None else json.dumps({"data": data}).encode()  # json.dumps writes NaN
    r = ctx.http("POST", f"/gradio_api/call/{api}", content=body, headers={"content-type": "application/json"})
    if r.status_code != 200:
        return outcome(r)
    stream = ctx.http("GET", f"/gradio_api/call/{api}/{r.json()['event_id']}")
    events = re.findall(r"^event: (\w+)\ndata: (.*)$", stream.text, re.M)
    event, payload = events[-1] if events else (None, None)
    try:
        payload = json.loads(payload) if payload is not None else None
    except ValueError:
        pass
    return Outcome(stream.status_code, r.text + stream.text, None, event, payload, file_paths(payload))


def gradio_queue(ctx: Ctx, api: str, data) -> Outcome:
    """The browser's way in: POST /gradio_api/queue/join, then the session's event stream."""
    fn = fn_index(ctx, api)
    session = uuid.uuid4().hex[:11]
    r = ctx.http("POST", "/gradio_api/queue/join", content=json.dumps(
        {"data": data, "fn_index": fn, "session_hash": session, "event_data": None, "trigger_id": None}).encode(),
        headers={"content-type": "application/json"})
    if r.status_code != 200:
        return outcome(r)
    text = ""
    with ctx.stream("GET", f"/gradio_api/queue/data?session_hash={session}") as s:
        for line in s.iter_lines():
            text += line + "\n"
            if '"process_completed"' in line:
                break
    done = [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: ") and "process_completed" in line]
    if not done:
        return Outcome(s.status_code, r.text + text, None, None, None)
    msg = done[-1]
    event = "complete" if msg.get("success") else "error"
    return Outcome(s.status_code, r.text + text, None, event, (msg.get("output") or {}).get("error"),
                   file_paths(msg.get("output")))


_FN = {}


def fn_index(ctx: Ctx, api: str) -> int:
    key = (ctx.url(), api)
    if key not in _FN:
        config = httpx.get(ctx.url() + "/config", headers={"Authorization": f"Bearer {ctx.d.token}"} if ctx.d.token
                           else {}, timeout=30).json()
        for i, dep in enumerate(config["dependencies"]):
            _FN[(ctx.url(), dep.get("api_name"))] = dep.get("id", i)
    return _FN[key]


def raw_get(ctx: Ctx, path: str, role="ui") -> Outcome:
    """A GET whose path goes out as written (httpx would resolve the dot segments)."""
    u = urllib.parse.urlsplit(ctx.url(role))
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", path, headers=ctx.headers)
        r = conn.getresponse()
        text = r.read().decode("utf-8", "replace")
        return Outcome(r.status, text, text_code(text))
    finally:
        conn.close()


# -- the catalogue -----------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    surface: str  # rest | tensor | gradio | static
    family: str
    name: str
    path: str  # the route it targets (for the token rules and the counts)
    run: object  # run(ctx) -> Outcome
    status: int | tuple  # the answer's status (the call API: the stream's)
    code: str | None = None  # the error envelope's code, where the API defines one
    event: str | None = None  # the call API's last event ("error")
    message: str | None = None  # regex the error message (envelope or event data) must match
    chunked: bool = False  # a body sent without Content-Length
    only: str | None = None  # a deployment kind this case belongs to

    @property
    def id(self):
        return f"{self.surface}/{self.family}/{self.name}"


MISSING = object()


def http_case(surface, family, name, method, path, status, code=None, message=None, role=None, **kw):
    if path == "/api/v1/diffuse":  # the default of 20 steps is over this server's limit
        kw["params"] = {"steps": 2, **kw.get("params", {})}

    def run(ctx):
        args = {k: (v(ctx) if callable(v) else v) for k, v in kw.items()}
        return outcome(ctx.http(method, path, role=role, **args))

    return Case(surface, family, name, path, run, status, code, message=message)


def chunks(total: int, piece=b" "):
    for _ in range(total // 2**16):
        yield piece * 2**16


def multipart_chunks(total: int):
    """A well-formed multipart body (boundary b) whose file part is `total` bytes, sent chunked."""
    yield b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n'
    for name in ("image", "files"):  # the REST form's and Gradio's upload field
        yield f'--b\r\nContent-Disposition: form-data; name="{name}"; filename="i.png"\r\n'.encode()
        yield b"Content-Type: image/png\r\n\r\n"
        yield from chunks(total // 2, b"\0")
        yield b"\r\n"
    yield b"--b--\r\n"


def nan_json(obj) -> bytes:
    return json.dumps(obj).encode()  # NaN and Infinity as JavaScript writes them; the server parses them


TXT2IMG = {"prompt": PROMPT, "steps": 2, "seed": 1, "width": 64, "height": 64}
NAN, INF = float("nan"), float("inf")
I422 = (422, "invalid_parameters")  # what request validation answers


def txt2img_family() -> list:
    bad = {
        "prompt": [(MISSING, *I422), (None, *I422), (123, *I422), (["a"], *I422), ({"a": 1}, *I422),
                   ("a" * (MAX_CHARS + 1), 400, "prompt_too_long"), ("a" * 4001, 400, "prompt_too_long"),
                   (True, *I422)],
        "negative_prompt": [(None, *I422), (5, *I422), ("b" * (MAX_CHARS + 1), 400, "prompt_too_long"),
                            ("b" * 4001, 400, "prompt_too_long"), (["x"], *I422)],
        "steps": [(0, *I422), (-1, *I422), (MAX_STEPS + 1, 400, "too_many_steps"), (100_000, 400, "too_many_steps"),
                  (2**63, 400, "too_many_steps"), (2**70, 400, "too_many_steps"), (1.5, *I422), ("abc", *I422),
                  (None, *I422), ("", *I422), ([2], *I422), (NAN, *I422), (INF, *I422)],
        "guidance_scale": [(-1, *I422), (50.5, *I422), (1e308, *I422), (NAN, *I422), (INF, *I422), (-INF, *I422),
                           ("high", *I422), (None, *I422)],
        "seed": [(-1, *I422), (2**32, *I422), (2**64, *I422), ("x", *I422), (1.5, *I422), ([1], *I422),
                 (NAN, *I422)],
        "scheduler": [("plms", *I422), ("", *I422), (1, *I422), ("../ddim", *I422), ("DDIM", *I422)],
        "width": [(0, *I422), (7, *I422), (-64, *I422), (MAX_SIDE + 1, 400, "size_too_large"),
                  (160, 400, "size_too_large"), (10**6, 400, "size_too_large"), (2**64, 400, "size_too_large"),
                  (70, 400, "invalid_input"), (33, 400, "invalid_input"), ("64px", *I422), (NAN, *I422)],
        "height": [(0, *I422), (MAX_SIDE + 1, 400, "size_too_large"), (10**9, 400, "size_too_large"),
                   (48, 400, "invalid_input"), ("x", *I422)],
        "batch_size": [(0, *I422), (-1, *I422), (MAX_BATCH + 1, 400, "batch_too_large"),
                       (10**6, 400, "batch_too_large"), (2**40, 400, "batch_too_large"), ("two", *I422),
                       (1.5, *I422)],
        "model": [("nope", 404, "unknown_model"), ("../../etc/passwd", 404, "unknown_model"),
                  ("/etc/passwd", 404, "unknown_model"), ("tiny/../tiny", 404, "unknown_model"),
                  ("TINY", 404, "unknown_model"), ("tiny\x00", 404, "unknown_model"),
                  ("link.safetensors", 404, "unknown_model"), ("linkdir", 404, "unknown_model"),
                  ("broken.safetensors", 409, "model_unloadable"), ("a" * 201, *I422), (5, *I422)],
        # unknown fields
        "path": [("/etc/passwd", *I422)], "__proto__": [({}, *I422)], "num_steps": [(5, *I422)],
    }
    cases = []
    for field, values in bad.items():
        for value, status, code in values:
            body = {k: v for k, v in TXT2IMG.items() if k != field}
            if value is not MISSING:
                body[field] = value
            label = "missing" if value is MISSING else short(value)
            cases.append(http_case("rest", "txt2img field", f"{field}={label}", "POST", "/api/v1/txt2img", status,
                                   code, content=nan_json(body), headers={"content-type": "application/json"}))
    return cases + body_family("/api/v1/txt2img", "txt2img body")


def body_family(path, family) -> list:
    """Whole bodies that are not the JSON object a route wants."""
    j = {"content-type": "application/json"}
    bodies = [("not JSON", b"{not json", j, 422, "invalid_parameters"),
              ("a JSON array", b"[1, 2]", j, 422, "invalid_parameters"),
              ("a JSON string", b'"prompt"', j, 422, "invalid_parameters"),
              ("JSON null", b"null", j, 422, "invalid_parameters"),
              ("empty", b"", j, 422, "invalid_parameters"),
              ("nested 100 000 levels", b"[" * 100_000 + b"]" * 100_000, j, 400, "http_error"),
              ("invalid UTF-8", b'{"prompt": "\xff\xfe"}', j, 400, "http_error"),
              ("form-encoded", b"prompt=x", {"content-type": "application/x-www-form-urlencoded"}, 422,
               "invalid_parameters"),
              ("text/plain JSON", b'{"prompt": "x"}', {"content-type": "text/plain"}, 422, "invalid_parameters")]
    return [http_case("rest", family, name, "POST", path, status, code, content=body, headers=headers)
            for name, body, headers, status, code in bodies]


def encode_family() -> list:
    bad = {"prompts": [(MISSING, *I422), ([], *I422), ("x", *I422), ([1], *I422), ([None], *I422), ([["x"]], *I422),
                       (["x"] * (MAX_PROMPTS + 1), 400, "too_many_prompts"), (["x"] * 1000, 400, "too_many_prompts"),
                       (["a" * (MAX_CHARS + 1)], 400, "prompt_too_long"),
                       (["ok", "a" * (MAX_CHARS + 1)], 400, "prompt_too_long"),
                       (["a" * 4001], 400, "prompt_too_long"), ({"0": "x"}, *I422)],
           "dtype": [("int8", *I422), ("float64", *I422), ("bfloat16", *I422), (None, *I422), (16, *I422)],
           "model": [("tiny", *I422)]}
    cases = []
    for field, values in bad.items():
        for value, status, code in values:
            body = {"prompts": ["x"]} if field != "prompts" else {}
            if value is not MISSING:
                body[field] = value
            label = "missing" if value is MISSING else short(value)
            cases.append(http_case("rest", "encode field", f"{field}={label}", "POST", "/api/v1/encode", status, code,
                                   json=body))
    return cases + body_family("/api/v1/encode", "encode body")


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} chars)"


def png_claiming(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (its data is a 1-pixel image's)."""
    import zlib

    real = png(np.zeros((1, 1, 3)))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return real[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + real[33:]


def jpeg(array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


GOOD = png(np.full((64, 64, 3), 90))
MASK = np.zeros((64, 64), np.uint8)
MASK[16:48, 16:48] = 255
GOOD_MASK = png(MASK)
NOT_IMAGES = {"text": b"hello, not an image", "HTML": b"<html><script>alert(1)</script></html>",
              "SVG with an external entity": b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY x SYSTEM '
                                             b'"file:///etc/passwd">]><svg>&x;</svg>',
              "gzip": b"\x1f\x8b\x08\x00" + bytes(40), "ELF": b"\x7fELF" + bytes(60)}


def inpaint_family() -> list:
    form = {"prompt": PROMPT, "steps": "2", "seed": "0"}
    cases = []

    def add(family, name, status, code, image=GOOD, mask=GOOD_MASK, fields=None, drop=(), image_name="i.png"):
        files = {}
        if image is not None:
            files["image"] = (image_name, image, "image/png")
        if mask is not None:
            files["mask"] = ("m.png", mask, "image/png")
        data = {k: v for k, v in {**form, **(fields or {})}.items() if k not in drop}
        cases.append(http_case("rest", family, name, "POST", "/api/v1/inpaint", status, code, files=files, data=data))

    for what in ("image", "mask"):
        other = {"image": GOOD, "mask": GOOD_MASK}
        for name, data in NOT_IMAGES.items():
            add(f"inpaint {what} upload", name, 400, "not_an_image", **{**other, what: data})
        add(f"inpaint {what} upload", "empty", 400, "empty_upload", **{**other, what: b""})
        add(f"inpaint {what} upload", "truncated PNG", 400, "bad_image",
            **{**other, what: (GOOD if what == "image" else GOOD_MASK)[:60]})
        add(f"inpaint {what} upload", "truncated JPEG", 400, "bad_image",
            **{**other, what: jpeg(np.full((64, 64, 3), 90))[:200]})
        add(f"inpaint {what} upload", "200x64", 400, "image_too_large", **{**other, what: png(np.zeros((64, 200, 3)))})
        add(f"inpaint {what} upload", "header claims 100000x100000 (a decompression bomb)", 400, "not_an_image",
            **{**other, what: png_claiming(100_000, 100_000)})
        add(f"inpaint {what} upload", "header claims 5000x5000", 400, "image_too_large",
            **{**other, what: png_claiming(5000, 5000)})
        add(f"inpaint {what} upload", "missing", 422, "invalid_parameters", **{**other, what: None})
    add("inpaint image upload", "filename ../../etc/passwd (not an image)", 400, "not_an_image",
        image=NOT_IMAGES["text"], image_name="../../etc/passwd")
    add("inpaint mask upload", "wrong size", 400, "mask_size", mask=png(MASK[:32]))
    add("inpaint mask upload", "all zero", 400, "empty_mask", mask=png(np.zeros((64, 64))))
    fields = {"steps": [(str(MAX_STEPS + 1), 400, "too_many_steps"), ("0", *I422), ("-1", *I422), ("x", *I422),
                        ("1e9", *I422)],
              "batch_size": [(str(MAX_BATCH + 1), 400, "batch_too_large"), ("0", *I422), ("999999", 400,
                                                                                         "batch_too_large")],
              "guidance_scale": [("nan", *I422), ("inf", *I422), ("-1", *I422), ("51", *I422)],
              "seed": [("-1", *I422), ("4294967296", *I422), ("abc", *I422)],
              "strength": [("0", *I422), ("1.5", *I422), ("nan", *I422)],
              "mask_blur": [("-1", *I422), ("65", *I422), ("inf", *I422)],
              "padding": [("-1", *I422), ("1025", *I422)],
              "scheduler": [("plms", *I422), ("DDIM", *I422)],
              "model": [("nope", 404, "unknown_model"), ("../../etc/passwd", 404, "unknown_model"),
                        ("link.safetensors", 404, "unknown_model")],
              "prompt": [("a" * (MAX_CHARS + 1), 400, "prompt_too_long"), ("a" * 4001, 400, "prompt_too_long")],
              "negative_prompt": [("b" * (MAX_CHARS + 1), 400, "prompt_too_long")],
              "invert_mask": [("maybe", *I422)], "only_masked": [("2", *I422)]}
    for field, values in fields.items():
        for value, status, code in values:
            add("inpaint field", f"{field}={short(value)}", status, code, fields={field: value})
    add("inpaint field", "prompt missing", 422, "invalid_parameters", drop=("prompt",))
    cases.append(http_case("rest", "inpaint body", "JSON instead of a form", "POST", "/api/v1/inpaint", 422,
                           "invalid_parameters", json={"prompt": PROMPT}))
    cases.append(http_case("rest", "inpaint body", "multipart without its boundary", "POST", "/api/v1/inpaint", 400,
                           "http_error", content=b"--x\r\n\r\n", headers={"content-type": "multipart/form-data"}))
    cases.append(http_case("rest", "inpaint body", "multipart cut short", "POST", "/api/v1/inpaint", 422,
                           "invalid_parameters",
                           content=b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx',
                           headers={"content-type": "multipart/form-data; boundary=b"}))
    return cases


def img2img_family() -> list:
    """The same upload and field cases as inpainting, on the route without a mask."""
    form = {"prompt": PROMPT, "steps": "2", "seed": "0"}
    cases = []

    def add(name, status, code, image=GOOD, fields=None, drop=(), **kw):
        files = {} if image is None else {"image": ("i.png", image, "image/png")}
        data = {k: v for k, v in {**form, **(fields or {})}.items() if k not in drop}
        cases.append(http_case("rest", "img2img", name, "POST", "/api/v1/img2img", status, code, files=files,
                               data=data, **kw))

    for name, data in NOT_IMAGES.items():
        add(f"upload {name}", 400, "not_an_image", image=data)
    add("upload empty", 400, "empty_upload", image=b"")
    add("upload truncated PNG", 400, "bad_image", image=GOOD[:60])
    add("upload 200x64", 400, "image_too_large", image=png(np.zeros((64, 200, 3))))
    add("upload claims 100000x100000", 400, "not_an_image", image=png_claiming(100_000, 100_000))
    add("upload missing", 422, "invalid_parameters", image=None)
    for field, value, status, code in [("steps", str(MAX_STEPS + 1), 400, "too_many_steps"), ("steps", "0", *I422),
                                       ("batch_size", str(MAX_BATCH + 1), 400, "batch_too_large"),
                                       ("guidance_scale", "nan", *I422), ("seed", "-1", *I422),
                                       ("strength", "0", *I422), ("strength", "1.5", *I422),
                                       ("scheduler", "plms", *I422), ("model", "../../etc/passwd", 404, "unknown_model"),
                                       ("prompt", "a" * (MAX_CHARS + 1), 400, "prompt_too_long"),
                                       ("negative_prompt", "b" * (MAX_CHARS + 1), 400, "prompt_too_long")]:
        add(f"{field}={short(value)}", status, code, fields={field: value})
    add("prompt missing", 422, "invalid_parameters", drop=("prompt",))
    add("batch 2 asked for as one PNG", 406, "not_acceptable", fields={"batch_size": "2"},
        headers={"accept": "image/png"})
    return cases


def paths_family() -> list:
    out = []
    for method, path, status, code in [
            ("GET", "/api/v1/nope", 404, "not_found"), ("POST", "/api/v1/img2vid", 404, "not_found"),
            ("GET", "/api/v2/models", 404, "not_found"), ("DELETE", "/api/v1/txt2img", 405, "method_not_allowed"),
            ("GET", "/api/v1/txt2img", 405, "method_not_allowed"), ("PUT", "/api/v1/encode", 405, "method_not_allowed"),
            ("POST", "/api/v1/health", 405, "method_not_allowed"),
            ("POST", "/api/v1/models", 405, "method_not_allowed"),
            ("PATCH", "/api/v1/diffuse", 405, "method_not_allowed"),
            ("GET", "/api/v1/%2e%2e/%2e%2e/etc/passwd", 404, "not_found"),
            ("GET", "/api/v1/models/..%2f..%2fetc%2fpasswd", 404, "not_found")]:
        out.append(http_case("rest", "paths and methods", f"{method} {path}", method, path, status, code))
    for path in ("/api/v1/../../etc/passwd", "/api/v1/txt2img/../../webapp/server.py"):
        out.append(Case("rest", "paths and methods", f"raw GET {path}", path, lambda ctx, p=path: raw_get(ctx, p),
                        404, "not_found"))
    return out


def not_hosted_family() -> list:
    """Three endpoints: each server hosts its own stage only."""
    j = {"json": {"prompt": PROMPT}}
    cases = []
    for path, role, kw in [("/api/v1/diffuse", "ui", {"content": wire.encode({"context": CTX})}),
                           ("/api/v1/decode", "ui", {"content": wire.encode({"latents": LAT8})}),
                           ("/api/v1/encode", "ui", {"json": {"prompts": ["x"]}}),
                           ("/api/v1/encode_image", "ui", {"content": wire.encode({"image": IMG64})}),
                           ("/api/v1/txt2img", "diffusion", j), ("/api/v1/txt2img", "text_encoder", j),
                           ("/api/v1/encode", "diffusion", {"json": {"prompts": ["x"]}}),
                           ("/api/v1/diffuse", "decoder", {"content": wire.encode({"context": CTX})}),
                           ("/api/v1/decode", "diffusion", {"content": wire.encode({"latents": LAT8})})]:
        if "content" in kw:
            kw = {**kw, "headers": {"content-type": wire.MEDIA_TYPE}}
        case = http_case("rest", "stage not hosted", f"{path} to the {role} server", "POST", path, 404, "not_hosted",
                         role=role, **kw)
        case.only = "three endpoints"
        cases.append(case)
    case = http_case("rest", "stage not hosted", "/api/v1/img2img to the diffusion server", "POST", "/api/v1/img2img",
                     404, "not_hosted", role="diffusion", files={"image": ("i.png", GOOD, "image/png")},
                     data={"prompt": PROMPT})
    case.only = "three endpoints"
    cases.append(case)
    return cases


# tensor messages ------------------------------------------------------------------------
CTX = np.zeros((1, 77, 64), np.float16)
LAT8 = np.zeros((1, 8, 8, 4), np.float16)
IMG64 = np.zeros((1, 64, 64, 3), np.uint8)
MAIN = {"/api/v1/diffuse": ("context", CTX), "/api/v1/decode": ("latents", LAT8),
        "/api/v1/encode_image": ("image", IMG64)}  # each route's own tensor


def message(header, data=b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def spec(dtype="F32", shape=(1,), offsets=(0, 4), name="x"):
    return {name: {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}}


def malformed_messages(name: str, good: np.ndarray) -> dict:
    """{label: body}: broken messages around the route's own tensor name."""
    s = lambda **kw: spec(name=name, **kw)  # noqa: E731
    f4 = bytes(4)
    good_msg = wire.encode({name: good})
    overlap = spec(name=name, dtype="F32", shape=[1], offsets=[0, 4])
    overlap["other"] = {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}
    nan, inf, ninf = (good.astype(np.float32).copy() for _ in range(3))
    nan.flat[0], inf.flat[0], ninf.flat[-1] = np.nan, np.inf, -np.inf
    return {
        "7 bytes": b"\0" * 7, "random bytes": bytes(range(256)) * 4,
        "header length 2**40": struct.pack("<Q", 2**40) + b"{}",
        "header length 2**64-1": struct.pack("<Q", 2**64 - 1) + b"{}", "header length 0": struct.pack("<Q", 0) + f4,
        "header over 64 KiB": message(b"{" + b" " * 70_000 + b"}"),
        "header not JSON": message(b"{not json"), "header invalid UTF-8": message(b'{"\xff\xfe": 1}'),
        "header a JSON array": message(b"[]"), "header a JSON string": message(b'"x"'),
        "header a number": message(b"1"),
        "header 30 000 levels deep": message(b"[" * 30000 + b"]" * 30000),
        "__metadata__ a list": message({"__metadata__": [1], **s()}, f4),
        "__metadata__ a number value": message({"__metadata__": {"a": 1}, **s()}, f4),
        "__metadata__ 6 000 objects deep": message(b'{"__metadata__":' + b'{"a":' * 6000 + b'"x"' + b"}" * 6001),
        "spec a number": message({name: 5}),
        "spec without data_offsets": message({name: {"dtype": "F32", "shape": [1]}}, f4),
        "spec with an extra key": message({name: {**s()[name], "path": "/etc/passwd"}}, f4),
        **{f"dtype {d!r}": message(s(dtype=d), f4) for d in ("F64", "BF16", "I64", "BOOL", "f32", None)},
        "dtype a list": message(s(dtype=["F32"]), f4), "dtype an object": message(s(dtype={"F32": 1}), f4),
        "shape [-1]": message(s(shape=[-1]), f4), "shape [1.5]": message(s(shape=[1.5]), f4),
        "shape [true]": message(s(shape=[True]), f4), "shape ['1']": message(s(shape=["1"]), f4),
        "shape a number": message({name: {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}}, f4),
        "shape [2**64]": message(s(shape=[2**64], offsets=[0, 0])),
        "shape [2**70, 0]": message(s(shape=[2**70, 0], offsets=[0, 0])),
        "shape 2**40 x 2**40 x 0": message(s(shape=[2**40, 2**40, 0], offsets=[0, 0])),
        "9 dimensions": message(s(shape=[1] * 9), f4),
        "offsets past the data": message(s(offsets=[0, 10**9]), f4), "offsets reversed": message(s(offsets=[4, 0]), f4),
        "offsets one number": message({name: {"dtype": "F32", "shape": [1], "data_offsets": [4]}}, f4),
        "offsets strings": message(s(offsets=["0", "4"]), f4), "offsets negative": message(s(offsets=[-4, 0]), f4),
        "offsets floats": message(s(offsets=[0.0, 4.0]), f4),
        "byte count differs from the shape": message(s(shape=[2]), f4),
        "overlapping tensors": message(overlap, bytes(8)),
        "data cut short": good_msg[:-3],
        "NaN": wire.encode({name: nan}), "+Inf": wire.encode({name: inf}), "-Inf": wire.encode({name: ninf}),
    }


def tensor_family() -> list:
    cases = []
    w = {"content-type": wire.MEDIA_TYPE}
    for path, (name, good) in MAIN.items():
        route = path.rsplit("/", 1)[1]
        cases.append(http_case("tensor", f"{route} message", "empty body", "POST", path, 400, "empty_body",
                               content=b"", headers=w))
        for label, body in malformed_messages(name, good).items():
            cases.append(http_case("tensor", f"{route} message", label, "POST", path, 400, "bad_tensor_message",
                                   content=body, headers=w))
        for ctype in ("text/plain", "application/json", "multipart/form-data; boundary=x",
                      "application/x-www-form-urlencoded", "image/png"):
            status, code = (415, "wrong_content_type")
            if route == "encode_image" and ctype == "image/png":
                status, code = 400, "not_an_image"  # an image body: it is read as one
            cases.append(http_case("tensor", f"{route} content type", ctype, "POST", path, status, code,
                                   content=wire.encode({name: good}), headers={"content-type": ctype}))
    return cases + diffuse_family() + decode_family() + encode_image_family()


def t(**arrays) -> bytes:
    return wire.encode(arrays)


def f16(*shape, fill=0.0):
    return np.full(shape, fill, np.float16)


def diffuse_family() -> list:
    w = {"content-type": wire.MEDIA_TYPE}
    il = np.zeros((1, 8, 8, 4), np.float32)
    cases = []
    tensors_ = [
        ("no tensors", t(), "missing_tensor"), ("only image_latents", t(image_latents=il), "missing_tensor"),
        ("unknown tensor 'weights'", t(context=CTX, weights=CTX), "unknown_tensor"),
        ("unknown tensor named 1000 a's", t(context=CTX, **{"a" * 1000: CTX}), "unknown_tensor"),
        ("tensor named ../../etc/passwd", t(**{"../../etc/passwd": CTX}), "unknown_tensor"),
        ("context int32", t(context=np.zeros((1, 77, 64), np.int32)), "wrong_dtype"),
        ("context uint8", t(context=np.zeros((1, 77, 64), np.uint8)), "wrong_dtype"),
        ("context [1, 77, 768]", t(context=f16(1, 77, 768)), "wrong_shape"),
        ("context [77, 64]", t(context=f16(77, 64)), "wrong_shape"),
        ("context [0, 77, 64]", t(context=f16(0, 77, 64)), "wrong_shape"),
        ("context [1, 76, 64]", t(context=f16(1, 76, 64)), "wrong_shape"),
        ("context [1, 77, 64, 1]", t(context=f16(1, 77, 64, 1)), "wrong_shape"),
        ("context a scalar", t(context=np.float16(1)), "wrong_shape"),
        (f"context batch {MAX_BATCH + 1}", t(context=f16(MAX_BATCH + 1, 77, 64)), "batch_too_large"),
        ("context batch 50", t(context=f16(50, 77, 64)), "batch_too_large"),
        ("unconditional batch 3 for 2", t(context=f16(2, 77, 64), unconditional_context=f16(3, 77, 64)), "wrong_shape"),
        ("unconditional [1, 77, 32]", t(context=CTX, unconditional_context=f16(1, 77, 32)), "wrong_shape"),
        ("unconditional int32", t(context=CTX, unconditional_context=np.zeros((1, 77, 64), np.int32)), "wrong_dtype"),
        ("mask without image_latents", t(context=CTX, mask=MASK), "missing_tensor"),
        ("masked_image_latents without image_latents", t(context=CTX, masked_image_latents=il), "missing_tensor"),
        ("mask of the wrong size", t(context=CTX, image_latents=il, mask=MASK[:32]), "mask_size"),
        ("mask at latent size", t(context=CTX, image_latents=il, mask=MASK[::8, ::8]), "mask_size"),
        ("mask 3-D", t(context=CTX, image_latents=il, mask=MASK[None]), "mask_size"),
        ("all-zero mask", t(context=CTX, image_latents=il, mask=np.zeros((64, 64), np.uint8)), "empty_mask"),
        ("mask int32", t(context=CTX, image_latents=il, mask=MASK.astype(np.int32)), "wrong_dtype"),
        ("image_latents 3 channels", t(context=CTX, image_latents=np.zeros((1, 8, 8, 3), np.float32)), "wrong_shape"),
        ("image_latents 3-D", t(context=CTX, image_latents=np.zeros((8, 8, 4), np.float32)), "wrong_shape"),
        ("image_latents batch 3 for 1", t(context=CTX, image_latents=np.zeros((3, 8, 8, 4), np.float32)),
         "wrong_shape"),
        ("image_latents [1, 0, 8, 4]", t(context=CTX, image_latents=np.zeros((1, 0, 8, 4), np.float32)), "wrong_shape"),
        ("image_latents int32", t(context=CTX, image_latents=np.zeros((1, 8, 8, 4), np.int32)), "wrong_dtype"),
        ("image_latents 17x17 (136 px)", t(context=CTX, image_latents=np.zeros((1, 17, 17, 4), np.float16)),
         "size_too_large"),
        ("image_latents 2x2 (16 px)", t(context=CTX, image_latents=np.zeros((1, 2, 2, 4), np.float16)), "bad_size"),
        ("image_latents 5x5 (40 px)", t(context=CTX, image_latents=np.zeros((1, 5, 5, 4), np.float16)), "bad_size"),
        ("masked_image_latents of another size",
         t(context=CTX, image_latents=il, masked_image_latents=np.zeros((1, 4, 4, 4), np.float32)), "wrong_shape"),
    ]
    for label, body, code in tensors_:
        cases.append(http_case("tensor", "diffuse tensors", label, "POST", "/api/v1/diffuse", 400, code, content=body,
                               headers=w))
    query = {"steps": [0, -3, "x"], "seed": [-1, 2**32, "abc", 1.5],
             "guidance_scale": ["nan", "inf", -1, 51], "scheduler": ["plms", ""], "strength": [0, 1.5, "nan"],
             "mask_blur": [-1, 65], "dtype": ["int8", "float64"], "height": [7, "x"], "width": [0],
             "model": ["a" * 201]}
    for field, values in query.items():
        for value in values:
            cases.append(http_case("tensor", "diffuse query", f"{field}={short(value)}", "POST", "/api/v1/diffuse", 422,
                                   "invalid_parameters", content=t(context=CTX), headers=w, params={field: value}))
    for field, value, status, code in [("steps", MAX_STEPS + 1, 400, "too_many_steps"),
                                       ("steps", 100_000, 400, "too_many_steps"),
                                       ("height", MAX_SIDE + 1, 400, "size_too_large"),
                                       ("height", 100_000, 400, "size_too_large"),
                                       ("width", MAX_SIDE + 8, 400, "size_too_large"),
                                       ("width", 50, 400, "invalid_input"), ("height", 48, 400, "invalid_input"),
                                       ("model", "nope", 404, "unknown_model"),
                                       ("model", "../../etc/passwd", 404, "unknown_model"),
                                       ("model", "link.safetensors", 404, "unknown_model"),
                                       ("model", "linkdir", 404, "unknown_model"),
                                       ("model", "broken.safetensors", 409, "model_unloadable")]:
        cases.append(http_case("tensor", "diffuse query", f"{field}={short(value)}", "POST", "/api/v1/diffuse", status,
                               code, content=t(context=CTX), headers=w, params={field: value}))
    return cases


def decode_family() -> list:
    w = {"content-type": wire.MEDIA_TYPE}
    items = [("no tensors", t(), "missing_tensor"), ("only a context", t(context=CTX), "missing_tensor"),
             ("latents 3 channels", t(latents=f16(1, 8, 8, 3)), "wrong_shape"),
             ("latents 3-D", t(latents=f16(8, 8, 4)), "wrong_shape"),
             ("latents batch 0", t(latents=f16(0, 8, 8, 4)), "wrong_shape"),
             ("latents [1, 0, 8, 4]", t(latents=f16(1, 0, 8, 4)), "wrong_shape"),
             ("latents int32", t(latents=np.zeros((1, 8, 8, 4), np.int32)), "wrong_dtype"),
             ("latents uint8", t(latents=np.zeros((1, 8, 8, 4), np.uint8)), "wrong_dtype"),
             ("latents 2x2 (16 px)", t(latents=f16(1, 2, 2, 4)), "bad_size"),
             ("latents 5x5 (40 px)", t(latents=f16(1, 5, 5, 4)), "bad_size"),
             ("latents 17x17 (136 px)", t(latents=f16(1, 17, 17, 4)), "size_too_large"),
             ("latents 4x64 (512 px wide)", t(latents=f16(1, 4, 64, 4)), "size_too_large"),
             (f"latents batch {MAX_BATCH + 1}", t(latents=f16(MAX_BATCH + 1, 8, 8, 4)), "batch_too_large"),
             ("latents batch 400", t(latents=f16(400, 8, 8, 4)), "batch_too_large")]
    return [http_case("tensor", "decode tensors", label, "POST", "/api/v1/decode", 400, code, content=body, headers=w)
            for label, body, code in items]


def encode_image_family() -> list:
    w = {"content-type": wire.MEDIA_TYPE}
    u8 = lambda *s: np.zeros(s, np.uint8)  # noqa: E731
    items = [("no tensors", t(), "bad_image"), ("only latents", t(latents=LAT8), "bad_image"),
             ("image int32", t(image=np.zeros((1, 64, 64, 3), np.int32)), "bad_image"),
             ("float image 255", t(image=np.full((1, 64, 64, 3), 255, np.float32)), "bad_image"),
             ("float image -3", t(image=np.full((1, 64, 64, 3), -3, np.float16)), "bad_image"),
             ("image 3-D", t(image=u8(64, 64, 3)), "bad_image"),
             ("image 4 channels", t(image=u8(1, 64, 64, 4)), "bad_image"),
             ("image 1 channel", t(image=u8(1, 64, 64, 1)), "bad_image"),
             ("image batch 0", t(image=u8(0, 64, 64, 3)), "wrong_shape"),
             (f"image batch {MAX_BATCH + 1}", t(image=u8(MAX_BATCH + 1, 64, 64, 3)), "batch_too_large"),
             ("image 200x64", t(image=u8(1, 64, 200, 3)), "size_too_large"),
             ("image 64x1024", t(image=u8(1, 1024, 64, 3)), "size_too_large"),
             ("image 40x40", t(image=u8(1, 40, 40, 3)), "bad_size"),
             ("image 16x16", t(image=u8(1, 16, 16, 3)), "bad_size")]
    cases = [http_case("tensor", "encode_image tensors", label, "POST", "/api/v1/encode_image", 400, code, content=body,
                       headers=w) for label, body, code in items]
    images = [("image/png", "not an image", b"hello", 400, "not_an_image"),
              ("image/png", "empty", b"", 400, "empty_body"),
              ("image/png", "200x64", png(np.zeros((64, 200, 3))), 400, "image_too_large"),
              ("image/png", "truncated", GOOD[:60], 400, "bad_image"),
              ("image/png", "header claims 100000x100000 (a decompression bomb)", png_claiming(100_000, 100_000),
               400, "not_an_image"),
              ("image/png", "header claims 5000x5000", png_claiming(5000, 5000), 400, "image_too_large"),
              ("image/png", "40x40", png(np.zeros((40, 40, 3))), 400, "bad_size"),
              ("image/jpeg", "not an image", b"\xff\xd8\xff junk", 400, "not_an_image"),
              ("image/jpeg", "truncated", jpeg(np.zeros((64, 64, 3)))[:150], 400, "bad_image"),
              ("image/svg+xml", "SVG with an external entity", NOT_IMAGES["SVG with an external entity"], 400,
               "not_an_image")]
    for ctype, label, body, status, code in images:
        cases.append(http_case("tensor", "encode_image upload", f"{ctype} {label}", "POST", "/api/v1/encode_image",
                               status, code, content=body, headers={"content-type": ctype}))
    return cases


# body size ------------------------------------------------------------------------------
def body_size_family() -> list:
    cases = []
    routes = [("rest", "/api/v1/txt2img", "application/json"), ("rest", "/api/v1/encode", "application/json"),
              ("rest", "/api/v1/inpaint", "multipart/form-data; boundary=b"),
              ("rest", "/api/v1/img2img", "multipart/form-data; boundary=b"),
              ("tensor", "/api/v1/diffuse", wire.MEDIA_TYPE),
              ("tensor", "/api/v1/decode", wire.MEDIA_TYPE), ("tensor", "/api/v1/encode_image", wire.MEDIA_TYPE),
              ("gradio", "/gradio_api/upload", "multipart/form-data; boundary=b"),
              ("gradio", "/gradio_api/queue/join", "application/json"),
              ("gradio", "/gradio_api/call/txt2img", "application/json"),
              ("gradio", "/gradio_api/call/img2img", "application/json"),
              ("gradio", "/gradio_api/run/count_tokens", "application/json")]
    for surface, path, ctype in routes:
        h = {"content-type": ctype}
        cases.append(http_case(surface, "body size", f"{path} {MAX_BODY + 2**16} bytes", "POST", path, 413,
                               "body_too_large", content=b" " * (MAX_BODY + 2**16), headers=h))
        gen = multipart_chunks if "multipart" in ctype else chunks
        case = http_case(surface, "body size", f"{path} chunked, {MAX_BODY + 2**17} bytes", "POST", path, 413,
                         "body_too_large", content=lambda ctx, gen=gen: gen(MAX_BODY + 2**17), headers=h)
        case.chunked = True
        cases.append(case)
    for surface, path, ctype in (routes[3], routes[6]):
        cases.append(http_case(surface, "body size", f"{path} limit + 1 byte", "POST", path, 413, "body_too_large",
                               content=b"\0" * (MAX_BODY + 1), headers={"content-type": ctype}))
    cases.append(http_case("gradio", "body size", "an upload of limit + 64 KiB", "POST", "/gradio_api/upload", 413,
                           "body_too_large", files={"files": ("big.png", os.urandom(MAX_BODY + 2**16), "image/png")}))
    return cases


# the Gradio API -------------------------------------------------------------------------
# The LoRA picker's value when none is picked: the raw call API fills no input in for a client.
NO_LORAS = {"headers": ["LoRA", "weight", "changes"], "data": []}


def txt2img_args(**kw):
    args = dict(prompt=PROMPT, negative="", steps=2, guidance=7.5, seed=1, scheduler="ddim", batch=1, width=64,
                height=64, model="tiny", previews=False, loras=NO_LORAS)
    return list({**args, **kw}.values())


SLIDER = r"greater than maximum|less than minimum"


def call_case(family, name, api, data, message, event="error", via="call"):
    """data: a list, or fn(ctx) -> list. message: regex the error (or the answer) must match."""
    def run(ctx):
        args = data(ctx) if callable(data) else data
        return (gradio_call if via == "call" else gradio_queue)(ctx, api, args)

    return Case("gradio", family, name, f"/gradio_api/{via}/{api}", run, 200, event=event, message=message)


def secrets(ctx: Ctx) -> dict:
    """{label: a server path a client must not reach}."""
    root = ctx.root
    up = ctx.upload(GOOD, "up.png")
    return {"/etc/passwd": "/etc/passwd", "/proc/self/environ": "/proc/self/environ",
            "/proc/self/cmdline": "/proc/self/cmdline",
            "the server's source": os.path.join(REPO, "webapp", "server.py"),
            "the server's auth module": os.path.join(REPO, "webapp", "auth.py"),
            "a secret outside the cache": os.path.join(root, "outside", "secret.txt"),
            "a symlink outside the cache": os.path.join(root, "outside", "passwd-link"),
            "a symlink in the cache to a secret": os.path.join(ctx.d.cache, "planted", "secret-link.png"),
            "../ from an upload": up + "/../../../../../../../../etc/passwd",
            "../ from the cache": os.path.join(ctx.d.cache, "..", "outside", "secret.txt"),
            "relative ../../etc/passwd": "../../../../../../../../etc/passwd", "~/.bashrc": "~/.bashrc",
            "the root folder": "/", "file:///etc/passwd": "file:///etc/passwd",
            "a NUL byte": "/etc/passwd\x00.png", "a 5000-character path": "/" + "a" * 5000,
            "loopback URL (the API)": ctx.url() + "/api/v1/models",
            "cloud metadata URL": "http://169.254.169.254/latest/meta-data/"}


SECRET_LABELS = ["/etc/passwd", "/proc/self/environ", "/proc/self/cmdline", "the server's source",
                 "the server's auth module", "a secret outside the cache", "a symlink outside the cache",
                 "a symlink in the cache to a secret", "../ from an upload", "../ from the cache",
                 "relative ../../etc/passwd", "~/.bashrc", "the root folder", "file:///etc/passwd", "a NUL byte",
                 "a 5000-character path", "loopback URL (the API)", "cloud metadata URL"]
FILE_REFUSED = (r"[Cc]annot move .* to the gradio cache dir|failed validation|embedded null byte|not uploaded|"
                r"[Ii]nvalid|not .*(found|exist)|File")


def fd(path):
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def editor(ctx, background=None, layers=(), composite=None):
    return {"background": background if background is not None else fd(ctx.upload(GOOD, "bg.png")),
            "layers": list(layers), "composite": composite}


def inpaint_args(ed, mask=None, **kw):
    args = dict(editor=ed, mask=mask, prompt=PROMPT, negative="", steps=2, guidance=7.5, seed=1, scheduler="ddim",
                batch=1, strength=1.0, blur=0, invert=False, only_masked=False, padding=32, model="tiny",
                previews=False, loras=NO_LORAS)
    return list({**args, **kw}.values())


def img2img_args(image, **kw):
    args = dict(image=image, prompt=PROMPT, negative="", steps=2, guidance=7.5, seed=1, scheduler="ddim", batch=1,
                strength=0.75, model="tiny", previews=False, loras=NO_LORAS)
    return list({**args, **kw}.values())


def painted_layer(ctx):
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[16:48, 16:48] = 255
    return fd(ctx.upload(png(layer), "layer.png"))


def gradio_family() -> list:
    cases = []
    over = MAX_CHARS + 1
    t2i = {"prompt": [("a" * over, rf"{over} characters"), ("a" * 5000, r"5000 characters")],
           "negative": [("b" * over, rf"negative prompt has {over} characters")],
           "steps": [(0, SLIDER), (MAX_STEPS + 1, rf"{SLIDER}|over this server's limit"), (-1, SLIDER), (1e9, SLIDER),
                     (NAN, r"Steps must be a finite number, got nan"), (INF, rf"{SLIDER}|must be a finite number"), ("abc", r"[Ee]rror|number|float"),
                     (None, r"[Ee]rror|number|None")],
           "guidance": [(NAN, r"guidance scale must be between 0 and 50, got nan"), (INF, SLIDER), (-1, SLIDER),
                        (21, SLIDER), ("x", r"[Ee]rror|number|float")],
           "seed": [(2**40, r"seed must be at most"), (2**64, r"seed must be at most"), (INF, r"[Ee]rror|seed|inf"),
                    ("x", r"[Ee]rror|number|float")],
           "scheduler": [("plms", r"not in the list of choices|plms"),
                         ("../../etc/passwd", r"not in the list of choices"),
                         (1, r"not in the list of choices|[Ee]rror")],
           "batch": [(0, SLIDER), (MAX_BATCH + 1, SLIDER), (-1, SLIDER),
                     (NAN, r"Batch size must be a finite number, got nan"), (1000, SLIDER)],
           "width": [(0, SLIDER), (160, SLIDER), (10**6, SLIDER), (NAN, r"Width must be a finite number, got nan"),
                     (48, r"multiple of 32")],
           "height": [(-64, SLIDER), (MAX_SIDE + 1, SLIDER), (NAN, r"Height must be a finite number, got nan"),
                      (40, r"multiple of 32")],
           "model": [("nope", r"not in the list of choices"), ("../../etc/passwd", r"not in the list of choices"),
                     ("link.safetensors", r"not in the list of choices"),
                     ("broken.safetensors", r"'broken.safetensors' could not be loaded"), (5, r"not in the list")]}
    for field, values in t2i.items():
        for value, message in values:
            cases.append(call_case("txt2img call", f"{field}={short(value)}", "txt2img", txt2img_args(**{field: value}),
                                   message))
    # a Textbox turns what it gets into text (None: the empty prompt): made, not refused
    for field, value in [("prompt", None), ("prompt", 123), ("prompt", ["a"]), ("negative", 5), ("negative", None)]:
        cases.append(call_case("txt2img call", f"{field}={short(value)}", "txt2img", txt2img_args(**{field: value}),
                               r"done: seeds 1", event="complete"))
    for field, value, message in [("steps", MAX_STEPS + 1, SLIDER), ("batch", MAX_BATCH + 1, SLIDER),
                                  ("width", 160, SLIDER), ("prompt", "a" * over, rf"{over} characters"),
                                  ("guidance", NAN, r"guidance scale must be between")]:
        cases.append(call_case("txt2img queue (the browser's way)", f"{field}={short(value)}", "txt2img",
                               txt2img_args(**{field: value}) + [None], message, via="queue"))  # + the tab's State
    cases.append(call_case("txt2img call shape", "no inputs", "txt2img", [], r"didn't receive enough input values"))
    cases.append(call_case("txt2img call shape", "4 of 12 inputs", "txt2img", txt2img_args()[:4],
                           r"didn't receive enough input values"))
    for name, raw, status in [("body not JSON", b"{not json", 422), ("no data field", b'{"inputs": []}', 422),
                              ("data an object", b'{"data": {"prompt": "x"}}', 422),
                              ("data null", b'{"data": null}', 422), ("data a string", b'{"data": "x"}', 422)]:
        cases.append(Case("gradio", "txt2img call shape", name, "/gradio_api/call/txt2img",
                          lambda ctx, raw=raw: gradio_call(ctx, "txt2img", None, raw=raw), status))
    for name, api, status, code in [("an unknown api name", "img2vid", 404, "not_found"),
                                    ("an api name of 300 characters", "x" * 300, 404, "not_found"),
                                    ("a path as the api name", "..%2F..%2Fetc%2Fpasswd", 404, None)]:
        cases.append(Case("gradio", "call API names", name, f"/gradio_api/call/{api}",
                          lambda ctx, api=api: gradio_call(ctx, api, []), status, code))
    # every file input: each secret path
    for label in SECRET_LABELS:
        get = lambda ctx, label=label: secrets(ctx)[label]  # noqa: E731
        cases.append(call_case("png_info file path", label, "png_info", lambda ctx, g=get: [fd(g(ctx))], FILE_REFUSED))
        cases.append(call_case("inpaint background path", label, "inpaint",
                               lambda ctx, g=get: inpaint_args(editor(ctx, background=fd(g(ctx)))), FILE_REFUSED))
    for label in ("/etc/passwd", "/proc/self/environ", "the server's source", "a secret outside the cache",
                  "a symlink in the cache to a secret", "../ from an upload", "loopback URL (the API)"):
        get = lambda ctx, label=label: secrets(ctx)[label]  # noqa: E731
        cases.append(call_case("inpaint layer path", label, "inpaint",
                               lambda ctx, g=get: inpaint_args(editor(ctx, layers=[fd(g(ctx))])), FILE_REFUSED))
        cases.append(call_case("inpaint composite path", label, "inpaint",
                               lambda ctx, g=get: inpaint_args(editor(ctx, layers=[painted_layer(ctx)],
                                                                      composite=fd(g(ctx)))), FILE_REFUSED))
        cases.append(call_case("inpaint mask upload path", label, "inpaint",
                               lambda ctx, g=get: inpaint_args(editor(ctx), fd(g(ctx))), FILE_REFUSED))
    filedata = [("path a number", {"path": 5, "meta": {"_type": "gradio.FileData"}}),
                ("no path", {"meta": {"_type": "gradio.FileData"}}),
                ("url only, to the loopback API", lambda ctx: {"url": ctx.url() + "/api/v1/models", "path": None,
                                                               "meta": {"_type": "gradio.FileData"}}),
                ("a bare string path", "/etc/passwd"), ("a list of FileData", [fd("/etc/passwd")])]
    for name, value in filedata:
        cases.append(call_case("png_info file value", name, "png_info",
                               lambda ctx, v=value: [v(ctx) if callable(v) else v],
                               FILE_REFUSED + r"|path|[Vv]alidation"))
    # inpainting inputs
    text = lambda ctx: fd(ctx.upload(NOT_IMAGES["text"], "text.png"))  # noqa: E731
    big = lambda ctx: fd(ctx.upload(png(np.zeros((200, 64, 3))), "big.png"))  # noqa: E731
    inp = [("no image", lambda ctx: inpaint_args(None), r"upload an image to inpaint"),
           ("editor without a background",
            lambda ctx: inpaint_args({"background": None, "layers": [], "composite": None}),
            r"upload an image to inpaint"),
           ("editor a string", lambda ctx: inpaint_args("x"), r"[Ee]rror|upload an image|dict|[Vv]alidation"),
           ("editor a number", lambda ctx: inpaint_args(5), r"[Ee]rror|upload an image|dict|[Vv]alidation"),
           ("layers an object",
            lambda ctx: inpaint_args({"background": fd(ctx.upload(GOOD, "bg.png")), "layers": {"a": 1},
                                      "composite": None}), r"[Ee]rror|[Vv]alidation|list"),
           ("background not an image", lambda ctx: inpaint_args(editor(ctx, background=text(ctx))),
            r"[Ee]rror|image|identify"),
           ("background 200x64",
            lambda ctx: inpaint_args(editor(ctx, background=big(ctx), layers=[painted_layer(ctx)])),
            r"height 200 is over this server's limit of 128"),
           ("mask upload 200x64", lambda ctx: inpaint_args(editor(ctx), big(ctx)),
            r"height 200 is over this server's limit of 128"),
           ("mask upload not an image", lambda ctx: inpaint_args(editor(ctx), text(ctx)), r"[Ee]rror|image|identify"),
           ("nothing painted", lambda ctx: inpaint_args(editor(ctx)), r"the mask is empty"),
           ("nothing painted, only the masked region", lambda ctx: inpaint_args(editor(ctx), only_masked=True),
            r"the mask is empty")]
    for field, value, message in [("steps", MAX_STEPS + 1, SLIDER), ("batch", MAX_BATCH + 1, SLIDER),
                                  ("prompt", "a" * over, rf"{over} characters"),
                                  ("negative", "b" * over, rf"negative prompt has {over} characters"),
                                  ("guidance", NAN, r"guidance scale must be between"),
                                  ("seed", 2**40, r"seed must be at most"),
                                  ("strength", 0, SLIDER), ("strength", 2, SLIDER), ("blur", 65, SLIDER),
                                  ("padding", 1000, SLIDER), ("padding", -8, SLIDER),
                                  ("scheduler", "plms", r"not in the list of choices"),
                                  ("model", "nope", r"not in the list of choices")]:
        inp.append((f"{field}={short(value)}", lambda ctx, f=field, v=value: inpaint_args(
            editor(ctx, layers=[painted_layer(ctx)]), **{f: v}), message))
    for name, data, message in inp:
        cases.append(call_case("inpaint call", name, "inpaint", data, message))
    start = lambda ctx: fd(ctx.upload(GOOD, "start.png"))  # noqa: E731
    i2i = [("no image", lambda ctx: img2img_args(None), r"upload an image to start from"),
           ("image not an image", lambda ctx: img2img_args(text(ctx)), r"[Ee]rror|image|identify"),
           ("image 200x64", lambda ctx: img2img_args(big(ctx)), r"height 200 is over this server's limit of 128")]
    for label in ("/etc/passwd", "/proc/self/environ", "the server's source", "../ from an upload",
                  "loopback URL (the API)"):
        i2i.append((f"image path {label}", lambda ctx, label=label: img2img_args(fd(secrets(ctx)[label])),
                    FILE_REFUSED))
    for field, value, message in [("steps", MAX_STEPS + 1, SLIDER), ("batch", MAX_BATCH + 1, SLIDER),
                                  ("prompt", "a" * over, rf"{over} characters"),
                                  ("negative", "b" * over, rf"negative prompt has {over} characters"),
                                  ("guidance", NAN, r"guidance scale must be between"),
                                  ("seed", 2**40, r"seed must be at most"),
                                  ("strength", 0, SLIDER), ("strength", 2, SLIDER),
                                  ("scheduler", "plms", r"not in the list of choices"),
                                  ("model", "nope", r"not in the list of choices")]:
        i2i.append((f"{field}={short(value)}", lambda ctx, f=field, v=value: img2img_args(start(ctx), **{f: v}),
                    message))
    for name, data, message in i2i:
        cases.append(call_case("img2img call", name, "img2img", data, message))
    for name, value, message in [("an unknown model", "nope", r"not in the list of choices|unknown model"),
                                 ("a path", "../../etc/passwd", r"not in the list of choices|unknown model"),
                                 ("a symlinked model", "link.safetensors", r"not in the list of choices|unknown model"),
                                 ("None", None, r"[Ee]rror|unknown model|choices"),
                                 ("a number", 5, r"not in the list of choices|unknown model")]:
        cases.append(call_case("select_model call", name, "select_model", [value], message))
    for name, value in [("None", None), ("a number", 123), ("a list", ["a"]), ("an object", {"a": 1})]:
        cases.append(call_case("count_tokens call", name, "count_tokens", [value], r"\d+/75 tokens", event="complete"))
    cases.append(call_case("count_tokens call", "900 000 characters", "count_tokens", ["red " * 225_000],
                           r"over the 300-character limit", event="complete"))
    return cases + upload_family() + file_route_family() + queue_family() + config_family()


def upload_family() -> list:
    def up(name, ctype="image/png", data=None, params=None):
        def run(ctx):
            r = ctx.http("POST", "/gradio_api/upload", files={"files": (name, data or GOOD, ctype)}, params=params)
            o = outcome(r)
            if r.status_code == 200:  # stored, under its base name, inside the cache: check where
                o.files = r.json()
            return o
        return run

    cases = []
    for name, label in [(f"../../../../../../tmp/{ESCAPE}", "../ to /tmp"),
                        ("/etc/passwd", "an absolute path"), ("..", "'..'"), (".", "'.'"),
                        ("x" * 300 + ".png", "300 characters"), ("a\x00b.png", "a NUL byte"),
                        ("..\\..\\..\\windows.png", "backslashes"), ("%2e%2e%2fescape.png", "percent-encoded ../"),
                        ]:
        cases.append(Case("gradio", "upload file name", label, "/gradio_api/upload", up(name), (200, 400), None))
    cases.append(Case("gradio", "upload file name", "empty (a form field, not a file)", "/gradio_api/upload", up(""),
                      400, "bad_request"))
    for label, params in [("upload_id ../../x", {"upload_id": "../../x"}),
                          ("upload_id 2000 characters", {"upload_id": "u" * 2000})]:
        cases.append(Case("gradio", "upload file name", label, "/gradio_api/upload", up("a.png", params=params),
                          (200, 400)))
    for label, kw, status in [("no files field", {"data": {"x": "1"}}, 400),
                              ("JSON instead of multipart", {"json": {"files": ["/etc/passwd"]}}, 400),
                              ("multipart without boundary", {"content": b"--x\r\n", "headers": {
                                  "content-type": "multipart/form-data"}}, 400),
                              ("multipart cut short", {
                                  "content": b'--b\r\nContent-Disposition: form-data; name="files"; '
                                             b'filename="a.png"\r\n\r\nxx',
                                  "headers": {"content-type": "multipart/form-data; boundary=b"}}, (200, 400))]:
        cases.append(http_case("gradio", "upload body", label, "POST", "/gradio_api/upload", status, **kw))
    return cases


def file_route_family() -> list:
    """GET /gradio_api/file=<path>: only files in Gradio's cache (Gradio's 403), and no URLs
    (403 url_not_served: Gradio would fetch a public URL for anyone)."""
    cases = []
    urls = {"loopback URL (the API)", "cloud metadata URL", "file:///etc/passwd", "a public URL", "IPv6 loopback URL"}
    for label in SECRET_LABELS + ["percent-encoded ../ from an upload", "a public URL", "IPv6 loopback URL"]:
        def run(ctx, label=label):
            if label == "percent-encoded ../ from an upload":
                path = urllib.parse.quote(ctx.upload(GOOD, "up.png")) + "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd"
            elif label == "a public URL":
                path = "http://93.184.215.14/"
            elif label == "IPv6 loopback URL":
                path = f"http://[::1]:{urllib.parse.urlsplit(ctx.url()).port}/api/v1/models"
            else:
                path = urllib.parse.quote(secrets(ctx)[label], safe="/:")
            if "/.." in path:  # as written: httpx would resolve the dot segments
                return raw_get(ctx, f"/gradio_api/file={path}")
            return outcome(ctx.http("GET", f"/gradio_api/file={path}"))

        cases.append(Case("gradio", "file= route", label, "/gradio_api/file=", run, 403,
                          "url_not_served" if label in urls else None))
    return cases


def queue_family() -> list:
    j = {"content-type": "application/json"}
    cases = []
    for label, body, status in [("empty object", b"{}", 422), ("not JSON", b"{x", 422), ("a list", b"[]", 422),
                                ("fn_index 9999", b'{"data": [], "fn_index": 9999, "session_hash": "s1"}', 404),
                                ("fn_index -1", b'{"data": [], "fn_index": -1, "session_hash": "s1"}', 404),
                                ("fn_index a string", b'{"data": [], "fn_index": "x", "session_hash": "s1"}', 422),
                                ("data a string", b'{"data": "x", "fn_index": 0, "session_hash": "s1"}', 422),
                                ("session_hash an object", b'{"data": [], "fn_index": 0, "session_hash": {}}', 422)]:
        cases.append(http_case("gradio", "queue join", label, "POST", "/gradio_api/queue/join", status, content=body,
                               headers=j))
    for label, method, path, kw, status in [
            ("queue data without a session", "GET", "/gradio_api/queue/data", {}, 422),
            ("cancel, empty", "POST", "/gradio_api/cancel", {"json": {}}, 422),
            ("cancel an unknown event", "POST", "/gradio_api/cancel", {"json": {"session_hash": "x", "fn_index": 0,
                                                                                "event_id": "nope"}}, (200, 404, 422)),
            ("an unknown stream event", "POST", "/gradio_api/stream/nope", {"json": {"data": []}}, (404, 422)),
            ("close an unknown stream", "POST", "/gradio_api/stream/nope/close", {}, 404),
            ("heartbeat of an unknown session", "GET", "/gradio_api/heartbeat/%2e%2e%2f", {"timeout": 5},
             (200, 307, 404)),
            ("upload progress of an unknown id", "GET", "/gradio_api/upload_progress?upload_id=../../x", {"timeout": 5},
             (200, 404))]:
        case = http_case("gradio", "queue routes", label, method, path, status, **kw)
        if "heartbeat" in label or "progress" in label:
            case.run = stream_probe(method, path)
        cases.append(case)
    for label, path in [("the call stream of an unknown event id", "/gradio_api/call/txt2img/no-such-event"),
                        ("the queue stream of an unknown session",
                         "/gradio_api/queue/data?session_hash=no-such-session")]:
        cases.append(Case("gradio", "queue routes", label, path.split("?")[0], lambda ctx, p=path: event_stream(ctx, p),
                          200, event="error", message=r"no such session or event"))
    return cases


def event_stream(ctx: Ctx, path: str) -> Outcome:
    """A whole event stream (60 s at most): its last event (the queue's data lines: theirs)."""
    r = ctx.http("GET", path)
    events = re.findall(r"^event: (\w+)\ndata: (.*)$", r.text, re.M)
    if events:
        event, data = events[-1][0], json.loads(events[-1][1])
    else:
        lines = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
        last = lines[-1] if lines else {}
        event = "error" if last.get("msg") == "unexpected_error" or last.get("success") is False else None
        data = last.get("message")
    return Outcome(r.status_code, r.text, envelope_code(r), event, data)


def stream_probe(method, path):
    """A route that may answer with an endless event stream: its status and first bytes."""
    def run(ctx):
        try:
            with ctx.stream(method, path, timeout=10) as r:
                text = ""
                for chunk in r.iter_text():
                    text += chunk
                    if len(text) > 200 or "\n\n" in text:
                        break
                return Outcome(r.status_code, text, text_code(text))
        except httpx.ReadTimeout:
            return Outcome(-1, "read timeout", None)
    return run


def config_family() -> list:
    cases = []
    for label, path, status in [("deep link ../", "/config?deep_link=../../../../etc/passwd", (200, 400, 404)),
                                ("deep link absolute", "/config?deep_link=/etc/passwd", (200, 400, 404)),
                                ("page ../", "/config?page=../../etc", (200, 404)),
                                ("gradio_api/info all_endpoints junk", "/gradio_api/info?all_endpoints=junk",
                                 (200, 422)),
                                ("assets ../", "/assets/%2e%2e/%2e%2e/webapp/server.py", (403, 404)),
                                ("static ../", "/static/%2e%2e/%2e%2e/webapp/server.py", (403, 404)),
                                ("favicon ../", "/favicon.ico/%2e%2e/%2e%2e/etc/passwd", (404, 405)),
                                ("custom_component ../", "/custom_component/x/%2e%2e/%2e%2e/server.py", (403, 404)),
                                ("svelte ../", "/svelte/%2e%2e/%2e%2e/%2e%2e/webapp/server.py", (403, 404))]:
        cases.append(http_case("gradio", "config and assets", label, "GET", path, status))
    return cases


# static ---------------------------------------------------------------------------------
def static_family() -> list:
    cases = []
    for mount in ("/edge", "/exports"):
        for label, path in [("%2e%2e to the repo", "/%2e%2e/%2e%2e/webapp/server.py"),
                            ("..%2f to the repo", "/..%2f..%2fwebapp%2fserver.py"),
                            ("%2e%2e to /etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
                            ("link to /etc/passwd", "/passwd"), ("link to the server's source", "/server.py"),
                            ("link to a secret", "/secret.txt"), ("link to /", "/up/etc/passwd"),
                            ("encoded absolute path", "/%2fetc%2fpasswd"),
                            ("backslashes", "/..%5c..%5cwebapp%5cserver.py"),
                            ("a NUL byte", "/index.html%00.png"), ("....//", "/....//....//etc/passwd")]:
            cases.append(http_case("static", f"{mount} paths", label, "GET", mount + path, 404))
        for label, path in [("raw ../ to the repo", "/../../webapp/server.py"),
                            ("raw ../ to the secret", "/../outside/secret.txt")]:
            cases.append(Case("static", f"{mount} paths", label, mount + path,
                              lambda ctx, p=mount + path: raw_get(ctx, p), 404))
    return cases


def docs_family() -> list:
    """/api/docs/<name> serves three named files of the fastapi-offline package, nothing else."""
    cases = []
    for label, name in [("%2e%2e to the repo", "%2e%2e%2f%2e%2e%2fwebapp%2fserver.py"),
                        ("..%2f to /etc/passwd", "..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd"),
                        ("encoded absolute path", "%2fetc%2fpasswd"), ("backslashes", "..%5c..%5cwebapp%5cserver.py"),
                        ("a NUL byte", "swagger-ui.css%00"), ("another case", "SWAGGER-UI.CSS"),
                        ("a file next to the assets", "__init__.py"), ("the package's own code", "..%2fcore.py"),
                        ("a name with a query", "redoc.standalone.js.map")]:
        cases.append(http_case("static", "/api/docs assets", label, "GET", f"/api/docs/{name}", 404, "not_found"))
    for label, path in [("raw ../ to the repo", "/api/docs/../../webapp/server.py"),
                        ("raw ../ to the secret", "/api/docs/../../outside/secret.txt")]:
        cases.append(Case("static", "/api/docs assets", label, path, lambda ctx, p=path: raw_get(ctx, p),
                          404, "not_found"))
    return cases


def catalogue(kind: str) -> list:
    cases = (txt2img_family() + encode_family() + inpaint_family() + img2img_family() + paths_family() + not_hosted_family()
             + tensor_family() + body_size_family() + gradio_family() + static_family() + docs_family())
    cases = [c for c in cases if c.only in (None, kind)]
    ids = [c.id for c in cases]
    dupes = [i for i, n in collections.Counter(ids).items() if n > 1]
    assert not dupes, dupes
    return cases


# -- checking an answer ------------------------------------------------------------------
def secrets_in(text: str, token: str | None) -> list:
    found = [m for m in (MARKER, SOURCE_LINE, PASSWD_LINE) if m in text]
    if token and token in text:
        found.append("the token")
    return found


def check(case: Case, o: Outcome, d: Deployment, unauth: dict | None = None) -> list:
    """The problems with one answer (empty: as expected)."""
    problems = []
    if not 0 < o.status < 500:
        problems.append(f"status {o.status}")
    leaked = secrets_in(o.text, d.token)
    if leaked:
        problems.append(f"disclosed {leaked}")
    for path in o.files:  # a FileData the server answered with: inside its cache, nothing of ours in it
        if not os.path.realpath(path).startswith(os.path.realpath(d.cache) + os.sep):
            problems.append(f"file outside the cache: {path}")
    if unauth is not None:
        want, code = unauth["status"], unauth["code"]
        if o.status != want or (code and o.code != code):
            problems.append(f"without a token: {o.status} {o.code}, expected {want} {code}")
        return problems
    statuses = case.status if isinstance(case.status, tuple) else (case.status,)
    if o.status not in statuses:
        problems.append(f"status {o.status}, expected {case.status}: {o.text[:160]!r}")
    if case.code and o.code != case.code:
        problems.append(f"code {o.code}, expected {case.code}: {o.text[:160]!r}")
    if case.event:
        said = o.data.get("error") if isinstance(o.data, dict) else o.data  # Gradio: {"error": message, ...}
        if o.event != case.event:
            problems.append(f"event {o.event}, expected {case.event}: {o.text[-200:]!r}")
        elif case.event == "error" and not (isinstance(said, str) and said.strip()):
            problems.append(f"the error event names no problem: {o.data!r}")
        elif case.message and not re.search(case.message, said if isinstance(said, str) else json.dumps(said)):
            problems.append(f"message {said!r} does not match {case.message!r}")
    elif case.message and o.status >= 400 and not re.search(case.message, o.text):
        problems.append(f"message does not match {case.message!r}: {o.text[:160]!r}")
    return problems


CREDENTIALS = [("no credentials", {}, {}, "missing_token"),
               ("a wrong bearer token", {"Authorization": "Bearer wrong"}, {}, "wrong_token"),
               ("the token in the wrong case", lambda: {"X-API-Token": TOKEN.upper()}, {}, "wrong_token"),
               ("a bearer scheme without a token", {"Authorization": "Bearer"}, {}, "missing_token"),
               ("basic auth with the token", lambda: {"Authorization": "Basic " + TOKEN}, {}, "missing_token"),
               ("a forged session cookie", {}, {"sd_ui_session": "0" * 64}, "missing_token"),
               ("the token as the session cookie", {}, lambda: {"sd_ui_session": TOKEN}, "missing_token")]


def unauthorized(case: Case, creds_code: str) -> dict:
    """The answer to a case sent to a server with a token, without it: what stays open answers
    as before; a body over the limit by its Content-Length is refused before anything (413);
    everything else is 401 (the REST API's own codes, or Gradio's login_required) before the
    body is read."""
    if case.path.startswith(OPEN_PREFIXES):
        return {"status": case.status, "code": case.code}
    if case.family == "body size" and not case.chunked:
        return {"status": 413, "code": "body_too_large"}
    if case.path.startswith("/api/v1/"):
        return {"status": 401, "code": creds_code}
    if case.path.startswith("/api/"):
        return {"status": case.status, "code": case.code}
    return {"status": 401, "code": "login_required"}


def run_catalogue(d: Deployment, cases: list) -> dict:
    """Every case with the deployment's token (or none), and on a server with a token every case
    again without it. Returns {"failures": [...], "answers": Counter of statuses, "seconds": ...}."""
    t0 = time.monotonic()
    failures, answers = [], collections.Counter()
    auth = {"Authorization": f"Bearer {d.token}"} if d.token else {}

    def run(case, ctx):
        try:
            o = case.run(ctx)
        except httpx.HTTPError as e:  # a hang (60 s) or a dropped connection
            o = Outcome(-1, f"no answer: {type(e).__name__}: {e}")
        answers[o.status] += 1
        return o

    ctx = Ctx(d, auth)
    for case in cases:
        failures += [f"[{d.name}] {case.id}: {p}" for p in check(case, run(case, ctx), d)]
    ctx.close()
    if d.token:
        contexts = [Ctx(d, h() if callable(h) else h, c() if callable(c) else c, real=False)
                    for _, h, c, _ in CREDENTIALS]
        for k, case in enumerate(cases):
            label, _, _, code = CREDENTIALS[k % len(CREDENTIALS)]
            o = run(case, contexts[k % len(CREDENTIALS)])
            failures += [f"[{d.name}, {label}] {case.id}: {p}" for p in check(case, o, d, unauthorized(case, code))]
        for c in contexts:
            c.close()
    return {"failures": failures, "answers": answers, "seconds": time.monotonic() - t0}


# -- warm-up, health, memory -------------------------------------------------------------
def normal_use(d: Deployment) -> list:
    """What a client normally does: REST txt2img and inpaint, the stages, the Gradio API.
    Returns the problems (empty: all worked)."""
    ctx = Ctx(d, {"Authorization": f"Bearer {d.token}"} if d.token else {})
    problems = []

    def expect(what, ok):
        if not ok:
            problems.append(f"[{d.name}] normal use: {what} failed")

    r = ctx.http("GET", "/api/v1/health", headers={"Authorization": ""})
    expect("health", r.status_code == 200 and r.json()["status"] == "ok")
    r = ctx.http("POST", "/api/v1/txt2img", json={"prompt": PROMPT, "steps": 2, "seed": 1}, timeout=180)
    expect("REST txt2img", r.status_code == 200 and r.json()["seeds"] == [1])
    r = ctx.http("POST", "/api/v1/inpaint", files={"image": ("i.png", GOOD, "image/png"), "mask": ("m.png", GOOD_MASK,
                 "image/png")}, data={"prompt": PROMPT, "steps": "2", "seed": "0"}, timeout=180)
    expect("REST inpaint", r.status_code == 200)
    r = ctx.http("POST", "/api/v1/encode", json={"prompts": [PROMPT]})
    expect("encode", r.status_code == 200)
    r = ctx.http("POST", "/api/v1/diffuse", content=wire.encode({"context": CTX}), params={"steps": 2, "seed": 3},
                 headers={"content-type": wire.MEDIA_TYPE}, timeout=180)
    expect("diffuse", r.status_code == 200 and r.headers.get("x-seeds") == "3")
    r = ctx.http("POST", "/api/v1/decode", content=wire.encode({"latents": LAT8}),
                 headers={"content-type": wire.MEDIA_TYPE})
    expect("decode", r.status_code == 200 and r.headers["content-type"] == "image/png")
    r = ctx.http("POST", "/api/v1/encode_image", content=GOOD, headers={"content-type": "image/png"})
    expect("encode_image", r.status_code == 200)
    o = gradio_call(ctx, "txt2img", txt2img_args())
    expect("Gradio txt2img", o.event == "complete" and "done: seeds 1" in o.text)
    o = gradio_call(ctx, "inpaint", inpaint_args(editor(ctx, layers=[painted_layer(ctx)])))
    expect("Gradio inpaint", o.event == "complete" and "done: seeds" in o.text)
    o = gradio_call(ctx, "count_tokens", [PROMPT])
    expect("Gradio count_tokens", o.event == "complete" and "7/75 tokens" in o.text)
    r = ctx.http("GET", "/edge/", headers={"Authorization": ""})
    expect("the static /edge/ without a token", r.status_code == 200 and "edge ok" in r.text)
    for role in d.servers:
        r = httpx.get(d.url(role) + "/api/v1/health", timeout=30)
        expect(f"{role} health", r.status_code == 200 and r.json()["status"] == "ok")
    return problems


def cache_copies(d: Deployment) -> list:
    """Files in the deployment's Gradio cache holding something of the server's."""
    hits = []
    for folder, _, files in os.walk(d.cache):
        for f in files:
            p = os.path.join(folder, f)
            if os.path.islink(p):
                continue  # planted by this test
            try:
                with open(p, "rb") as fh:
                    text = fh.read(2**20).decode("utf-8", "replace")
            except OSError:
                continue
            if secrets_in(text, d.token):
                hits.append(p)
    return hits


def escaped_uploads(d: Deployment) -> list:
    """Where the upload named ../../../tmp/ESCAPE would land outside the cache."""
    found = [p for p in (os.path.join("/tmp", ESCAPE), os.path.join(os.path.dirname(d.root), ESCAPE))
             if os.path.exists(p)]
    return found + [os.path.join(folder, f) for folder, _, files in os.walk(d.root) for f in files
                    if f == ESCAPE and not folder.startswith(d.cache)]


FIGURES: dict = {}


@pytest.mark.parametrize("kind", ["all-in-one", "three endpoints"])
def test_catalogue(deployments, kind):
    d = deployments[kind]
    cases = catalogue(kind)
    assert len(cases) >= 300, len(cases)
    warm = normal_use(d)
    assert not warm, warm
    rss_warm = d.rss()
    result = run_catalogue(d, cases)
    after = normal_use(d)
    rss_after = d.rss()
    copies, escaped = cache_copies(d), escaped_uploads(d)
    by_surface = collections.Counter(c.surface for c in cases)
    FIGURES[d.name] = figures = {
        "distinct bad inputs": len(cases), "by surface": dict(by_surface),
        "requests": sum(result["answers"].values()), "answers": dict(sorted(result["answers"].items())),
        "5xx": sum(n for s, n in result["answers"].items() if s >= 500 or s < 0),
        "failures": len(result["failures"]), "files disclosed": len(copies) + len(escaped),
        "seconds": round(result["seconds"], 1),
        "rss MB after warm-up": {k: round(v / 2**20) for k, v in rss_warm.items()},
        "rss MB after": {k: round(v / 2**20) for k, v in rss_after.items()},
    }
    print(f"\n{d.name}: {json.dumps(figures)}")
    problems = result["failures"] + after + [f"copied into the cache: {p}" for p in copies] + [
        f"an upload escaped the cache: {p}" for p in escaped]
    for role, before in rss_warm.items():
        if rss_after[role] > before * (1 + RSS_TOLERANCE):
            problems.append(f"{role} RSS {before / 2**20:.0f} MB after warm-up, {rss_after[role] / 2**20:.0f} MB after")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:80])


@pytest.fixture(scope="module", autouse=True)
def summary():
    """The figures the README cites, printed at the end of the module (pytest -s)."""
    yield
    for kind in ("all-in-one", "three endpoints"):
        cases = catalogue(kind)
        families = len({(c.surface, c.family) for c in cases})
        print(f"\n{kind}: {len(cases)} distinct bad inputs in {families} families: "
              f"{dict(collections.Counter(c.surface for c in cases))}")
    for name, f in FIGURES.items():
        print(f"{name}: {f['requests']} requests, {f['5xx']} 5xx, {f['files disclosed']} files disclosed, "
              f"{f['failures']} failures, {f['seconds']} s; RSS MB after warm-up {f['rss MB after warm-up']}, "
              f"after {f['rss MB after']}")


def test_catalogue_counts():
    """At least 300 distinct bad inputs on each deployment, every id unique (catalogue() checks)."""
    for kind in ("all-in-one", "three endpoints"):
        cases = catalogue(kind)
        assert len(cases) >= 300, (kind, len(cases))
        assert {c.surface for c in cases} == {"rest", "tensor", "gradio", "static"}


def test_the_checks_catch_what_they_are_for(tmp_path):
    """A 5xx, a disclosed secret, a file outside the cache, a wrong code and a silent error event
    are each reported."""
    d = Deployment("all-in-one", TOKEN, str(tmp_path), {})
    case = Case("rest", "f", "n", "/api/v1/txt2img", None, 400, "prompt_too_long")
    assert check(case, Outcome(400, "{}", "prompt_too_long"), d) == []
    assert check(case, Outcome(500, "", None), d)
    for leak in (MARKER, SOURCE_LINE, PASSWD_LINE + ":root:/root:/bin/bash", TOKEN):
        assert any("disclosed" in p for p in check(case, Outcome(400, leak, "prompt_too_long"), d))
    assert check(case, Outcome(400, "{}", "prompt_too_long", files=["/etc/passwd"]), d)
    assert check(case, Outcome(422, "{}", "invalid_parameters"), d)
    call = Case("gradio", "f", "n", "/gradio_api/call/txt2img", None, 200, event="error", message="limit")
    assert check(call, Outcome(200, "", None, "error", {"error": "over the limit"}), d) == []
    assert check(call, Outcome(200, "", None, "error", {"error": None}), d)
    assert check(call, Outcome(200, "", None, "complete", ["x"]), d)
    assert check(case, Outcome(401, "", "missing_token"), d, {"status": 401, "code": "missing_token"}) == []
    assert check(case, Outcome(422, "", "invalid_parameters"), d, {"status": 401, "code": "missing_token"})
