#!/usr/bin/env bash
# The test command: installs what the tests need into ./.venv, then runs ruff, mypy and pytest.
# The README tells newcomers to run this; .ci/run runs exactly this on a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

# Tests start their own redis-server on a free port; install it when the machine lacks it.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found; installing it" >&2
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo "sudo")
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server
fi
# The Cluster tests join their nodes with redis-cli (Debian's redis-tools, which redis-server
# depends on); the Sentinel tests run `redis-server --sentinel`, the same binary as
# Debian's redis-sentinel package, so that package is not needed.
if ! command -v redis-cli >/dev/null 2>&1; then
  echo "redis-cli not found; installing redis-tools" >&2
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo "sudo")
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-tools
fi
# The dashboard test drives the page in headless Chromium.
if ! command -v chromium >/dev/null 2>&1; then
  echo "chromium not found; installing it" >&2
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo "sudo")
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium
fi

echo "== ruff"
.venv/bin/ruff check gateway tests bench
.venv/bin/ruff format --check gateway tests bench
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
set +e
.venv/bin/pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$status"
