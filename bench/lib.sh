# Sourced by the benchmark scripts (from the repository's root): shared
# helpers.

# Installs what the benchmarks use (with --peers also the peers: nginx, wrk,
# squashfuse, mksquashfs, zstd), sets real Nix's environment and builds
# lazix in release mode into $LAZIX (LAZIX_BIN=PATH measures that binary
# instead, e.g. an older build side by side with this one).
bench_setup() {
  if [ "${1:-}" = --peers ]; then export LAZIX_BENCH_DEPS=1; fi
  bash scripts/install-deps.sh
  source scripts/nix-env.sh
  if [ -n "${LAZIX_BIN:-}" ]; then
    LAZIX=$LAZIX_BIN
  else
    cargo build --release --locked --bin lazix >&2
    LAZIX=$PWD/target/release/lazix
  fi
}

# Makes the scratch folder $work (/var/tmp/lazix-$1.XXXXXX), removed on
# exit after the script's background processes are stopped and every FUSE
# mount below it is detached.
bench_workdir() {
  work=$(mktemp -d "/var/tmp/lazix-$1.XXXXXX")
  trap bench_cleanup EXIT
}
bench_cleanup() {
  local pid m
  for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
  for m in $(awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/mounts); do
    fusermount3 -u -z "$m" 2>/dev/null || true
  done
  rm -rf "$work"
}

# Waits (up to 10 s) until a FUSE file system is mounted at $1.
wait_mount() {
  for _ in $(seq 200); do mountpoint -q "$1" && return; sleep 0.05; done
  echo "no mount at $1" >&2; exit 1
}
# The median of three numbers.
median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits (up to 20 s) until something listens on loopback port $1.
wait_port() {
  for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done
  echo "port $1 not up" >&2; exit 1
}
# nginx serving the binary cache folder $1 on a free loopback port: sets
# $nport and $nginx_pid (a background job, stopped by bench_cleanup).
start_nginx() {
  nport=$(free_port)
  cat >"$work/nginx.conf" <<NGINX
user root;
worker_processes 2;
error_log $work/nginx-error.log;
pid $work/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 100000;
  types { text/x-nix-narinfo narinfo; application/x-nix-nar nar; }
  server { listen 127.0.0.1:$nport; root $1; }
}
NGINX
  nginx -c "$work/nginx.conf" -g 'daemon off;' &
  nginx_pid=$!
  wait_port "$nport"
}
# SeaweedFS (`weed mini`, from LAZIX_WEED or the one install-deps.sh
# fetched) in $work/weed with every port chosen free and its extras off,
# bucket `lazix` created: sets $weed_pid (a background job, stopped by the
# caller's cleanup), $BUCKET (the store location) and the AWS credentials.
start_weed() {
  local weed=${LAZIX_WEED:-$HOME/.cache/lazix/seaweedfs/bin/weed} flag code
  export AWS_ACCESS_KEY_ID=lazix-bench AWS_SECRET_ACCESS_KEY=lazix-bench-secret
  local s3port; s3port=$(free_port)
  local ports=()
  for flag in master.port master.port.grpc filer.port filer.port.grpc volume.port volume.port.grpc admin.port admin.port.grpc; do
    ports+=("-$flag=$(free_port)")
  done
  mkdir -p "$work/weed"
  "$weed" mini -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -webdav=false -admin.ui=false \
    -master.telemetry=false -s3.port.iceberg=0 -s3.port.lance=0 -s3.port="$s3port" "${ports[@]}" \
    >"$work/weed.log" 2>&1 &
  weed_pid=$!
  for _ in $(seq 200); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --aws-sigv4 aws:amz:us-east-1:s3 \
      --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" -X PUT "http://127.0.0.1:$s3port/lazix") || true
    [ "$code" = 200 ] && break
    sleep 0.3
  done
  [ "$code" = 200 ] || { echo "SeaweedFS did not start" >&2; exit 1; }
  BUCKET="s3://lazix?endpoint=http://127.0.0.1:$s3port&region=us-east-1"
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
