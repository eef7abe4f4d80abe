#!/usr/bin/env bash
# A second version after the first, through the lazix mount: with Rust
# stable read entirely, reading all of nightly fetches only what nightly
# does not share with stable (identical chunks, and frames stored as deltas
# of stable's). Printed beside the size of nightly's zstd NAR, which is what
# a classic binary cache client downloads.
#
#   bash bench/mount-versions.sh    (as root: mounts FUSE)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup --peers
STABLE=${STABLE:-$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu}
NIGHTLY=${NIGHTLY:-$HOME/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu}

bench_workdir versions-bench
mnt=$work/mnt
mkdir -p "$mnt"
server=""; mounter=""

spath=$(nix store add-path --name rust-stable "$STABLE")
npath=$(nix store add-path --name rust-nightly "$NIGHTLY")
port=$(free_port)
"$LAZIX" serve --data "$work/data" --grpc "127.0.0.1:$port" --compact-after 0 2>>"$work/serve.log" &
server=$!
wait_port "$port"
"$LAZIX" push --server "grpc://127.0.0.1:$port" "$spath" "$npath" 2>&1 | tail -1 >&2
"$LAZIX" compact --data "$work/data" >&2

"$LAZIX" mount --server "grpc://127.0.0.1:$port" --cache-dir "$work/cache" "$mnt" 2>>"$work/mount.log" &
mounter=$!
for _ in $(seq 200); do mountpoint -q "$mnt" && break; sleep 0.05; done
fetched() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fetched_bytes"])' "$mnt/.lazix-stats"; }
read_all() { tar -cf - -C "$1" . | cat >/dev/null; }  # tar skips reading when writing to /dev/null itself

read_all "$mnt/$(basename "$spath")"
after_stable=$(fetched)
read_all "$mnt/$(basename "$npath")"
nightly_bytes=$(( $(fetched) - after_stable ))
kill "$mounter"; wait "$mounter" 2>/dev/null || true; mounter=""

stable_zst=$(nix-store --dump "$spath" | zstd -3 -T1 -c | wc -c)
nightly_zst=$(nix-store --dump "$npath" | zstd -3 -T1 -c | wc -c)
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b/1048576}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
echo "| reading through a cold lazix mount | lazix fetched | as one zstd-3 NAR | ratio |"
echo "|---|---|---|---|"
printf '| all of stable | %s MiB | %s MiB | %s |\n' "$(mib "$after_stable")" "$(mib "$stable_zst")" "$(ratio "$after_stable" "$stable_zst")"
printf '| then all of nightly | %s MiB | %s MiB | %s |\n' "$(mib "$nightly_bytes")" "$(mib "$nightly_zst")" "$(ratio "$nightly_bytes" "$nightly_zst")"
