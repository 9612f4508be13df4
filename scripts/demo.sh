#!/usr/bin/env bash
# Launches the web app on the embedded default model (installs what it needs first):
# open http://127.0.0.1:7860/ (the browser client that runs the text encoder and decoder
# itself is at /edge/). Extra arguments go to `python -m webapp` (e.g. --port 8000).
# The command-line generator is still there: .venv/bin/python -m models generate --help
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh runtime
# The edge models the app serves at /exports/ (TFLite + TF.js), built once (about a minute).
if [ ! -f build/exports/tiny/manifest.json ]; then
  echo "demo: exporting the default model's edge models to build/exports/tiny (once)"
  .venv/bin/python -m exports --model tiny --out build/exports/tiny --formats tflite,tfjs \
    --components text_encoder,decoder,image_encoder --quantize float32,float16 --overwrite --quiet
fi
exec .venv/bin/python app.py "$@"
