#!/usr/bin/env bash
# Binary-cache serving benchmark: the same closure served by lazix's HTTP
# shim (NARs rendered from chunks on the fly) and by nginx serving the static
# binary cache `nix copy --to file://…?compression=none` wrote, measured in
# one run: total download time of every NAR with 1 and with 16 parallel
# connections, and sequential narinfo latency. Prints ratios lazix/nginx.
#
#   bash bench/http.sh
#
# The closure: every folder of /usr/share as a store path (107 paths,
# thousands of small files) plus the stable Rust toolchain (one path with
# large files), pushed and compacted. Each measurement is the median of 3 rounds after a warm-up.
# lazix runs twice: with its default decoded-chunk cache (1 GiB, smaller
# than the closure) and with one that holds the whole closure (4 GiB; nginx
# likewise serves from the page cache).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup --peers
STABLE=${STABLE:-$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu}

work=$(mktemp -d /var/tmp/lazix-http-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

add_share_and_stable "$work/paths"

# lazix: push over gRPC, compact (what a server does once uploads are
# quiet, so this is the store a cache serves from most of its life), then
# serve over HTTP (restarted per setting).
gport=$(free_port); hport=$(free_port)
"$LAZIX" serve --data "$work/lazix" --grpc "127.0.0.1:$gport" --compact-after 0 2>"$work/push-serve.log" &
push_server=$!
wait_port "$gport"
"$LAZIX" push --server "grpc://127.0.0.1:$gport" "${paths[@]}" 2>&1 | tail -1 >&2
kill "$push_server"; wait "$push_server" 2>/dev/null || true
"$LAZIX" compact --data "$work/lazix" >&2
start_lazix() { # extra serve args...
  "$LAZIX" serve --data "$work/lazix" --grpc "127.0.0.1:$gport" --http "127.0.0.1:$hport" "$@" 2>"$work/serve.log" &
  lazix_pid=$!
  pids+=($lazix_pid)
  wait_port "$gport"; wait_port "$hport"
}

# nginx: the static binary cache.
nix copy --to "file://$work/static?compression=none" "${paths[@]}"
start_nginx "$work/static"
pids+=("$nginx_pid")

# URL lists for curl: narinfos, then the NARs they name.
make_lists() { # base name
  local base=$1 name=$2
  : >"$work/$name.narinfos"; : >"$work/$name.nars"
  while read -r p; do
    h=$(basename "$p" | cut -c1-32)
    echo "url = \"$base/$h.narinfo\"" >>"$work/$name.narinfos"
    echo "output = /dev/null" >>"$work/$name.narinfos"
    url=$(curl -sf "$base/$h.narinfo" | sed -n 's/^URL: //p')
    echo "url = \"$base/$url\"" >>"$work/$name.nars"
    echo "output = /dev/null" >>"$work/$name.nars"
  done <"$work/paths"
}
make_lists "http://127.0.0.1:$nport" nginx

timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN {print b-a}'; }
measure() { # name -> "t1 t16 narinfo_us"
  local name=$1 a b c
  curl -s -K "$work/$name.nars" --parallel --parallel-max 16 >/dev/null # warm-up
  a=$(timed curl -sf -K "$work/$name.nars"); b=$(timed curl -sf -K "$work/$name.nars"); c=$(timed curl -sf -K "$work/$name.nars")
  local t1; t1=$(median3 "$a" "$b" "$c")
  a=$(timed curl -sf -K "$work/$name.nars" --parallel --parallel-max 16); b=$(timed curl -sf -K "$work/$name.nars" --parallel --parallel-max 16); c=$(timed curl -sf -K "$work/$name.nars" --parallel --parallel-max 16)
  local t16; t16=$(median3 "$a" "$b" "$c")
  # narinfo latency: every narinfo 10 times over one connection.
  for _ in $(seq 9); do cat "$work/$name.narinfos"; done >"$work/$name.narinfos10"
  cat "$work/$name.narinfos" >>"$work/$name.narinfos10"
  local n; n=$(grep -c '^url' "$work/$name.narinfos10")
  a=$(timed curl -sf -K "$work/$name.narinfos10"); b=$(timed curl -sf -K "$work/$name.narinfos10"); c=$(timed curl -sf -K "$work/$name.narinfos10")
  local tn; tn=$(median3 "$a" "$b" "$c")
  echo "$t1 $t16 $(awk -v t="$tn" -v n="$n" 'BEGIN {printf "%.0f", t/n*1e6}')"
}
read -r n1 n16 nni < <(measure nginx)
start_lazix
make_lists "http://127.0.0.1:$hport" lazix
read -r l1 l16 lni < <(measure lazix)
kill "$lazix_pid"; wait "$lazix_pid" 2>/dev/null || true
start_lazix --decoded-cache-mib 4096
read -r b1 b16 bni < <(measure lazix)
mibs() { awk -v b="$nar_bytes" -v t="$1" 'BEGIN {printf "%.0f", b/1048576/t}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
echo
echo "${#paths[@]} paths, $((nar_bytes / 1048576)) MiB of NAR (uncompressed), loopback, 2 cores"
echo
echo "| measure | nginx (static files) | lazix, 1 GiB decoded cache | ratio | lazix, 4 GiB decoded cache | ratio |"
echo "|---|---|---|---|---|---|"
printf '| all NARs, 1 connection | %.2f s (%s MiB/s) | %.2f s (%s MiB/s) | %s | %.2f s (%s MiB/s) | %s |\n' \
  "$n1" "$(mibs "$n1")" "$l1" "$(mibs "$l1")" "$(ratio "$l1" "$n1")" "$b1" "$(mibs "$b1")" "$(ratio "$b1" "$n1")"
printf '| all NARs, 16 connections | %.2f s (%s MiB/s) | %.2f s (%s MiB/s) | %s | %.2f s (%s MiB/s) | %s |\n' \
  "$n16" "$(mibs "$n16")" "$l16" "$(mibs "$l16")" "$(ratio "$l16" "$n16")" "$b16" "$(mibs "$b16")" "$(ratio "$b16" "$n16")"
printf '| one narinfo (sequential) | %s µs | %s µs | %s | %s µs | %s |\n' \
  "$nni" "$lni" "$(ratio "$lni" "$nni")" "$bni" "$(ratio "$bni" "$nni")"
