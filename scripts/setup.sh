#!/usr/bin/env bash
# Idempotent set-up: a virtual environment with the CPU extras (torch pinned to the CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The tests and the demo run a real Mosquitto broker; the console's page tests drive Debian's
# Chromium through its chromedriver (no browser download: line networks are offline).
need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need_apt[*]}" >&2
    (apt-get install -y -qq "${need_apt[@]}" >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq "${need_apt[@]}" >/dev/null; }) >&2
  else
    echo "setup: missing ${need_apt[*]}; install them (Debian/Ubuntu: sudo apt-get install -y ${need_apt[*]}); tests that need them are skipped" >&2
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
