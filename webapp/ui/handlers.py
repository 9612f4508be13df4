"""What each UI event does, as methods of one object over the Server, so each can be read and
called (by a test, or gradio_client through the page) without building the page.

Generation goes through the same Gate as the REST API (one bounded queue for both), the same
limits (webapp.limits.Limits: the Gradio API is a second door to the model, and Gradio itself
checks only the sliders' ranges, NaN passing) and the same chain (models.chain). Per-step
previews decode the intermediate latents; Stop cancels the running job at its next step.
Errors raise gr.Error with the API's message, so gradio_client raises too.
"""

from __future__ import annotations

import asyncio
import os
import tempfile

from models import chain
from models.errors import InvalidInput
from models.pipeline import MAX_SEED

from ..errors import ApiError
from .uploads import check_upload_sizes, mask_from_editor

RANDOM = -1  # the seed box's "pick one"


def save_pngs(images, result, model, out_dir):
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


class UIHandlers:
    def __init__(self, server, out_dir: str | None = None):
        from models.schedulers import SCHEDULERS

        self.server, self.engine, self.limits = server, server.engine, server.limits
        info = self.engine.info()
        self.schedulers = list(SCHEDULERS)
        self.size, self.multiple = info["default_size"], info["size_multiple"]
        self.max_tokens = info.get("max_tokens", 75)
        self.base_model = info["base_model"]
        self.out_dir = out_dir or tempfile.mkdtemp(prefix="sd-webapp-")

    # -- outside the queue -----------------------------------------------------------------
    def token_label(self, text):
        """Live token count. It runs outside the queue, on every keystroke: text over the
        character limit gets a note without being tokenized."""
        text, L = text or "", self.limits
        if len(text) > L.max_prompt_chars:
            return f"{len(text)} characters: over the {L.max_prompt_chars}-character limit"
        try:
            n = self.engine.count_tokens(text)
        except Exception:
            return ""
        over = f" — {n - self.max_tokens} will be dropped" if n > self.max_tokens else ""
        return f"{n}/{self.max_tokens} tokens{over}"

    def select_model(self, name):
        """Only says which model this page's runs will use: each run sends the dropdown's value,
        and the engine swaps the UNet for that run. Nothing global changes here."""
        import gradio as gr

        if name not in self.engine.model_names():
            raise gr.Error(f"unknown model {name!r}")
        return f"diffusion model: **{name}** (text encoder and decoder unchanged)"

    def png_info(self, path):
        from models.png_info import format_parameters, read_parameters

        if not path:
            return "", {}
        try:
            params = read_parameters(path)
        except Exception as e:
            return f"not a readable image: {e}", {}
        if not params:
            return "this image carries no generation parameters", {}
        return format_parameters(params), params

    def send_to_txt2img(self, params):
        """PNG info's parameters into the txt2img controls (prompt, negative, steps, guidance,
        seed, scheduler, width, height) and that tab."""
        import gradio as gr

        if not params:
            return [gr.skip()] * 8 + [gr.Tabs()]
        scheduler = params.get("scheduler", "")
        return (params.get("prompt", ""), params.get("negative_prompt", ""), params.get("steps", 20),
                params.get("guidance", 7.5), params.get("seed", RANDOM),
                scheduler if scheduler in self.schedulers else "ddim",
                params.get("width", self.size), params.get("height", self.size), gr.Tabs(selected="txt2img"))

    # -- generation ------------------------------------------------------------------------
    def _checked(self, prompt, negative, steps, guidance, seed, batch):
        """The REST limits on what any client may send here; (seed or None, steps, batch)."""
        L = self.limits
        L.check_prompt(prompt)
        L.check_prompt(negative, "negative prompt")
        L.check_steps(steps)
        L.check_guidance(guidance)
        L.check_batch(batch)
        if seed is not None and seed > MAX_SEED:
            raise ApiError(422, "invalid_parameters", f"seed must be at most {MAX_SEED}, got {seed}")
        return (None if seed is None or seed < 0 else int(seed)), int(steps), int(batch)

    async def generate(self, prompt, negative, steps, guidance, seed, scheduler, batch, width, height, model,
                       previews):
        import gradio as gr

        prompt, negative = prompt or "", negative or ""  # a Textbox sent as null (the API): no text
        try:
            seed, steps, batch = self._checked(prompt, negative, steps, guidance, seed, batch)
            self.limits.check_size(height, width)
        except ApiError as e:
            raise gr.Error(e.message) from None
        model = model or self.base_model

        def fn(job, cb):
            return chain.txt2img(self.engine, prompt, negative, steps=steps, guidance_scale=float(guidance),
                                 seed=seed, scheduler=scheduler, height=int(height), width=int(width),
                                 batch_size=batch, model=model, check=job.check, callback=cb)

        async for item in self._stream(fn, previews, model):
            yield item

    async def inpaint(self, editor, mask_upload, prompt, negative, steps, guidance, seed, scheduler, batch,
                      strength, blur, invert, only_masked, padding, model, previews):
        import gradio as gr

        prompt, negative = prompt or "", negative or ""
        try:
            seed, steps, batch = self._checked(prompt, negative, steps, guidance, seed, batch)
            check_upload_sizes(self.limits, editor, mask_upload)
            if only_masked:
                self.limits.check_size(self.size, self.size)  # the masked box is inpainted at the model's size
            image, mask = mask_from_editor(editor, mask_upload)  # any size: the chain pads and crops back
        except ApiError as e:
            raise gr.Error(e.message) from None
        model = model or self.base_model

        def fn(job, cb):
            return chain.inpaint(self.engine, prompt, image, mask, negative, steps=steps,
                                 guidance_scale=float(guidance), seed=seed, scheduler=scheduler, batch_size=batch,
                                 strength=float(strength), mask_blur=float(blur), invert_mask=bool(invert),
                                 only_masked=bool(only_masked), padding=int(padding), model=model, check=job.check,
                                 callback=cb)

        async for item in self._stream(fn, previews, model):
            yield item

    async def _stream(self, fn, previews, model):
        """(gallery, status, last seed) updates: previews while denoising, then the PNGs."""
        import gradio as gr

        try:
            async for kind, payload in self._run_job(fn, 2 if previews else 0):
                if kind == "step":
                    i, n, preview = payload
                    gallery = gr.skip() if preview is None else [(preview, f"step {i}/{n}")]
                    yield gallery, f"denoising: step {i} of {n}", gr.skip()
                else:
                    result = payload
                    files = save_pngs(result.images, result, model, self.out_dir)
                    dropped = [t for t in result.truncated if t]
                    note = f" (prompt truncated: {dropped[0]} tokens dropped)" if dropped else ""
                    yield files, f"done: seeds {', '.join(map(str, result.seeds))}{note}", result.seeds[0]
        except (ApiError, InvalidInput) as e:  # both carry .message
            yield gr.skip(), f"**Error:** {e.message}", gr.skip()  # the status line, then the client's error
            raise gr.Error(e.message) from None

    async def _run_job(self, fn, preview_every):
        """Run fn(job, callback) through the gate; yield (kind, payload) for previews and the result."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()
        engine = self.engine

        def callback(i, n, latents):
            preview = None
            if preview_every and (i % preview_every == 0 or i == n) and not engine.remote:
                preview = engine.decode(latents[:1])[0]
            loop.call_soon_threadsafe(updates.put_nowait, ("step", (i, n, preview)))

        task = asyncio.ensure_future(self.server.gate.run(lambda job: fn(job, callback)))
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
