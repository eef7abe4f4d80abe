# Sourced by the benchmark scripts: shared helpers.

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits (up to 20 s) until something listens on loopback port $1.
wait_port() {
  for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done
  echo "port $1 not up" >&2; exit 1
}
# Seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }
# Seconds elapsed since $1 (a `now` value).
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b-a}'; }

# Adds every folder of /usr/share and the stable Rust toolchain ($STABLE) as
# store paths; sets `paths` (array) and `nar_bytes`, lists the paths in $1.
add_share_and_stable() {
  echo "adding /usr/share/* and the stable toolchain as store paths (once)" >&2
  paths=()
  local d name p
  for d in /usr/share/*/; do
    name=share-$(basename "$d" | tr -c 'A-Za-z0-9+._?=\n-' '_')
    p=$(nix store add-path --name "$name" "$d" 2>/dev/null) && paths+=("$p") || true
  done
  paths+=("$(nix store add-path --name rust-stable "$STABLE")")
  printf '%s\n' "${paths[@]}" >"$1"
  nar_bytes=$(nix path-info --json "${paths[@]}" | python3 -c 'import json,sys; print(sum(p["narSize"] for p in json.load(sys.stdin)))')
  echo "${#paths[@]} paths, $((nar_bytes / 1048576)) MiB of NAR" >&2
}
