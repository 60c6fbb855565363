#!/usr/bin/env python3
"""Peer benchmark driver, run by scripts/bench-peers.sh (read that first).

Subcommands:
  build CACHE ROOTFS QUICK      build the lower data set once into CACHE
  run                           run the benchmark (configuration in environment variables)
  chart JSON SVG                redraw the chart of a finished run from its .json
  op NAME ARGS...               one timed operation in a child process (so a hung FUSE
                                call is killed by the per-workload time limit, not us)

Everything is standard library only.
"""
import json
import os
import stat
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time

MiB = 1 << 20

# ---------------------------------------------------------------------------
# Data set sizes. The cache stamp records these, so a change rebuilds.

SIZES = {
    "full": dict(big_mib=1024, repo_files=5000, small_files=1000,
                 rd_bottom=7000, rd_top=5000, rd_overlap=1000, rd_whiteouts=1000,
                 tar_subdir="."),
    "quick": dict(big_mib=128, repo_files=1000, small_files=200,
                  rd_bottom=1400, rd_top=1000, rd_overlap=200, rd_whiteouts=200,
                  tar_subdir="usr/share"),
}


def rd_merged(c):
    return c["rd_bottom"] + c["rd_top"] - c["rd_overlap"] - c["rd_whiteouts"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sh(cmd, timeout=None, **kw):
    """Runs a command (list or shell string), raises with its stderr on failure."""
    p = subprocess.run(cmd, shell=isinstance(cmd, str), timeout=timeout,
                       stdout=kw.pop("stdout", subprocess.DEVNULL),
                       stderr=subprocess.PIPE, **kw)
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{cmd if isinstance(cmd, str) else ' '.join(cmd)}: exit {p.returncode}"
                           + (f": {err[-1]}" if err else ""))
    return p


# ---------------------------------------------------------------------------
# Child operations: each prints its own elapsed seconds (and maybe more) as JSON.

def op_main(name, args):
    t0 = time.perf_counter()
    out = {}
    if name == "firstwrite":            # open an existing file, write 1 byte at offset 1, close
        for p in args:
            fd = os.open(p, os.O_WRONLY)
            os.pwrite(fd, b"!", 1)
            os.close(fd)
    elif name == "copywrite":           # native stand-in for copy-up: copy SRC to DST, then write
        for i in range(0, len(args), 2):
            shutil.copyfile(args[i], args[i + 1])
            fd = os.open(args[i + 1], os.O_WRONLY)
            os.pwrite(fd, b"!", 1)
            os.close(fd)
    elif name == "firstwrite-dir":      # first write to every file of DIR, sorted by name
        d = args[0]
        names = sorted(os.listdir(d))
        t0 = time.perf_counter()        # the listing is not part of the per-op cost
        for n in names:
            fd = os.open(os.path.join(d, n), os.O_WRONLY)
            os.pwrite(fd, b"!", 1)
            os.close(fd)
        out["n"] = len(names)
    elif name == "copywrite-dir":       # native stand-in: copy every file of SRC into DST, write
        src, dst = args
        names = sorted(os.listdir(src))
        t0 = time.perf_counter()
        for n in names:
            shutil.copyfile(os.path.join(src, n), os.path.join(dst, n))
            fd = os.open(os.path.join(dst, n), os.O_WRONLY)
            os.pwrite(fd, b"!", 1)
            os.close(fd)
        out["n"] = len(names)
    elif name == "listdir":             # readdir of one directory, names only
        out["n"] = len(os.listdir(args[0]))
    elif name == "seqread":             # read a whole file in 1 MiB blocks
        buf = bytearray(MiB)
        mv = memoryview(buf)
        total = 0
        with open(args[0], "rb", buffering=0) as f:
            while True:
                k = f.readinto(mv)
                if not k:
                    break
                total += k
        out["bytes"] = total
    elif name == "readall":             # warm the page cache: read every file under DIRs
        read_files(*args)
    else:
        raise SystemExit(f"unknown op {name}")
    out["s"] = time.perf_counter() - t0
    print(json.dumps(out))


# ---------------------------------------------------------------------------
# Data set

def write_det(path, rnd, size):
    with open(path, "wb") as f:
        f.write(rnd.randbytes(size))


def build_dataset(cache, rootfs, mode):
    c = SIZES[mode]
    stamp = os.path.join(cache, ".complete")
    want = json.dumps(c, sort_keys=True)
    if os.path.exists(stamp) and open(stamp).read() == want:
        return
    log(f"building the {mode} data set in {cache} (once)")
    if os.path.exists(cache):
        sh(["rm", "-rf", "--one-file-system", cache])
    os.makedirs(cache)
    lower = os.path.join(cache, "lower")
    os.makedirs(lower)

    # 1. the Debian minbase root, and a tarball of it (or of a part, in quick mode) to untar
    sh(["cp", "-a", rootfs, os.path.join(lower, "root")])
    sh(["tar", "-C", os.path.join(lower, "root", c["tar_subdir"]), "-cf",
        os.path.join(cache, "root.tar"), "."])

    # 2. the big file, deterministic pseudo-random bytes
    rnd = random.Random(1)
    with open(os.path.join(lower, "big.bin"), "wb") as f:
        for _ in range(c["big_mib"]):
            f.write(rnd.randbytes(MiB))

    # 3. small files for per-op copy-up
    small = os.path.join(lower, "small")
    os.makedirs(small)
    rnd = random.Random(2)
    for i in range(c["small_files"]):
        write_det(os.path.join(small, f"s{i:05d}"), rnd, 4096)

    # 4. a git repository of deterministic text files
    repo = os.path.join(lower, "repo")
    words = ("alpha beta gamma delta union branch lower upper whiteout opaque inode "
             "dentry page cache fuse kernel read write rename link").split()
    past = 1577836800  # 2020-01-01: older than the index, so no entry is "racily clean"
    for i in range(c["repo_files"]):
        d = os.path.join(repo, f"m{i % 50:02d}", f"p{(i // 50) % 10}")
        os.makedirs(d, exist_ok=True)
        rnd = random.Random(1000 + i)
        lines = [" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 12)))
                 for _ in range(rnd.randint(5, 200))]
        p = os.path.join(d, f"f{i:05d}.txt")
        with open(p, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.utime(p, (past, past))
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.invalid",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid",
               GIT_AUTHOR_DATE="2020-01-01T00:00:00Z", GIT_COMMITTER_DATE="2020-01-01T00:00:00Z")
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "bench data"], ["git", "gc", "-q"],
                ["git", "update-index", "--refresh"], ["git", "status", "--porcelain"]):
        sh(cmd, cwd=repo, env=env)

    # 5. the readdir pair: bottom, top with overlay (char 0:0) whiteouts, the same top with
    #    unionfs-fuse's whiteouts (.unionfs-fuse/d/NAME_HIDDEN~), and the merged result on ext4
    rd = os.path.join(cache, "rd")
    B, T, O, W = c["rd_bottom"], c["rd_top"], c["rd_overlap"], c["rd_whiteouts"]
    for sub in ("bottom/d", "top/d", "top-uf/d", "top-uf/.unionfs-fuse/d", "native/d"):
        os.makedirs(os.path.join(rd, sub))
    for i in range(B):
        open(os.path.join(rd, "bottom/d", f"n{i:05d}"), "w").close()
    for i in range(B - O, B - O + T):
        for top in ("top", "top-uf"):
            open(os.path.join(rd, top, "d", f"n{i:05d}"), "w").close()
    for i in range(W):
        os.mknod(os.path.join(rd, "top/d", f"n{i:05d}"), 0o20000, os.makedev(0, 0))
        open(os.path.join(rd, "top-uf/.unionfs-fuse/d", f"n{i:05d}_HIDDEN~"), "w").close()
    for i in range(W, B - O + T):
        open(os.path.join(rd, "native/d", f"n{i:05d}"), "w").close()
    assert len(os.listdir(os.path.join(rd, "native/d"))) == rd_merged(c)

    sh("sync")
    with open(stamp, "w") as f:
        f.write(want)


# ---------------------------------------------------------------------------
# Systems under test

class Fail(Exception):
    pass


def read_files(*tops):
    """Reads every regular file under each of tops (or tops that are files), to warm the
    page cache. Symlinks are not followed and nothing else is opened: a Debian root's
    dev/stdout -> /proc/self/fd/1 would read the reader's own output pipe, a FIFO would
    block."""
    def paths(top):
        if not os.path.isdir(top) or os.path.islink(top):
            yield top
            return
        for dp, _, fs in os.walk(top):
            for f in fs:
                yield os.path.join(dp, f)
    for top in tops:
        for p in paths(top):
            try:
                fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    while os.read(fd, MiB):
                        pass
            except OSError:
                pass
            finally:
                os.close(fd)


def fuse_daemons_of(mnt):
    """The processes serving the FUSE mount at mnt: those holding /dev/fuse
    open with mnt among their arguments. By what they hold, not by name: a
    binary run under another name (a copy, a wrapper) is found all the same."""
    out = set()
    for p in os.listdir("/proc"):
        if not p.isdigit() or mnt not in argv_of(p):
            continue
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{p}/fd/{fd}") == "/dev/fuse":
                    out.add(int(p))
                    break
            except OSError:
                pass
    return out


def argv_of(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")]
    except OSError:
        return []


def mountinfo(path):
    """The mountinfo line fields of the mount at path, or None."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fs = line.split()
            if fs[4] == path:
                return fs
    return None


def fuse_abort(mnt):
    fs = mountinfo(mnt)
    if fs and fs[fs.index("-") + 1].startswith("fuse"):
        minor = fs[2].split(":")[1]
        try:
            with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as f:
                f.write("1")
        except OSError:
            pass


class System:
    """A union (or native ext4) mounted fresh per run; tracks its daemon pid
    (`daemon`: the system has one, whatever the name its binary runs under)."""

    def __init__(self, key, label, daemon=None):
        self.key, self.label, self.daemon = key, label, daemon

    def mount_cmd(self, lowers, upper, work, mnt):
        raise NotImplementedError

    def mount(self, lowers, upper, work, mnt, timeout):
        sh(self.mount_cmd(lowers, upper, work, mnt), timeout=timeout)
        if not mountinfo(mnt):
            raise Fail("mount command succeeded but nothing is mounted")
        self.pid = None
        if self.daemon:
            found = fuse_daemons_of(mnt)
            self.pid = found.pop() if len(found) == 1 else None
            if self.pid:
                with open(os.path.join(RUN_DIR, "daemon-pids"), "a") as f:
                    f.write(f"{self.pid}\n")

    def unmount(self, mnt, timeout=60):
        if not mountinfo(mnt):
            return
        try:
            sh(self.umount_cmd(mnt), timeout=timeout)
        except Exception:
            fuse_abort(mnt)
            subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
        if self.pid:  # wait for the daemon to go, then make sure it did
            for _ in range(100):
                if not os.path.exists(f"/proc/{self.pid}") or \
                        open(f"/proc/{self.pid}/stat").read().split(") ")[1][0] == "Z":
                    break
                time.sleep(0.05)
            else:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except OSError:
                    pass

    def umount_cmd(self, mnt):
        return ["umount", mnt]

    def status_mib(self, key):
        if not self.pid:
            raise Fail("daemon process not found")
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        raise Fail(f"no {key}")

    def hwm_mib(self):
        return self.status_mib("VmHWM")

    def hwm_unlocked_mib(self):
        """Peak RSS less the pages the daemon keeps locked (unionfs locks its
        code and read-only data: file pages shared by every daemon of the same
        binary, resident from the start, so the peak includes all of them)."""
        try:
            locked = self.status_mib("VmLck")
        except Fail:
            locked = 0.0
        return self.hwm_mib() - locked


class Native(System):
    def mount(self, lowers, upper, work, mnt, timeout):
        self.pid = None

    def unmount(self, mnt, timeout=60):
        pass


class Overlay(System):
    def mount_cmd(self, lowers, upper, work, mnt):
        return ["mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work},"
                "redirect_dir=on,index=on", mnt]


class FuseOverlayfs(System):
    def mount_cmd(self, lowers, upper, work, mnt):
        return ["fuse-overlayfs", "-o", f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}", mnt]

    def umount_cmd(self, mnt):
        return ["fusermount3", "-u", mnt]


class UnionfsFuse(System):
    def mount_cmd(self, lowers, upper, work, mnt):
        # its own whiteout format: the readdir pair has a top layer made for it
        lowers = [l.replace("/rd/top", "/rd/top-uf") for l in lowers]
        return ["unionfs-fuse", "-o", "cow,allow_other",
                ":".join([f"{upper}=RW"] + [f"{l}=RO" for l in lowers]), mnt]

    def umount_cmd(self, mnt):
        return ["fusermount3", "-u", mnt]


class Unionfs(System):
    def __init__(self, key, label, daemon=None, opts=""):
        super().__init__(key, label, daemon)
        self.opts = opts

    def mount_cmd(self, lowers, upper, work, mnt):
        return [BIN, "mount", ":".join(lowers), upper, mnt, "-o", f"workdir={work}{self.opts}"]

    def umount_cmd(self, mnt):
        return [BIN, "umount", mnt]


class FloorFs(System):
    """examples/floorfs.rs: answers from memory what the lower holds; the FUSE floor.

    It mirrors one directory (the merged result for the readdir pair), runs in the
    foreground until unmounted, and cannot copy up (its lower files are read-only).
    """
    skip = {"copyup-big", "copyup-small"}

    def __init__(self, key, label, uring=False, spin=0):
        super().__init__(key, label)
        self.uring, self.spin = uring, spin

    def mount(self, lowers, upper, work, mnt, timeout):
        src = os.path.join(RD, "native") if lowers[0].endswith("/rd/top") else lowers[0]
        self.pid = None
        if self.uring:  # as unionfs -o uring=on does; the script puts it back at exit
            with open("/sys/module/fuse/parameters/enable_uring", "w") as f:
                f.write("Y")
        cmd = [FLOOR_BIN, src, mnt, upper, f"spin={self.spin}"] + (["uring"] if self.uring else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not mountinfo(mnt):
            if self.proc.poll() is not None:
                raise Fail(f"floorfs exit {self.proc.returncode}: "
                           f"{self.proc.stderr.read().decode(errors='replace').strip()[:200]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise Fail("floorfs did not mount")
            time.sleep(0.02)

    def unmount(self, mnt, timeout=60):
        super().unmount(mnt, timeout)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---------------------------------------------------------------------------
# Metrics: (key, label, unit, baseline system: the row's ratios are relative to it; None = absolute)

METRICS = [
    ("find_cold", "`find` names, cold", "s", "native"),
    ("find_warm", "`find` names, warm", "s", "native"),
    ("stat_cold", "stat walk (`find -printf %s`), cold", "s", "native"),
    ("stat_warm", "stat walk, warm", "s", "native"),
    ("seq_read", "sequential read, 1 MiB blocks (warm)", "s", "native"),
    ("rand1", "random read 4 KiB, 1 job (warm)", "kIOPS", "native"),
    ("rand2", "random read 4 KiB, 2 jobs (warm)", "kIOPS", "native"),
    ("untar", "untar the root into the mount", "s", "overlay"),
    ("rm", "`rm -rf` of the untarred tree", "s", "overlay"),
    ("readdir", "readdir of the merged dir with whiteouts (cold)", "ms", "overlay"),
    ("git_first", "`git status`, first (fresh mount)", "s", "overlay"),
    ("git_warm", "`git status`, warm", "s", "overlay"),
    ("copyup_big", "copy-up of the big file (first write, lower cached)", "s", "overlay"),
    ("copyup_small", "copy-up of a 4 KiB file, per op", "ms/op", "overlay"),
    ("rss", "daemon peak RSS (VmHWM) after walk + untar", "MiB", None),
    ("rss_unlocked", "same, less locked pages (VmHWM − VmLck)", "MiB", None),
]
HIGHER_IS_BETTER = {"rand1", "rand2"}  # ratios are still "time": baseline / this


class Run:
    """One (workload group, system, repetition): a fresh mount over the lowers."""

    def __init__(self, system, group, rep, timeout):
        self.sys, self.group = system, group
        sh("sync")  # no write-back left over from the previous run
        self.deadline = time.monotonic() + timeout
        self.dir = os.path.join(RUN_DIR, f"{group}-{system.key}-{rep}")
        self.upper, self.work, self.mnt = (os.path.join(self.dir, s) for s in ("u", "w", "m"))
        for d in (self.upper, self.work, self.mnt):
            os.makedirs(d)

    def left(self):
        t = self.deadline - time.monotonic()
        if t <= 0:
            raise Fail("time limit")
        return t

    def mount(self, lowers):
        self.lowers = lowers
        self.sys.mount(lowers, self.upper, self.work, self.mnt, min(self.left(), 60))
        # where the merged view is: the lower itself for native ext4
        self.root = lowers[0] if isinstance(self.sys, Native) else self.mnt

    def timed(self, cmd, cwd=None, check_out=None):
        """Wall time of an external command."""
        t = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=cwd, timeout=self.left(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        except subprocess.TimeoutExpired:
            raise Fail(f"time limit ({' '.join(cmd[:2])})")
        dt = time.perf_counter() - t
        if p.returncode != 0:
            err = p.stderr.decode(errors="replace").strip().splitlines()
            raise Fail(f"{cmd[0]} exit {p.returncode}" + (f": {err[0][:200]}" if err else ""))
        if check_out is not None:
            check_out(p.stdout)
        return dt

    def op(self, name, *args):
        """A child-process operation; returns its JSON result."""
        try:
            p = subprocess.run([sys.executable, HELPER, "op", name, *args], timeout=self.left(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except subprocess.TimeoutExpired:
            raise Fail(f"time limit ({name})")
        if p.returncode != 0:
            err = p.stderr.decode(errors="replace").strip().splitlines()
            raise Fail(f"{name}: " + (err[-1][:200] if err else f"exit {p.returncode}"))
        return json.loads(p.stdout)

    def close(self):
        try:
            self.sys.unmount(self.mnt)
        finally:
            if mountinfo(self.mnt):
                raise RuntimeError(f"{self.mnt} is still mounted; not removing {self.dir}")
            sh(["rm", "-rf", "--one-file-system", self.dir])


def drop_caches():
    sh("sync; echo 3 > /proc/sys/vm/drop_caches")


def fio_kiops(run, path, jobs):
    cmd = ["fio", "--name=rr", f"--filename={path}", "--readonly", "--invalidate=0",
           "--rw=randread", "--bs=4k", "--ioengine=psync", f"--numjobs={jobs}",
           "--time_based", f"--runtime={FIO_RUNTIME}", "--group_reporting",
           "--output-format=json"]
    out = {}
    run.timed(cmd, check_out=lambda o: out.update(json.loads(o[o.index(b"{"):])))
    job = out["jobs"][0]
    if job.get("error"):
        raise Fail(f"fio error {job['error']}")
    return job["read"]["iops"] / 1000


# ---------------------------------------------------------------------------
# Workload groups: each mounts fresh and yields (metric, value) as it goes, so a failure
# late in a group keeps the values measured before it.

def g_walk_names(run):
    run.mount([LOWER])
    drop_caches()
    yield "find_cold", run.timed(["find", run.root])
    yield "find_warm", run.timed(["find", run.root])


def g_walk_stat(run):
    run.mount([LOWER])
    drop_caches()
    yield "stat_cold", run.timed(["find", run.root, "-printf", "%s\n"])
    yield "stat_warm", run.timed(["find", run.root, "-printf", "%s\n"])


def g_read(run):
    run.mount([LOWER])
    big = os.path.join(run.root, "big.bin")
    r = run.op("seqread", big)  # warm-up (through the mount)
    if r["bytes"] != CONF["big_mib"] * MiB:
        raise Fail(f"read {r['bytes']} bytes")
    yield "seq_read", run.op("seqread", big)["s"]
    yield "rand1", fio_kiops(run, big, 1)
    yield "rand2", fio_kiops(run, big, 2)


def g_untar(run):
    run.mount([LOWER])
    run.op("readall", TARBALL)
    run.timed(["find", run.root, "-printf", "%s\n"])  # the walk the RSS figure includes
    if isinstance(run.sys, Native):
        target = os.path.join(run.dir, "native-untar")
    else:
        target = os.path.join(run.root, "untar")
    os.mkdir(target)
    yield "untar", run.timed(["tar", "-C", target, "-xf", TARBALL])
    if run.sys.daemon:
        yield "rss", run.sys.hwm_mib()
        yield "rss_unlocked", run.sys.hwm_unlocked_mib()
    yield "rm", run.timed(["rm", "-rf", target])
    if os.path.exists(target):
        raise Fail("rm -rf left the target behind")


def g_readdir(run):
    if isinstance(run.sys, Native):
        run.mount([os.path.join(RD, "native")])
    else:
        run.mount([os.path.join(RD, "top"), os.path.join(RD, "bottom")])
    drop_caches()
    r = run.op("listdir", os.path.join(run.root, "d"))
    if r["n"] != rd_merged(CONF):
        raise Fail(f"readdir saw {r['n']} entries, not {rd_merged(CONF)}")
    yield "readdir", r["s"] * 1000


def g_git(run):
    run.mount([LOWER])
    run.op("readall", os.path.join(LOWER, "repo"))  # lower page cache warm, union fresh

    def clean(out):
        if out.strip():
            raise Fail(f"git status not clean: {out.decode(errors='replace').splitlines()[0]}")
    repo = os.path.join(run.root, "repo")
    yield "git_first", run.timed(["git", "status", "--porcelain"], cwd=repo, check_out=clean)
    yield "git_warm", run.timed(["git", "status", "--porcelain"], cwd=repo, check_out=clean)


def g_copyup_big(run):
    run.mount([LOWER])
    run.op("readall", os.path.join(LOWER, "big.bin"))  # the copy, not the disk
    if isinstance(run.sys, Native):
        dt = run.op("copywrite", os.path.join(LOWER, "big.bin"), os.path.join(run.dir, "big.bin"))["s"]
    else:
        dt = run.op("firstwrite", os.path.join(run.root, "big.bin"))["s"]
    sh("sync", timeout=run.left())  # write back outside the measurement
    yield "copyup_big", dt


def g_copyup_small(run):
    run.mount([LOWER])
    run.op("readall", os.path.join(LOWER, "small"))
    if isinstance(run.sys, Native):
        dst = os.path.join(run.dir, "native-small")
        os.mkdir(dst)
        r = run.op("copywrite-dir", os.path.join(LOWER, "small"), dst)
    else:
        r = run.op("firstwrite-dir", os.path.join(run.root, "small"))
    if r["n"] != CONF["small_files"]:
        raise Fail(f"saw {r['n']} small files, not {CONF['small_files']}")
    yield "copyup_small", r["s"] * 1000 / r["n"]


GROUPS = {
    "walk-names": g_walk_names, "walk-stat": g_walk_stat, "read": g_read, "untar": g_untar,
    "readdir": g_readdir, "git": g_git, "copyup-big": g_copyup_big, "copyup-small": g_copyup_small,
}
GROUP_METRICS = {
    "walk-names": ["find_cold", "find_warm"], "walk-stat": ["stat_cold", "stat_warm"],
    "read": ["seq_read", "rand1", "rand2"], "untar": ["untar", "rss", "rss_unlocked", "rm"],
    "readdir": ["readdir"], "git": ["git_first", "git_warm"],
    "copyup-big": ["copyup_big"], "copyup-small": ["copyup_small"],
}


def lower_intact():
    """The first write of the copy-up workloads must never reach the lower."""
    with open(os.path.join(LOWER, "big.bin"), "rb") as f:
        head = f.read(16)
    with open(os.path.join(LOWER, "small", "s00000"), "rb") as f:
        shead = f.read(16)
    return head == BIG_HEAD and shead == SMALL_HEAD


# ---------------------------------------------------------------------------
# Report

def fmt(v):
    if v is None:
        return "fail"
    a = abs(v)
    return f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 1 \
        else f"{v:.3f}"


def report(systems, results, errors, meta):
    med = {}
    for (m, s), vals in results.items():
        if vals:
            med[m, s] = statistics.median(vals)
    keys = [s.key for s in systems]
    labels = {s.key: s.label for s in systems}
    runs_of = lambda m, s: (len(results.get((m, s), [])), len(errors.get((m, s), [])))

    def cell(m, s, val):
        ok, bad = runs_of(m, s)
        if val is None:
            return "fail" if bad else "—"
        return val + (f" ({bad} fail)" if bad else "")

    ratios = {}
    L = []
    L.append("# Peer benchmark: unionfs next to native ext4, kernel overlayfs, fuse-overlayfs, "
             "unionfs-fuse\n")
    L.append(meta + "\n")
    L.append("Time ratios (>1 = slower): the walk and read rows are relative to native ext4, the rest "
             "to kernel overlayfs; random reads compare throughput (baseline IOPS / this IOPS). "
             "RSS is absolute. Medians of interleaved runs.\n")
    hdr = "| workload | vs | " + " | ".join(labels[k] for k in keys) + " |"
    L += [hdr, "|---|---|" + "---|" * len(keys)]
    for m, label, unit, base in METRICS:
        row = [label, {"native": "× native", "overlay": "× overlayfs", None: unit}[base]]
        for k in keys:
            v = med.get((m, k))
            if base is None:
                txt = fmt(v) if v is not None else None
                if m in ("rss", "rss_unlocked") and k in ("native", "overlay"):
                    txt = "n/a"
                    row.append(txt)
                    continue
            else:
                b = med.get((m, base))
                if v is None or b is None or b == 0:
                    txt = None
                else:
                    r = b / v if m in HIGHER_IS_BETTER else v / b
                    ratios[m, k] = r
                    txt = f"{r:.2f}"
            row.append(cell(m, k, txt))
        L.append("| " + " | ".join(row) + " |")
    L.append("\nAbsolute medians:\n")
    L += [hdr.replace("| vs |", "| unit |"), "|---|---|" + "---|" * len(keys)]
    for m, label, unit, base in METRICS:
        row = [label, unit]
        for k in keys:
            v = med.get((m, k))
            if m in ("rss", "rss_unlocked") and k in ("native", "overlay"):
                row.append("n/a")
            else:
                row.append(cell(m, k, fmt(v) if v is not None else None))
        L.append("| " + " | ".join(row) + " |")
    L.append(NOTES)
    if errors:
        L.append("\nFailures (first message of each):\n")
        for (m, s), errs in sorted(errors.items()):
            msg = errs[0].replace(RUN_DIR, "RUNS").replace(os.path.dirname(LOWER), "DATA")
            L.append(f"- {m} on {labels[s]}: {len(errs)} of {len(errs) + runs_of(m, s)[0]} runs: "
                     f"{msg}")
    return "\n".join(L) + "\n", ratios


NOTES = """
How each row is measured (every run mounts fresh over the same lower, with an empty upper):
- walks: `find MNT` / `find MNT -printf '%s\\n'` over the whole lower; cold = fresh mount, then
  `sync; echo 3 > /proc/sys/vm/drop_caches`; warm = the same command again right after.
- reads: the big lower file, read once through the mount first; fio with `--readonly
  --invalidate=0`, psync, time-based. A union that drops the page cache on open pays for it here.
- untar/rm: `tar -xf` of the root tarball into a new directory of the mount, then `rm -rf` of it;
  native ext4 = the same into a directory of the ext4 file system.
- readdir: names only (`os.listdir`), of a directory merged from two lowers, where the upper
  lower hides entries of the other with whiteouts in each union's own format; the entry count is
  checked. Native ext4 = a plain directory holding the merged result.
- git status: `git status --porcelain` (output must be empty) in the repo, lower page cache warm;
  first = fresh mount, warm = again.
- copy-up: first write (1 byte at offset 1) to a lower file, lower page cache warm (so the disk
  does not decide it; `scripts/bench-copyup.sh` measures it cold); the big file once per run, the
  small ones per op. Native ext4 = copying the file yourself, then the write.
- RSS: VmHWM of the daemon after a stat walk and the untar; kernel and native have no daemon. "Less locked pages" subtracts VmLck: unionfs locks its code and read-only data (file pages shared by all its daemons, resident from the start).
- All on one dedicated ext4 file system (journaled, loop device with direct I/O) on 2 shared
  cores: single runs often spread ±20% (the copy-up of the big file is bimodal), so read small
  differences between ratios as noise. Every single run is in the .json beside this file.
"""

COLORS = {"native": "#9e9e9e", "overlay": "#4c72b0", "fuse-overlayfs": "#dd8452",
          "unionfs-fuse": "#c44e52", "unionfs": "#55a868", "unionfs-uring": "#2e7d32",
          "unionfs-pt-upper": "#8fd19e", "unionfs-nospin": "#b8e186", "unionfs-uring-spin": "#00441b",
          "floor": "#b2abd2", "floor-best": "#542788"}


def svg_chart(systems, ratios):
    """Horizontal grouped bars of the time ratios, log scale, written by hand."""
    import math
    rows = [(m, label, base) for m, label, unit, base in METRICS if base]
    keys = [s.key for s in systems]
    vals = [v for v in ratios.values() if v > 0]
    lo = min([0.5] + vals)
    hi = max([2.0] + vals)
    lo_e, hi_e = math.floor(math.log10(lo) * 2) / 2, math.ceil(math.log10(hi) * 2) / 2
    left, width, bar, gap, top = 330, 520, 9, 12, 50
    group_h = bar * len(keys) + gap
    height = top + group_h * len(rows) + 40
    X = lambda r: left + (math.log10(r) - lo_e) / (hi_e - lo_e) * width
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 240}" height="{height}" '
         'font-family="sans-serif" font-size="11">',
         '<rect width="100%" height="100%" fill="white"/>',
         f'<text x="{left}" y="18" font-size="13" font-weight="bold">time ratio (log scale, '
         '&lt;1 faster): walk/read rows × native ext4, the rest × kernel overlayfs</text>']
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200) if lo_e <= math.log10(t) <= hi_e]
    for t in ticks:
        x = X(t)
        o.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{height - 35}" '
                 f'stroke="{"#333" if t == 1 else "#ddd"}"/>')
        o.append(f'<text x="{x:.1f}" y="{height - 22}" text-anchor="middle">{t:g}×</text>')
    for i, (m, label, base) in enumerate(rows):
        y0 = top + i * group_h
        plain = label.replace("`", "").replace("&", "&amp;").replace("<", "&lt;")
        o.append(f'<text x="{left - 8}" y="{y0 + bar * len(keys) / 2 + 4:.1f}" '
                 f'text-anchor="end">{plain}</text>')
        for j, k in enumerate(keys):
            y = y0 + j * bar
            r = ratios.get((m, k))
            if r is None:
                if k != base:
                    group = next((g for g, ms in GROUP_METRICS.items() if m in ms), None)
                    why = "n/a" if group in getattr(systems[j], "skip", ()) else "fail"
                    o.append(f'<text x="{left + 3}" y="{y + bar - 1}" font-size="8" '
                             f'fill="{COLORS.get(k, "#000")}">{why}</text>')
                continue
            x0, x1 = X(10 ** lo_e), X(max(r, 10 ** lo_e))
            o.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{bar - 1}" '
                     f'fill="{COLORS.get(k, "#000")}"><title>{k}: {r:.2f}×</title></rect>')
            o.append(f'<text x="{x1 + 3:.1f}" y="{y + bar - 1}" font-size="8">{r:.2f}</text>')
    for j, s in enumerate(systems):
        y = top + j * 16
        o.append(f'<rect x="{left + width + 20}" y="{y}" width="10" height="10" fill="{COLORS.get(s.key)}"/>')
        o.append(f'<text x="{left + width + 34}" y="{y + 9}">{s.label}</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


# ---------------------------------------------------------------------------

def every_system():
    """Every system the benchmark knows, in column order."""
    return [Native("native", "native ext4"), Overlay("overlay", "kernel overlayfs"),
            FuseOverlayfs("fuse-overlayfs", "fuse-overlayfs 1.10", "fuse-overlayfs"),
            UnionfsFuse("unionfs-fuse", "unionfs-fuse 1.0", "unionfs-fuse"),
            Unionfs("unionfs", "unionfs", "unionfs", ",uring=off"),
            Unionfs("unionfs-uring", "unionfs uring=on", "unionfs", ",uring=on"),
            Unionfs("unionfs-pt-upper", "unionfs passthrough=upper", "unionfs",
                    ",passthrough=upper,uring=off"),
            Unionfs("unionfs-nospin", "unionfs spin=0", "unionfs", ",spin=0,uring=off"),
            Unionfs("unionfs-uring-spin", "unionfs uring=on,spin=200", "unionfs",
                    ",uring=on,spin=200"),
            FloorFs("floor", "FUSE floor (floorfs)"),
            FloorFs("floor-best", "FUSE floor uring=on,spin=200", uring=True, spin=200)]


def chart_main(json_path, svg_path):
    """Redraws the chart of a finished run from its .json."""
    with open(json_path) as f:
        raw = json.load(f)["results"]
    results = {tuple(k.split("|")): v for k, v in raw.items()}
    present = {s for _, s in results}
    systems = [s for s in every_system() if s.key in present]
    _, ratios = report(systems, results, {}, "")  # (no errors: RUN_DIR is not needed)
    with open(svg_path, "w") as f:
        f.write(svg_chart(systems, ratios))


def main_run():
    global FLOOR_BIN
    global RUN_DIR, BIN, LOWER, RD, TARBALL, CONF, FIO_RUNTIME, BIG_HEAD, SMALL_HEAD
    env = os.environ
    RUN_DIR, BIN, cache = env["RUN_DIR"], env["UNIONFS_BIN"], env["CACHE"]
    FLOOR_BIN = env.get("FLOORFS_BIN", "")
    mode = "quick" if env.get("QUICK") == "1" else "full"
    CONF = SIZES[mode]
    LOWER, RD, TARBALL = os.path.join(cache, "lower"), os.path.join(cache, "rd"), \
        os.path.join(cache, "root.tar")
    runs = int(env.get("RUNS", "3" if mode == "quick" else "5"))
    timeout = float(env.get("TIMEOUT", "120" if mode == "quick" else "300"))
    FIO_RUNTIME = int(env.get("FIO_RUNTIME", "2" if mode == "quick" else "4"))
    out_path = env["OUT"]
    with open(os.path.join(LOWER, "big.bin"), "rb") as f:
        BIG_HEAD = f.read(16)
    with open(os.path.join(LOWER, "small", "s00000"), "rb") as f:
        SMALL_HEAD = f.read(16)

    all_systems = every_system()
    want = env.get("SYSTEMS", "").split(",") if env.get("SYSTEMS") else None
    systems = [s for s in all_systems if not want or s.key in want]
    groups = env.get("WORKLOADS", "").split(",") if env.get("WORKLOADS") else list(GROUPS)
    for g in groups:
        if g not in GROUPS:
            raise SystemExit(f"unknown workload group {g}; known: {', '.join(GROUPS)}")

    results, errors = {}, {}
    t_start = time.monotonic()
    finished = False
    try:
        for g in groups:
            for rep in range(runs):
                # interleaved, and the order rotates so that no system always goes first
                order = systems[rep % len(systems):] + systems[:rep % len(systems)]
                for s in order:
                    if g in getattr(s, "skip", ()):
                        continue
                    run = Run(s, g, rep, timeout)
                    got, err = [], None
                    try:
                        for m, v in GROUPS[g](run):
                            results.setdefault((m, s.key), []).append(v)
                            got.append(f"{m}={fmt(v)}")
                    except Exception as e:  # this peer, this workload, this run: a "fail" cell
                        err = str(e) or type(e).__name__
                    finally:
                        try:
                            run.close()
                        except Exception as e:  # a mount that will not go away: stop here
                            log(f"cleanup failed: {e}")
                            raise
                    if err:
                        measured = {x.split("=")[0] for x in got}
                        for m in GROUP_METRICS[g]:
                            if m not in measured and not (m in ("rss", "rss_unlocked") and not s.daemon):
                                errors.setdefault((m, s.key), []).append(err)
                    log(f"[{time.monotonic() - t_start:6.0f}s] {g} #{rep + 1}/{runs} {s.key:15} "
                        + " ".join(got) + (f"  FAIL: {err}" if err else ""))
                    if g.startswith("copyup") and not lower_intact():
                        os.unlink(os.path.join(cache, ".complete"))
                        raise SystemExit(f"the lower was modified by {s.key} ({g}); "
                                         "data set invalidated, stopping")
        finished = True
    finally:
        elapsed = time.monotonic() - t_start
        meta = (f"{time.strftime('%Y-%m-%d %H:%M')}, {env.get('META', '')}, "
                f"{'QUICK mode, ' if mode == 'quick' else ''}{runs} interleaved runs, "
                f"benchmark took {elapsed / 60:.1f} min. Lower: Debian bookworm minbase root "
                f"+ {CONF['big_mib']} MiB file + {CONF['repo_files']}-file git repo + "
                f"{CONF['small_files']} × 4 KiB files; untar of "
                f"{'the whole root' if CONF['tar_subdir'] == '.' else 'root/' + CONF['tar_subdir']}; "
                f"readdir dir: {rd_merged(CONF)} merged entries over 2 lowers, "
                f"{CONF['rd_whiteouts']} whiteouts. fio runtime {FIO_RUNTIME} s.")
        md, ratios = report(systems, results, errors, meta)
        svg_path = os.path.splitext(out_path)[0] + ".svg"
        md += f"\n![time ratios]({os.path.basename(svg_path)})\n"
        if not finished:  # keep the last complete report; show what we have
            print("INTERRUPTED: partial results, not written to " + out_path + "\n\n" + md)
            return
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(out_path, "w") as f:
            f.write(md)
        with open(svg_path, "w") as f:
            f.write(svg_chart(systems, ratios))
        with open(os.path.splitext(out_path)[0] + ".json", "w") as f:
            json.dump({"results": {f"{m}|{s}": v for (m, s), v in results.items()},
                       "errors": {f"{m}|{s}": v for (m, s), v in errors.items()}}, f, indent=1)
        print(md)
        log(f"wrote {out_path} and {svg_path}")


HELPER = os.path.abspath(__file__)

if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "op":
        op_main(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) == 5 and sys.argv[1] == "build":
        build_dataset(sys.argv[2], sys.argv[3], "quick" if sys.argv[4] == "1" else "full")
    elif len(sys.argv) == 4 and sys.argv[1] == "chart":
        chart_main(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 2 and sys.argv[1] == "run":
        try:
            main_run()
        except KeyboardInterrupt:
            log("interrupted")
            sys.exit(130)
    else:
        raise SystemExit(__doc__)
