"""Export stage: SavedModels for TF Serving, TFLite and TF.js files, and their manifest.

    python -m exports --model tiny --out build/export
    from exports import export; manifest = export("tiny", "build/export")

See exports/__main__.py for the command line and manifest.json for what a client reads.
Importing the package does not import TensorFlow (the CLI sets its log level first).
"""

from .errors import ExportError
from .manifest import find_artifact, read_manifest, verify
from .plan import COMPONENTS, FORMATS, PRECISIONS


def export(*args, **kwargs):
    """See exports.build.export."""
    from .build import export as _export

    return _export(*args, **kwargs)


__all__ = ["export", "ExportError", "read_manifest", "find_artifact", "verify", "COMPONENTS", "FORMATS",
           "PRECISIONS"]
