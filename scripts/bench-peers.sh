#!/usr/bin/env bash
# Peer benchmark: unionfs next to native ext4, kernel overlayfs, fuse-overlayfs and
# unionfs-fuse on the same lower, each mounted fresh per run with its own empty upper.
#
#   scripts/bench-peers.sh [--out FILE] [--quick] [--runs N]
#
# Workloads: find (names) cold/warm, stat walk cold/warm, sequential 1 MiB and random
# 4 KiB reads (fio, 1 and 2 jobs) of the big lower file, untar of a Debian root into the
# mount and rm -rf of it, readdir of a merged directory with whiteouts (cold), git status
# first/warm in a repo, copy-up of the big file and of small files, daemon peak RSS.
# "Cold" = a fresh mount, then sync + drop_caches. Runs are interleaved (every system once
# per repetition, order rotating) and the table shows medians.
#
# Writes a Markdown table to stdout and to FILE (default docs/bench-latest.md), an SVG
# chart of the ratios next to it (FILE with .svg) and the raw numbers (.json).
#
# Environment:
#   RUNS=N         repetitions (default 5; 3 with QUICK=1)
#   QUICK=1        smoke run: 3 runs, 128 MiB file, 1,000-file repo, untar of usr/share only
#   TIMEOUT=S      time limit of one workload on one system, one run (default 300; 120 quick)
#   FIO_RUNTIME=S  seconds per fio run (default 4; 2 quick)
#   SYSTEMS=a,b    subset of: native,overlay,fuse-overlayfs,unionfs-fuse,unionfs,unionfs-uring,
#                  unionfs-pt-upper,unionfs-nospin,unionfs-uring-spin,floor,floor-best.
#                  unionfs: as mounted on a stock kernel (requests read from
#                  /dev/fuse; -o uring=off so a parameter left on cannot change it);
#                  unionfs-uring: -o uring=on, FUSE over io_uring (turns the fuse module
#                  parameter enable_uring on for the run, then back as it was);
#                  unionfs-pt-upper: -o passthrough=upper, lower files through the daemon
#                  (the default is all: lower files in the kernel too);
#                  unionfs-nospin: -o spin=0, no busy-polling (the default is
#                  spin=auto); unionfs-uring-spin: -o uring=on,spin=200, a fixed
#                  busy-polling window over io_uring;
#                  floor, floor-best: examples/floorfs.rs, an in-memory FUSE file system
#                  with unionfs's kernel settings, what the protocol alone costs: as
#                  unionfs is mounted by default, and with uring=on,spin=200
#   WORKLOADS=a,b  subset of: walk-names,walk-stat,read,untar,readdir,git,copyup-big,copyup-small
#   BENCH_CACHE    where the data set image lives (default /var/cache/unionfs-bench)
#   UNIONFS_BIN    use this unionfs binary instead of building target/release/unionfs
# Needs root. The data set (Debian root via scripts/debian-rootfs.sh, big file, git repo,
# readdir lower pair) is built once per mode into an ext4 image under BENCH_CACHE and reused;
# each run loop-mounts that image and keeps every upper on it too (see below why).
set -euo pipefail
cd "$(dirname "$0")/.."

out=docs/bench-latest.md
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    --quick) export QUICK=1; shift ;;
    --runs) export RUNS=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; $d'; exit 0 ;;
    *) echo "bench-peers: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-peers: needs root" >&2; exit 1; }
uring_param=/sys/module/fuse/parameters/enable_uring
uring_was=$(cat "$uring_param" 2>/dev/null || true)  # put back by cleanup()
if [ "${QUICK:-0}" = 1 ]; then mode=quick; export RUNS=${RUNS:-3}; else mode=full; export RUNS=${RUNS:-5}; fi

# --- tools and peers -------------------------------------------------------------------
need=()
for t in fusermount3:fuse3 fuse-overlayfs:fuse-overlayfs unionfs-fuse:unionfs-fuse fio:fio \
         git:git tar:tar python3:python3 mkfs.ext4:e2fsprogs losetup:mount; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench-peers: installing ${need[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- unionfs, rebuilt so the run measures the current source ----------------------------
if [ -z "${UNIONFS_BIN:-}" ]; then
  cargo build --release --quiet --workspace
  UNIONFS_BIN=$PWD/target/release/unionfs
fi
export UNIONFS_BIN
# the FUSE floor (examples/floorfs.rs): same fuser and kernel settings, no union work
cargo build --release --quiet --example floorfs
export FLOORFS_BIN=$PWD/target/release/examples/floorfs

# --- the file system under everything ------------------------------------------------------
# The lower data set and every upper live on a dedicated ext4 image with a journal, loop-mounted
# with direct I/O (so no double caching). This machine's root ext4 has no journal and mounts
# with `discard`; without a journal, ext4 skips recently deleted inodes one by one when it
# allocates (recently_deleted()), so an untar right after an rm -rf ran 4 s instead of 0.2 s,
# depending on what the previous run had deleted.
base=${BENCH_CACHE:-/var/cache/unionfs-bench}
mkdir -p "$base"
img=$base/$mode.ext4
exec 9>"$img.lock"
flock -n 9 || { echo "bench-peers: another run holds $img.lock" >&2; exit 1; }
if [ ! -f "$img.ok" ]; then
  rm -f "$img"
  truncate -s "$([ $mode = quick ] && echo 6G || echo 16G)" "$img"
  mkfs.ext4 -q -F -L unionfs-bench "$img"
  touch "$img.ok"
fi
# The lock keeps two runs apart, not a mount made by hand: ext4 mounted twice through two loop
# devices is two file systems writing one disk, and the image comes out of it needing e2fsck.
attached=$(losetup -j "$img" | cut -d: -f1 | tr '\n' ' ')
if [ -n "$attached" ]; then
  echo "bench-peers: $img is already attached (${attached% }); unmount it and detach it (losetup -d) first" >&2
  exit 1
fi
RUN_BASE=$(mktemp -d /var/tmp/bench-peers.XXXXXX)
FS=$RUN_BASE/fs
mkdir "$FS"
loopdev=
cleanup() {
  [ -z "$uring_was" ] || echo "$uring_was" > "$uring_param" 2>/dev/null || true
  # innermost first; FUSE connections are aborted so that a hung daemon cannot block us
  awk -v d="$FS/" 'index($5, d) == 1 {print $3, $5, $9}' /proc/self/mountinfo | sort -r -k2 |
  while read -r dev mnt fstype; do
    case $fstype in fuse*) echo 1 > "/sys/fs/fuse/connections/${dev#*:}/abort" 2>/dev/null || true ;; esac
    umount -l "$mnt" 2>/dev/null || true
  done
  if [ -f "$FS/runs/daemon-pids" ]; then
    while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done < "$FS/runs/daemon-pids"
  fi
  if mountpoint -q "$FS"; then
    rm -rf --one-file-system "$FS/runs"
    fstrim "$FS" 2>/dev/null || true  # give the freed blocks back: the image stays ~2 GiB, not 16
    umount "$FS" 2>/dev/null || umount -l "$FS"
  fi
  [ -z "$loopdev" ] || losetup -d "$loopdev" 2>/dev/null || true
  rmdir "$FS" "$RUN_BASE" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
loopdev=$(losetup --direct-io=on -f --show "$img")
mount "$loopdev" "$FS"

# --- data set, built once into the image --------------------------------------------------
export CACHE=$FS/data RUN_DIR=$FS/runs
rootfs=$(scripts/debian-rootfs.sh)
python3 scripts/bench-peers/bench.py build "$CACHE" "$rootfs" "${QUICK:-0}"
rm -rf --one-file-system "$RUN_DIR"
mkdir "$RUN_DIR"

# --- run ------------------------------------------------------------------------------------
bin_rev=$(git describe --always --dirty 2>/dev/null || echo unknown)
export OUT=$out
export META="kernel $(uname -r), $(nproc) cores, unionfs $bin_rev ($(stat -c %y "$UNIONFS_BIN" | cut -d. -f1)), $(fio --version)"
python3 scripts/bench-peers/bench.py run
