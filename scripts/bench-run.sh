#!/usr/bin/env bash
# Container start-to-exit latency of `unionfs-run --rm -- /bin/true` next to
# its peers, interleaved (A B C D A B C D ...), each including its own union
# mount and unmount:
#   unionfs-run         our launcher on a unionfs union of the host's /
#   overlay+bwrap       kernel overlayfs mount, bwrap into it, unmount
#   fuse-overlayfs+bwrap  the same on fuse-overlayfs
#   unshare+chroot      namespaces and chroot, no union (a floor)
# Prints a Markdown table of medians. Needs root. Usage: scripts/bench-run.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v fuse-overlayfs >/dev/null || need+=(fuse-overlayfs)
command -v fusermount3 >/dev/null || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet --workspace
export RUN=$PWD/target/release/unionfs-run RUNS=$runs
exec python3 - <<'PY'
import os, statistics, subprocess, tempfile, time

runs = int(os.environ["RUNS"])
base = tempfile.mkdtemp(prefix="bench-run.", dir="/dev/shm")
state = os.path.join(base, "state")
os.makedirs(state)

def sh(cmd):
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def fresh(tag):
    d = tempfile.mkdtemp(prefix=tag, dir=base)
    for s in ("u", "w", "m"):
        os.mkdir(os.path.join(d, s))
    return d

BWRAP = "bwrap --bind {m} / --proc /proc --dev /dev --unshare-all --die-with-parent /bin/true"

def unionfs_run():
    subprocess.run([os.environ["RUN"], "--rm", "--", "/bin/true"], check=True,
                   env={**os.environ, "UNIONFS_RUN_DIR": state})

def overlay_bwrap():
    d = fresh("k")
    sh(f"mount -t overlay overlay -o lowerdir=/,upperdir={d}/u,workdir={d}/w {d}/m")
    sh(BWRAP.format(m=f"{d}/m"))
    sh(f"umount {d}/m")

def fuse_overlayfs_bwrap():
    d = fresh("f")
    sh(f"fuse-overlayfs -o lowerdir=/,upperdir={d}/u,workdir={d}/w {d}/m")
    sh(BWRAP.format(m=f"{d}/m"))
    sh(f"fusermount3 -u {d}/m")

def unshare_chroot():
    sh("unshare --mount --pid --uts --ipc --net --fork chroot / /bin/true")

peers = [("unionfs-run", unionfs_run), ("kernel overlay + bwrap", overlay_bwrap),
         ("fuse-overlayfs + bwrap", fuse_overlayfs_bwrap), ("unshare + chroot (no union)", unshare_chroot)]
times = {name: [] for name, _ in peers}
for f in (f for _, f in peers):  # warm-up
    f()
for _ in range(runs):
    for name, f in peers:
        t = time.perf_counter()
        f()
        times[name].append((time.perf_counter() - t) * 1000)
sh(f"rm -rf {base}")
print(f"container start-to-exit, /bin/true, median of {runs} interleaved runs (ms)\n")
print("| launcher | median ms | p90 ms |")
print("|---|---|---|")
for name, _ in peers:
    v = sorted(times[name])
    print(f"| {name} | {statistics.median(v):.1f} | {v[int(len(v) * 0.9) - 1]:.1f} |")
PY
