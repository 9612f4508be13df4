"""Noise schedulers for Stable Diffusion sampling: DDIM, DPM-Solver++(2M), Euler, Euler ancestral.

All share one `NoiseSchedule` (the training betas) and expose a graph API usable inside a single
tf.function / tf.while_loop with a tensor step count, plus a diffusers-like eager API
(see `base.Scheduler`).
"""
from .base import Scheduler
from .ddim import DDIMScheduler
from .dpm_solver import DPMSolverPP2MScheduler
from .euler import EulerScheduler
from .euler_ancestral import EulerAncestralScheduler
from .schedule import NoiseSchedule

SCHEDULERS = {cls.name: cls for cls in
              (DDIMScheduler, DPMSolverPP2MScheduler, EulerScheduler, EulerAncestralScheduler)}


def get_scheduler(name, schedule=None):
    """Scheduler instance by registry name ("ddim", "dpmpp_2m", "euler", "euler_a")."""
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; valid names: {sorted(SCHEDULERS)}")
    return SCHEDULERS[name](schedule)


__all__ = ["NoiseSchedule", "Scheduler", "DDIMScheduler", "DPMSolverPP2MScheduler", "EulerScheduler",
           "EulerAncestralScheduler", "SCHEDULERS", "get_scheduler"]
