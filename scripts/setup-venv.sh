#!/usr/bin/env bash
# Create .venv (or the venv named by $1) and install congvu into it from requirements.lock:
# exact versions with hashes, no resolver, no isolated build (setuptools comes from the lock
# too), so tomorrow's upstream releases cannot change what is installed.  Used by
# scripts/run.sh and scripts/test.sh; `scripts/test.sh --latest` installs without the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" || { echo "congvu: $PY -m venv failed; as root: apt-get install python3-venv"; exit 1; }
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --require-hashes --no-deps -r requirements.lock
# The checkout itself, editable: congvu/ links the top-level folders, so it imports as installed.
"${PIP[@]}" install --no-deps --no-build-isolation -e .
"${PIP[@]}" check >/dev/null || { "${PIP[@]}" check; echo "congvu: the lock is inconsistent; run scripts/lock.sh"; exit 1; }
