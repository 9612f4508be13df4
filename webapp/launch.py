"""Start `python -m webapp ...` as a child process on a free loopback port and wait until it
answers /api/v1/health: what the deployment-mode tests and benchmarks need to stand up the
three-endpoint layout on one machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_ready(health) -> bool:
    """Whether a /api/v1/health answer says the server is ready, as a readiness probe reads it:
    serving (200) and not compiling at start (models/warm_up.py)."""
    return health.status_code == 200 and (health.json().get("warm_up") or {}).get("state") != "running"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """One web app process; `stop()` ends it. Its output goes to a log file, quoted in the error
    when the process dies before it is up; the log is removed after a clean stop."""

    def __init__(self, *args, name="webapp", env=None, timeout=120, warm_up=False):
        """`warm_up` False starts it with --no-warm-up (tests: no background compile competing
        with what they measure); True waits until its start-up compile is done, as a readiness
        probe would."""
        self.name, self.port = name, free_port()
        if not warm_up:
            args = (*args, "--no-warm-up")
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(tempfile.gettempdir(), f"webapp-{name}-{self.port}.log")
        self.log = open(self.log_path, "w+")
        environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO, **(env or {})}
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "webapp", "--port", str(self.port), *args],
                                     cwd=REPO, env=environ, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait(timeout)
        self.start_s = time.perf_counter() - t0

    def _wait(self, timeout):
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"server {self.name} exited: {self.log.read()[-2000:]}")
            try:
                if is_ready(httpx.get(self.url + "/api/v1/health", timeout=2)):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server {self.name} did not start in {timeout} s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        if self.proc.returncode in (0, -15) and os.path.exists(self.log_path):
            os.unlink(self.log_path)
