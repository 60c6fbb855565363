#!/usr/bin/env bash
# Copy-up benchmark: what the first write to a lower file costs.
#
#   scripts/bench-copyup.sh [--runs N] [--sizes 4K,1M,64M,1G] [--files N] [--sparse]
#                           [--fs ext4|xfs] [--cache cold|warm] [--json FILE]
#                           [--systems REGEX] [--dir DIR]
#
# The size sweep of the sparse copy-up (docs/BENCHMARKS.md):
#   scripts/bench-copyup.sh --sparse --sizes 1M,64M,1G,4G,16G --runs 7 \
#       --systems 'unionfs$|sparse=off|kernel overlayfs$|fuse-overlayfs'
#
# For every size, N files of that size sit in a lower branch (--sparse: each
# file is a hole with three 4 KiB data extents, at the start, middle and end).
# Each system mounts them over an empty upper and opens every file for
# writing and writes one byte; per file we record the latency to that first
# write (open + copy-up + write), the throughput it implies (file size /
# latency) and the blocks the upper copy allocates. Systems, interleaved run
# by run (A B C A B C ...):
#   unionfs                     default: files of 1 MiB or more are copied up
#                               sparse (no data copied; docs/ARCHITECTURE.md)
#   unionfs sparse=off          the whole-file copy-up (strategy chosen: auto)
#   unionfs copyup=reflink      FICLONE only (only where the filesystem can)
#   unionfs copyup=copy_file_range
#   unionfs copyup=readwrite
#   unionfs volatile            no fsync of the copied data (what podman asks for)
#   kernel overlayfs, kernel overlayfs volatile, fuse-overlayfs, unionfs-fuse (-o cow)
# unionfs and kernel overlayfs make a copy durable (fsync) before it appears;
# with volatile, and fuse-overlayfs and unionfs-fuse always, a crash may leave
# a copy without its data.
# Branches live on a fresh loop-mounted image of --fs (default ext4 with a
# journal; xfs has reflink). --cache cold drops the page cache after mounting
# (default), warm reads the lower files once first (in the lower, not through
# the mount). Prints a Markdown table;
# medians over runs (and files). Needs root; installs missing peers with apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5 sizes=4K,1M,64M,1G files=1 sparse=0 fs=ext4 cache=cold json= systems=. dir=/var/tmp
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --files) files=$2; shift 2 ;;
    --sparse) sparse=1; shift ;;
    --fs) fs=$2; shift 2 ;;
    --cache) cache=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    --systems) systems=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "bench-copyup: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $fs in ext4|xfs) ;; *) echo "bench-copyup: --fs must be ext4 or xfs" >&2; exit 2 ;; esac
case $cache in cold|warm) ;; *) echo "bench-copyup: --cache must be cold or warm" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "bench-copyup: needs root (mounts)" >&2; exit 1; }
need=()
command -v fuse-overlayfs >/dev/null || need+=(fuse-overlayfs)
command -v unionfs-fuse >/dev/null || need+=(unionfs-fuse)
command -v fusermount3 >/dev/null || need+=(fuse3)
[ "$fs" = xfs ] && ! command -v mkfs.xfs >/dev/null && need+=(xfsprogs)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet -p unionfs
export BIN=$PWD/target/release/unionfs RUNS=$runs SIZES=$sizes FILES=$files SPARSE=$sparse \
  FS=$fs CACHE=$cache JSON=$json SYSTEMS_RE=$systems IMG_DIR=$dir
exec python3 - <<'PY'
import json, os, re, statistics, subprocess, time

env = os.environ
runs, files, sparse = int(env["RUNS"]), int(env["FILES"]), env["SPARSE"] == "1"
sizes, binp, fs, cache = env["SIZES"].split(","), env["BIN"], env["FS"], env["CACHE"]
UNIT = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

def sh(c, check=True):
    return subprocess.run(c, shell=True, check=check, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)

def size_of(s):
    return int(s[:-1]) * UNIT[s[-1].upper()]

# --dir: where the image lives (/dev/shm for dense files bigger than the
# disk's free space; its syncs are then nearly free: say so with the figures).
img = f"{env['IMG_DIR']}/unionfs-bench-copyup.{fs}.img"
root = f"/var/tmp/unionfs-bench-copyup.{fs}"
biggest = max(size_of(s) for s in sizes)
img_bytes = max(4 << 30, (0 if sparse else biggest * files * 3) + (1 << 30))
os.makedirs(root, exist_ok=True)
sh(f"umount -l {root}", check=False)
sh(f"rm -f {img} && truncate -s {img_bytes} {img}")
sh(f"mkfs.ext4 -q -F {img}" if fs == "ext4" else f"mkfs.xfs -q -f -m reflink=1 {img}")
sh(f"mount -o loop {img} {root}")
probe = f"{root}/probe"
with open(probe, "wb") as f:
    f.write(b"x" * 4096)
can_reflink = sh(f"cp --reflink=always {probe} {probe}.2", check=False).returncode == 0
sh(f"rm -f {probe} {probe}.2")

def un(opts):
    return lambda d: sh(f"{binp} mount {d}/l {d}/u {d}/m -o workdir={d}/w{opts}")

SYSTEMS = {"unionfs": un(""), "unionfs sparse=off": un(",sparse=off")}
if can_reflink:
    SYSTEMS["unionfs copyup=reflink"] = un(",sparse=off,copyup=reflink")
SYSTEMS["unionfs copyup=copy_file_range"] = un(",sparse=off,copyup=copy_file_range")
SYSTEMS["unionfs copyup=readwrite"] = un(",sparse=off,copyup=readwrite")
SYSTEMS["unionfs volatile"] = un(",volatile")
SYSTEMS["kernel overlayfs"] = lambda d: sh(
    f"mount -t overlay overlay -o lowerdir={d}/l,upperdir={d}/u,workdir={d}/w,index=on {d}/m")
SYSTEMS["kernel overlayfs volatile"] = lambda d: sh(
    f"mount -t overlay overlay -o lowerdir={d}/l,upperdir={d}/u,workdir={d}/w,index=on,volatile {d}/m")
SYSTEMS["fuse-overlayfs"] = lambda d: sh(
    f"fuse-overlayfs -o lowerdir={d}/l,upperdir={d}/u,workdir={d}/w {d}/m")
SYSTEMS["unionfs-fuse"] = lambda d: sh(f"unionfs-fuse -o cow,allow_other {d}/u=RW:{d}/l=RO {d}/m")

SYSTEMS = {k: v for k, v in SYSTEMS.items() if re.search(env["SYSTEMS_RE"], k)}
if "kernel overlayfs" not in SYSTEMS:
    raise SystemExit("bench-copyup: --systems must keep 'kernel overlayfs' (the yardstick)")

def make_lower(d, n):
    os.makedirs(f"{d}/l")
    chunk = os.urandom(min(n, 1 << 20))
    for i in range(files):
        with open(f"{d}/l/f{i}", "wb") as f:
            if sparse:
                f.truncate(n)
                for off in sorted({0, (n // 2) & ~4095, max(n - 4096, 0)}):
                    f.seek(off)
                    f.write(b"x" * min(4096, n - off))
            else:
                left = n
                while left:
                    k = min(left, len(chunk))
                    f.write(chunk[:k])
                    left -= k
    sh(f"sync -f {d}/l")

def human(b):
    return f"{b / (1 << 20):.2f} MiB" if b >= (1 << 20) else f"{b / 1024:.0f} KiB"

def unmount(d):
    for _ in range(50):
        if sh(f"umount {d}/m", check=False).returncode == 0:
            return
        time.sleep(0.1)
    sh(f"umount -l {d}/m", check=False)

res = {}
for sz in sizes:
    n = size_of(sz)
    lower = f"{root}/lower-{sz}"
    make_lower(lower, n)
    for run in range(runs):
        for name, mount in SYSTEMS.items():
            d = f"{root}/run"
            sh(f"rm -rf {d}")
            for s in ("u", "w", "m"):
                os.makedirs(f"{d}/{s}")
            os.symlink(f"{lower}/l", f"{d}/l")
            mount(d)
            try:
                if cache == "cold":
                    sh("sync; echo 3 > /proc/sys/vm/drop_caches")
                else:
                    # the lower files themselves, not through the mount
                    # (that would measure dropping the union's page cache)
                    for i in range(files):
                        with open(f"{d}/l/f{i}", "rb") as f:
                            while f.read(1 << 20):
                                pass
                lat, synced = [], []
                t_all = time.perf_counter()
                for i in range(files):
                    t = time.perf_counter()
                    fd = os.open(f"{d}/m/f{i}", os.O_WRONLY)
                    os.pwrite(fd, b"!", 1)
                    lat.append(time.perf_counter() - t)
                    # and then makes it durable (the write's fsync)
                    os.fsync(fd)
                    synced.append(time.perf_counter() - t)
                    os.close(fd)
                total = time.perf_counter() - t_all
            finally:
                unmount(d)
            alloc = statistics.median(os.stat(f"{d}/u/f{i}").st_blocks * 512 for i in range(files))
            r = res.setdefault((sz, name), {"lat": [], "alloc": [], "total": [], "synced": []})
            r["lat"] += lat
            r["synced"] += synced
            r["alloc"].append(alloc)
            r["total"].append(total)
    sh(f"rm -rf {lower} {root}/run")
sh(f"umount {root}")
sh(f"rm -f {img}")
os.rmdir(root)

kind = "sparse (3 × 4 KiB extents)" if sparse else "dense"
print(f"Copy-up on the first write: {files} {kind} file(s) per size, medians of {runs} "
      f"interleaved runs, {cache} cache, branches on a fresh {fs} image"
      f"{' (reflink available)' if can_reflink else ' (no reflink on ' + fs + ')'}; "
      f"kernel {os.uname().release}.\n")
print("| size | system | first write, per file (ms): median | min–max | + fsync (ms) | throughput (MiB/s) | upper allocates per file | × kernel overlayfs |")
print("|---|---|---|---|---|---|---|---|")
out = []
for sz in sizes:
    base = statistics.median(res[(sz, "kernel overlayfs")]["lat"])
    for name in SYSTEMS:
        r = res[(sz, name)]
        lat = statistics.median(r["lat"])
        alloc = statistics.median(r["alloc"])
        mibs = size_of(sz) / (1 << 20) / lat if lat > 0 else float("inf")
        lo, hi = min(r["lat"]) * 1000, max(r["lat"]) * 1000
        syn = statistics.median(r["synced"]) * 1000
        print(f"| {sz} | {name} | {lat * 1000:.2f} | {lo:.2f}–{hi:.2f} | {syn:.2f} | {mibs:.0f} | {human(alloc)} | {lat / base:.2f} |")
        out.append({"size": sz, "system": name, "latency_s": lat, "throughput_mib_s": mibs,
                    "allocated_bytes": alloc, "ratio_vs_overlayfs": lat / base,
                    "total_s": statistics.median(r["total"]),
                    "with_fsync_s": statistics.median(r["synced"])})
if env.get("JSON"):
    with open(env["JSON"], "w") as f:
        json.dump({"fs": fs, "cache": cache, "files": files, "sparse": sparse, "runs": runs,
                   "reflink": can_reflink, "results": out}, f, indent=1)
PY
