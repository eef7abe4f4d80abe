#!/usr/bin/env bash
# Runs every fuzz target (cargo fuzz, libFuzzer, nightly Rust) for SECONDS
# each (default 300), JOBS at a time (default 1), after seeding each corpus
# with inputs built by lazix's own encoders (fuzz/src/seeds.rs). Crashes
# land in fuzz/artifacts/<target>/; each one found becomes a regression
# test. Prints one line per target: executions, corpus size, crashes.
# Long-running: not part of CI.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH="${1:-300}"
JOBS="${JOBS:-1}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
TARGETS=(nar_reader narinfo directory pathinfo frame range)
cargo +nightly fuzz build -O
cargo +nightly run --release --bin seeds -- corpus >/dev/null
mkdir -p logs

run_one() {
  local t="$1" status=0
  mkdir -p "corpus/$t" "artifacts/$t"
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -max_len=1048576 \
    -print_final_stats=1 >"logs/$t.log" 2>&1 || status=$?
  local execs crashes
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' || echo 0)
  crashes=$(find "artifacts/$t" -type f | wc -l)
  echo "$t: ${execs} executions in ${SECONDS_EACH} s, $(find "corpus/$t" -type f | wc -l) corpus inputs, ${crashes} crash files, exit ${status}"
}
export -f run_one
export SECONDS_EACH
printf '%s\n' "${TARGETS[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_one {}'
