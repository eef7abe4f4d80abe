#!/usr/bin/env bash
# Runs lazix's whole test suite (unit, gRPC and end-to-end tests with real
# Nix), after installing what it needs. Also keeps fmt and clippy clean.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# Free space where the tests write (a nearly full disk once failed CI).
df -h . "${TMPDIR:-/tmp}" /dev/shm 2>/dev/null || true
source scripts/nix-env.sh
export LAZIX_WEED="${LAZIX_WEED:-$HOME/.cache/lazix/seaweedfs/bin/weed}"

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --no-fail-fast
else
  cargo test --locked --workspace --no-fail-fast
fi
