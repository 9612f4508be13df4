"""AUTOMATIC1111's sampler names <-> this package's scheduler names, in one place.

A1111 writes "Sampler: DPM++ 2M Karras" in a PNG's parameters (webui < 1.9), or since 1.9
"Sampler: DPM++ 2M, Schedule type: Karras"; users type either into UIs and APIs. The PNG-info
reader, the UI and the REST API all call `scheduler_from_a1111` so that one table decides.
"""
from __future__ import annotations

from . import SCHEDULERS

# A1111 sampler label -> our scheduler (the default "Automatic"/no schedule type).
A1111_SAMPLERS = {
    "DDIM": "ddim",
    "DPM++ 2M": "dpmpp_2m",
    "DPM++ 2M Karras": "dpmpp_2m_karras",
    "Euler": "euler",
    "Euler Karras": "euler_karras",
    "Euler a": "euler_a",
    "LCM": "lcm",
}
# (sampler, A1111 >= 1.9 "Schedule type") -> ours, where the schedule type changes the sampler.
_SCHEDULE_TYPES = {("DPM++ 2M", "karras"): "dpmpp_2m_karras", ("Euler", "karras"): "euler_karras"}
_NEUTRAL_SCHEDULE_TYPES = ("", "automatic", "uniform", "normal")
_OURS_TO_A1111 = {ours: label for label, ours in A1111_SAMPLERS.items()}


def scheduler_from_a1111(sampler: str, schedule_type: str | None = None) -> str:
    """Our scheduler name for an A1111 sampler label (case and spacing forgiven), with the
    optional A1111 >= 1.9 schedule type; our own names pass through. ValueError names the choices
    when there is no equivalent (e.g. "DPM++ SDE", or a schedule type we do not implement)."""
    text = " ".join(str(sampler).split())
    if text in SCHEDULERS and not schedule_type:
        return text
    by_folded = {label.casefold(): label for label in A1111_SAMPLERS}
    label = by_folded.get(text.casefold())
    if label is None:
        raise ValueError(f"no scheduler here for the A1111 sampler {sampler!r}; known: "
                         f"{sorted(A1111_SAMPLERS)} (or one of ours: {sorted(SCHEDULERS)})")
    kind = " ".join(str(schedule_type or "").split()).casefold()
    if kind in _NEUTRAL_SCHEDULE_TYPES:
        return A1111_SAMPLERS[label]
    ours = _SCHEDULE_TYPES.get((label, kind))
    if ours is None:
        raise ValueError(f"no scheduler here for the A1111 sampler {label!r} with schedule type "
                         f"{schedule_type!r}; schedule types: Karras for 'DPM++ 2M' and 'Euler', or Automatic")
    return ours


def a1111_sampler(name: str) -> str:
    """The A1111 label of one of our schedulers (what a PNG's "Sampler:" field should say)."""
    if name not in _OURS_TO_A1111:
        raise ValueError(f"unknown scheduler {name!r}; valid names: {sorted(SCHEDULERS)}")
    return _OURS_TO_A1111[name]


__all__ = ["A1111_SAMPLERS", "scheduler_from_a1111", "a1111_sampler"]
