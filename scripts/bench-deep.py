#!/usr/bin/env python3
"""Deep stacks: the same files spread over 2, 16, 64, 128 lower layers (issue 15, item 3).

  scripts/bench-deep.py build DATA OUT [--layers 2,16,64,128]   (OUT on DATA's file system)
  scripts/bench-deep.py run OUT --data DATA [--layers 2,16,64,128]
                [--systems unionfs,unionfs-base,overlay,floor] [--runs N] [--md FILE]
                [--unionfs-base-bin BIN]   (system unionfs-base: the same rows for an A/B)

`build` spreads DATA/lower/root (the Debian root of `bench.py build`) and DATA/lower/repo (its
git repository) over N layers OUT/N/0 … OUT/N/{N-1} (0 topmost): every file goes to the layer
a hash of its path picks (hard links of DATA's files, no copies), every directory exists in
layer 0 and in each layer that holds something beneath it, so the merged tree is the same for
every N: what floorfs mirrors from DATA/lower directly (the floor does not depend on N).

`run` mounts each system fresh per run (empty upper; runs interleaved, system order rotating)
and measures, in ms:
  stat_cold   `find MNT/root -printf %s` after sync + drop_caches
  stat_warm   the same again right after
  git_first   `git status --porcelain` in MNT/repo on a fresh mount (lower page cache warm)
  open_bottom open + close of each of up to 200 files that only the bottom layer holds
              (fresh mount, lower caches warm; µs per open, dentries cold in the union)
Kernel overlayfs is mounted with relative lowerdir paths from inside OUT/N (128 absolute
paths would pass the 4 KiB mount-data page).
"""
import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-peers"))
from bench import read_files  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def layer_of(rel, n):
    return int.from_bytes(hashlib.blake2b(rel.encode(), digest_size=4).digest(), "little") % n


def build(data, out, layers):
    src = os.path.join(data, "lower")
    for n in layers:
        top = os.path.join(out, str(n))
        stamp = top + ".complete"
        if os.path.exists(stamp):
            continue
        log(f"spreading {src} over {n} layers in {top}")
        shutil.rmtree(top, ignore_errors=True)
        for i in range(n):
            os.makedirs(os.path.join(top, str(i)))
        bottom = []
        for sub in ("root", "repo"):
            for dp, dns, fns in os.walk(os.path.join(src, sub)):
                rel_dir = os.path.relpath(dp, src)
                st = os.lstat(dp)
                # every directory in the top layer, so empty ones exist too
                d0 = os.path.join(top, "0", rel_dir)
                os.makedirs(d0, exist_ok=True)
                for fn in fns + [d for d in dns if os.path.islink(os.path.join(dp, d))]:
                    rel = os.path.join(rel_dir, fn)
                    li = layer_of(rel, n)
                    dst_dir = os.path.join(top, str(li), rel_dir)
                    os.makedirs(dst_dir, exist_ok=True)
                    s = os.path.join(dp, fn)
                    d = os.path.join(dst_dir, fn)
                    if os.path.islink(s):
                        os.symlink(os.readlink(s), d)
                    elif os.path.isfile(s):
                        os.link(s, d)  # OUT on DATA's file system: no copies of the data
                    else:
                        continue  # devices, fifos: left out
                    if li == n - 1 and sub == "root" and os.path.isfile(d):
                        bottom.append(rel)
        # directory modes and times as in the source, in every layer that has the directory
        for i in range(n):
            for dp, dns, _ in os.walk(os.path.join(top, str(i)), topdown=False):
                rel = os.path.relpath(dp, os.path.join(top, str(i)))
                s = os.path.join(src, rel)
                if rel != "." and os.path.isdir(s):
                    st = os.lstat(s)
                    os.chmod(dp, st.st_mode & 0o7777)
                    os.utime(dp, ns=(st.st_atime_ns, st.st_mtime_ns))
        with open(top + ".bottom", "w") as f:
            f.write("\n".join(sorted(bottom)[:200]) + "\n")
        subprocess.run(["sync"], check=True)
        open(stamp, "w").close()


def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def drop_caches():
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)


class Mount:
    def __init__(self, system, out, n, scratch, args):
        self.dir = tempfile.mkdtemp(prefix=f"{system}-{n}-", dir=scratch)
        self.upper, self.work, self.mnt = (os.path.join(self.dir, s) for s in "uwm")
        for d in (self.upper, self.work, self.mnt):
            os.mkdir(d)
        self.proc = None
        top = os.path.join(out, str(n))
        if system in ("unionfs", "unionfs-base"):
            lowers = ":".join(os.path.join(top, str(i)) for i in range(n))
            binary = args.unionfs_bin if system == "unionfs" else args.unionfs_base_bin
            subprocess.run([binary, "mount", lowers, self.upper, self.mnt, "-o",
                            f"workdir={self.work}" + (f",{args.unionfs_opts}" if args.unionfs_opts else "")],
                           check=True)
        elif system == "overlay":
            lowers = ":".join(str(i) for i in range(n))
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={lowers},upperdir={self.upper},workdir={self.work}",
                            self.mnt], check=True, cwd=top)
        elif system == "floor":
            self.proc = subprocess.Popen([args.floorfs_bin, os.path.join(args.data, "lower"),
                                          self.mnt, self.upper], stdout=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while not mounted(self.mnt):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("floorfs did not mount")
                time.sleep(0.02)
        if not mounted(self.mnt):
            raise RuntimeError(f"{system} did not mount")

    def close(self):
        if mounted(self.mnt) and subprocess.run(["umount", self.mnt]).returncode != 0:
            subprocess.run(["umount", "-l", self.mnt])
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        subprocess.run(["rm", "-rf", "--one-file-system", self.dir])


def timed(cmd, cwd=None):
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr[:200]!r}")
    return dt * 1000, p.stdout


OPEN_BOTTOM = r"""
import os, sys, time
paths = [l for l in open(sys.argv[2]).read().split("\n") if l]
t = time.perf_counter()
for p in paths:
    os.close(os.open(os.path.join(sys.argv[1], p), os.O_RDONLY))
print((time.perf_counter() - t) * 1e6 / len(paths))
"""


def run_one(system, out, n, scratch, args, res):
    key = lambda m: (m, system, n)
    top = os.path.join(out, str(n))
    m = Mount(system, out, n, scratch, args)
    try:
        drop_caches()
        dt, o1 = timed(["find", os.path.join(m.mnt, "root"), "-printf", "%s\n"])
        res.setdefault(key("stat_cold"), []).append(dt)
        dt, o2 = timed(["find", os.path.join(m.mnt, "root"), "-printf", "%s\n"])
        res.setdefault(key("stat_warm"), []).append(dt)
        if o1 != o2 or len(o1.splitlines()) < 1000:
            raise RuntimeError("stat walks disagree or saw too little")
    finally:
        m.close()
    m = Mount(system, out, n, scratch, args)
    try:
        read_files(top if system != "floor" else os.path.join(args.data, "lower", "repo"))
        dt, o = timed(["git", "status", "--porcelain"], cwd=os.path.join(m.mnt, "repo"))
        if o.strip():
            raise RuntimeError(f"git status not clean on {system} {n}: {o[:200]!r}")
        res.setdefault(key("git_first"), []).append(dt)
    finally:
        m.close()
    m = Mount(system, out, n, scratch, args)
    try:
        bottom = top + ".bottom"
        _, o = timed([sys.executable, "-c", OPEN_BOTTOM, m.mnt, bottom])
        res.setdefault(key("open_bottom"), []).append(float(o))
    finally:
        m.close()


METRICS = [("stat_cold", "stat walk, cold (ms)"), ("stat_warm", "stat walk, warm (ms)"),
           ("git_first", "`git status`, first (ms)"),
           ("open_bottom", "open of a bottom-layer file, cold dentry (µs)")]


def run(args):
    out = os.path.abspath(args.out)
    layers = [int(x) for x in args.layers.split(",")]
    systems = args.systems.split(",")
    scratch = tempfile.mkdtemp(prefix="deep-runs-", dir=out)
    res = {}
    try:
        combos = [(s, n) for n in layers for s in systems if not (s == "floor" and n != layers[0])]
        for rep in range(args.runs):
            k = rep % len(combos)
            for s, n in combos[k:] + combos[:k]:
                run_one(s, out, n, scratch, args, res)
                log(f"run {rep + 1}/{args.runs}: {s} {n} layers done")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    L = [f"\nDeep stacks, medians of {args.runs} interleaved runs (min–max); growth = "
         f"{layers[-1]} layers ÷ {layers[0]} layers\n"]
    cols = [(s, n) for s in systems for n in layers if not (s == "floor" and n != layers[0])]
    L.append("| workload | " + " | ".join(f"{s} {n}" if s != "floor" else "floor"
                                          for s, n in cols) + " | " +
             " | ".join(f"{s} growth" for s in systems if s != "floor") + " |")
    L.append("|---|" + "---|" * (len(cols) + len([s for s in systems if s != "floor"])))
    for mk, label in METRICS:
        cells = []
        for s, n in cols:
            v = res.get((mk, s, n))
            cells.append(f"{statistics.median(v):.0f} ({min(v):.0f}–{max(v):.0f})" if v else "—")
        for s in systems:
            if s == "floor":
                continue
            a, b = res.get((mk, s, layers[0])), res.get((mk, s, layers[-1]))
            cells.append(f"{statistics.median(b) / statistics.median(a):.2f}" if a and b else "—")
        L.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(L) + "\n"
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("data")
    b.add_argument("out")
    b.add_argument("--layers", default="2,16,64,128")
    r = sub.add_parser("run")
    r.add_argument("out")
    r.add_argument("--data", help="the DATA of build, for the floor (mirrors DATA/lower)")
    r.add_argument("--layers", default="2,16,64,128")
    r.add_argument("--systems", default="unionfs,overlay,floor")
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--unionfs-opts", default="")
    r.add_argument("--md")
    r.add_argument("--unionfs-bin", default=os.environ.get(
        "UNIONFS_BIN", os.path.join(HERE, "..", "target", "release", "unionfs")))
    r.add_argument("--unionfs-base-bin", help="the binary of system unionfs-base (an A/B)")
    r.add_argument("--floorfs-bin", default=os.environ.get(
        "FLOORFS_BIN", os.path.join(HERE, "..", "target", "release", "examples", "floorfs")))
    a = ap.parse_args()
    if a.cmd == "build":
        build(a.data, a.out, [int(x) for x in a.layers.split(",")])
    else:
        if "floor" in a.systems and not a.data:
            raise SystemExit("bench-deep: the floor needs --data")
        run(a)


if __name__ == "__main__":
    main()
