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
# large files), pushed and compacted. Warm figures are the median of 3
# rounds after a warm-up; cold ones are the first round of a fresh server
# (its store in the page cache, as nginx's files are), once as restarted
# (the gzip files it deflated earlier kept on local disk,
# `--redeflated-disk-dir`) and once with that folder emptied (a server's
# first pass over its store). CPU-seconds per GB
# of NAR served are the server's own (user + system, every process of it)
# over the warm rounds.
# lazix runs twice: with its default decoded-chunk cache (1 GiB, smaller
# than the closure) and with one that holds the whole closure (4 GiB; nginx
# likewise serves from the page cache).
#
# KEEP=DIR keeps the pushed store and the static cache in DIR, so a second
# run (e.g. with LAZIX_BIN=another build) measures only.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup --peers
STABLE=${STABLE:-$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu}

if [ -n "${KEEP:-}" ]; then
  work=$KEEP
  mkdir -p "$work"
else
  work=$(mktemp -d /var/tmp/lazix-http-bench.XXXXXX)
fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -z "${KEEP:-}" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

add_share_and_stable "$work/paths"

# lazix: push over gRPC, compact (what a server does once uploads are
# quiet, so this is the store a cache serves from most of its life), then
# serve over HTTP (restarted per setting).
gport=$(free_port); hport=$(free_port)
if [ ! -e "$work/lazix.done" ]; then
  rm -rf "$work/lazix"
  "$LAZIX" serve --data "$work/lazix" --grpc "127.0.0.1:$gport" --compact-after 0 2>"$work/push-serve.log" &
  push_server=$!
  wait_port "$gport"
  "$LAZIX" push --server "grpc://127.0.0.1:$gport" "${paths[@]}" 2>&1 | tail -1 >&2
  kill "$push_server"; wait "$push_server" 2>/dev/null || true
  "$LAZIX" compact --data "$work/lazix" >&2
  touch "$work/lazix.done"
fi
# Builds before the re-deflated disk cache (LAZIX_BIN=…) lack its flag.
redeflated=()
if "$LAZIX" serve --help | grep -q -- --redeflated-disk-dir; then
  redeflated=(--redeflated-disk-dir "$work/redeflated")
  rm -rf "$work/redeflated"
fi
start_lazix() { # extra serve args...
  "$LAZIX" serve --data "$work/lazix" --grpc "127.0.0.1:$gport" --http "127.0.0.1:$hport" "${redeflated[@]}" "$@" 2>"$work/serve.log" &
  lazix_pid=$!
  pids+=($lazix_pid)
  wait_port "$gport"; wait_port "$hport"
}

# nginx: the static binary cache.
if [ ! -e "$work/static.done" ]; then
  rm -rf "$work/static"
  nix copy --to "file://$work/static?compression=none" "${paths[@]}"
  touch "$work/static.done"
fi
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
# CPU-seconds (user + system) of a process and its descendants so far.
cpu_of() { # pid
  local pids; pids=$(pstree -p -T "$1" | grep -o '([0-9]*)' | tr -d '()')
  for p in $pids; do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true; done |
    awk -v hz="$(getconf CLK_TCK)" '{s += $1} END {printf "%.2f", s / hz}'
}
server_pid=""
measure() { # name -> "t1 t16 narinfo_us cpu_s_per_gb"
  local name=$1 a b c
  curl -sf -K "$work/$name.nars" --parallel --parallel-max 16 >/dev/null 2>&1 # warm-up
  local cpu0; cpu0=$(cpu_of "$server_pid")
  a=$(timed curl -sf -K "$work/$name.nars"); b=$(timed curl -sf -K "$work/$name.nars"); c=$(timed curl -sf -K "$work/$name.nars")
  local t1; t1=$(median3 "$a" "$b" "$c")
  a=$(timed curl -sf -K "$work/$name.nars" --parallel --parallel-max 16); b=$(timed curl -sf -K "$work/$name.nars" --parallel --parallel-max 16); c=$(timed curl -sf -K "$work/$name.nars" --parallel --parallel-max 16)
  local t16; t16=$(median3 "$a" "$b" "$c")
  local cpu1; cpu1=$(cpu_of "$server_pid")
  # narinfo latency: every narinfo 10 times over one connection.
  for _ in $(seq 9); do cat "$work/$name.narinfos"; done >"$work/$name.narinfos10"
  cat "$work/$name.narinfos" >>"$work/$name.narinfos10"
  local n; n=$(grep -c '^url' "$work/$name.narinfos10")
  a=$(timed curl -sf -K "$work/$name.narinfos10"); b=$(timed curl -sf -K "$work/$name.narinfos10"); c=$(timed curl -sf -K "$work/$name.narinfos10")
  local tn; tn=$(median3 "$a" "$b" "$c")
  echo "$t1 $t16 $(awk -v t="$tn" -v n="$n" 'BEGIN {printf "%.0f", t/n*1e6}') $(awk -v c="$cpu1" -v d="$cpu0" -v b="$nar_bytes" 'BEGIN {printf "%.2f", (c-d)/(6*b/1e9)}')"
}
# The first round of a fresh server over `par` connections: "seconds
# cpu_s_per_gb".
cold() { # name par [serve args...]
  local name=$1 par=$2; shift 2
  start_lazix "$@"
  local cpu0 t cpu; cpu0=$(cpu_of "$lazix_pid")
  t=$(timed curl -sf -K "$work/$name.nars" --parallel --parallel-max "$par")
  cpu=$(awk -v c="$(cpu_of "$lazix_pid")" -v d="$cpu0" -v b="$nar_bytes" 'BEGIN {printf "%.2f", (c-d)/(b/1e9)}')
  # Stopped before answering: the caller starts the next server at once.
  kill "$lazix_pid"; wait "$lazix_pid" 2>/dev/null || true
  echo "$t $cpu"
}
server_pid=$nginx_pid
read -r n1 n16 nni ncpu < <(measure nginx)
start_lazix
server_pid=$lazix_pid
make_lists "http://127.0.0.1:$hport" lazix
read -r l1 l16 lni lcpu < <(measure lazix)
kill "$lazix_pid"; wait "$lazix_pid" 2>/dev/null || true
read -r c16 c16cpu < <(cold lazix 16)
read -r c1 _ < <(cold lazix 1)
# A first pass: nothing deflated before is on disk.
rm -rf "$work/redeflated"
read -r f16 f16cpu < <(cold lazix 16)
start_lazix --decoded-cache-mib 4096
server_pid=$lazix_pid
read -r b1 b16 bni bcpu < <(measure lazix)
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
printf '| cold (restarted server), 1 connection | %.2f s | %.2f s | %s | | |\n' "$n1" "$c1" "$(ratio "$c1" "$n1")"
printf '| cold (restarted server), 16 connections | %.2f s | %.2f s | %s | | |\n' "$n16" "$c16" "$(ratio "$c16" "$n16")"
printf '| cold (first pass, nothing on disk), 16 connections | %.2f s | %.2f s | %s | | |\n' "$n16" "$f16" "$(ratio "$f16" "$n16")"
printf '| one narinfo (sequential) | %s µs | %s µs | %s | %s µs | %s |\n' \
  "$nni" "$lni" "$(ratio "$lni" "$nni")" "$bni" "$(ratio "$bni" "$nni")"
printf '| server CPU-seconds per GB, warm | %s | %s | %s | %s | %s |\n' \
  "$ncpu" "$lcpu" "$(ratio "$lcpu" "$ncpu")" "$bcpu" "$(ratio "$bcpu" "$ncpu")"
printf '| server CPU-seconds per GB, cold over 16 (restarted) | %s | %s | %s | | |\n' "$ncpu" "$c16cpu" "$(ratio "$c16cpu" "$ncpu")"
printf '| server CPU-seconds per GB, cold over 16 (first pass) | %s | %s | %s | | |\n' "$ncpu" "$f16cpu" "$(ratio "$f16cpu" "$ncpu")"
echo
echo "(nginx's cold rows are its warm ones: its files are in the page cache either way.)"
