"""Which training timesteps an n-step run visits: diffusers' three named spacings, as graph ops.

"leading" (SD's original configs: multiples of T // n, shifted by steps_offset = 1, so the
noisiest step is never the last training timestep), "linspace" (evenly from T - 1 down to 0) and
"trailing" (evenly down from T - 1, so the first step starts from pure noise: what SD-Turbo and
few-step models need; Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
Flawed", table 2). diffusers writes each spacing in numpy; these reproduce its float64 values
for a tensor step count, so one traced graph serves every count.

`extra` = 1 is DPM-Solver's convention: it spaces n + 1 points and drops the last one (t = 0).
"""
import tensorflow as tf

from .schedule import TIMESTEP_SPACINGS, check_spacing

STEPS_OFFSET = 1  # every SD scheduler_config.json says steps_offset: 1 ("leading" only)


def linspace(stop, num, k):
    """numpy.linspace(0, stop, num)[k] in float64, with numpy's exact rounding."""
    num = tf.cast(num, tf.float64)
    k = tf.cast(k, tf.float64)
    step = stop / tf.maximum(num - 1.0, 1.0)
    y = tf.where(num > 1.0, k * step, tf.zeros_like(k))
    return tf.where((k == num - 1.0) & (num > 1.0), tf.cast(stop, tf.float64), y)


def spaced_timesteps(spacing, n, k, num_train_timesteps, extra=0):
    """float64 timestep of step k (0 = the noisiest) of an n-step run; "linspace" values are not
    rounded (DDIM and DPM-Solver round them, Euler keeps them fractional)."""
    check_spacing(spacing)
    T = num_train_timesteps
    m = tf.cast(n, tf.int32) + extra
    k = tf.cast(k, tf.int32)
    if spacing == "leading":
        # (arange(0, m) * (T // m))[::-1] + steps_offset
        return tf.cast((m - 1 - k) * (T // m) + STEPS_OFFSET, tf.float64)
    if spacing == "linspace":
        return linspace(float(T - 1), m, m - 1 - k)
    # trailing: round(arange(T, 0, -T / n)) - 1. numpy's float arange computes its step as
    # (start + step) - start and element k as start + k * step; round() is half-to-even, as tf.round.
    ratio = tf.constant(float(T), tf.float64) / tf.cast(n, tf.float64)
    delta = (float(T) - ratio) - float(T)
    return tf.round(float(T) + tf.cast(k, tf.float64) * delta) - 1.0


__all__ = ["TIMESTEP_SPACINGS", "STEPS_OFFSET", "linspace", "spaced_timesteps"]
