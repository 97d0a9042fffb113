#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS each (default
# 30) under libFuzzer and AddressSanitizer. cargo-fuzz needs nightly flags;
# RUSTC_BOOTSTRAP=1 lets the stable compiler accept them. A crash fails the
# run and is kept in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build
log="$(mktemp)"
for target in $(cargo fuzz list); do
  echo "fuzzing $target for ${seconds}s"
  if ! cargo fuzz run "$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
    grep -a -E -A20 "panicked|ERROR" "$log" | head -60 >&2
    echo "fuzz target $target found a crash (see fuzz/artifacts/$target)" >&2
    exit 1
  fi
  grep -a -E "^Done" "$log"
done
