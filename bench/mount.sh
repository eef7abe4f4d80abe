#!/usr/bin/env bash
# Mount benchmark: a Rust toolchain pushed as a store path, read through
# `lazix mount` (server on loopback) beside the native folder and
# `squashfuse` of a zstd squashfs image of the same tree, in one run:
# - sequential read of the 5 largest files, cold (page cache dropped, empty
#   lazix cache) and warm (after the cold ones); each the median of 3 runs;
# - a metadata walk (find + stat of every file), cold and warm, the same;
# - running `rustc --version` from the cold mount: time and bytes fetched,
#   against fetching the whole path first (`nix copy` from lazix's cache).
#
#   bash bench/mount.sh        (root: drops the page cache between runs)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup --peers
STABLE=${STABLE:-$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu}

bench_workdir mount-bench
mnt_l=$work/mnt-lazix; mnt_s=$work/mnt-squash
mkdir -p "$mnt_l" "$mnt_s"
server=""; mounter=""
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

path=$(nix store add-path --name rust-stable "$STABLE")
name=$(basename "$path")
nar_size=$(nix path-info --json "$path" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["narSize"])')

nix-store --generate-binary-cache-key bench "$work/sk" "$work/pk"
gport=$(free_port); hport=$(free_port)
start_server() {
  "$LAZIX" serve --data "$work/data" --grpc "127.0.0.1:$gport" --http "127.0.0.1:$hport" \
    --signing-key "$work/sk" 2>>"$work/serve.log" &
  server=$!
  wait_port "$gport"; wait_port "$hport"
}
start_server
"$LAZIX" push --server "grpc://127.0.0.1:$gport" "$path" 2>&1 | tail -1 >&2
# What `lazix serve` does in the background once uploads are quiet.
"$LAZIX" compact --data "$work/data" >&2

mksquashfs "$path" "$work/img" -comp zstd -quiet -no-progress >/dev/null
start_lazix_mount() { # cache dir
  "$LAZIX" mount --server "grpc://127.0.0.1:$gport" --cache-dir "$1" "$mnt_l" 2>>"$work/mount.log" &
  mounter=$!
  wait_mount "$mnt_l"
}
stop_lazix_mount() { kill "$mounter"; wait "$mounter" 2>/dev/null || true; mounter=""; }

# The 5 largest files, as paths relative to the store path.
largest=$(cd "$path" && find . -type f -printf '%s %p\n' | sort -rn | awk 'NR<=5 {sub(/^[0-9]+ /, ""); print}')
largest_bytes=$(cd "$path" && find . -type f -printf '%s\n' | sort -rn | awk 'NR<=5 {s+=$1} END {print s}')
read_largest() { (cd "$1" && for f in $largest; do cat "$f" >/dev/null; done); }
walk() { find "$1" -printf '%s %m %y\n' >/dev/null; }

declare -A T
# Median of three timed runs of a command.
median3_of() { local a b c t; for v in a b c; do t=$(now); "$@"; printf -v "$v" '%s' "$(since "$t")"; done; printf '%s\n' "$a" "$b" "$c" | sort -g | sed -n 2p; }
# Median of three timed runs of a command, each after a preparing command
# (which makes it cold) that is not timed; into the variable named first.
# Not in a subshell: the preparing command restarts processes.
median3_after() { local out=$1 prep=$2 a b c t; shift 2; for v in a b c; do eval "$prep"; t=$(now); "$@"; printf -v "$v" '%s' "$(since "$t")"; done; printf -v "$out" '%s' "$(printf '%s\n' "$a" "$b" "$c" | sort -g | sed -n 2p)"; }
measure() { # label dir-of-the-tree prepare-cold-cmd
  local label=$1 dir=$2 cold=$3
  median3_after "T[$label,read_cold]" "$cold" read_largest "$dir"
  T[$label,read_warm]=$(median3_of read_largest "$dir")
  median3_after "T[$label,walk_cold]" "$cold" walk "$dir"
  T[$label,walk_warm]=$(median3_of walk "$dir")
}

measure native "$path" "drop_caches"
squash_cold() { fusermount3 -u -z "$mnt_s" 2>/dev/null || true; drop_caches; squashfuse "$work/img" "$mnt_s"; wait_mount "$mnt_s"; }
measure squashfuse "$mnt_s" "squash_cold"
lazix_cold() {
  [ -n "$mounter" ] && stop_lazix_mount
  kill "$server"; wait "$server" 2>/dev/null || true; start_server
  # A new, empty cache folder each time (deleting one just before would make
  # ext4 hunt for inodes that were not recently freed, which skews timings).
  cache_n=$((${cache_n:-0} + 1)); drop_caches; start_lazix_mount "$work/cache-$cache_n"
}
measure lazix "$mnt_l/$name" "lazix_cold"

fetched() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fetched_bytes"])' "$mnt_l/.lazix-stats"; }

# Program start from a cold mount.
lazix_cold
t=$(now); "$mnt_l/$name/bin/rustc" --version >/dev/null; start_time=$(since "$t")
start_bytes=$(fetched)
stop_lazix_mount

# The same with the lazix of before packs (one file per chunk), if given:
# LAZIX_BEFORE=/path/to/old/lazix bash bench/mount.sh
if [ -n "${LAZIX_BEFORE:-}" ]; then
  bport=$(free_port)
  "$LAZIX_BEFORE" serve --data "$work/data-before" --grpc "127.0.0.1:$bport" 2>>"$work/serve-before.log" &
  before_server=$!
  wait_port "$bport"
  "$LAZIX_BEFORE" push --server "grpc://127.0.0.1:$bport" "$path" 2>&1 | tail -1 >&2
  drop_caches
  "$LAZIX_BEFORE" mount --server "grpc://127.0.0.1:$bport" --cache-dir "$work/cache-before" "$mnt_l" 2>>"$work/mount.log" &
  mounter=$!
  wait_mount "$mnt_l"
  t=$(now); "$mnt_l/$name/bin/rustc" --version >/dev/null; before_time=$(since "$t")
  before_bytes=$(fetched)
  stop_lazix_mount
  kill "$before_server"; wait "$before_server" 2>/dev/null || true
fi
# Fetching the whole path first, as a substituter would.
drop_caches
t=$(now)
XDG_CACHE_HOME=$work/xdg nix --store "$work/client" copy --from "http://127.0.0.1:$hport" \
  --option trusted-public-keys "$(cat "$work/pk")" "$path" 2>/dev/null
copy_time=$(since "$t")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b/1048576}'; }
echo
echo "$name: $(mib "$nar_size") MiB of NAR; 5 largest files: $(mib "$largest_bytes") MiB; loopback, 2 cores"
echo
echo "| measure | native | squashfuse (zstd image) | lazix mount | lazix/native | lazix/squashfuse |"
echo "|---|---|---|---|---|---|"
for m in read_cold read_warm walk_cold walk_warm; do
  printf '| %s | %s s | %s s | %s s | %s | %s |\n' "$m" "${T[native,$m]}" "${T[squashfuse,$m]}" "${T[lazix,$m]}" \
    "$(ratio "${T[lazix,$m]}" "${T[native,$m]}")" "$(ratio "${T[lazix,$m]}" "${T[squashfuse,$m]}")"
done
echo
echo "| cold program start | time | bytes fetched |"
echo "|---|---|---|"
printf '| `rustc --version` from the cold lazix mount | %s s | %s MiB (%s%% of the path) |\n' \
  "$start_time" "$(mib "$start_bytes")" "$(awk -v a="$start_bytes" -v b="$nar_size" 'BEGIN {printf "%.1f", 100*a/b}')"
if [ -n "${LAZIX_BEFORE:-}" ]; then
  printf '| the same, lazix before packs (%s) | %s s | %s MiB (%s%% of the path) |\n' \
    "$("$LAZIX_BEFORE" --version 2>/dev/null || echo old)" "$before_time" "$(mib "$before_bytes")" \
    "$(awk -v a="$before_bytes" -v b="$nar_size" 'BEGIN {printf "%.1f", 100*a/b}')"
fi
printf '| `nix copy` of the whole path first | %s s | %s MiB (100%%) |\n' "$copy_time" "$(mib "$nar_size")"

