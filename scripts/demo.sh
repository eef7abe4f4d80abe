#!/usr/bin/env bash
# Quick start: builds lazix, runs it on its embedded default store, pushes
# a freshly built Nix store path (with its closure) and renders it back,
# checking the NAR against Nix's own.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
source scripts/nix-env.sh

cargo build --release --locked --bin lazix
LAZIX=$PWD/target/release/lazix
ADDR=127.0.0.1:9721

"$LAZIX" serve --grpc "$ADDR" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (echo >/dev/tcp/127.0.0.1/9721) 2>/dev/null && break
  sleep 0.1
done

work=$(mktemp -d)
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
  /bin/mkdir -p $out/bin
  /bin/echo '#!/bin/sh' > $out/bin/hello
  /bin/echo '/bin/cat ${lib}/share/greeting' >> $out/bin/hello
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
[ "$ours" = "$theirs" ] && echo "== identical: lazix stored the path as chunks and rendered it back"
rm -rf "$work"
