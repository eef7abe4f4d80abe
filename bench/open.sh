#!/usr/bin/env bash
# What opening a store costs a server: `lazix serve` on STORE (a data
# folder) until its HTTP port answers, then the seconds it took, the CPU
# seconds it spent, its peak memory (VmHWM) and its memory once open
# (VmRSS). BINS lists the builds to alternate (default: this tree's
# release build), ROUNDS how many times (default 2), so that two builds
# are compared in one sitting.
#
#   bash bench/open.sh /var/tmp/lazix-scale/store-100000
#   BINS="/tmp/lazix-before target/release/lazix" bash bench/open.sh STORE
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:?usage: bench/open.sh STORE}
if [ -z "${BINS:-}" ]; then
  cargo build --release --locked --bin lazix >&2
  BINS=$PWD/target/release/lazix
fi
read -r -a bins <<<"$BINS"
port=$((47000 + RANDOM % 1000))
ticks=$(getconf CLK_TCK)
echo "| build | round | start s | CPU s | VmHWM MiB | VmRSS MiB |"
echo "|---|---|---|---|---|---|"
for round in $(seq "${ROUNDS:-2}"); do
  for bin in "${bins[@]}"; do
    t0=$(date +%s.%N)
    "$bin" serve --data "$store" --grpc "127.0.0.1:$((port + 1))" --http "127.0.0.1:$port" \
      --compact-after 0 --stats-every 0 2>/dev/null &
    pid=$!
    until curl -s -o /dev/null "http://127.0.0.1:$port/nix-cache-info"; do
      kill -0 "$pid" 2>/dev/null || { echo "$bin did not start" >&2; exit 1; }
      sleep 0.05
    done
    t1=$(date +%s.%N)
    read -r -a st <"/proc/$pid/stat"
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    printf '| %s | %s | %.2f | %.2f | %d | %d |\n' "$bin" "$round" "$(echo "$t1 - $t0" | bc)" \
      "$(echo "(${st[13]} + ${st[14]}) / $ticks" | bc -l)" $((hwm / 1024)) $((rss / 1024))
  done
done
