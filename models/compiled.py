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
    (or nests of them): Python values would be constants in a trace."""

    def __init__(self, fn, **tf_function_kwargs):
        self._fn = fn
        self._signature = inspect.signature(fn)
        self._kwargs = tf_function_kwargs
        self._functions = {}

    def __call__(self, *args, **kwargs):
        if kwargs:
            bound = self._signature.bind(*args, **kwargs)
            args = bound.args
        specs = tf.nest.map_structure(generic_spec, list(args))
        key = (repr(tf.nest.map_structure(lambda _: 0, specs)),
               tuple((s.dtype.name, tuple(s.shape.as_list())) for s in tf.nest.flatten(specs)))
        fn = self._functions.get(key)
        if fn is None:
            fn = self._functions[key] = tf.function(self._fn, input_signature=specs, **self._kwargs)
        return fn(*args)

    def experimental_get_tracing_count(self) -> int:
        """Traces made so far, over every input structure (tf.function's name for it)."""
        return sum(f.experimental_get_tracing_count() for f in self._functions.values())
