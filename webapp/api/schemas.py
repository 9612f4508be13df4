"""The request and response schemas and the OpenAPI text the routes share.

The schema's documented bounds are the default limits; the server's own (webapp.limits.Limits,
from the environment) are checked in the handlers, with the same codes as the Gradio UI.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import json

from models.chain import MAX_LORA_NAME, MAX_LORA_SCALE, MAX_LORAS
from models.pipeline import MAX_SEED
from models.schedulers import SCHEDULERS

from .. import wire
from ..limits import Limits

MAX_GUIDANCE = Limits.max_guidance
SCHEDULER_NAMES = tuple(SCHEDULERS)
Scheduler = Literal[SCHEDULER_NAMES]  # documented as an enum in the OpenAPI document
Dtype = Literal["float16", "float32"]

BINARY = {"schema": {"type": "string", "format": "binary"}}
WIRE_DOC = (
    "Tensors travel as **application/x-safetensors**: an 8-byte little-endian header length N, "
    "N bytes of UTF-8 JSON `{name: {dtype: F16|F32|U8|I32, shape: [...], data_offsets: [begin, end]}, "
    "__metadata__: {key: string}}`, then the raw little-endian row-major data. "
    "Any safetensors reader decodes it. NaN/Inf values are refused."
)


def wire_body(description: str) -> dict:
    return {"requestBody": {"required": True, "description": description,
                            "content": {wire.MEDIA_TYPE: BINARY}}}


def wire_response(description: str, extra: dict | None = None) -> dict:
    content = {wire.MEDIA_TYPE: BINARY, **(extra or {})}
    return {200: {"description": description, "content": content}}


class LoraRef(BaseModel):
    """One LoRA of a request, by its name in GET /api/v1/models -> loras."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=MAX_LORA_NAME)
    scale: float = Field(1.0, ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE, allow_inf_nan=False)


LORAS_DOC = (f"LoRAs for this request, at most {MAX_LORAS}: names from GET /api/v1/models -> loras. Merged with "
             "the prompt's <lora:name:scale> tags: the list first, then the tags; a name given again takes the "
             "later scale. None: the base model.")
LORAS_TEXT_DOC = LORAS_DOC + ' Here a JSON text, e.g. [{"name": "ink", "scale": 0.8}].'


def loras_from_text(text: str | None) -> list | None:
    """A form field's or query parameter's JSON list of LoRAs (the chain checks its items);
    empty or absent: None."""
    from ..errors import ApiError

    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the parser's depth
        raise ApiError(400, "bad_loras", f'loras must be a JSON list such as [{{"name": "ink", "scale": 0.8}}], '
                       f"got {text[:80]!r}") from None
    if not isinstance(value, list):
        raise ApiError(400, "bad_loras", f"loras must be a JSON list of {{name, scale}}, got {type(value).__name__}")
    return value


class EncodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(..., min_length=1, description="the prompts to encode (one context each), "
                               "without <lora:...> tags: LoRAs go in `loras`")
    dtype: Dtype = "float16"
    loras: list[LoraRef] = Field([], max_length=MAX_LORAS, description="LoRAs to encode with; the answer's "
                                 "metadata `loras` lists those that changed the text encoder, which /diffuse "
                                 "takes as context_loras")


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
    loras: list[LoraRef] = Field([], max_length=MAX_LORAS, description=LORAS_DOC)


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
