#!/usr/bin/env bash
# Quick start: builds lazix, runs it on its embedded default store, pushes a
# freshly built Nix store path (a program and 40 MB of data, with its
# closure), renders it back (checking the NAR against Nix's own), then
# mounts the store lazily and runs the program from the mount: it reads a
# sliver of its data, and only that sliver is fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
source scripts/nix-env.sh

cargo build --release --locked --bin lazix
LAZIX=$PWD/target/release/lazix
ADDR=127.0.0.1:9721

work=$(mktemp -d)
mnt=$work/mnt
mkdir -p "$mnt"
"$LAZIX" serve --grpc "$ADDR" &
SERVER=$!
MOUNT=""
cleanup() {
  [ -n "$MOUNT" ] && kill "$MOUNT" 2>/dev/null && wait "$MOUNT" 2>/dev/null
  mountpoint -q "$mnt" && fusermount3 -u -z "$mnt"
  kill "$SERVER" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do
  (echo >/dev/tcp/127.0.0.1/9721) 2>/dev/null && break
  sleep 0.1
done

cat > "$work/demo.nix" <<'NIX'
let
  mk = name: script: derivation {
    inherit name;
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" script ];
  };
  lib = mk "lazix-demo-lib" "/bin/mkdir -p $out/share; /bin/echo 'hello from lazix' > $out/share/greeting";
in mk "lazix-demo" ''
  /bin/mkdir -p $out/bin $out/share
  /bin/head -c 40000000 /dev/urandom > $out/share/data.bin
  /bin/echo '#!/bin/sh' > $out/bin/hello
  /bin/echo '/bin/cat ${lib}/share/greeting' >> $out/bin/hello
  /bin/echo 'printf "read %s bytes of its 40 MB of data\n" $(/bin/head -c 100000 "$(/usr/bin/dirname "$0")/../share/data.bin" | /usr/bin/wc -c)' >> $out/bin/hello
  /bin/chmod 755 $out/bin/hello
''
NIX
path=$(nix-build "$work/demo.nix" --no-out-link)
echo "== built $path"

echo "== lazix push (twice: the second sends nothing)"
"$LAZIX" push --server "grpc://$ADDR" "$path"
"$LAZIX" push --server "grpc://$ADDR" "$path"

echo "== lazix path-info"
"$LAZIX" path-info --server "grpc://$ADDR" "$path"

ours=$("$LAZIX" nar --server "grpc://$ADDR" "$path" | sha256sum | cut -d' ' -f1)
theirs=$(nix-store --dump "$path" | sha256sum | cut -d' ' -f1)
echo "== NAR sha256 rendered by lazix: $ours"
echo "== NAR sha256 from nix-store:    $theirs"
[ "$ours" = "$theirs" ] || { echo "== the NARs differ" >&2; exit 1; }
echo "== identical: lazix stored the path as chunks and rendered it back"

echo "== lazix mount: every store path of the server appears at once, read lazily"
"$LAZIX" mount --server "grpc://$ADDR" "$mnt" 2>"$work/mount.log" &
MOUNT=$!
for _ in $(seq 200); do mountpoint -q "$mnt" && break; sleep 0.05; done
ls "$mnt"
name=$(basename "$path")
echo "== running $mnt/$name/bin/hello"
"$mnt/$name/bin/hello"
size=$(nix path-info --json "$path" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["narSize"])')
fetched=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fetched_bytes"])' "$mnt/.lazix-stats")
echo "== fetched $fetched bytes of the path's $size: the program ran after fetching $(python3 -c "print(f'{$fetched/$size:.1%}')") of it"
kill "$MOUNT"
wait "$MOUNT" 2>/dev/null || true
MOUNT=""
echo "== unmounted"
