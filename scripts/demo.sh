#!/usr/bin/env bash
# Launches the demo on the embedded default model (installs what it needs first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh runtime
exec .venv/bin/python -m models generate --model tiny \
  --prompt "a red circle on a blue background" --seed 0 --out outputs/demo.png "$@"
