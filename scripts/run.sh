#!/usr/bin/env bash
# Set up and run the suite on its embedded defaults (README, first command):
# SQLite directory and counters under ./var, every service on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { echo "congvu run: python3 -m venv failed; as root: apt-get install python3-venv"; exit 1; }
fi
.venv/bin/pip install -q --disable-pip-version-check -e .
mkdir -p var
CONF=${CONGVU_CONFIG:-}
exec .venv/bin/congvu serve ${CONF:+--config "$CONF"} "$@"
