#!/usr/bin/env bash
# Container start-up from the lazy mount, with and without an access
# profile. Two images as store paths: the stable Rust toolchain (`rustc
# --version`) and a Python with many packages (~/.pyenv/versions/3.11.7,
# `python3 -c 'import boto3, IPython'`). Each runs inside bubblewrap with
# the lazy mount bound at /nix/store (and the Python path also at its
# build prefix, where its interpreter looks for its library and modules).
#
# The mount reaches the server through bench/delay-proxy.py at RTTS
# (default "10 50" ms round trip) with a MBIT cap (default 100 Mbit/s).
# Per link and workload (WORKLOADS, default "rustc python"), in one run:
# cold without profile, cold with the profile (`--prefetch`, the program
# started at once, racing it), warm (the same mount again); plus cold
# without profile on loopback as the reference. The profile is recorded once on loopback (`--record-profile`).
# Reported: seconds to the program's exit, MiB fetched (the mount's
# counter), each the median of 3.
#
#   bash bench/profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_setup --peers
RTTS=${RTTS:-"10 50"}
WORKLOADS=${WORKLOADS:-"rustc python"}
MBIT=${MBIT:-100}
STABLE=${STABLE:-$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu}
PYTHON=${PYTHON:-$HOME/.pyenv/versions/3.11.7}
bench_workdir profile-bench
mnt=$work/mnt; mkdir -p "$mnt"

rust=$(nix store add-path --name rust-stable "$STABLE")
python=$(nix store add-path --name python-3.11.7 "$PYTHON")
gport=$(free_port)
"$LAZIX" serve --data "$work/data" --grpc "127.0.0.1:$gport" --compact-after 0 2>"$work/serve.log" &
wait_port "$gport"
pushed=()
[[ " $WORKLOADS " == *" rustc "* ]] && pushed+=("$rust")
[[ " $WORKLOADS " == *" python "* ]] && pushed+=("$python")
"$LAZIX" push --server "grpc://127.0.0.1:$gport" "${pushed[@]}" 2>&1 | tail -1 >&2
"$LAZIX" compact --data "$work/data" >&2

declare -A LINK
LINK[loopback]=$gport
for rtt in $RTTS; do
  p=$(free_port)
  python3 bench/delay-proxy.py "$p" "$gport" "$(awk -v r="$rtt" 'BEGIN {print r / 2}')" "$MBIT" &
  wait_port "$p"
  LINK["rtt $rtt ms"]=$p
done

# The workloads, run in a sandbox whose /nix/store is the lazy mount.
in_box() {
  bwrap --dev-bind / / --bind "$mnt" /nix/store \
    --bind "$mnt/$(basename "$python")" "$PYTHON" \
    --setenv PYTHONDONTWRITEBYTECODE 1 -- "$@"
}
run_rustc() { in_box "/nix/store/$(basename "$rust")/bin/rustc" --version >/dev/null; }
run_python() { in_box "$PYTHON/bin/python3" -c 'import boto3, IPython' >/dev/null; }

mount_on() { # port [mount args...] -> $mounter
  local port=$1; shift
  "$LAZIX" mount --server "grpc://127.0.0.1:$port" "$@" "$mnt" 2>>"$work/mount.log" &
  mounter=$!
  wait_mount "$mnt"
}
unmount() { kill "$mounter"; wait "$mounter" 2>/dev/null || true; }
fetched_mib() { python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["fetched_bytes"]/1048576, 1))' "$mnt/.lazix-stats"; }

# Record each workload's profile once, on loopback.
for w in $WORKLOADS; do
  mount_on "$gport" --record-profile "$work/$w.profile"
  "run_$w"
  unmount
  echo "$w profile: $(($(wc -l <"$work/$w.profile") - 1)) files" >&2
done

# measure LINK WORKLOAD MODE -> "seconds MiB" (median of 3 by time)
measure() {
  local port=${LINK[$1]} w=$2 mode=$3 runs=() t i
  for i in 1 2 3; do
    sync; echo 3 >/proc/sys/vm/drop_caches
    case $mode in
      cold) mount_on "$port" ;;
      profile) mount_on "$port" --prefetch "$work/$w.profile" ;;
      warm)
        mount_on "$port" --cache-dir "$work/warm-$w-$i"; "run_$w"; unmount
        sync; echo 3 >/proc/sys/vm/drop_caches
        mount_on "$port" --cache-dir "$work/warm-$w-$i" ;;
    esac
    t=$(now)
    "run_$w"
    runs+=("$(since "$t") $(fetched_mib)")
    unmount
  done
  printf '%s\n' "${runs[@]}" | sort -g | sed -n 2p
}

declare -A R
for w in $WORKLOADS; do
  echo "measuring $w on loopback" >&2
  R["loopback/$w/cold"]=$(measure loopback "$w" cold)
  for rtt in $RTTS; do
    l="rtt $rtt ms"
    for mode in cold profile warm; do
      echo "measuring $w, $l, $mode" >&2
      R["$l/$w/$mode"]=$(measure "$l" "$w" "$mode")
    done
  done
done

echo
echo "seconds to exit / MiB fetched, median of 3; ${MBIT} Mbit/s; the loopback cold start has no delay and no cap"
echo
echo "| workload | link | cold, no profile | cold, profile | warm | profile / loopback cold | profile / cold |"
echo "|---|---|---|---|---|---|---|"
for w in $WORKLOADS; do
  read -r lt lb <<<"${R[loopback/$w/cold]}"
  echo "| $w | loopback | $lt s / $lb MiB | | | | |"
  for rtt in $RTTS; do
    l="rtt $rtt ms"
    read -r ct cb <<<"${R[$l/$w/cold]}"
    read -r pt pb <<<"${R[$l/$w/profile]}"
    read -r wt wb <<<"${R[$l/$w/warm]}"
    awk -v w="$w" -v l="$l" -v ct="$ct" -v cb="$cb" -v pt="$pt" -v pb="$pb" -v wt="$wt" -v wb="$wb" -v lt="$lt" \
      'BEGIN {printf "| %s | %s | %.2f s / %s MiB | %.2f s / %s MiB | %.2f s / %s MiB | %.2f | time %.2f, bytes %.2f |\n", w, l, ct, cb, pt, pb, wt, wb, pt / lt, pt / ct, pb / cb}'
  done
done
