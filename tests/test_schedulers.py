"""Schedulers against diffusers 0.42.1 (torch) with Stable Diffusion v1.x configs.

Our latents are NHWC, diffusers' NCHW. A fixed fake "UNet" eps = tanh(0.5 x + 0.01 t) makes the
whole sampling loop (init_noise_sigma, scale_model_input, step) comparable end to end.
"""
import numpy as np
import pytest
import tensorflow as tf
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler)
from diffusers.schedulers import scheduling_euler_ancestral_discrete as ref_euler_a

from models.schedulers import SCHEDULERS, NoiseSchedule, get_scheduler

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
REFERENCE = {
    "ddim": lambda: DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                  timestep_spacing="leading", prediction_type="epsilon"),
    "dpmpp_2m": lambda: DPMSolverMultistepScheduler(**SD, algorithm_type="dpmsolver++", solver_order=2,
                                                    timestep_spacing="linspace", lower_order_final=True),
    "euler": lambda: EulerDiscreteScheduler(**SD, timestep_spacing="linspace"),
    "euler_a": lambda: EulerAncestralDiscreteScheduler(**SD, timestep_spacing="linspace"),
}
DETERMINISTIC = ["ddim", "dpmpp_2m", "euler"]
STEPS = [1, 2, 7, 20, 50]
SHAPE = (2, 8, 8, 4)  # NHWC


def to_nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2))))


def to_nhwc(x):
    return np.transpose(x.numpy(), (0, 2, 3, 1))


def fake_eps_tf(x, t):
    return tf.tanh(0.5 * x + 0.01 * tf.cast(t, tf.float32))


def fake_eps_torch(x, t):
    return torch.tanh(0.5 * x + 0.01 * torch.as_tensor(t).float())


def rel_err(ours, ref):
    ours, ref = np.asarray(ours), np.asarray(ref)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def latents(seed=0, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def reference_run(name, n, x_nhwc, start=0, x0=None):
    ref = REFERENCE[name]()
    ref.set_timesteps(n)
    timesteps = ref.timesteps[start:]
    if x0 is None:
        x = to_nchw(x_nhwc) * ref.init_noise_sigma
    else:
        if hasattr(ref, "set_begin_index"):
            ref.set_begin_index(start)
        x = ref.add_noise(to_nchw(x0), to_nchw(x_nhwc), timesteps[:1])
    for t in timesteps:
        eps = fake_eps_torch(ref.scale_model_input(x, t), t)
        x = ref.step(eps, t, x).prev_sample
    return to_nhwc(x)


def eager_run(name, n, x_nhwc, seed=None):
    s = get_scheduler(name)
    s.set_timesteps(n)
    x = tf.constant(x_nhwc) * s.init_noise_sigma()
    for t in s.timesteps:
        eps = fake_eps_tf(s.scale_model_input(x, t), t)
        x = s.step(eps, t, x, seed=seed)
    return x.numpy()


def graph_loop(s, pad_to=None):
    """The pipeline's shape of loop: one graph, tensor num_steps, tf.while_loop over the plan."""

    def run(x, num_steps, seed, x0, start):
        """x: unit noise. start > 0 means img2img: noise x0 to step `start`, then denoise from there."""
        plan = s.plan(num_steps, pad_to=pad_to)
        x = tf.where(start > 0, s.plan_add_noise(plan, x0, x, start), x * s.init_noise_sigma(plan))

        def body(i, x, state):
            t = plan["timesteps"][i]
            eps = fake_eps_tf(s.plan_scale_model_input(plan, i, x), t)
            x, state = s.plan_step(plan, i, eps, x, state, seed)
            return i + 1, x, state

        _, x, _ = tf.while_loop(lambda i, *_: i < plan["num_steps"], body, (start, x, s.initial_state(x)))
        return x

    return run


def compiled(name, jit=False, pad_to=None):
    s = get_scheduler(name)
    spec = [tf.TensorSpec(SHAPE, tf.float32), tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.int32),
            tf.TensorSpec(SHAPE, tf.float32), tf.TensorSpec([], tf.int32)]
    fn = tf.function(graph_loop(s, pad_to), input_signature=spec, jit_compile=jit)
    zeros = np.zeros(SHAPE, np.float32)
    return lambda x, n, seed=(0, 0), x0=zeros, start=0: fn(x, n, seed, x0, start).numpy()


_COMPILED = {}


def graph_fn(name, jit=False):
    key = (name, jit)
    if key not in _COMPILED:  # one trace per scheduler, reused for every step count
        _COMPILED[key] = compiled(name, jit, pad_to=1000 if jit else None)
    return _COMPILED[key]


# ---------------------------------------------------------------- schedule

@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear"])
def test_noise_schedule_is_bit_exact(beta_schedule):
    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule=beta_schedule)
    ours = NoiseSchedule(beta_schedule=beta_schedule)
    assert ours.betas.dtype == ours.alphas_cumprod.dtype == np.float32
    # Exact on any processor: linspace, sqrt, squares and a sequential cumulative product are
    # correctly rounded IEEE operations, with no shape- or processor-dependent kernels.
    np.testing.assert_array_equal(ours.betas, ref.betas.numpy())
    np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())


def test_noise_schedule_add_noise_matches_ddpm():
    x0, noise = latents(1), latents(2)
    t = np.array([0, 999], np.int64)
    ref = DDPMScheduler(**SD).add_noise(to_nchw(x0), to_nchw(noise), torch.from_numpy(t))
    ours = NoiseSchedule().add_noise(tf.constant(x0), tf.constant(noise), tf.constant(t, tf.int32))
    np.testing.assert_allclose(ours.numpy(), to_nhwc(ref), rtol=1e-6, atol=1e-6)


def test_noise_schedule_config_roundtrip():
    cfg = {"_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
           "beta_end": 0.012, "beta_schedule": "scaled_linear", "skip_prk_steps": True, "trained_betas": None}
    s = NoiseSchedule.from_config(cfg)
    assert s.to_config() == {k: cfg[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")}
    np.testing.assert_array_equal(NoiseSchedule.from_config(s.to_config()).alphas_cumprod, s.alphas_cumprod)
    with pytest.raises(ValueError, match="squaredcos_cap_v2"):
        NoiseSchedule.from_config(dict(cfg, beta_schedule="squaredcos_cap_v2"))


# ---------------------------------------------------------------- plans

@pytest.mark.parametrize("name", list(REFERENCE))
def test_timesteps_and_sigmas_match(name):
    for n in STEPS + [3, 999, 1000]:
        ref = REFERENCE[name]()
        ref.set_timesteps(n)
        ours = get_scheduler(name)
        ours.set_timesteps(n)
        assert ours.timesteps.dtype == ref.timesteps.numpy().dtype
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy(), err_msg=f"{name} n={n}")
        if name != "ddim":  # sigmas equal up to torch's last-bit sqrt rounding
            np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=1e-6, atol=0)
        if name in ("euler", "euler_a"):
            assert float(ours.init_noise_sigma()) == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_padded_plan_matches_unpadded(name):
    s = get_scheduler(name)
    for n in (1, 7, 50):
        plain, padded = s.plan(n), s.plan(tf.constant(n), pad_to=64)
        assert int(padded["num_steps"]) == n and padded["timesteps"].shape == (64,)
        for key, value in plain.items():
            if key != "num_steps":
                np.testing.assert_array_equal(padded[key].numpy()[: value.shape[0]], value.numpy())


# ---------------------------------------------------------------- full sampling runs

@pytest.mark.parametrize("name", DETERMINISTIC)
def test_full_run_matches_diffusers_eager_and_graph(name):
    x = latents(0)
    for n in STEPS:
        ref = reference_run(name, n, x)
        eager = eager_run(name, n, x)
        graph = graph_fn(name)(x, n)
        assert rel_err(eager, ref) < 1e-3, (name, n, rel_err(eager, ref))
        assert rel_err(graph, ref) < 1e-3, (name, n, rel_err(graph, ref))
        assert rel_err(graph, eager) < 1e-5, (name, n)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_xla_with_tensor_num_steps(name):
    """jit_compile=True works with a tensor num_steps once the plan is padded to a static length."""
    x = latents(0)
    for n in (1, 20):
        assert rel_err(graph_fn(name, jit=True)(x, n), reference_run(name, n, x)) < 1e-3


def test_padded_plan_keeps_num_steps_a_runtime_input_under_xla():
    """Without pad_to XLA bakes num_steps into the program (one compile per value); with it, not."""
    args = (tf.constant(latents(0)), tf.constant(20), tf.constant([0, 0]), tf.zeros(SHAPE), tf.constant(0))
    for pad_to, params in ((None, 4), (1000, 5)):
        fn = tf.function(graph_loop(get_scheduler("ddim"), pad_to), jit_compile=True)
        hlo = fn.experimental_get_compiler_ir(*args)(stage="hlo")
        layout = next(line for line in hlo.splitlines() if "entry_computation_layout" in line)
        assert layout.split("->")[0].count("[") == params, layout


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_img2img_matches_diffusers(name):
    x0, noise, n = latents(3), latents(4), 20
    s = get_scheduler(name)
    for strength in (0.3, 0.75):
        start = int(s.start_index(n, strength))
        assert start == n - min(int(n * strength), n)
        ref = reference_run(name, n, noise, start=start, x0=x0)
        ours = graph_fn(name)(noise, n, x0=x0, start=start)
        assert rel_err(ours, ref) < 1e-3, (name, strength, rel_err(ours, ref))


def test_start_index_like_diffusers():
    s = get_scheduler("ddim")
    for n in (1, 10, 25, 50):
        for strength in (0.0, 0.1, 0.3, 0.7, 0.75, 0.99, 1.0):
            expected = max(n - min(int(n * strength), n), 0)
            assert int(s.start_index(n, strength)) == expected
            assert int(s.start_index(tf.constant(n), tf.constant(strength, tf.float32))) == expected


# ---------------------------------------------------------------- Euler ancestral

def test_euler_ancestral_matches_diffusers_given_same_noise(monkeypatch):
    x, n = latents(0), 7
    noises = np.stack([latents(100 + k) for k in range(n)])
    ref_calls = iter(noises)
    monkeypatch.setattr(ref_euler_a, "randn_tensor", lambda *a, **k: to_nchw(next(ref_calls)))
    ref = reference_run("euler_a", n, x)
    s = get_scheduler("euler_a")
    monkeypatch.setattr(s, "_noise", lambda shape, seed, i: tf.gather(tf.constant(noises), i))
    ours = graph_loop(s)(tf.constant(x), tf.constant(n), tf.constant([0, 0]), tf.zeros(SHAPE), tf.constant(0))
    assert rel_err(ours, ref) < 1e-3


def test_euler_ancestral_noise_is_standard_normal():
    s = get_scheduler("euler_a")
    z = s._noise(tf.constant([64, 64, 4]), tf.constant([5, 6]), tf.constant(0)).numpy()
    assert z.shape == (64, 64, 4) and np.isfinite(z).all()
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    assert abs(np.corrcoef(z[..., 0].ravel(), z[..., 1].ravel())[0, 1]) < 0.05


def test_euler_ancestral_seeding():
    x = latents(0)
    run, xla = graph_fn("euler_a"), graph_fn("euler_a", jit=True)
    a, b, c = run(x, 20, seed=(1, 2)), run(x, 20, seed=(1, 2)), run(x, 20, seed=(1, 3))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2
    assert a.shape == SHAPE and np.isfinite(a).all()
    assert rel_err(xla(x, 20, seed=(1, 2)), a) < 1e-5  # same image with and without XLA
    assert rel_err(eager_run("euler_a", 20, x, seed=tf.constant([1, 2])), a) < 1e-6


# ---------------------------------------------------------------- add_noise

def test_ddim_add_noise_matches_diffusers():
    x0, noise = latents(1), latents(2)
    t = np.array([1, 981], np.int64)
    ref = REFERENCE["ddim"]().add_noise(to_nchw(x0), to_nchw(noise), torch.from_numpy(t))
    ours = get_scheduler("ddim").add_noise(x0, noise, t)
    np.testing.assert_allclose(ours.numpy(), to_nhwc(ref), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["dpmpp_2m", "euler", "euler_a"])
def test_sigma_add_noise_matches_diffusers(name):
    x0, noise, n = latents(1), latents(2), 20
    ref, ours = REFERENCE[name](), get_scheduler(name)
    ref.set_timesteps(n)
    ours.set_timesteps(n)
    t = ref.timesteps[[0, 13]]
    expected = to_nhwc(ref.add_noise(to_nchw(x0), to_nchw(noise), t))
    np.testing.assert_allclose(ours.add_noise(x0, noise, t.numpy()).numpy(), expected, rtol=1e-5, atol=1e-5)
    graph = ours.plan_add_noise(ours.plan(n), x0, noise, tf.constant(13))
    np.testing.assert_allclose(graph.numpy()[1], expected[1], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_bad_num_steps(name):
    s = get_scheduler(name)
    for bad in (0, 1001, -3, 2.5):
        with pytest.raises(ValueError):
            s.set_timesteps(bad)
    with pytest.raises(ValueError):
        s.plan(0)
    with pytest.raises(ValueError):
        s.plan(tf.constant(1001))
    with pytest.raises(ValueError):
        s.step(tf.zeros(SHAPE), 1, tf.zeros(SHAPE))  # eager step before set_timesteps
    fn = tf.function(lambda n: s.plan(n)["timesteps"], input_signature=[tf.TensorSpec([], tf.int32)])
    with pytest.raises(tf.errors.InvalidArgumentError):
        fn(tf.constant(0))


def test_registry():
    assert set(SCHEDULERS) == {"ddim", "dpmpp_2m", "euler", "euler_a"}
    for name, cls in SCHEDULERS.items():
        s = get_scheduler(name)
        assert isinstance(s, cls) and s.name == name
        assert s.spacing == ("leading" if name == "ddim" else "linspace")
    with pytest.raises(ValueError, match="ddim"):
        get_scheduler("pndm")
    with pytest.raises(ValueError):
        NoiseSchedule(beta_schedule="cosine")
