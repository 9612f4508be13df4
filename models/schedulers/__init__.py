"""Noise schedulers for Stable Diffusion sampling: DDIM, DPM-Solver++(2M) (plain and with Karras
sigmas), Euler (plain and Karras), Euler ancestral, LCM.

All share one `NoiseSchedule` (the training betas, prediction type and the model's preferred
timestep spacing) and expose a graph API usable inside a single tf.function / tf.while_loop with a
tensor step count, plus a diffusers-like eager API (see `base.Scheduler`). `names.py` maps
AUTOMATIC1111's sampler names to these.
"""
from .base import Scheduler
from .ddim import DDIMScheduler
from .dpm_solver import DPMSolverPP2MKarrasScheduler, DPMSolverPP2MScheduler
from .euler import EulerKarrasScheduler, EulerScheduler
from .euler_ancestral import EulerAncestralScheduler
from .lcm import LCMScheduler
from .schedule import PREDICTION_TYPES, TIMESTEP_SPACINGS, NoiseSchedule

SCHEDULERS = {cls.name: cls for cls in
              (DDIMScheduler, DPMSolverPP2MScheduler, DPMSolverPP2MKarrasScheduler, EulerScheduler,
               EulerKarrasScheduler, EulerAncestralScheduler, LCMScheduler)}


def get_scheduler(name, schedule=None, *, timestep_spacing=None, prediction_type=None):
    """Scheduler instance by registry name ("ddim", "dpmpp_2m", "dpmpp_2m_karras", "euler",
    "euler_karras", "euler_a", "lcm"). `timestep_spacing` / `prediction_type` None: the
    schedule's (the model's scheduler config), else the scheduler's own default."""
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; valid names: {sorted(SCHEDULERS)}")
    return SCHEDULERS[name](schedule, timestep_spacing=timestep_spacing, prediction_type=prediction_type)


__all__ = ["NoiseSchedule", "Scheduler", "DDIMScheduler", "DPMSolverPP2MScheduler", "DPMSolverPP2MKarrasScheduler",
           "EulerScheduler", "EulerKarrasScheduler", "EulerAncestralScheduler", "LCMScheduler", "SCHEDULERS",
           "PREDICTION_TYPES", "TIMESTEP_SPACINGS", "get_scheduler"]
