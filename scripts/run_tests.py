"""Run the test suite one file per fresh pytest process, two at a time, heavy files alone last.

Why not pytest-xdist: its workers live for the whole run, and TensorFlow does not give memory
back while a process lives, so a worker that has run a few dozen files holds 8 to 15 GB and two
of them exhaust this 24 GB machine. A process per file releases everything when the file ends
(TensorFlow's import costs a few seconds per file). Files marked `heavy` (full-size models, the
full-size TF.js converter: up to 8 GB measured) never run two at once: one lane takes them first, one
after the other, while the other lane runs the light files (largest first), and a light file
starts beside a heavy one only while the machine has MIN_FREE_GB available. Much of a heavy
file's time is single-threaded converter work, so the second core would otherwise sit idle.

    python scripts/run_tests.py [--jobs 2] [pytest args...]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"^=*\s*((?:\d+ (?:passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)[, ]*)+) in [0-9.]+s",
                     re.M)

SLOWEST = re.compile(r"^[0-9.]+s (?:call|setup|teardown) +\S.*$", re.M)


def test_files():
    files = sorted((ROOT / "tests").glob("test_*.py"))
    heavy = [f for f in files if "pytest.mark.heavy" in f.read_text()]
    light = [f for f in files if f not in heavy]
    # Largest first: a rough proxy for the slowest, so the two lanes finish together.
    light.sort(key=lambda f: f.stat().st_size, reverse=True)
    return light, heavy


# The KerasCV parity files at full SD v1 size are the largest thing the suite writes.
HEAVY_TMP_GB = 9


def warn_if_short_of_disk():
    """A full /tmp shows up as an OSError deep inside a test; say so up front instead."""
    tmp = tempfile.gettempdir()
    free_gb = shutil.disk_usage(tmp).free / 2**30
    if free_gb < HEAVY_TMP_GB:
        print(f"WARNING: the full-size tests write up to {HEAVY_TMP_GB} GB under {tmp}, which has "
              f"{free_gb:.1f} GB free; expect 'No space left on device' failures (set TMPDIR elsewhere)",
              flush=True)


def print_machine():
    """Float results round differently on other processors: a failure report says where it ran."""
    sys.path.insert(0, str(ROOT))
    from bench._common import cpu_flags, cpu_model

    print(f"test machine: {cpu_model()}, {os.cpu_count()} cores; kernel flags: {' '.join(cpu_flags()) or 'unknown'}",
          flush=True)


# A light file starts beside a running heavy one only with this much memory available.
MIN_FREE_GB = 8


def available_gb():
    """MemAvailable from /proc/meminfo; None where there is none (then no guard)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


class Lanes:
    """Hands out test files: heavy ones to the first lane only (so never two at once), light
    ones to any lane, largest first."""

    def __init__(self, light, heavy):
        self.light, self.heavy = list(light), list(heavy)
        self.heavy_running = 0
        self.cond = threading.Condition()

    def next(self, takes_heavy):
        with self.cond:
            if takes_heavy and self.heavy:
                self.heavy_running += 1
                return self.heavy.pop(0)
            while self.light:
                free = available_gb()
                if not self.heavy_running or free is None or free >= MIN_FREE_GB:
                    return self.light.pop(0)
                self.cond.wait(timeout=5)  # a heavy file holds the memory: wait for it to shrink or end
            return None

    def finished(self, path):
        with self.cond:
            if "pytest.mark.heavy" in path.read_text():
                self.heavy_running -= 1
            self.cond.notify_all()


# Two TensorFlow processes with their default thread pools (one intra-op thread per core each)
# on this 2-core machine spend their time waiting on each other: 25 default-model images took
# 11.6 s in each of two concurrent processes, 5.9-6.5 s with one intra-op thread each (8.5 s in
# one process alone with the defaults). So while two lanes run, each file's process computes on
# one thread (inter-op 2: ops that wait on other ops still get a thread). A value set in the
# environment wins.
LANE_THREADS = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"}


def run_file(path, extra, threads=None):
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--durations=5",
           "--durations-min=20", *extra,
           str(path.relative_to(ROOT))]
    # the file's process leaves without Python's teardown of its graphs (tests/conftest.py)
    env = {**(threads or {}), **os.environ, "SD_TESTS_FAST_EXIT": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    out = proc.stdout + proc.stderr
    found = SUMMARY.findall(out)
    # pytest exit code 5: every test of the file deselected by the caller's -m/-k.
    ok = proc.returncode in (0, 5)
    return path, ok, proc.returncode, found[-1] if found else f"exit code {proc.returncode}", \
        time.perf_counter() - t0, out


def report(done, total, result):
    path, ok, code, summary, seconds, out = result
    print(f"[{done}/{total}] {'ok  ' if ok else 'FAIL'} {path.relative_to(ROOT)}: {summary} ({seconds:.0f} s)",
          flush=True)
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    for line in skipped:
        print(f"        {line}", flush=True)
    for line in SLOWEST.findall(out):  # where the suite's time goes, for whoever makes it faster
        print(f"        slow: {line}", flush=True)
    if not ok:
        print(out[-12000:], flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2)
    args, extra = p.parse_known_args(argv)
    light, heavy = test_files()
    print_machine()
    warn_if_short_of_disk()
    total, failed = len(light) + len(heavy), []
    t0 = time.perf_counter()
    queue = Lanes(light, heavy)
    lock = threading.Lock()
    done = [0]

    def lane(takes_heavy):
        while (path := queue.next(takes_heavy)) is not None:
            result = run_file(path, extra, LANE_THREADS if args.jobs > 1 else None)
            queue.finished(path)
            with lock:
                done[0] += 1
                report(done[0], total, result)
                if not result[1]:
                    failed.append(path)

    threads = [threading.Thread(target=lane, args=(k == 0,)) for k in range(max(1, args.jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    minutes = (time.perf_counter() - t0) / 60
    if failed:
        print(f"\n{len(failed)} of {total} test files FAILED in {minutes:.1f} min: "
              + ", ".join(str(f.relative_to(ROOT)) for f in failed))
        return 1
    print(f"\nall {total} test files passed in {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
