"""Hugging Face Spaces entry point: `python app.py` serves the embedded default model.

The README's front matter (sdk: gradio, app_file: app.py) makes the repository a Space.
Options of `python -m webapp` work here too, e.g. `python app.py --model path/to/sd15`.
A Space has no Node.js, so the browser client's TensorFlow.js is fetched at the first start from
the npm registry, pinned and checked by edge/web/package-lock.json (edge/runtime.py); the
default model's edge files are bundled (models/weights/tiny-edge/). SD_FETCH_EDGE_RUNTIME=0
turns the fetch off.
"""

import os
import sys


def edge_runtime():
    """TF.js for /edge/ if it is missing; a failure leaves the rest of the app serving."""
    if os.environ.get("SD_FETCH_EDGE_RUNTIME", "1") == "0":
        return
    from edge import runtime

    try:
        runtime.ensure()
    except runtime.EdgeRuntimeError as e:
        print(f"warning: /edge/ has no TensorFlow.js ({e}); `npm ci` in edge/web or "
              "`python -m edge.runtime` fixes it", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("HOST", "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1")
    edge_runtime()
    from webapp.__main__ import main

    sys.exit(main())
