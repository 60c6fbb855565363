#!/usr/bin/env bash
# Builds (once per machine) a Debian bookworm arm64 root with the first
# stage of `debootstrap --foreign` (its binaries run here under
# qemu-user-static once a binfmt_misc handler is registered), installs
# qemu-user-static, and prints the root's path.
set -euo pipefail
dir=${UNIONFS_ARM64_CACHE:-/var/cache/unionfs-test/bookworm-arm64}
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -e /usr/lib/binfmt.d/qemu-aarch64.conf ] || need+=(qemu-user-static)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
if [ ! -f "$dir.complete" ]; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  rm -rf "$dir.tmp"
  mkdir -p "$(dirname "$dir")"
  debootstrap --foreign --arch=arm64 --variant=minbase bookworm "$dir.tmp" "${mirror:-http://deb.debian.org/debian}" >&2
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  touch "$dir.complete"
fi
echo "$dir"
