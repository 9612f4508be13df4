"""The Gradio UI: txt2img, inpainting and PNG info tabs, and a model selector.

Generation goes through the same Gate as the REST API (one bounded queue for both), the same
limits (webapp.limits.Limits: the Gradio API is a second door to the model, and Gradio
itself checks only the sliders' ranges, NaN passing) and the same front-end chain
(models.chain).
Per-step previews decode the intermediate latents; Stop cancels the running job at its next
step. The model is the dropdown's value, sent with each run: choosing one changes nothing for
other users or REST clients. Errors raise gr.Error with the API's message, so gradio_client
raises too. Nothing is computed at launch (no cached examples), so a Space starts in seconds.
"""

from __future__ import annotations

import asyncio
import os
import tempfile

import numpy as np

from models import chain
from models.errors import InvalidInput
from models.pipeline import MAX_SEED

from .errors import ApiError

RANDOM = -1
CSS = "#token-count {text-align: right; font-size: 0.85em; opacity: 0.8} .tight {gap: 4px}"


def _save_pngs(images, result, model, out_dir):
    """PNG files carrying their parameters (the gallery's downloads are these files)."""
    from models.png_info import png_bytes

    paths = []
    for k, im in enumerate(images):
        params = {**result.per_image(k), "model": model}
        fd, path = tempfile.mkstemp(prefix=f"sd-{params['seed']}-", suffix=".png", dir=out_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(png_bytes(im, params))
        paths.append((path, f"seed {params['seed']}"))
    return paths


def _fit(image, mask, multiple):
    """Round an uploaded image (and mask) down to the model's size multiple."""
    from PIL import Image

    H, W = image.shape[:2]
    h, w = max(multiple, H // multiple * multiple), max(multiple, W // multiple * multiple)
    if (h, w) == (H, W):
        return image, mask
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.LANCZOS))
    mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
    return image, mask


def mask_from_editor(value, uploaded_mask=None):
    """Gradio 6 ImageMask value {"background", "layers", "composite"} -> (RGB image, mask).
    The painted mask is the alpha of layers[0]; an uploaded mask image (white = repaint)
    takes precedence when given."""
    if value is None or value.get("background") is None:
        raise ApiError(400, "no_image", "upload an image to inpaint")
    bg = np.asarray(value["background"])
    image = bg[..., :3].astype(np.uint8) if bg.ndim == 3 else np.stack([bg] * 3, -1).astype(np.uint8)
    if uploaded_mask is not None:
        m = np.asarray(uploaded_mask)
        if m.ndim == 3:
            m = m[..., 3] if m.shape[-1] == 4 and m[..., 3].min() < 255 else m[..., :3].max(-1)
        return image, m.astype(np.uint8)
    layers = value.get("layers") or []
    if not layers or layers[0] is None:
        return image, np.zeros(image.shape[:2], np.uint8)
    layer = np.asarray(layers[0])
    m = layer[..., 3] if layer.ndim == 3 and layer.shape[-1] == 4 else (layer.max(-1) if layer.ndim == 3 else layer)
    return image, (m > 0).astype(np.uint8) * 255


def check_upload_sizes(limits, editor, uploaded_mask):
    """Every image a client sent for inpainting within max_side, before any work on them."""
    editor = editor or {}
    for im in [uploaded_mask, editor.get("background"), *(editor.get("layers") or [])]:
        if im is not None:
            limits.check_size(*np.shape(im)[:2])


def build_ui(server):
    import gradio as gr

    engine = server.engine
    info = engine.info()
    L = server.limits
    from models.schedulers import SCHEDULERS

    schedulers = list(SCHEDULERS)
    size = info["default_size"]
    multiple = info["size_multiple"]
    out_dir = tempfile.mkdtemp(prefix="sd-webapp-")
    max_tokens = info.get("max_tokens", 75)
    base_model = info["base_model"]

    def token_label(text):
        """Live token count. It runs outside the queue, on every keystroke: text over the
        character limit gets a note without being tokenized."""
        text = text or ""
        if len(text) > L.max_prompt_chars:
            return f"{len(text)} characters: over the {L.max_prompt_chars}-character limit"
        try:
            n = engine.count_tokens(text or "")
        except Exception:
            return ""
        over = f" — {n - max_tokens} will be dropped" if n > max_tokens else ""
        return f"{n}/{max_tokens} tokens{over}"

    async def run_job(fn, preview_every):
        """Run fn(job, callback) through the gate; yield (kind, payload) for previews and the result."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()

        def callback(i, n, latents):
            preview = None
            if preview_every and (i % preview_every == 0 or i == n) and not engine.remote:
                preview = engine.decode(latents[:1])[0]
            loop.call_soon_threadsafe(updates.put_nowait, ("step", (i, n, preview)))

        task = asyncio.ensure_future(server.gate.run(lambda job: fn(job, callback)))
        getter = None
        try:
            while not task.done():
                getter = asyncio.ensure_future(updates.get())
                done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
            yield ("done", task.result())
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
            if not task.done():
                task.cancel()  # Stop pressed or the browser left: the worker stops at its next step

    def error_text(e):
        return f"**Error:** {e.message}"  # ApiError and InvalidInput both carry one

    def checked(prompt, negative, steps, guidance, seed, batch):
        """The REST limits on what any client may send here; (seed or None, steps, batch)."""
        L.check_prompt(prompt or "")
        L.check_prompt(negative or "", "negative prompt")
        L.check_steps(steps)
        L.check_guidance(guidance)
        L.check_batch(batch)
        if seed is not None and seed > MAX_SEED:
            raise ApiError(422, "invalid_parameters", f"seed must be at most {MAX_SEED}, got {seed}")
        return (None if seed is None or seed < 0 else int(seed)), int(steps), int(batch)

    async def generate(prompt, negative, steps, guidance, seed, scheduler, batch, width, height, model, previews):
        prompt, negative = prompt or "", negative or ""  # a Textbox sent as null (the API): no text
        try:
            seed, steps, batch = checked(prompt, negative, steps, guidance, seed, batch)
            L.check_size(height, width)
        except ApiError as e:
            raise gr.Error(e.message) from None
        model = model or base_model

        def fn(job, cb):
            return chain.txt2img(engine, prompt, negative, steps=int(steps), guidance_scale=float(guidance),
                                 seed=seed, scheduler=scheduler, height=int(height), width=int(width),
                                 batch_size=int(batch), model=model, check=job.check, callback=cb)

        async for item in _stream(fn, previews, model):
            yield item

    async def _stream(fn, previews, model):
        try:
            async for kind, payload in run_job(fn, 2 if previews else 0):
                if kind == "step":
                    i, n, preview = payload
                    gallery = gr.skip() if preview is None else [(preview, f"step {i}/{n}")]
                    yield gallery, f"denoising: step {i} of {n}", gr.skip()
                else:
                    result = payload
                    files = _save_pngs(result.images, result, model, out_dir)
                    dropped = [t for t in result.truncated if t]
                    note = f" (prompt truncated: {dropped[0]} tokens dropped)" if dropped else ""
                    yield files, f"done: seeds {', '.join(map(str, result.seeds))}{note}", result.seeds[0]
        except (ApiError, InvalidInput) as e:
            yield gr.skip(), error_text(e), gr.skip()  # the status line, then the error for the client
            raise gr.Error(e.message) from None

    async def inpaint(editor, mask_upload, prompt, negative, steps, guidance, seed, scheduler, batch, strength,
                      blur, invert, only_masked, padding, model, previews):
        prompt, negative = prompt or "", negative or ""
        try:
            seed, steps, batch = checked(prompt, negative, steps, guidance, seed, batch)
            check_upload_sizes(L, editor, mask_upload)
            if only_masked:
                L.check_size(size, size)  # the masked box is inpainted at the model's size
            image, mask = mask_from_editor(editor, mask_upload)
            if not only_masked:
                image, mask = _fit(image, mask, multiple)
        except ApiError as e:
            raise gr.Error(e.message) from None
        model = model or base_model

        def fn(job, cb):
            return chain.inpaint(engine, prompt, image, mask, negative, steps=int(steps),
                                 guidance_scale=float(guidance), seed=seed, scheduler=scheduler, batch_size=int(batch),
                                 strength=float(strength), mask_blur=float(blur), invert_mask=bool(invert),
                                 only_masked=bool(only_masked), padding=int(padding), model=model, check=job.check,
                                 callback=cb)

        async for item in _stream(fn, previews, model):
            yield item

    def select_model(name):
        """Only says which model this page's runs will use: each run sends the dropdown's value,
        and the engine swaps the UNet for that run. Nothing global changes here."""
        if name not in engine.model_names():
            raise gr.Error(f"unknown model {name!r}")
        return f"diffusion model: **{name}** (text encoder and decoder unchanged)"

    def png_info(path):
        from models.png_info import read_parameters

        if not path:
            return "", {}
        try:
            params = read_parameters(path)
        except Exception as e:
            return f"not a readable image: {e}", {}
        if not params:
            return "this image carries no generation parameters", {}
        from models.png_info import format_parameters

        return format_parameters(params), params

    def send_to_txt2img(params):
        if not params:
            return [gr.skip()] * 8 + [gr.Tabs()]
        def get(k, default):
            return params.get(k, default)
        return (get("prompt", ""), get("negative_prompt", ""), get("steps", 20), get("guidance", 7.5),
                get("seed", RANDOM), get("scheduler", "ddim") if get("scheduler", "") in schedulers else "ddim",
                get("width", size), get("height", size), gr.Tabs(selected="txt2img"))

    with gr.Blocks(title="Stable Diffusion, cloud and edge", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("## Stable Diffusion, cloud and edge\nThe embedded default model draws coloured shapes on "
                    "coloured backgrounds: try *a red circle on a blue background*. "
                    "REST API: [/api/docs](/api/docs) · browser client: [/edge/](/edge/)")
        with gr.Row():
            model = gr.Dropdown(choices=engine.model_names(), value=base_model, label="Diffusion model",
                                info="base model or a fine-tuned one from the models folder; switching swaps only "
                                     "the UNet", scale=3)
            model_status = gr.Markdown(f"diffusion model: **{base_model}**")
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                with gr.Row():
                    with gr.Column(scale=3):
                        prompt = gr.Textbox(label="Prompt", lines=2, value="a red circle on a blue background",
                                            elem_id="prompt", max_length=L.max_prompt_chars)
                        tokens = gr.Markdown(token_label("a red circle on a blue background"), elem_id="token-count")
                        negative = gr.Textbox(label="Negative prompt", lines=1, max_length=L.max_prompt_chars)
                        neg_tokens = gr.Markdown(token_label(""), elem_id="token-count")
                        with gr.Row():
                            steps = gr.Slider(1, L.max_steps, value=20, step=1, label="Steps")
                            guidance = gr.Slider(0, min(20, L.max_guidance), value=7.5, step=0.5,
                                                 label="Guidance scale")
                        with gr.Row():
                            scheduler = gr.Dropdown(schedulers, value="ddim", label="Scheduler")
                            batch = gr.Slider(1, L.max_batch, value=1, step=1, label="Batch size")
                        with gr.Row():
                            width = gr.Slider(multiple, min(L.max_side, 4 * size), value=size, step=multiple,
                                              label="Width")
                            height = gr.Slider(multiple, min(L.max_side, 4 * size), value=size, step=multiple,
                                               label="Height")
                        with gr.Row(elem_classes="tight"):
                            seed = gr.Number(value=RANDOM, precision=0, label="Seed (-1 = random)", scale=3)
                            random_btn = gr.Button("Random", scale=1, size="sm")
                            reuse_btn = gr.Button("Reuse last", scale=1, size="sm")
                        previews = gr.Checkbox(value=True, label="Live previews")
                        with gr.Row():
                            go = gr.Button("Generate", variant="primary", elem_id="generate")
                            stop = gr.Button("Stop", variant="stop")
                    with gr.Column(scale=2):
                        gallery = gr.Gallery(label="Images (downloads are PNGs with their parameters)", columns=2,
                                             height=420, format="png", elem_id="gallery")
                        status = gr.Markdown("", elem_id="status")
                last_seed = gr.State(None)
            with gr.Tab("Inpainting", id="inpaint"):
                with gr.Row():
                    with gr.Column(scale=3):
                        editor = gr.ImageMask(label="Image: paint the area to repaint", type="numpy",
                                              image_mode="RGBA", height=360,
                                              brush=gr.Brush(default_size=6, colors=["#ffffff"], color_mode="fixed"))
                        mask_upload = gr.Image(label="Or upload a mask (white = repaint)", type="numpy",
                                               image_mode="L", height=160)
                        i_prompt = gr.Textbox(label="Prompt", lines=2, value="a green square on a blue background",
                                              elem_id="inpaint-prompt", max_length=L.max_prompt_chars)
                        i_negative = gr.Textbox(label="Negative prompt", max_length=L.max_prompt_chars)
                        with gr.Row():
                            invert = gr.Checkbox(label="Invert mask (repaint the unpainted area)")
                            only_masked = gr.Checkbox(label="Inpaint only the masked region")
                        with gr.Row():
                            padding = gr.Slider(0, 256, value=32, step=8, label="Padding around the region (px)")
                            blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur (px)")
                            strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Strength")
                        with gr.Row():
                            i_steps = gr.Slider(1, L.max_steps, value=20, step=1, label="Steps")
                            i_guidance = gr.Slider(0, min(20, L.max_guidance), value=7.5, step=0.5,
                                                   label="Guidance scale")
                            i_scheduler = gr.Dropdown(schedulers, value="ddim", label="Scheduler")
                        with gr.Row():
                            i_seed = gr.Number(value=RANDOM, precision=0, label="Seed (-1 = random)")
                            i_batch = gr.Slider(1, L.max_batch, value=1, step=1, label="Batch size")
                        with gr.Row():
                            i_go = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
                            i_stop = gr.Button("Stop", variant="stop")
                    with gr.Column(scale=2):
                        i_gallery = gr.Gallery(label="Inpainted (unmasked pixels are the original's)", columns=2,
                                               height=420, format="png")
                        i_status = gr.Markdown("", elem_id="inpaint-status")
            with gr.Tab("PNG info", id="pnginfo"):
                with gr.Row():
                    png = gr.Image(label="A PNG made here (or by AUTOMATIC1111)", type="filepath",
                                   sources=["upload", "clipboard"], height=320)
                    with gr.Column():
                        png_text = gr.Textbox(label="Parameters", lines=6, elem_id="png-text")
                        png_params = gr.JSON(label="Parsed")
                        to_txt2img = gr.Button("Send to txt2img", variant="primary")

        prompt.change(token_label, prompt, tokens, queue=False, show_progress="hidden", api_name="count_tokens")
        negative.change(token_label, negative, neg_tokens, queue=False, show_progress="hidden", api_visibility="private")
        random_btn.click(lambda: RANDOM, None, seed, queue=False, api_visibility="private")
        reuse_btn.click(lambda s: RANDOM if s is None else s, last_seed, seed, queue=False, api_visibility="private")
        run = go.click(generate, [prompt, negative, steps, guidance, seed, scheduler, batch, width, height, model,
                                  previews], [gallery, status, last_seed], api_name="txt2img")
        stop.click(None, None, None, cancels=[run])
        i_run = i_go.click(inpaint, [editor, mask_upload, i_prompt, i_negative, i_steps, i_guidance, i_seed,
                                     i_scheduler, i_batch, strength, blur, invert, only_masked, padding, model,
                                     previews], [i_gallery, i_status, last_seed], api_name="inpaint")
        i_stop.click(None, None, None, cancels=[i_run])
        model.change(select_model, model, model_status, api_name="select_model")
        png.change(png_info, png, [png_text, png_params], api_name="png_info")
        to_txt2img.click(send_to_txt2img, png_params, [prompt, negative, steps, guidance, seed, scheduler, width,
                                                        height, tabs])
    demo.queue(default_concurrency_limit=server.gate.concurrency, max_size=L.queue_size)
    return demo


def launch_kwargs() -> dict:
    """Theme and CSS go to launch()/mount_gradio_app in Gradio 6, not to Blocks(). The theme
    uses system fonts, so the page makes no Google Fonts request (it works offline)."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    return {"css": CSS, "theme": theme, "footer_links": ["api"]}
