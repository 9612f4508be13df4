"""Staying up: a bounded queue, request size limits, per-request time limits, cancellation.

Model work runs on a small thread pool (`concurrency` workers, one per accelerator by
default). At most `queue_size` more requests may wait; beyond that the server answers 503
with Retry-After instead of building an unbounded backlog. Every job gets a deadline and a
cancel flag; the pipeline's per-step callback checks both, so a job that runs too long or
whose client went away stops within one denoising step and frees its slot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import threading
import time

from fastapi import Request

from .errors import ApiError


def default_concurrency() -> int:
    """One model run at a time per GPU; on a CPU one run already uses every core."""
    try:
        import tensorflow as tf

        return max(1, len(tf.config.list_physical_devices("GPU")))
    except Exception:  # pragma: no cover - TF always imports in this project
        return 1


@dataclasses.dataclass
class Limits:
    """The one set of request limits. The REST routes and the Gradio handlers both call the
    check_* methods, so a limit cannot be skipped by choosing the other door."""

    concurrency: int = 0  # 0: default_concurrency()
    # requests that may denoise at once on a server running the diffusion model, their steps
    # sharing UNet calls of at most max_batch images (models/step_batcher.py); 1: one at a time
    batch_requests: int = 8
    queue_size: int = 16  # waiting requests beyond the running ones
    timeout_s: float = 300.0  # per request, waiting included
    max_body_bytes: int = 32 * 1024 * 1024
    max_steps: int = 150
    max_batch: int = 8
    max_side: int = 1024  # pixels, each side
    max_prompts: int = 16
    max_prompt_chars: int = 4000  # prompt and negative prompt, each (encoded in 75-token chunks)
    max_guidance: float = 50.0  # guidance scale range 0..max_guidance
    retry_after_s: int = 5

    @classmethod
    def from_env(cls, **overrides) -> "Limits":
        """SD_<FIELD> environment variables (SD_MAX_STEPS=...), typed like the field's default."""
        kw = {}
        for f in dataclasses.fields(cls):
            value = os.environ.get(f"SD_{f.name.upper()}")
            if value:
                kw[f.name] = type(f.default)(value)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    # Over a server limit: 400 with its own code. Under the minimum: 422 invalid_parameters,
    # what REST's request validation answers for the same value.
    def check_prompt(self, text: str, what: str = "prompt"):
        if len(text) > self.max_prompt_chars:
            raise ApiError(400, "prompt_too_long", f"the {what} has {len(text)} characters; the limit is "
                           f"{self.max_prompt_chars} (longer prompts are encoded in chunks of 75 tokens)")

    def check_steps(self, steps):
        if not steps >= 1:
            raise ApiError(422, "invalid_parameters", f"steps must be at least 1, got {steps}")
        if steps > self.max_steps:
            raise ApiError(400, "too_many_steps", f"steps {steps} is over this server's limit of {self.max_steps}")

    def check_batch(self, batch):
        if not batch >= 1:
            raise ApiError(422, "invalid_parameters", f"batch size must be at least 1, got {batch}")
        if batch > self.max_batch:
            raise ApiError(400, "batch_too_large", f"batch size {batch} is over this server's limit of "
                           f"{self.max_batch}")

    def check_size(self, height, width):
        """Each side (None: the model's default) of a request, an upload or a resized crop."""
        for name, v in (("height", height), ("width", width)):
            if v is None:
                continue
            if not v >= 1:
                raise ApiError(422, "invalid_parameters", f"{name} must be positive, got {v}")
            if v > self.max_side:
                raise ApiError(400, "size_too_large", f"{name} {v} is over this server's limit of {self.max_side}")

    def check_guidance(self, scale):
        if not 0 <= scale <= self.max_guidance:  # NaN fails too
            raise ApiError(422, "invalid_parameters", f"guidance scale must be between 0 and "
                           f"{self.max_guidance:g}, got {scale}")


class Job:
    """What a worker thread sees: the deadline and the cancel flag, checked every step."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.cancelled = threading.Event()

    def check(self):
        from models.pipeline import Cancelled

        if self.cancelled.is_set():
            raise Cancelled("cancelled")
        if time.monotonic() > self.deadline:
            raise Cancelled("time limit")


class Gate:
    """Admission control + the worker pool. `await gate.run(fn, request)` -> fn(job)."""

    def __init__(self, limits: Limits, at_least: int = 1):
        """`at_least`: workers the engine can use at once (a step-batching engine's batch_requests)."""
        self.limits = limits
        self.concurrency = max(limits.concurrency or default_concurrency(), at_least)
        self.pool = concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="model")
        self.admitted = 0  # running + waiting
        self.running = 0
        self.completed = 0
        self.rejected = 0
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self.concurrency + self.limits.queue_size

    def stats(self) -> dict:
        return dict(concurrency=self.concurrency, queue_size=self.limits.queue_size, admitted=self.admitted,
                    running=self.running, completed=self.completed, rejected=self.rejected)

    def _busy(self):
        self.rejected += 1
        return ApiError(503, "busy", f"the server is busy ({self.admitted} requests admitted, capacity "
                        f"{self.capacity}); retry later", {"Retry-After": str(self.limits.retry_after_s)})

    async def run(self, fn, request: Request | None = None, timeout_s: float | None = None):
        with self._lock:
            if self.admitted >= self.capacity:
                raise self._busy()
            self.admitted += 1
        timeout = self.limits.timeout_s if timeout_s is None else timeout_s
        job = Job(time.monotonic() + timeout)

        def work():
            with self._lock:
                self.running += 1
            try:
                job.check()  # it may have waited past its deadline or lost its client
                return fn(job)
            finally:
                with self._lock:
                    self.running -= 1

        future = asyncio.get_running_loop().run_in_executor(self.pool, work)
        # a cancelled request's job ends with Cancelled after we stopped waiting: retrieve it
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=0.25)
                if done:
                    break
                if request is not None and await request.is_disconnected():
                    job.cancelled.set()  # the worker stops at its next step; the slot frees then
                if time.monotonic() > job.deadline + 5:
                    job.cancelled.set()
            return self._result(future, job, timeout)
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        finally:
            with self._lock:
                self.admitted -= 1
                self.completed += 1

    def _result(self, future, job, timeout):
        from models.pipeline import Cancelled

        try:
            return future.result()
        except Cancelled:
            if job.cancelled.is_set():
                raise ApiError(499, "cancelled", "the request was cancelled") from None
            raise ApiError(503, "time_limit", f"the request took longer than the {timeout:g} s limit; "
                           "ask for fewer steps, a smaller size or batch", {"Retry-After": str(self.limits.retry_after_s)}) from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes (413) before reading it all."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise ApiError(400, "bad_content_length", f"Content-Length {length!r} is not a number") from None
        if n > limit:
            raise ApiError(413, "body_too_large", f"request body of {n} bytes is over the {limit}-byte limit")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "body_too_large", f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise ApiError(400, "empty_body", "the request body is empty")
    return body


class BodyTooLarge(Exception):
    """Raised from BodyLimitMiddleware's receive once the streamed body passes the limit."""


class BodyLimitMiddleware:
    """ASGI middleware: 413 for any request (the API, Gradio's routes and uploads, static files)
    whose body exceeds the limit, by Content-Length or by counting a chunked body's bytes as
    they stream in, before a route or a multipart parser buffers it.

    A chunked body is only found too large while the app reads it, and the app may turn the
    error raised from `receive` into an answer of its own (FastAPI: 400 "error parsing the
    body"); so once over the limit, whatever the app sends is dropped and the 413 goes out."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._reject(send)
        seen, over, started = 0, False, False

        async def limited():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
            if over:
                raise BodyTooLarge()
            return message

        async def guarded(message):
            nonlocal started
            if over:
                return  # the app's answer to a body it could not read; the 413 replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._reject(send)

    async def _reject(self, send):
        import json

        body = json.dumps({"error": {"code": "body_too_large",
                                     "message": f"request body is over the {self.limit}-byte limit"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
