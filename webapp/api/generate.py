"""The all-in-one routes, /txt2img, /img2img and /inpaint: HTTP in, one models.chain call, PNGs with
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
from .schemas import BINARY, LORAS_TEXT_DOC, MAX_GUIDANCE, ImagesResponse, Scheduler, Txt2ImgRequest, loras_from_text

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


def check_accept(request: Request, batch_size: int):
    """`Accept: image/png` gets the PNG itself, which holds one image: for a batch, a client
    that accepts only PNG is told so (406) before any work, rather than sent JSON unasked."""
    accept = request.headers.get("accept", "")
    if batch_size > 1 and "image/png" in accept and not any(t in accept for t in ("json", "*/*")):
        raise ApiError(406, "not_acceptable", f"a batch of {batch_size} images cannot be one image/png answer; "
                       "accept application/json (base64 PNGs) or ask for batch_size 1")


def check_generation(L, prompt, negative_prompt, guidance_scale, steps, batch_size):
    """The limits every generation request meets, in the order both routes report them."""
    L.check_prompt(prompt)
    L.check_prompt(negative_prompt, "negative prompt")
    L.check_guidance(guidance_scale)
    L.check_steps(steps)
    L.check_batch(batch_size)


def check_loras(server, prompt, negative_prompt, loras) -> list:
    """The request's LoRAs by the chain's one rule (list + prompt tags), checked before the job
    queues: an unknown name is 400 unknown_lora naming the available ones. Returns the list to
    hand the chain, None for none (the engine then runs the base model: a server request never
    inherits another's set, webapp.engine)."""
    chain.request_loras(prompt, negative_prompt, loras or None, server.engine.info().get("loras") or {})
    return loras or None


RESPONSES = {**error_responses(400, 401, 404, 406, 413, 422, 503)}


@router.post("/txt2img", summary="Prompt -> PNG images with their parameters and seeds",
             response_model=ImagesResponse, responses={
                 200: {"content": {"image/png": BINARY}, "description": "JSON; or with `Accept: image/png` and "
                       "batch_size 1, the PNG itself (seed in X-Seeds)"}, **RESPONSES})
async def txt2img(req: Txt2ImgRequest, request: Request, server=Depends(hosting("pipeline"))):
    check_generation(server.limits, req.prompt, req.negative_prompt, req.guidance_scale, req.steps, req.batch_size)
    server.limits.check_size(req.height, req.width)
    check_accept(request, req.batch_size)
    model = model_for(server, req.model)
    loras = check_loras(server, req.prompt, req.negative_prompt, [r.model_dump() for r in req.loras])

    def work(job):
        return chain.txt2img(server.engine, req.prompt, req.negative_prompt, steps=req.steps,
                             guidance_scale=req.guidance_scale, seed=req.seed, scheduler=req.scheduler,
                             height=req.height, width=req.width, batch_size=req.batch_size, model=model,
                             check=job.check, loras=loras)

    return images_response(server, await server.gate.run(work, request), request)


class GenerationForm:
    """The form fields every multipart generation route takes (img2img, inpaint)."""

    def __init__(self, prompt: str = Form(..., description="at most the server's max_prompt_chars"),
                 negative_prompt: str = Form(""),
                 steps: int = Form(20, ge=1), guidance_scale: float = Form(7.5, ge=0, le=MAX_GUIDANCE),
                 seed: int | None = Form(None, ge=0, le=MAX_SEED), scheduler: Scheduler | None = Form(None),
                 batch_size: int = Form(1, ge=1), model: str | None = Form(None, max_length=200),
                 loras: str = Form("", max_length=4096, description=LORAS_TEXT_DOC)):
        self.prompt, self.negative_prompt, self.steps, self.guidance_scale = prompt, negative_prompt, steps, guidance_scale
        self.seed, self.scheduler, self.batch_size, self.model = seed, scheduler, batch_size, model
        self.loras = loras

    def check(self, server, request: Request) -> dict:
        """The limits, the Accept header and the model; the chain's keyword arguments."""
        check_generation(server.limits, self.prompt, self.negative_prompt, self.guidance_scale, self.steps,
                         self.batch_size)
        check_accept(request, self.batch_size)
        return dict(steps=self.steps, guidance_scale=self.guidance_scale, seed=self.seed, scheduler=self.scheduler,
                    batch_size=self.batch_size, model=model_for(server, self.model),
                    loras=check_loras(server, self.prompt, self.negative_prompt, loras_from_text(self.loras)))


async def _upload(server, file: UploadFile, what: str, mode="RGB"):
    return load_image(await file.read(), what, server.limits.max_side, mode=mode)


def _needs_image_encoder(server, what):
    if not server.engine.info()["has_image_encoder"]:
        raise ApiError(400, "no_image_encoder", f"this model has no VAE encoder, so {what} is unavailable")


@router.post("/img2img", summary="Image + prompt -> PNG images (multipart form)",
             response_model=ImagesResponse, responses={
                 200: {"content": {"image/png": BINARY}, "description": "as txt2img"}, **RESPONSES})
async def img2img(request: Request,
                  image: UploadFile = File(..., description="PNG/JPEG/WebP, any size (the answer has its size)"),
                  strength: float = Form(0.75, gt=0, le=1, description="1 ignores the image"),
                  form: GenerationForm = Depends(), server=Depends(hosting("pipeline"))):
    options = form.check(server, request)
    img = await _upload(server, image, "image")
    _needs_image_encoder(server, "img2img")

    def work(job):
        return chain.img2img(server.engine, form.prompt, img, form.negative_prompt, strength=strength,
                             check=job.check, **options)

    return images_response(server, await server.gate.run(work, request), request)


@router.post("/inpaint", summary="Image + mask + prompt -> PNG images (multipart form)",
             response_model=ImagesResponse, responses={
                 200: {"content": {"image/png": BINARY}, "description": "as txt2img"}, **RESPONSES})
async def inpaint(request: Request,
                  image: UploadFile = File(..., description="PNG/JPEG/WebP, any size (the answer has its size)"),
                  mask: UploadFile = File(..., description="same size; values >= 128 (white/opaque) repaint"),
                  strength: float = Form(1.0, gt=0, le=1),
                  mask_blur: float = Form(0.0, ge=0, le=64), invert_mask: bool = Form(False),
                  only_masked: bool = Form(False), padding: int = Form(32, ge=0, le=1024),
                  form: GenerationForm = Depends(), server=Depends(hosting("pipeline"))):
    options = form.check(server, request)
    img = await _upload(server, image, "image")
    msk = await _upload(server, mask, "mask", mode="L")
    _needs_image_encoder(server, "inpainting")

    def work(job):
        return chain.inpaint(server.engine, form.prompt, img, msk, form.negative_prompt, strength=strength,
                             mask_blur=mask_blur, invert_mask=invert_mask, only_masked=only_masked, padding=padding,
                             check=job.check, **options)

    return images_response(server, await server.gate.run(work, request), request)
