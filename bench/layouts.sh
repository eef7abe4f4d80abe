#!/usr/bin/env bash
# Storage layouts side by side, from the same store paths: the classic
# binary cache (one zstd NAR per path), Attic's layout (whole-NAR FastCDC,
# zstd per chunk), and lazix's real store after `lazix push`, then after
# `lazix compact` (what `lazix serve` does in the background once uploads
# are quiet).
#
#   bash bench/layouts.sh            (two data sets: stable + nightly Rust,
#                                     and every folder of /usr/share)
#   bash bench/layouts.sh DIR...     (one data set of your own)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup
cargo build --release --locked -p lazix-bench >&2

store_size() { # objects and MiB of a store folder (staging files NAME#N are not objects)
  find "$1" -type f ! -name '*#*' -printf '%s\n' | awk '{s+=$1; n++} END {printf "%d %.0f\n", n, s/1048576}'
}

run_set() { # title dir...
  local title=$1; shift
  local paths=() d
  for d in "$@"; do
    paths+=("$(nix store add-path --name "layout-$(basename "$d" | tr -c 'A-Za-z0-9+._?=\n-' '_')" "$d")")
  done
  local work port server
  work=$(mktemp -d /var/tmp/lazix-layouts.XXXXXX)
  port=$(free_port)
  "$LAZIX" serve --data "$work/data" --grpc "127.0.0.1:$port" --compact-after 0 2>"$work/serve.log" &
  server=$!
  wait_port "$port"

  echo
  echo "### $title"
  ./target/release/lazix-bench layouts "${paths[@]}"
  "$LAZIX" push --server "grpc://127.0.0.1:$port" "${paths[@]}" >&2
  local n mib t0 secs
  read -r n mib < <(store_size "$work/data")
  echo "| lazix store after push (packs of zstd-3 frames, directories, chunk lists, paths) | $n | $mib |"
  t0=$(now)
  "$LAZIX" compact --data "$work/data" >&2
  secs=$(since "$t0")
  read -r n mib < <(store_size "$work/data")
  echo "| lazix store after compaction (zstd-17 frames, near-duplicates as deltas; took $secs s) | $n | $mib |"
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$work"
}

if [ $# -gt 0 ]; then
  run_set "$*" "$@"
else
  run_set "Rust stable + nightly toolchains" \
    "$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu" \
    "$HOME/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu"
  mapfile -t share < <(find /usr/share -mindepth 1 -maxdepth 1 -type d | sort)
  run_set "/usr/share, each folder a store path (${#share[@]} paths)" "${share[@]}"
fi
