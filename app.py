"""Hugging Face Spaces entry point: `python app.py` serves the embedded default model.

The README's front matter (sdk: gradio, app_file: app.py) makes the repository a Space.
Options of `python -m webapp` work here too, e.g. `python app.py --model path/to/sd15`.
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("HOST", "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1")
    from webapp.__main__ import main

    sys.exit(main())
