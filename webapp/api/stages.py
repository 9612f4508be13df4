"""The split stages over HTTP, one route per stage of models.stages.Stages: /encode (text
encoder), /diffuse (the UNet loop), /decode and /encode_image (the VAE). A three-endpoint
front end (webapp.split_client) and the edge clients call these; tensors travel in the wire
format (webapp.wire)."""

from __future__ import annotations


import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from models import chain
from models.errors import InvalidInput
from models.lora.prompt_tags import parse_lora_tags
from models.pipeline import MAX_SEED
from models.png_info import format_fields

from .. import wire
from ..errors import ApiError, error_responses
from ..images import load_image, png_b64
from ..limits import read_body
from . import events
from . import tensors as T
from .deps import hosting, model_for
from .schemas import (BINARY, LORAS_TEXT_DOC, MAX_GUIDANCE, WIRE_DOC, Dtype, EncodeRequest, Scheduler,
                      loras_from_text, wire_body, wire_response)

router = APIRouter()


@router.post("/encode", summary="Prompts -> text contexts (binary)", responses={
    **wire_response("tensor `context` [B, 77 x k, D] (k 75-token chunks); metadata token_counts and truncated (JSON lists), loras "
                    "(JSON [[name, scale]]: the LoRAs that changed the text encoder; /diffuse's context_loras)"),
    **error_responses(400, 401, 404, 413, 422, 503)}, response_class=Response, description=WIRE_DOC)
async def encode(req: EncodeRequest, request: Request, server=Depends(hosting("text_encoder"))):
    L = server.limits
    if len(req.prompts) > L.max_prompts:
        raise ApiError(400, "too_many_prompts", f"{len(req.prompts)} prompts; the limit is {L.max_prompts}")
    for p in req.prompts:
        L.check_prompt(p)
        if parse_lora_tags(p)[1]:
            raise InvalidInput("the encode stage takes prompts without <lora:...> tags: take them out and send "
                               "the LoRAs as `loras`", "bad_lora_tag")
    available = server.engine.info().get("loras") or {}
    loras = chain.checked_loras([r.model_dump() for r in req.loras], available)
    te, _ = chain.split_loras(loras, available)
    enc = await server.gate.run(lambda job: server.engine.encode_prompts(req.prompts, check=job.check, loras=loras),
                                request)
    body = wire.encode({"context": enc.context.astype(req.dtype)},
                       {"token_counts": enc.token_counts, "truncated": enc.truncated, "loras": te})
    return Response(body, media_type=wire.MEDIA_TYPE)


DIFFUSE_BODY = wire_body(
    "tensors: `context` [B,77k,D] F16/F32 (required; k chunks of 75 tokens); `unconditional_context` [1 or B,77j,D] (padded to the longer with empty chunks) "
    "(absent: the model's own empty-prompt context); for inpainting `image_latents` [1 or B,h,w,4] "
    "(image encoder posterior mean x scaling factor), `mask` [H,W] U8 or F32 at pixel resolution "
    "(H = 8h; values >= 128 of 255, or >= 0.5, repaint: models/masks.py), `masked_image_latents` "
    "(9-channel inpainting UNets only)")


@router.post("/diffuse", summary="Contexts -> latents: the denoising loop (binary in and out)",
             response_class=Response, openapi_extra=DIFFUSE_BODY,
             responses={**wire_response("tensor `latents` [B,h,w,4]; metadata seeds and parameters (JSON); "
                                        "header X-Seeds"), **error_responses(400, 401, 404, 413, 415, 422, 503)},
             description=WIRE_DOC)
async def diffuse(request: Request,
                  seed: int | None = Query(None, ge=0, le=MAX_SEED, description="random when left out; returned"),
                  steps: int = Query(20, ge=1, description="at most the server's max_steps"),
                  guidance_scale: float = Query(7.5, ge=0, le=MAX_GUIDANCE),
                  scheduler: Scheduler | None = Query(None),
                  strength: float = Query(1.0, gt=0, le=1),
                  mask_blur: float = Query(0.0, ge=0, le=64),
                  dtype: Dtype | None = Query(None, description="default: the context's"),
                  height: int | None = Query(None, ge=8, description="txt2img only; default the model's; "
                                             "at most the server's max_side"),
                  width: int | None = Query(None, ge=8),
                  model: str | None = Query(None, max_length=200),
                  loras: str | None = Query(None, max_length=4096, description=LORAS_TEXT_DOC + " The UNet "
                                            "LoRAs; one that also changes the text encoder must be in "
                                            "context_loras at the same scale (else 409 "
                                            "lora_needs_server_text_encoder)"),
                  context_loras: str | None = Query(None, max_length=4096, description="JSON list: the LoRAs "
                                                    "the contexts were encoded with (/encode's metadata `loras`)"),
                  server=Depends(hosting("diffusion"))):
    L = server.limits
    L.check_steps(steps)  # the same limits, codes and statuses as txt2img and inpaint
    L.check_size(height, width)
    L.check_guidance(guidance_scale)
    model = model_for(server, model)
    info = server.engine.info()
    available = info.get("loras") or {}
    loras, context_loras = (chain.checked_loras(loras_from_text(v), available) for v in (loras, context_loras))
    sent = T.read_tensors(await read_body(request, L.max_body_bytes), request)
    t = T.diffuse_inputs(sent, info, L)
    try:  # before the queue: a context made without a text-encoder LoRA is refused at once
        chain.check_context_loras(loras, context_loras, available,
                                  has_unconditional="unconditional_context" in t,
                                  hosts_text_encoder="text_encoder" in (info.get("loaded_networks") or ()))
    except InvalidInput as e:
        raise ApiError(409, e.code, e.message) from None
    out_dtype = dtype or ("float16" if sent["context"].dtype == np.float16 else "float32")  # answer in kind

    def work(job, callback=None):
        return server.engine.diffuse(t["context"], t.get("unconditional_context"), seed=seed, steps=steps,
                                     guidance_scale=guidance_scale, scheduler=scheduler, height=height,
                                     width=width, image_latents=t.get("image_latents"), mask=t.get("mask"),
                                     masked_image_latents=t.get("masked_image_latents"), strength=strength,
                                     mask_blur=mask_blur, model=model, check=job.check, loras=loras,
                                     context_loras=context_loras, callback=callback)

    def answer(gen) -> bytes:
        seeds = [int(s) for s in gen.seeds]
        # each row's "Steps: ..., Seed: ..." line of the PNG text (models.png_info): the client, which
        # alone knows the prompt, puts the prompt lines above it
        fields = [format_fields({**gen.parameters, "seed": s}) for s in seeds]
        return wire.encode({"latents": np.asarray(gen.latents).astype(out_dtype)},
                           {"seeds": seeds, "parameters": gen.parameters, "infotext_fields": fields})

    if events.wanted(request):  # step events, then the same body (webapp.api.events)
        return await events.respond(server.gate, work, answer)
    gen = await server.gate.run(work, request)
    return Response(answer(gen), media_type=wire.MEDIA_TYPE, headers={"X-Seeds": ",".join(map(str, gen.seeds))})


@router.post("/decode", summary="Latents -> PNG (B=1) or JSON of base64 PNGs (B>1)", response_class=Response,
             openapi_extra=wire_body("tensor `latents` [B,h,w,4] F16/F32"),
             responses={200: {"description": "B=1: image/png. B>1: JSON {images: [base64 PNG]}. With "
                              "`Accept: application/x-safetensors`: tensor `images` U8 [B,H,W,3].",
                              "content": {"image/png": BINARY, "application/json": {"schema": {"type": "object"}},
                                          wire.MEDIA_TYPE: BINARY}},
                        **error_responses(400, 401, 404, 413, 503)}, description=WIRE_DOC)
async def decode(request: Request, server=Depends(hosting("decoder"))):
    L = server.limits
    tensors = T.read_tensors(await read_body(request, L.max_body_bytes), request)
    latents = T.latents(tensors, "latents", server.engine.info(), L, required=True)
    L.check_batch(latents.shape[0])
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
             responses={**wire_response("tensor `image_latents` [B,h,w,4] F32 (posterior mean x scaling). "
                                        "Input: tensor `image` U8 [B,H,W,3], or F32 in [-1, 1] (a 9-channel "
                                        "model's masked image: masked pixels 0), or an image/png body"),
                        **error_responses(400, 401, 404, 413, 503)}, description=WIRE_DOC)
async def encode_image(request: Request, server=Depends(hosting("decoder"))):
    L = server.limits
    body = await read_body(request, L.max_body_bytes)
    if request.headers.get("content-type", "").startswith("image/"):
        images = load_image(body, "image", L.max_side)[None]
    else:
        images = T.images_to_encode(T.read_tensors(body, request))
    if images.shape[0] < 1:
        raise ApiError(400, "wrong_shape", "tensor `image` holds no images (batch 0)")
    L.check_batch(images.shape[0])
    T.check_pixels(images.shape[1], images.shape[2], server.engine.info(), L)
    latents = await server.gate.run(lambda job: server.engine.encode_pixels(images, check=job.check), request)
    return Response(wire.encode({"image_latents": latents.astype(np.float32)}), media_type=wire.MEDIA_TYPE)
