#!/usr/bin/env bash
# Runs scripts/demo.sh as a new user would on a fresh Debian 12 machine: a
# debootstrapped root (ROOT, default /var/tmp/fresh-machine) with nothing
# but a base system, git and a C compiler, its own mount namespace, rustup
# installing Rust, a fresh clone of this repository.
set -euo pipefail
ROOT=${ROOT:-/var/tmp/fresh-machine}
REPO=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$ROOT/bin/bash" ] || { echo "no debootstrapped root at $ROOT" >&2; exit 1; }
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The network's own certificate authorities, as every machine here has
# them (an egress proxy), nothing of lazix's.
mkdir -p "$ROOT/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
mkdir -p "$ROOT/src"
exec unshare -m --propagation private bash -c '
  set -euo pipefail
  ROOT=$1; REPO=$2
  mount -t proc proc "$ROOT/proc"
  mount -t sysfs sys "$ROOT/sys"
  mount --rbind /dev "$ROOT/dev"
  mount --bind "$REPO" "$ROOT/src"
  mount -t tmpfs tmpfs "$ROOT/tmp"
  chroot "$ROOT" /usr/bin/env -i HOME=/root TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin bash -c "
    set -euo pipefail
    update-ca-certificates >/dev/null
    cd /root
    rm -rf lazix
    git clone -q /src lazix
    if [ ! -x /root/.cargo/bin/cargo ]; then
      curl -sSf -o /tmp/rustup-init https://static.rust-lang.org/rustup/dist/x86_64-unknown-linux-gnu/rustup-init
      chmod +x /tmp/rustup-init
      /tmp/rustup-init -y -q --profile minimal
    fi
    . /root/.cargo/env
    cd lazix
    bash scripts/demo.sh
  "
' _ "$ROOT" "$REPO"
