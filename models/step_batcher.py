"""Concurrent requests' denoising steps, run as one UNet call.

A server that runs several requests at once (webapp --batch-requests) gives each its own
denoising loop in its own thread. At every step each loop hands its UNet inputs here and
waits; one worker thread runs the calls that can share a UNet call as one call on their
concatenated rows and hands each loop its rows back. Calls can share when they are of the same
kind (guided: the classifier-free pair; conditional: one pass) and their latents and contexts
have the same shapes: prompts, seeds, guidance scales, step counts and schedulers may differ,
since the UNet takes a timestep per row and each loop's scheduler arithmetic runs in its own
graphs (models/sampling.py `step`). A loop joins at its first step and leaves after its last
(or when it is stopped), so requests come and go at step boundaries. Requests whose loops end
together also decode their latents in one VAE call (8 images at 64 px: 64 ms against 8 x 17).

Why it pays: a small UNet call is mostly fixed cost (the default model's guided call takes
30 ms for one image and 55 ms for eight), and on a GPU a larger batch fills the device.
Rows per call are capped (`max_rows`, a server's per-request batch limit), so a shared call
never needs more memory than the largest single request already may.

The worker waits for every loop in flight to arrive (at most `max_wait_s`), so loops that run
together stay in step; a late loop catches up with the next call. All UNet calls run under
`lock` (a server's one-network-at-a-time lock), the same as its other stages.
"""

from __future__ import annotations

import contextlib
import threading
import time

import tensorflow as tf

GUIDED, CONDITIONAL, DECODE = "guided", "conditional", "decode"


class _Call:
    __slots__ = ("kind", "inputs", "rows", "key", "done", "result", "error")

    def __init__(self, kind, inputs):
        self.kind, self.inputs = kind, [tf.convert_to_tensor(x) for x in inputs]
        self.rows = int(self.inputs[0].shape[0])
        self.key = (kind, *((tuple(x.shape[1:]), x.dtype) for x in self.inputs))
        self.done = threading.Event()
        self.result, self.error = None, None


class StepBatcher:
    """`guided_fn(x_in, t, context, uncond) -> [outputs]` (models.sampling.guided_eps's form: each
    output has the rows of the batch or twice as many, unconditional half first) and
    `conditional_fn(x_in, t, context, *extra) -> output` are the compiled UNet calls."""

    def __init__(self, guided_fn, conditional_fn, *, decode_fn=None, max_rows: int = 8, max_wait_s: float = 0.02,
                 decode_wait_s: float = 0.01, lock=None):
        """`decode_fn(latents) -> images`: the VAE decoder, so requests that finish together
        decode in one call too (a decode call waits up to `decode_wait_s` for others)."""
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self._fns = {GUIDED: guided_fn, CONDITIONAL: conditional_fn, DECODE: decode_fn}
        self.max_rows, self.max_wait_s, self.decode_wait_s = max_rows, max_wait_s, decode_wait_s
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._active = 0
        self._ended: dict = {}  # thread -> when its loop ended, until it decodes (requests about to decode)
        self._worker = None
        self.requests_per_call = {}  # {loops sharing a UNet call: how many calls}
        self.decodes_per_call = {}  # {requests sharing a decode: how many calls}
        self.busy_s = 0.0  # time in UNet and decode calls (the lock's wait included)

    # -- what a loop calls ----------------------------------------------------------------
    @contextlib.contextmanager
    def joined(self):
        """A loop in flight: the worker waits for it at each step."""
        with self._cond:
            self._active += 1
        try:
            yield self
        finally:
            with self._cond:
                self._active -= 1
                self._ended[threading.get_ident()] = time.monotonic()
                self._cond.notify_all()

    def guided(self, x_in, t, context, uncond) -> list:
        return self._submit(GUIDED, (x_in, t, context, uncond))

    def conditional(self, inputs):
        return self._submit(CONDITIONAL, inputs)

    def decode(self, latents):
        """Images for `latents`, decoded with the other requests' that are waiting to decode."""
        if self._fns[DECODE] is None:
            raise ValueError("this batcher has no decoder")
        return self._submit(DECODE, (latents,))

    def stats(self) -> dict:
        with self._cond:
            shares = dict(sorted(self.requests_per_call.items()))
            decodes = dict(sorted(self.decodes_per_call.items()))
        calls = sum(shares.values())
        mean = sum(k * v for k, v in shares.items()) / calls if calls else None
        return {"unet_calls": calls, "requests_per_call": shares, "mean_requests_per_call": mean,
                "decode_calls": sum(decodes.values()), "decodes_per_call": decodes,
                "busy_seconds": round(self.busy_s, 3)}

    def _submit(self, kind, inputs):
        call = _Call(kind, inputs)
        with self._cond:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name="step-batcher", daemon=True)
                self._worker.start()
            if kind == DECODE:
                now = time.monotonic()
                self._ended.pop(threading.get_ident(), None)
                self._ended = {k: t for k, t in self._ended.items() if now - t < 1.0}  # stopped, never decoding
            self._pending.append(call)
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    # -- the worker -----------------------------------------------------------------------
    def _serve(self):
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                start = time.monotonic()
                while (left := self._wait_left(start)) > 0:
                    self._cond.wait(left)
                group = self._take()
                counts = self.decodes_per_call if group[0].kind == DECODE else self.requests_per_call
                counts[len(group)] = counts.get(len(group), 0) + 1
            began = time.perf_counter()
            try:
                with self._lock:
                    results = self._run(group)
                for call, result in zip(group, results):
                    call.result = result
            except BaseException as e:  # every loop in the call gets the error; the worker goes on
                for call in group:
                    call.error = e
            self.busy_s += time.perf_counter() - began
            for call in group:
                call.done.set()

    def _wait_left(self, start) -> float:
        """How much longer to wait before taking a group: for every loop in flight to hand in
        its step (at most max_wait_s), and when the oldest call is a decode, for the requests
        whose loops ended beside it to hand in theirs (at most decode_wait_s)."""
        now = time.monotonic()
        steps = sum(1 for c in self._pending if c.kind != DECODE)
        left = start + self.max_wait_s - now if steps < self._active else 0.0
        if self._pending[0].kind == DECODE and self._ended:
            left = max(left, start + self.decode_wait_s - now)
        return left

    def _take(self) -> list:
        """The oldest call and, in arrival order, the others that can share its UNet call, up to
        max_rows rows (the oldest always goes: a request larger than the cap runs alone)."""
        first = self._pending[0]
        group, rows = [first], first.rows
        for call in self._pending[1:]:
            if call.key == first.key and rows + call.rows <= self.max_rows:
                group.append(call)
                rows += call.rows
        self._pending = [c for c in self._pending if not any(c is g for g in group)]
        return group

    def _run(self, group) -> list:
        fn = self._fns[group[0].kind]
        if len(group) == 1:
            return [fn(*group[0].inputs)]
        inputs = [tf.concat(parts, 0) for parts in zip(*(c.inputs for c in group))]
        output = fn(*inputs)
        total = sum(c.rows for c in group)
        outputs = output if isinstance(output, (list, tuple)) else [output]
        results, offset = [], 0
        for call in group:
            mine = [_rows_of(o, total, offset, call.rows) for o in outputs]
            results.append(mine if isinstance(output, (list, tuple)) else mine[0])
            offset += call.rows
        return results


def _rows_of(output, total, offset, rows):
    """A call's rows of a shared output: [total] rows, or [2 total] (a doubled guided batch:
    the unconditional half, then the text half), given back in the same layout."""
    if output.shape[0] == total:
        return output[offset:offset + rows]
    if output.shape[0] == 2 * total:
        return tf.concat([output[offset:offset + rows], output[total + offset:total + offset + rows]], 0)
    raise ValueError(f"a shared UNet call gave {output.shape[0]} rows for {total}")
