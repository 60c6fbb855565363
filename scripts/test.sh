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

# The vendored fuser's own unit tests (request parsing, TMPFILE among them): its
# manifest is a workspace of its own, outside the union's (vendor/fuser/PATCHED.md).
cargo test --manifest-path vendor/fuser/Cargo.toml --target-dir target/vendor-fuser --lib

# The differential test on generated lowers (tests/diff_ops.rs) runs its big budget
# once: 1024 sequences of 200 operations per whiteout format (UNIONFS_DIFF_OPS_CASES,
# UNIONFS_DIFF_OPS_LEN), in the first pass; a second pass runs the test's default.
big_budget=${UNIONFS_DIFF_OPS_CASES:-1024}

# Mounted tests run twice when the kernel has FUSE over io_uring: once with
# requests read from /dev/fuse, once through the daemon's io_uring rings
# (unionfs asks for it whenever the fuse module parameter is on). The
# parameter is put back as it was.
uring=/sys/module/fuse/parameters/enable_uring
if [ "$(id -u)" != 0 ] || [ ! -w "$uring" ]; then
  UNIONFS_DIFF_OPS_CASES=$big_budget exec cargo test --workspace "$@"
fi
was=$(cat "$uring")
trap 'echo "$was" > "$uring"' EXIT
for on in N Y; do
  echo "$on" > "$uring"
  [ "$on" = N ] && how="/dev/fuse" || how="FUSE over io_uring"
  echo "== the suite, requests through $how ==" >&2
  if [ "$on" = N ]; then
    UNIONFS_DIFF_OPS_CASES=$big_budget cargo test --workspace "$@"
  else
    cargo test --workspace "$@"
  fi
done
