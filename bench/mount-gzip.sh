#!/usr/bin/env bash
# Cold reads of single man pages through `lazix mount`: /usr/share/man
# pushed as a store path and compacted twice, once storing gzip files as
# their contents (the default) and once keeping them as they are
# (`--keep-gzip`). Each page is read from a fresh mount with an empty
# cache (server on loopback); time and bytes fetched are medians of 3.
#
#   bash bench/mount-gzip.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup

bench_workdir gzip-bench
mnt=$work/mnt; mkdir -p "$mnt"
server=""; mounter=""

path=$(nix store add-path --name share-man /usr/share/man)
name=$(basename "$path")
pages=(man1/ls.1.gz man1/bash.1.gz man3/printf.3.gz man5/passwd.5.gz man8/mount.8.gz)
echo "| page | gzip bytes | contents stored: time | fetched | --keep-gzip: time | fetched |"
echo "|---|---|---|---|---|---|"
declare -A secs kib
for mode in contents keep; do
  extra=(); [ "$mode" = keep ] && extra=(--keep-gzip)
  gport=$(free_port)
  "$LAZIX" serve --data "$work/data-$mode" --grpc "127.0.0.1:$gport" --compact-after 0 "${extra[@]}" 2>>"$work/serve.log" &
  server=$!
  wait_port "$gport"
  "$LAZIX" push --server "grpc://127.0.0.1:$gport" "$path" >/dev/null 2>&1
  "$LAZIX" compact --data "$work/data-$mode" "${extra[@]}" >&2
  for page in "${pages[@]}"; do
    times=(); sizes=()
    for _ in 1 2 3; do
      "$LAZIX" mount --server "grpc://127.0.0.1:$gport" --cache-dir "$work/cache-$RANDOM" "$mnt" 2>>"$work/mount.log" &
      mounter=$!
      wait_mount "$mnt"
      stat "$mnt/$name/$page" >/dev/null
      t=$(now); cat "$mnt/$name/$page" >/dev/null; times+=("$(since "$t")")
      sizes+=("$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["fetched_bytes"]/1024))' "$mnt/.lazix-stats")")
      kill "$mounter"; wait "$mounter" 2>/dev/null || true; mounter=""
    done
    secs[$mode,$page]=$(median3 "${times[@]}"); kib[$mode,$page]=$(median3 "${sizes[@]}")
  done
  kill "$server"; wait "$server" 2>/dev/null || true; server=""
done
for page in "${pages[@]}"; do
  printf '| %s | %s | %.0f ms | %s KiB | %.0f ms | %s KiB |\n' "$page" "$(stat -c %s "$path/$page")" \
    "$(awk -v s="${secs[contents,$page]}" 'BEGIN {print s*1000}')" "${kib[contents,$page]}" \
    "$(awk -v s="${secs[keep,$page]}" 'BEGIN {print s*1000}')" "${kib[keep,$page]}"
done
