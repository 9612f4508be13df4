"""Build networks without initial values when a checkpoint is about to supply them.

Randomly initialising SD v1's 1.07 B parameters only to overwrite them costs seconds and leaves
the initialisers' freed temporaries in the process: a loaded float32 pipeline held 5.2 GiB for
4.0 GiB of weights. Keras can create variables without values inside
`StatelessScope(initialize_variables=False)` and gives each its value when
`initialize_all_variables()` runs, from the variable's initializer; here that "initializer"
hands over the checkpoint tensor, so every variable is allocated once, already holding its
weights. This uses Keras internals (keras.src); where they are missing, `uninitialized()` builds
normally and `assign` falls back to Variable.assign, so loading still works, only heavier.
"""

from __future__ import annotations

import contextlib


def _internals():
    try:
        from keras.src.backend.common import global_state
        from keras.src.backend.common.stateless_scope import StatelessScope, in_stateless_scope
        from keras.src.backend.common.variables import initialize_all_variables
    except ImportError:
        return None
    return StatelessScope, in_stateless_scope, initialize_all_variables, global_state


@contextlib.contextmanager
def uninitialized():
    """Variables created inside get no value until `initialize(...)` (nothing is allocated)."""
    parts = _internals()
    if parts is None or parts[1]():  # no internals, or already inside a stateless scope
        yield
        return
    with parts[0](initialize_variables=False):
        yield


def is_uninitialized(variable) -> bool:
    return getattr(variable, "_value", True) is None and getattr(variable, "_initializer", None) is not None


class _Given:
    """An initializer that returns a prepared value (and then runs `after`, e.g. freeing its source)."""

    def __init__(self, make, after=None):
        self.make, self.after = make, after

    def __call__(self, shape=None, dtype=None):
        value = self.make()
        if self.after is not None:
            self.after()
        return value


def initialize(pairs) -> None:
    """Give every uninitialised variable in `pairs` ([(variable, make_value, after)]) its value."""
    import tensorflow as tf

    parts = _internals()
    for variable, make, after in pairs:
        variable._initializer = _Given(lambda make=make: tf.convert_to_tensor(make()), after)
    parts[2]()  # initialize_all_variables: ours, one at a time


def discard(variables) -> None:
    """Forget uninitialised variables of a model that failed to load (so Keras never fills them)."""
    parts = _internals()
    if parts is None:
        return
    ids = {id(v) for v in variables}
    registry = parts[3].get_global_attribute("uninitialized_variables") or []
    parts[3].set_global_attribute("uninitialized_variables", [v for v in registry if id(v) not in ids])
