#!/usr/bin/env bash
# Copy-up benchmark: latency to the first write of a lower file (which
# copies it up) and the blocks the upper copy allocates, for unionfs, kernel
# overlayfs and fuse-overlayfs, interleaved, medians of RUNS.
#   scripts/bench-copyup.sh [RUNS] [SIZES...]     sizes like 4K 1M 64M 1G; "1G-sparse" is
#                                                 a 1 GiB file with 3 small extents
# Needs root. Writes a Markdown table to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}; shift || true
sizes=${*:-4K 1M 64M 1G-sparse}
command -v fuse-overlayfs >/dev/null || {
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse-overlayfs >/dev/null
}
cargo build --release --quiet -p unionfs
export BIN=$PWD/target/release/unionfs RUNS=$runs SIZES="$sizes"
exec python3 - <<'PY'
import os, statistics, subprocess, tempfile, time

runs, sizes, binp = int(os.environ["RUNS"]), os.environ["SIZES"].split(), os.environ["BIN"]
base = tempfile.mkdtemp(prefix="bench-copyup.", dir="/var/tmp")

def sh(c): subprocess.run(c, shell=True, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def parse(sz):
    sparse = sz.endswith("-sparse")
    s = sz.removesuffix("-sparse")
    n = int(s[:-1]) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[s[-1]]
    return n, sparse

def make_lower(d, n, sparse):
    os.makedirs(f"{d}/l")
    with open(f"{d}/l/f", "wb") as f:
        if sparse:
            f.truncate(n)
            for off in (0, n // 2, n - 4096):
                f.seek(off); f.write(b"x" * 4096)
        else:
            chunk = os.urandom(1 << 20)
            left = n
            while left:
                k = min(left, len(chunk)); f.write(chunk[:k]); left -= k
    sh(f"sync {d}/l/f")
    for s in ("u", "w", "m"): os.makedirs(f"{d}/{s}")

MOUNT = {
    "unionfs": lambda d: sh(f"{binp} mount {d}/l {d}/u {d}/m -o workdir={d}/w"),
    "kernel overlayfs": lambda d: sh(f"mount -t overlay overlay -o lowerdir={d}/l,upperdir={d}/u,workdir={d}/w,index=on {d}/m"),
    "fuse-overlayfs": lambda d: sh(f"fuse-overlayfs -o lowerdir={d}/l,upperdir={d}/u,workdir={d}/w {d}/m"),
}
UMOUNT = {"unionfs": "umount", "kernel overlayfs": "umount", "fuse-overlayfs": "fusermount3 -u"}

res = {}
i = 0
for sz in sizes:
    n, sparse = parse(sz)
    for _ in range(runs):
        for peer in MOUNT:
            i += 1
            d = f"{base}/{i}"
            make_lower(d, n, sparse)
            MOUNT[peer](d)
            sh("sync; echo 3 > /proc/sys/vm/drop_caches")
            t = time.perf_counter()
            fd = os.open(f"{d}/m/f", os.O_WRONLY)
            os.pwrite(fd, b"!", 1)
            os.close(fd)
            dt = time.perf_counter() - t
            sh(f"{UMOUNT[peer]} {d}/m")
            blocks = os.stat(f"{d}/u/f").st_blocks * 512
            res.setdefault((sz, peer), []).append((dt, blocks))
            sh(f"rm -rf {d}")
sh(f"rm -rf {base}")
print(f"copy-up on first write, median of {runs} interleaved runs (cold cache)\n")
print("| file | peer | first write (ms) | upper allocates |")
print("|---|---|---|---|")
for (sz, peer), v in res.items():
    ms = statistics.median(x[0] for x in v) * 1000
    mb = statistics.median(x[1] for x in v) / (1 << 20)
    print(f"| {sz} | {peer} | {ms:.2f} | {mb:.2f} MiB |")
PY
