#!/usr/bin/env bash
# lazix and snix, both directions, with snix's own binaries; every NAR is
# compared with the local Nix's `nix-store --dump` of the same path.
#
#   snix clients on a lazix server:
#     lazix push     -> snix-store mount, nar-bridge (NAR and Deriver line)
#     snix-store copy / import -> lazix nar, lazix mount
#   lazix clients on a snix daemon (objectstore + redb, as snix installs it):
#     lazix push     -> lazix nar, lazix mount, snix-store mount
#
# Fetches nothing: SNIX_BIN names a folder with `snix-store` (built with
# its `fuse` feature) and `nar-bridge` (see docs/protocol.md, "snix interop",
# for building them offline). Not part of CI; its latest table is in
# docs/protocol.md.
#
#   SNIX_BIN=/path/to/snix/target/debug bash scripts/interop-snix.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SNIX_BIN:?set SNIX_BIN to a folder holding snix-store and nar-bridge}"
for b in snix-store nar-bridge; do
  [ -x "$SNIX_BIN/$b" ] || { echo "no $SNIX_BIN/$b" >&2; exit 1; }
done
source bench/lib.sh
bench_setup
export OTLP=false RUST_LOG=${RUST_LOG:-warn}
bench_workdir interop-snix

# The paths: a closure with references and derivers (built here), a tree
# with every NAR feature and a multi-chunk file, and a real folder of many
# small files.
salt=$(date +%s%N)
tree=$work/interop-features-src
mkdir -p "$tree/bin" "$tree/empty-dir" "$tree/deep/a/b"
cp /bin/echo "$tree/bin/echo"
: >"$tree/empty"
echo deep >"$tree/deep/a/b/f.txt"
echo unicode >"$tree/name with spaces ✓"
head -c 6000000 /dev/urandom >"$tree/big.bin"
ln -s bin/echo "$tree/rel-link"
ln -s /nonexistent/target "$tree/dangling"
features=$(nix store add-path --name "interop-features-$salt" "$tree")
top=$(nix-build --no-out-link -E "
let mk = name: script: derivation { inherit name; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" script ]; };
  lib = mk \"interop-$salt-lib\" \"/bin/mkdir -p \$out/lib; /bin/echo $salt > \$out/lib/data; /bin/head -c 400000 /dev/urandom > \$out/lib/blob\";
  tool = mk \"interop-$salt-tool\" \"/bin/mkdir -p \$out/bin; /bin/echo 'cat \${lib}/lib/data' > \$out/bin/tool; /bin/chmod 755 \$out/bin/tool\";
in mk \"interop-$salt-top\" \"/bin/mkdir \$out; /bin/echo \${tool} \${lib} > \$out/refs\"")
docs=$(nix store add-path --name "interop-docs-$salt" /usr/share/doc)
mapfile -t paths < <(nix-store -qR "$top"; echo "$features"; echo "$docs")
echo "${#paths[@]} paths" >&2
declare -A want
for p in "${paths[@]}"; do want[$p]=$(nix-store --dump "$p" | sha256sum | cut -d' ' -f1); done

results=()
# record DIRECTION WRITER READER: compares the NAR files $out/<basename>
# with the wanted hashes and adds a row.
record() {
  local same=0 total=0 p got
  for p in "${paths[@]}"; do
    total=$((total + 1))
    got=$(sha256sum <"$out/$(basename "$p")" 2>/dev/null | cut -d' ' -f1 || true)
    if [ "$got" = "${want[$p]}" ]; then same=$((same + 1)); else echo "DIFFERS: $1 / $2 / $3: $p" >&2; fi
  done
  results+=("| $1 | $2 | $3 | $same / $total |")
}
newout() { out=$work/out-$RANDOM; mkdir -p "$out"; }
# dump_from MOUNTPOINT: each path's NAR as the mount shows it.
dump_from() {
  local p
  for p in "${paths[@]}"; do
    nix-store --dump "$1/$(basename "$p")" >"$out/$(basename "$p")" || true
  done
}
lazix_nars() {
  local p
  for p in "${paths[@]}"; do
    "$LAZIX" nar --server "$1" "$p" >"$out/$(basename "$p")" 2>>"$work/lazix-nar.log" || true
  done
}
lazix_mount_dump() {
  local mnt=$work/lmnt-$RANDOM pid
  mkdir -p "$mnt"
  "$LAZIX" mount --server "$1" --cache-dir "$work/cache-$RANDOM" "$mnt" 2>>"$work/lazix-mount.log" &
  pid=$!
  wait_mount "$mnt"
  dump_from "$mnt"
  kill "$pid"; wait "$pid" || true
}
snix_env() { # the three service addresses of a gRPC server
  export BLOB_SERVICE_ADDR=grpc+http://$1 DIRECTORY_SERVICE_ADDR=grpc+http://$1 PATH_INFO_SERVICE_ADDR=grpc+http://$1
}
snix_mount_dump() {
  local mnt=$work/smnt-$RANDOM pid
  mkdir -p "$mnt"
  (snix_env "$1"; exec "$SNIX_BIN/snix-store" mount "$mnt") 2>>"$work/snix-mount.log" &
  pid=$!
  wait_mount "$mnt"
  dump_from "$mnt"
  fusermount3 -u "$mnt" || true
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
}

# --- snix clients on a lazix server ----------------------------------------
pa=$(free_port)
"$LAZIX" serve --data "$work/lazix-a" --grpc "127.0.0.1:$pa" --compact-after 0 2>"$work/lazix-a.log" &
wait_port "$pa"
"$LAZIX" push --server "grpc://127.0.0.1:$pa" "${paths[@]}" >/dev/null
newout; snix_mount_dump "127.0.0.1:$pa"; record "snix on lazix" "lazix push" "snix-store mount"

pb=$(free_port)
(snix_env "127.0.0.1:$pa"; exec "$SNIX_BIN/nar-bridge" --listen-address "127.0.0.1:$pb") 2>"$work/nar-bridge.log" &
wait_port "$pb"
newout
derivers_ok=0
for p in "${paths[@]}"; do
  h=$(basename "$p" | cut -c1-32)
  info=$(curl -sf "http://127.0.0.1:$pb/$h.narinfo" || true)
  url=$(sed -n 's/^URL: //p' <<<"$info")
  [ -n "$url" ] && curl -sf "http://127.0.0.1:$pb/$url" -o "$out/$(basename "$p")" || true
  d=$(nix-store -q --deriver "$p")
  if [ "$d" = unknown-deriver ]; then d=; else d=$(basename "$d"); fi
  [ "$(sed -n 's/^Deriver: //p' <<<"$info")" = "$d" ] && derivers_ok=$((derivers_ok + 1)) || echo "Deriver differs for $p: $(grep Deriver <<<"$info")" >&2
done
record "snix on lazix" "lazix push" "nar-bridge"
results+=("| snix on lazix | lazix push | nar-bridge narinfo \`Deriver:\` | $derivers_ok / ${#paths[@]} |")

pc=$(free_port)
"$LAZIX" serve --data "$work/lazix-c" --grpc "127.0.0.1:$pc" --compact-after 0 2>"$work/lazix-c.log" &
wait_port "$pc"
nix path-info --json --closure-size "${paths[@]}" |
  python3 -c 'import json,sys; print(json.dumps({"closure": json.load(sys.stdin)}))' >"$work/closure.json"
(snix_env "127.0.0.1:$pc"; exec "$SNIX_BIN/snix-store" copy "$work/closure.json") >/dev/null 2>"$work/snix-copy.log"
newout; lazix_nars "grpc://127.0.0.1:$pc"; record "snix on lazix" "snix-store copy" "lazix nar"
newout; lazix_mount_dump "grpc://127.0.0.1:$pc"; record "snix on lazix" "snix-store copy" "lazix mount"
imported=$( (snix_env "127.0.0.1:$pc"; exec "$SNIX_BIN/snix-store" import "$tree") 2>"$work/snix-import.log" | tail -1)
if [ "$("$LAZIX" nar --server "grpc://127.0.0.1:$pc" "$imported" | sha256sum | cut -d' ' -f1)" = "$(nix-store --dump "$tree" | sha256sum | cut -d' ' -f1)" ]; then
  results+=("| snix on lazix | snix-store import | lazix nar | 1 / 1 |")
else
  results+=("| snix on lazix | snix-store import | lazix nar | 0 / 1 |")
fi

# --- lazix clients on a snix daemon ----------------------------------------
ps=$(free_port)
mkdir -p "$work/snix"
"$SNIX_BIN/snix-store" daemon --listen-address "127.0.0.1:$ps" \
  --blob-service-addr "objectstore+file://$work/snix/blobs" \
  --directory-service-addr "redb://$work/snix/directories.redb" \
  --path-info-service-addr "redb://$work/snix/pathinfo.redb" 2>"$work/snix-daemon.log" &
wait_port "$ps"
"$LAZIX" push --server "grpc://127.0.0.1:$ps" "${paths[@]}" >/dev/null 2>"$work/lazix-push-snix.log"
newout; lazix_nars "grpc://127.0.0.1:$ps"; record "lazix on snix" "lazix push" "lazix nar"
newout; lazix_mount_dump "grpc://127.0.0.1:$ps"; record "lazix on snix" "lazix push" "lazix mount"
newout; snix_mount_dump "127.0.0.1:$ps"; record "lazix on snix" "lazix push" "snix-store mount"
info_ok=0
for p in "${paths[@]}"; do
  "$LAZIX" path-info --server "grpc://127.0.0.1:$ps" "$p" | grep -q "^StorePath: $p$" && info_ok=$((info_ok + 1))
done
results+=("| lazix on snix | lazix push | lazix path-info | $info_ok / ${#paths[@]} |")

echo
echo "snix: $SNIX_BIN ($("$SNIX_BIN/snix-store" --version 2>/dev/null || echo unknown version)); lazix: $("$LAZIX" --version)"
echo
echo "| direction | written by | read by | identical |"
echo "|---|---|---|---|"
printf '%s\n' "${results[@]}"
! printf '%s\n' "${results[@]}" | awk -F'|' '{split($5, a, " / "); if (a[1] + 0 != a[2] + 0) bad = 1} END {exit !bad}'
