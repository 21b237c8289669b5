#!/usr/bin/env bash
# Short fuzz runs for CI: every target for 30 s (the long runs are done by hand, see README).
# cargo-fuzz runs on the stable toolchain with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
# cargo-fuzz has no --locked: check that fuzz/Cargo.lock is complete and current the way
# `--locked` would (it fails when the lock file would have to change).
cargo metadata --locked --format-version 1 --manifest-path Cargo.toml > /dev/null
for target in config proxy_protocol path header_values request; do
  # New inputs go to corpus/ (not committed); seeds/ (committed) is only read.
  mkdir -p "corpus/$target"
  seeds=("corpus/$target")
  if [ -d "seeds/$target" ]; then seeds+=("seeds/$target"); fi
  echo "-- fuzz $target (30 s)"
  log=$(mktemp)
  if ! cargo fuzz run "$target" "${seeds[@]}" -- -max_total_time=30 -rss_limit_mb=4096 > "$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed"
    exit 1
  fi
  grep -E "^Done" "$log" || { tail -n 20 "$log"; echo "fuzz target $target did not run"; exit 1; }
  rm -f "$log"
done
# The harnesses' configuration folders (libFuzzer exits without running destructors).
rm -rf "${TMPDIR:-/tmp}"/gatehouse-fuzz-config-* "${TMPDIR:-/tmp}"/gatehouse-fuzz-[0-9]*
