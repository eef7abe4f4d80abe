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
