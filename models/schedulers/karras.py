"""Karras et al. (2022) sigmas: n noise levels from sigma_max down to sigma_min, rho = 7.

Evenly spaced in sigma^(1/rho), so the steps crowd where the noise is low and detail forms
("DPM++ 2M Karras", "Euler Karras" in A1111; diffusers' use_karras_sigmas=True). The UNet still
takes a training timestep, found by interpolating log sigma in the training table, as diffusers'
`_sigma_to_t` does. All in float64, as diffusers computes them in numpy.
"""
import numpy as np
import tensorflow as tf

from .spacing import linspace

RHO = 7.0


def karras_sigmas(sigma_min, sigma_max, n, k):
    """Sigma of step k (0 = sigma_max) of n, float64."""
    ramp = linspace(1.0, n, k)
    lo = tf.pow(tf.cast(sigma_min, tf.float64), 1.0 / RHO)
    hi = tf.pow(tf.cast(sigma_max, tf.float64), 1.0 / RHO)
    return tf.pow(hi + ramp * (lo - hi), RHO)


def sigma_to_t(sigma, training_sigmas):
    """Fractional training timestep of each sigma (float64 [L]): piecewise linear in log sigma.

    `training_sigmas` is the float32 numpy table; its log is taken in numpy float32, exactly as
    diffusers does, so the interpolation nodes are the same bits."""
    log_sigmas = tf.constant(np.log(training_sigmas).astype(np.float64))
    log_sigma = tf.math.log(tf.maximum(tf.cast(sigma, tf.float64), 1e-10))
    count = tf.reduce_sum(tf.cast(log_sigmas[None, :] <= log_sigma[:, None], tf.int32), axis=1)
    low_idx = tf.clip_by_value(count - 1, 0, len(training_sigmas) - 2)
    low, high = tf.gather(log_sigmas, low_idx), tf.gather(log_sigmas, low_idx + 1)
    w = tf.clip_by_value((low - log_sigma) / (low - high), 0.0, 1.0)
    low_f = tf.cast(low_idx, tf.float64)
    return (1.0 - w) * low_f + w * (low_f + 1.0)
