#!/usr/bin/env bash
# How lazix's costs grow with the store: synthetic stores of SIZES paths
# (default "1000 10000 100000"; `lazix-bench synth`, 20 files of 2 KiB per
# path, a quarter shared, a 1 MiB file every 50 paths, references to
# earlier paths) on the folder backend. Per size:
#   - synth: seconds to write the store through the store API;
#   - narinfo: one path's narinfo over HTTP, median of 20 (ms);
#   - ls root: `ls` of the mount's root, a fresh mount (s), and how many
#     PathInfo objects the server opened for it (strace of its openat);
#   - cold NAR: `lazix nar` of a fixed path from a fresh server (s);
#   - stats: `lazix stats` (s);
#   - gc: `lazix gc --grace 0` after deleting 10% of the paths (s, peak
#     RSS from /usr/bin/time).
#
#   bash bench/scale.sh            # SIZES="1000 10000" for a quick run
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup
command -v strace >/dev/null || apt-get install -y -q strace >&2
[ -x /usr/bin/time ] || apt-get install -y -q time >&2
cargo build --release --locked -p lazix-bench >&2
SYNTH=$PWD/target/release/lazix-bench
SIZES=${SIZES:-"1000 10000 100000"}
bench_workdir scale-bench
mnt=$work/mnt; mkdir -p "$mnt"

serve_on() { # store -> $spid $gport $hport
  gport=$(free_port); hport=$(free_port)
  "$LAZIX" serve --data "$1" --grpc "127.0.0.1:$gport" --http "127.0.0.1:$hport" \
    --compact-after 0 --stats-every 0 2>>"$work/serve.log" &
  spid=$!
  wait_port "$gport"; wait_port "$hport"
}
stop_serve() { kill "$spid"; wait "$spid" 2>/dev/null || true; }
ms_median() { sort -g | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)] * 1000}'; }

rows=()
for n in $SIZES; do
  store=$work/store-$n
  echo "synthesising $n paths" >&2
  t=$(now)
  "$SYNTH" synth --store "$store" --paths "$n" >&2
  synth_s=$(since "$t")
  fixed=$("$SYNTH" synth-path 1 $((n / 2)))
  hash=$(basename "$fixed" | cut -c1-32)

  serve_on "$store"
  narinfo_ms=$(for _ in $(seq 20); do
    curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$hport/$hash.narinfo"
  done | ms_median)
  stop_serve

  # Root listing through a fresh mount, counting PathInfo opens.
  serve_on "$store"
  "$LAZIX" mount --server "grpc://127.0.0.1:$gport" "$mnt" 2>>"$work/mount.log" &
  mpid=$!
  wait_mount "$mnt"
  strace -f -qq -e trace=openat -o "$work/strace-$n.txt" -p "$spid" &
  strace_pid=$!
  sleep 1
  t=$(now)
  # A listing can fail (EIO: the server did not finish within the
  # mount's --timeout): reported as such.
  if ls "$mnt" >"$work/listing-$n.txt" 2>/dev/null; then
    listed="$(wc -l <"$work/listing-$n.txt") listed"
  else
    listed="EIO"
  fi
  ls_s=$(since "$t")
  kill "$strace_pid"; wait "$strace_pid" 2>/dev/null || true
  reads=$(grep -c '/pathinfo/' "$work/strace-$n.txt" || true)
  kill "$mpid"; wait "$mpid" 2>/dev/null || true
  stop_serve

  # A cold NAR of a fixed path from a fresh server.
  sync; echo 3 >/proc/sys/vm/drop_caches
  serve_on "$store"
  t=$(now)
  "$LAZIX" nar --server "grpc://127.0.0.1:$gport" "$fixed" >/dev/null
  nar_s=$(since "$t")
  stop_serve

  t=$(now)
  "$LAZIX" stats --data "$store" >/dev/null
  stats_s=$(since "$t")

  # GC after deleting every tenth path.
  for i in $(seq 0 10 $((n - 1))); do "$SYNTH" synth-path 1 "$i"; done >"$work/delete-$n.txt"
  xargs -a "$work/delete-$n.txt" -n 5000 "$LAZIX" delete --data "$store" >/dev/null 2>&1
  t=$(now)
  /usr/bin/time -f '%M' -o "$work/gc-rss-$n.txt" "$LAZIX" gc --data "$store" --grace 0 >/dev/null 2>&1
  gc_s=$(since "$t")
  gc_mib=$(awk '{printf "%.0f", $1 / 1024}' "$work/gc-rss-$n.txt")
  du_mib=$(du -sm "$store" | cut -f1)

  rows+=("| $n | $synth_s | $du_mib | $narinfo_ms | $ls_s ($listed) | $reads | $nar_s | $stats_s | $gc_s | $gc_mib |")
  printf '%s\n' "${rows[-1]}" >&2
  rm -rf "$store"
done

echo
echo "Synthetic stores on the folder backend (20 files of 2 KiB per path, a 1 MiB file every 50 paths):"
echo
echo "| paths | synth s | store MiB | narinfo ms (median of 20) | ls of the mount's root, s | PathInfo objects read by that listing | cold NAR s | stats s | gc s (10% deleted) | gc peak MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
