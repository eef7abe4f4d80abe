#!/usr/bin/env bash
# Measures FastCDC parameter sets on real trees: objects, unique raw bytes
# (dedup) and bytes stored with zstd per chunk.
#
#   bash bench/chunk-params.sh [DIR...]   (default: stable + nightly Rust)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  set -- "$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu" \
         "$HOME/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu"
fi
cargo run --release --locked -q -p lazix-bench -- chunk-params "$@"
