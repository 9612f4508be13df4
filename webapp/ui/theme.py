"""The page's look. Theme and CSS go to launch()/mount_gradio_app in Gradio 6, not to Blocks()."""

CSS = (".token-count {text-align: right; font-size: 0.85em; opacity: 0.8} .tight {gap: 4px} "
       ".upload-error {color: var(--error-text-color, #b91c1c); margin: 4px 0; font-size: 0.9em}")


def launch_kwargs() -> dict:
    """The theme uses system fonts, so the page makes no Google Fonts request (it works offline)."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    from .layout import SHORTCUTS_JS

    return {"css": CSS, "theme": theme, "footer_links": ["api"], "js": SHORTCUTS_JS}
