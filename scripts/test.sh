#!/usr/bin/env bash
# Runs the whole test suite (installs what it needs first). Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for a quick pass.
# Each test file runs in its own pytest process, two at a time, never two full-size "heavy"
# files at once (scripts/run_tests.py says why).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python scripts/run_tests.py "$@"
