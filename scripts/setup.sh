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

need_disk() {
  # need_disk GB WHAT: stop with a clear message instead of pip's "No space left on device".
  local free_gb
  free_gb=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
  if [ "$free_gb" -lt "$1" ]; then
    echo "setup: $2 needs about $1 GB of free disk, but $(pwd) has $free_gb GB free" >&2
    exit 1
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
  [ -f "$stamp" ] || need_disk "$([ "$profile" = test ] && echo 5 || echo 3)" ".venv/ ($profile)"
  .venv/bin/python -m pip install -q --upgrade pip
  args=()
  for r in "${reqs[@]}"; do args+=(-r "$r"); done
  [ -f constraints.txt ] && args+=(-c constraints.txt)
  .venv/bin/python -m pip install -q "${args[@]}"
  echo "$want" > "$stamp"
fi

# TF.js export (the browser client's models; both profiles, since the demo serves them):
# tensorflowjs pins TensorFlow 2.19, so its converter gets its own env, .venv-tfjs/
# (exports/tfjs.py calls it as a subprocess).
tfjs_stamp=".venv-tfjs/.setup-stamp"
tfjs_want=$(sha256sum requirements-tfjs.txt | cut -d' ' -f1)
if [ ! -f "$tfjs_stamp" ] || [ "$(cat "$tfjs_stamp")" != "$tfjs_want" ]; then
  echo "setup: installing the TF.js converter into .venv-tfjs/ (first run takes a few minutes)"
  [ -f "$tfjs_stamp" ] || need_disk 4 ".venv-tfjs/"
  [ -x .venv-tfjs/bin/python ] || "$PY" -m venv .venv-tfjs
  .venv-tfjs/bin/python -m pip install -q --upgrade pip
  .venv-tfjs/bin/python -m pip install -q -r requirements-tfjs.txt
  TF_CPP_MIN_LOG_LEVEL=3 .venv-tfjs/bin/python -c "import google.protobuf, tensorflowjs" >/dev/null 2>&1 \
    || { echo "setup: tensorflowjs does not import in .venv-tfjs/" >&2; exit 1; }
  echo "$tfjs_want" > "$tfjs_stamp"
fi

npm_ci() {
  # npm ci in folder $1, again only when its package.json / package-lock.json changed.
  local dir="$1" stamp="$1/node_modules/.setup-stamp" want
  want=$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing $dir/node_modules (npm ci)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
  fi
}

# Node.js and npm. Both profiles: the browser client (edge/web/, served at /edge/) loads
# TensorFlow.js from its own node_modules (npm ci from package-lock.json; no CDN, no build
# step). The tests also run TF.js exports in Node with the pure-JS @tensorflow/tfjs
# (exports/node/, no native download).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm || echo "setup: without Node.js and npm, /edge/ has no TensorFlow.js and the TF.js tests are skipped" >&2
fi
if command -v npm >/dev/null 2>&1; then
  npm_ci edge/web
  if [ "$profile" = test ]; then npm_ci exports/node; fi
fi

# The browser client's end-to-end test drives Debian's chromium with Playwright
# (Playwright's own browser download is not reachable here).
if [ "$profile" = test ] && [ ! -x /usr/bin/chromium ]; then
  apt_install chromium || echo "setup: without chromium the browser tests are skipped" >&2
fi
