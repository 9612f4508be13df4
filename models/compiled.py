"""Compiled calls traced once for every size, batch and prompt length.

A tf.function traces a new graph for each new input shape (with reduce_retracing, for the
second one it meets, then again for each dimension that changes later). On a server that is a
stall the user who asks first pays, 10-30 s on the default model and hundreds of MB that stay
(bench/compile_stalls.py): a new image size, a batch of 4, a longer prompt. A `ShapeGeneric`
function is traced on its first call for inputs of those dtypes and ranks with every size left
open, except the last dimension of a tensor of rank 2 or more (channels, features, token
count: what the networks' weights fix), so a later call with any other size reuses the graph.

Shape-generic graphs give up what TensorFlow can do with static sizes. The choices that
depend on sizes (which convolution kernel, how many attention query chunks) models/layers.py
fixes per layer from a representative call (`plan_convolutions`) instead of per call in the
graph; what remains is the graph's shape arithmetic (bench/generic_graphs.py measures it).
"""

from __future__ import annotations

import inspect

import tensorflow as tf


def generic_spec(value) -> tf.TensorSpec:
    """The TensorSpec that takes `value`'s dtype and rank at any size (the last dimension of
    rank >= 2 kept)."""
    value = tf.convert_to_tensor(value)
    rank = value.shape.rank
    if rank is None:
        raise ValueError("a shape-generic function needs inputs of known rank")
    if rank == 0:
        return tf.TensorSpec([], value.dtype)
    if rank == 1:
        return tf.TensorSpec([None], value.dtype)
    return tf.TensorSpec([None] * (rank - 1) + [value.shape[-1]], value.dtype)


class ShapeGeneric:
    """`fn` compiled by tf.function, one trace per structure of (dtype, rank, last dimension)
    of its arguments; keyword arguments are bound to positions first. Arguments are tensors
    (or nests of them): Python values would be constants in a trace.

    Calls go to the trace's concrete function directly: tf.function's own dispatch (binding,
    its trace cache) costs twice the call itself for the scheduler's small per-step graphs
    (650 against 330 us on this machine), and a server makes several of those per step and
    request."""

    def __init__(self, fn, **tf_function_kwargs):
        self._fn = fn
        self._signature = inspect.signature(fn)
        self._kwargs = tf_function_kwargs
        self._functions = {}  # key -> (tf.function, its concrete function)

    def __call__(self, *args, **kwargs):
        if kwargs:
            bound = self._signature.bind(*args, **kwargs)
            args = bound.args
        flat = [tf.convert_to_tensor(a) for a in tf.nest.flatten(list(args))]
        key = (_structure(args), tuple((t.dtype, t.shape.rank, t.shape[-1] if t.shape.rank and t.shape.rank >= 2
                                        else None) for t in flat))
        entry = self._functions.get(key)
        if entry is None:
            specs = tf.nest.pack_sequence_as(list(args), [generic_spec(t) for t in flat])
            function = tf.function(self._fn, input_signature=specs, **self._kwargs)
            entry = self._functions[key] = (function, function.get_concrete_function())
        return entry[1](*tf.nest.pack_sequence_as(list(args), flat))

    def experimental_get_tracing_count(self) -> int:
        """Traces made so far, over every input structure (tf.function's name for it)."""
        return sum(f.experimental_get_tracing_count() for f, _ in self._functions.values())


def _structure(value):
    """The nesting of lists, tuples and dicts around the tensors (part of a trace's key)."""
    if isinstance(value, (list, tuple)):
        return type(value).__name__, tuple(_structure(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _structure(v)) for k, v in sorted(value.items()))
    return None
