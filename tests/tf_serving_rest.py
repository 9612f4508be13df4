"""TF Serving's REST layer, for tests: a predict request's JSON -> tensors -> a SavedModel
signature -> JSON, by the rules TF Serving documents (tensorflow_serving/g3doc/api_rest.md).

TF Serving itself is a C++ server with no wheel; what the clients depend on is this mapping, so
the tests run the exported signatures behind it:

* `POST /v1/models/<name>[/versions/<v>]:predict` with {"signature_name", "inputs": {...}}
  (the columnar form; the clients send no "instances" rows);
* a JSON value {"b64": "..."} is binary: its decoded bytes become a DT_STRING element; numbers
  take the dtype of the signature's input;
* the answer is {"outputs": <value>} when the signature has one output (its name left out),
  else {"outputs": {name: value}}; an output whose name ends in "_bytes" is written as
  {"b64": ...} per element;
* any failure is {"error": message} with a 4xx status (TF Serving answers 400 for a bad input
  and for a failing op such as an assertion on the input).

TF Serving sends no CORS headers; a page on another origin reaches it through a proxy that adds
them (the README's ingress note). `cors_origin` makes this server answer as such a proxy does.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import re
import threading

import numpy as np
import tensorflow as tf


def _strings(value):
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ValueError(f"a binary value is {{\"b64\": ...}}, got keys {sorted(value)}")
        return base64.b64decode(value["b64"], validate=True)
    if isinstance(value, list):
        return [_strings(v) for v in value]
    if isinstance(value, str):
        return value.encode()
    raise ValueError(f"a DT_STRING input takes strings or {{\"b64\": ...}}, got {type(value).__name__}")


def decode_inputs(request: dict, fn) -> dict:
    """{name: tensor} for signature `fn` (a loaded SavedModel's signature) from a request body."""
    if "inputs" not in request:
        raise ValueError("this REST layer takes the columnar form: {\"inputs\": {...}}")
    specs = fn.structured_input_signature[1]
    given = request["inputs"]
    unknown, missing = sorted(set(given) - set(specs)), sorted(set(specs) - set(given))
    if unknown or missing:
        raise ValueError(f"inputs {unknown} are not in the signature, {missing} are missing")
    out = {}
    for name, spec in specs.items():
        if spec.dtype == tf.string:
            out[name] = tf.constant(_strings(given[name]), tf.string)
        else:
            out[name] = tf.constant(np.asarray(given[name], spec.dtype.as_numpy_dtype))
    return out


def _json_value(name, tensor):
    array = tensor.numpy()
    if name.endswith("_bytes"):
        return [{"b64": base64.b64encode(x).decode("ascii")} for x in array.reshape(-1)] if array.ndim else \
            {"b64": base64.b64encode(array.item()).decode("ascii")}
    return array.tolist()


def encode_outputs(outputs: dict) -> dict:
    if len(outputs) == 1:
        (name, tensor), = outputs.items()
        return {"outputs": _json_value(name, tensor)}
    return {"outputs": {name: _json_value(name, t) for name, t in outputs.items()}}


def predict(saved_model, body: bytes) -> tuple[int, dict]:
    """(HTTP status, JSON answer) for a predict request body on a loaded SavedModel."""
    try:
        request = json.loads(body)
        signature = request.get("signature_name") or "serving_default"
        if signature not in saved_model.signatures:
            return 400, {"error": f"Serving signature name: \"{signature}\" not found in signature def"}
        fn = saved_model.signatures[signature]
        return 200, encode_outputs(fn(**decode_inputs(request, fn)))
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
        message = e.message if isinstance(e, tf.errors.OpError) else str(e)
        return 400, {"error": message}


class _Handler(http.server.BaseHTTPRequestHandler):
    PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/\d+)?:predict$")

    def do_POST(self):  # noqa: N802 - http.server's naming
        m = self.PATH.match(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not m or m["name"] not in self.server.models:
            status, answer = 404, {"error": f"Servable not found for request: {self.path}"}
        else:
            with self.server.lock:  # one request at a time, as a single-model test server
                status, answer = predict(self.server.models[m["name"]], body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._cors()
        self.end_headers()
        self.wfile.write(data)

    def do_OPTIONS(self):  # noqa: N802 - a CORS preflight, answered by the proxy in front of TF Serving
        self.send_response(204 if self.server.cors_origin else 405)
        self._cors()
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _cors(self):
        if self.server.cors_origin:
            self.send_header("Access-Control-Allow-Origin", self.server.cors_origin)
            self.send_header("Access-Control-Allow-Methods", "POST")
            self.send_header("Access-Control-Allow-Headers", "Content-Type")

    def log_message(self, *args):
        pass


class TFServingREST:
    """A loopback HTTP server with TF Serving's predict route over {name: loaded SavedModel}."""

    def __init__(self, models: dict, cors_origin: str | None = None):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler))
        self.httpd.models, self.httpd.lock, self.httpd.cors_origin = models, threading.Lock(), cors_origin
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def model_url(self, name: str) -> str:
        return f"{self.url}/v1/models/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
