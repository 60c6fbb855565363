#!/usr/bin/env bash
# The whole test suite: unit, core, mounted and differential (vs kernel
# overlayfs) tests. Mounted tests need root and /dev/fuse; this installs the
# few Debian packages they use when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v setfattr >/dev/null || need+=(attr)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (install them, or run as root on Debian)" >&2
  fi
fi
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true

exec cargo test --workspace "$@"
