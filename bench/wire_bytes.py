"""Bytes over the wire per image in the hybrid deployment (the edge client encodes the text and
decodes the latents; the server only diffuses), for the default tiny model and for full-size
SD v1 shapes.

    python -m bench.wire_bytes [--out bench/results/wire_bytes.json]

The shapes come from the models' own configs (models/config.py defaults = SD v1: a 77 x 768
context and a 64 x 64 x 4 latent for 512 px; models/weights/tiny for the default model), and
the bodies are built by the clients' encoder (webapp/wire.py, which the edge client uses too), with
the metadata the server really returns. Counted: HTTP bodies of POST /api/v1/diffuse and its
answer (headers excluded, about 200-400 bytes each way). For comparison, the same tensors as
JSON number lists, as the seed project's REST payloads carried them.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from webapp import wire

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {"no_negative_prompt": 160_000, "negative_prompt": 280_000}  # bytes, request + response


def model_shapes(name: str) -> dict:
    """context [length, dim] and latent [h, w, channels] (+ image size) from the model configs."""
    from models.config import TextEncoderConfig, UNetConfig, VAEConfig

    if name == "full":
        te, unet, vae = TextEncoderConfig(), UNetConfig(), VAEConfig()
    else:
        root = os.path.join(REPO, "models", "weights", name)
        te = TextEncoderConfig.from_json(os.path.join(root, "text_encoder", "config.json"))
        unet = UNetConfig.from_json(os.path.join(root, "unet", "config.json"))
        vae = VAEConfig.from_json(os.path.join(root, "vae", "config.json"))
    if te.hidden_size != unet.cross_attention_dim:
        raise ValueError(f"{name}: context width {te.hidden_size} != UNet cross-attention {unet.cross_attention_dim}")
    return {"context": [te.max_position_embeddings, te.hidden_size],
            "latent": [unet.sample_size, unet.sample_size, vae.latent_channels],
            "image": [unet.sample_size * 2 ** (len(vae.block_out_channels) - 1)] * 2}


def _response_metadata(latent):
    """What the server's /diffuse returns (webapp/api/stages.py): seeds, the generation parameters
    and each row's PNG text line; a 10-digit random seed, the longest there is."""
    from models.png_info import format_fields

    seed = 4_000_000_000
    size = latent[0] * 8
    params = {"steps": 20, "guidance": 7.5, "seed": seed, "scheduler": "ddim", "height": size, "width": size,
              "model": "tiny"}
    return {"seeds": [seed], "parameters": params, "infotext_fields": [format_fields(params)]}


def txt2img_bytes(context, latent, negative_prompt=False, dtype="float16") -> dict:
    ctx = np.zeros([1, *context], dtype)
    tensors = {"context": ctx}
    if negative_prompt:
        tensors["unconditional_context"] = ctx
    request = len(wire.encode(tensors))
    response = len(wire.encode({"latents": np.zeros([1, *latent], dtype)}, _response_metadata(latent)))
    return {"request": request, "response": response, "total": request + response}


def inpaint_bytes(context, latent, image, negative_prompt=False, dtype="float16") -> dict:
    """Inpainting adds the image latents and the U8 pixel mask to the request."""
    ctx = np.zeros([1, *context], dtype)
    tensors = {"context": ctx, "image_latents": np.zeros([1, *latent], dtype), "mask": np.zeros(image, np.uint8)}
    if negative_prompt:
        tensors["unconditional_context"] = ctx
    request = len(wire.encode(tensors))
    response = len(wire.encode({"latents": np.zeros([1, *latent], dtype)}, _response_metadata(latent)))
    return {"request": request, "response": response, "total": request + response}


def json_bytes(context, latent, negative_prompt=False) -> int:
    """The same tensors as JSON float lists (random values, as real embeddings look)."""
    rng = np.random.default_rng(0)
    n = len(json.dumps(rng.standard_normal([1, *context]).astype(np.float32).tolist()))
    n *= 2 if negative_prompt else 1
    return n + len(json.dumps(rng.standard_normal([1, *latent]).astype(np.float32).tolist()))


def measure() -> dict:
    out = {}
    for name in ("tiny", "full"):
        s = model_shapes(name)
        row = {"shapes": s}
        for neg in (False, True):
            key = "negative_prompt" if neg else "no_negative_prompt"
            row[key] = {**txt2img_bytes(s["context"], s["latent"], neg), "target": TARGETS[key],
                        "json_float32_bytes": json_bytes(s["context"], s["latent"], neg)}
            row[key]["float32_total"] = txt2img_bytes(s["context"], s["latent"], neg, "float32")["total"]
        row["inpaint"] = inpaint_bytes(s["context"], s["latent"], s["image"])
        out[name] = row
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.wire_bytes", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    results = measure()
    print("bytes per image over the wire, POST /api/v1/diffuse request + response bodies, float16 tensors")
    print(f"{'model':6} {'shapes':28} {'case':20} {'request':>9} {'response':>9} {'total':>9} {'target':>9} "
          f"{'float32':>9} {'as JSON':>10}")
    for name, row in results.items():
        s = row["shapes"]
        shapes = f"ctx {s['context'][0]}x{s['context'][1]}, lat {'x'.join(map(str, s['latent']))}"
        for key in ("no_negative_prompt", "negative_prompt"):
            r = row[key]
            ok = "ok" if r["total"] < r["target"] else "MISSED"
            print(f"{name:6} {shapes:28} {key:20} {r['request']:9} {r['response']:9} {r['total']:9} "
                  f"{'< ' + str(r['target']) + ' ' + ok:>9} {r['float32_total']:9} {r['json_float32_bytes']:10}")
        r = row["inpaint"]
        print(f"{name:6} {shapes:28} {'inpaint (U8 mask)':20} {r['request']:9} {r['response']:9} {r['total']:9}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return results


if __name__ == "__main__":
    main()
