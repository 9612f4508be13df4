#!/usr/bin/env bash
# Runs the whole test suite (installs what it needs first). Extra arguments go to pytest and
# replace the default two phases, e.g. `bash scripts/test.sh -m "not slow"`.
#
# Phase 1 runs everything but the full-size "heavy" files on two workers; phase 2 runs each
# heavy file alone in a fresh process: a full-size KerasCV model pair or the TF.js converter at
# full size needs 10 GB or more, and TensorFlow does not give memory back while a process lives.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export TF_CPP_MIN_LOG_LEVEL=2
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@" tests
fi
status=0
.venv/bin/python -m pytest -n 2 --dist loadfile -m "not heavy" tests || status=$?
for f in $(grep -l "pytest.mark.heavy" tests/test_*.py); do
  echo "== $f (alone)"
  .venv/bin/python -m pytest -m heavy "$f" || status=$?
done
exit "$status"
