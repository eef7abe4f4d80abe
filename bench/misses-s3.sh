#!/usr/bin/env bash
# What a chunk lookup that misses costs a server of a bucket of N synthetic
# paths (one pack each) on SeaweedFS: `lazix-bench misses` right after the
# write (the pack journal's two-minute window still holds the burst) and
# again past that window. Prints object requests per miss beside opening's.
#
#   N=10000 bash bench/misses-s3.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
work=$(mktemp -d /var/tmp/lz-s3miss.XXXXXX)
trap 'kill "${weed_pid:-}" 2>/dev/null; rm -rf "$work"' EXIT
start_weed
cargo build --release -q -p lazix-bench
SYNTH=$PWD/target/release/lazix-bench
N=${N:-10000}
/usr/bin/time -f 'synth %e s' "$SYNTH" synth --store "$BUCKET" --paths "$N" --file-size 256 --large-every 1000 2>&1 | tail -2
"$SYNTH" misses "$BUCKET"
sleep 125  # past the journal's two-minute window
"$SYNTH" misses "$BUCKET"
