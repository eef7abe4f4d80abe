#!/usr/bin/env bash
# What the batched lazix.v1 calls buy over snix's plain BlobService (one
# Stat or Read per chunk, 16 in flight: what a lazix client does against a
# snix daemon). One store, pushed once (/usr/share/doc and the stable Rust
# toolchain as store paths), served twice from the same folder: by
# `lazix serve` and by `lazix serve --snix-only`. Each reached directly
# (loopback) and through bench/delay-proxy.py (RTT_MS round trip, default
# 20). In one run, each workload cold (fresh mount cache):
#   render doc   `lazix nar` of the /usr/share/doc path (many small files)
#   render rust  `lazix nar` of the toolchain path (large files)
#   mount doc    `cat` of the first 200 files of the doc path via `lazix mount`
#   mount rustc  `rustc --version` from `lazix mount` of the toolchain
# Each the median of 3. Ratio: snix-only / lazix.v1 (time).
#
#   bash bench/snix-path.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup
RTT_MS=${RTT_MS:-20}
STABLE=${STABLE:-$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu}
bench_workdir snix-path-bench
one_way=$(awk -v r="$RTT_MS" 'BEGIN {print r / 2}')
mnt=$work/mnt; mkdir -p "$mnt"

doc=$(nix store add-path --name share-doc /usr/share/doc)
rust=$(nix store add-path --name rust-stable "$STABLE")
(cd "$doc" && find . -type f | sort >"$work/all-files")
head -n 200 "$work/all-files" >"$work/files"

# One store, two servers on it.
lport=$(free_port); sport=$(free_port)
"$LAZIX" serve --data "$work/data" --grpc "127.0.0.1:$lport" --compact-after 0 2>"$work/serve.log" &
wait_port "$lport"
"$LAZIX" push --server "grpc://127.0.0.1:$lport" "$doc" "$rust" 2>&1 | tail -1 >&2
"$LAZIX" compact --data "$work/data" >&2
"$LAZIX" serve --data "$work/data" --grpc "127.0.0.1:$sport" --compact-after 0 --snix-only 2>"$work/serve-snix.log" &
wait_port "$sport"
# The slow links in front of each.
ldport=$(free_port); sdport=$(free_port)
python3 bench/delay-proxy.py "$ldport" "$lport" "$one_way" & wait_port "$ldport"
python3 bench/delay-proxy.py "$sdport" "$sport" "$one_way" & wait_port "$sdport"

median() { sort -g | sed -n 2p; }
render() { # server path
  local t; t=$(now)
  "$LAZIX" nar --server "$1" "$2" | sha256sum >"$work/nar.sum"
  echo "$(since "$t")"
}
mount_run() { # server command...
  local server=$1 pid t; shift
  "$LAZIX" mount --server "$server" --cache-dir "$work/cache-$RANDOM" "$mnt" 2>>"$work/mount.log" &
  pid=$!
  wait_mount "$mnt"
  t=$(now)
  "$@" >/dev/null
  echo "$(since "$t")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
cat_doc() { (cd "$mnt/$(basename "$doc")" && xargs -d '\n' cat <"$work/files"); }
rustc_version() { "$mnt/$(basename "$rust")/bin/rustc" --version; }

declare -A T
for link in loopback "rtt ${RTT_MS} ms"; do
  for api in lazix.v1 snix-only; do
    case "$link/$api" in
      loopback/lazix.v1) s=grpc://127.0.0.1:$lport ;;
      loopback/snix-only) s=grpc://127.0.0.1:$sport ;;
      */lazix.v1) s=grpc://127.0.0.1:$ldport ;;
      *) s=grpc://127.0.0.1:$sdport ;;
    esac
    echo "measuring $link, $api" >&2
    T["$link/$api/render doc"]=$(for _ in 1 2 3; do render "$s" "$doc"; done | median)
    T["$link/$api/render rust"]=$(for _ in 1 2 3; do render "$s" "$rust"; done | median)
    T["$link/$api/mount doc"]=$(for _ in 1 2 3; do mount_run "$s" cat_doc; done | median)
    T["$link/$api/mount rustc"]=$(for _ in 1 2 3; do mount_run "$s" rustc_version; done | median)
  done
done

doc_mib=$(nix path-info --json "$doc" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)[0]["narSize"]/1048576))')
rust_mib=$(nix path-info --json "$rust" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)[0]["narSize"]/1048576))')
echo
echo "doc: $doc_mib MiB of NAR, rust: $rust_mib MiB; seconds, median of 3, cold"
echo
echo "| link | workload | lazix.v1 | snix-only | snix-only / lazix.v1 |"
echo "|---|---|---|---|---|"
for link in loopback "rtt ${RTT_MS} ms"; do
  for w in "render doc" "render rust" "mount doc" "mount rustc"; do
    awk -v l="$link" -v w="$w" -v a="${T[$link/lazix.v1/$w]}" -v b="${T[$link/snix-only/$w]}" \
      'BEGIN {printf "| %s | %s | %.2f | %.2f | %.2f |\n", l, w, a, b, b / a}'
  done
done
