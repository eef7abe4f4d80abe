#!/usr/bin/env bash
# lazix as the machine's /nix/store: a small build on top of a large
# remote closure (the stable Rust toolchain as a store path: compile and
# link a hello world with its rustc), from a cold lazy store against
# substituting the closure first from the lazix HTTP shim, in one run.
#
#   lazy:       lazix store up --daemon (empty cache), lazix realise, nix-build
#   substitute: nix-store --realise from the shim (zstd NARs), nix-build
#
# Each run is in its own mount namespace with an empty scratch /nix (store
# and database), page cache dropped first; the machine's own store and
# database are untouched. Both reach the server through bench/delay-proxy.py,
# which counts the bytes it carries: on loopback (no delay, no cap) and at
# RTTS (default "10" ms round trip) with a MBIT (default 100) Mbit/s cap.
# Reported: seconds from nothing to the built output, MiB on the wire
# (server to client), median of 3 by time.
#
#   bash bench/store-overlay.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup
RTTS=${RTTS:-"10"}
MBIT=${MBIT:-100}
STABLE=${STABLE:-$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu}
bench_workdir store-overlay-bench

rust=$(nix store add-path --name rust-stable "$STABLE")
nar_mib=$(nix path-info --json "$rust" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)[0]["narSize"]/1048576))')
nix-store --generate-binary-cache-key bench-1 "$work/sk" "$work/pk"
pk=$(cat "$work/pk")
gport=$(free_port); hport=$(free_port)
"$LAZIX" serve --data "$work/data" --grpc "127.0.0.1:$gport" --http "127.0.0.1:$hport" \
  --nar-compression zstd --compact-after 0 2>"$work/serve.log" &
wait_port "$gport"; wait_port "$hport"
"$LAZIX" push --server "grpc://127.0.0.1:$gport" --signing-key "$work/sk" "$rust" 2>&1 | tail -1 >&2
"$LAZIX" compact --data "$work/data" >&2

cat >"$work/hello.rs" <<'EOF'
fn main() { println!("hello from a lazy toolchain"); }
EOF
cat >"$work/build.nix" <<EOF
derivation {
  name = "hello-on-lazy-rust";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "PATH=/usr/bin:/bin; mkdir \$out; \${builtins.storePath $rust}/bin/rustc -O -o \$out/hello ${work}/hello.rs && \$out/hello > \$out/said" ];
}
EOF

# proxy NAME TARGET_PORT RTT_MS -> $pport (its byte counts in $work/NAME.count)
proxy() {
  pport=$(free_port)
  python3 bench/delay-proxy.py "$pport" "$2" "$(awk -v r="$3" 'BEGIN {print r / 2}')" \
    "$([ "$3" = 0 ] && echo 0 || echo "$MBIT")" "$work/$1.count" &
  wait_port "$pport"
}
down_bytes() { awk '{print $2}' "$work/$1.count"; }

# The two ways, each run as root in a fresh namespace with a scratch /nix.
run_in_scratch() { # script -> exits with the script's status
  local s=$work/scratch
  rm -rf "$s"; mkdir -p "$s/store" "$s/var/nix"
  unshare -m --propagation private bash -c "mount --bind $s /nix && $1"
}
lazy_way() { # grpc port
  run_in_scratch "
    set -e
    $LAZIX store up --daemon --server grpc://127.0.0.1:$1 --cache-dir /nix/lazix-cache >/dev/null 2>&1
    trap '$LAZIX store down --lazy >/dev/null 2>&1' EXIT
    $LAZIX realise --server grpc://127.0.0.1:$1 --trusted-public-keys '$pk' $rust 2>/dev/null
    out=\$(nix-build $work/build.nix --no-out-link 2>/dev/null)
    test \"\$(cat \$out/said)\" = 'hello from a lazy toolchain'
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"fetched_bytes\"])' /nix/.lazix-store/lower/.lazix-stats > $work/lazy.fetched
  "
}
substitute_way() { # http port
  run_in_scratch "
    set -e
    export XDG_CACHE_HOME=/nix/xdg-cache
    nix-store --realise $rust --option substituters http://127.0.0.1:$1 --option trusted-public-keys '$pk' >/dev/null 2>&1
    out=\$(nix-build $work/build.nix --no-out-link 2>/dev/null)
    test \"\$(cat \$out/said)\" = 'hello from a lazy toolchain'
  "
}

# measure WAY RTT -> "seconds MiB" (median of 3 by time)
measure() {
  local way=$1 rtt=$2 runs=() t i
  for i in 1 2 3; do
    if [ "$way" = lazy ]; then proxy "lazy-$rtt-$i" "$gport" "$rtt"; else proxy "sub-$rtt-$i" "$hport" "$rtt"; fi
    local pp=$!
    sync; echo 3 >/proc/sys/vm/drop_caches
    t=$(now)
    "${way}_way" "$pport"
    local secs; secs=$(since "$t")
    kill "$pp"; wait "$pp" 2>/dev/null || true
    local name; name=$([ "$way" = lazy ] && echo "lazy-$rtt-$i" || echo "sub-$rtt-$i")
    runs+=("$secs $(awk -v b="$(down_bytes "$name")" 'BEGIN {printf "%.1f", b / 1048576}')")
  done
  printf '%s\n' "${runs[@]}" | sort -g | sed -n 2p
}

declare -A R
for rtt in 0 $RTTS; do
  for way in lazy substitute; do
    echo "measuring $way, rtt $rtt ms" >&2
    R["$rtt/$way"]=$(measure "$way" "$rtt")
  done
done

echo
echo "A hello world compiled with the Rust toolchain ($nar_mib MiB of NAR) from an empty /nix:"
echo "seconds to the built output / MiB on the wire, median of 3; ${MBIT} Mbit/s on the delayed links"
echo
echo "| link | lazy (store up + realise + build) | substitute from the shim + build | time ratio | bytes ratio |"
echo "|---|---|---|---|---|"
for rtt in 0 $RTTS; do
  read -r lt lb <<<"${R[$rtt/lazy]}"
  read -r st sb <<<"${R[$rtt/substitute]}"
  link=$([ "$rtt" = 0 ] && echo "loopback" || echo "rtt $rtt ms")
  echo "| $link | $lt s / $lb MiB | $st s / $sb MiB | $(awk -v a="$lt" -v b="$st" 'BEGIN {printf "%.2f", a / b}') | $(awk -v a="$lb" -v b="$sb" 'BEGIN {printf "%.3f", a / b}') |"
done
