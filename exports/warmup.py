"""TF Serving warm-up records: `assets.extra/tf_serving_warmup_requests`.

TF Serving replays these PredictionLog records when it loads a model version, so the first
real request does not pay for graph initialisation (or, for XLA variants, compilation).

The tensorflow-serving-api package declares a dependency on the full `tensorflow` wheel,
which would clash with tensorflow-cpu, so the four messages needed here are declared from
the official field numbers (tensorflow_serving/apis/{model,predict,prediction_log}.proto) in
a private descriptor pool. Only numbers and types reach the wire, so the records parse with
the official classes (tests check that when tensorflow_serving is importable).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2
from tensorflow.core.framework import resource_handle_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
_F = descriptor_pb2.FieldDescriptorProto


def _field(msg, name, number, ftype, type_name=None, repeated=False, oneof=None):
    f = msg.field.add(name=name, number=number, type=ftype,
                      label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof
    return f


@functools.lru_cache(maxsize=None)
def _classes():
    pool = descriptor_pool.DescriptorPool()
    for module in (wrappers_pb2, types_pb2, tensor_shape_pb2, resource_handle_pb2, tensor_pb2):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))

    fd = descriptor_pb2.FileDescriptorProto(
        name="sd_exports/tensorflow_serving_prediction_log.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto", "tensorflow/core/framework/tensor.proto"],
    )
    spec = fd.message_type.add(name="ModelSpec")
    spec.oneof_decl.add(name="version_choice")
    _field(spec, "name", 1, _F.TYPE_STRING)
    _field(spec, "version", 2, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value", oneof=0)
    _field(spec, "signature_name", 3, _F.TYPE_STRING)
    _field(spec, "version_label", 4, _F.TYPE_STRING, oneof=0)

    request = fd.message_type.add(name="PredictRequest")
    entry = request.nested_type.add(name="InputsEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, _F.TYPE_MESSAGE, ".tensorflow.TensorProto")
    _field(request, "model_spec", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.ModelSpec")
    _field(request, "inputs", 2, _F.TYPE_MESSAGE, ".tensorflow.serving.PredictRequest.InputsEntry", repeated=True)
    _field(request, "output_filter", 3, _F.TYPE_STRING, repeated=True)

    log = fd.message_type.add(name="PredictLog")
    _field(log, "request", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PredictRequest")

    prediction_log = fd.message_type.add(name="PredictionLog")
    prediction_log.oneof_decl.add(name="log_type")
    _field(prediction_log, "predict_log", 6, _F.TYPE_MESSAGE, ".tensorflow.serving.PredictLog", oneof=0)

    pool.Add(fd)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in ("ModelSpec", "PredictRequest", "PredictLog", "PredictionLog")}


def prediction_log(model_name, signature_name, inputs: dict, version=None) -> bytes:
    """One serialized PredictionLog holding a PredictRequest with `inputs` (name -> array)."""
    classes = _classes()
    request = classes["PredictRequest"]()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in inputs.items():
        # A message of the private pool: copy TensorProto by its bytes, not by CopyFrom.
        request.inputs[name].MergeFromString(tf.make_tensor_proto(np.asarray(value)).SerializeToString())
    log = classes["PredictionLog"]()
    log.predict_log.request.CopyFrom(request)
    return log.SerializeToString()


def parse_prediction_log(record: bytes):
    """(model name, signature name, {input: ndarray}) of a record written by `prediction_log`."""
    log = _classes()["PredictionLog"].FromString(record)
    req = log.predict_log.request
    return (req.model_spec.name, req.model_spec.signature_name,
            {k: tf.make_ndarray(tensor_pb2.TensorProto.FromString(v.SerializeToString()))
             for k, v in req.inputs.items()})


def write_warmup(saved_model_dir, model_name, requests):
    """`requests`: iterable of (signature_name, {input: array}). Returns the file written."""
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            writer.write(prediction_log(model_name, signature, inputs))
    return path


def read_warmup(saved_model_dir):
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    return [parse_prediction_log(r.numpy()) for r in tf.data.TFRecordDataset(path)]
