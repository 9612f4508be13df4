"""The page: a model selector over four tabs (txt2img, img2img, inpainting, PNG info), each built
by its own function from the same few control groups, and the events that connect them to
webapp.ui.handlers.

The model is the dropdown's value, sent with each run: choosing one changes nothing for other
users or REST clients. Nothing is computed at launch (the examples only fill the prompt), so a
Space starts in seconds. Inputs keep their order across releases (gradio_client calls them by
position); every input but the prompt (and the image) has a default.
"""

from types import SimpleNamespace

from .components import IntSlider
from .handlers import RANDOM, UIHandlers, gallery_image

INTRO = ("## Stable Diffusion, cloud and edge\nThe embedded default model draws coloured shapes on "
         "coloured backgrounds: try *a red circle on a blue background*. Ctrl+Enter generates. "
         "REST API: [/api/docs](/api/docs) · browser client: [/edge/](/edge/)")
EXAMPLES = [["a red circle on a blue background", ""], ["a yellow triangle on a purple background", "green"],
            ["a white square on a black background", ""], ["a green circle on an orange background", "blue"]]
# Ctrl+Enter (Cmd+Enter) presses the visible tab's primary button. A file that is not an image,
# dropped or chosen on an image input, gets a message under that input: Gradio's own image
# components drop it without a word (the inpainting editor then says "upload an image" later).
SHORTCUTS_JS = """() => {
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || !(e.ctrlKey || e.metaKey)) return;
    const buttons = ['#generate', '#img2img-generate', '#inpaint'].map((s) => document.querySelector(s));
    const visible = buttons.find((b) => b && b.offsetParent !== null);
    if (visible) { e.preventDefault(); visible.click(); }
  });
  const say = (target, files) => {
    const block = target.closest && target.closest('.block');
    if (!block || !block.querySelector('input[type=file][accept^="image"]')) return;
    let note = block.parentElement.querySelector(':scope > .upload-error[data-for="' + block.id + '"]');
    const bad = [...files].filter((f) => !(f.type || '').startsWith('image/'));
    if (!bad.length) { if (note) note.remove(); return; }
    if (!note) {
      note = document.createElement('p');
      note.className = 'upload-error';
      note.setAttribute('role', 'alert');
      note.dataset.for = block.id;
      block.after(note);
    }
    note.textContent = bad.map((f) => '"' + f.name + '" is not an image (' + (f.type || 'unknown type') + ')').join('; ')
      + ': upload a PNG, JPEG or WebP file.';
  };
  document.addEventListener('drop', (e) => e.dataTransfer && say(e.target, e.dataTransfer.files), true);
  document.addEventListener('change', (e) => e.target.type === 'file' && say(e.target, e.target.files || []), true);
}"""


def _prompts(gr, h, L, value, prefix):
    """Prompt and negative prompt, each with its live token count."""
    c = SimpleNamespace()
    c.prompt = gr.Textbox(label="Prompt", lines=2, value=value, elem_id=f"{prefix}prompt",
                          max_length=L.max_prompt_chars)
    c.tokens = gr.Markdown(h.token_label(value), elem_id=f"{prefix}prompt-tokens", elem_classes="token-count")
    c.negative = gr.Textbox(label="Negative prompt", lines=1, value="", max_length=L.max_prompt_chars,
                            elem_id=f"{prefix}negative")
    c.neg_tokens = gr.Markdown(h.token_label(""), elem_id=f"{prefix}negative-tokens", elem_classes="token-count")
    return c


def _lora_picker(gr, h, c, prefix):
    """The LoRA picker into `c`: one row per LoRA of --loras-dir, its weight (0 = off) editable,
    shown only when the server has LoRAs (the input exists either way: gradio_client's `loras`,
    default none). Weights and <lora:name:w> tags in the prompt merge by models.chain's rule:
    the picker first, then the tags (a tag's weight wins for its LoRA)."""
    rows = h.lora_rows()
    with gr.Accordion(f"LoRAs ({len(rows)})", open=True, visible=bool(rows), elem_id=f"{prefix}loras-box"):
        c.loras = gr.Dataframe(value=rows or None, headers=h.LORA_HEADERS, datatype=["str", "number", "str"],
                               type="array", interactive=True, static_columns=[0, 2], row_count=len(rows) or 1,
                               column_count=3, label="Weights (0 = off; or write <lora:name:0.8> in the prompt)",
                               elem_id=f"{prefix}loras")


def _settings(gr, h, L, c):
    """Steps, guidance, scheduler, batch size and seed (with Random and Reuse last) into `c`."""
    with gr.Row():
        c.steps = IntSlider(1, L.max_steps, 20, 1, "Steps")
        c.guidance = gr.Slider(0, min(20, L.max_guidance), value=7.5, step=0.5, label="Guidance scale", buttons=[])
    with gr.Row():
        c.scheduler = gr.Dropdown(h.schedulers, value="ddim", label="Scheduler")
        c.batch = IntSlider(1, L.max_batch, 1, 1, "Batch size")
    with gr.Row(elem_classes="tight"):
        c.seed = gr.Number(value=RANDOM, precision=0, label="Seed (-1 = random)", scale=3)
        c.random_btn = gr.Button("Random", scale=1, size="sm")
        c.reuse_btn = gr.Button("Reuse last", scale=1, size="sm")
    c.last_seed = gr.State(None)  # each tab its own
    c.progress = gr.State({})  # where the tab's run is, for Stop's message


def _run_buttons(gr, c, prefix, go_label, go_id):
    with gr.Row():
        c.go = gr.Button(go_label, variant="primary", elem_id=go_id)
        c.stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}stop")


def _results(gr, c, label, prefix):
    """The gallery (each image at its own aspect ratio), the status line, the generation info
    (for scripts) and "Send to" buttons into `c`."""
    with gr.Column(scale=2):
        c.gallery = gr.Gallery(label=label, columns=2, height=420, format="png", object_fit="contain",
                               elem_id=f"{prefix}gallery")
        c.status = gr.Markdown("", label="Status", elem_id=f"{prefix}status")
        c.info = gr.JSON(label="Generation info", visible=False)
        c.selected = gr.State(None)
        with gr.Row():
            c.to_img2img = gr.Button("Send to img2img", size="sm")
            c.to_inpaint = gr.Button("Send to inpainting", size="sm")


def _txt2img_tab(gr, h, L):
    size, multiple = h.size, h.multiple
    with gr.Row():
        with gr.Column(scale=3):
            c = _prompts(gr, h, L, "a red circle on a blue background", "")
            _lora_picker(gr, h, c, "")
            _settings(gr, h, L, c)
            with gr.Row():
                c.width = IntSlider(multiple, min(L.max_side, 4 * size), size, multiple, "Width")
                c.height = IntSlider(multiple, min(L.max_side, 4 * size), size, multiple, "Height")
            c.previews = gr.Checkbox(value=True, label="Live previews")
            _run_buttons(gr, c, "", "Generate", "generate")
            gr.Examples(EXAMPLES, [c.prompt, c.negative], label="Examples (click to fill the prompt)",
                        api_visibility="private")
        _results(gr, c, "Images (downloads are PNGs with their parameters)", "")
    return c


def _img2img_tab(gr, h, L, previews):
    with gr.Row():
        with gr.Column(scale=3):
            c = SimpleNamespace(previews=previews)
            c.image = gr.Image(label="Start image (any size)", type="numpy", image_mode="RGB", height=300,
                               sources=["upload", "clipboard"], elem_id="img2img-image")
            p = _prompts(gr, h, L, "a blue square on a yellow background", "img2img-")
            c.__dict__.update(p.__dict__)
            _lora_picker(gr, h, c, "img2img-")
            c.strength = gr.Slider(0.05, 1.0, value=0.75, step=0.05, label="Denoising strength (1 = ignore the image)",
                                   buttons=[])
            _settings(gr, h, L, c)
            _run_buttons(gr, c, "img2img-", "Generate", "img2img-generate")
        _results(gr, c, "Images", "img2img-")
    return c


def _inpaint_tab(gr, h, L, previews):
    c = SimpleNamespace(previews=previews)
    with gr.Row():
        with gr.Column(scale=3):
            # a short label: the editor's toolbar covers the right half of a phone-width header
            gr.Markdown("Upload an image, then paint the area to repaint with the brush.", elem_classes="hint")
            c.editor = gr.ImageMask(label="Image to inpaint", type="numpy", image_mode="RGBA",
                                    height=360, brush=gr.Brush(default_size=6, colors=["#ffffff"], color_mode="fixed"),
                                    sources=["upload", "clipboard"], elem_id="inpaint-editor")
            c.mask_upload = gr.Image(label="Or upload a mask (white = repaint)", type="numpy", image_mode="L",
                                     height=160, sources=["upload", "clipboard"])
            p = _prompts(gr, h, L, "a green square on a blue background", "inpaint-")
            c.__dict__.update(p.__dict__)
            _lora_picker(gr, h, c, "inpaint-")
            with gr.Row():
                c.invert = gr.Checkbox(label="Invert mask (repaint the unpainted area)")
                c.only_masked = gr.Checkbox(label="Inpaint only the masked region")
            with gr.Row():
                c.padding = IntSlider(0, 256, 32, 8, "Padding around the region (px)")
                c.blur = IntSlider(0, 64, 4, 1, "Mask blur (px)")
                c.strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Strength", buttons=[])
            _settings(gr, h, L, c)
            _run_buttons(gr, c, "inpaint-", "Inpaint", "inpaint")
        _results(gr, c, "Inpainted (unmasked pixels are the original's)", "inpaint-")
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


def _wire_tab(gr, h, tab, fn, inputs, api_name, tabs, img2img, inpaint):
    """The events every generation tab has: token counts, seed buttons, run, Stop, Send to."""
    quiet = dict(queue=False, show_progress="hidden")
    private = dict(queue=False, api_visibility="private")
    count_api = dict(api_name="count_tokens") if api_name == "txt2img" else dict(api_visibility="private")
    tab.prompt.change(h.token_label, tab.prompt, tab.tokens, **count_api, **quiet)
    tab.negative.change(h.token_label, tab.negative, tab.neg_tokens, api_visibility="private", **quiet)
    tab.random_btn.click(lambda: RANDOM, None, tab.seed, **private)
    tab.reuse_btn.click(lambda s: RANDOM if s is None else s, tab.last_seed, tab.seed, **private)
    run = tab.go.click(fn, [*inputs, tab.progress], [tab.gallery, tab.status, tab.info, tab.last_seed],
                       api_name=api_name)
    # no cancels=[run]: Stop flags the run, which ends itself at its next step with the final status
    tab.stop.click(h.interrupted, tab.progress, [tab.gallery, tab.status], **private)

    def remember(evt: gr.SelectData):
        return evt.index

    tab.gallery.select(remember, None, tab.selected, **private)
    tab.to_img2img.click(lambda g, i: (gallery_image(g, i), gr.Tabs(selected="img2img")), [tab.gallery, tab.selected],
                         [img2img.image, tabs], **private)
    tab.to_inpaint.click(lambda g, i: (gallery_image(g, i), gr.Tabs(selected="inpaint")), [tab.gallery, tab.selected],
                         [inpaint.editor, tabs], **private)


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
            with gr.Tab("img2img", id="img2img"):
                m = _img2img_tab(gr, h, L, t.previews)
            with gr.Tab("Inpainting", id="inpaint"):
                i = _inpaint_tab(gr, h, L, t.previews)
            with gr.Tab("PNG info", id="pnginfo"):
                p = _png_info_tab(gr)

        _wire_tab(gr, h, t, h.generate, [t.prompt, t.negative, t.steps, t.guidance, t.seed, t.scheduler, t.batch,
                                          t.width, t.height, model, t.previews, t.loras], "txt2img", tabs, m, i)
        _wire_tab(gr, h, m, h.img2img, [m.image, m.prompt, m.negative, m.steps, m.guidance, m.seed, m.scheduler,
                                         m.batch, m.strength, model, t.previews, m.loras], "img2img", tabs, m, i)
        _wire_tab(gr, h, i, h.inpaint, [i.editor, i.mask_upload, i.prompt, i.negative, i.steps, i.guidance, i.seed,
                                         i.scheduler, i.batch, i.strength, i.blur, i.invert, i.only_masked,
                                         i.padding, model, t.previews, i.loras], "inpaint", tabs, m, i)
        model.change(h.select_model, model, model_status, api_name="select_model")
        p.png.change(h.png_info, p.png, [p.text, p.params], api_name="png_info")
        p.to_txt2img.click(h.send_to_txt2img, p.params, [t.prompt, t.negative, t.steps, t.guidance, t.seed,
                                                         t.scheduler, t.width, t.height, tabs, t.status],
                           api_visibility="private")
    demo.queue(default_concurrency_limit=server.gate.concurrency, max_size=L.queue_size)
    return demo
