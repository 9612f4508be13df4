"""The page: a model selector over three tabs (txt2img, inpainting, PNG info), each built by its
own function, and the events that connect the controls to webapp.ui.handlers.

The model is the dropdown's value, sent with each run: choosing one changes nothing for other
users or REST clients. Nothing is computed at launch (no cached examples), so a Space starts in
seconds.
"""

from __future__ import annotations

from types import SimpleNamespace

from .handlers import RANDOM, UIHandlers

INTRO = ("## Stable Diffusion, cloud and edge\nThe embedded default model draws coloured shapes on "
         "coloured backgrounds: try *a red circle on a blue background*. "
         "REST API: [/api/docs](/api/docs) · browser client: [/edge/](/edge/)")


def _sampling(gr, L):
    """Steps and guidance sliders within the server's limits."""
    steps = gr.Slider(1, L.max_steps, value=20, step=1, label="Steps")
    guidance = gr.Slider(0, min(20, L.max_guidance), value=7.5, step=0.5, label="Guidance scale")
    return steps, guidance


def _txt2img_tab(gr, h, L):
    c = SimpleNamespace()
    size, multiple = h.size, h.multiple
    with gr.Row():
        with gr.Column(scale=3):
            c.prompt = gr.Textbox(label="Prompt", lines=2, value="a red circle on a blue background",
                                  elem_id="prompt", max_length=L.max_prompt_chars)
            c.tokens = gr.Markdown(h.token_label("a red circle on a blue background"), elem_id="token-count")
            c.negative = gr.Textbox(label="Negative prompt", lines=1, max_length=L.max_prompt_chars)
            c.neg_tokens = gr.Markdown(h.token_label(""), elem_id="token-count")
            with gr.Row():
                c.steps, c.guidance = _sampling(gr, L)
            with gr.Row():
                c.scheduler = gr.Dropdown(h.schedulers, value="ddim", label="Scheduler")
                c.batch = gr.Slider(1, L.max_batch, value=1, step=1, label="Batch size")
            with gr.Row():
                c.width = gr.Slider(multiple, min(L.max_side, 4 * size), value=size, step=multiple, label="Width")
                c.height = gr.Slider(multiple, min(L.max_side, 4 * size), value=size, step=multiple, label="Height")
            with gr.Row(elem_classes="tight"):
                c.seed = gr.Number(value=RANDOM, precision=0, label="Seed (-1 = random)", scale=3)
                c.random_btn = gr.Button("Random", scale=1, size="sm")
                c.reuse_btn = gr.Button("Reuse last", scale=1, size="sm")
            c.previews = gr.Checkbox(value=True, label="Live previews")
            with gr.Row():
                c.go = gr.Button("Generate", variant="primary", elem_id="generate")
                c.stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=2):
            c.gallery = gr.Gallery(label="Images (downloads are PNGs with their parameters)", columns=2,
                                   height=420, format="png", elem_id="gallery")
            c.status = gr.Markdown("", elem_id="status")
    return c


def _inpaint_tab(gr, h, L):
    c = SimpleNamespace()
    with gr.Row():
        with gr.Column(scale=3):
            c.editor = gr.ImageMask(label="Image: paint the area to repaint", type="numpy", image_mode="RGBA",
                                    height=360, brush=gr.Brush(default_size=6, colors=["#ffffff"], color_mode="fixed"))
            c.mask_upload = gr.Image(label="Or upload a mask (white = repaint)", type="numpy", image_mode="L",
                                     height=160)
            c.prompt = gr.Textbox(label="Prompt", lines=2, value="a green square on a blue background",
                                  elem_id="inpaint-prompt", max_length=L.max_prompt_chars)
            c.negative = gr.Textbox(label="Negative prompt", max_length=L.max_prompt_chars)
            with gr.Row():
                c.invert = gr.Checkbox(label="Invert mask (repaint the unpainted area)")
                c.only_masked = gr.Checkbox(label="Inpaint only the masked region")
            with gr.Row():
                c.padding = gr.Slider(0, 256, value=32, step=8, label="Padding around the region (px)")
                c.blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur (px)")
                c.strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Strength")
            with gr.Row():
                c.steps, c.guidance = _sampling(gr, L)
                c.scheduler = gr.Dropdown(h.schedulers, value="ddim", label="Scheduler")
            with gr.Row():
                c.seed = gr.Number(value=RANDOM, precision=0, label="Seed (-1 = random)")
                c.batch = gr.Slider(1, L.max_batch, value=1, step=1, label="Batch size")
            with gr.Row():
                c.go = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
                c.stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=2):
            c.gallery = gr.Gallery(label="Inpainted (unmasked pixels are the original's)", columns=2, height=420,
                                   format="png")
            c.status = gr.Markdown("", elem_id="inpaint-status")
    return c


def _png_info_tab(gr):
    c = SimpleNamespace()
    with gr.Row():
        c.png = gr.Image(label="A PNG made here (or by AUTOMATIC1111)", type="filepath",
                         sources=["upload", "clipboard"], height=320)
        with gr.Column():
            c.text = gr.Textbox(label="Parameters", lines=6, elem_id="png-text")
            c.params = gr.JSON(label="Parsed")
            c.to_txt2img = gr.Button("Send to txt2img", variant="primary")
    return c


def build_ui(server):
    import gradio as gr

    h = UIHandlers(server)
    L = server.limits
    with gr.Blocks(title="Stable Diffusion, cloud and edge", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(choices=h.engine.model_names(), value=h.base_model, label="Diffusion model",
                                info="base model or a fine-tuned one from the models folder; switching swaps only "
                                     "the UNet", scale=3)
            model_status = gr.Markdown(f"diffusion model: **{h.base_model}**")
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                t = _txt2img_tab(gr, h, L)
                last_seed = gr.State(None)
            with gr.Tab("Inpainting", id="inpaint"):
                i = _inpaint_tab(gr, h, L)
            with gr.Tab("PNG info", id="pnginfo"):
                p = _png_info_tab(gr)

        quiet = dict(queue=False, show_progress="hidden")
        t.prompt.change(h.token_label, t.prompt, t.tokens, api_name="count_tokens", **quiet)
        t.negative.change(h.token_label, t.negative, t.neg_tokens, api_visibility="private", **quiet)
        t.random_btn.click(lambda: RANDOM, None, t.seed, queue=False, api_visibility="private")
        t.reuse_btn.click(lambda s: RANDOM if s is None else s, last_seed, t.seed, queue=False,
                          api_visibility="private")
        run = t.go.click(h.generate, [t.prompt, t.negative, t.steps, t.guidance, t.seed, t.scheduler, t.batch,
                                      t.width, t.height, model, t.previews], [t.gallery, t.status, last_seed],
                         api_name="txt2img")
        t.stop.click(None, None, None, cancels=[run])
        i_run = i.go.click(h.inpaint, [i.editor, i.mask_upload, i.prompt, i.negative, i.steps, i.guidance, i.seed,
                                       i.scheduler, i.batch, i.strength, i.blur, i.invert, i.only_masked, i.padding,
                                       model, t.previews], [i.gallery, i.status, last_seed], api_name="inpaint")
        i.stop.click(None, None, None, cancels=[i_run])
        model.change(h.select_model, model, model_status, api_name="select_model")
        p.png.change(h.png_info, p.png, [p.text, p.params], api_name="png_info")
        p.to_txt2img.click(h.send_to_txt2img, p.params, [t.prompt, t.negative, t.steps, t.guidance, t.seed,
                                                         t.scheduler, t.width, t.height, tabs])
    demo.queue(default_concurrency_limit=server.gate.concurrency, max_size=L.queue_size)
    return demo
