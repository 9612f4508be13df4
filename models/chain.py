"""How a request becomes images: the one chain of stages every deployment and client runs.

    txt2img:  encode_prompts -> diffuse -> decode
    img2img:  encode_pixels(image) -> encode_prompts -> diffuse(from the image) -> decode
    inpaint:  the mask (models.masks' rule) -> [crop the masked region] -> encode_pixels
              -> encode_prompts -> diffuse(image latents, mask) -> decode -> paste back

`stages` is anything that implements models.stages.Stages: the pipeline (in process), a
web server's engine around it, or the three-endpoint front end's remote stages. This module
validates the pixel-level inputs (raising models.errors.InvalidInput) and leaves the rest to
the stages, which validate what they receive.

LoRAs: `request_loras` is the one rule that decides a request's LoRA set, for the REST routes,
the UI, the CLI and every deployment mode: the explicit `loras` list first, then the prompt's
`<lora:name:scale>` tags in order; a name given again takes the later scale (so a tag rescales
a listed LoRA), at most MAX_LORAS names, |scale| <= MAX_LORA_SCALE. The tags are removed
before encoding. The set is then split by network (`split_loras`): encode_prompts gets the
LoRAs that touch the text encoder, diffuse those that touch the UNet plus `context_loras` (what
the contexts were encoded with), which lets a diffusion server refuse a context made without a
text-encoder LoRA (`check_context_loras`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from . import masks
from .errors import InvalidInput

MAX_LORAS = 8  # per request; each one is merged into the weights for the request's stages
MAX_LORA_SCALE = 10.0  # |scale|: past this a LoRA's update swamps the base weights
MAX_LORA_NAME = 200
TEXT_ENCODER, UNET = "text_encoder", "unet"


@dataclasses.dataclass
class Result:
    images: np.ndarray  # uint8 [B, H, W, 3]
    seeds: list
    parameters: dict  # shared parameters; per image, "seed" is seeds[k]
    token_counts: list
    truncated: list
    latents: np.ndarray | None = None  # what the decoder got (before any paste-back)

    def per_image(self, k: int) -> dict:
        return {**self.parameters, "seed": self.seeds[k]}

# -- LoRAs: the one rule for a request's set -------------------------------------------------
def _lora_scale(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidInput(f"LoRA {name!r}: the scale must be a finite number, got {value!r}", "bad_lora_scale")
    if abs(value) > MAX_LORA_SCALE:
        raise InvalidInput(f"LoRA {name!r}: the scale {value!r} is outside -{MAX_LORA_SCALE:g}..{MAX_LORA_SCALE:g}",
                           "bad_lora_scale")
    return float(value)


def _lora_entry(item):
    """(name, scale) from {"name", "scale"} (scale optional: 1.0), a (name, scale) pair or a name."""
    if isinstance(item, str):
        name, scale = item, 1.0
    elif isinstance(item, dict):
        unknown = sorted(set(item) - {"name", "scale"})
        if unknown or "name" not in item:
            raise InvalidInput(f"a LoRA is {{\"name\": ..., \"scale\": ...}}, got {str(item)[:100]!r}", "bad_loras")
        name, scale = item["name"], item.get("scale", 1.0)
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        name, scale = item
    else:
        raise InvalidInput(f"a LoRA is {{\"name\": ..., \"scale\": ...}}, got {str(item)[:100]!r}", "bad_loras")
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"a LoRA name must be a non-empty string, got {str(name)[:100]!r}", "bad_loras")
    if len(name) > MAX_LORA_NAME:
        raise InvalidInput(f"a LoRA name of {len(name)} characters; the limit is {MAX_LORA_NAME}", "bad_loras")
    return name.strip(), _lora_scale(scale, name)


def request_loras(prompt, negative_prompt, loras, available):
    """(the prompt without its <lora:...> tags, the request's [(name, scale)], or None).

    The one rule (module docstring): the explicit `loras` first, then the prompt's tags; a name
    given again takes the later scale, keeping its first position. Names are checked against
    `available` ({name: description}; an unknown one is InvalidInput("unknown_lora") naming the
    available ones). The result is None when neither the list nor the prompt names a LoRA and
    `loras` is None: "no per-request set", which the pipeline's Python API reads as "keep the
    active set" and a server reads as the base model. A list of prompts (a batch) must ask for
    one set: the weights are the same for the whole batch. Tags in the negative prompt are an
    error (InvalidInput("bad_lora_tag")): they would be encoded as text."""
    from .lora.prompt_tags import lookup_loras, parse_lora_tags

    if loras is not None and not isinstance(loras, (list, tuple)):
        raise InvalidInput(f"loras must be a list of {{name, scale}}, got {type(loras).__name__}", "bad_loras")
    if loras is not None and len(loras) > 4 * MAX_LORAS:  # before any work on an enormous list
        raise InvalidInput(f"{len(loras)} LoRAs in one request; the limit is {MAX_LORAS}", "too_many_loras")
    explicit = [_lora_entry(item) for item in (loras or ())]
    if isinstance(prompt, str):
        text, tags = parse_lora_tags(prompt)
    else:
        parsed = [parse_lora_tags(p) for p in prompt]
        text, tag_sets = [t for t, _ in parsed], [tags for _, tags in parsed]
        if any(tags != tag_sets[0] for tags in tag_sets):
            raise InvalidInput("the prompts of one batch ask for different LoRAs; a batch runs on one set of weights "
                               "(send one request per set)", "bad_lora_tag")
        tags = tag_sets[0] if tag_sets else []
    negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt or ())
    for negative in negatives:
        if parse_lora_tags(negative)[1]:
            raise InvalidInput("a <lora:...> tag in the negative prompt: LoRA tags belong in the prompt", "bad_lora_tag")
    if loras is None and not tags:
        return text, None
    scales: dict = {}
    for name, scale in [*explicit, *[(n, _lora_scale(s, n)) for n, s in tags]]:
        scales[name] = scale  # dict order: first mention; value: the last one
    if len(scales) > MAX_LORAS:  # before looking names up: the count is the problem
        raise InvalidInput(f"{len(scales)} LoRAs in one request; the limit is {MAX_LORAS}", "too_many_loras")
    chosen = lookup_loras(list(scales.items()), available or {})
    folded: dict = {}
    for name, scale in chosen:  # "Ink" and "ink" are one LoRA once looked up: the later scale wins
        folded[name] = scale
    if len(folded) > MAX_LORAS:
        raise InvalidInput(f"{len(folded)} LoRAs in one request; the limit is {MAX_LORAS}", "too_many_loras")
    return text, list(folded.items())


def checked_loras(loras, available) -> list:
    """An explicit list alone (what a stage route receives: no prompt tags), checked and looked up."""
    if loras is None:
        return []
    if not isinstance(loras, (list, tuple)):
        raise InvalidInput(f"loras must be a list of {{name, scale}}, got {type(loras).__name__}", "bad_loras")
    if len(loras) > MAX_LORAS:
        raise InvalidInput(f"{len(loras)} LoRAs in one request; the limit is {MAX_LORAS}", "too_many_loras")
    from .lora.prompt_tags import lookup_loras

    folded: dict = {}
    for name, scale in lookup_loras([_lora_entry(item) for item in loras], available or {}):
        folded[name] = scale
    return list(folded.items())


def lora_networks(name, available) -> list:
    """The networks a loaded LoRA touches, from its description (["unet"], ["text_encoder"], both)."""
    return list((available.get(name) or {}).get("networks") or ())


def split_loras(chosen, available):
    """(the LoRAs that touch the text encoder, those that touch the UNet): what each stage needs."""
    if chosen is None:
        return None, None
    te = [(n, s) for n, s in chosen if TEXT_ENCODER in lora_networks(n, available)]
    unet = [(n, s) for n, s in chosen if UNET in lora_networks(n, available)]
    return te, unet


def check_context_loras(loras, context_loras, available, *, has_unconditional, hosts_text_encoder):
    """A diffusion stage's check that its contexts were made with the request's text-encoder
    LoRAs. `loras`: the UNet set asked for; `context_loras`: what the client says its contexts
    were encoded with (POST /encode answers it as metadata `loras`). A LoRA that also touches
    the text encoder must be among `context_loras` at the same scale, and a text-encoder set
    needs the unconditional context sent too unless this stage can encode the empty prompt
    itself; otherwise InvalidInput("lora_needs_server_text_encoder"), which says how to fix it.
    Returns the set to apply while diffusing: `loras` plus the text-encoder-only ones of
    `context_loras` (so a stage that computes the empty prompt's context computes it with them)."""
    loras, context_loras = checked_loras(loras, available), checked_loras(context_loras, available)
    given = dict(context_loras)
    if hosts_text_encoder:
        fix = ("this server hosts the text encoder: encode the prompts here (POST /api/v1/encode with the same "
               "loras) and send its `loras` metadata back as context_loras")
    else:
        fix = ("this server has no text encoder, so encode on a server that has one with these loras (its "
               "/api/v1/encode), or choose LoRAs that touch only the UNet (GET /api/v1/models: edge_parts_valid)")
    for name, scale in loras:
        if TEXT_ENCODER not in lora_networks(name, available):
            continue
        if name not in given or not math.isclose(given[name], scale, rel_tol=1e-6, abs_tol=1e-9):
            made = f"at scale {given[name]:g}" if name in given else "without it"
            raise InvalidInput(f"LoRA {name!r} changes the text encoder, but the context was encoded {made} "
                               f"(an edge text encoder cannot apply it); {fix}", "lora_needs_server_text_encoder")
    if context_loras and not has_unconditional and not hosts_text_encoder:
        raise InvalidInput("the context was encoded with text-encoder LoRAs "
                           f"{[n for n, _ in context_loras]}, so the unconditional context must be too: send "
                           "`unconditional_context` (the empty or negative prompt encoded with them); " + fix,
                           "lora_needs_server_text_encoder")
    names = {n for n, _ in loras}
    return loras + [(n, s) for n, s in context_loras if n not in names]


def lora_prompt(text, chosen):
    """The prompt as the PNG stores it: without its tags, then the request's set as tags, so the
    stored prompt alone reproduces the image (explicitly listed LoRAs included)."""
    if not chosen or not isinstance(text, str):
        return text
    tags = " ".join(f"<lora:{n}:{s:g}>" for n, s in chosen)
    return f"{text} {tags}" if text else tags



def contexts(stages, prompt, negative_prompt, batch_size, check, loras=None, guidance_scale=None):
    """One context per image: a single prompt is encoded once and repeated. `loras`: the
    text-encoder LoRAs to encode with (None: whatever the stages have). With such LoRAs and no
    negative prompt, the empty prompt is encoded with them too and sent as the unconditional
    context (a diffusion server's cached empty-prompt context is the base text encoder's),
    unless guidance <= 1 runs no unconditional pass."""
    kw = {} if loras is None else {"loras": list(loras)}
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if len(prompts) not in (1, batch_size):
        raise InvalidInput(f"{len(prompts)} prompts for a batch of {batch_size}", "bad_prompts")
    enc = stages.encode_prompts(prompts, check=check, **kw)
    context = np.repeat(enc.context, batch_size // len(prompts), 0)
    counts, truncated = list(enc.token_counts), list(enc.truncated)
    uncond = None  # the model's own empty-prompt context
    if negative_prompt:
        negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) not in (1, batch_size):
            raise InvalidInput(f"{len(negatives)} negative prompts for a batch of {batch_size}", "bad_prompts")
        neg = stages.encode_prompts(negatives, check=check, **kw)
        uncond = np.repeat(neg.context, batch_size // len(negatives), 0)
        counts += neg.token_counts
        truncated += neg.truncated
    elif loras and (guidance_scale is None or guidance_scale > 1.0):
        uncond = stages.encode_prompts([""], check=check, **kw).context  # [1, 77, D]: the stage repeats it
    return context, uncond, counts, truncated


def _with_loras(stages, prompt, negative_prompt, loras):
    """(prompt without tags, encode kwargs' set, diffuse kwargs, the request's set)."""
    available = (stages.info().get("loras") or {}) if (loras is not None or has_lora_tag(prompt)) else {}
    text, chosen = request_loras(prompt, negative_prompt, loras, available)
    te, unet = split_loras(chosen, available)
    diffuse_kw = {} if chosen is None else {"loras": unet, "context_loras": te}
    return text, te, diffuse_kw, chosen


def has_lora_tag(prompt) -> bool:
    """Whether a prompt (or any of a list) names a LoRA, so the LoRAs on offer must be known
    before the request's set can be read (every client asks this one function)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    return any("<lora:" in p.lower() for p in prompts if isinstance(p, str))


def _parameters(gen, prompt, negative_prompt, chosen=None, **extra):
    text = lora_prompt(prompt, chosen) if isinstance(prompt, str) else list(prompt)
    negative = negative_prompt or ""
    loras = {} if not chosen else {"loras": [[n, s] for n, s in chosen]}
    return {**gen.parameters, "prompt": text, "negative_prompt": negative, **loras, **extra}


def txt2img(stages, prompt, negative_prompt="", *, steps=20, guidance_scale=7.5, seed=None, scheduler=None,
            height=None, width=None, batch_size=1, initial_latents=None, model=None, check=None, callback=None,
            decode=True, loras=None) -> Result:
    """`loras`: [{"name", "scale"}] or [(name, scale)] for this request, merged with the prompt's
    <lora:...> tags by request_loras (None and no tags: the stages' current set)."""
    text, te, lora_kw, chosen = _with_loras(stages, prompt, negative_prompt, loras)
    context, uncond, counts, truncated = contexts(stages, text, negative_prompt, batch_size, check, te, guidance_scale)
    gen = stages.diffuse(context, uncond, seed=seed, steps=steps, guidance_scale=guidance_scale,
                         scheduler=scheduler, height=height, width=width, initial_latents=initial_latents,
                         model=model, check=check, callback=callback, **lora_kw)
    images = stages.decode(gen.latents, check=check) if decode else None
    return Result(images, list(gen.seeds), _parameters(gen, prompt if chosen is None else text, negative_prompt,
                                                       chosen), counts, truncated, gen.latents)


def _rgb(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise InvalidInput(f"the image must be RGB uint8 [H, W, 3], got {image.dtype} {list(image.shape)}",
                           "bad_image")
    return image


def img2img(stages, prompt, image, negative_prompt="", *, strength=0.75, steps=20, guidance_scale=7.5,
            seed=None, scheduler=None, batch_size=1, model=None, check=None, callback=None, loras=None) -> Result:
    """image uint8 [H, W, 3] of any size: padded to the model's size multiple (edge pixels
    repeated) for the work and cropped back, so the result has the upload's size. `loras`: as txt2img."""
    image = _rgb(image)
    H, W = image.shape[:2]
    work_image = masks.pad_to_multiple(image, stages.info()["size_multiple"])
    text, te, lora_kw, chosen = _with_loras(stages, prompt, negative_prompt, loras)
    context, uncond, counts, truncated = contexts(stages, text, negative_prompt, batch_size, check, te, guidance_scale)
    image_latents = stages.encode_pixels(work_image[None], check=check)
    gen = stages.diffuse(context, uncond, seed=seed, steps=steps, guidance_scale=guidance_scale,
                         scheduler=scheduler, image_latents=image_latents, strength=strength, model=model,
                         check=check, callback=callback, **lora_kw)
    images = stages.decode(gen.latents, check=check)[:, :H, :W]
    return Result(images, list(gen.seeds), _parameters(gen, prompt if chosen is None else text, negative_prompt,
                                                       chosen, height=H, width=W, strength=float(strength)),
                  counts, truncated, gen.latents)


def inpaint(stages, prompt, image, mask, negative_prompt="", *, steps=20, guidance_scale=7.5, seed=None,
            scheduler=None, batch_size=1, strength=1.0, mask_blur=0.0, invert_mask=False, only_masked=False,
            padding=32, model=None, check=None, callback=None, loras=None) -> Result:
    """image uint8 [H, W, 3] of any size; mask [H, W] under models.masks' rule. Pixels the
    blurred mask does not touch are the original's exactly. With only_masked, the padded box
    around the mask is inpainted at the model's working size and scaled back into place."""
    info = stages.info()
    multiple = info["size_multiple"]
    image = _rgb(image)
    H, W = image.shape[:2]
    mask = masks.repaint_mask(mask, (H, W), invert_mask)
    if not mask.any():
        raise InvalidInput("the mask is empty (nothing painted): paint the area to repaint", "empty_mask")
    mask_blur = masks.check_mask_blur(mask_blur)
    # any size: the work is done on the image padded to the size multiple (the padding is kept,
    # not repainted) and the result cropped back, so the unmasked pixels stay the upload's own
    padded, mask = masks.pad_to_multiple(image, multiple), masks.pad_to_multiple(mask, multiple, fill=0)
    box, work_image, work_mask = None, padded, mask
    if only_masked:
        box = y0, y1, x0, x1 = masks.crop_box(mask > 0, int(padding), multiple)
        crop_h, crop_w = y1 - y0, x1 - x0
        scale = (info["default_size"] or max(crop_h, crop_w)) / max(crop_h, crop_w)
        th = max(multiple, int(round(crop_h * scale / multiple)) * multiple)
        tw = max(multiple, int(round(crop_w * scale / multiple)) * multiple)
        work_image = masks.resize(padded[y0:y1, x0:x1], (th, tw))
        work_mask = masks.resize(mask[y0:y1, x0:x1], (th, tw), smooth=False)
    text, te, lora_kw, chosen = _with_loras(stages, prompt, negative_prompt, loras)
    context, uncond, counts, truncated = contexts(stages, text, negative_prompt, batch_size, check, te, guidance_scale)
    image_latents = stages.encode_pixels(work_image[None], check=check)
    weight = masks.repaint_weight(work_mask, mask_blur)
    masked_latents = None
    if info["inpainting_unet"]:
        # as diffusers does: the repainted pixels set to 0 in [-1, 1] (mid-grey), which uint8
        # cannot express, so this image travels as float32
        masked = (work_image.astype(np.float32) / 127.5 - 1.0) * (weight < 0.5)[..., None]
        masked_latents = stages.encode_pixels(masked[None], check=check)
    gen = stages.diffuse(context, uncond, seed=seed, steps=steps, guidance_scale=guidance_scale,
                         scheduler=scheduler, image_latents=image_latents, mask=work_mask,
                         masked_image_latents=masked_latents, strength=strength, mask_blur=mask_blur,
                         model=model, check=check, callback=callback, **lora_kw)
    out = masks.paste_back(work_image, stages.decode(gen.latents, check=check), weight)
    if box is not None:  # scale the repainted box back and paste only the masked pixels
        y0, y1, x0, x1 = box
        region_weight = masks.repaint_weight(mask[y0:y1, x0:x1], mask_blur)
        full = np.repeat(padded[None], len(out), 0)
        for k in range(len(out)):
            patch = masks.resize(out[k], (y1 - y0, x1 - x0))
            full[k, y0:y1, x0:x1] = masks.paste_back(padded[y0:y1, x0:x1], patch[None], region_weight)[0]
        out = full
    out = out[:, :H, :W]
    extra = {"height": H, "width": W, "strength": float(strength), "mask_blur": mask_blur}
    if only_masked:
        extra["only_masked_padding"] = int(padding)
    return Result(out, list(gen.seeds), _parameters(gen, prompt if chosen is None else text, negative_prompt,
                                                    chosen, **extra), counts, truncated, gen.latents)
