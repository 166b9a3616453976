#!/usr/bin/env bash
# Set up and run the suite on its embedded defaults (README, first command):
# SQLite directory and counters under ./var, every service on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
mkdir -p var
CONF=${CONGVU_CONFIG:-}
exec .venv/bin/congvu serve ${CONF:+--config "$CONF"} "$@"
