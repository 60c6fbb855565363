#!/usr/bin/env bash
# The quick start: build unionfs, mount this machine's own / as the read-only
# lower branch under a fresh, empty upper, look around, and unmount.
# Nothing is downloaded and nothing outside a temporary directory changes.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
bin=$PWD/target/release/unionfs

# The upper and the mount point must not sit inside the lower on the same
# filesystem (a union may not contain itself), so they go on tmpfs.
base=$(mktemp -d /dev/shm/unionfs-demo.XXXXXX)
mkdir "$base/upper" "$base/mnt"
cleanup() {
  "$bin" umount "$base/mnt" 2>/dev/null || umount -l "$base/mnt" 2>/dev/null || true
  rm -rf "$base"
}
trap cleanup EXIT

set -x
"$bin" mount / "$base/upper" "$base/mnt"
grep " $base/mnt " /proc/mounts
ls "$base/mnt"
head -n 2 "$base/mnt/etc/os-release"
stat -c '%n inode=%i links=%h size=%s' /etc/os-release "$base/mnt/etc/os-release"
ls "$base/mnt/usr/bin" | wc -l
ls /usr/bin | wc -l
ls -A "$base/mnt/proc" | wc -l   # the union shows what lies under mount points, as overlayfs does
ls -A "$base/upper"              # reads change nothing in the upper
"$bin" umount "$base/mnt"
{ set +x; } 2>/dev/null
echo "demo done: the union served this machine's / read-only, and is unmounted again."
