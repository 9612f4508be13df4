"""The Gradio UI: txt2img, inpainting and PNG info tabs, and a model selector.

layout.py builds the page, handlers.py holds what each event does, uploads.py turns the
inpainting editor's value into an image and mask, theme.py the page's look.
"""

from .handlers import RANDOM, UIHandlers
from .layout import build_ui
from .theme import CSS, launch_kwargs
from .uploads import check_upload_sizes, mask_from_editor

__all__ = ["RANDOM", "UIHandlers", "build_ui", "CSS", "launch_kwargs", "check_upload_sizes", "mask_from_editor"]
