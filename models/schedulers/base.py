"""Scheduler base class: a graph API made of TF ops, and a diffusers-like eager API on top of it.

The sampling loop has to live in one compiled graph (tf.while_loop, optionally XLA) and be exported
with the number of steps as a serving input. So a scheduler never keeps Python-side state in the
graph API: `plan(num_steps)` turns a (possibly symbolic) int32 step count into tensors, and
`step(plan, i, ...)` reads them at a tensor index `i`, threading any multistep memory through an
explicit fixed-shape `state` tuple.

XLA and a tensor `num_steps`: plan arrays normally have length `num_steps`. Under `jit_compile=True`
that still runs, but tf2xla turns a shape-giving input into a compile-time constant, so the whole
loop (UNet included) is recompiled for every new step count. Pass `plan(num_steps, pad_to=P)`, P a
Python int >= any step count you will use (e.g. `schedule.num_train_timesteps`), to get one program
for all counts: every array then has the static length P (P + 1 for sigmas), entries past the end
repeat the last step (sigmas read the final 0), and the real count is `plan["num_steps"]`.

The eager API (`set_timesteps`, `timesteps`, `step(model_output, timestep, sample)`, `add_noise`,
`scale_model_input`: diffusers' names and signatures) calls the same graph code, so the two cannot
disagree. The graph API's methods take the plan first and say so in their names: `plan_step`,
`plan_add_noise`, `plan_scale_model_input`.

Two options every scheduler takes, each defaulting to what the model's schedule says
(`NoiseSchedule.prediction_type`, `NoiseSchedule.timestep_spacing`) and else to the scheduler's
own default: `prediction_type` ("epsilon" or "v_prediction": what the UNet outputs) and
`timestep_spacing` ("leading", "linspace" or "trailing"; see spacing.py).
"""
import numpy as np
import tensorflow as tf

from .schedule import TIMESTEP_SPACINGS, NoiseSchedule, _expand_to, check_prediction_type, check_spacing
from .spacing import linspace


class Scheduler:
    name = None
    spacing = None  # the default timestep spacing (diffusers' default for SD with this sampler)
    spacings = TIMESTEP_SPACINGS  # the spacings this sampler accepts
    order = 1  # model evaluations per step, as diffusers counts it (img2img skips start*order)
    integer_timesteps = True  # diffusers hands the UNet integer timesteps (False: fractional)

    def __init__(self, schedule=None, *, timestep_spacing=None, prediction_type=None):
        self.schedule = schedule if schedule is not None else NoiseSchedule()
        self.num_train_timesteps = self.schedule.num_train_timesteps
        self.prediction_type = check_prediction_type(prediction_type or self.schedule.prediction_type)
        if timestep_spacing is not None:
            check_spacing(timestep_spacing)
            if timestep_spacing not in self.spacings:
                raise ValueError(f"{self.name} does not take timestep_spacing={timestep_spacing!r}; "
                                 f"it accepts {self.spacings}")
            self.spacing = timestep_spacing
        elif self.schedule.timestep_spacing in self.spacings:  # the model's scheduler config names one
            self.spacing = self.schedule.timestep_spacing
        self._plan = None
        self._reset()

    def __repr__(self):
        return (f"{type(self).__name__}({self.schedule!r}, timestep_spacing={self.spacing!r}, "
                f"prediction_type={self.prediction_type!r})")

    def _vp_predictions(self, model_output, sample, alpha, sigma):
        """(x0, eps) from the model output at sample = alpha * x0 + sigma * eps (alpha^2 + sigma^2 = 1).

        epsilon: the output is eps. v_prediction: the output is v = alpha * eps - sigma * x0, so
        x0 = alpha * sample - sigma * v and eps = alpha * v + sigma * sample."""
        if self.prediction_type == "v_prediction":
            return alpha * sample - sigma * model_output, alpha * model_output + sigma * sample
        return (sample - sigma * model_output) / alpha, model_output

    # ------------------------------------------------------------------ graph API
    def plan(self, num_steps, pad_to=None):
        """Tensors describing a `num_steps` sampling run; see the module docstring for `pad_to`.

        Always has "num_steps" (int32 scalar) and "timesteps" (float32, descending; float because
        Euler's linspace timesteps are fractional and the UNet must see them unrounded).
        """
        n = self._check_steps(num_steps)
        if pad_to is None:
            idx = tf.range(n)
        else:
            pad_to = int(pad_to)
            static_n = tf.get_static_value(n)
            if static_n is not None and static_n > pad_to:
                raise ValueError(f"num_steps {static_n} exceeds pad_to {pad_to}")
            tf.debugging.assert_less_equal(n, pad_to, message=f"num_steps must be <= pad_to={pad_to}")
            idx = tf.minimum(tf.range(pad_to), n - 1)
        plan = self._make_plan(n, idx)
        plan["num_steps"] = n
        return plan

    def _make_plan(self, n, idx):
        """Plan arrays for step indices `idx` (int32 [L], values in 0..n-1) of an n-step run."""
        raise NotImplementedError

    def init_noise_sigma(self, plan=None):
        """Factor turning unit Gaussian noise into the first latents."""
        return tf.constant(1.0, tf.float32)

    def plan_scale_model_input(self, plan, i, sample):
        """The UNet's input at step index i (Euler-type samplers divide by sqrt(sigma^2 + 1))."""
        return self._scale_model_input(plan, i, sample)

    def scale_model_input(self, sample, timestep):
        """Eager, after set_timesteps: as diffusers' scale_model_input(sample, timestep)."""
        return self._scale_model_input(self._require_plan(), self._eager_index(timestep), sample)

    def _scale_model_input(self, plan, i, sample):
        return tf.convert_to_tensor(sample)

    def initial_state(self, sample):
        """Fixed-shape loop state carried between steps (multistep memory); () if none."""
        return ()

    def plan_step(self, plan, i, model_output, sample, state, seed=None):
        """One step at tensor index i -> (prev_sample, state). `model_output` is the UNet's output
        (noise or velocity, by `prediction_type`); `state` is the multistep memory from
        initial_state or the last step."""
        return self._step(plan, i, model_output, sample, state, seed=seed)

    def step(self, model_output, timestep, sample, seed=None):
        """Eager: -> prev_sample. `timestep` is an entry of `self.timesteps`; the first call
        locates it, later calls advance an internal counter (as diffusers does), so visit the
        timesteps in order. `model_output` is the UNet's output (see `prediction_type`)."""
        return self._eager_step(model_output, timestep, sample, seed=seed)

    def _step(self, plan, i, model_output, sample, state, seed=None):
        raise NotImplementedError

    def plan_predicted_x0(self, plan, i, model_output, sample):
        """The sampler's estimate of the final (clean) latents at step index i, from the same
        model output `plan_step` takes: what a preview shows. On the latents' own scale (scaled by
        the VAE factor, like the loop's result); at the last step of a run that ends on sigma 0
        (every sampler but DDIM, whose last step lands on alphas_cumprod[0]) it is the result."""
        return self._predicted_x0(plan, self._clip_index(plan, i), tf.convert_to_tensor(model_output),
                                  tf.convert_to_tensor(sample))

    def _predicted_x0(self, plan, i, model_output, sample):
        """Variance-preserving samplers: x0 from sample = a * x0 + b * noise (see _noise_coefs)."""
        a, b = self._noise_coefs(plan, i)
        return self._vp_predictions(model_output, sample, a, b)[0]

    def plan_add_noise(self, plan, x0, noise, i):
        """The noisy sample at step index i, in this sampler's scaling (img2img's start)."""
        return self._add_noise_at(plan, x0, noise, self._clip_index(plan, i))

    def add_noise(self, original, noise, timesteps):
        """Eager, as diffusers: timesteps[B] must be entries of `self.timesteps` (DDIM accepts
        any training timestep)."""
        return self._eager_add_noise(original, noise, timesteps)

    def _noise_coefs(self, plan, idx):
        """(a, b) with noisy = a * x0 + b * noise at step index/indices idx."""
        raise NotImplementedError

    def _add_noise_at(self, plan, x0, noise, idx):
        x0 = tf.convert_to_tensor(x0)
        a, b = self._noise_coefs(plan, idx)
        return _expand_to(a, x0) * x0 + _expand_to(b, x0) * tf.cast(noise, x0.dtype)

    def start_index(self, num_steps, strength):
        """img2img: first step index to run for a denoising `strength` in [0, 1], as diffusers.

        diffusers truncates num_steps * strength in float64; a float32 strength (e.g. 0.7f) would
        land just below the integer, so a 1e-4 tolerance recovers the intended count.
        """
        n = tf.cast(num_steps, tf.int32)
        s = tf.cast(strength, tf.float64)
        init = tf.cast(tf.floor(tf.cast(n, tf.float64) * s + 1e-4), tf.int32)
        init = tf.minimum(init, n)
        return tf.maximum(n - init, 0)

    # ------------------------------------------------------------------ shared helpers
    @property
    def max_steps(self) -> int:
        """The largest step count this sampler can plan."""
        return self.num_train_timesteps

    def _check_steps(self, num_steps):
        """int32 scalar; raises ValueError when the value is known, asserts (and clamps) otherwise."""
        hi = self.max_steps
        value = tf.get_static_value(num_steps) if tf.is_tensor(num_steps) else num_steps
        if value is not None:
            value = np.asarray(value)
            if value.ndim != 0 or not np.issubdtype(value.dtype, np.integer) or not 1 <= value <= hi:
                raise ValueError(f"num_steps must be an integer in 1..{hi}, got {num_steps!r}")
            return tf.constant(int(value), tf.int32)
        n = tf.cast(num_steps, tf.int32)
        tf.debugging.assert_greater_equal(n, 1, message="num_steps must be >= 1")
        tf.debugging.assert_less_equal(n, hi, message=f"num_steps must be <= {hi}")
        return tf.clip_by_value(n, 1, hi)  # XLA drops asserts; keep shapes sane regardless

    @staticmethod
    def _clip_index(plan, i):
        return tf.clip_by_value(tf.cast(i, tf.int32), 0, plan["num_steps"] - 1)

    _linspace = staticmethod(linspace)

    # ------------------------------------------------------------------ eager API
    def _reset(self):
        self._state = None
        self._index = None
        self._begin_index = None

    def set_timesteps(self, num_inference_steps):
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ValueError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
        self._plan = self.plan(int(num_inference_steps))
        self.num_inference_steps = int(num_inference_steps)
        self._reset()

    def set_begin_index(self, begin_index=0):
        """img2img: the eager loop starts at this step index (diffusers' set_begin_index)."""
        self._begin_index = int(begin_index)

    @property
    def timesteps(self):
        t = self._require_plan()["timesteps"].numpy()
        return t.astype(np.int64) if self.integer_timesteps else t

    @property
    def sigmas(self):
        plan = self._require_plan()
        return plan["sigmas"].numpy() if "sigmas" in plan else None

    def _require_plan(self):
        if self._plan is None:
            raise ValueError("call set_timesteps(num_inference_steps) first")
        return self._plan

    def index_for_timestep(self, timestep):
        t = float(np.asarray(timestep).reshape(()))
        hits = np.nonzero(self._require_plan()["timesteps"].numpy() == np.float32(t))[0]
        if len(hits) == 0:
            raise ValueError(f"timestep {t} is not one of this scheduler's timesteps")
        return int(hits[0])

    def _eager_index(self, timestep):
        if self._index is None:
            self._index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        return self._index

    def _eager_step(self, model_output, timestep, sample, seed=None):
        plan = self._require_plan()
        i = self._eager_index(timestep)
        sample = tf.convert_to_tensor(sample, tf.float32)
        if self._state is None:
            self._state = self.initial_state(sample)
        prev, self._state = self._step(plan, tf.constant(i), tf.convert_to_tensor(model_output, tf.float32),
                                       sample, self._state, seed)
        self._index = i + 1
        return prev

    def _eager_add_noise(self, original, noise, timesteps):
        plan = self._require_plan()
        if self._begin_index is not None:
            idx = [self._index if self._index is not None else self._begin_index] * len(np.atleast_1d(timesteps))
        else:
            idx = [self.index_for_timestep(t) for t in np.atleast_1d(np.asarray(timesteps))]
        return self._add_noise_at(plan, tf.convert_to_tensor(original, tf.float32), noise, tf.constant(idx, tf.int32))
