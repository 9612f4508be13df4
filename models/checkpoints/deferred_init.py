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
import types


def _keras():
    """The Keras internals this module needs, or None."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.backend.common.stateless_scope import StatelessScope, in_stateless_scope
        from keras.src.backend.common.variables import initialize_all_variables
    except ImportError:
        return None
    return types.SimpleNamespace(StatelessScope=StatelessScope, in_stateless_scope=in_stateless_scope,
                                 initialize_all_variables=initialize_all_variables, global_state=global_state)


@contextlib.contextmanager
def uninitialized():
    """Variables created inside get no value until `initialize(...)` (nothing is allocated)."""
    k = _keras()
    if k is None or k.in_stateless_scope():  # no internals, or already inside a stateless scope
        yield
        return
    with k.StatelessScope(initialize_variables=False):
        yield


def is_uninitialized(variable) -> bool:
    return getattr(variable, "_value", True) is None and getattr(variable, "_initializer", None) is not None


class _Given:
    """An initializer that returns what `make()` returns (the variable's checkpoint value)."""

    def __init__(self, make):
        self.make = make

    def __call__(self, shape=None, dtype=None):
        return self.make()


def initialize(pairs) -> None:
    """Give every uninitialised variable in `pairs` ([(variable, make_value)]) its value, one
    variable at a time, so at most one value's temporaries exist at once."""
    if not pairs:
        return
    for variable, make in pairs:
        variable._initializer = _Given(make)
    _keras().initialize_all_variables()


def discard(variables) -> None:
    """Forget uninitialised variables of a model that failed to load (so Keras never fills them)."""
    k = _keras()
    if k is None:
        return
    ids = {id(v) for v in variables}
    registry = k.global_state.get_global_attribute("uninitialized_variables") or []
    k.global_state.set_global_attribute("uninitialized_variables", [v for v in registry if id(v) not in ids])
