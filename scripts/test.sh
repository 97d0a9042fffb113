#!/usr/bin/env bash
# Runs every test: the Rust unit and integration suites, then the suites that
# drive real third-party clients (npm and PyPI packages, installed here)
# against the tidings binary.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --all-targets

if ! command -v node >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ]; then
    echo "node is required for the client tests" >&2
    exit 1
  fi
  echo "SKIPPED client tests: node is not installed"
  exit 0
fi
export TIDINGS_BIN="$PWD/target/debug/tidings"

# Python SDKs (centrifuge-python, cent) in a virtual environment.
if [ ! -x tests/clients/.venv/bin/python ]; then
  python3 -m venv tests/clients/.venv
fi
tests/clients/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
export TIDINGS_PYTHON="$PWD/tests/clients/.venv/bin/python"

# Chromium for the browser tests (Debian's package; browsers cannot be
# downloaded any other way here).
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

# npm clients (eventsource, centrifuge, ws, playwright-core) from the lock file.
(cd tests/clients && npm ci --no-audit --no-fund --loglevel=error)
node --test tests/clients/
(cd tests/clients && "$TIDINGS_PYTHON" -m unittest -v test_python_clients)
