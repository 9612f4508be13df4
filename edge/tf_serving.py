"""TF Serving as the edge client's diffusion server, with compact tensors.

An export's diffusion SavedModel (served by TF Serving as is, see serving/) has, beside the
float signatures, `txt2img_bytes` and `inpaint_bytes` (exports/diffusion_graph.py): every float
input is one string per row of little-endian float16 values, which TF Serving's REST API takes
as {"b64": ...}, and the answer `latents_bytes` comes back the same way. A 77 x 768 context is
then 158 KB of JSON instead of about 1.2 MB of numbers, and the split keeps its few hundred KB
per image at scale. This module builds those requests and reads the answers; it needs only
numpy and the standard library, as the rest of the client.

What the web app's /diffuse does on the server, a TF Serving client does itself, by the same
rules: the empty prompt's context when no negative prompt is given (its own text encoder),
both contexts padded to the same number of 77-token chunks (models.prompt_weighting), a seed
when none is given, and for inpainting the mask blurred and averaged to latent resolution
(models.masks.latent_weight). LoRAs are baked into an export (`python -m exports --lora`):
TF Serving serves the model as it was exported.
"""

from __future__ import annotations

import base64
import json
import secrets
import urllib.error
import urllib.request

import numpy as np

from models import masks
from models.prompt_weighting import pad_chunks

MAX_SEED = 2**32 - 1  # as models.pipeline


class TFServingError(RuntimeError):
    """TF Serving refused a request, or answered something this client cannot read."""


def float16_b64(array) -> dict:
    """One row as TF Serving's JSON binary value: {"b64": base64 of little-endian float16}."""
    data = np.ascontiguousarray(np.asarray(array, np.float32).astype("<f2")).tobytes()
    return {"b64": base64.b64encode(data).decode("ascii")}


def rows_b64(batch) -> list:
    return [float16_b64(row) for row in np.asarray(batch)]


def predict_body(signature: str, inputs: dict) -> bytes:
    """The columnar ("inputs") form of TF Serving's REST predict request."""
    return json.dumps({"signature_name": signature, "inputs": inputs}, separators=(",", ":")).encode()


def latents_from_response(body: bytes, latent_shape) -> np.ndarray:
    """float32 [B, h, w, c] from {"outputs": [{"b64": ...}, ...]} (one output tensor: TF Serving
    leaves out its name) or {"outputs": {"latents_bytes": [...]}}."""
    try:
        outputs = json.loads(body)["outputs"]
        if isinstance(outputs, dict):
            outputs = outputs["latents_bytes"]
        rows = [np.frombuffer(base64.b64decode(item["b64"]), "<f2") for item in outputs]
    except (ValueError, KeyError, TypeError) as e:
        raise TFServingError(f"TF Serving's answer is not a latents_bytes output: {str(e)[:200]}") from None
    size = int(np.prod(latent_shape))
    if any(row.size != size for row in rows):
        raise TFServingError(f"TF Serving answered rows of {[r.size for r in rows]} values; the export's latents "
                             f"hold {size} ({' x '.join(map(str, latent_shape))})")
    return np.stack([row.astype(np.float32).reshape(latent_shape) for row in rows])


class TFServingDiffusion:
    """POST {model_url}:predict (e.g. http://host:8501/v1/models/diffusion) with the bytes
    signatures; `diffuse` has the contract of EdgeClient.diffuse."""

    def __init__(self, model_url: str, manifest: dict, encode_empty, timeout: float = 600.0):
        """`encode_empty()`: the empty prompt's context [1, 77, D] (the client's text encoder)."""
        self.url = model_url.rstrip("/")
        self.manifest, self.encode_empty, self.timeout = manifest, encode_empty, timeout
        lat = manifest["latent"]
        self.latent_shape = (lat["height"], lat["width"], lat["channels"])

    def _post(self, body: bytes) -> bytes:
        req = urllib.request.Request(f"{self.url}:predict", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except (ValueError, AttributeError):
                pass
            raise TFServingError(f"TF Serving answered {e.code}: {detail}") from None
        except urllib.error.URLError as e:
            raise TFServingError(f"cannot reach TF Serving at {self.url}: {e.reason}") from None

    def request(self, tensors: dict, params: dict) -> tuple[str, dict, dict]:
        """(signature, inputs, the parameters as the web app reports them) for one request."""
        schedulers = self.manifest["schedulers"]
        scheduler = params.get("scheduler") or schedulers[0]
        if scheduler not in schedulers:
            raise TFServingError(f"the export serves the schedulers {schedulers}, not {scheduler!r}")
        seed = params.get("seed")
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else int(seed)
        context = np.asarray(tensors["context"], np.float32)
        batch, chunk = context.shape[0], self.manifest["context"]["length"]
        uncond = tensors.get("unconditional_context")
        guided = float(params["guidance_scale"]) > 1.0 and not self.manifest["model"].get("guidance_embedding")
        if uncond is None:  # the model's empty-prompt context, as the web app uses; unread when not guided
            uncond = np.repeat(self.encode_empty(), batch, 0) if guided else context
        uncond = np.asarray(uncond, np.float32)
        chunks = max(context.shape[1], uncond.shape[1]) // chunk
        if context.shape[1] != uncond.shape[1]:
            empty = self.encode_empty()
            context, uncond = (pad_chunks(c, chunks, empty, chunk) for c in (context, uncond))
        inputs = {"context_bytes": rows_b64(context), "unconditional_context_bytes": rows_b64(uncond),
                  "seed": [seed + k for k in range(batch)], "guidance_scale": [float(params["guidance_scale"])] * batch,
                  "num_steps": [int(params["steps"])] * batch, "scheduler": [schedulers.index(scheduler)] * batch}
        reported = dict(steps=int(params["steps"]), guidance=float(params["guidance_scale"]), seed=seed,
                        scheduler=scheduler, height=self.manifest["image"]["height"],
                        width=self.manifest["image"]["width"])
        if "image_latents" not in tensors:
            return "txt2img_bytes", inputs, reported
        blur = masks.check_mask_blur(params.get("mask_blur", 0.0))
        weight = masks.latent_weight(masks.repaint_weight(tensors["mask"], blur),
                                     self.manifest["latent"]["vae_factor"])
        inputs.update(mask_bytes=rows_b64(np.repeat(weight[None], batch, 0)),
                      image_latents_bytes=rows_b64(np.repeat(tensors["image_latents"], batch // len(tensors["image_latents"]), 0)),
                      strength=[float(params.get("strength", 1.0))] * batch)
        reported.update(strength=float(params.get("strength", 1.0)), mask_blur=blur)
        return "inpaint_bytes", inputs, reported

    def diffuse(self, tensors: dict, params: dict):
        """(latents float32, metadata as the web app's /diffuse gives it, bytes sent, bytes received)."""
        signature, inputs, reported = self.request(tensors, params)
        body = predict_body(signature, inputs)
        answer = self._post(body)
        latents = latents_from_response(answer, self.latent_shape)
        seeds = [reported["seed"] + k for k in range(latents.shape[0])]
        metadata = {"seeds": json.dumps(seeds), "parameters": json.dumps(reported)}
        return latents, metadata, len(body), len(answer)
