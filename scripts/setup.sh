#!/usr/bin/env bash
# Idempotent set-up: a virtual environment with the CPU extras (torch pinned to the CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The tests and the demo run a real Mosquitto broker.
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing mosquitto" >&2
    (apt-get install -y -qq mosquitto >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq mosquitto >/dev/null; }) >&2
  else
    echo "setup: mosquitto is missing; install it (Debian/Ubuntu: sudo apt-get install -y mosquitto)" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing edge-inspect with the cpu and dev extras" >&2
  .venv/bin/pip install --quiet --upgrade pip >&2
  .venv/bin/pip install --quiet -e '.[cpu,dev]' >&2
  rm -f .venv/.installed-* && touch "$stamp"
fi
