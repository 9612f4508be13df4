"""Hugging Face Inference Endpoints: one custom handler for every role of the deployment.

The endpoint runtime imports `handler.py` from the repository root, builds
`EndpointHandler(path)` once (`path`: where it checked the repository out) and calls the object
with each request's JSON body as a dict, `{"inputs": ..., "parameters": {...}}`; what the call
returns goes back as JSON, and an exception becomes an error answer. `SD_ENDPOINT_ROLE` picks
what the endpoint serves, the roles keras-sd-serving ships one handler each for:

    all          "inputs": a prompt; "parameters": the txt2img fields of the REST API, plus
                 "image" (base64 PNG/JPEG: img2img) and "mask" (with "image": inpainting)
    inpainting   the same, for an endpoint that only inpaints ("image" and "mask" required)
    text_encoder "inputs": a prompt or a list of them -> {"tensors": base64 `context` message}
    diffusion    "inputs": base64 tensor message (`context`, ...) ; "parameters": /diffuse's
                 query fields -> {"tensors": base64 `latents` message, "seeds": [...]}
    decoder      "inputs": base64 `latents` message -> {"images": [base64 PNG]}; with
                 "parameters": {"task": "encode_image"} and a base64 image: the image latents

Tensors are the web app's wire format (webapp.wire: the safetensors layout, float16 by default)
in base64, because these endpoints take and give JSON: a 77x768 float16 context is 158 KB
that way, against about 1 MB as a JSON list of numbers.

Why not a second implementation: every call runs the web app's own route in this process
(an ASGI call, no socket), so an endpoint meets exactly the web app's limits, checks, error
codes, seeds and chain, and the two cannot drift. The model: `SD_MODEL` if set, else `path`
when it holds a diffusers folder or a checkpoint file, else the embedded default model.
"""

from __future__ import annotations

import base64
import binascii
import json
import os

ROLES = ("all", "inpainting", "text_encoder", "diffusion", "decoder")
COMPONENT = {"all": "all", "inpainting": "all", "text_encoder": "text_encoder", "diffusion": "diffusion",
             "decoder": "decoder"}
WIRE = "application/x-safetensors"


class EndpointError(ValueError):
    """A request the endpoint refuses: `status` and `code` are the web app's for the same input."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


def _model_in(path: str | None) -> str:
    if os.environ.get("SD_MODEL"):
        return os.environ["SD_MODEL"]
    if path and os.path.isfile(os.path.join(path, "model_index.json")):
        return path
    if path and os.path.isdir(path):
        singles = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".ckpt")))
        if len(singles) == 1:
            return os.path.join(path, singles[0])
    return "tiny"


def _b64(text, what: str) -> bytes:
    if not isinstance(text, str):
        raise EndpointError(400, "bad_input", f"{what} must be a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise EndpointError(400, "bad_base64", f"{what} is not valid base64") from None


class EndpointHandler:
    """The Inference Endpoints contract: `EndpointHandler(path)`, then `handler(data)`."""

    def __init__(self, path: str = "", *, role: str | None = None, engine=None, config=None):
        from fastapi.testclient import TestClient

        from webapp.server import Config, create_app

        self.role = role or os.environ.get("SD_ENDPOINT_ROLE", "all")
        if self.role not in ROLES:
            raise ValueError(f"SD_ENDPOINT_ROLE must be one of {', '.join(ROLES)}, got {self.role!r}")
        # The endpoint's own front door does the authentication; the routes see no token.
        config = config or Config(model=_model_in(path), component=COMPONENT[self.role], ui=False, token="")
        self.app = create_app(config, engine)
        self.client = TestClient(self.app, raise_server_exceptions=False)

    def __call__(self, data: dict) -> dict:
        if not isinstance(data, dict):
            raise EndpointError(400, "bad_input", f"the request body must be a JSON object, got {type(data).__name__}")
        inputs, parameters = data.get("inputs"), data.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise EndpointError(400, "bad_input", "'parameters' must be a JSON object")
        if inputs is None:
            raise EndpointError(400, "missing_inputs", "the request body needs 'inputs'")
        return getattr(self, f"_{self.role}")(inputs, dict(parameters))

    # -- the roles --------------------------------------------------------------------------

    def _all(self, prompt, parameters):
        if not isinstance(prompt, str):
            raise EndpointError(400, "bad_input", f"'inputs' must be the prompt (a string) for role {self.role}")
        image, mask = parameters.pop("image", None), parameters.pop("mask", None)
        if self.role == "inpainting" and (image is None or mask is None):
            raise EndpointError(400, "missing_image", "an inpainting endpoint needs parameters 'image' and 'mask'")
        if mask is not None and image is None:
            raise EndpointError(400, "missing_image", "parameter 'mask' needs 'image' too")
        if image is None:
            return self._json(self.client.post("/api/v1/txt2img", json={"prompt": prompt, **parameters},
                                               headers={"accept": "application/json"}))
        files = {"image": ("image", _b64(image, "parameter 'image'"))}
        if mask is not None:
            files["mask"] = ("mask", _b64(mask, "parameter 'mask'"))
        form = {"prompt": prompt, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in parameters.items()}}
        route = "/api/v1/inpaint" if mask is not None else "/api/v1/img2img"
        return self._json(self.client.post(route, data=form, files=files, headers={"accept": "application/json"}))

    _inpainting = _all

    def _text_encoder(self, prompts, parameters):
        prompts = [prompts] if isinstance(prompts, str) else prompts
        answer = self.client.post("/api/v1/encode", json={"prompts": prompts, **parameters})
        return {"tensors": self._tensors(answer)}

    def _diffusion(self, tensors, parameters):
        answer = self.client.post("/api/v1/diffuse", params=parameters, content=_b64(tensors, "'inputs'"),
                                  headers={"content-type": WIRE})
        return {"tensors": self._tensors(answer), "seeds": [int(s) for s in answer.headers["x-seeds"].split(",")]}

    def _decoder(self, tensors, parameters):
        task = parameters.pop("task", "decode")
        if task == "encode_image":
            answer = self.client.post("/api/v1/encode_image", content=_b64(tensors, "'inputs'"),
                                      headers={"content-type": "image/png"})
            return {"tensors": self._tensors(answer)}
        if task != "decode":
            raise EndpointError(400, "bad_task", f"task must be 'decode' or 'encode_image', got {task!r}")
        if parameters:
            raise EndpointError(400, "bad_input", f"decode takes no parameters, got {sorted(parameters)}")
        answer = self.client.post("/api/v1/decode", content=_b64(tensors, "'inputs'"), headers={"content-type": WIRE})
        self._check(answer)
        if answer.headers["content-type"].startswith("image/png"):
            return {"images": [base64.b64encode(answer.content).decode()]}
        return answer.json()

    # -- answers ----------------------------------------------------------------------------

    @staticmethod
    def _check(answer):
        if answer.status_code >= 400:
            try:
                err = answer.json()["error"]
                code, message = err["code"], err["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "error", answer.text[:500]
            raise EndpointError(answer.status_code, code, message)

    def _json(self, answer) -> dict:
        self._check(answer)
        return answer.json()

    def _tensors(self, answer) -> str:
        self._check(answer)
        return base64.b64encode(answer.content).decode()
