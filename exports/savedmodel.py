"""SavedModels in TF Serving's layout: savedmodel/<model name>/<version>/.

TF Serving watches a base path per model and serves its highest numbered version folder,
so the folder name *is* the model name a client puts in its URL
(/v1/models/<name>:predict). The component names are used as model names on purpose: the
Kubernetes manifests and Dockerfiles under serving/ are written against them.
"""

from __future__ import annotations

import os

import tensorflow as tf

from .manifest import tensor_entry
from .signatures import track_variables
from .warmup import write_warmup

VERSION = 1
XLA_SUFFIX = "_xla"
CONTAINER_ROOT = "/models"  # where serving/docker/* copy savedmodel/ inside the image
MODELS_CONFIG = "models.config"
BATCHING_CONFIG = "batching.config"
# Server-side batching: up to 4 requests share one UNet loop (rows are independent, see
# diffusion_graph.py); a request waits at most 20 ms for company.
BATCHING = """max_batch_size { value: 4 }
batch_timeout_micros { value: 20000 }
max_enqueued_batches { value: 64 }
num_batch_threads { value: 1 }
"""


def model_name(component, xla=False):
    return component + (XLA_SUFFIX if xla else "")


def version_dir(root, component, xla=False):
    return os.path.join(root, "savedmodel", model_name(component, xla), str(VERSION))


def describe_signatures(module):
    """{signature: {inputs: [...], outputs: [...]}} from the traced functions (the same
    information `saved_model_cli show --all` prints)."""
    out = {}
    for name, fn in module.signatures().items():
        concrete = fn.get_concrete_function()
        inputs = [tensor_entry(s.name, s.shape.as_list(), s.dtype.name) for s in fn.input_signature]
        outputs = [tensor_entry(k, v.shape.as_list(), v.dtype.name)
                   for k, v in sorted(concrete.structured_outputs.items())]
        out[name] = {"inputs": inputs, "outputs": outputs}
    return out


def save(module, path, model_name, warmup_requests=()):
    """Write `module`'s signatures to `path` (a version folder) with warm-up records.

    Saving twice into one folder would mix files of two models, so the folder must not exist.
    """
    if os.path.exists(path):
        raise FileExistsError(path)
    tf.saved_model.save(track_variables(module), path, signatures=module.signatures())
    if warmup_requests:
        write_warmup(path, model_name, warmup_requests)
    return path


def models_config(names):
    """TF Serving's --model_config_file text for serving several models from one server."""
    lines = ["model_config_list {"]
    for name in names:
        lines += ["  config {", f'    name: "{name}"', f'    base_path: "{CONTAINER_ROOT}/{name}"',
                  '    model_platform: "tensorflow"', "  }"]
    return "\n".join(lines + ["}"]) + "\n"


def write_server_configs(root, names):
    """savedmodel/models.config (every exported model) and savedmodel/batching.config, so the
    export folder alone is a complete Docker build context (serving/docker/Dockerfile.all)."""
    folder = os.path.join(root, "savedmodel")
    with open(os.path.join(folder, MODELS_CONFIG), "w") as f:
        f.write(models_config(names))
    with open(os.path.join(folder, BATCHING_CONFIG), "w") as f:
        f.write(BATCHING)
    return [os.path.join("savedmodel", MODELS_CONFIG), os.path.join("savedmodel", BATCHING_CONFIG)]
