#!/usr/bin/env bash
# Installs what lazix's tests, demo and benchmarks use on a fresh Debian
# machine: real Nix 2.8 (client, uploader, fixture builder) and FUSE 3.
# Idempotent: skips apt when everything is already there.
set -euo pipefail

need=()
command -v nix-store >/dev/null 2>&1 || need+=(nix-bin)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ "${LAZIX_BENCH_DEPS:-0}" = 1 ]; then
  command -v nginx >/dev/null 2>&1 || need+=(nginx)
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  command -v squashfuse >/dev/null 2>&1 || need+=(squashfuse)
  command -v mksquashfs >/dev/null 2>&1 || need+=(squashfs-tools)
  command -v zstd >/dev/null 2>&1 || need+=(zstd)
fi

if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

command -v cargo >/dev/null 2>&1 || {
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 1
}
