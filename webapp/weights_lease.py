"""Which weights the in-process networks hold, shared by the requests in flight.

A server runs several requests at once (their denoising steps share UNet calls,
models/step_batcher.py), all on one set of weights: the diffusion model (the base or a
fine-tuned one from the models folder) and the active LoRA set. A request that wants other
weights must not switch them under another's loop: it waits until the requests holding the
current ones end, switches, and goes on. Requests are let in first come, first served, so a
request behind one that waits for a switch waits too: weights in steady demand cannot
starve a request for others.
"""

from __future__ import annotations

import contextlib
import threading


class WeightsLease:
    """`with lease.hold(model=..., loras=...):` runs the block on those weights (a key left out
    or None: any). `state()` gives the live {"model", "loras"}; `switch(wanted)` changes them
    and runs only while nobody holds the lease."""

    def __init__(self, state, switch):
        self._state, self._switch = state, switch
        self._cond = threading.Condition()
        self._holders = 0
        self._waiting: list = []  # [(ticket, wanted)] in arrival order

    @contextlib.contextmanager
    def hold(self, **wanted):
        wanted = {k: v for k, v in wanted.items() if v is not None}
        ticket = object()
        with self._cond:
            self._waiting.append((ticket, wanted))
            try:
                while not self._may_enter(ticket, wanted):
                    self._cond.wait()
                if not self._matches(wanted):
                    self._switch(wanted)  # nobody holds the lease: no request is using the weights
                self._holders += 1
                state = self._state()
            finally:
                self._waiting = [w for w in self._waiting if w[0] is not ticket]
                self._cond.notify_all()
        try:
            yield state
        finally:
            with self._cond:
                self._holders -= 1
                self._cond.notify_all()

    def holders(self) -> int:
        return self._holders

    def _matches(self, wanted) -> bool:
        state = self._state()
        return all(state.get(k) == v for k, v in wanted.items())

    def _may_enter(self, ticket, wanted) -> bool:
        for other, theirs in self._waiting:
            if other is ticket:
                break
            if any(k in theirs and theirs[k] != v for k, v in wanted.items()):
                return False  # one who came first wants other weights: after them
        return self._holders == 0 or self._matches(wanted)
