#!/usr/bin/env bash
# Runs scripts/demo.sh as a new user would on a fresh Debian 12 machine: a
# debootstrapped root (ROOT, default /var/tmp/fresh-machine, made on the
# first run; delete it for a fresh one) with nothing but a base system,
# git and a C compiler, its own mount namespace, rustup installing Rust, a
# fresh clone of this repository's committed HEAD. Root only.
set -euo pipefail
ROOT=${ROOT:-/var/tmp/fresh-machine}
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -x "$ROOT/bin/bash" ]; then
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >&2
  mkdir -p "$ROOT"
  debootstrap --variant=minbase \
    --include=ca-certificates,curl,git,gcc,libc6-dev,make,pkg-config,procps,sudo,fuse3,iproute2 \
    bookworm "$ROOT" http://deb.debian.org/debian >&2
fi
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
