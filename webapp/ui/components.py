"""The one control Gradio lacks: an integer slider that says which field got a non-number.

Gradio's Slider(precision=0) types the value as an integer in the API (what scripts need), but a
NaN sent through the API fails in its rounding with a message that names no field; here it is a
gr.Error naming the slider. `is_template` makes the page render it as Gradio's own slider.
"""

import math

import gradio as gr


class IntSlider(gr.Slider):
    is_template = True

    def __init__(self, minimum, maximum, value, step, label, **kwargs):
        super().__init__(minimum, maximum, value=value, step=step, precision=0, label=label, buttons=[], **kwargs)

    def preprocess(self, payload):
        if isinstance(payload, float) and not math.isfinite(payload):
            raise gr.Error(f"{self.label} must be a finite number, got {payload}")
        return super().preprocess(payload)
