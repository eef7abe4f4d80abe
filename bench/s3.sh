#!/usr/bin/env bash
# The S3 backend beside the embedded store, in one run: push throughput
# (`lazix push` over gRPC), serving throughput (every NAR over HTTP, 16
# connections, first with the server's caches empty, then warm), and how
# serving grows from one to two replicas on one bucket behind a round-robin
# of clients (each replica gets every other NAR). S3 is a real SeaweedFS
# (`weed mini`) on loopback with credentials.
#
#   bash bench/s3.sh
#
# The trees: every folder of /usr/share as a store path plus the stable
# Rust toolchain (as in bench/http.sh). Everything runs on one machine
# (2 cores here): SeaweedFS, the replicas and curl share them.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup --peers
STABLE=${STABLE:-$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu}

work=$(mktemp -d /var/tmp/lazix-s3-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

add_share_and_stable "$work/paths"

start_weed
pids+=("$weed_pid")

# serve STORE_ARGS... ; sets srv_pid, srv_grpc, srv_http
serve() {
  srv_grpc=$(free_port); srv_http=$(free_port)
  "$LAZIX" serve "$@" --compact-after 0 --grpc "127.0.0.1:$srv_grpc" --http "127.0.0.1:$srv_http" \
    2>>"$work/serve.log" &
  srv_pid=$!
  pids+=($srv_pid)
  wait_port "$srv_grpc"; wait_port "$srv_http"
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

# push STORE_ARGS... ; sets secs
push() {
  serve "$@"
  local t0; t0=$(now)
  "$LAZIX" push --server "grpc://127.0.0.1:$srv_grpc" "${paths[@]}" 2>&1 | tail -1 >&2
  secs=$(since "$t0")
  stop "$srv_pid"
}

# nar_list BASE_URL FILE: a curl config downloading every NAR.
nar_list() {
  : >"$2"
  while read -r p; do
    h=$(basename "$p" | cut -c1-32)
    url=$(curl -sf "$1/$h.narinfo" | sed -n 's/^URL: //p')
    printf 'url = "%s/%s"\noutput = /dev/null\n' "$1" "$url" >>"$2"
  done <"$work/paths"
}
# CPU seconds (user + system) a process has used so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / t}' "/proc/$1/stat"; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a - b}'; }
timed() { local t0; t0=$(now); "$@" >/dev/null; since "$t0"; }
fetch_all() { curl -sf --no-progress-meter -K "$1" --parallel --parallel-max "$2"; }

# serve_rounds STORE_ARGS... ; sets cold and warm: seconds to fetch every
# NAR over 16 connections from a fresh server (no chunk cached; the URL
# list is made first, from narinfos only), then warm (median of 3).
serve_rounds() {
  serve "$@"
  nar_list "http://127.0.0.1:$srv_http" "$work/nars"
  local a b c w0 s0 t0
  w0=$(cpu "$weed_pid"); s0=$(cpu "$srv_pid"); t0=$(now)
  cold=$(timed fetch_all "$work/nars" 16)
  a=$(timed fetch_all "$work/nars" 16); b=$(timed fetch_all "$work/nars" 16); c=$(timed fetch_all "$work/nars" 16)
  warm=$(median3 "$a" "$b" "$c")
  cpu_note="4 passes in $(since "$t0") s: lazix $(minus "$(cpu "$srv_pid")" "$s0") CPU s, SeaweedFS $(minus "$(cpu "$weed_pid")" "$w0") CPU s"
  stop "$srv_pid"
}

# Two replicas on the bucket; clients alternate between them.
two_replicas() {
  serve --store "$BUCKET"; local a_pid=$srv_pid a_http=$srv_http
  serve --store "$BUCKET"; local b_pid=$srv_pid b_http=$srv_http
  nar_list "http://127.0.0.1:$a_http" "$work/a.all"
  sed "s#127.0.0.1:$a_http#127.0.0.1:$b_http#" "$work/a.all" >"$work/b.all"
  # Every other NAR to each replica (two config lines per NAR).
  awk 'NR % 4 == 1 || NR % 4 == 2' "$work/a.all" >"$work/a.half"
  awk 'NR % 4 == 3 || NR % 4 == 0' "$work/b.all" >"$work/b.half"
  both() { fetch_all "$work/a.half" 8 & local p=$!; fetch_all "$work/b.half" 8; wait $p; }
  local a b c w0 s0 t0
  w0=$(cpu "$weed_pid"); s0=$(awk -v a="$(cpu "$a_pid")" -v b="$(cpu "$b_pid")" 'BEGIN {print a + b}'); t0=$(now)
  cold=$(timed both)
  a=$(timed both); b=$(timed both); c=$(timed both)
  warm=$(median3 "$a" "$b" "$c")
  local s1; s1=$(awk -v a="$(cpu "$a_pid")" -v b="$(cpu "$b_pid")" 'BEGIN {print a + b}')
  cpu_note="4 passes in $(since "$t0") s: lazix $(minus "$s1" "$s0") CPU s, SeaweedFS $(minus "$(cpu "$weed_pid")" "$w0") CPU s"
  stop "$a_pid"; stop "$b_pid"
}

echo "push to the embedded store" >&2
push --data "$work/local"; push_local=$secs
echo "push to S3" >&2
push --store "$BUCKET"; push_s3=$secs
echo "serve from the embedded store" >&2
serve_rounds --data "$work/local"; local_cold=$cold local_warm=$warm local_cpu=$cpu_note
echo "serve from S3, one replica" >&2
serve_rounds --store "$BUCKET"; s3_cold=$cold s3_warm=$warm s3_cpu=$cpu_note
echo "serve from S3, two replicas" >&2
two_replicas; two_cold=$cold two_warm=$warm two_cpu=$cpu_note
"$LAZIX" stats --store "$BUCKET" >&2
stored=$("$LAZIX" stats --store "$BUCKET" --json --scan | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["stored_bytes"], s["objects"])')

mibs() { awk -v b="$nar_bytes" -v t="$1" 'BEGIN {printf "%.0f", b/1048576/t}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
echo
echo "${#paths[@]} paths, $((nar_bytes / 1048576)) MiB of NAR; bucket: $((${stored% *} / 1048576)) MiB in ${stored#* } objects; loopback, 2 cores, SeaweedFS on the same disk"
echo
echo "| measure | embedded folder | S3, 1 replica | S3/embedded | S3, 2 replicas | 2 / 1 replica |"
echo "|---|---|---|---|---|---|"
printf '| push (lazix push, gRPC) | %.1f s (%s MiB/s) | %.1f s (%s MiB/s) | %s | | |\n' \
  "$push_local" "$(mibs "$push_local")" "$push_s3" "$(mibs "$push_s3")" "$(ratio "$(mibs "$push_s3")" "$(mibs "$push_local")")"
printf '| serve every NAR, caches empty | %.1f s (%s MiB/s) | %.1f s (%s MiB/s) | %s | %.1f s (%s MiB/s) | %s |\n' \
  "$local_cold" "$(mibs "$local_cold")" "$s3_cold" "$(mibs "$s3_cold")" "$(ratio "$(mibs "$s3_cold")" "$(mibs "$local_cold")")" \
  "$two_cold" "$(mibs "$two_cold")" "$(ratio "$(mibs "$two_cold")" "$(mibs "$s3_cold")")"
printf '| serve every NAR, warm (median of 3) | %.1f s (%s MiB/s) | %.1f s (%s MiB/s) | %s | %.1f s (%s MiB/s) | %s |\n' \
  "$local_warm" "$(mibs "$local_warm")" "$s3_warm" "$(mibs "$s3_warm")" "$(ratio "$(mibs "$s3_warm")" "$(mibs "$local_warm")")" \
  "$two_warm" "$(mibs "$two_warm")" "$(ratio "$(mibs "$two_warm")" "$(mibs "$s3_warm")")"
echo
echo "CPU while serving (2 cores = 2 CPU s per second):"
echo "- embedded: $local_cpu"
echo "- S3, 1 replica: $s3_cpu"
echo "- S3, 2 replicas: $two_cpu"
