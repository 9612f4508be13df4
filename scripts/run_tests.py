"""Run the test suite one file per fresh pytest process, two at a time, heavy files alone last.

Why not pytest-xdist: its workers live for the whole run, and TensorFlow does not give memory
back while a process lives, so a worker that has run a few dozen files holds 8 to 15 GB and two
of them exhaust this 24 GB machine. A process per file releases everything when the file ends
(TensorFlow's import costs a few seconds per file). Files marked `heavy` (full-size models, the
full-size TF.js converter: 10 GB and more) run after the others, alone.

    python scripts/run_tests.py [--jobs 2] [pytest args...]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"^=*\s*((?:\d+ (?:passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)[, ]*)+) in [0-9.]+s",
                     re.M)


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


def run_file(path, extra):
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *extra,
           str(path.relative_to(ROOT))]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
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
    if not ok:
        print(out[-12000:], flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2)
    args, extra = p.parse_known_args(argv)
    light, heavy = test_files()
    print_machine()
    warn_if_short_of_disk()
    total, done, failed = len(light) + len(heavy), 0, []
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(args.jobs) as pool:
        for result in cf.as_completed([pool.submit(run_file, f, extra) for f in light]):
            done += 1
            report(done, total, result.result())
            failed += [] if result.result()[1] else [result.result()[0]]
    for f in heavy:
        done += 1
        result = run_file(f, extra)
        report(done, total, result)
        failed += [] if result[1] else [f]
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
