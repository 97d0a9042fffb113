#!/usr/bin/env bash
# Runs every test: the Rust unit and integration suites, then the suites that
# drive real third-party clients (npm packages, installed here from the lock
# file) against the tidings binary.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --all-targets

if ! command -v node >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ]; then
    echo "node is required for the client tests" >&2
    exit 1
  fi
  echo "SKIPPED client tests: node is not installed"
  exit 0
fi
(cd tests/clients && npm ci --no-audit --no-fund --loglevel=error)
TIDINGS_BIN="$PWD/target/debug/tidings" node --test tests/clients/
