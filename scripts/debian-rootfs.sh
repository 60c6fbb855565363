#!/usr/bin/env bash
# Builds (once per machine) a Debian bookworm minbase root for tests and
# benchmarks, and prints its path. Reuses the cached one when complete.
set -euo pipefail
dir=${UNIONFS_ROOTFS_CACHE:-/var/cache/unionfs-test/bookworm}
if [ -f "$dir.complete" ]; then
  echo "$dir"
  exit 0
fi
command -v debootstrap >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
rm -rf "$dir.tmp"
mkdir -p "$(dirname "$dir")"
debootstrap --variant=minbase bookworm "$dir.tmp" "$mirror" >&2
rm -rf "$dir"
mv "$dir.tmp" "$dir"
touch "$dir.complete"
echo "$dir"
