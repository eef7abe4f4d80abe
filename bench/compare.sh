#!/usr/bin/env bash
# Runs one benchmark script on two lazix builds side by side, alternating
# (old, new, old, new, …) so both see the same machine: a refactor's "no
# speed lost" is then read off ratios against the peer measured in each
# run, and the spread between runs of one build is the machine's noise.
#
#   bash bench/compare.sh BENCH OLD_LAZIX NEW_LAZIX [ROUNDS]
#   e.g. bash bench/compare.sh bench/mount.sh /tmp/lazix-old target/release/lazix 2
#
# Each run's output goes to $COMPARE_OUT (default /var/tmp/lazix-compare)
# as <bench>-<round>-<old|new>.txt; the tables are printed as they come.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=$1; old=$(realpath "$2"); new=$(realpath "$3"); rounds=${4:-2}
out=${COMPARE_OUT:-/var/tmp/lazix-compare}
mkdir -p "$out"
name=$(basename "$bench" .sh)
for round in $(seq "$rounds"); do
  for which in old new; do
    bin=$old; [ "$which" = new ] && bin=$new
    log="$out/$name-$round-$which.txt"
    echo "== $name, round $round, $which ($bin)" >&2
    LAZIX_BIN=$bin bash "$bench" >"$log" 2>"$log.err" || {
      echo "$bench failed with $bin: see $log.err" >&2; exit 1; }
    cat "$log"
  done
done
