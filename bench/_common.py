"""Helpers shared by the benchmarks: machine facts, memory, medians, tiny configs.

Nothing here imports TensorFlow or torch at module level, so the parent process of
`bench.unet_step` stays small and its children's peak-RSS figures are their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import threading
import time

GB = 1024**3


def loadavg():
    """(1, 5, 15)-minute load averages, rounded; other jobs on this machine skew timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instruction-set flags that decide which kernels oneDNN and XLA run (and so the speed
# and the last-bit rounding of every result); /proc/cpuinfo lists a hundred more.
KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


def cpu_flags() -> list[str]:
    """The KERNEL_FLAGS this processor has (empty where /proc/cpuinfo is not readable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in KERNEL_FLAGS if flag in have]
    except OSError:
        pass
    return []


def machine_info():
    info = {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
            "platform": platform.platform(), "python": platform.python_version()}
    try:
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / GB, 1)
    except ImportError:
        pass
    return info


def peak_rss_gb():
    """Peak resident set size of this process since it started (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def rss_gb():
    try:
        import psutil

        return psutil.Process().memory_info().rss / GB
    except ImportError:
        return float("nan")


class RSSSampler:
    """Samples the current RSS in a thread; `peak` is the highest seen while running.

    ru_maxrss only ever grows, so the peak of a later phase of a process is hidden behind an
    earlier one; this sampler measures one phase (at `interval` resolution).
    """

    def __init__(self, interval=0.05):
        self.interval, self.peak = interval, 0.0
        self.phases = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_gb())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = rss_gb()
        self._thread.start()
        return self

    def mark(self, label):
        """Close a phase: record the peak since the last mark under `label`, start a new one."""
        now = rss_gb()
        self.phases[label] = max(self.peak, now)
        self.peak = now

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_gb())
        if self.phases:  # `peak` stays the whole section's peak
            self.phases["rest"] = self.peak
            self.peak = max(self.phases.values())


def median(values):
    return statistics.median(values) if values else None


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def r(x, nd=3):
    return None if x is None else round(float(x), nd)


def small_test_configs(in_channels=4):
    """The smallest networks of SD's architecture: smaller than the bundled "tiny" model
    (models/checkpoints/tiny.py), for the tests' random-weight models and benchmark smoke runs.
    Defined here once; the tests import it (bench never imports the test package)."""
    from models.config import TextEncoderConfig, UNetConfig, VAEConfig

    return dict(
        text_encoder=TextEncoderConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4),
        unet=UNetConfig(in_channels=in_channels, block_out_channels=(32, 64),
                        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                        attention_head_dim=4, norm_num_groups=8, sample_size=8),
        vae=VAEConfig(block_out_channels=(32, 32, 32, 32), norm_num_groups=8, layers_per_block=1,
                      sample_size=64),
    )


def full_configs():
    from models.config import SD_V1

    return dict(SD_V1)


def configs(tiny: bool):
    return small_test_configs() if tiny else full_configs()


def write_json(path, data):
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def save_result(path, data):
    """How a benchmark's main() ends: the result JSON written to `path` (nothing when it is
    empty), and where it went."""
    write_json(path, data)
    if path:
        print(f"wrote {path}")


def quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class CpuMeter:
    """CPU use over a timed section: this process's cores, and everyone else's.

    `own_cores` well below the thread count, or `other_cores` well above 0, means the timing
    was taken while something else competed for the CPU (OpenMP-style thread pools degrade
    badly then), so it should not be trusted.
    """

    def __init__(self):
        self.wall = self.own_cores = self.other_cores = self.steal_cores = None

    @staticmethod
    def _system():
        import psutil

        t = psutil.cpu_times()
        busy = sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq"))
        return busy, getattr(t, "steal", 0.0)

    def __enter__(self):
        self._t0 = time.perf_counter()
        self._own0 = sum(os.times()[:2])
        try:
            self._sys0 = self._system()
        except ImportError:
            self._sys0 = None
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._t0
        own = sum(os.times()[:2]) - self._own0
        self.own_cores = own / self.wall
        if self._sys0 is not None:
            busy, steal = self._system()
            self.other_cores = max(0.0, (busy - self._sys0[0] - own) / self.wall)
            self.steal_cores = (steal - self._sys0[1]) / self.wall

    def as_dict(self):
        return {"own_cores": r(self.own_cores, 2), "other_cores": r(self.other_cores, 2),
                "steal_cores": r(self.steal_cores, 2)}


def others_busy_cores(window=1.0):
    """Cores used by everything else over `window` seconds (call while this process idles)."""
    with CpuMeter() as m:
        time.sleep(window)
    return m.other_cores


def wait_quiet(threshold=0.25, max_wait=60.0, window=1.0):
    """Sleep until other processes use <= `threshold` cores over a `window`, at most `max_wait` s.

    Returns (seconds waited, last measured other-cores). Benchmarks call this before each timed
    repetition so that a burst of someone else's work is less likely to land inside one.
    """
    t0 = time.perf_counter()
    other = None
    while True:
        try:
            other = others_busy_cores(window)
        except ImportError:
            return 0.0, None
        if other is None or other <= threshold or time.perf_counter() - t0 >= max_wait:
            return time.perf_counter() - t0, other


@contextlib.contextmanager
def dtype_policy(name):
    """Keras global dtype policy for the models built in the block (e.g. "bfloat16")."""
    import keras

    old = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(old)
