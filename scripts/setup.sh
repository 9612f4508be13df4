#!/usr/bin/env bash
# Creates .venv/ at the repository root and installs what the project needs, once.
# Usage: scripts/setup.sh [runtime|test]. Safe to run again: it reinstalls only when the
# requirements files changed. Works on a fresh Debian machine with only Python 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-runtime}"
PY="${PYTHON:-python3}"

apt_install() {
  # Debian packages the project needs (python3-venv for the venv itself).
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "setup: please install these Debian packages: $*" >&2
    return 1
  fi
}

if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv
    "$PY" -m venv .venv
  fi
fi

case "$profile" in
  runtime) reqs=(requirements.txt) ;;
  test) reqs=(requirements.txt requirements-test.txt) ;;
  *) echo "setup: unknown profile '$profile' (use runtime or test)" >&2; exit 2 ;;
esac

stamp=".venv/.setup-stamp-$profile"
want=$(cat "${reqs[@]}" constraints.txt 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages for '$profile' into .venv/ (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  args=()
  for r in "${reqs[@]}"; do args+=(-r "$r"); done
  [ -f constraints.txt ] && args+=(-c constraints.txt)
  .venv/bin/python -m pip install -q "${args[@]}"
  echo "$want" > "$stamp"
fi
