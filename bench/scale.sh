#!/usr/bin/env bash
# How lazix's costs grow with the store: synthetic stores of SIZES paths
# (default "1000 10000 100000"; `lazix-bench synth`, 20 files of 2 KiB per
# path, a quarter shared, a 1 MiB file every 50 paths, references to
# earlier paths) on the folder backend, or on SeaweedFS with BACKEND=s3.
# Per size:
#   - synth: seconds to write the store through the store API;
#   - server start: seconds from `lazix serve` to its ports answering
#     (it reads the pack table snapshot synth stored at its end, as GC
#     would have);
#   - server peak: the serving process's peak resident memory (VmHWM)
#     after its start and the root listing below;
#   - narinfo: one path's narinfo over HTTP, median of 20 (ms);
#   - ls root: `ls` of the mount's root through a fresh mount (s), and the
#     object requests the server made for it (gets, and listings with the
#     objects they returned), from its lazix_store_object_* metrics;
#   - cold NAR: `lazix nar` of a fixed path from a fresh server (s);
#   - stats: `lazix stats --count` (counted now from the catalog and the
#     pack table), then `lazix stats` (answered from the count that stored)
#     and `lazix stats --scan` (every PathInfo read, every object listed), s;
#   - gc: `lazix gc --grace 0` after deleting 10% of the paths (s, peak
#     RSS from /usr/bin/time, object gets it printed).
#
#   bash bench/scale.sh                 # SIZES="1000 10000" for a quick run
#   BACKEND=s3 bash bench/scale.sh      # the same on SeaweedFS
#
# A store of 10^6 paths takes longer to write than a sitting may have:
# with KEEP=DIR (folder backend) the store of N paths is written in
# DIR/store-N in slabs of 100,000 paths and kept between runs; a later run
# goes on from the last whole slab (DIR/store-N.synthesized holds the
# count and the seconds spent), and SYNTH_ONLY=1 stops after writing. The
# measurements end with GC, so a measured store is removed.
#   KEEP=/var/tmp/lazix-scale SIZES=1000000 SYNTH_ONLY=1 nice bash bench/scale.sh
# SYNTH_FLAGS adds `lazix-bench synth` flags: the default shape takes about
# 75 KB a path on the folder (75 GB at 10^6); with
# SYNTH_FLAGS="--file-size 256 --large-every 1000" paths, directories and
# chunks per path stay as they are and the bytes shrink to about 30 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup
[ -x /usr/bin/time ] || apt-get install -y -q time >&2
cargo build --release --locked -p lazix-bench >&2
SYNTH=$PWD/target/release/lazix-bench
SIZES=${SIZES:-"1000 10000 100000"}
BACKEND=${BACKEND:-folder}
read -r -a synth_flags <<<"${SYNTH_FLAGS:-}"
bench_workdir scale-bench
mnt=$work/mnt; mkdir -p "$mnt"

# fresh_store N: a new empty store for size N; sets $loc (what synth
# takes) and $where (the store flags of lazix's commands).
fresh_store() {
  if [ "$BACKEND" = s3 ]; then
    [ -n "${weed_pid:-}" ] && { kill "$weed_pid"; wait "$weed_pid" 2>/dev/null || true; rm -rf "$work/weed"; }
    start_weed
    loc=$BUCKET; where=(--store "$BUCKET")
  elif [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP"; loc=$KEEP/store-$1; where=(--data "$loc")
  else
    loc=$work/store-$1; where=(--data "$loc")
  fi
}
# synth_store N: writes the store's N paths; sets $synth_s.
synth_store() {
  if [ -z "${KEEP:-}" ] || [ "$BACKEND" = s3 ]; then
    local t; t=$(now)
    "$SYNTH" synth --store "$loc" --paths "$1" "${synth_flags[@]}" >&2
    synth_s=$(since "$t")
    return
  fi
  local written=0 secs=0 slab t
  [ -f "$loc.synthesized" ] && read -r written secs <"$loc.synthesized"
  while [ "$written" -lt "$1" ]; do
    slab=$(( $1 - written < 100000 ? $1 - written : 100000 ))
    echo "synth: paths $written.. of $1 into $loc" >&2
    t=$(now)
    "$SYNTH" synth --store "$loc" --first "$written" --paths "$slab" "${synth_flags[@]}" >&2
    secs=$(awk -v a="$secs" -v b="$(since "$t")" 'BEGIN {printf "%.1f", a + b}')
    written=$((written + slab))
    echo "$written $secs" >"$loc.synthesized"
  done
  synth_s=$secs
}
serve_on() { # -> $spid $gport $hport $start_s (seconds until it listened)
  gport=$(free_port); hport=$(free_port)
  local t; t=$(now)
  "$LAZIX" serve "${where[@]}" --grpc "127.0.0.1:$gport" --http "127.0.0.1:$hport" \
    --compact-after 0 --stats-every 0 2>>"$work/serve.log" &
  spid=$!
  # Opening a large store (every pack index read) takes a while.
  for _ in $(seq 3000); do
    (echo >/dev/tcp/127.0.0.1/$hport) 2>/dev/null && break
    kill -0 "$spid" 2>/dev/null || { tail -20 "$work/serve.log" >&2; exit 1; }
    sleep 0.1
  done
  wait_port "$gport"; wait_port "$hport"
  start_s=$(since "$t")
}
stop_serve() { kill "$spid"; wait "$spid" 2>/dev/null || true; }
ms_median() { sort -g | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)] * 1000}'; }
# metric NAME: the server's value of lazix_NAME now.
metric() { curl -s "http://127.0.0.1:$hport/metrics" | awk -v m="lazix_$1" '$1 == m {printf "%d\n", $2}'; }

rows=()
for n in $SIZES; do
  fresh_store "$n"
  echo "synthesising $n paths ($BACKEND)" >&2
  synth_store "$n"
  [ -n "${SYNTH_ONLY:-}" ] && continue
  fixed=$("$SYNTH" synth-path 1 $((n / 2)))
  hash=$(basename "$fixed" | cut -c1-32)

  serve_on
  open_s=$start_s
  narinfo_ms=$(for _ in $(seq 20); do
    curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$hport/$hash.narinfo"
  done | ms_median)
  stop_serve

  # Root listing through a fresh mount, counting the server's object
  # requests.
  serve_on
  "$LAZIX" mount --server "grpc://127.0.0.1:$gport" "$mnt" 2>>"$work/mount.log" &
  mpid=$!
  wait_mount "$mnt"
  sleep 1
  g0=$(metric store_object_gets_total); l0=$(metric store_object_lists_total); o0=$(metric store_objects_listed_total)
  t=$(now)
  # A listing can fail (EIO: the server did not finish within the
  # mount's --timeout): reported as such.
  if ls "$mnt" >"$work/listing-$n.txt" 2>/dev/null; then
    listed="$(wc -l <"$work/listing-$n.txt") listed"
  else
    listed="EIO"
  fi
  ls_s=$(since "$t")
  gets=$(( $(metric store_object_gets_total) - g0 ))
  server_mib=$(awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$spid/status")
  lists="$(( $(metric store_object_lists_total) - l0 )) ($(( $(metric store_objects_listed_total) - o0 )) objects)"
  kill "$mpid"; wait "$mpid" 2>/dev/null || true
  stop_serve

  # A cold NAR of a fixed path from a fresh server.
  sync; echo 3 >/proc/sys/vm/drop_caches
  serve_on
  t=$(now)
  "$LAZIX" nar --server "grpc://127.0.0.1:$gport" "$fixed" >/dev/null
  nar_s=$(since "$t")
  stop_serve

  t=$(now)
  "$LAZIX" stats "${where[@]}" --count >/dev/null
  stats_s=$(since "$t")
  t=$(now)
  "$LAZIX" stats "${where[@]}" >/dev/null
  stored_s=$(since "$t")
  t=$(now)
  "$LAZIX" stats "${where[@]}" --scan >/dev/null
  scan_s=$(since "$t")

  # GC after deleting every tenth path.
  "$SYNTH" synth-path 1 0 10 "$n" >"$work/delete-$n.txt"
  xargs -a "$work/delete-$n.txt" -s 1500000 -n 25000 "$LAZIX" delete "${where[@]}" >/dev/null 2>&1
  t=$(now)
  /usr/bin/time -f '%M' -o "$work/gc-rss-$n.txt" "$LAZIX" gc "${where[@]}" --grace 0 >"$work/gc-$n.txt" 2>&1
  gc_s=$(since "$t")
  gc_mib=$(awk '{printf "%.0f", $1 / 1024}' "$work/gc-rss-$n.txt")
  gc_gets=$(sed -n 's/^object requests: \([0-9]*\) gets.*/\1/p' "$work/gc-$n.txt")
  if [ "$BACKEND" = s3 ]; then size_mib=$(du -sm "$work/weed" | cut -f1); else size_mib=$(du -sm "$loc" | cut -f1); fi

  rows+=("| $n | $synth_s | $size_mib | $open_s | $server_mib | $narinfo_ms | $ls_s ($listed) | $gets | $lists | $nar_s | $stats_s | $stored_s | $scan_s | $gc_s | $gc_mib | $gc_gets |")
  printf '%s\n' "${rows[-1]}" >&2
  [ "$BACKEND" = s3 ] || rm -rf "$loc" "$loc.synthesized"
done
[ -n "${SYNTH_ONLY:-}" ] && exit 0

echo
echo "Synthetic stores on the $BACKEND backend (20 files of 2 KiB per path, a 1 MiB file every 50 paths${SYNTH_FLAGS:+; synth flags $SYNTH_FLAGS}):"
echo
echo "| paths | synth s | store MiB | server start s | server peak MiB | narinfo ms (median of 20) | ls of the mount's root, s | object gets for that listing | listings (objects listed) | cold NAR s | stats --count s | stats s (stored count) | stats --scan s | gc s (10% deleted) | gc peak MiB | gc object gets |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
