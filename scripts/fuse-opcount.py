#!/usr/bin/env python3
"""Counts the FUSE requests a workload makes, by opcode: the instrument of "first touches".

  scripts/fuse-opcount.py count MOUNTPOINT [--pid PID] -- COMMAND [ARGS...]
  scripts/fuse-opcount.py table DATA [--systems unionfs,unionfs:OPTS,unionfs-base,floor,fuse-overlayfs]
                                     [--runs N] [--unionfs-base-bin BIN]
                                     [--unionfs-opts OPTS] [--workloads a,b] [--md FILE]

`count` runs COMMAND and prints how many requests of each opcode the kernel sent to the FUSE
connection of MOUNTPOINT meanwhile (any FUSE daemon: unionfs, floorfs, fuse-overlayfs), the
wall time, and with --pid the daemon's CPU time (user + system, all threads) over the command.

`table` mounts each system fresh over DATA (the layout `scripts/bench-peers.sh` builds:
DATA/lower/{root,repo}, DATA/root.tar; `bench.py build DATA ROOTFS 1` makes a small one) and
prints one Markdown table per workload, opcode × system: cold `find` names, cold stat walk
(`find -printf %s`), first `git status` (fresh mount), untar of DATA/root.tar into the mount,
`rm -rf` of that tree. With --runs N each cell is the median of N runs (counts of cold
workloads are stable; git's parallel threads make its count vary a little).

How: the kernel's `fuse:fuse_request_send` tracepoint (kernel >= 6.15; fs/fuse/fuse_trace.h),
in a tracing instance of our own (the global buffer is left alone) filtered on the mount's
connection (its st_dev), the events read back from the instance's buffer after the command.
FORGET/BATCH_FORGET go through the kernel's forget queue, not this tracepoint, and are not
counted. Needs root and tracefs (mounted at /sys/kernel/tracing if it is not).
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-peers"))
from bench import fuse_daemons_of, read_files  # noqa: E402

TRACEFS = "/sys/kernel/tracing"
EVENT = "events/fuse/fuse_request_send"
LINE = re.compile(r"opcode \d+ \((\w+)\)")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ensure_tracefs():
    if not os.path.exists(os.path.join(TRACEFS, "instances")):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True)
    if not os.path.exists(os.path.join(TRACEFS, EVENT)):
        raise SystemExit("fuse-opcount: this kernel has no fuse:fuse_request_send tracepoint")


def wr(path, text):
    with open(path, "w") as f:
        f.write(text)


def cpu_ms(pid):
    """User + system CPU of a whole process (all its threads), ms."""
    if not pid:
        return None
    # schedstat's first field: nanoseconds on a CPU, per thread (/proc/PID/stat counts
    # 10 ms ticks, too coarse for a workload of a few hundred ms). Threads that ended
    # meanwhile are not counted; the daemons' threads live as long as the mount.
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e6


class Tracer:
    """fuse_request_send events of one connection, in a tracing instance of our own."""

    def __init__(self, mountpoint):
        ensure_tracefs()
        # The tracepoint's `connection` is the super block's dev_t in the kernel's encoding
        # (major << 20 | minor); FUSE mounts have major 0.
        st = os.stat(mountpoint)
        self.conn = (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
        self.dir = tempfile.mkdtemp(prefix="fuse-opcount-", dir=os.path.join(TRACEFS, "instances"))
        # mkdtemp made a directory in tracefs: that is the instance
        wr(os.path.join(self.dir, "buffer_size_kb"), "32768")
        wr(os.path.join(self.dir, EVENT, "filter"), f"connection == {self.conn}")

    def __enter__(self):
        wr(os.path.join(self.dir, "trace"), "")
        wr(os.path.join(self.dir, EVENT, "enable"), "1")
        return self

    def __exit__(self, *exc):
        wr(os.path.join(self.dir, EVENT, "enable"), "0")

    def counts(self):
        lost = 0
        cpus = os.path.join(self.dir, "per_cpu")
        for c in os.listdir(cpus):
            with open(os.path.join(cpus, c, "stats")) as f:
                for line in f:
                    if line.startswith("overrun:"):
                        lost += int(line.split()[1])
        if lost:
            raise RuntimeError(f"trace buffer overran: {lost} events lost")
        out = {}
        with open(os.path.join(self.dir, "trace")) as f:
            for line in f:
                m = LINE.search(line)
                if m:
                    op = m.group(1).removeprefix("FUSE_")
                    out[op] = out.get(op, 0) + 1
        return out

    def close(self):
        os.rmdir(self.dir)


def count(mountpoint, cmd, pid=None, cwd=None):
    """Runs cmd; returns ({opcode: n}, wall s, daemon cpu ms or None)."""
    tr = Tracer(mountpoint)
    try:
        c0 = cpu_ms(pid)
        with tr:
            t = time.perf_counter()
            p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            wall = time.perf_counter() - t
        c1 = cpu_ms(pid)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: "
                               f"{p.stderr.decode(errors='replace').strip()[:200]}")
        return tr.counts(), wall, (c1 - c0 if c0 is not None and c1 is not None else None)
    finally:
        tr.close()


def print_counts(counts, wall, cpu):
    for op, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"{op:16} {n:8}")
    print(f"{'total':16} {sum(counts.values()):8}")
    print(f"{'wall ms':16} {wall * 1000:8.1f}")
    if cpu is not None:
        print(f"{'daemon cpu ms':16} {cpu:8.1f}")


# ---------------------------------------------------------------------------
# table: the first-touch workloads on each system

def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def wait_mounted(path, proc=None, timeout=30):
    deadline = time.monotonic() + timeout
    while not mounted(path):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not mount")
        time.sleep(0.02)


def daemon_pid(mnt):
    """The process serving the FUSE mount at mnt (the peer benchmark's scan:
    by the /dev/fuse it holds and mnt among its arguments, not by name)."""
    return min(fuse_daemons_of(mnt), default=None)


class Mount:
    """One system mounted fresh over DATA/lower with an empty upper."""

    def __init__(self, system, lower, base, args):
        self.system = system
        self.dir = tempfile.mkdtemp(prefix=f"{system.partition(':')[0]}-", dir=base)
        self.upper, self.work, self.mnt = (os.path.join(self.dir, s) for s in "uwm")
        for d in (self.upper, self.work, self.mnt):
            os.mkdir(d)
        self.proc = None
        name = system.partition(":")[0]
        if name in ("unionfs", "unionfs-base"):
            # `unionfs:OPTS` is a variant with mount options of its own (an A/B
            # in one run: `--systems unionfs,unionfs:readdirplus=all,floor`);
            # `unionfs-base` is the binary of --unionfs-base-bin (an older build)
            binary = args.unionfs_bin if name == "unionfs" else args.unionfs_base_bin
            if not binary:
                raise SystemExit("fuse-opcount: unionfs-base needs --unionfs-base-bin")
            opts = [o for o in (args.unionfs_opts, system.partition(":")[2]) if o]
            subprocess.run([binary, "mount", lower, self.upper, self.mnt, "-o",
                            ",".join([f"workdir={self.work}"] + opts)],
                           check=True)
            self.pid = daemon_pid(self.mnt)
        elif system == "floor":
            self.proc = subprocess.Popen([args.floorfs_bin, lower, self.mnt, self.upper],
                                         stdout=subprocess.DEVNULL)
            wait_mounted(self.mnt, self.proc)
            self.pid = self.proc.pid
        elif system == "fuse-overlayfs":
            subprocess.run(["fuse-overlayfs", "-o",
                            f"lowerdir={lower},upperdir={self.upper},workdir={self.work}", self.mnt],
                           check=True)
            self.pid = daemon_pid(self.mnt)
        else:
            raise SystemExit(f"fuse-opcount: unknown system {system}")
        wait_mounted(self.mnt)

    def close(self):
        if mounted(self.mnt):
            if subprocess.run(["umount", self.mnt]).returncode != 0:
                subprocess.run(["umount", "-l", self.mnt])
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        subprocess.run(["rm", "-rf", "--one-file-system", self.dir])


def drop_caches():
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)


def w_find(m, data):
    drop_caches()
    return count(m.mnt, ["find", m.mnt], m.pid)


def w_stat(m, data):
    drop_caches()
    return count(m.mnt, ["find", m.mnt, "-printf", "%s\n"], m.pid)


def w_git(m, data):
    read_files(os.path.join(data, "lower", "repo"))  # lower page cache warm, the mount fresh
    return count(m.mnt, ["git", "status", "--porcelain"], m.pid, cwd=os.path.join(m.mnt, "repo"))


def w_untar_rm(m, data):
    tarball = os.path.join(data, "root.tar")
    read_files(tarball)
    target = os.path.join(m.mnt, "untar")
    os.mkdir(target)
    a = count(m.mnt, ["tar", "-C", target, "-xf", tarball], m.pid)
    subprocess.run(["sync"], check=True)
    b = count(m.mnt, ["rm", "-rf", target], m.pid)
    return a, b


WORKLOADS = {
    "find": ("`find` names, cold", w_find),
    "stat": ("stat walk (`find -printf %s`), cold", w_stat),
    "git": ("`git status`, first (fresh mount)", w_git),
    "untar": ("untar into the mount", None),
    "rm": ("`rm -rf` of the untarred tree", None),
}


def table(args):
    ensure_tracefs()
    data = os.path.abspath(args.data)
    lower = os.path.join(data, "lower")
    systems = args.systems.split(",")
    wls = args.workloads.split(",")
    base = tempfile.mkdtemp(prefix="opcount-runs-", dir=args.scratch or data)
    res = {}  # (workload, system) -> list of (counts, wall, cpu)
    try:
        for rep in range(args.runs):
            for s in systems[rep % len(systems):] + systems[:rep % len(systems)]:
                for w in wls:
                    if w == "rm":
                        continue
                    m = Mount(s, lower, base, args)
                    try:
                        if w == "untar":
                            a, b = w_untar_rm(m, data)
                            res.setdefault(("untar", s), []).append(a)
                            if "rm" in wls:
                                res.setdefault(("rm", s), []).append(b)
                        else:
                            res.setdefault((w, s), []).append(WORKLOADS[w][1](m, data))
                    finally:
                        m.close()
                    log(f"run {rep + 1}/{args.runs} {s} {w} done")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if "rm" in wls and "untar" not in wls:
        raise SystemExit("fuse-opcount: rm needs untar")

    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    L = []
    for w in wls:
        rows = {s: res.get((w, s), []) for s in systems}
        ops = sorted({op for s in systems for r in rows[s] for op in r[0]},
                     key=lambda op: -max(med([r[0].get(op, 0) for r in rows[s]]) or 0
                                         for s in systems))
        L.append(f"\n{WORKLOADS[w][0]} — requests by opcode (median of {args.runs})\n")
        L.append("| opcode | " + " | ".join(systems) + " |")
        L.append("|---|" + "---|" * len(systems))
        for op in ops:
            L.append(f"| {op} | " + " | ".join(
                f"{med([r[0].get(op, 0) for r in rows[s]]):.0f}" for s in systems) + " |")
        L.append("| **total** | " + " | ".join(
            f"**{med([sum(r[0].values()) for r in rows[s]]):.0f}**" for s in systems) + " |")

        def rng(vals, f):
            vals = [v for v in vals if v is not None]
            if not vals:
                return "—"
            return f"{f(statistics.median(vals))} ({f(min(vals))}–{f(max(vals))})"
        L.append("| wall ms | " + " | ".join(
            rng([r[1] * 1000 for r in rows[s]], lambda v: f"{v:.0f}") for s in systems) + " |")
        L.append("| daemon CPU ms | " + " | ".join(
            rng([r[2] for r in rows[s]], lambda v: f"{v:.0f}") for s in systems) + " |")
    text = "\n".join(L) + "\n"
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)


def main():
    if os.geteuid() != 0:
        raise SystemExit("fuse-opcount: needs root (tracefs)")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("count")
    c.add_argument("mountpoint")
    c.add_argument("--pid", type=int)
    # the command is everything after `--`, split off before parsing (an
    # argparse REMAINDER would also swallow options given after MOUNTPOINT)
    t = sub.add_parser("table")
    t.add_argument("data")
    t.add_argument("--systems", default="unionfs,floor")
    t.add_argument("--workloads", default="find,stat,git,untar,rm")
    t.add_argument("--runs", type=int, default=1)
    t.add_argument("--unionfs-opts", default="")
    t.add_argument("--scratch", help="where mounts and uppers go (default: DATA)")
    t.add_argument("--md", help="also write the tables to this file")
    here = os.path.dirname(os.path.abspath(__file__))
    t.add_argument("--unionfs-bin", default=os.environ.get(
        "UNIONFS_BIN", os.path.join(here, "..", "target", "release", "unionfs")))
    t.add_argument("--unionfs-base-bin", help="the binary of the unionfs-base system")
    t.add_argument("--floorfs-bin", default=os.environ.get(
        "FLOORFS_BIN", os.path.join(here, "..", "target", "release", "examples", "floorfs")))
    argv = sys.argv[1:]
    cmd = []
    if argv[:1] == ["count"] and "--" in argv:
        at = argv.index("--")
        argv, cmd = argv[:at], argv[at + 1:]
    a = ap.parse_args(argv)
    if a.cmd == "count":
        if not cmd:
            raise SystemExit("fuse-opcount: count needs a command after --")
        print_counts(*count(a.mountpoint, cmd, a.pid))
    else:
        table(a)


if __name__ == "__main__":
    main()
