"""The three-endpoint deployment's client side: the stages as HTTP calls to remote servers.

A front end started with --text-encoder-url, --diffusion-url and --decoder-url uses a
RemoteEngine in place of a LocalEngine; models.chain then runs the same four stages,
so txt2img gives the image the all-in-one server gives. Tensors travel float32 by default
(exact); dtype="float16" halves the bytes at a small numerical cost.

A call made for a job (the front end's Gate) watches the job while it waits: when the user
presses Stop, the browser leaves or the time limit passes, the connection is dropped, and the
stage server, which cancels work whose client went away, stops at its next denoising step
instead of finishing a run nobody will see.

The diffusion server's model facts are cached for INFO_TTL_S (a fine-tune added to its models
folder shows up; an unknown model name refreshes them at once), and the front end's health
check asks the three servers each time (`upstream_health`), so a load balancer sees a front
end whose stages are down as down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import numpy as np

from models.errors import InvalidInput
from models.stages import Diffused, Encoded

from . import wire
from .errors import ApiError


class RemoteEngine:
    remote = True

    def __init__(self, text_encoder_url: str, diffusion_url: str, decoder_url: str, *, token: str | None = None,
                 dtype: str = "float32", timeout_s: float = 600.0, batch_requests: int = 1):
        # requests this front end runs at once: as many as its diffusion server may batch
        # (its --batch-requests), so their denoising steps can share UNet calls there
        self.batch_requests = max(1, int(batch_requests))
        self.urls = {"text_encoder": text_encoder_url.rstrip("/"), "diffusion": diffusion_url.rstrip("/"),
                     "decoder": decoder_url.rstrip("/")}
        self.dtype = dtype
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(headers=headers, timeout=timeout_s)
        self.bytes_sent = 0
        self.bytes_received = 0
        self._info, self._info_at = None, 0.0
        self._tokenizer = None

    # -- plumbing ------------------------------------------------------------------------
    POLL_S = 0.1  # how often a call made for a job checks whether the job was cancelled

    def _post(self, stage, path, *, params=None, json_body=None, content=None, accept=None, check=None):
        headers = {"Content-Type": wire.MEDIA_TYPE} if content is not None else {}
        if accept:
            headers["Accept"] = accept
        request = dict(url=f"{self.urls[stage]}{path}", params=params, json=json_body, content=content,
                       headers=headers)
        try:
            r = self.client.post(**request) if check is None else asyncio.run(self._post_watching(request, check))
        except httpx.HTTPError as e:
            raise ApiError(502, "upstream_unreachable", f"the {stage} endpoint is unreachable: {e}") from None
        self.bytes_sent += len(r.request.content or b"")
        self.bytes_received += len(r.content)
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                code, message = err["code"], err["message"]
            except Exception:
                code, message = "upstream_error", r.text[:200]
            status = r.status_code if r.status_code < 500 else 502
            headers = {"Retry-After": r.headers["retry-after"]} if "retry-after" in r.headers else None
            raise ApiError(status, code, f"{stage} endpoint: {message}", headers)
        return r

    async def _post_watching(self, request: dict, check):
        """The POST, abandoned (connection closed) as soon as `check()` raises."""
        async with httpx.AsyncClient(headers=self.client.headers, timeout=self.client.timeout) as client:
            call = asyncio.ensure_future(client.post(**request))
            while True:
                done, _ = await asyncio.wait({call}, timeout=self.POLL_S)
                if done:
                    return call.result()
                try:
                    check()
                except BaseException:
                    call.cancel()
                    with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                        await call
                    raise

    INFO_TTL_S = 30.0  # how long the diffusion server's model list and facts are reused
    HEALTH_TIMEOUT_S = 2.0  # per stage server, for the front end's own health check

    def info(self, refresh: bool = False) -> dict:
        if refresh or self._info is None or time.monotonic() - self._info_at > self.INFO_TTL_S:
            try:
                r = self.client.get(f"{self.urls['diffusion']}/api/v1/models")
                r.raise_for_status()
                self._info, self._info_at = r.json(), time.monotonic()
            except httpx.HTTPError as e:
                raise ApiError(502, "upstream_unreachable", f"the diffusion endpoint is unreachable: {e}") from None
        return {**self._info, "loaded_networks": []}  # a front end runs no network itself

    async def upstream_health(self) -> dict:
        """{stage: {"status": "ok" | "unreachable" | "error", ...}}: each stage server's health,
        asked now, all three at once, with a short timeout."""
        async def check(client, stage, url):
            try:
                r = await client.get(f"{url}/api/v1/health")
            except httpx.HTTPError as e:
                return {"status": "unreachable", "message": type(e).__name__}
            try:
                body = r.json()
            except ValueError:
                body = None
            if r.status_code != 200 or not isinstance(body, dict) or body.get("status") != "ok":
                return {"status": "error", "http_status": r.status_code}
            if body.get("component") not in (stage, "all"):  # a URL mix-up in the front end's options
                return {"status": "error", "message": f"it serves the {body.get('component')!r} component"}
            return {"status": "ok"}

        async with httpx.AsyncClient(timeout=self.HEALTH_TIMEOUT_S) as client:
            results = await asyncio.gather(*(check(client, s, u) for s, u in self.urls.items()))
        return dict(zip(self.urls, results))

    def model_names(self):
        return self.info()["models"]

    @property
    def current(self):
        return self.info().get("current")

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            from models.tokenizer import default_tokenizer

            self._tokenizer = default_tokenizer()
        return self._tokenizer.count_tokens(text)

    def token_label(self, text: str) -> str:
        from models.prompt_weighting import token_label

        self.count_tokens("")  # loads the tokenizer
        return token_label(self._tokenizer, text)

    def use_model(self, name):
        if name and name not in self.model_names() and name not in self.info(refresh=True)["models"]:
            raise ApiError(404, "unknown_model", f"unknown model {name!r}; available: {self.model_names()}")

    # -- the four stages (models.stages.Stages) over HTTP ---------------------------------
    # LoRAs travel to the stage that needs them: models.chain hands encode_prompts the set that
    # touches the text encoder and diffuse the set that touches the UNet plus context_loras
    # (what the contexts were encoded with), which the diffusion server checks.
    @staticmethod
    def _lora_json(loras):
        return [{"name": n, "scale": float(s)} for n, s in loras or ()]

    def encode_prompts(self, prompts, check=None, loras=None) -> Encoded:
        body = {"prompts": list(prompts), "dtype": self.dtype}
        if loras:
            body["loras"] = self._lora_json(loras)
        r = self._post("text_encoder", "/api/v1/encode", json_body=body, check=check)
        tensors, meta = wire.decode(r.content)
        return Encoded(tensors["context"].astype(np.float32), json.loads(meta["token_counts"]),
                       json.loads(meta["truncated"]))

    def diffuse(self, context, unconditional_context=None, *, seed=None, steps=20, guidance_scale=7.5,
                scheduler=None, height=None, width=None, image_latents=None, mask=None,
                masked_image_latents=None, strength=1.0, mask_blur=0.0, initial_latents=None, model=None,
                check=None, callback=None, loras=None, context_loras=None) -> Diffused:
        if initial_latents is not None:
            raise InvalidInput("a remote diffusion server draws its own starting noise from the seed; "
                               "initial latents cannot be sent", "unsupported")
        dt = np.float16 if self.dtype == "float16" else np.float32
        tensors = {"context": np.asarray(context, dt)}
        if unconditional_context is not None:
            tensors["unconditional_context"] = np.asarray(unconditional_context, dt)
        if image_latents is not None:
            tensors["image_latents"] = np.asarray(image_latents, dt)
        if mask is not None:
            tensors["mask"] = np.asarray(mask, np.uint8)
        if masked_image_latents is not None:
            tensors["masked_image_latents"] = np.asarray(masked_image_latents, dt)
        params = {"steps": steps, "guidance_scale": guidance_scale, "strength": strength, "mask_blur": mask_blur}
        for k, v in (("seed", seed), ("scheduler", scheduler), ("height", height), ("width", width), ("model", model)):
            if v is not None:
                params[k] = v
        for k, v in (("loras", loras), ("context_loras", context_loras)):
            if v:
                params[k] = json.dumps(self._lora_json(v))
        r = self._post("diffusion", "/api/v1/diffuse", params=params, content=wire.encode(tensors), check=check)
        out, meta = wire.decode(r.content)
        return Diffused(out["latents"].astype(np.float32), json.loads(meta["seeds"]), json.loads(meta["parameters"]))

    def decode(self, latents, check=None) -> np.ndarray:
        dt = np.float16 if self.dtype == "float16" else np.float32
        r = self._post("decoder", "/api/v1/decode", content=wire.encode({"latents": np.asarray(latents, dt)}),
                       accept=wire.MEDIA_TYPE, check=check)
        return wire.decode(r.content)[0]["images"]

    def encode_pixels(self, images, check=None) -> np.ndarray:
        images = np.asarray(images)
        images = images if images.dtype == np.uint8 else images.astype(np.float32)  # float: [-1, 1]
        r = self._post("decoder", "/api/v1/encode_image", content=wire.encode({"image": images}), check=check)
        return wire.decode(r.content)[0]["image_latents"].astype(np.float32)
