#!/usr/bin/env bash
# What trust costs: the stable Rust toolchain as one store path, pushed
# (signing its root with --signing-key) and compacted, then read through
# `lazix mount` in four settings measured in one run:
#   plain            grpc://, the server believed
#   verify           grpc://, --trusted-public-keys (the path admitted by
#                    its root signature: closure and chunk lists first)
#   tls              grpcs:// with a CA made here (openssl)
#   tls+verify       both
# Each setting: the 5 largest files read cold (fresh server and empty
# cache, page cache dropped) and warm, `rustc --version` from a cold
# mount (time and bytes fetched), each the median of 3; plus a push of the
# path to an empty server with and without TLS and signing. Ratios are
# against `plain` of the same run.
#
#   bash bench/trust.sh        (root: drops the page cache between runs)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup
STABLE=${STABLE:-$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu}

bench_workdir trust-bench
mnt=$work/mnt; mkdir -p "$mnt"
server=""; mounter=""
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

path=$(nix store add-path --name rust-stable "$STABLE")
name=$(basename "$path")
nar_size=$(nix path-info --json "$path" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["narSize"])')

# Keys and a test CA with a certificate for 127.0.0.1.
"$LAZIX" keygen --dir "$work" bench-root >/dev/null 2>&1
pk=$(cat "$work/bench-root.public")
(
  cd "$work"
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj "/CN=bench CA" 2>/dev/null
  openssl req "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
    -days 2 -extfile server.ext 2>/dev/null
)
tls_args=(--tls-cert "$work/server.pem" --tls-key "$work/server.key")

gport=$(free_port)
start_server() { # data dir, extra serve args…
  local data=$1; shift
  "$LAZIX" serve --data "$data" --grpc "127.0.0.1:$gport" --compact-after 0 "$@" 2>>"$work/serve.log" &
  server=$!
  wait_port "$gport"
}
stop_server() { kill "$server"; wait "$server" 2>/dev/null || true; server=""; }

# Pushes: plain, and over TLS with the root signed; the path read once
# first, so neither push pays for a cold page cache.
nix-store --dump "$path" >/dev/null
declare -A P
timed_push() { # label scheme extra…
  local label=$1 scheme=$2; shift 2
  local data=$work/push-$label; rm -rf "$data"
  if [ "$scheme" = grpcs ]; then start_server "$data" "${tls_args[@]}"; else start_server "$data"; fi
  local t; t=$(now)
  "$LAZIX" push --server "$scheme://127.0.0.1:$gport" --ca-file "$work/ca.pem" "$@" "$path" 2>/dev/null
  P[$label]=$(since "$t")
  stop_server
}
timed_push plain grpc
timed_push tls+signed grpcs --signing-key "$work/bench-root.secret"

# The store every read setting serves: pushed with a root signature, compacted.
start_server "$work/data"
"$LAZIX" push --server "grpc://127.0.0.1:$gport" --signing-key "$work/bench-root.secret" "$path" 2>&1 | tail -1 >&2
stop_server
"$LAZIX" compact --data "$work/data" >&2

largest=$(cd "$path" && find . -type f -printf '%s %p\n' | sort -rn | awk 'NR<=5 {sub(/^[0-9]+ /, ""); print}')
largest_bytes=$(cd "$path" && find . -type f -printf '%s\n' | sort -rn | awk 'NR<=5 {s+=$1} END {print s}')
read_largest() { (cd "$mnt/$name" && for f in $largest; do cat "$f" >/dev/null; done); }
fetched() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fetched_bytes"])' "$mnt/.lazix-stats"; }

declare -A T
setting_args() { # setting -> serve args | mount args
  case $1 in
    plain) SERVE=(); MOUNT=(--server "grpc://127.0.0.1:$gport") ;;
    verify) SERVE=(); MOUNT=(--server "grpc://127.0.0.1:$gport" --trusted-public-keys "$pk") ;;
    tls) SERVE=("${tls_args[@]}"); MOUNT=(--server "grpcs://127.0.0.1:$gport" --ca-file "$work/ca.pem") ;;
    tls+verify) SERVE=("${tls_args[@]}"); MOUNT=(--server "grpcs://127.0.0.1:$gport" --ca-file "$work/ca.pem" --trusted-public-keys "$pk") ;;
  esac
}
cold() { # a fresh server and mount with an empty cache, page cache dropped
  [ -n "$mounter" ] && { kill "$mounter"; wait "$mounter" 2>/dev/null || true; mounter=""; }
  [ -n "$server" ] && stop_server
  start_server "$work/data" "${SERVE[@]}"
  cache_n=$((${cache_n:-0} + 1)); drop_caches
  "$LAZIX" mount "${MOUNT[@]}" --cache-dir "$work/cache-$cache_n" "$mnt" 2>>"$work/mount.log" &
  mounter=$!
  wait_mount "$mnt"
}
for s in plain verify tls tls+verify; do
  setting_args "$s"
  r=(); w=(); st=(); b=()
  for _ in 1 2 3; do
    cold; t=$(now); read_largest; r+=("$(since "$t")")
    t=$(now); read_largest; w+=("$(since "$t")")
    cold; t=$(now); "$mnt/$name/bin/rustc" --version >/dev/null; st+=("$(since "$t")"); b+=("$(fetched)")
  done
  T[$s,read_cold]=$(median3 "${r[@]}"); T[$s,read_warm]=$(median3 "${w[@]}")
  T[$s,start]=$(median3 "${st[@]}"); T[$s,bytes]=$(median3 "${b[@]}")
done
kill "$mounter"; wait "$mounter" 2>/dev/null || true; mounter=""
stop_server

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b/1048576}'; }
echo
echo "$name: $(mib "$nar_size") MiB of NAR; 5 largest files: $(mib "$largest_bytes") MiB; loopback, 2 cores"
echo
echo "| setting | cold read | ratio | warm read | ratio | \`rustc --version\` cold | ratio | bytes fetched |"
echo "|---|---|---|---|---|---|---|---|"
for s in plain verify tls tls+verify; do
  printf '| %s | %s s | %s | %s s | %s | %s s | %s | %s MiB |\n' "$s" \
    "${T[$s,read_cold]}" "$(ratio "${T[$s,read_cold]}" "${T[plain,read_cold]}")" \
    "${T[$s,read_warm]}" "$(ratio "${T[$s,read_warm]}" "${T[plain,read_warm]}")" \
    "${T[$s,start]}" "$(ratio "${T[$s,start]}" "${T[plain,start]}")" "$(mib "${T[$s,bytes]}")"
done
echo
echo "| push to an empty server | time | ratio |"
echo "|---|---|---|"
for s in plain tls+signed; do
  printf '| %s | %s s | %s |\n' "$s" "${P[$s]}" "$(ratio "${P[$s]}" "${P[plain]}")"
done
