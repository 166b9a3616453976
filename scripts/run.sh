#!/usr/bin/env bash
# Set up and run the suite on its embedded defaults (README, first command): SQLite
# directory and counters, every service on loopback, everything under ./var (a config of
# its own, var/congvu.toml, so the built-in production paths /var/lib/congvu and /run/congvu
# are not touched).  CONGVU_CONFIG=FILE runs that config instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
mkdir -p var
if [ ! -e var/congvu.toml ]; then
  cat > var/congvu.toml <<'TOML'
# Written by scripts/run.sh: the embedded defaults on loopback; paths are relative to this file.
state_dir = "."

[policyd]
listen = ["tcp:10040:interface=127.0.0.1"]
socket_group = ""

[authhooks]
socket = "authd.sock"
socket_group = ""
sasl_listen = ["unix:sasl.sock:mode=660"]
sasl_group = ""
TOML
fi
exec .venv/bin/congvu serve --config "${CONGVU_CONFIG:-var/congvu.toml}" "$@"
