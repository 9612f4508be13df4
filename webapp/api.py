"""The REST API under /api/v1/: split stages (encode, diffuse, decode, encode_image), the
all-in-one endpoints (txt2img, inpaint), health and models.

Tensors travel as application/x-safetensors (webapp.wire). Every handler validates what the
client controls before any model work, and model work goes through the Gate (bounded
queue, time limit, cancellation on disconnect).
"""

from __future__ import annotations

import base64
import json
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from models.schedulers import SCHEDULERS

from models import chain
from models.pipeline import MAX_SEED

from . import wire
from .errors import ApiError, error_responses
from .images import load_image, png_b64
from .limits import Limits, read_body

# the schema's documented bounds are the default limits; the server's own (Limits, from the
# environment) are checked in the handlers
MAX_GUIDANCE = Limits.max_guidance
SCHEDULER_NAMES = tuple(SCHEDULERS)
Scheduler = Literal[SCHEDULER_NAMES]  # documented as an enum in the OpenAPI document

BINARY = {"schema": {"type": "string", "format": "binary"}}
WIRE_DOC = (
    "Tensors travel as **application/x-safetensors**: an 8-byte little-endian header length N, "
    "N bytes of UTF-8 JSON `{name: {dtype: F16|F32|U8|I32, shape: [...], data_offsets: [begin, end]}, "
    "__metadata__: {key: string}}`, then the raw little-endian row-major data. "
    "Any safetensors reader decodes it. NaN/Inf values are refused."
)


def _wire_body(description: str) -> dict:
    return {"requestBody": {"required": True, "description": description,
                            "content": {wire.MEDIA_TYPE: BINARY}}}


def _wire_response(description: str, extra: dict | None = None) -> dict:
    content = {wire.MEDIA_TYPE: BINARY, **(extra or {})}
    return {200: {"description": description, "content": content}}


class EncodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(..., min_length=1, description="the prompts to encode (one context each)")
    dtype: Literal["float16", "float32"] = "float16"


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(..., description="at most the server's max_prompt_chars (400 prompt_too_long)")
    negative_prompt: str = Field("")
    steps: int = Field(20, ge=1)
    guidance_scale: float = Field(7.5, ge=0, le=MAX_GUIDANCE)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="random when left out; returned either way")
    scheduler: Scheduler | None = None
    width: int | None = Field(None, ge=8, description="pixels; a multiple of the model's size_multiple")
    height: int | None = Field(None, ge=8)
    batch_size: int = Field(1, ge=1)
    model: str | None = Field(None, max_length=200, description="a name from GET /api/v1/models")


class ImageOut(BaseModel):
    png: str = Field(..., description="base64 PNG with its generation parameters in a 'parameters' text chunk")
    seed: int
    parameters: str


class ImagesResponse(BaseModel):
    images: list[ImageOut]
    seeds: list[int]
    parameters: dict
    token_counts: list[int] = []
    truncated: list[int] = []


def build_routers(server) -> list:
    """`server` is webapp.server.Server: engine, gate, limits, hosted stages. Returns the open
    router (health) and the token-protected one (everything else)."""
    L = server.limits
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(server.require_token)])
    open_router = APIRouter(prefix="/api/v1")  # health stays open for load balancers

    def hosts(stage: str):
        if not server.hosts(stage):
            what = "txt2img and inpaint" if stage == "pipeline" else f"the {stage!r} stage"
            raise ApiError(404, "not_hosted", f"this server hosts the {server.component!r} component, not {what}; "
                           "send this request to the server that hosts it")

    # one set of limits, shared with the Gradio UI (webapp.ui)
    check_prompt, check_steps, check_batch, check_size = L.check_prompt, L.check_steps, L.check_batch, L.check_size
    check_guidance = L.check_guidance

    def check_model(name):
        """The model a request runs on: the one it names (from the listing) or the base model,
        never whichever model another client used last."""
        if name and name not in server.engine.model_names():
            raise ApiError(404, "unknown_model", f"unknown model {name!r}; available: {server.engine.model_names()}")
        return name or server.engine.info()["base_model"]

    # -- info ----------------------------------------------------------------------------
    @open_router.get("/health", summary="Liveness and queue state (no token needed); on a front end also its "
                     "stage servers' health", responses={503: {"description": "a front end with a stage server down "
                                                                "or failing: the same body, status 'unavailable'"}})
    async def health():
        body = {"status": "ok", "component": server.component, "queue": server.gate.stats()}
        if getattr(server.engine, "remote", False):  # a front end is up only when its stage servers are
            body["upstreams"] = await server.engine.upstream_health()
            if any(u["status"] != "ok" for u in body["upstreams"].values()):
                return JSONResponse({**body, "status": "unavailable"}, status_code=503)
        return body

    @router.get("/models", summary="Base and fine-tuned diffusion models, latent and context facts")
    async def models():
        info = {**server.engine.info(), "component": server.component}
        manifest = server.exports_manifest()
        info.update(edge_exports=manifest is not None, edge_manifest=manifest)
        return info

    # -- split stages --------------------------------------------------------------------
    @router.post("/encode", summary="Prompts -> text contexts (binary)", responses={
        **_wire_response("tensor `context` [B, 77, D]; metadata token_counts and truncated (JSON lists)"),
        **error_responses(400, 401, 404, 413, 422, 503)}, response_class=Response,
        description=WIRE_DOC)
    async def encode(req: EncodeRequest, request: Request):
        hosts("text_encoder")
        if len(req.prompts) > L.max_prompts:
            raise ApiError(400, "too_many_prompts", f"{len(req.prompts)} prompts; the limit is {L.max_prompts}")
        for p in req.prompts:
            check_prompt(p)
        enc = await server.gate.run(lambda job: server.engine.encode_prompts(req.prompts, check=job.check), request)
        body = wire.encode({"context": enc.context.astype(req.dtype)},
                           {"token_counts": enc.token_counts, "truncated": enc.truncated})
        return Response(body, media_type=wire.MEDIA_TYPE)

    @router.post("/diffuse", summary="Contexts -> latents: the denoising loop (binary in and out)",
                 response_class=Response, openapi_extra=_wire_body(
                     "tensors: `context` [B,77,D] F16/F32 (required); `unconditional_context` [1 or B,77,D] "
                     "(absent: the model's own empty-prompt context); for inpainting `image_latents` [1 or B,h,w,4] "
                     "(image encoder posterior mean x scaling factor), `mask` [H,W] U8 or F32 at pixel resolution "
                     "(H = 8h; values >= 128 of 255, or >= 0.5, repaint: models/masks.py), `masked_image_latents` (9-channel inpainting UNets only)"),
                 responses={**_wire_response("tensor `latents` [B,h,w,4]; metadata seeds and parameters (JSON); "
                                             "header X-Seeds"), **error_responses(400, 401, 404, 413, 415, 422, 503)},
                 description=WIRE_DOC)
    async def diffuse(request: Request,
                      seed: int | None = Query(None, ge=0, le=MAX_SEED, description="random when left out; returned"),
                      steps: int = Query(20, ge=1, description="at most the server's max_steps"),
                      guidance_scale: float = Query(7.5, ge=0, le=MAX_GUIDANCE),
                      scheduler: Scheduler | None = Query(None),
                      strength: float = Query(1.0, gt=0, le=1),
                      mask_blur: float = Query(0.0, ge=0, le=64),
                      dtype: Literal["float16", "float32"] | None = Query(None, description="default: the context's"),
                      height: int | None = Query(None, ge=8, description="txt2img only; default the model's; "
                                                 "at most the server's max_side"),
                      width: int | None = Query(None, ge=8),
                      model: str | None = Query(None, max_length=200)):
        hosts("diffusion")
        L.check_steps(steps)  # the same limits, codes and statuses as txt2img and inpaint
        L.check_size(height, width)
        check_guidance(guidance_scale)
        model = check_model(model)
        tensors = _read_tensors(await read_body(request, L.max_body_bytes), request)
        t = _check_diffuse_tensors(tensors, server.engine.info(), L)
        out_dtype = dtype or ("float16" if tensors["context"].dtype == np.float16 else "float32")

        def work(job):
            return server.engine.diffuse(t["context"], t.get("unconditional_context"), seed=seed, steps=steps,
                                         guidance_scale=guidance_scale, scheduler=scheduler, height=height,
                                         width=width, image_latents=t.get("image_latents"), mask=t.get("mask"),
                                         masked_image_latents=t.get("masked_image_latents"), strength=strength,
                                         mask_blur=mask_blur, model=model, check=job.check)

        gen = await server.gate.run(work, request)
        seeds = [int(s) for s in gen.seeds]
        body = wire.encode({"latents": np.asarray(gen.latents).astype(out_dtype)},
                           {"seeds": seeds, "parameters": gen.parameters})
        return Response(body, media_type=wire.MEDIA_TYPE, headers={"X-Seeds": ",".join(map(str, seeds))})

    @router.post("/decode", summary="Latents -> PNG (B=1) or JSON of base64 PNGs (B>1)", response_class=Response,
                 openapi_extra=_wire_body("tensor `latents` [B,h,w,4] F16/F32"),
                 responses={200: {"description": "B=1: image/png. B>1: JSON {images: [base64 PNG]}. With "
                                  "`Accept: application/x-safetensors`: tensor `images` U8 [B,H,W,3].",
                                  "content": {"image/png": BINARY, "application/json": {"schema": {"type": "object"}},
                                              wire.MEDIA_TYPE: BINARY}},
                            **error_responses(400, 401, 404, 413, 503)}, description=WIRE_DOC)
    async def decode(request: Request):
        hosts("decoder")
        tensors = _read_tensors(await read_body(request, L.max_body_bytes), request)
        info = server.engine.info()
        latents = _latents(tensors, "latents", info, L, required=True)
        check_batch(latents.shape[0])
        images = await server.gate.run(lambda job: server.engine.decode(latents, check=job.check), request)
        if wire.MEDIA_TYPE in request.headers.get("accept", ""):
            return Response(wire.encode({"images": images}), media_type=wire.MEDIA_TYPE)
        if len(images) == 1:
            from models.png_info import png_bytes

            return Response(png_bytes(images[0]), media_type="image/png")
        return JSONResponse({"images": [png_b64(im, None) for im in images]})

    @router.post("/encode_image", summary="Image -> image latents (the VAE encoder; hosted with the decoder)",
                 response_class=Response,
                 openapi_extra={"requestBody": {"required": True, "content": {
                     wire.MEDIA_TYPE: BINARY, "image/png": BINARY, "image/jpeg": BINARY}}},
                 responses={**_wire_response("tensor `image_latents` [B,h,w,4] F32 (posterior mean x scaling). "
                                             "Input: tensor `image` U8 [B,H,W,3], or F32 in [-1, 1] (a 9-channel "
                                             "model's masked image: masked pixels 0), or an image/png body"),
                            **error_responses(400, 401, 404, 413, 503)}, description=WIRE_DOC)
    async def encode_image(request: Request):
        hosts("decoder")
        body = await read_body(request, L.max_body_bytes)
        if request.headers.get("content-type", "").startswith("image/"):
            images = load_image(body, "image", L.max_side)[None]
        else:
            tensors = _read_tensors(body, request)
            images = tensors.get("image")
            if images is None or images.ndim != 4 or images.shape[-1] != 3 or images.dtype not in (
                    np.uint8, np.float16, np.float32):
                raise ApiError(400, "bad_image", "send tensor `image` as U8 [B, H, W, 3] (or F32 in [-1, 1])")
            if images.dtype != np.uint8 and np.abs(images).max(initial=0) > 1.0:
                raise ApiError(400, "bad_image", "a float `image` must hold values in [-1, 1]")
        if images.shape[0] < 1:
            raise ApiError(400, "wrong_shape", "tensor `image` holds no images (batch 0)")
        check_batch(images.shape[0])
        _check_pixels(images.shape[1], images.shape[2], server.engine.info(), L)
        latents = await server.gate.run(lambda job: server.engine.encode_pixels(images, check=job.check), request)
        return Response(wire.encode({"image_latents": latents.astype(np.float32)}), media_type=wire.MEDIA_TYPE)

    # -- all in one ----------------------------------------------------------------------
    def images_response(result, request: Request):
        from models.png_info import format_parameters

        model = result.parameters.get("model") or server.engine.current
        items = []
        for k, im in enumerate(result.images):
            params = {**result.per_image(k), "model": model}
            items.append({"png": png_b64(im, params), "seed": int(result.seeds[k]), "parameters": format_parameters(params)})
        seeds = [int(s) for s in result.seeds]
        headers = {"X-Seeds": ",".join(map(str, seeds))}
        if "image/png" in request.headers.get("accept", "") and len(items) == 1:
            return Response(base64.b64decode(items[0]["png"]), media_type="image/png", headers=headers)
        return JSONResponse({"images": items, "seeds": seeds, "parameters": _jsonable(result.parameters),
                             "token_counts": result.token_counts, "truncated": result.truncated}, headers=headers)

    @router.post("/txt2img", summary="Prompt -> PNG images with their parameters and seeds",
                 response_model=ImagesResponse, responses={
                     200: {"content": {"image/png": BINARY}, "description": "JSON; or with `Accept: image/png` and "
                           "batch_size 1, the PNG itself (seed in X-Seeds)"},
                     **error_responses(400, 401, 404, 413, 422, 503)})
    async def txt2img(req: Txt2ImgRequest, request: Request):
        hosts("pipeline")
        check_prompt(req.prompt)
        check_prompt(req.negative_prompt, "negative prompt")
        check_guidance(req.guidance_scale)
        check_steps(req.steps)
        check_batch(req.batch_size)
        check_size(req.height, req.width)
        model = check_model(req.model)

        def work(job):
            return chain.txt2img(server.engine, req.prompt, req.negative_prompt, steps=req.steps,
                                 guidance_scale=req.guidance_scale, seed=req.seed, scheduler=req.scheduler,
                                 height=req.height, width=req.width, batch_size=req.batch_size, model=model,
                                 check=job.check)

        return images_response(await server.gate.run(work, request), request)

    @router.post("/inpaint", summary="Image + mask + prompt -> PNG images (multipart form)",
                 response_model=ImagesResponse, responses={
                     200: {"content": {"image/png": BINARY}, "description": "as txt2img"},
                     **error_responses(400, 401, 404, 413, 422, 503)})
    async def inpaint(request: Request,
                      image: UploadFile = File(..., description="PNG/JPEG/WebP"),
                      mask: UploadFile = File(..., description="same size; white/opaque = repaint"),
                      prompt: str = Form(..., description="at most the server's max_prompt_chars"),
                      negative_prompt: str = Form(""),
                      steps: int = Form(20, ge=1), guidance_scale: float = Form(7.5, ge=0, le=MAX_GUIDANCE),
                      seed: int | None = Form(None, ge=0, le=MAX_SEED), scheduler: Scheduler | None = Form(None),
                      batch_size: int = Form(1, ge=1), strength: float = Form(1.0, gt=0, le=1),
                      mask_blur: float = Form(0.0, ge=0, le=64), invert_mask: bool = Form(False),
                      only_masked: bool = Form(False), padding: int = Form(32, ge=0, le=1024),
                      model: str | None = Form(None, max_length=200)):
        hosts("pipeline")
        check_prompt(prompt)
        check_prompt(negative_prompt, "negative prompt")
        check_guidance(guidance_scale)
        check_steps(steps)
        check_batch(batch_size)
        model = check_model(model)
        img = load_image(await image.read(), "image", L.max_side)
        msk = load_image(await mask.read(), "mask", L.max_side, mode="L")
        info = server.engine.info()

        def work(job):
            return chain.inpaint(server.engine, prompt, img, msk, negative_prompt, steps=steps,
                                 guidance_scale=guidance_scale, seed=seed, scheduler=scheduler, batch_size=batch_size,
                                 strength=strength, mask_blur=mask_blur, invert_mask=invert_mask,
                                 only_masked=only_masked, padding=padding, model=model, check=job.check)

        if not info["has_image_encoder"]:
            raise ApiError(400, "no_image_encoder", "this model has no VAE encoder, so inpainting is unavailable")
        return images_response(await server.gate.run(work, request), request)

    return [open_router, router]


# -- validation helpers ------------------------------------------------------------------
def _jsonable(d):
    return json.loads(json.dumps(d, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _read_tensors(body: bytes, request: Request) -> dict:
    ctype = request.headers.get("content-type", "")
    if ctype and not ctype.startswith((wire.MEDIA_TYPE, "application/octet-stream")):
        raise ApiError(415, "wrong_content_type", f"send the tensors as {wire.MEDIA_TYPE}, not {ctype!r}")
    return wire.decode(body)[0]


def _float(t: np.ndarray, name: str) -> np.ndarray:
    if t.dtype not in (np.float16, np.float32):
        raise ApiError(400, "wrong_dtype", f"tensor {name!r} must be F16 or F32, got {t.dtype}")
    return t.astype(np.float32)


def _latents(tensors, name, info, L, required=False, batch=None):
    t = tensors.get(name)
    if t is None:
        if required:
            raise ApiError(400, "missing_tensor", f"tensor {name!r} is required")
        return None
    t = _float(t, name)
    C = info["latent_channels"]
    if t.ndim != 4 or t.shape[-1] != C or 0 in t.shape:
        raise ApiError(400, "wrong_shape", f"tensor {name!r} must be [B, h, w, {C}], got {list(t.shape)}")
    if batch is not None and t.shape[0] not in (1, batch):
        raise ApiError(400, "wrong_shape", f"tensor {name!r} must have batch 1 or {batch}, got {t.shape[0]}")
    _check_pixels(t.shape[1] * info["vae_factor"], t.shape[2] * info["vae_factor"], info, L)
    return t


def _check_pixels(H, W, info, L):
    m = info["size_multiple"]
    for name, v in (("height", H), ("width", W)):
        if v > L.max_side:
            raise ApiError(400, "size_too_large", f"{name} {v} px is over this server's limit of {L.max_side}")
        if v < m or v % m:
            raise ApiError(400, "bad_size", f"{name} {v} px is not a positive multiple of {m}, which this model needs")


def _check_diffuse_tensors(tensors: dict, info: dict, L) -> dict:
    known = {"context", "unconditional_context", "image_latents", "mask", "masked_image_latents"}
    unknown = set(tensors) - known
    if unknown:
        raise ApiError(400, "unknown_tensor", f"unknown tensors {sorted(unknown)}; expected some of {sorted(known)}")
    if "context" not in tensors:
        raise ApiError(400, "missing_tensor", "tensor 'context' [B, 77, D] is required")
    T, D = info["context_shape"]
    out = {}
    ctx = _float(tensors["context"], "context")
    if ctx.ndim != 3 or tuple(ctx.shape[1:]) != (T, D) or ctx.shape[0] < 1:
        raise ApiError(400, "wrong_shape", f"tensor 'context' must be [B, {T}, {D}], got {list(ctx.shape)}")
    B = ctx.shape[0]
    L.check_batch(B)
    out["context"] = ctx
    if "unconditional_context" in tensors:
        u = _float(tensors["unconditional_context"], "unconditional_context")
        if u.ndim != 3 or tuple(u.shape[1:]) != (T, D) or u.shape[0] not in (1, B):
            raise ApiError(400, "wrong_shape", f"tensor 'unconditional_context' must be [1 or {B}, {T}, {D}], "
                           f"got {list(u.shape)}")
        out["unconditional_context"] = u
    il = _latents(tensors, "image_latents", info, L, batch=B)
    if il is not None:
        out["image_latents"] = il
    if "masked_image_latents" in tensors:
        if il is None:
            raise ApiError(400, "missing_tensor", "masked_image_latents needs image_latents too")
        mil = _latents(tensors, "masked_image_latents", info, L, batch=B)
        if mil.shape[1:] != il.shape[1:]:
            raise ApiError(400, "wrong_shape", "masked_image_latents and image_latents differ in size")
        out["masked_image_latents"] = mil
    if "mask" in tensors:
        if il is None:
            raise ApiError(400, "missing_tensor", "a mask needs image_latents (the image to inpaint)")
        m = tensors["mask"]
        if m.dtype not in (np.uint8, np.float32, np.float16):
            raise ApiError(400, "wrong_dtype", f"tensor 'mask' must be U8 or F32, got {m.dtype}")
        want = (il.shape[1] * info["vae_factor"], il.shape[2] * info["vae_factor"])
        if m.ndim != 2 or tuple(m.shape) != want:
            raise ApiError(400, "mask_size", f"tensor 'mask' must be [H, W] = {list(want)} (pixel resolution of "
                           f"image_latents), got {list(m.shape)}")
        if not np.any(m):
            raise ApiError(400, "empty_mask", "the mask is empty (nothing to repaint)")
        out["mask"] = m
    if info.get("inpainting_unet") and il is not None and "masked_image_latents" not in out:
        raise ApiError(400, "missing_tensor", "this is a 9-channel inpainting model: send masked_image_latents")
    return out
