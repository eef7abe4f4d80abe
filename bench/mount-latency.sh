#!/usr/bin/env bash
# Cold reads of many small files through `lazix mount` over a slow link:
# the mount reaches the server through bench/delay-proxy.py (DELAY_MS each
# way, 5 by default: a 10 ms round trip), and `cat`s the first N (200)
# files of /usr/share/doc (pushed as a store path), each mount with an
# empty cache. Prints the time per file in round trips: what a lazy store
# costs a program that opens many small files far from its server.
# With LAZIX_BEFORE=/path/to/older/lazix, that binary mounts too, in
# alternation (servers are this build's), for a before/after figure.
#
#   bash bench/mount-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup
N=${N:-200}; DELAY_MS=${DELAY_MS:-5}
mounts=("$LAZIX")
[ -n "${LAZIX_BEFORE:-}" ] && mounts=("$LAZIX_BEFORE" "$LAZIX")

bench_workdir latency-bench
mnt=$work/mnt; mkdir -p "$mnt"
server=""; mounter=""; proxy=""

path=$(nix store add-path --name share-doc /usr/share/doc)
name=$(basename "$path")
gport=$(free_port); pport=$(free_port)
"$LAZIX" serve --data "$work/data" --grpc "127.0.0.1:$gport" --compact-after 0 2>"$work/serve.log" &
server=$!
wait_port "$gport"
"$LAZIX" push --server "grpc://127.0.0.1:$gport" "$path" >/dev/null
"$LAZIX" compact --data "$work/data" >/dev/null 2>&1
python3 bench/delay-proxy.py "$pport" "$gport" "$DELAY_MS" &
proxy=$!
wait_port "$pport"
(cd "$path" && find . -type f | sort >"$work/all")
head -n "$N" "$work/all" >"$work/files"
kib=$(cd "$path" && xargs -d '\n' du -cb <"$work/files" | tail -1 | awk '{printf "%.0f", $1/1024}')

echo "$N files of /usr/share/doc ($kib KiB), cold, round trip $((2 * DELAY_MS)) ms; each the median of 3 mounts"
echo
echo "| mount | seconds | per file | round trips per file |"
echo "|---|---|---|---|"
for bin in "${mounts[@]}"; do
  runs=()
  for _ in 1 2 3; do
    "$bin" mount --server "grpc://127.0.0.1:$pport" --cache-dir "$work/cache-$RANDOM" "$mnt" 2>>"$work/mount.log" &
    mounter=$!
    wait_mount "$mnt"
    ls "$mnt/$name" >/dev/null
    t=$(now)
    (cd "$mnt/$name" && xargs -d '\n' cat <"$work/files" >/dev/null)
    runs+=("$(since "$t")")
    kill "$mounter"; wait "$mounter" 2>/dev/null || true; mounter=""
  done
  secs=$(printf '%s\n' "${runs[@]}" | sort -g | sed -n 2p)
  awk -v b="$bin" -v s="$secs" -v n="$N" -v d="$DELAY_MS" \
    'BEGIN {printf "| %s | %.2f | %.1f ms | %.2f |\n", b, s, s/n*1000, s/n*1000/(2*d)}'
done
