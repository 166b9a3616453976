#!/usr/bin/env bash
# Set up and pass the whole test suite on a fresh Debian machine (README, second command).
# As root it installs the Debian packages the integration tests start; without them it
# stops and names them. It never skips an integration test.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS="python3-venv openssl postfix postfix-sqlite postfix-ldap dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd slapd ldap-utils redis-server swaks postfix-doc postfwd rspamd chromium"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "congvu test: installing Debian packages:$missing"
    # Packages must not start their system services: the fixtures start their own.
    created_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
      created_policy=1
    fi
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/tmp/congvu-apt.log 2>&1 \
      || { tail -20 /tmp/congvu-apt.log; echo "congvu test: apt-get install failed for:$missing"; exit 1; }
    [ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d
  else
    echo "congvu test: missing Debian packages:$missing"
    echo "  install them as root: apt-get install$missing"
    exit 1
  fi
fi

if [ "${1:-}" = "--latest" ]; then
  # Not CI: the same suite on the newest upstream releases, in a venv of its own, to see a
  # breaking release before it reaches the lock.  Prints what differs from the lock.
  shift
  VENV=.venv-latest
  PY=${PYTHON:-python3}
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade -e '.[test,dev]'
  echo "== newer than requirements.lock:"
  "$VENV/bin/python" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null \
    | grep -vi '^congvu' | sort | comm -23 - <(grep -E '^[a-z0-9]' requirements.lock | sed 's/ .*//' | sort) || true
  status=0
  echo "== ruff"; "$VENV/bin/ruff" check . || status=1
  echo "== mypy"; "$VENV/bin/mypy" || status=1
  echo "== import layers"; "$VENV/bin/lint-imports" --no-cache >/dev/null || { "$VENV/bin/lint-imports" --no-cache; status=1; }
  # Deselected: it asserts this venv WAS installed from the lock, which --latest deliberately is not.
  echo "== pytest"; "$VENV/bin/pytest" -q -p no:cacheprovider \
    --deselect tests/unit/test_lock.py::test_this_environment_was_installed_from_the_lock "$@" || status=1
  echo "congvu test --latest: $([ $status = 0 ] && echo 'the newest releases pass' || echo 'FAILED on the newest releases: pin or fix before relocking')"
  exit $status
fi

bash scripts/setup-venv.sh

echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy
echo "== import layers"; .venv/bin/lint-imports --no-cache >/dev/null || { .venv/bin/lint-imports --no-cache; exit 1; }
echo "== pytest"
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
