#!/usr/bin/env bash
# Soak the differential test (tests/diff_ops.rs) against kernel overlayfs: many random
# cases of the properties on generated lowers, in both whiteout formats unionfs writes
# (plus kernel overlayfs reading unionfs's overlay-format upper), and of the
# fixed-fixture properties. Needs root, /dev/fuse and kernel overlayfs, like the test.
#
#   scripts/soak.sh [CASES]      # CASES per generated-lowers property, default 2000
#
# Environment: UNIONFS_DIFF_OPS_LEN (operations per sequence, default 200),
# UNIONFS_SOAK_CASES (cases per fixed-fixture property, default CASES/4),
# PROPTEST_RNG_SEED (the run's seed: printed, and random unless set, so that a run can
# be repeated), PROPTEST_MAX_SHRINK_TIME (ms per failure, default 600000).
#
# On a mismatch proptest shrinks the case; this prints each property's shrunk case — the
# lowers as a `gen_lowers(...)` argument and the operations as a Rust op list, both
# pasteable into a `regression_*` test — with what differed, and exits 1.
#
# Time here (2 cores shared with other work, load 5-7, debug build): 5.3 minutes per
# 1000 CASES (that is 2 x 1000 generated sequences of 200 operations, 250 kernel-reads
# ones, 3 x 250 fixed-fixture ones), so the default 2000 takes about 11 minutes; see
# docs/TESTING.md. A failure adds the time shrinking takes (usually 10-30 s).
set -euo pipefail
cd "$(dirname "$0")/.."

cases=${1:-2000}
seed=${PROPTEST_RNG_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
export PROPTEST_RNG_SEED=$seed
export UNIONFS_DIFF_OPS_CASES=$cases
export UNIONFS_SOAK_CASES=${UNIONFS_SOAK_CASES:-$(( (cases + 3) / 4 ))}
export UNIONFS_DIFF_OPS_LEN=${UNIONFS_DIFF_OPS_LEN:-200}
export UNIONFS_TEST_REQUIRE=1

if [ "$(id -u)" != 0 ]; then
  echo "soak.sh: needs root (mounts kernel overlayfs and FUSE)" >&2
  exit 2
fi

echo "soak: $cases cases x $UNIONFS_DIFF_OPS_LEN ops per generated-lowers property," \
  "$UNIONFS_SOAK_CASES per fixed-fixture property, PROPTEST_RNG_SEED=$seed" >&2
cargo test --test diff_ops --no-run -q 2>&1 | grep -v '^\s*Executable' >&2 || true

log=$(mktemp -t unionfs-soak.XXXXXX)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
status=0
# the properties only (the regression tests are the suite's business)
cargo test -q --test diff_ops -- \
  gen_lowers_match_kernel_overlayfs gen_lowers_kernel_reads_unionfs_upper \
  ops_match_kernel_overlayfs kernel_reads_unionfs_upper \
  >"$log" 2>&1 || status=$?
secs=$(( $(date +%s) - start ))

if [ "$status" = 0 ]; then
  grep -E '^test result' "$log" >&2 || true
  echo "soak: no mismatch in ${secs}s (PROPTEST_RNG_SEED=$seed)" >&2
  exit 0
fi

# Each failing property: its name, then proptest's final (shrunk) failure, whose message
# holds the lowers, the op list and the differences.
awk '
  /^---- .* stdout ----$/ { name = $2; printing = 0 }
  /^Test failed: / {
    print "===== " name " (shrunk)"
    sub(/^Test failed: /, "")
    printing = 1
  }
  /^minimal failing input:/ { printing = 0; print "" }
  printing { print }
' "$log"
if ! grep -q '^Test failed: ' "$log"; then
  # not a mismatch (a panic in the harness, a mount that failed, ...): show it all
  cat "$log"
fi
echo "soak: FAILED after ${secs}s (PROPTEST_RNG_SEED=$seed; full log kept in $log.kept)" >&2
cp "$log" "$log.kept"
exit 1
