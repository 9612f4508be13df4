"""Which (component, format, precision) artifacts one export request means.

Decided before any model is converted, so a bad request fails in a second, not after
minutes of conversion. Unnamed lists mean "everything that makes sense": pairs that a format
cannot hold (the sampling loop in TF.js, a 3.4 GB UNet in a 2 GB flatbuffer) are then
skipped and listed in the manifest with the reason; naming such a pair explicitly is an error.
"""

from __future__ import annotations

import dataclasses

from .errors import ExportError

FORMATS = ("savedmodel", "tflite", "tfjs")
COMPONENTS = ("text_encoder", "diffusion", "decoder", "image_encoder")
# With --taesd: TAESD as a second decoder and image encoder for the edge clients (a fraction of
# the VAE's cost on a phone or in a browser). Not served: the served decoder is the model's VAE,
# and serving/ is written against COMPONENTS.
TAESD_COMPONENTS = ("taesd_decoder", "taesd_encoder")
ALL_COMPONENTS = COMPONENTS + TAESD_COMPONENTS
PRECISIONS = ("float32", "float16", "int8")
FORMAT_PRECISIONS = {"savedmodel": ("float32",), "tflite": PRECISIONS, "tfjs": ("float32", "float16")}
XLA = "xla"


@dataclasses.dataclass(frozen=True)
class Job:
    component: str
    format: str
    precision: str = "float32"
    variant: str | None = None  # "xla": the jit-compiled SavedModel

    @property
    def label(self):
        extra = f" {self.variant}" if self.variant else ""
        return f"{self.format} {self.component} {self.precision}{extra}"


def parse_list(value, allowed, what):
    """'a,b' or ['a', 'b'] -> tuple in canonical order; None -> None; unknown names -> error."""
    if value is None:
        return None
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v and v.strip()]
    if not items:
        raise ExportError(f"empty {what} list; choose from {', '.join(allowed)}")
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise ExportError(f"unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    return tuple(v for v in allowed if v in items)


def _unsupported(component, fmt, has_encoder, unet_too_big, taesd=()):
    """Why `fmt` cannot hold `component` for this model, or None. `taesd`: the TAESD halves
    given (--taesd), of "decoder", "encoder"."""
    if component == "image_encoder" and not has_encoder:
        return "this model has no VAE encoder (its checkpoint has none)"
    if component in TAESD_COMPONENTS:
        half = component.split("_")[1]
        if half not in taesd:
            return (f"no TAESD {half}: pass --taesd (a TAESD folder, or taesd_decoder.safetensors with "
                    "taesd_encoder.safetensors beside it)")
        if fmt == "savedmodel":
            return "TAESD is exported for the edge clients (TFLite, TF.js); the served decoder is the model's VAE"
    if component == "diffusion" and fmt == "tfjs":
        return ("the sampling loop is served from the SavedModel (TF Serving); TF.js has no kernel for the "
                "UNet's exact GELU (Erfc)")
    if component == "diffusion" and fmt == "tflite" and unet_too_big:
        return unet_too_big
    return None


def plan_jobs(formats=None, components=None, precisions=None, xla=False, *, has_encoder=True, unet_too_big=None,
              taesd=()):
    """(jobs, skipped): jobs in execution order (SavedModels first: TF.js converts them),
    skipped as [{component, format, precision, reason}]."""
    formats_given, components_given = formats is not None, components is not None
    precisions_given = precisions is not None
    formats = formats or FORMATS
    components = components or (COMPONENTS + tuple(c for c in TAESD_COMPONENTS if c.split("_")[1] in taesd))
    precisions = precisions or PRECISIONS
    if xla and "savedmodel" not in formats:
        raise ExportError("--xla makes jit-compiled SavedModels; add savedmodel to --formats")
    jobs, skipped = [], []
    for fmt in formats:
        wanted = [p for p in FORMAT_PRECISIONS[fmt] if p in precisions] if fmt != "savedmodel" else ["float32"]
        dropped = [p for p in precisions if p not in FORMAT_PRECISIONS[fmt]]
        if not wanted:
            raise ExportError(f"{fmt} is exported in {', '.join(FORMAT_PRECISIONS[fmt])}, not "
                              f"{', '.join(precisions)}; change --quantize or --formats")
        if fmt == "tfjs" and dropped and precisions_given:
            skipped.append({"component": "*", "format": fmt, "precision": ",".join(dropped),
                            "reason": "TF.js variants are float32 and float16 only"})
        for component in components:
            reason = _unsupported(component, fmt, has_encoder, unet_too_big, taesd)
            if reason:
                # Named both ways, or impossible in every format: the user asked for the impossible.
                everywhere = ((component == "image_encoder" and not has_encoder)
                              or (component in TAESD_COMPONENTS and component.split("_")[1] not in taesd))
                if components_given and (formats_given or everywhere):
                    raise ExportError(f"cannot export {component} as {fmt}: {reason}")
                skipped.append({"component": component, "format": fmt, "precision": ",".join(wanted),
                                "reason": reason})
                continue
            jobs += [Job(component, fmt, p) for p in wanted]
            if fmt == "savedmodel" and xla:
                jobs.append(Job(component, fmt, "float32", XLA))
    return jobs, skipped
