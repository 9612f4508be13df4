"""What each UI event does, as methods of one object over the Server, so each can be read and
called (by a test, or gradio_client through the page) without building the page.

Generation goes through the same Gate as the REST API (one bounded queue for both), the same
limits (webapp.limits.Limits: the Gradio API is a second door to the model, and Gradio itself
checks only the sliders' ranges, NaN passing) and the same chain (models.chain). Per-step
previews picture the scheduler's predicted final latents (x0) through the engine's `preview`
(TAESD with --taesd, else the decoder at preview size); Stop cancels the running job at its
next step.
Errors raise gr.Error with the API's message, so gradio_client raises too.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time

from models import chain
from models.errors import InvalidInput
from models.pipeline import MAX_SEED

from ..errors import ApiError
from .uploads import check_upload_sizes, mask_from_editor, rgb_image

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


def gallery_image(gallery, selected=None):
    """The chosen (or first) picture of a gallery value, as a file path, for "Send to"."""
    if not gallery:
        return None
    item = gallery[selected if isinstance(selected, int) and 0 <= selected < len(gallery) else 0]
    item = item[0] if isinstance(item, (list, tuple)) else item
    if isinstance(item, dict):
        item = (item.get("image") or {}).get("path") if isinstance(item.get("image"), dict) else item.get("image")
    return item


class UIHandlers:
    def __init__(self, server, out_dir: str | None = None):
        from models.schedulers import SCHEDULERS

        self.server, self.engine, self.limits = server, server.engine, server.limits
        info = self.engine.info()
        self.schedulers = list(SCHEDULERS)
        self.size, self.multiple = info["default_size"], info["size_multiple"]
        self.max_tokens = info.get("max_tokens", 75)
        self.base_model = info["base_model"]
        self.loras = info.get("loras") or {}  # {name: listing}: the picker's rows
        self.out_dir = out_dir or tempfile.mkdtemp(prefix="sd-webapp-")

    # -- outside the queue -----------------------------------------------------------------
    def token_label(self, text):
        """Live token count. It runs outside the queue, on every keystroke: text over the
        character limit gets a note without being tokenized."""
        text, L = text or "", self.limits
        if len(text) > L.max_prompt_chars:
            return f"{len(text)} characters: over the {L.max_prompt_chars}-character limit"
        try:
            if hasattr(self.engine, "token_label"):  # 75-token chunks: nothing is dropped
                return self.engine.token_label(text)
            n = self.engine.count_tokens(text)
        except Exception:
            return ""
        k = max(1, -(-n // self.max_tokens))  # an engine without token_label: whole chunks, no comma rule
        return f"{n}/{self.max_tokens * k} tokens" + (f", {k} chunks" if k > 1 else "")

    def select_model(self, name):
        """Only says which model this page's runs will use: each run sends the dropdown's value,
        and the engine swaps the UNet for that run. Nothing global changes here."""
        import gradio as gr

        if name not in self.engine.model_names():
            raise gr.Error(f"unknown model {name!r}")
        return f"diffusion model: **{name}** (text encoder and decoder unchanged)"

    def png_info(self, path):
        import gradio as gr

        from models.png_info import format_parameters, read_parameters

        if not path:
            return "", {}
        try:
            params = read_parameters(path)
        except Exception as e:  # a failure raises, for the page and for gradio_client alike
            raise gr.Error(f"not a readable image: {e}") from None
        if not params:
            return "this image carries no generation parameters", {}
        return format_parameters(params), params

    def send_to_txt2img(self, params):
        """PNG info's parameters into the txt2img controls (prompt, negative, steps, guidance,
        seed, scheduler, width, height), that tab, and a note in its status line saying what was
        substituted or not applied. Values follow the server's limits; A1111 sampler names map to ours."""
        import gradio as gr

        from models.schedulers.names import scheduler_from_a1111

        if not params:
            return [gr.skip()] * 9 + ["nothing to send: read a PNG with parameters first"]
        L, notes = self.limits, []

        def within(name, value, lo, hi, cast):
            try:
                v = cast(value)
            except (TypeError, ValueError):
                notes.append(f"{name} {value!r} is not a number: kept the form's")
                return gr.skip()
            kept = min(max(v, lo), hi)
            if kept != v:
                notes.append(f"{name} {value} is outside {lo}-{hi} here: set to {kept}")
            return kept

        scheduler = gr.skip()
        if params.get("scheduler"):
            other = params.get("other") or {}
            try:
                scheduler = scheduler_from_a1111(params["scheduler"], other.get("Schedule type"))
            except ValueError:
                scheduler = "ddim"
                notes.append(f"sampler {params['scheduler']!r} has no equivalent here: using ddim")
        side = min(L.max_side, 4 * self.size)
        sizes = []
        for name in ("width", "height"):
            v = within(name, params.get(name, self.size), self.multiple, side, int)
            if not isinstance(v, int) or v % self.multiple == 0:
                sizes.append(v)
            else:
                rounded = max(self.multiple, v // self.multiple * self.multiple)
                notes.append(f"{name} {v} is not a multiple of {self.multiple}: set to {rounded}")
                sizes.append(rounded)
        values = (params.get("prompt", ""), params.get("negative_prompt", ""),
                  within("steps", params.get("steps", 20), 1, L.max_steps, int),
                  within("guidance", params.get("guidance", 7.5), 0, min(20, L.max_guidance), float),
                  within("seed", params.get("seed", RANDOM), RANDOM, MAX_SEED, int), scheduler, *sizes)
        unused = [f"{k}: {v}" for k, v in (params.get("other") or {}).items() if k != "Schedule type"]
        if params.get("model") and params["model"] not in self.engine.model_names():
            unused.insert(0, f"Model: {params['model']}")
        if unused:
            notes.append("not applied here: " + ", ".join(unused))
        note = "from PNG info: " + ("; ".join(notes) if notes else "all parameters applied")
        return (*values, gr.Tabs(selected="txt2img"), note)

    # -- LoRAs -----------------------------------------------------------------------------
    LORA_HEADERS = ["LoRA", "weight", "changes"]

    def lora_rows(self) -> list:
        """The picker's rows: every loaded LoRA at weight 0 (off), and what it changes."""
        what = {("unet",): "UNet", ("text_encoder",): "text encoder", ("text_encoder", "unet"): "UNet + text encoder"}
        return [[name, 0.0, what.get(tuple(d.get("networks") or ()), ", ".join(d.get("networks") or ()))]
                for name, d in self.loras.items()]

    @staticmethod
    def picked_loras(table):
        """The picker's value -> the request's explicit list [(name, weight)] (rows at weight 0
        are off), or None when none is picked. A script may send the rows as a list of
        [name, weight] or as {"data": rows}; a weight that is not a number is bad_lora_scale."""
        if table is None:
            return None
        rows = table.get("data") if isinstance(table, dict) else table
        if hasattr(rows, "values") and hasattr(rows, "columns"):  # a pandas DataFrame
            rows = rows.values.tolist()
        if not isinstance(rows, (list, tuple)):
            raise InvalidInput(f"loras must be rows of [name, weight], got {type(table).__name__}", "bad_loras")
        picked = []
        for row in rows:
            if not isinstance(row, (list, tuple)) or len(row) < 2:
                raise InvalidInput(f"a LoRA row is [name, weight], got {str(row)[:80]!r}", "bad_loras")
            name, weight = row[0], row[1]
            if name in (None, "") and weight in (None, ""):
                continue  # an empty row
            try:
                weight = float(weight)
            except (TypeError, ValueError):
                raise InvalidInput(f"LoRA {name!r}: the weight {weight!r} is not a number", "bad_lora_scale") from None
            if weight != 0.0:
                picked.append((name, weight))
        return picked or None

    def _loras(self, table, prompt, negative):
        """The picked LoRAs, checked with the prompt's tags by the chain's rule before queueing."""
        picked = self.picked_loras(table)
        chain.request_loras(prompt, negative, picked, self.engine.info().get("loras") or {})
        return picked

    # -- generation ------------------------------------------------------------------------
    # Each generation handler yields (gallery, status, generation info, seed) and keeps its tab's
    # progress (a gr.State dict it updates in place) so that Stop can say where it stopped.
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

    async def generate(self, prompt, negative="", steps=20, guidance=7.5, seed=RANDOM, scheduler=None, batch=1,
                       width=None, height=None, model=None, previews=True, loras=None, progress=None):
        """txt2img. Every input but the prompt has a default, so gradio_client's
        predict(prompt, api_name="/txt2img") works. `loras`: the picker's rows [[name, weight, ...]]
        (weight 0: off), merged with the prompt's <lora:...> tags by models.chain.request_loras."""
        import gradio as gr

        prompt, negative = prompt or "", negative or ""  # a Textbox sent as null (the API): no text
        width, height = width or self.size, height or self.size
        try:
            seed, steps, batch = self._checked(prompt, negative, steps, guidance, seed, batch)
            self.limits.check_size(height, width)
            loras = self._loras(loras, prompt, negative)
        except (ApiError, InvalidInput) as e:
            raise gr.Error(e.message) from None
        model = model or self.base_model

        def fn(job, cb):
            return chain.txt2img(self.engine, prompt, negative, steps=steps, guidance_scale=float(guidance),
                                 seed=seed, scheduler=scheduler, height=int(height), width=int(width),
                                 batch_size=batch, model=model, check=job.check, callback=cb, loras=loras)

        async for item in self._stream(fn, previews, model, progress):
            yield item

    async def img2img(self, image, prompt, negative="", steps=20, guidance=7.5, seed=RANDOM, scheduler=None,
                      batch=1, strength=0.75, model=None, previews=True, loras=None, progress=None):
        """img2img on an image of any size (the chain pads it and crops the answer back)."""
        import gradio as gr

        prompt, negative = prompt or "", negative or ""
        try:
            seed, steps, batch = self._checked(prompt, negative, steps, guidance, seed, batch)
            if image is None:
                raise ApiError(400, "no_image", "upload an image to start from")
            image = rgb_image(image)
            self.limits.check_size(*image.shape[:2])
            loras = self._loras(loras, prompt, negative)
        except (ApiError, InvalidInput) as e:
            raise gr.Error(e.message) from None
        model = model or self.base_model

        def fn(job, cb):
            return chain.img2img(self.engine, prompt, image, negative, strength=float(strength), steps=steps,
                                 guidance_scale=float(guidance), seed=seed, scheduler=scheduler, batch_size=batch,
                                 model=model, check=job.check, callback=cb, loras=loras)

        async for item in self._stream(fn, previews, model, progress):
            yield item

    async def inpaint(self, editor, mask_upload=None, prompt="", negative="", steps=20, guidance=7.5, seed=RANDOM,
                      scheduler=None, batch=1, strength=1.0, blur=4, invert=False, only_masked=False, padding=32,
                      model=None, previews=True, loras=None, progress=None):
        import gradio as gr

        prompt, negative = prompt or "", negative or ""
        try:
            seed, steps, batch = self._checked(prompt, negative, steps, guidance, seed, batch)
            check_upload_sizes(self.limits, editor, mask_upload)
            if only_masked:
                self.limits.check_size(self.size, self.size)  # the masked box is inpainted at the model's size
            image, mask = mask_from_editor(editor, mask_upload)  # any size: the chain pads and crops back
            loras = self._loras(loras, prompt, negative)
        except (ApiError, InvalidInput) as e:
            raise gr.Error(e.message) from None
        model = model or self.base_model

        def fn(job, cb):
            return chain.inpaint(self.engine, prompt, image, mask, negative, steps=steps,
                                 guidance_scale=float(guidance), seed=seed, scheduler=scheduler, batch_size=batch,
                                 strength=float(strength), mask_blur=float(blur), invert_mask=bool(invert),
                                 only_masked=bool(only_masked), padding=int(padding), model=model, check=job.check,
                                 callback=cb, loras=loras)

        async for item in self._stream(fn, previews, model, progress):
            yield item

    def interrupted(self, progress):
        """Stop's own answer (Gradio cancels the run too): where it stopped, and the last preview
        kept as an image. The run sees the flag at its next step and yields nothing more, so a
        late step update cannot overwrite this answer."""
        import gradio as gr

        progress = progress if isinstance(progress, dict) else {}
        if progress.get("done") or "step" not in progress:
            return gr.skip(), gr.skip()
        progress["stopped"] = True
        progress["stopped_at"] = (progress["step"], progress["of"])
        return self._interrupted_outputs(progress)

    @staticmethod
    def _interrupted_outputs(progress):
        import gradio as gr

        step, of = progress["stopped_at"]
        gallery = gr.skip()
        if progress.get("preview") is not None:
            gallery = [(progress["preview"], f"interrupted at step {step}")]
        return gallery, f"Interrupted at step {step} of {of}"

    async def _stream(self, fn, previews, model, progress=None):
        """(gallery, status, info, last seed) updates: previews while denoising, then the PNGs."""
        import gradio as gr

        progress = progress if isinstance(progress, dict) else {}
        progress.clear()
        started = time.monotonic()
        try:
            async for kind, payload in self._run_job(fn, 2 if previews else 0):
                if progress.get("stopped"):
                    # the run's own last update says where it stopped: a step update still in
                    # flight when Stop answered can then not be the last thing the page shows;
                    # leaving ends the job (its next step raises)
                    yield (*self._interrupted_outputs(progress), gr.skip(), gr.skip())
                    return
                if kind == "step":
                    i, n, preview = payload
                    progress.update(step=i, of=n)
                    gallery = gr.skip()
                    if preview is not None:
                        progress["preview"] = preview
                        gallery = [(preview, f"step {i}/{n}")]
                    yield gallery, f"denoising: step {i} of {n}", gr.skip(), gr.skip()
                else:
                    result, took = payload, time.monotonic() - started
                    progress["done"] = True
                    files = save_pngs(result.images, result, model, self.out_dir)
                    dropped = [t for t in result.truncated if t]  # 0 since prompts are chunked, not cut
                    note = f" (prompt truncated: {dropped[0]} tokens dropped)" if dropped else ""
                    info = {"seeds": [int(s) for s in result.seeds], "time_s": round(took, 2),
                            "parameters": {**result.parameters, "model": model}}
                    status = f"done: seeds {', '.join(map(str, result.seeds))}{note} · {took:.1f} s"
                    yield files, status, info, result.seeds[0]
        except (ApiError, InvalidInput) as e:  # both carry .message
            progress["done"] = True
            yield gr.skip(), f"**Error:** {e.message}", gr.skip(), gr.skip()  # the status, then the client's error
            raise gr.Error(e.message) from None
    async def _run_job(self, fn, preview_every):
        """Run fn(job, callback) through the gate; yield (kind, payload) for previews and the result."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()
        engine = self.engine

        def callback(i, n, latents, x0=None):
            preview = None
            if preview_every and (i % preview_every == 0 or i == n) and not engine.remote:
                if x0 is not None and hasattr(engine, "preview"):  # the predicted final image
                    preview = engine.preview(x0[:1])[0]
                else:  # stages that give no x0: the intermediate latents themselves
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
