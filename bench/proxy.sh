#!/usr/bin/env bash
# `lazix proxy` over a slow link against the classic binary cache: nginx
# serving `nix copy --to file://…?compression=zstd` of the same paths.
# Both are reached through bench/delay-proxy.py: RTT_MS round trip
# (default 20) and MBIT Mbit/s each way (default 100), which also counts
# the bytes it carries. In one run, each side from a cold start (an empty
# chroot store, an empty proxy cache):
#   1. `nix copy --from` the stable Rust toolchain;
#   2. then the nightly toolchain into the same store (an upgrade: two
#      versions of one product).
# Reported: wall time and bytes over the link (both directions), and the
# ratios proxy / zstd cache. Signatures are not checked on either side
# (--no-check-sigs): the same work for both.
#
#   bash bench/proxy.sh          (RTT_MS=20 MBIT=100 by default)
#
# KEEP=DIR keeps the upstream's store and the zstd cache in DIR, so a
# second run (e.g. with LAZIX_BIN=another build) measures only; the copies
# start from empty client stores and an empty proxy cache every run.
# ONLY=stable copies the first version only (quicker, for trials).
#
# The client stores and the proxy's cache are written to a file system
# made for the run (an ext4 image on a loop device): on a disk that has
# seen many files deleted, creating the documentation's 52,000 files
# stalls `nix copy` for seconds at random, on either side (needs root
# and a loop device). FRESH_FS=0 writes to the work folder instead.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup --peers
RTT_MS=${RTT_MS:-20}
MBIT=${MBIT:-100}
STABLE=${STABLE:-$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu}
NIGHTLY=${NIGHTLY:-$HOME/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu}
if [ -n "${KEEP:-}" ]; then
  work=$KEEP
  mkdir -p "$work"
  trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done' EXIT
  if mountpoint -q "$work/client-fs"; then umount "$work/client-fs"; fi
  rm -rf "$work"/client-* "$work"/*.count
else
  bench_workdir proxy-bench
fi
one_way=$(awk -v r="$RTT_MS" 'BEGIN {print r / 2}')

stable=$(nix store add-path --name rust-stable "$STABLE")
nightly=$(nix store add-path --name rust-nightly "$NIGHTLY")
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b/1048576}'; }
nar_mib() { mib "$(nix path-info --json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["narSize"])')"; }

# Upstream: lazix with both toolchains pushed and compacted.
gport=$(free_port)
"$LAZIX" serve --data "$work/lazix" --grpc "127.0.0.1:$gport" --compact-after 0 2>"$work/serve.log" &
wait_port "$gport"
if [ ! -e "$work/made" ]; then
  # One version after the other, each compacted before the next arrives
  # (a cache compacts when uploads are quiet; versions come weeks apart).
  for p in "$stable" "$nightly"; do
    "$LAZIX" push --server "grpc://127.0.0.1:$gport" "$p" 2>&1 | tail -1 >&2
    "$LAZIX" compact --data "$work/lazix" >&2
  done
  # The classic binary cache, zstd-compressed NARs, served by nginx.
  nix copy --to "file://$work/zstd?compression=zstd" "$stable" "$nightly"
  touch "$work/made"
fi
start_nginx "$work/zstd"

client=$work/client-fs
mkdir -p "$client"
if [ "${FRESH_FS:-1}" != 0 ]; then
  trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
    umount "$client" 2>/dev/null || umount -l "$client" 2>/dev/null || true
    rm -f "$work/client-fs.img"; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
  truncate -s 12G "$work/client-fs.img"
  mkfs.ext4 -q -F "$work/client-fs.img"
  mount -o loop "$work/client-fs.img" "$client"
fi

# The links: one in front of nginx, one in front of the upstream's gRPC.
link() { # name target_port -> sets LINK_PORT, LINK_PID
  LINK_PORT=$(free_port)
  python3 bench/delay-proxy.py "$LINK_PORT" "$2" "$one_way" "$MBIT" "$work/$1.count" &
  LINK_PID=$!
  wait_port "$LINK_PORT"
}
carried() { awk '{print $1 + $2}' "$work/$1.count"; }

declare -A T B
copy() { # label store url path
  local label=$1 store=$2 url=$3 path=$4 before t
  # The previous copy's writes flushed first: not this one's cost.
  sync
  before=$(carried "$link_name")
  t=$(now)
  nix copy --no-check-sigs --store "$store" --from "$url" "$path" \
    --option substituters "" 2>>"$work/copy.log"
  T[$label]=$(since "$t")
  B[$label]=$(( $(sleep 0.6; carried "$link_name") - before ))
}

link_name=nginx; link nginx "$nport"; nginx_link=$LINK_PORT
copy zstd-stable "$client/zstd" "http://127.0.0.1:$nginx_link" "$stable"
[ "${ONLY:-}" = stable ] || copy zstd-nightly "$client/zstd" "http://127.0.0.1:$nginx_link" "$nightly"
kill "$LINK_PID"

link_name=grpc; link grpc "$gport"; grpc_link=$LINK_PORT
pport=$(free_port)
"$LAZIX" proxy --upstream "grpc://127.0.0.1:$grpc_link" --listen "127.0.0.1:$pport" \
  --cache-dir "$client/proxy-cache" 2>"$work/proxy.log" &
wait_port "$pport"
# Frame bytes fetched upstream and held in the proxy's disk cache after
# each copy (cumulative): a frame fetched twice counts twice in the first.
declare -A FETCHED CACHED
proxy_stats() {
  local s
  s=$(curl -s "http://127.0.0.1:$pport/lazix-stats")
  FETCHED[$1]=$(echo "$s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["upstream_bytes"])')
  CACHED[$1]=$(echo "$s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["disk_cache"]["bytes"])')
}
copy proxy-stable "$client/proxy" "http://127.0.0.1:$pport" "$stable"
proxy_stats stable
if [ "${ONLY:-}" != stable ]; then
  copy proxy-nightly "$client/proxy" "http://127.0.0.1:$pport" "$nightly"
  proxy_stats nightly
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
echo
echo "rust-stable $(nar_mib "$stable") MiB of NAR, rust-nightly $(nar_mib "$nightly") MiB; link ${RTT_MS} ms round trip, ${MBIT} Mbit/s; 2 cores"
echo
echo "| copy | zstd binary cache (nginx) | lazix proxy | time ratio | bytes ratio |"
echo "|---|---|---|---|---|"
for v in stable $([ "${ONLY:-}" = stable ] || echo nightly); do
  what=$([ $v = stable ] && echo "stable, empty store" || echo "nightly after stable")
  echo "| $what | ${T[zstd-$v]} s, $(mib "${B[zstd-$v]}") MiB | ${T[proxy-$v]} s, $(mib "${B[proxy-$v]}") MiB | $(ratio "${T[proxy-$v]}" "${T[zstd-$v]}") | $(ratio "${B[proxy-$v]}" "${B[zstd-$v]}") |"
done
echo
for v in stable $([ "${ONLY:-}" = stable ] || echo nightly); do
  echo "proxy after $v: $(mib "${FETCHED[$v]}") MiB of frames fetched upstream, $(mib "${CACHED[$v]}") MiB in its disk cache (cumulative)"
done
