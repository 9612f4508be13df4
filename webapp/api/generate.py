"""The all-in-one routes, /txt2img and /inpaint: HTTP in, one models.chain call, PNGs with
their parameters out. The same routes run on an all-in-one server and on a three-endpoint
front end; only the engine under the chain differs."""

from __future__ import annotations

import base64
import json

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from models import chain
from models.pipeline import MAX_SEED

from ..errors import ApiError, error_responses
from ..images import load_image, png_b64
from .deps import hosting, model_for
from .schemas import BINARY, MAX_GUIDANCE, ImagesResponse, Scheduler, Txt2ImgRequest

router = APIRouter()


def _jsonable(d):
    return json.loads(json.dumps(d, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def images_response(server, result, request: Request):
    """JSON with base64 PNGs, seeds and parameters; or the PNG itself for `Accept: image/png`
    and one image."""
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


def check_generation(L, prompt, negative_prompt, guidance_scale, steps, batch_size):
    """The limits every generation request meets, in the order both routes report them."""
    L.check_prompt(prompt)
    L.check_prompt(negative_prompt, "negative prompt")
    L.check_guidance(guidance_scale)
    L.check_steps(steps)
    L.check_batch(batch_size)


RESPONSES = {**error_responses(400, 401, 404, 413, 422, 503)}


@router.post("/txt2img", summary="Prompt -> PNG images with their parameters and seeds",
             response_model=ImagesResponse, responses={
                 200: {"content": {"image/png": BINARY}, "description": "JSON; or with `Accept: image/png` and "
                       "batch_size 1, the PNG itself (seed in X-Seeds)"}, **RESPONSES})
async def txt2img(req: Txt2ImgRequest, request: Request, server=Depends(hosting("pipeline"))):
    check_generation(server.limits, req.prompt, req.negative_prompt, req.guidance_scale, req.steps, req.batch_size)
    server.limits.check_size(req.height, req.width)
    model = model_for(server, req.model)

    def work(job):
        return chain.txt2img(server.engine, req.prompt, req.negative_prompt, steps=req.steps,
                             guidance_scale=req.guidance_scale, seed=req.seed, scheduler=req.scheduler,
                             height=req.height, width=req.width, batch_size=req.batch_size, model=model,
                             check=job.check)

    return images_response(server, await server.gate.run(work, request), request)


@router.post("/inpaint", summary="Image + mask + prompt -> PNG images (multipart form)",
             response_model=ImagesResponse, responses={
                 200: {"content": {"image/png": BINARY}, "description": "as txt2img"}, **RESPONSES})
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
                  model: str | None = Form(None, max_length=200),
                  server=Depends(hosting("pipeline"))):
    L = server.limits
    check_generation(L, prompt, negative_prompt, guidance_scale, steps, batch_size)
    model = model_for(server, model)
    img = load_image(await image.read(), "image", L.max_side)
    msk = load_image(await mask.read(), "mask", L.max_side, mode="L")
    if not server.engine.info()["has_image_encoder"]:
        raise ApiError(400, "no_image_encoder", "this model has no VAE encoder, so inpainting is unavailable")

    def work(job):
        return chain.inpaint(server.engine, prompt, img, msk, negative_prompt, steps=steps,
                             guidance_scale=guidance_scale, seed=seed, scheduler=scheduler, batch_size=batch_size,
                             strength=strength, mask_blur=mask_blur, invert_mask=invert_mask,
                             only_masked=only_masked, padding=padding, model=model, check=job.check)

    return images_response(server, await server.gate.run(work, request), request)
