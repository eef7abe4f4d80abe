#!/usr/bin/env bash
# Ingest benchmark: `lazix push` of a large real tree (a Rust toolchain
# added as a store path) beside `nix copy --to file://…?compression=zstd` of
# the same path, measured in one run; then a second version of the same
# product (nightly after stable) to show cross-version dedup.
#
#   bash bench/ingest.sh [STABLE_DIR] [NIGHTLY_DIR]
#
# Prints a Markdown table (paste into docs/benchmarks.md). Both tools read the same
# store path with a warm page cache (it is read once before measuring). CPU
# columns: user + system seconds per GB of NAR, lazix's client (`lazix
# push`) and server (`lazix serve`, from /proc) apart, and `nix copy`.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup

STABLE=${1:-$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu}
NIGHTLY=${2:-$HOME/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu}

echo "adding the trees as store paths (once)" >&2
sp=$(nix store add-path --name rust-stable "$STABLE")
np=$(nix store add-path --name rust-nightly "$NIGHTLY")

work=$(mktemp -d /var/tmp/lazix-bench.XXXXXX)
# Both stores are written to a file system made for this run (an ext4
# image on a loop device), so that neither pays for the history of the
# machine's own (an ext4 that has seen millions of files deleted spends
# much of a writer's time looking for free inodes; lazix writes thousands
# of objects, `nix copy` three files). FRESH_FS=0 writes to /var/tmp.
fs_img=
if [ "${FRESH_FS:-1}" != 0 ]; then
  fs_img=$work.img
  truncate -s 16G "$fs_img"
  mkfs.ext4 -q -F "$fs_img"
  mount -o loop "$fs_img" "$work"
fi
port=$(free_port)
"$LAZIX" serve --data "$work/lazix" --grpc "127.0.0.1:$port" 2>"$work/serve.log" &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  if [ -n "$fs_img" ]; then umount "$work"; rm -f "$fs_img"; fi
  rm -rf "$work"
}
trap cleanup EXIT
wait_port "$port"

stored() { # apparent bytes and object count of a folder
  find "$1" -type f -printf '%s\n' | awk '{s+=$1; n++} END {printf "%d %d\n", s, n}'
}
cpu_of_pid() { # user + system seconds a running process has used
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}
per_gb() { awk -v s="$1" -v b="$2" 'BEGIN {printf "%.2f", s/(b/1e9)}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.0f", b/1048576}'; }
rate() { awk -v b="$1" -v t="$2" 'BEGIN {printf "%.0f", b/1048576/t}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }

measure() { # name path
  local name=$1 path=$2
  nix-store --dump "$path" >/dev/null   # warm the page cache for both
  local nar_size
  nar_size=$(nix path-info --json "$path" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["narSize"])')

  local t0 t1 t2 t3 s0 s1
  s0=$(cpu_of_pid "$server")
  t0=$(now)
  /usr/bin/time -f '%U %S' -o "$work/time-push" \
    "$LAZIX" push --json --server "grpc://127.0.0.1:$port" "$path" >"$work/report-$name.json" 2>/dev/null
  t1=$(now)
  s1=$(cpu_of_pid "$server")
  t2=$(now)
  /usr/bin/time -f '%U %S' -o "$work/time-copy" \
    nix copy --to "file://$work/binary-cache?compression=zstd" "$path"
  t3=$(now)
  local client_cpu server_cpu copy_cpu
  client_cpu=$(awk '{print $1 + $2}' "$work/time-push")
  server_cpu=$(awk -v a="$s0" -v b="$s1" 'BEGIN {print b - a}')
  copy_cpu=$(awk '{print $1 + $2}' "$work/time-copy")

  local lt nt sent
  lt=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b-a}')
  nt=$(awk -v a="$t2" -v b="$t3" 'BEGIN {print b-a}')
  sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_sent"])' "$work/report-$name.json")
  read -r ls lo < <(stored "$work/lazix")
  read -r ns no < <(stored "$work/binary-cache")
  printf '| %s | %s | %s (%.1f s) | %s (%.1f s) | %s | %s + %s | %s | %s | %s (%s objects) | %s (%s objects) | %s |\n' \
    "$name" "$(mib "$nar_size")" \
    "$(rate "$nar_size" "$lt")" "$lt" "$(rate "$nar_size" "$nt")" "$nt" "$(ratio "$nt" "$lt")" \
    "$(per_gb "$client_cpu" "$nar_size")" "$(per_gb "$server_cpu" "$nar_size")" "$(per_gb "$copy_cpu" "$nar_size")" \
    "$(mib "$sent")" "$(mib "$ls")" "$lo" "$(mib "$ns")" "$no" "$(ratio "$ls" "$ns")"
}

echo "| push | NAR MiB | lazix MB/s | nix copy zstd MB/s | speed-up | lazix CPU-s/GB (client + server) | nix copy CPU-s/GB | lazix sent MiB | lazix stored MiB (cumulative) | binary cache MiB (cumulative) | stored ratio |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
measure stable "$sp"
measure "nightly (after stable)" "$np"
