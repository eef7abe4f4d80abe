#!/usr/bin/env bash
# Storage layouts side by side, from the same store paths: the classic
# binary cache (one zstd NAR per path), Attic's layout (whole-NAR FastCDC,
# zstd per chunk), and lazix's real store after `lazix push`.
#
#   bash bench/layouts.sh [DIR...]   (default: stable + nightly Rust)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
source scripts/nix-env.sh
source bench/lib.sh
if [ $# -eq 0 ]; then
  set -- "$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu" \
         "$HOME/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu"
fi
cargo build --release --locked --bin lazix >&2
cargo build --release --locked -p lazix-bench >&2
LAZIX=$PWD/target/release/lazix

paths=()
for d in "$@"; do
  paths+=("$(nix store add-path --name "layout-$(basename "$d" | tr -c 'A-Za-z0-9+._?=\n-' '_')" "$d")")
done

work=$(mktemp -d /var/tmp/lazix-layouts.XXXXXX)
port=$(free_port)
"$LAZIX" serve --data "$work/data" --grpc "127.0.0.1:$port" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
wait_port "$port"

./target/release/lazix-bench layouts "${paths[@]}"
"$LAZIX" push --server "grpc://127.0.0.1:$port" "${paths[@]}" >&2
# Every object of the real store (staging files of unfinished writes are
# named NAME#N and are not objects).
find "$work/data" -type f ! -name '*#*' -printf '%s\n' |
  awk '{s+=$1; n++} END {printf "| lazix store after push (packs of zstd frames, directories, chunk lists, paths) | %d | %.0f |\n", n, s/1048576}'
