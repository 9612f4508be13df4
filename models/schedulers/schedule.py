"""The training noise schedule (betas and alphas_cumprod), shared by training and every sampler.

Training calls `NoiseSchedule().add_noise`; the samplers read `alphas_cumprod`/`sigmas` from the same
object, so the two can never drift apart. The tables are numpy float32 and bit-identical to what
diffusers (torch, CPU) computes for the same config.

Two more facts of a trained model live here because both training and sampling must agree on
them: `prediction_type` (what the UNet outputs: the noise, "epsilon", as SD 1.x and SD 2 base, or
the velocity, "v_prediction", as SD 2.x 768-v) and `timestep_spacing` (a spacing the model's own
scheduler_config.json chose, e.g. "trailing" for SD-Turbo; None when it chose none, and then
every sampler uses its own default). diffusers writes every config default out, so a saved
SD 1.5 DDIMScheduler config says "leading" without anyone choosing it: a spacing counts as the
model's choice only where it differs from its scheduler class's default (CLASS_SPACINGS), or,
for a class not listed, when it is "trailing" (the one spacing few-step models need); a config
without a class (our own `to_config()`) names only chosen ones.
"""
import numpy as np
import tensorflow as tf

BETA_SCHEDULES = ("linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")
CONFIG_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
               "timestep_spacing")
# diffusers 0.42's default timestep_spacing per scheduler class
CLASS_SPACINGS = {
    "DDIMScheduler": "leading", "PNDMScheduler": "leading", "DDPMScheduler": "leading", "LCMScheduler": "leading",
    "TCDScheduler": "leading", "EulerDiscreteScheduler": "linspace", "EulerAncestralDiscreteScheduler": "linspace",
    "DPMSolverMultistepScheduler": "linspace", "UniPCMultistepScheduler": "linspace",
    "HeunDiscreteScheduler": "linspace", "KDPM2DiscreteScheduler": "linspace",
    "KDPM2AncestralDiscreteScheduler": "linspace", "DEISMultistepScheduler": "linspace",
}


def _torch_linspace_f32(start, stop, num):
    """float32 linspace with torch's CPU rounding (two halves, fused multiply-add), not numpy's.

    numpy's float64 linspace differs from torch's float32 one in the last bit of ~30% of the betas;
    emulating torch keeps alphas_cumprod bit-exact with the checkpoints' reference implementation.
    The product step*k is exact in float64, so one float32 rounding of the sum is what an FMA gives.
    """
    start, stop = np.float32(start), np.float32(stop)
    if num == 1:
        return np.array([start], np.float32)
    step = np.float64((stop - start) / np.float32(num - 1))
    k = np.arange(num)
    up = step * k + np.float64(start)
    down = np.float64(stop) - step * (num - 1 - k)
    return np.where(k < num // 2, up, down).astype(np.float32)


class NoiseSchedule:
    def __init__(self, num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                 beta_schedule="scaled_linear", prediction_type="epsilon", timestep_spacing=None):
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"Unsupported beta_schedule {beta_schedule!r}; supported: {BETA_SCHEDULES}")
        self.prediction_type = check_prediction_type(prediction_type)
        self.timestep_spacing = None if timestep_spacing is None else check_spacing(timestep_spacing)
        n = int(num_train_timesteps)
        if n < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        self.num_train_timesteps = n
        self.beta_start, self.beta_end, self.beta_schedule = float(beta_start), float(beta_end), beta_schedule
        if beta_schedule == "linear":
            betas = _torch_linspace_f32(beta_start, beta_end, n)
        else:
            betas = _torch_linspace_f32(beta_start ** 0.5, beta_end ** 0.5, n) ** 2
        self.betas = betas.astype(np.float32)
        self.alphas = (np.float32(1.0) - self.betas).astype(np.float32)
        # torch's CPU cumprod accumulates float32 in float64; doing the same keeps the bits equal.
        self.alphas_cumprod = np.cumprod(self.alphas.astype(np.float64)).astype(np.float32)
        # Noise-to-signal ratio per training timestep: the "sigma" of k-diffusion style samplers.
        self.sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).astype(np.float32)

    def add_noise(self, x0, noise, timesteps):
        """Forward diffusion q(x_t | x_0); `timesteps` is an int tensor [B] (or a scalar)."""
        x0 = tf.convert_to_tensor(x0)
        acp = tf.gather(tf.constant(self.alphas_cumprod), tf.cast(timesteps, tf.int32))
        a = _expand_to(tf.sqrt(acp), x0)
        b = _expand_to(tf.sqrt(1.0 - acp), x0)
        return a * x0 + b * tf.cast(noise, x0.dtype)

    def velocity(self, x0, noise, timesteps):
        """v = sqrt(acp) * noise - sqrt(1 - acp) * x0: what a v-prediction model learns to output."""
        x0 = tf.convert_to_tensor(x0)
        acp = tf.gather(tf.constant(self.alphas_cumprod), tf.cast(timesteps, tf.int32))
        return _expand_to(tf.sqrt(acp), x0) * tf.cast(noise, x0.dtype) - _expand_to(tf.sqrt(1.0 - acp), x0) * x0

    def training_target(self, x0, noise, timesteps):
        """The UNet's regression target for this model's prediction type (the noise, or v)."""
        if self.prediction_type == "v_prediction":
            return self.velocity(x0, noise, timesteps)
        return tf.convert_to_tensor(noise)

    def to_config(self):
        config = {"num_train_timesteps": self.num_train_timesteps, "beta_start": self.beta_start,
                  "beta_end": self.beta_end, "beta_schedule": self.beta_schedule,
                  "prediction_type": self.prediction_type}
        if self.timestep_spacing is not None:
            config["timestep_spacing"] = self.timestep_spacing
        return config

    @classmethod
    def from_config(cls, config):
        """Accepts a diffusers scheduler_config.json dict; keys unrelated to the betas are ignored.

        Keys that would change the betas in a way this class does not model are refused rather
        than silently ignored, since that would sample with the wrong schedule.
        """
        if config.get("trained_betas") is not None:
            raise ValueError("trained_betas is not supported")
        if config.get("rescale_betas_zero_snr"):
            raise ValueError("rescale_betas_zero_snr is not supported")
        kwargs = {k: config[k] for k in CONFIG_KEYS if k in config and config[k] is not None}
        spacing = kwargs.pop("timestep_spacing", None)
        if spacing is not None:
            check_spacing(spacing)
            klass = config.get("_class_name")
            default = CLASS_SPACINGS.get(klass)
            if klass is None:  # our own to_config(): whatever it names was chosen
                chosen = True
            else:
                chosen = spacing != default if default is not None else spacing == "trailing"
            if chosen:
                kwargs["timestep_spacing"] = spacing
        return cls(**kwargs)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items())
        return f"NoiseSchedule({args})"


def check_prediction_type(value):
    if value not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {value!r}")
    return value


def check_spacing(value):
    if value not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {value!r}")
    return value


def _expand_to(coef, x):
    """Per-sample [B] (or scalar) coefficient -> broadcastable against x, in x's dtype."""
    coef = tf.cast(coef, x.dtype)
    if coef.shape.rank == 0:
        return coef
    return tf.reshape(coef, tf.concat([tf.shape(coef), tf.ones([tf.rank(x) - 1], tf.int32)], 0))
