"""Phone-class edge client: the TFLite text encoder, image encoder and decoder run here; only the
text embedding (and, for inpainting, the image latents and the mask) go to the server's
diffusion endpoint, and only latents come back.

    python -m edge.client --server http://127.0.0.1:7860 --exports EXPORT_DIR \
        --prompt "a red circle on a blue background" --seed 0 --out out.png
    python -m edge.client --server URL --exports EXPORT_DIR --prompt "a green square" \
        --image in.png --mask mask.png --mask-blur 4 --out inpainted.png

It uses ai-edge-litert, numpy, Pillow, the standard library and the project's tokenizer
(models/tokenizer.py, pure Python), never TensorFlow: it is what an Android or iOS app does,
in Python (see the README's "Edge clients").

LoRAs (`--lora NAME[:SCALE]`, or `<lora:name:scale>` in the prompt; the server's GET
/api/v1/models lists them): one that touches only the UNet keeps the edge text encoder valid,
so the prompt is encoded here and the LoRA named to /diffuse. One that touches the text encoder
(`edge_parts_valid: false`) cannot be encoded here: the client asks the server to encode the
prompt and the unconditional prompt with the LoRAs (POST /api/v1/encode) when the server hosts
a text encoder, and passes the answer's `loras` on as `context_loras`; otherwise it stops with
an error naming the LoRA. The set is decided by the server's own rule (models.chain.request_loras).

TF Serving (`--tf-serving http://host:8501/v1/models/diffusion` instead of `--server`): the
export's diffusion SavedModel behind TF Serving's REST API, with the compact-tensor signatures
(edge/tf_serving.py); no LoRAs per request there (bake them in with `python -m exports --lora`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import numpy as np

from models import masks
from webapp import wire  # numpy only: the same codec as the server's

COMPONENTS = ("text_encoder", "decoder", "image_encoder")
# --vae taesd: the export's TAESD files (python -m exports --taesd) in the decoder's and image
# encoder's places; same inputs and outputs, a fraction of the cost on a small device.
VAE_FILES = {"full": {}, "taesd": {"decoder": "taesd_decoder", "image_encoder": "taesd_encoder"}}


class EdgeError(RuntimeError):
    """A problem the user can act on (bad export folder, server error); the text says what."""


def uses_unconditional(guidance_scale: float, manifest: dict) -> bool:
    """Whether a request needs the negative prompt's context: only with classifier-free guidance
    (guidance > 1 on a UNet without a guidance embedding). Otherwise the server runs no
    unconditional pass (models/sampling.py) and never reads it, so the client encodes and sends
    one context. The same rule as edge/web/guidance.js; manifests from before `model.guidance_embedding`
    mean a plain UNet."""
    return float(guidance_scale) > 1.0 and not manifest.get("model", {}).get("guidance_embedding", False)


def paste_back(image: np.ndarray, decoded: np.ndarray, mask: np.ndarray, mask_blur: float) -> np.ndarray:
    """Pixels the blurred mask does not touch are the original's: models.masks' rule, as the chain."""
    return masks.paste_back(image, decoded, masks.repaint_weight(mask, mask_blur))


class EdgeModels:
    """The TFLite files of an export (manifest.json), and its tokenizer."""

    def __init__(self, exports_dir: str, precision: str = "float32", components=COMPONENTS, vae: str = "full"):
        """`vae`: "full" (the model's VAE) or "taesd" (the TAESD files, listed in the manifest's
        `decoders` / `image_encoders` when the export has them)."""
        from ai_edge_litert.interpreter import Interpreter

        from models.tokenizer import CLIPTokenizer

        path = os.path.join(exports_dir, "manifest.json")
        if not os.path.isfile(path):
            raise EdgeError(f"{exports_dir} has no manifest.json: is it an export folder (python -m exports)?")
        with open(path, encoding="utf-8") as f:
            self.manifest = json.load(f)
        self.dir = exports_dir
        if vae not in VAE_FILES:
            raise EdgeError(f"vae must be one of {', '.join(VAE_FILES)}, got {vae!r}")
        self.vae = vae
        self.runners, self.files = {}, {}
        for component in components:
            stored = VAE_FILES[vae].get(component, component)
            art = next((a for a in self.manifest["artifacts"] if a["component"] == stored
                        and a["format"] == "tflite" and a["precision"] == precision), None)
            if art is None:
                if component == "image_encoder":
                    continue  # optional: only inpainting needs it
                how = "--taesd PATH --formats tflite" if stored != component else "--formats tflite"
                raise EdgeError(f"the export has no {precision} TFLite {stored} (export with {how} "
                                f"--quantize {precision})")
            interp = Interpreter(model_path=os.path.join(exports_dir, art["path"]))
            self.runners[component] = interp.get_signature_runner("serving_default")
            self.files[component] = art["path"]
        tok_dir = os.path.join(exports_dir, os.path.dirname(self.manifest["tokenizer"]["files"]["vocab"]))
        self.tokenizer = CLIPTokenizer.from_pretrained_folder(tok_dir)
        self.image_size = (self.manifest["image"]["height"], self.manifest["image"]["width"])

    def encode_text(self, prompt: str) -> np.ndarray:
        """prompt -> context float32 [1, 77 k, D]: the server's rule (models.prompt_weighting:
        emphasis, 75-token chunks); the 77-token TFLite encoder runs once per chunk."""
        from models.prompt_weighting import encode_prompts

        def encode_ids(ids):
            return np.concatenate([np.asarray(self.runners["text_encoder"](token_ids=row[None].astype(np.int32))
                                              ["context"], np.float32) for row in ids])

        return encode_prompts(self.tokenizer, encode_ids, [prompt])[0]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """latents [B, h, w, 4] -> uint8 [B, H, W, 3] (the TFLite file has batch 1: row by row)."""
        rows = [self.runners["decoder"](latents=np.asarray(latents[i:i + 1], np.float32))["images"]
                for i in range(latents.shape[0])]
        return np.concatenate(rows, 0).astype(np.uint8)

    def encode_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> latents float32 [1, h, w, 4] (posterior mean x scaling factor)."""
        if "image_encoder" not in self.runners:
            raise EdgeError("the export has no TFLite image_encoder: inpainting needs it")
        return np.asarray(self.runners["image_encoder"](images=np.asarray(image, np.uint8)[None])["latents"],
                          np.float32)


@dataclass
class EdgeResult:
    images: np.ndarray  # uint8 [B, H, W, 3]
    seeds: list
    parameters: dict
    bytes_sent: int
    bytes_received: int
    timings: dict = field(default_factory=dict)  # seconds per stage


class EdgeClient:
    def __init__(self, server: str | None, models: EdgeModels, token: str | None = None, dtype: str = "float16",
                 timeout: float = 600.0, tf_serving: str | None = None):
        """`server`: the web app's base URL; or `tf_serving`: TF Serving's model URL
        (http://host:8501/v1/models/diffusion), one of the two."""
        if dtype not in ("float16", "float32"):
            raise EdgeError(f"dtype must be float16 or float32, got {dtype!r}")
        if (server is None) == (tf_serving is None):
            raise EdgeError("give the web app's URL (server) or TF Serving's model URL (tf_serving), one of the two")
        self.tf_serving = None
        if tf_serving is not None:
            from .tf_serving import TFServingDiffusion

            self.tf_serving = TFServingDiffusion(tf_serving, models.manifest, lambda: models.encode_text(""), timeout)
        self.server, self.models, self.token, self.timeout = (server or "").rstrip("/"), models, token, timeout
        self.np_dtype = np.float16 if dtype == "float16" else np.float32
        self._server_info = None
        self.encoded_on_server = False  # whether the last request's prompts were encoded by the server

    def _call(self, path, *, data=None, content_type=None, accept=None):
        """GET (data None) or POST to the server; (body bytes, response headers). Errors: EdgeError
        with the server's message (and its code, for a client that wants to react to it)."""
        req = urllib.request.Request(f"{self.server}{path}", data=data, method="GET" if data is None else "POST")
        if content_type:
            req.add_header("Content-Type", content_type)
        if accept:
            req.add_header("Accept", accept)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read(), resp.headers
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            try:
                err = json.loads(detail).get("error", {})
                detail = f"{err.get('message', detail)} ({err.get('code')})" if err.get("code") else err.get("message", detail)
            except (ValueError, AttributeError):
                pass
            raise EdgeError(f"the server answered {e.code}: {detail}") from None
        except urllib.error.URLError as e:
            raise EdgeError(f"cannot reach {self.server}: {e.reason}") from None

    def server_info(self, refresh=False) -> dict:
        """GET /api/v1/models (asked once): the server's LoRAs and which networks it hosts."""
        if self._server_info is None or refresh:
            self._server_info = json.loads(self._call("/api/v1/models")[0])
        return self._server_info

    def _lora_plan(self, prompt, negative_prompt, loras):
        """(prompt without tags, the UNet set for /diffuse, the text-encoder set or []): the
        server's rule for the request's set, split by the network each LoRA touches."""
        from models import chain
        from models.errors import InvalidInput

        needs_info = bool(loras) or chain.has_lora_tag(prompt)
        if needs_info and self.tf_serving is not None:
            raise EdgeError("TF Serving serves the diffusion model as it was exported: LoRAs are baked in at export "
                            "(python -m exports --lora NAME), not chosen per request")
        available = (self.server_info().get("loras") or {}) if needs_info else {}
        try:
            text, chosen = chain.request_loras(prompt, negative_prompt or "", list(loras or ()) or None, available)
        except InvalidInput as e:
            raise EdgeError(f"{e.message} ({e.code})") from None
        te, unet = chain.split_loras(chosen, available)
        return text, unet or [], te or []

    def _encode_on_server(self, prompts, te_loras):
        """POST /api/v1/encode with the LoRAs: contexts made by the server's text encoder, and the
        set it reports (what /diffuse takes as context_loras)."""
        info = self.server_info()
        if "text_encoder" not in (info.get("loaded_networks") or ()):
            names = ", ".join(n for n, _ in te_loras)
            raise EdgeError(f"the LoRA(s) {names} change the text encoder, so this device's exported text encoder "
                            "cannot encode for them, and this server hosts no text encoder to do it "
                            f"(component {info.get('component')!r}); pick LoRAs with edge_parts_valid, or use a "
                            "server that hosts the text encoder")
        body = json.dumps({"prompts": list(prompts), "dtype": np.dtype(self.np_dtype).name,
                           "loras": [{"name": n, "scale": s} for n, s in te_loras]}).encode()
        data, _ = self._call("/api/v1/encode", data=body, content_type="application/json", accept=wire.MEDIA_TYPE)
        tensors, meta = wire.decode(data)
        return tensors["context"].astype(self.np_dtype), json.loads(meta.get("loras", "[]"))

    def diffuse(self, tensors: dict, params: dict):
        """POST /api/v1/diffuse (or TF Serving's predict); returns (latents float32, metadata, bytes
        sent, bytes received)."""
        if self.tf_serving is not None:
            from .tf_serving import TFServingError

            try:
                return self.tf_serving.diffuse(tensors, params)
            except TFServingError as e:
                raise EdgeError(str(e)) from None
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        body = wire.encode(tensors)
        data, _ = self._call(f"/api/v1/diffuse?{query}", data=body, content_type=wire.MEDIA_TYPE,
                             accept=wire.MEDIA_TYPE)
        tensors, metadata = wire.decode(data)
        if "latents" not in tensors:
            raise EdgeError(f"the server's answer has no 'latents' tensor (got {sorted(tensors)})")
        return np.asarray(tensors["latents"], np.float32), metadata, len(body), len(data)

    def _common(self, prompt, negative_prompt, guidance_scale, timings, loras=None):
        """The contexts and the LoRA query parameters of a request (see the module docstring)."""
        t = time.perf_counter()
        text, unet, te = self._lora_plan(prompt, negative_prompt, loras)
        lora_params = {"loras": json.dumps([{"name": n, "scale": s} for n, s in unet]) if unet else None}
        self.encoded_on_server = bool(te)
        if te:  # the edge text encoder is not valid for these: the server encodes
            prompts = [text]
            if uses_unconditional(guidance_scale, self.models.manifest):
                prompts.append(negative_prompt or "")  # the empty prompt too: it must see the LoRAs
            contexts, applied = self._encode_on_server(prompts, te)
            tensors = {"context": contexts[:1]}
            if len(prompts) == 2:
                tensors["unconditional_context"] = contexts[1:]
            lora_params["context_loras"] = json.dumps([{"name": n, "scale": s} for n, s in applied])
            timings["text_encoder_on_server"] = time.perf_counter() - t
            return tensors, lora_params
        tensors = {"context": self.models.encode_text(text).astype(self.np_dtype)}
        # without a negative prompt the server uses the model's own empty-prompt context
        if negative_prompt and uses_unconditional(guidance_scale, self.models.manifest):
            tensors["unconditional_context"] = self.models.encode_text(negative_prompt).astype(self.np_dtype)
        timings["text_encoder"] = time.perf_counter() - t
        return tensors, lora_params

    def _finish(self, tensors, params, timings):
        t = time.perf_counter()
        latents, meta, sent, received = self.diffuse(tensors, params)
        timings["diffuse_request"] = time.perf_counter() - t
        t = time.perf_counter()
        images = self.models.decode(latents)
        timings["decoder"] = time.perf_counter() - t
        seeds = json.loads(meta.get("seeds", "[]"))
        parameters = json.loads(meta.get("parameters", "{}"))
        return images, seeds, parameters, sent, received

    def txt2img(self, prompt, negative_prompt=None, seed=None, steps=20, guidance_scale=7.5,
                scheduler="ddim", loras=None) -> EdgeResult:
        """`loras`: [(name, scale)] of the server's LoRAs (with the prompt's <lora:...> tags)."""
        timings = {}
        tensors, lora_params = self._common(prompt, negative_prompt, guidance_scale, timings, loras)
        params = dict(seed=seed, steps=steps, guidance_scale=guidance_scale, scheduler=scheduler,
                      dtype=np.dtype(self.np_dtype).name, **lora_params)
        images, seeds, parameters, sent, received = self._finish(tensors, params, timings)
        return EdgeResult(images, seeds, parameters, sent, received, timings)

    def inpaint(self, prompt, image, mask, negative_prompt=None, seed=None, steps=20, guidance_scale=7.5,
                scheduler="ddim", mask_blur=0.0, strength=1.0, loras=None) -> EdgeResult:
        """image uint8 [H, W, 3], mask [H, W] at the model's image size (models.masks' rule: values
        >= 128 of 255 repaint)."""
        image, mask = np.asarray(image, np.uint8), np.asarray(mask)
        if image.shape[:2] != tuple(self.models.image_size) or mask.shape != image.shape[:2]:
            raise EdgeError(f"image {list(image.shape[:2])} and mask {list(mask.shape)} must both be "
                            f"{list(self.models.image_size)} (the exported encoder's fixed size)")
        if self.models.manifest["diffusion"].get("unet_in_channels", 4) != 4:
            raise EdgeError("this model has a 9-channel inpainting UNet; this client sends latent-blend inputs only")
        timings = {}
        tensors, lora_params = self._common(prompt, negative_prompt, guidance_scale, timings, loras)
        t = time.perf_counter()
        tensors["image_latents"] = self.models.encode_image(image).astype(self.np_dtype)
        timings["image_encoder"] = time.perf_counter() - t
        tensors["mask"] = masks.repaint_mask(mask)  # the server applies the same rule again
        params = dict(seed=seed, steps=steps, guidance_scale=guidance_scale, scheduler=scheduler,
                      strength=strength, mask_blur=mask_blur, dtype=np.dtype(self.np_dtype).name, **lora_params)
        decoded, seeds, parameters, sent, received = self._finish(tensors, params, timings)
        images = paste_back(image, decoded, mask, mask_blur)
        return EdgeResult(images, seeds, parameters, sent, received, timings)


def _lora_arg(text):
    name, sep, scale = text.rpartition(":")
    if sep and name:
        try:
            return name, float(scale)
        except ValueError:
            pass
    return text, 1.0


def _parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m edge.client", description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="base URL of the web app, e.g. http://127.0.0.1:7860")
    where.add_argument("--tf-serving", help="TF Serving's diffusion model URL, e.g. http://127.0.0.1:8501/v1/models/diffusion")
    p.add_argument("--exports", required=True, help="export folder with manifest.json and tflite/")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--seed", type=int, default=None, help="default: the server picks one (printed)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--scheduler", default="ddim")
    p.add_argument("--image", help="inpainting: the image to repaint (resized to the model's size)")
    p.add_argument("--mask", help="inpainting: white/painted = repaint (same size as the image)")
    p.add_argument("--mask-blur", type=float, default=0.0)
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--lora", action="append", default=[], type=_lora_arg, metavar="NAME[:SCALE]",
                   help="a LoRA of the server's (GET /api/v1/models), repeatable; <lora:name:scale> in "
                        "--prompt works too. One that changes the text encoder is encoded by the server")
    p.add_argument("--vae", default="full", choices=tuple(VAE_FILES),
                   help="decoder and image encoder: the model's VAE, or the export's TAESD (exported with --taesd)")
    p.add_argument("--precision", default="float32", choices=("float32", "float16"),
                   help="which TFLite files to run (float16 files are half the size)")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="tensors on the wire")
    p.add_argument("--token", default=os.environ.get("SD_API_TOKEN"), help="API token (default: $SD_API_TOKEN)")
    p.add_argument("--out", required=True, help="PNG to write (image k of a batch: <out>-k.png)")
    args = p.parse_args(argv)
    if (args.image is None) != (args.mask is None):
        p.error("inpainting needs both --image and --mask")
    return args


def main(argv=None):
    args = _parse(argv)
    from PIL import Image

    try:
        models = EdgeModels(args.exports, args.precision, vae=args.vae)
        client = EdgeClient(args.server, models, token=args.token, dtype=args.dtype, tf_serving=args.tf_serving)
        common = dict(negative_prompt=args.negative_prompt, seed=args.seed, steps=args.steps,
                      guidance_scale=args.guidance, scheduler=args.scheduler, loras=args.lora or None)
        if args.image:
            h, w = models.image_size
            image = np.asarray(Image.open(args.image).convert("RGB").resize((w, h), Image.LANCZOS))
            mask = np.asarray(Image.open(args.mask).convert("L").resize((w, h), Image.NEAREST))
            result = client.inpaint(args.prompt, image, mask, mask_blur=args.mask_blur, strength=args.strength,
                                    **common)
        else:
            result = client.txt2img(args.prompt, **common)
    except EdgeError as e:
        print(f"edge.client: error: {e}", file=sys.stderr)
        return 1
    from models.png_info import png_bytes  # PIL only: the same A1111 "parameters" text as the server's

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    outs = [args.out] if len(result.images) == 1 else [
        f"{os.path.splitext(args.out)[0]}-{k}.png" for k in range(len(result.images))]
    for img, path, seed in zip(result.images, outs, result.seeds):
        params = {**result.parameters, "prompt": args.prompt, "negative_prompt": args.negative_prompt or "",
                  "seed": seed}
        with open(path, "wb") as f:
            f.write(png_bytes(img, params))
    stages = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.timings.items())
    print(f"wrote {', '.join(outs)} (seed {result.seeds}; sent {result.bytes_sent} B, received "
          f"{result.bytes_received} B; {stages})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
