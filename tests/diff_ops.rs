//! Differential property test of the write path: kernel overlayfs is the oracle.
//!
//! Every case builds lower branches, mounts them twice — kernel overlayfs
//! (`redirect_dir=on,index=on`) and unionfs (`-o whiteout=overlay` or `-o whiteout=aufs`,
//! with a separate workdir) — and applies one generated sequence of system calls to both
//! mounts. It checks that
//!
//! 1. every call gives the same result on both sides (success value or errno);
//! 2. the merged trees are the same afterwards (names, types, modes, owners, sizes of
//!    non-directories, contents, symlink targets, nlink, xattrs, and old mtimes of
//!    non-directories — see [`comparable`] for exactly what is left out and why);
//! 3. the trees are still the same after both are unmounted and mounted again on the same
//!    upper and workdirs (persistence), and so are unionfs's inode numbers;
//! 4. unionfs's inode numbers group paths exactly as the kernel's do (hard links share one
//!    number, everything else has its own) and readdir's d_ino equals st_ino;
//! 5. the lower branches are untouched, and (overlay format) unionfs's upper holds no
//!    `.wh.` names.
//!
//! The lowers are either the fixed fixture of [`build_lowers`] (a merged directory, an
//! opaque directory, a char 0:0 whiteout, a hard-linked pair, a symlink, a fifo, nested
//! directories, user xattrs, suid bits, odd owners; short sequences over [`PATHS`]) or
//! generated ([`gen_lowers_strategy`]: two or three lowers in which the same name is
//! often a directory in one and a file, symlink, fifo, whiteout or opaque directory in
//! another, at every depth; long sequences over [`GEN_PATHS`] that move directories a
//! lot). Each property runs in both whiteout formats; a further property in each
//! family (`*kernel_reads_unionfs_upper`, overlay format only) mounts kernel overlayfs on
//! the upper and workdir unionfs wrote and compares that with the kernel's own result.
//!
//! Budget: fixed fixture 64 cases (32 for kernel-reads) unless `UNIONFS_SOAK_CASES`;
//! generated lowers `UNIONFS_DIFF_OPS_CASES` cases (16 by default; `scripts/test.sh`
//! asks for 1024 once, `scripts/soak.sh` for thousands) of `UNIONFS_DIFF_OPS_LEN` (200)
//! operations. docs/TESTING.md has the timings. Failures proptest found and shrank are
//! kept below as `regression_*` tests with explicit op lists (and lowers).
//!
//! Each case runs in a mount namespace of its own (see [`PrivateMountNs`]), with fresh
//! temporary directories; every mount is guarded and unmounted also on failure.
//!
//! Harness self-check: `DIFFOPS_SUT=kernel` replaces unionfs by a second kernel overlay
//! mount; every test must then pass. Debugging: `DIFFOPS_VERBOSE=1` prints both views,
//! `DIFFOPS_KEEP=1` keeps each case's directory, `DIFFOPS_STATS=1` prints per case how
//! many operations succeeded and how many of them moved a directory. Timing a budget on a
//! unionfs with known mismatches: `DIFFOPS_TIME_ONLY=1` (a mismatch prints a line and
//! the case passes).
//!
//! Needs root, /dev/fuse and kernel overlayfs; skips (with a message) without them unless
//! `UNIONFS_TEST_REQUIRE=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/model.rs"]
mod model;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, AT_FDCWD};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use proptest::prelude::*;

use model::*;

// ---------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------

/// The calling thread in a mount namespace of its own (propagation private) until drop,
/// then back in the one it came from. Every mount of a case lives in such a namespace:
/// no other process on the host (say, a container started meanwhile, which copies the
/// mount table) can pin them, so an unmounted kernel overlay really is gone and its
/// upper can be mounted again; and whatever a crash leaves mounted dies with the
/// namespace.
struct PrivateMountNs {
    orig: OwnedFd,
}

impl PrivateMountNs {
    fn enter() -> Result<PrivateMountNs, String> {
        let orig = nix::fcntl::open(
            "/proc/thread-self/ns/mnt",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open /proc/thread-self/ns/mnt: {e}"))?;
        // CLONE_NEWNS (with the CLONE_FS it implies) only affects this thread.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
        let ns = PrivateMountNs { orig };
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("make / rprivate: {e}"))?;
        Ok(ns)
    }
}

impl Drop for PrivateMountNs {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(&self.orig, nix::sched::CloneFlags::CLONE_NEWNS) {
            eprintln!("setns back to the original mount namespace: {e}");
        }
    }
}

fn is_mounted(mnt: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/thread-self/mountinfo") else {
        return false;
    };
    let want = mnt.as_os_str().as_bytes();
    text.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape_octal(m) == want)
    })
}

fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(
                b[i + 1..i + 4]
                    .iter()
                    .fold(0u8, |a, c| a.wrapping_mul(8) + (c - b'0')),
            );
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn pid_alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let st = s
            .rsplit_once(')')
            .and_then(|(_, r)| r.trim_start().chars().next());
        !matches!(st, Some('Z') | Some('X') | None)
    })
}

/// The unionfs daemon serving `mnt` (its command line names the mount point).
fn find_daemon(mnt: &Path) -> Option<i32> {
    let me = std::process::id() as i32;
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = raw.split(|&c| c == 0).collect();
        let is_unionfs = argv
            .first()
            .is_some_and(|a| Path::new(std::ffi::OsStr::from_bytes(a)).ends_with("unionfs"));
        if is_unionfs
            && argv
                .iter()
                .skip(1)
                .any(|a| *a == mnt.as_os_str().as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// A fork of this multi-threaded process holds copies of all its descriptors until the
/// child execs. An operation's short-lived descriptors must not live on in such a child
/// of another test thread: a fifo the operation opened for reading and closed would
/// still have a reader, so a later non-blocking open for writing would succeed on one
/// side and fail with ENXIO on the other. Operations hold this for reading, spawning
/// (up to the exec) holds it for writing.
static FORK_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn spawn(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    let _no_ops = FORK_LOCK.write().unwrap_or_else(|e| e.into_inner());
    // returns once the child has exec'd (or failed to)
    cmd.spawn()
}

/// One live mount. Dropping it unmounts (lazily if need be) and ends the daemon: also when
/// the test panics.
struct MountGuard {
    mnt: PathBuf,
    /// unmounted with `unionfs umount` (else umount2)
    unionfs: bool,
    /// the unionfs daemon serving it, if found
    daemon: Option<i32>,
    active: bool,
}

/// Where one side keeps its branches.
#[derive(Clone)]
struct Dirs {
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

fn colon_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

impl MountGuard {
    /// Kernel overlayfs on `d`. The oracle runs without metacopy: metadata-only copy-up
    /// must look exactly like a full one (and the kernel's own has a bug that one would
    /// copy: a hard-linked file's data copy-up after a metacopy rename or unlink loses
    /// its mtime). Reading unionfs's upper needs `metacopy` (unionfs writes such files).
    fn kernel(d: &Dirs) -> Result<MountGuard, String> {
        Self::kernel_with(d, "")
    }

    fn kernel_with(d: &Dirs, extra: &str) -> Result<MountGuard, String> {
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=on,index=on{extra}",
            colon_list(&d.lowers),
            d.upper.display(),
            d.work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &d.mnt,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| format!("kernel overlay mount -o {opts} failed: {e}"))?;
        Ok(MountGuard {
            mnt: d.mnt.clone(),
            unionfs: false,
            daemon: None,
            active: true,
        })
    }

    fn unionfs(d: &Dirs, fmt: Fmt) -> Result<MountGuard, String> {
        let mut err = tempfile::tempfile().map_err(|e| e.to_string())?;
        let opts = format!("whiteout={},workdir={}", fmt.option(), d.work.display());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_unionfs"));
        cmd.arg("mount")
            .arg(colon_list(&d.lowers))
            .arg(&d.upper)
            .arg(&d.mnt)
            .arg("-o")
            .arg(&opts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err.try_clone().map_err(|e| e.to_string())?);
        let status = spawn(&mut cmd)
            .and_then(|mut c| c.wait())
            .map_err(|e| format!("cannot run unionfs: {e}"))?;
        // guard first, so that whatever is mounted gets unmounted
        let g = MountGuard {
            mnt: d.mnt.clone(),
            unionfs: true,
            daemon: find_daemon(&d.mnt),
            active: true,
        };
        let mut msg = String::new();
        use std::io::{Read, Seek};
        let _ = err.seek(std::io::SeekFrom::Start(0));
        let _ = err.read_to_string(&mut msg);
        if !status.success() {
            return Err(format!("unionfs mount failed ({status}): {msg}"));
        }
        if !is_mounted(&d.mnt) {
            return Err(format!(
                "unionfs mount exited 0 but nothing is mounted: {msg}"
            ));
        }
        Ok(g)
    }

    /// One unmount attempt: `unionfs umount` for unionfs, umount2 otherwise.
    fn unmount_once(&self) -> Result<(), String> {
        if self.unionfs {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_unionfs"));
            cmd.arg("umount")
                .arg(&self.mnt)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let out = spawn(&mut cmd)
                .and_then(|c| c.wait_with_output())
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "unionfs umount {} failed: {}",
                    self.mnt.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(())
        } else {
            nix::mount::umount2(&self.mnt, MntFlags::empty())
                .map_err(|e| format!("umount {}: {e}", self.mnt.display()))
        }
    }

    /// Unmounts normally and waits for the daemon to end.
    fn unmount(mut self) -> Result<(), String> {
        // A child that another test thread is forking holds copies of this process's
        // descriptors until it execs, which can make a mount busy for an instant: retry
        // briefly before calling it a failure.
        let start = Instant::now();
        while let Err(e) = self.unmount_once() {
            if start.elapsed() > Duration::from_secs(5) {
                return Err(e); // Drop detaches it
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.active = false;
        if is_mounted(&self.mnt) {
            self.active = true;
            return Err(format!("{} still mounted after umount", self.mnt.display()));
        }
        if let Some(pid) = self.daemon {
            if !wait_until(Duration::from_secs(20), || !pid_alive(pid)) {
                self.active = true;
                return Err(format!("unionfs daemon {pid} still running after umount"));
            }
        }
        Ok(())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        if is_mounted(&self.mnt) && nix::mount::umount2(&self.mnt, MntFlags::empty()).is_err() {
            let _ = nix::mount::umount2(&self.mnt, MntFlags::MNT_DETACH);
        }
        if let Some(pid) = self.daemon {
            if !wait_until(Duration::from_secs(5), || !pid_alive(pid)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Comparing, and the deliberate differences
// ---------------------------------------------------------------------------------------

/// THE ONE PLACE listing what is deliberately not compared between kernel overlayfs and
/// unionfs (and why). Everything else must be equal.
///
/// * st_ino, st_dev and readdir's d_ino: numbering differs by design. unionfs's numbers are
///   checked on their own by [`ino_problems`] (same partition into hard-link groups as the
///   kernel, stable across a remount, d_ino == st_ino).
/// * Sizes of directories: they are the sizes of whichever backing directory each
///   implementation reports, not part of the union's contract.
/// * mtimes of directories, and any mtime set to "now" by a write (the two sides run at
///   different instants): an mtime is compared only when it is older than [`OLD_TIME`] on
///   either side, i.e. came from the fixture or from a utimensat with an explicit time.
/// * atime and ctime: never compared.
/// * Names beginning with `.wh.` are reserved in unionfs (creating one fails with EPERM,
///   the OCI rule); the kernel allows them. Not a comparison rule: [`PATHS`] simply never
///   contains one.
/// * When the kernel reads unionfs's upper ([`Check::KernelReadsUpper`],
///   [`cross_comparable`]): unionfs's own bookkeeping xattrs `trusted.unionfs.*` show
///   through the kernel mount (the kernel hides only `trusted.overlay.*`).
fn comparable(e: &Ent) -> Ent {
    without_numbers_and_recent_times(e)
}

/// [`comparable`], for kernel overlayfs reading an upper unionfs wrote: also without
/// unionfs's private xattrs (see the list above).
fn cross_comparable(e: &Ent) -> Ent {
    let mut c = comparable(e);
    c.xattrs.retain(|(n, _)| !n.starts_with("trusted.unionfs."));
    c
}

/// Differences between two views, as readable lines (expected = kernel).
fn tree_diff(kernel: &Snap, unionfs: &Snap) -> Vec<String> {
    tree_diff_by(kernel, unionfs, ("kernel", "unionfs"), comparable)
}

/// Paths grouped by inode: path -> the other paths with the same number.
fn ino_groups(s: &Snap, with_dev: bool) -> BTreeMap<String, BTreeSet<String>> {
    let mut by: BTreeMap<(u64, u64), BTreeSet<String>> = BTreeMap::new();
    for (p, e) in s {
        if let Ok(e) = e {
            let dev = if with_dev { e.dev } else { 0 };
            by.entry((dev, e.ino)).or_default().insert(p.clone());
        }
    }
    let mut out = BTreeMap::new();
    for group in by.values() {
        for p in group {
            out.insert(p.clone(), group.clone());
        }
    }
    out
}

/// unionfs's inode-number rules, with the kernel's view as the reference for which paths
/// are hard links of one another.
fn ino_problems(kernel: &Snap, unionfs: &Snap) -> Vec<String> {
    let mut out = Vec::new();
    let kg = ino_groups(kernel, true);
    let ug = ino_groups(unionfs, false);
    for (p, g) in &ug {
        if let Some(k) = kg.get(p) {
            if k != g {
                out.push(format!(
                    "  st_ino of /{p}: unionfs groups it with {g:?}, the kernel with {k:?}"
                ));
            }
        }
    }
    for (p, e) in unionfs {
        if let Ok(e) = e {
            if !p.is_empty() && e.dino != e.ino {
                out.push(format!(
                    "  /{p}: readdir d_ino {} != st_ino {}",
                    e.dino, e.ino
                ));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// One case
// ---------------------------------------------------------------------------------------

fn can_run() -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        "not running as root"
    } else if !Path::new("/dev/fuse").exists() {
        "/dev/fuse is missing"
    } else {
        return true;
    };
    if std::env::var_os("UNIONFS_TEST_REQUIRE").is_some_and(|v| v == "1") {
        panic!("UNIONFS_TEST_REQUIRE=1 but the test cannot run: {why}");
    }
    eprintln!("SKIP: {why}");
    false
}

/// The views at the end of a case, for extra assertions.
struct CaseOut {
    /// kernel overlayfs (after the remount, in a full check)
    kernel: Snap,
    /// unionfs (after the remount), or kernel overlayfs reading unionfs's upper
    unionfs: Snap,
}

/// The whiteout format unionfs writes (`-o whiteout=...`). The merged view must equal
/// the kernel's in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fmt {
    /// char 0:0 whiteouts and `trusted.overlay.*` xattrs: the kernel can read the upper
    Overlay,
    /// `.wh.` files in the upper
    Aufs,
}

impl Fmt {
    fn option(self) -> &'static str {
        match self {
            Fmt::Overlay => "overlay",
            Fmt::Aufs => "aufs",
        }
    }
}

/// What a case checks after applying the ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// trees, inode numbers, then the same after unmounting and mounting both again
    Full,
    /// kernel overlayfs mounted on unionfs's upper and workdir shows what kernel
    /// overlayfs shows on its own upper
    KernelReadsUpper,
}

/// Harness self-check: `DIFFOPS_SUT=kernel` puts a second kernel overlay mount where
/// unionfs would be; every test must then pass.
fn sut_is_kernel() -> bool {
    std::env::var("DIFFOPS_SUT").is_ok_and(|v| v == "kernel")
}

fn mount_sut(d: &Dirs, fmt: Fmt) -> Result<MountGuard, String> {
    if sut_is_kernel() {
        MountGuard::kernel(d)
    } else {
        MountGuard::unionfs(d, fmt)
    }
}

fn print_views(what: &str, k: &Snap, u: &Snap) {
    for (n, s) in [("kernel", k), ("unionfs", u)] {
        eprintln!("--- {what}: {n}");
        for (p, e) in s {
            let ino = e.as_ref().map(|e| (e.dev, e.ino, e.dino)).ok();
            eprintln!("  /{p}: {} (dev, ino, d_ino) = {ino:?}", describe(e));
        }
    }
}

/// Runs one sequence on both sides and checks everything. Err = a readable report.
///
/// Debugging aids: `DIFFOPS_VERBOSE=1` prints both views, `DIFFOPS_KEEP=1` keeps the
/// case's directory (branches, uppers, workdirs) and prints its path.
fn run_case(lowers: &Lowers, ops: &[Op], check: Check, fmt: Fmt) -> Result<CaseOut, String> {
    assert!(
        check != Check::KernelReadsUpper || fmt == Fmt::Overlay,
        "the kernel reads only an overlay-format upper"
    );
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    // first in, last out: every guard below unmounts inside this namespace
    let _ns = PrivateMountNs::enter()?;
    let (td, root) = case_root("unionfs-diffops-")?;
    let mk = |n: &str| subdir(&root, n);
    let lower_dirs: Vec<PathBuf> = (1..=lowers.count()).map(|i| mk(&format!("l{i}"))).collect();
    lowers.build(&lower_dirs, Marks::Overlay);
    let before: Vec<(PathBuf, Snap)> = lower_dirs
        .iter()
        .map(|l| (l.clone(), branch_snapshot(l)))
        .collect();
    let dirs = |tag: &str| Dirs {
        lowers: lower_dirs.clone(),
        upper: mk(&format!("{tag}-upper")),
        work: mk(&format!("{tag}-work")),
        mnt: mk(&format!("{tag}-mnt")),
    };
    let (kd, ud) = (dirs("k"), dirs("u"));
    // the roots of both views come from the uppers: make them alike
    for r in [&kd.upper, &ud.upper] {
        let t = TimeSpec::new(1_500_000_000, 0);
        nix::sys::stat::utimensat(AT_FDCWD, r, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| e.to_string())?;
    }
    let verbose = std::env::var_os("DIFFOPS_VERBOSE").is_some();
    let mut report: Vec<String> = Vec::new();

    // 1. the ops, on both mounts
    let (k1, u1) = {
        let k = MountGuard::kernel(&kd)?;
        let u = mount_sut(&ud, fmt)?;
        let mut ks = Side::new(&kd.mnt);
        let mut us = Side::new(&ud.mnt);
        let stats = std::env::var_os("DIFFOPS_STATS").is_some();
        let (mut oks, mut dir_moves) = (0, 0);
        let mut by_kind = OpStats::default();
        for (i, op) in ops.iter().enumerate() {
            let moves_dir = stats
                && matches!(op, Op::Rename { from, .. }
                    if fs::symlink_metadata(ks.p(from)).is_ok_and(|m| m.is_dir()));
            let (a, b) = {
                let _no_forks = FORK_LOCK.read().unwrap_or_else(|e| e.into_inner());
                (ks.apply(op), us.apply(op))
            };
            oks += usize::from(a.is_ok());
            if stats {
                by_kind.count(op, a.is_ok());
            }
            dir_moves += usize::from(moves_dir && a.is_ok());
            if a != b && !us.reads_as_at_open(op, &b) {
                report.push(format!(
                    "op #{i} {op:?}:\n      kernel:  {}\n      unionfs: {}",
                    show(&a),
                    show(&b)
                ));
                break; // the states diverge from here on
            }
        }
        if stats {
            eprintln!(
                "{} ops: {oks} succeeded, {dir_moves} of them renamed a directory ({})",
                ops.len(),
                by_kind.line()
            );
        }
        // no descriptor may keep a mount busy
        drop(ks);
        drop(us);
        let views = (snapshot(&kd.mnt), snapshot(&ud.mnt));
        u.unmount()?;
        k.unmount()?;
        views
    };
    if verbose {
        print_views("after the ops", &k1, &u1);
    }

    let out = match check {
        Check::Full => {
            let d = tree_diff(&k1, &u1);
            if !d.is_empty() {
                report.push(format!("trees differ after the ops:\n{}", d.join("\n")));
            }
            let d = ino_problems(&k1, &u1);
            if !d.is_empty() {
                report.push(format!("inode numbers after the ops:\n{}", d.join("\n")));
            }
            // with whiteout=overlay and a workdir of its own, the upper holds no AUFS
            // names (whiteouts are char 0:0, the staging area is in the workdir); with
            // whiteout=aufs it is made of them
            let wh: Vec<String> = walkdir::WalkDir::new(&ud.upper)
                .into_iter()
                .flatten()
                .filter(|e| e.file_name().as_bytes().starts_with(b".wh."))
                .map(|e| format!("  {}", e.path().display()))
                .collect();
            if !wh.is_empty() && !sut_is_kernel() && fmt == Fmt::Overlay {
                report.push(format!(
                    "`.wh.` names in unionfs's upper:\n{}",
                    wh.join("\n")
                ));
            }
            // 2. persistence: mount both again on the same upper and workdirs
            let k = MountGuard::kernel(&kd)?;
            let u = mount_sut(&ud, fmt)?;
            let (k2, u2) = (snapshot(&kd.mnt), snapshot(&ud.mnt));
            u.unmount()?;
            k.unmount()?;
            if verbose {
                print_views("after the remount", &k2, &u2);
            }
            let d = tree_diff(&k2, &u2);
            if !d.is_empty() {
                report.push(format!("trees differ after the remount:\n{}", d.join("\n")));
            }
            let mut d = ino_problems(&k2, &u2);
            for (p, e) in &u2 {
                if let (Ok(e), Some(Ok(old))) = (e, u1.get(p)) {
                    if e.ino != old.ino {
                        d.push(format!(
                            "  /{p}: st_ino {} before the remount, {} after",
                            old.ino, e.ino
                        ));
                    }
                }
            }
            if !d.is_empty() {
                report.push(format!(
                    "inode numbers after the remount:\n{}",
                    d.join("\n")
                ));
            }
            CaseOut {
                kernel: k2,
                unionfs: u2,
            }
        }
        Check::KernelReadsUpper => {
            // 2'. the kernel reads the upper (and workdir) unionfs wrote. The workdir
            // matters: with index=on the kernel keeps copied-up lower hard links together
            // through workdir/index, as unionfs does through workdir/unionfs-index.
            let xd = Dirs {
                lowers: lower_dirs.clone(),
                upper: ud.upper.clone(),
                work: ud.work.clone(),
                mnt: mk("x-mnt"),
            };
            let x = MountGuard::kernel_with(&xd, ",metacopy=on")?;
            let x1 = snapshot(&xd.mnt);
            x.unmount()?;
            if verbose {
                print_views("kernel on its upper / kernel on unionfs's upper", &k1, &x1);
            }
            let strip = |s: &Snap| -> Snap {
                s.iter()
                    .map(|(p, e)| (p.clone(), e.clone().map(|e| cross_comparable(&e))))
                    .collect()
            };
            let d = tree_diff(&strip(&k1), &strip(&x1));
            if !d.is_empty() {
                report.push(format!(
                    "kernel overlayfs reading unionfs's upper (shown as 'unionfs') differs \
                     from kernel overlayfs reading its own:\n{}",
                    d.join("\n")
                ));
            }
            CaseOut {
                kernel: k1,
                unionfs: x1,
            }
        }
    };

    let d = lower_problems(&before);
    if !d.is_empty() {
        report.push(format!("lower branches changed:\n{}", d.join("\n")));
    }
    if std::env::var_os("DIFFOPS_KEEP").is_some() {
        eprintln!("kept {}", td.keep().display());
    }
    if report.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "unionfs (whiteout={}) differs from kernel overlayfs ({check:?})\n\
             lowers = {}\nops = {}\n{}",
            fmt.option(),
            lowers.as_rust(),
            ops_as_rust(ops),
            report.join("\n")
        ))
    }
}

/// Runs a fixed op list (regression tests): panics with the report on a difference.
fn check(ops: &[Op]) -> Option<CaseOut> {
    check_with(ops, Check::Full)
}

fn check_with(ops: &[Op], check: Check) -> Option<CaseOut> {
    check_on(&Lowers::Fixed, ops, check, Fmt::Overlay)
}

fn check_on(lowers: &Lowers, ops: &[Op], check: Check, fmt: Fmt) -> Option<CaseOut> {
    if !can_run() {
        return None;
    }
    match run_case(lowers, ops, check, fmt) {
        Ok(o) => Some(o),
        Err(e) => panic!("{e}"),
    }
}

// ---------------------------------------------------------------------------------------
// The property
// ---------------------------------------------------------------------------------------

/// Cases of the fixed-fixture properties: `UNIONFS_SOAK_CASES`, 64 by default.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: env_num("UNIONFS_SOAK_CASES", 64),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn gen_cases() -> u32 {
    env_num("UNIONFS_DIFF_OPS_CASES", 16)
}

/// Operations per sequence on generated lowers: `UNIONFS_DIFF_OPS_LEN`, 200 by default.
fn gen_len() -> usize {
    env_num("UNIONFS_DIFF_OPS_LEN", 200) as usize
}

/// One case of a property. `DIFFOPS_TIME_ONLY=1` makes a mismatch print one line
/// (`MISMATCH ...`) instead of failing: for timing a whole budget on a unionfs with
/// known mismatches, never for testing.
fn prop_case(lowers: &Lowers, ops: &[Op], check: Check, fmt: Fmt) -> Result<(), TestCaseError> {
    if can_run() {
        if let Err(e) = run_case(lowers, ops, check, fmt) {
            if std::env::var_os("DIFFOPS_TIME_ONLY").is_some() {
                eprintln!("MISMATCH {check:?} whiteout={}", fmt.option());
                return Ok(());
            }
            return Err(TestCaseError::fail(e));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ops_match_kernel_overlayfs(ops in prop::collection::vec(op(&FIXED), 1..=25)) {
        prop_case(&Lowers::Fixed, &ops, Check::Full, Fmt::Overlay)?;
    }

    /// The same with `-o whiteout=aufs`.
    #[test]
    fn ops_match_kernel_overlayfs_aufs(ops in prop::collection::vec(op(&FIXED), 1..=25)) {
        prop_case(&Lowers::Fixed, &ops, Check::Full, Fmt::Aufs)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: config().cases.div_ceil(2), ..config() })]

    /// The upper unionfs writes (`-o whiteout=overlay`) is meant to be readable by kernel
    /// overlayfs: after the ops, kernel overlayfs on unionfs's upper must show what kernel
    /// overlayfs shows on its own.
    #[test]
    fn kernel_reads_unionfs_upper(ops in prop::collection::vec(op(&FIXED), 1..=25)) {
        prop_case(&Lowers::Fixed, &ops, Check::KernelReadsUpper, Fmt::Overlay)?;
    }
}

proptest! {
    #![proptest_config(gen_config(gen_cases()))]

    /// Generated lowers (see [`GEN_NODES`]), long sequences, `-o whiteout=overlay`.
    #[test]
    fn gen_lowers_match_kernel_overlayfs((g, ops) in GenCase { len: gen_len() }) {
        prop_case(&Lowers::Gen(g), &ops, Check::Full, Fmt::Overlay)?;
    }

    /// The same with `-o whiteout=aufs`.
    #[test]
    fn gen_lowers_match_kernel_overlayfs_aufs((g, ops) in GenCase { len: gen_len() }) {
        prop_case(&Lowers::Gen(g), &ops, Check::Full, Fmt::Aufs)?;
    }
}

proptest! {
    #![proptest_config(gen_config(gen_cases().div_ceil(4)))]

    /// Kernel overlayfs reads the upper unionfs wrote on generated lowers.
    #[test]
    fn gen_lowers_kernel_reads_unionfs_upper((g, ops) in GenCase { len: gen_len() }) {
        prop_case(&Lowers::Gen(g), &ops, Check::KernelReadsUpper, Fmt::Overlay)?;
    }
}

// ---------------------------------------------------------------------------------------
// Dedicated tests
// ---------------------------------------------------------------------------------------

// Regression tests: failures the properties found, shrunk. In their comments "Kernel:" is
// the expected behaviour and "unionfs:" is what unionfs did when the failure was found;
// they stay after the fix.

/// `link(2)` of a lower file into a directory other than its own, then the link's
/// st_ino. Kernel: the new name shares the number of x/a (one object). unionfs: the new
/// name y/a gets a number of its own — the upper directory y is not marked impure by
/// link(), so the number recorded on y/a is not read back (found as `Link c -> y/a`).
#[test]
fn regression_link_into_other_dir_shares_st_ino() {
    check(&[Op::Link {
        from: "x/a",
        to: "y/a",
    }]);
}

/// rename(2) over one name of a lower hard-linked pair (c, x/c) that was never copied
/// up. Kernel: the remaining name c has nlink 1. unionfs: c still reports nlink 2, also
/// after a remount. (unlink x/c, and the same rename after c was copied up, are right.)
#[test]
fn regression_rename_over_lower_hardlink_nlink() {
    check(&[Op::Rename {
        from: "z",
        to: "x/c",
        how: Rn::Plain,
    }]);
}

/// A failing rmdir (ENOTEMPTY: y/z holds l1's y/z/a). Both fail alike, but unionfs has
/// copied the parent y up before finding out, the kernel checks emptiness first and
/// leaves the upper untouched. Visible as y's nlink: kernel 3 (y lives in l1 only, which
/// is opaque: not merged), unionfs 1 (now merged with its upper copy). Persists.
#[test]
fn regression_failed_rmdir_copies_up_parent() {
    check(&[Op::Rmdir("y/z")]);
}

/// stat of a directory right after one of its entries was copied up (which copies the
/// directory up and makes it merged). Kernel: nlink 1 (merged). unionfs: the stale nlink
/// 3 of the lower-only directory, from the kernel's attribute cache (unionfs does not
/// invalidate the directory's attributes when copy-up changes them); a readdir refreshes
/// it.
#[test]
fn regression_dir_nlink_stale_after_copy_up() {
    check(&[
        Op::Utimens {
            p: "y/b",
            atime: Ts::At(1000000000, 123456789),
            mtime: Ts::At(1000000000, 123456789),
        },
        Op::Stat("y"),
    ]);
}

/// Creating a file over a whiteout in a setgid directory. Kernel: the file gets the
/// directory's group (100). unionfs: group 0 — the file is made in the workdir (not
/// setgid) and moved over the whiteout, and unionfs skips fixing the owner for a root
/// caller on the assumption that the branch filesystem applied the setgid rule.
#[test]
fn regression_create_over_whiteout_in_setgid_dir_group() {
    check(&[
        Op::Chmod {
            p: "x",
            mode: Oct(0o2755),
        },
        Op::Unlink("x/c"),
        Op::Create {
            p: "x/c",
            mode: Oct(0o644),
        },
    ]);
}

/// rename(2) from one name of a file to another name of the same file must do nothing
/// (POSIX). Kernel: nothing changes, nlink stays 3. unionfs: all three names remain but
/// nlink drops to 2 (persistently). Reached through the st_ino bug above: the new link
/// x/z/b gets its own inode number, so the VFS cannot see that source and target are one
/// file and unionfs's rename runs, counting a replaced link that was not removed.
#[test]
fn regression_rename_between_links_of_one_file_nlink() {
    check(&[
        Op::Link {
            from: "c",
            to: "x/z/b",
        },
        Op::Rename {
            from: "c",
            to: "x/z/b",
            how: Rn::Plain,
        },
    ]);
}

/// The same for a failing rename (ENOTEMPTY: x is not empty): unionfs copies the source's
/// parent y up first; the kernel does not. y's nlink: kernel 3, unionfs 1.
#[test]
fn regression_failed_rename_copies_up_parent() {
    check(&[Op::Rename {
        from: "y/z",
        to: "x",
        how: Rn::Plain,
    }]);
}

/// Moving a directory out of a directory that was itself renamed. Kernel: the moved
/// directory gets `redirect=/x/z` (its path in the lowers) and shows l2's x/z content.
/// unionfs: writes `redirect=/b/z` (its path in the union before the move); resolving
/// that in l1, where b is a whiteout (char 0:0), fails with ENOTDIR, and that error makes
/// readdir of the ROOT fail with ENOTDIR — the whole mount is unlistable, also after a
/// remount.
#[test]
fn regression_redirect_of_dir_moved_out_of_renamed_dir() {
    check(&[
        Op::Rename {
            from: "x",
            to: "b",
            how: Rn::Plain,
        },
        Op::Rename {
            from: "b/z",
            to: "x",
            how: Rn::Plain,
        },
    ]);
}

/// The same with RENAME_EXCHANGE: after x <-> y, x/z (which is l1's y/z) is exchanged with
/// c. Kernel: c gets `redirect=/y/z` and holds y/z/a. unionfs: `redirect=/x/z`, so c shows
/// l2's x/z/a and x/z/z instead.
#[test]
fn regression_redirect_after_exchange_of_parents() {
    check(&[
        Op::Rename {
            from: "y",
            to: "x",
            how: Rn::Exchange,
        },
        Op::Rename {
            from: "c",
            to: "x/z",
            how: Rn::Exchange,
        },
    ]);
}

/// A file renamed into a directory that the rename copies up (x/z), then looked up
/// again (a failing mkdir forces the kernel to revalidate the name). unionfs answers the
/// new lookup with another inode number than the rename kept (the upper file's own
/// number instead of the recorded one: the directory was marked impure on disk, but not
/// in the directory's in-memory state). The kernel then holds two inodes for one file,
/// so data written through an fd opened before is invisible to a reader that opens the
/// path: kernel reads 5002 bytes, unionfs 5 (stale cached size). After a remount the
/// number is the recorded one again.
#[test]
fn regression_renamed_file_changes_st_ino_on_relookup() {
    check(&[
        Op::Rename {
            from: "a",
            to: "x/z/a",
            how: Rn::Plain,
        },
        Op::Open {
            p: "x/z/a",
            slot: 0,
            rw: true,
        },
        Op::Mkdir {
            p: "x/z/a",
            mode: Oct(0o755),
        },
        Op::WriteFd {
            slot: 0,
            off: 5000,
            data: 1,
        },
        Op::Read("x/z/a"),
    ]);
}

/// fstat through a descriptor opened before another name of the file was replaced by
/// rename. x/c (one name of the lower hard-linked pair c, x/c) is moved to y/c, c is
/// opened, then y/c is replaced. Kernel: fstat says nlink 1 (so does stat c on both
/// sides). unionfs: fstat through the descriptor still says nlink 2.
#[test]
fn regression_fstat_nlink_after_other_link_replaced() {
    check(&[
        Op::Rename {
            from: "x/c",
            to: "y/c",
            how: Rn::Plain,
        },
        Op::Open {
            p: "c",
            slot: 0,
            rw: false,
        },
        Op::Rename {
            from: "x/z/z",
            to: "y/c",
            how: Rn::Plain,
        },
        Op::FstatFd(0),
    ]);
}

/// A lower file opened read-only, then written through a second descriptor (which copies
/// it up), then read through the first one. Kernel: the first descriptor reads the new
/// 10 bytes. unionfs once read the new data cut to the old size, "01234" (5 bytes): the
/// size the kernel holds for the first descriptor's file was not updated by the write.
/// Now, by default (lower files passed through), the first descriptor reads the old
/// lower file whole, the documented difference `Side::reads_as_at_open` accepts; under
/// `passthrough=upper` it reads the copy, as the kernel.
#[test]
fn regression_fd_opened_before_copy_up_reads_stale_size() {
    check(&[
        Op::Open {
            p: "a",
            slot: 1,
            rw: false,
        },
        Op::Write {
            p: "a",
            how: Wr::Plain,
            off: 0,
            data: 2,
        },
        Op::ReadFd(1),
    ]);
}

/// The same, with fstat(2) of the first descriptor instead of a read: its attributes
/// are the copy's (size 5002), as the kernel says. unionfs answered the lower file's
/// (size 9) under `passthrough=all`: the reader's handle is on the lower file, and the
/// kernel kept the old node's attributes cached (found by CI, stop 18).
#[test]
fn regression_fstat_of_fd_opened_before_copy_up() {
    let lowers = gen_lowers(&[&[("d", Obj::Dir), ("d/d", Obj::File(0))], &[]]);
    for fmt in [Fmt::Overlay, Fmt::Aufs] {
        fstat_of_fd_opened_before_copy_up(&lowers, fmt);
    }
}

fn fstat_of_fd_opened_before_copy_up(lowers: &GenLowers, fmt: Fmt) {
    check_on(
        &Lowers::Gen(lowers.clone()),
        &[
            Op::Open {
                p: "d/d",
                slot: 1,
                rw: false,
            },
            Op::Stat("d/d"),
            Op::Write {
                p: "d/d",
                how: Wr::Plain,
                off: 5000,
                data: 1,
            },
            Op::FstatFd(1),
        ],
        Check::Full,
        fmt,
    );
}

/// fstat of a descriptor whose file was renamed and then replaced by another rename
/// (its last name gone). Kernel: the copied-up file, nlink 0. unionfs answered ESTALE:
/// lookups reach upper objects by file handle, which cannot reopen an unlinked object
/// (found by CI, session 8). The union now keeps an fd of every upper object it removes
/// in the nodes the kernel still holds for it.
#[test]
fn regression_fstat_of_fd_whose_file_lost_its_last_name() {
    let lowers = gen_lowers(&[
        &[],
        &[
            ("d", Obj::Dir),
            ("d/d", Obj::Dir),
            ("d/d/d", Obj::File(0)),
            ("d/d/e", Obj::File(0)),
        ],
    ]);
    // the name goes by a rename over it, or by an unlink
    let last_steps = [
        Op::Rename {
            from: "d/d/d",
            to: "d/d/n",
            how: Rn::Plain,
        },
        Op::Unlink("d/d/n"),
    ];
    for fmt in [Fmt::Overlay, Fmt::Aufs] {
        for last in &last_steps {
            check_on(
                &Lowers::Gen(lowers.clone()),
                &[
                    Op::Open {
                        p: "d/d/e",
                        slot: 0,
                        rw: false,
                    },
                    Op::Rename {
                        from: "d/d/e",
                        to: "d/d/n",
                        how: Rn::Plain,
                    },
                    last.clone(),
                    Op::FstatFd(0),
                ],
                Check::Full,
                fmt,
            );
        }
    }
}

/// O_TMPFILE in a merged directory. Kernel: works. unionfs answered EOPNOTSUPP while
/// fuser had no FUSE_TMPFILE request (the vendored fuser carries it now).
#[test]
fn regression_o_tmpfile() {
    check(&[Op::Tmpfile("x")]);
}

/// An O_TMPFILE file linked into the union: over a lower name deleted first (the link
/// replaces the whiteout), under a second name, and into a directory that was lower only.
#[test]
fn regression_o_tmpfile_linked() {
    check(&[
        Op::Unlink("c"),
        Op::TmpfileLink { dir: "x", to: "c" },
        Op::TmpfileLink {
            dir: "",
            to: "x/z/t",
        },
        Op::Link {
            from: "c",
            to: "x/c2",
        },
        Op::Read("c"),
        Op::Stat("x/c2"),
    ]);
}

/// Kernel overlayfs reading unionfs's upper and workdir after a write to one name (c) of
/// a lower hard-linked pair. unionfs keeps the pair together through an index of its own
/// (`WORKDIR/unionfs-index`), the kernel through `WORKDIR/index` in its own format, so
/// the kernel knows nothing of unionfs's index: the upper holds c's new data but nothing
/// for x/c, and under the kernel x/c still shows the old lower data ("l1:c..."), while
/// the kernel on its own upper shows "hi:c..." under both names. (An incompatibility of
/// formats rather than a slip: the fix is for unionfs to write the kernel's index entries
/// and `trusted.overlay.origin` too.)
#[test]
fn regression_kernel_reads_upper_lower_hardlink_copy_up() {
    check_with(
        &[Op::Write {
            p: "c",
            how: Wr::Plain,
            off: 0,
            data: 1,
        }],
        Check::KernelReadsUpper,
    );
}

/// The fixture alone (no ops): both views, the remount and the lowers agree.
#[test]
fn fixture_views_agree() {
    check(&[]);
}

/// The fixture alone, read by the kernel from an upper unionfs mounted once.
#[test]
fn fixture_kernel_reads_unionfs_upper() {
    check_with(&[], Check::KernelReadsUpper);
}

/// utimensat with nanoseconds on a lower file copies it up with exactly that mtime.
#[test]
fn utimensat_nanoseconds_on_lower_file() {
    let t = (1_234_567_890, 987_654_321);
    let Some(out) = check(&[Op::Utimens {
        p: "x/a",
        atime: Ts::Omit,
        mtime: Ts::At(t.0, t.1),
    }]) else {
        return;
    };
    for (side, s) in [("kernel", &out.kernel), ("unionfs", &out.unionfs)] {
        let e = s["x/a"].as_ref().unwrap();
        assert_eq!(e.mtime, t, "{side}: mtime of x/a");
        assert_eq!(
            e.content.as_deref().map(|c| c.contains("l1:x/a")),
            Some(true)
        );
    }
}

/// A hard-linked lower file renamed (metadata-only copy-up into the index), then opened
/// for writing (its data copied up). Kernel with `metacopy=on`: the file's mtime becomes
/// "now" — a kernel bug, the kernel without metacopy keeps it. unionfs keeps it; the
/// oracle runs without metacopy (see `MountGuard::kernel`).
#[test]
fn regression_metacopy_rename_then_write_keeps_mtime() {
    check(&[
        Op::Rename {
            from: "x/c",
            to: "x/z/a",
            how: Rn::Plain,
        },
        Op::Open {
            p: "c",
            slot: 0,
            rw: true,
        },
    ]);
}

/// As above, with the other name unlinked first.
#[test]
fn regression_metacopy_unlink_then_write_keeps_mtime() {
    check(&[
        Op::Unlink("c"),
        Op::CopyRange {
            from: "x",
            to: "x/c",
        },
    ]);
}

/// Issue 11, item 1: a directory moved to a new place (`mkdir e/n; rename d/d e/n/x`)
/// gets `redirect=/d/d`. In the lower below, `d` is a regular file: following the
/// redirect there must end the search in that lower and below (overlayfs
/// `ovl_lookup_layer`), never fail. Kernel: e/n/x is a directory. unionfs: ENOTDIR as
/// soon as the name is looked up again (at once with `-o ttl=0`, here after the remount),
/// and the directory and everything under it drop out of the view.
fn redirect_through_lower_file(fmt: Fmt) {
    let lowers = gen_lowers(&[
        &[("d", Obj::Dir), ("d/d", Obj::Dir), ("e", Obj::Dir)],
        &[("d", Obj::File(0))],
    ]);
    check_on(
        &Lowers::Gen(lowers),
        &[
            Op::Mkdir {
                p: "e/n",
                mode: Oct(0o755),
            },
            Op::Rename {
                from: "d/d",
                to: "e/n/x",
                how: Rn::Plain,
            },
            Op::Stat("e/n/x"),
        ],
        Check::Full,
        fmt,
    );
}

#[test]
fn regression_redirect_through_lower_file() {
    redirect_through_lower_file(Fmt::Overlay);
}

#[test]
fn regression_redirect_through_lower_file_aufs() {
    redirect_through_lower_file(Fmt::Aufs);
}

/// A rename of a lower directory over a non-empty directory that only the upper holds
/// (made by mkdir). Kernel: no emptiness check before copy-up for such a target
/// (`ovl_pure_upper`): the source (and its parents) are copied up, then the upper's
/// rename fails with ENOTEMPTY, so e and e/e are merged directories afterwards (nlink 1).
/// unionfs: failed before copying anything up (nlink 3 and 2). Found by the generated
/// lowers at 1024 cases.
fn failed_rename_over_upper_dir_copies_up_source(fmt: Fmt) {
    let lowers = gen_lowers(&[
        &[("e", Obj::Dir), ("e/e", Obj::Dir), ("e/e/d", Obj::Dir)],
        &[],
    ]);
    check_on(
        &Lowers::Gen(lowers),
        &[
            Op::Mkdir {
                p: "n",
                mode: Oct(0o755),
            },
            Op::Mkdir {
                p: "n/d",
                mode: Oct(0o755),
            },
            Op::Rename {
                from: "e/e/d",
                to: "n",
                how: Rn::Plain,
            },
            Op::Rename {
                from: "e/e",
                to: "n",
                how: Rn::Plain,
            },
        ],
        Check::Full,
        fmt,
    );
}

#[test]
fn regression_failed_rename_over_upper_dir_copies_up_source() {
    failed_rename_over_upper_dir_copies_up_source(Fmt::Overlay);
}

#[test]
fn regression_failed_rename_over_upper_dir_copies_up_source_aufs() {
    failed_rename_over_upper_dir_copies_up_source(Fmt::Aufs);
}

/// An opaque directory on a redirect's path in a lower ends the search in that lower and
/// below, as a file there does. Kernel: /n/e absent (l1's e is opaque, so l2's e/e/e
/// never shows). unionfs before the layer walk: the redirect `/e/e` was opened in every
/// lower on its own, and l2's e/e/e leaked into /n.
fn redirect_through_opaque_lower_dir(fmt: Fmt) {
    let lowers = gen_lowers(&[
        &[("e", Obj::Opaque), ("e/e", Obj::Dir)],
        &[("e", Obj::Dir), ("e/e", Obj::Dir), ("e/e/e", Obj::Dir)],
    ]);
    check_on(
        &Lowers::Gen(lowers),
        &[
            Op::Rename {
                from: "e/e",
                to: "n",
                how: Rn::Plain,
            },
            Op::Stat("n/e"),
            Op::Rmdir("n"),
        ],
        Check::Full,
        fmt,
    );
}

#[test]
fn regression_redirect_through_opaque_lower_dir() {
    redirect_through_opaque_lower_dir(Fmt::Overlay);
}

#[test]
fn regression_redirect_through_opaque_lower_dir_aufs() {
    redirect_through_opaque_lower_dir(Fmt::Aufs);
}

/// copy_file_range from a lower file onto itself, overlapping. Kernel: EINVAL (one
/// inode). unionfs copied: the destination's open for writing moved the file to a new
/// node (the source, opened first, pinned the old one to the lower file), so the
/// kernel saw two inodes and left the check to the daemon.
#[test]
fn regression_copy_range_onto_itself_after_the_writer_moved_to_a_new_node() {
    check(&[Op::CopyRange {
        from: "x/z/a",
        to: "x/z/a",
    }]);
}

/// Found by CI (session 11): a write through one name of a hard-linked
/// lower file after its other name was copied up showed the first name's
/// new content with the lower file's size and mtime.
#[test]
fn regression_hardlink_write_through_second_name_keeps_attrs_fresh() {
    check(&[
        Op::CopyRange {
            from: "c",
            to: "x/c",
        },
        Op::Write {
            p: "x",
            how: Wr::Append,
            off: 0,
            data: 3,
        },
        Op::Link {
            from: "z",
            to: "x/z",
        },
        Op::Write {
            p: "c",
            how: Wr::Creat,
            off: 5000,
            data: 2,
        },
        Op::Mkdir {
            p: "y/b",
            mode: Oct(0o755),
        },
    ]);
}

/// A name of a hard-linked lower file read before its other name was
/// copied up still leads the kernel to the retired node (`retire`): a
/// change through it must show through the other name, whose node the
/// kernel caches (found with the CI case above, session 11).
#[test]
fn regression_attribute_changes_through_a_retired_node_show_by_the_other_name() {
    let retire = Op::CopyRange {
        from: "c",
        to: "x/c",
    };
    for then in [
        Op::Chmod {
            p: "c",
            mode: Oct(0o600),
        },
        Op::Chown {
            p: "c",
            uid: Some(7),
            gid: None,
        },
        Op::Utimens {
            p: "c",
            atime: Ts::At(5, 6),
            mtime: Ts::At(7, 8),
        },
        Op::Truncate { p: "c", len: 3 },
        Op::Write {
            p: "c",
            how: Wr::Plain,
            off: 5000,
            data: 2,
        },
    ] {
        check(&[retire.clone(), then]);
    }
}

/// The same for a link count changed by a name: linked, unlinked, renamed
/// over.
#[test]
fn regression_link_count_changes_through_a_retired_node_show_by_the_other_name() {
    let retire = Op::CopyRange {
        from: "c",
        to: "x/c",
    };
    check(&[retire.clone(), Op::Unlink("c")]);
    check(&[
        retire.clone(),
        Op::Link {
            from: "c",
            to: "y/n",
        },
    ]);
    check(&[
        retire.clone(),
        Op::Rename {
            from: "a",
            to: "c",
            how: Rn::Plain,
        },
    ]);
    check(&[
        Op::CopyRange {
            from: "x/c",
            to: "c",
        },
        Op::Link {
            from: "x/c",
            to: "y/n",
        },
        Op::Unlink("x/c"),
    ]);
}
