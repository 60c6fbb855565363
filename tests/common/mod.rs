//! Helpers shared by the integration tests of `unionfs`.
//!
//! * [`Scratch`]: a unique temporary directory per test; on drop it detaches every mount
//!   still under it and ends leftover `unionfs` daemons started for it, then deletes it.
//! * [`Mount`]: an RAII guard for one mount (unionfs, kernel overlay or anything else);
//!   `Drop` always unmounts (`umount`, then `umount -l` semantics as a fallback).
//! * Fixture builders writing every whiteout/opaque format into a branch directory.
//! * [`snapshot`]: the tree as a user sees it (never following symlinks), [`diff`] and
//!   [`assert_tree_eq`] to compare two trees readably, and [`ino_problems`] to check
//!   st_ino rules (unique per object, shared by hard links) generically.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;

// ---------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_unionfs"))
}

/// Returns false (the test skips) after saying why, or panics when
/// `UNIONFS_TEST_REQUIRE=1` (CI), where a test that cannot run is a failure.
pub fn skip_or_fail(why: &str) -> bool {
    if std::env::var_os("UNIONFS_TEST_REQUIRE").is_some_and(|v| v == "1") {
        panic!("UNIONFS_TEST_REQUIRE=1 but the test cannot run: {why}");
    }
    eprintln!("SKIP: {why}");
    false
}

/// True when mounts can be made here (root). Prints why and returns false otherwise, so the
/// test can `return` early. Set `UNIONFS_TEST_REQUIRE=1` to turn skips into failures.
pub fn can_mount_overlay() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return skip_or_fail("not running as root");
    }
    true
}

/// True when FUSE mounts can be made here (root and /dev/fuse).
pub fn can_mount_fuse() -> bool {
    if !can_mount_overlay() {
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        return skip_or_fail("/dev/fuse is missing");
    }
    true
}

/// True when FUSE mounts and ext4 images on loop devices can be made here.
pub fn can_loop_mount_ext4() -> bool {
    if !can_mount_fuse() {
        return false;
    }
    if !run(
        "sh",
        &["-c", "command -v mkfs.ext4 && test -e /dev/loop-control"],
    )
    .ok()
    {
        return skip_or_fail("no mkfs.ext4 or no loop devices");
    }
    true
}

// ---------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------

/// Result of a finished command.
#[derive(Debug)]
pub struct Cmd {
    pub argv: Vec<OsString>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Cmd {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` -> {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.argv
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

/// How long a single command (mount, umount) may take before the test gives up. This is
/// a hang guard only: no test relies on anything finishing within a time.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// Runs a command with stdin closed and stdout/stderr captured through unnamed temporary
/// files (not pipes: a daemon that keeps the inherited descriptors open must not make the
/// test wait for it). Kills it and panics if it has not exited after [`COMMAND_DEADLINE`].
pub fn run<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Cmd {
    let mut argv = vec![program.as_ref().to_os_string()];
    argv.extend(args.iter().map(|a| a.as_ref().to_os_string()));
    let mut out = tempfile::tempfile().expect("tempfile");
    let mut err = tempfile::tempfile().expect("tempfile");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > COMMAND_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{argv:?} did not exit within {COMMAND_DEADLINE:?} (hang?)");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read_back = |f: &mut fs::File| {
        let mut s = Vec::new();
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.read_to_end(&mut s).expect("read");
        String::from_utf8_lossy(&s).into_owned()
    };
    Cmd {
        stdout: read_back(&mut out),
        stderr: read_back(&mut err),
        argv,
        status,
    }
}

/// Runs the binary under test.
pub fn run_bin<S: AsRef<OsStr>>(args: &[S]) -> Cmd {
    run(bin(), args)
}

/// Polls `cond` every few milliseconds until it holds or `limit` passes. Used only to wait
/// for processes to go away; the limit is a hang guard, generous on purpose.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// Mount table and processes
// ---------------------------------------------------------------------------------------

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub options: String,
}

fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// All mounts visible to this process.
pub fn mounts() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountInfo {
                mount_point: unescape_mountinfo(l.get(4)?),
                options: l.get(5)?.to_string(),
                fstype: r.first()?.to_string(),
                source: r.get(1).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// The topmost mount at exactly `path`, if any.
pub fn mount_at(path: &Path) -> Option<MountInfo> {
    mounts().into_iter().rev().find(|m| m.mount_point == path)
}

pub fn is_mounted(path: &Path) -> bool {
    mount_at(path).is_some()
}

/// Mounts at `root` or below it.
pub fn mounts_under(root: &Path) -> Vec<MountInfo> {
    mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(root))
        .collect()
}

fn proc_cmdline(pid: i32) -> Option<Vec<OsString>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None; // kernel thread or zombie
    }
    Some(
        raw.split(|&c| c == 0)
            .filter(|s| !s.is_empty())
            .map(|s| OsStr::from_bytes(s).to_os_string())
            .collect(),
    )
}

fn all_pids() -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

fn is_unionfs_process(argv: &[OsString]) -> bool {
    argv.first()
        .and_then(|a0| Path::new(a0).file_name())
        .is_some_and(|n| n.to_string_lossy().contains("unionfs"))
}

/// Live `unionfs` processes that have `mnt` as one of their arguments (the daemon keeps
/// the command line it was started with).
pub fn daemon_pids(mnt: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            proc_cmdline(pid).is_some_and(|argv| {
                is_unionfs_process(&argv) && argv.iter().skip(1).any(|a| Path::new(a) == mnt)
            })
        })
        .collect()
}

/// Live `unionfs` processes with any argument under `root` (used to clean up after a test).
pub fn daemon_pids_under(root: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            proc_cmdline(pid).is_some_and(|argv| {
                is_unionfs_process(&argv)
                    && argv.iter().skip(1).any(|a| {
                        let s = a.as_bytes();
                        // arguments may be "A:B" lists or "-o lowerdir=..." strings
                        s.windows(root.as_os_str().len())
                            .any(|w| w == root.as_os_str().as_bytes())
                    })
            })
        })
        .collect()
}

/// True while the process exists and is not a zombie, or its main thread
/// is one but another thread still runs: the process's fds (a daemon's
/// hold on its upper) go only with its last thread.
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            // state is the first field after the ")" that closes comm
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            match state {
                Some('X') | None => false,
                Some('Z') => fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|tasks| tasks.count() > 1)
                    .unwrap_or(false),
                Some(_) => true,
            }
        }
    }
}

fn detach(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
}

fn kill_pid(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

// ---------------------------------------------------------------------------------------
// Scratch directories
// ---------------------------------------------------------------------------------------

/// A unique temporary directory for one test. Dropping it first detaches any mount left
/// under it and kills leftover unionfs daemons that were started on paths under it, so a
/// failing test never deletes files through a live mount or leaves a daemon behind.
pub struct Scratch {
    pub root: PathBuf,
    td: Option<tempfile::TempDir>,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        Self::new_in(tag, &std::env::temp_dir())
    }

    pub fn new_in(tag: &str, parent: &Path) -> Scratch {
        let td = tempfile::Builder::new()
            .prefix(&format!("unionfs-test-{tag}-"))
            .tempdir_in(parent)
            .expect("create temp dir");
        let root = td.path().canonicalize().expect("canonicalize temp dir");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
        Scratch { root, td: Some(td) }
    }

    /// Creates (mode 0755) and returns `root/name`.
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        fs::create_dir_all(&p).expect("mkdir");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    /// `root/name`, not created.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut left = mounts_under(&self.root);
        left.sort_by_key(|m| std::cmp::Reverse(m.mount_point.as_os_str().len()));
        for m in &left {
            eprintln!(
                "cleanup: detaching leftover mount {}",
                m.mount_point.display()
            );
            detach(&m.mount_point);
        }
        let pids = daemon_pids_under(&self.root);
        if !pids.is_empty() {
            // give daemons whose mount just went away a moment to exit by themselves
            wait_until(Duration::from_secs(5), || {
                pids.iter().all(|&p| !pid_alive(p))
            });
            for &p in &pids {
                if pid_alive(p) {
                    eprintln!("cleanup: killing leftover unionfs daemon pid {p}");
                    kill_pid(p);
                }
            }
        }
        if !mounts_under(&self.root).is_empty() {
            // never delete through a live mount: leak the directory instead
            eprintln!(
                "cleanup: mounts remain under {}; leaving it",
                self.root.display()
            );
            if let Some(td) = self.td.take() {
                let _ = td.keep();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Mount guard
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Unionfs,
    Overlay,
    Other,
}

/// RAII guard for one mount. `Drop` unmounts (plain `umount`, then a lazy detach) and, for
/// unionfs, makes sure the daemon is gone.
pub struct Mount {
    pub mnt: PathBuf,
    pub kind: MountKind,
    /// stderr of the mount command (warnings).
    pub stderr: String,
    /// unionfs daemon processes serving this mount, found right after mounting.
    pub daemon_pids: Vec<i32>,
    active: bool,
}

fn colon_list(paths: &[&Path]) -> OsString {
    let mut s = OsString::new();
    for (i, p) in paths.iter().enumerate() {
        if i > 0 {
            s.push(":");
        }
        s.push(p.as_os_str());
    }
    s
}

impl Mount {
    /// `unionfs mount L1:L2:... UPPER|- MNT`; panics unless it exits 0 with the mount live.
    pub fn unionfs(lowers: &[&Path], upper: Option<&Path>, mnt: &Path) -> Mount {
        let args: Vec<OsString> = vec![
            "mount".into(),
            colon_list(lowers),
            upper.map_or_else(|| OsString::from("-"), |u| u.as_os_str().to_os_string()),
            mnt.as_os_str().to_os_string(),
        ];
        Self::unionfs_args(&args, mnt)
    }

    /// `unionfs mount LOWER UPPER MNT -o OPTS`; panics unless it mounted.
    pub fn unionfs_opts(lower: &Path, upper: &Path, mnt: &Path, opts: &str) -> Mount {
        Self::unionfs_args(
            &[
                "mount".as_ref(),
                lower.as_os_str(),
                upper.as_os_str(),
                mnt.as_os_str(),
                "-o".as_ref(),
                OsStr::new(opts),
            ],
            mnt,
        )
    }

    /// Runs the binary with `args` (which must mount at `mnt`). Exit 0 must mean the mount
    /// is live: it is checked immediately after the command returns.
    pub fn unionfs_args<S: AsRef<OsStr>>(args: &[S], mnt: &Path) -> Mount {
        let out = run_bin(args);
        if !out.ok() {
            panic!("mount command failed:\n{out}");
        }
        let Some(info) = mount_at(mnt) else {
            // Exit 0 must mean "mounted and serving". Check whether the mount shows up
            // late, only to clean it up and give a precise message.
            let late = wait_until(Duration::from_secs(5), || is_mounted(mnt));
            let guard = Mount {
                mnt: mnt.to_path_buf(),
                kind: MountKind::Unionfs,
                stderr: out.stderr.clone(),
                daemon_pids: daemon_pids(mnt),
                active: true,
            };
            drop(guard);
            if late {
                panic!(
                    "the mount command exited 0 before the mount was live (it appeared \
                     later); exit 0 must mean mounted:\n{out}"
                );
            }
            panic!(
                "the mount command exited 0 but nothing is mounted at {}:\n{out}",
                mnt.display()
            );
        };
        let m = Mount {
            mnt: mnt.to_path_buf(),
            kind: MountKind::Unionfs,
            stderr: out.stderr.clone(),
            daemon_pids: daemon_pids(mnt),
            active: true,
        };
        assert!(
            info.fstype.starts_with("fuse"),
            "expected a FUSE mount at {}, found {:?}",
            mnt.display(),
            info
        );
        m
    }

    /// Kernel overlayfs: `mount -t overlay overlay -o lowerdir=..,upperdir=..,workdir=..`.
    pub fn overlay(
        lowers: &[&Path],
        upper_work: Option<(&Path, &Path)>,
        mnt: &Path,
        extra_opts: &str,
    ) -> Mount {
        let mut opts = OsString::from("lowerdir=");
        opts.push(colon_list(lowers));
        if let Some((u, w)) = upper_work {
            opts.push(",upperdir=");
            opts.push(u);
            opts.push(",workdir=");
            opts.push(w);
        }
        if !extra_opts.is_empty() {
            opts.push(",");
            opts.push(extra_opts);
        }
        let args: Vec<OsString> = vec![
            "-t".into(),
            "overlay".into(),
            "overlay".into(),
            "-o".into(),
            opts,
            mnt.as_os_str().to_os_string(),
        ];
        let out = run("mount", &args);
        assert!(out.ok(), "kernel overlay mount failed:\n{out}");
        assert!(is_mounted(mnt), "overlay not visible in mountinfo");
        Mount {
            mnt: mnt.to_path_buf(),
            kind: MountKind::Overlay,
            stderr: out.stderr,
            daemon_pids: Vec::new(),
            active: true,
        }
    }

    /// Guard for a mount made some other way (e.g. a tmpfs).
    pub fn adopt(mnt: &Path) -> Mount {
        Mount {
            mnt: mnt.to_path_buf(),
            kind: MountKind::Other,
            stderr: String::new(),
            daemon_pids: Vec::new(),
            active: true,
        }
    }

    /// Unmounts with `umount MNT` and checks that the mount and the daemon are gone.
    pub fn unmount(self) {
        self.unmount_with(&["umount"]);
    }

    /// Unmounts with `argv... MNT` (e.g. `["fusermount3", "-u"]`, or the binary's
    /// `umount` subcommand) and checks that the mount and the daemon are gone.
    pub fn unmount_with<S: AsRef<OsStr>>(mut self, argv: &[S]) {
        let mut args: Vec<OsString> = argv[1..].iter().map(|a| a.as_ref().into()).collect();
        args.push(self.mnt.as_os_str().to_os_string());
        // Tests run in parallel threads: a child another test forks holds
        // copies of every fd of this process until it execs, so "busy" can
        // be transient. Retry for a while before calling it a failure.
        let mut out = run(argv[0].as_ref(), &args);
        for _ in 0..50 {
            if out.ok() || !out.stderr.contains("busy") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            out = run(argv[0].as_ref(), &args);
        }
        assert!(out.ok(), "unmount failed:\n{out}");
        assert!(
            !is_mounted(&self.mnt),
            "{} still mounted after {out}",
            self.mnt.display()
        );
        self.active = false;
        let pids = self.daemon_pids.clone();
        let gone = wait_until(Duration::from_secs(20), || {
            pids.iter().all(|&p| !pid_alive(p))
        });
        if !gone {
            for &p in &pids {
                kill_pid(p);
            }
            panic!(
                "unionfs daemon {pids:?} still running 20 s after its mount at {} was \
                 unmounted by {:?}",
                self.mnt.display(),
                argv.iter()
                    .map(|a| a.as_ref().to_os_string())
                    .collect::<Vec<_>>()
            );
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount")
                .arg(&self.mnt)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if is_mounted(&self.mnt) {
                detach(&self.mnt);
            }
        }
        if self.kind == MountKind::Unionfs {
            let pids = self.daemon_pids.clone();
            if !wait_until(Duration::from_secs(5), || {
                pids.iter().all(|&p| !pid_alive(p))
            }) {
                for &p in &pids {
                    kill_pid(p);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fixture builders
// ---------------------------------------------------------------------------------------

/// `root` joined with a path given as "/a/b" or "a/b".
pub fn at(root: &Path, rel: &str) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

fn ensure_parent(p: &Path) {
    if let Some(parent) = p.parent() {
        if !parent.exists() {
            fs::create_dir_all(parent).expect("mkdir parents");
        }
    }
}

/// Creates directory `rel` (and missing parents, 0755) and sets its mode.
pub fn mkdir(root: &Path, rel: &str, mode: u32) -> PathBuf {
    let p = at(root, rel);
    fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

/// Creates regular file `rel` (missing parents are created 0755).
pub fn file(root: &Path, rel: &str, content: &[u8], mode: u32) -> PathBuf {
    let p = at(root, rel);
    ensure_parent(&p);
    fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

pub fn symlink(root: &Path, rel: &str, target: &str) -> PathBuf {
    let p = at(root, rel);
    ensure_parent(&p);
    std::os::unix::fs::symlink(target, &p)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", p.display()));
    p
}

/// Hard link `new_rel` to the existing `existing_rel` (same branch).
pub fn hardlink(root: &Path, existing_rel: &str, new_rel: &str) -> PathBuf {
    let p = at(root, new_rel);
    ensure_parent(&p);
    fs::hard_link(at(root, existing_rel), &p)
        .unwrap_or_else(|e| panic!("link {}: {e}", p.display()));
    p
}

pub fn fifo(root: &Path, rel: &str, mode: u32) -> PathBuf {
    let p = at(root, rel);
    ensure_parent(&p);
    nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).expect("mkfifo");
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

fn mknod(p: &Path, kind: SFlag, major: u64, minor: u64, mode: u32) {
    ensure_parent(p);
    nix::sys::stat::mknod(
        p,
        kind,
        Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A real character device (not 0:0).
pub fn chardev(root: &Path, rel: &str, major: u64, minor: u64, mode: u32) -> PathBuf {
    let p = at(root, rel);
    mknod(&p, SFlag::S_IFCHR, major, minor, mode);
    p
}

pub fn blockdev(root: &Path, rel: &str, major: u64, minor: u64, mode: u32) -> PathBuf {
    let p = at(root, rel);
    mknod(&p, SFlag::S_IFBLK, major, minor, mode);
    p
}

/// A unix socket file.
pub fn socket(root: &Path, rel: &str) -> PathBuf {
    let p = at(root, rel);
    ensure_parent(&p);
    let l = std::os::unix::net::UnixListener::bind(&p).expect("bind socket");
    drop(l);
    p
}

pub fn set_xattr(root: &Path, rel: &str, name: &str, value: &[u8]) {
    let p = at(root, rel);
    xattr::set(&p, name, value)
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

/// lchown.
pub fn chown(root: &Path, rel: &str, uid: u32, gid: u32) {
    let p = at(root, rel);
    std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).expect("lchown");
}

/// Namespace of the overlay xattrs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    Trusted,
    User,
}

impl Ns {
    pub fn prefix(self) -> &'static str {
        match self {
            Ns::Trusted => "trusted.overlay.",
            Ns::User => "user.overlay.",
        }
    }
}

fn split_parent(rel: &str) -> (String, String) {
    let rel = rel.trim_start_matches('/');
    match rel.rsplit_once('/') {
        Some((d, n)) => (d.to_string(), n.to_string()),
        None => (String::new(), rel.to_string()),
    }
}

/// AUFS whiteout: `<parent>/.wh.<name>`, empty, mode 0 (as unpacked OCI layers have it).
pub fn wh_aufs(root: &Path, rel: &str) -> PathBuf {
    let (d, n) = split_parent(rel);
    file(root, &format!("{d}/.wh.{n}"), b"", 0o000)
}

/// AUFS opaque dir marker `<dir>/.wh..wh..opq` (creates the dir if needed).
pub fn opaque_aufs(root: &Path, dir: &str) -> PathBuf {
    if !at(root, dir).exists() {
        mkdir(root, dir, 0o755);
    }
    file(
        root,
        &format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
        b"",
        0o000,
    )
}

/// Overlay whiteout: character device 0:0 named `<name>`.
pub fn wh_chardev(root: &Path, rel: &str) -> PathBuf {
    let p = at(root, rel);
    mknod(&p, SFlag::S_IFCHR, 0, 0, 0o000);
    p
}

/// Overlay xattr whiteout: empty file with `<ns>.overlay.whiteout`, parent marked
/// `<ns>.overlay.opaque=x`.
pub fn wh_xattr(root: &Path, rel: &str, ns: Ns) -> PathBuf {
    let p = wh_xattr_unmarked(root, rel, ns);
    let (d, _) = split_parent(rel);
    set_xattr(root, &d, &format!("{}opaque", ns.prefix()), b"x");
    p
}

/// An empty file carrying the whiteout xattr whose parent is NOT marked opaque=x: per the
/// format this is not a whiteout, just a regular empty file.
pub fn wh_xattr_unmarked(root: &Path, rel: &str, ns: Ns) -> PathBuf {
    let p = file(root, rel, b"", 0o644);
    xattr::set(&p, format!("{}whiteout", ns.prefix()), b"").expect("set whiteout xattr");
    p
}

/// Sets an opaque xattr (`trusted.overlay.opaque`, `user.overlay.opaque`,
/// `user.fuseoverlayfs.opaque`) on `dir` (created if needed) with `value` (`y` or `x`).
pub fn opaque_xattr(root: &Path, dir: &str, name: &str, value: &[u8]) {
    if !at(root, dir).exists() {
        mkdir(root, dir, 0o755);
    }
    set_xattr(root, dir, name, value);
}

/// `trusted.overlay.redirect` on `dir`.
pub fn redirect(root: &Path, dir: &str, target: &str) {
    set_xattr(root, dir, "trusted.overlay.redirect", target.as_bytes());
}

/// unionfs-fuse whiteout `<root>/<meta>/<rel>_HIDDEN~` (`meta` is `.unionfs` or
/// `.unionfs-fuse`); a file, or a directory when `as_dir`.
pub fn wh_unionfs_fuse(root: &Path, rel: &str, meta: &str, as_dir: bool) -> PathBuf {
    let marker = format!("{meta}/{}_HIDDEN~", rel.trim_start_matches('/'));
    if as_dir {
        mkdir(root, &marker, 0o755)
    } else {
        file(root, &marker, b"", 0o644)
    }
}

/// Gives every object of the tree under `root` (root included, symlinks themselves) a
/// distinct deterministic mtime and atime: `base + i` seconds and `i * 1000` ns, in path
/// order. Call after the branch is complete (creating entries changes dir mtimes).
pub fn fix_times(root: &Path, base: i64) {
    let mut paths = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).expect("lstat");
        if md.is_dir() {
            for e in fs::read_dir(&p).expect("readdir") {
                stack.push(e.expect("dirent").path());
            }
        }
        paths.push(p);
    }
    paths.sort();
    for (i, p) in paths.iter().enumerate() {
        let t = TimeSpec::new(base + i as i64, (i as i64 * 1000) % 1_000_000_000);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
    }
}

/// Recursive copy preserving types, modes, owners, times, hard links (within the copy)
/// and all xattrs (including trusted.*). Used to give two mounts identical inputs.
pub fn copy_tree(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg("--preserve=all")
        .arg(src)
        .arg(dst)
        .status()
        .expect("cp");
    assert!(
        st.success(),
        "cp -a {} {} failed",
        src.display(),
        dst.display()
    );
}

// ---------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------

/// The type of an entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    Char(u64, u64),
    Block(u64, u64),
    /// listed by readdir but lstat failed with this error
    Missing(String),
}

/// File content: small files keep their bytes (readable diffs), larger ones a digest.
#[derive(Clone, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    Digest { len: u64, hash: u64 },
    Error(String),
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Bytes(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Content::Digest { len, hash } => write!(f, "<{len} bytes, hash {hash:016x}>"),
            Content::Error(e) => write!(f, "<read error {e}>"),
        }
    }
}

const INLINE_CONTENT: usize = 128;

pub fn content_of(bytes: &[u8]) -> Content {
    if bytes.len() <= INLINE_CONTENT {
        Content::Bytes(bytes.to_vec())
    } else {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        Content::Digest {
            len: bytes.len() as u64,
            hash: h.finish(),
        }
    }
}

pub type Xattrs = Result<Vec<(String, Vec<u8>)>, String>;

/// What a user sees of one path.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// permission bits incl. setuid/setgid/sticky (`st_mode & 0o7777`)
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub content: Option<Content>,
    pub target: Option<PathBuf>,
    /// `user.*` and `trusted.*` xattrs, sorted by name (other namespaces are not recorded)
    pub xattrs: Xattrs,
    pub ino: u64,
    pub dev: u64,
    /// readdir anomalies seen for this entry or its listing (duplicates, d_type mismatch)
    pub problems: Vec<String>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl Entry {
    fn missing(err: String) -> Entry {
        Entry {
            kind: Kind::Missing(err),
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 0,
            mtime: (0, 0),
            ctime: (0, 0),
            content: None,
            target: None,
            xattrs: Ok(Vec::new()),
            ino: 0,
            dev: 0,
            problems: Vec::new(),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// One-line description.
    pub fn describe(&self) -> String {
        if let Kind::Missing(e) = &self.kind {
            return format!("<listed by readdir but lstat fails: {e}>");
        }
        let mut s = format!(
            "{:?} {:04o} {}:{} nlink={}",
            self.kind, self.mode, self.uid, self.gid, self.nlink
        );
        if !self.is_dir() {
            s += &format!(" size={}", self.size);
        }
        if let Some(c) = &self.content {
            s += &format!(" content={c:?}");
        }
        if let Some(t) = &self.target {
            s += &format!(" -> {t:?}");
        }
        match &self.xattrs {
            Ok(x) if x.is_empty() => {}
            Ok(x) => s += &format!(" xattrs={}", fmt_xattrs(x)),
            Err(e) => s += &format!(" xattrs=<{e}>"),
        }
        s += &format!(
            " mtime={}.{:09} ino={}",
            self.mtime.0, self.mtime.1, self.ino
        );
        if !self.problems.is_empty() {
            s += &format!(" PROBLEMS={:?}", self.problems);
        }
        s
    }
}

fn fmt_xattrs(x: &[(String, Vec<u8>)]) -> String {
    let parts: Vec<String> = x
        .iter()
        .map(|(k, v)| format!("{k}={:?}", String::from_utf8_lossy(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// Errno name of an io::Error ("ENOENT").
pub fn errname(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{:?}", nix::errno::Errno::from_raw(code)),
        None => e.to_string(),
    }
}

/// Recorded xattrs of `p` (not following symlinks): `user.*` and `trusted.*`, sorted.
pub fn recorded_xattrs(p: &Path) -> Xattrs {
    let names = xattr::list(p).map_err(|e| format!("listxattr: {}", errname(&e)))?;
    let mut out = Vec::new();
    for n in names {
        let name = n.to_string_lossy().into_owned();
        if !(name.starts_with("user.") || name.starts_with("trusted.")) {
            continue;
        }
        match xattr::get(p, &n) {
            Ok(Some(v)) => out.push((name, v)),
            Ok(None) => out.push((name, b"<listed but ENODATA>".to_vec())),
            Err(e) => out.push((name, format!("<getxattr {}>", errname(&e)).into_bytes())),
        }
    }
    out.sort();
    Ok(out)
}

/// The [`Entry`] of one path (lstat; reads file contents and symlink targets).
pub fn entry_of(p: &Path) -> Entry {
    let md = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) => return Entry::missing(errname(&e)),
    };
    let ft = md.file_type();
    let rdev = md.rdev();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else if ft.is_char_device() {
        Kind::Char(nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
    } else {
        Kind::Block(nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
    };
    let content = (kind == Kind::File).then(|| match fs::read(p) {
        Ok(b) => content_of(&b),
        Err(e) => Content::Error(errname(&e)),
    });
    let target = (kind == Kind::Symlink).then(|| match fs::read_link(p) {
        Ok(t) => t,
        Err(e) => PathBuf::from(format!("<readlink error {}>", errname(&e))),
    });
    Entry {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: md.size(),
        nlink: md.nlink(),
        mtime: (md.mtime(), md.mtime_nsec()),
        ctime: (md.ctime(), md.ctime_nsec()),
        content,
        target,
        xattrs: recorded_xattrs(p),
        ino: md.ino(),
        dev: md.dev(),
        problems: Vec::new(),
    }
}

/// Tree keyed by absolute view path ("/", "/a", "/a/b").
pub type Snapshot = BTreeMap<PathBuf, Entry>;

/// `root` + view path.
pub fn view_path(root: &Path, rel: &Path) -> PathBuf {
    match rel.strip_prefix("/") {
        Ok(r) if r.as_os_str().is_empty() => root.to_path_buf(),
        Ok(r) => root.join(r),
        Err(_) => root.join(rel),
    }
}

fn kind_of_filetype(ft: &fs::FileType) -> &'static str {
    if ft.is_dir() {
        "Dir"
    } else if ft.is_file() {
        "File"
    } else if ft.is_symlink() {
        "Symlink"
    } else if ft.is_fifo() {
        "Fifo"
    } else if ft.is_socket() {
        "Socket"
    } else if ft.is_char_device() {
        "Char"
    } else {
        "Block"
    }
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Dir => "Dir",
        Kind::File => "File",
        Kind::Symlink => "Symlink",
        Kind::Fifo => "Fifo",
        Kind::Socket => "Socket",
        Kind::Char(..) => "Char",
        Kind::Block(..) => "Block",
        Kind::Missing(_) => "Missing",
    }
}

/// Walks the tree under `root` without following symlinks and without descending into
/// directories whose st_dev differs from the root's (other mounts inside a raw tree; in a
/// union view every directory has the mount's st_dev). Records every entry; readdir
/// duplicates and d_type/lstat disagreements are recorded as problems.
pub fn snapshot(root: &Path) -> Snapshot {
    let root_dev = fs::symlink_metadata(root).map(|m| m.dev()).ok();
    let mut out = BTreeMap::new();
    let mut stack: Vec<(PathBuf, Option<&'static str>)> = vec![(PathBuf::from("/"), None)];
    while let Some((rel, dtype)) = stack.pop() {
        let full = view_path(root, &rel);
        let mut e = entry_of(&full);
        if let Some(dt) = dtype {
            let k = kind_name(&e.kind);
            if k != "Missing" && k != dt {
                e.problems
                    .push(format!("readdir d_type says {dt}, lstat says {k}"));
            }
        }
        if e.is_dir() && Some(e.dev) == root_dev {
            match fs::read_dir(&full) {
                Err(err) => e.problems.push(format!("opendir: {}", errname(&err))),
                Ok(rd) => {
                    let mut seen = BTreeSet::new();
                    for de in rd {
                        match de {
                            Err(err) => {
                                e.problems.push(format!("readdir: {}", errname(&err)));
                                break;
                            }
                            Ok(de) => {
                                let name = de.file_name();
                                if !seen.insert(name.clone()) {
                                    e.problems.push(format!("readdir lists {name:?} twice"));
                                    continue;
                                }
                                let dt = de.file_type().ok().map(|t| kind_of_filetype(&t));
                                stack.push((rel.join(&name), dt));
                            }
                        }
                    }
                }
            }
        }
        out.insert(rel, e);
    }
    out
}

/// Names directly inside `dir` (a view path) in a snapshot.
pub fn children(s: &Snapshot, dir: &str) -> Vec<String> {
    let d = PathBuf::from(dir);
    s.keys()
        .filter(|p| p.parent() == Some(d.as_path()) && p.as_path() != d.as_path())
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Snapshots of several branch dirs (for the "lowers unchanged" check).
pub fn snapshot_all(roots: &[&Path]) -> Vec<(PathBuf, Snapshot)> {
    roots
        .iter()
        .map(|r| (r.to_path_buf(), snapshot(r)))
        .collect()
}

/// Asserts that branches are exactly as before (contents, metadata incl. ctime and inode
/// numbers, all user/trusted xattrs); only atime may change.
pub fn assert_unchanged(before: &[(PathBuf, Snapshot)]) {
    for (root, snap) in before {
        let now = snapshot(root);
        assert_tree_eq(
            &format!("branch {} changed", root.display()),
            snap,
            &now,
            Cmp::EXACT,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------------------

/// Which fields [`diff`] compares. Kind, mode, uid, gid, content, symlink target, xattrs
/// and readdir problems are always compared.
#[derive(Debug, Clone, Copy)]
pub struct Cmp {
    pub nlink: bool,
    pub mtime: bool,
    /// compare the root entry's mtime (off when the two roots are different dirs)
    pub root_mtime: bool,
    pub ctime: bool,
    /// compare st_size of directories
    pub dir_size: bool,
    pub ino: bool,
    pub dev: bool,
}

impl Cmp {
    /// A union view against its expectation: everything a user sees except st_ino/st_dev
    /// (checked separately by [`ino_problems`]), ctime and directory sizes.
    pub const VIEW: Cmp = Cmp {
        nlink: true,
        mtime: true,
        root_mtime: true,
        ctime: false,
        dir_size: false,
        ino: false,
        dev: false,
    };
    /// Raw trees that must be identical (only atime may differ).
    pub const EXACT: Cmp = Cmp {
        nlink: true,
        mtime: true,
        root_mtime: true,
        ctime: true,
        dir_size: true,
        ino: true,
        dev: true,
    };
}

fn entry_diff(e: &Entry, a: &Entry, cmp: Cmp, is_root: bool) -> Vec<String> {
    let mut d = Vec::new();
    macro_rules! field {
        ($name:literal, $ex:expr, $ac:expr) => {
            if $ex != $ac {
                d.push(format!("{}: expected {:?}, got {:?}", $name, $ex, $ac));
            }
        };
    }
    field!("type", e.kind, a.kind);
    if matches!(e.kind, Kind::Missing(_)) || matches!(a.kind, Kind::Missing(_)) {
        return d;
    }
    if e.mode != a.mode {
        d.push(format!("mode: expected {:04o}, got {:04o}", e.mode, a.mode));
    }
    field!("uid", e.uid, a.uid);
    field!("gid", e.gid, a.gid);
    if cmp.dir_size || !(e.is_dir() && a.is_dir()) {
        field!("size", e.size, a.size);
    }
    if cmp.nlink {
        field!("nlink", e.nlink, a.nlink);
    }
    if cmp.mtime && (cmp.root_mtime || !is_root) {
        field!("mtime", e.mtime, a.mtime);
    }
    if cmp.ctime {
        field!("ctime", e.ctime, a.ctime);
    }
    field!("content", e.content, a.content);
    field!("symlink target", e.target, a.target);
    if e.xattrs != a.xattrs {
        let f = |x: &Xattrs| match x {
            Ok(v) => fmt_xattrs(v),
            Err(err) => format!("<{err}>"),
        };
        d.push(format!(
            "xattrs: expected {}, got {}",
            f(&e.xattrs),
            f(&a.xattrs)
        ));
    }
    if cmp.ino {
        field!("st_ino", e.ino, a.ino);
    }
    if cmp.dev {
        field!("st_dev", e.dev, a.dev);
    }
    field!("readdir problems", e.problems, a.problems);
    d
}

/// Human-readable differences between two trees (empty when equal under `cmp`).
pub fn diff(expected: &Snapshot, actual: &Snapshot, cmp: Cmp) -> Vec<String> {
    let mut out = Vec::new();
    let root = Path::new("/");
    for (p, e) in expected {
        match actual.get(p) {
            None => out.push(format!(
                "MISSING {}  (expected {})",
                p.display(),
                e.describe()
            )),
            Some(a) => {
                for d in entry_diff(e, a, cmp, p == root) {
                    out.push(format!("DIFFERS {}  {d}", p.display()));
                }
            }
        }
    }
    for (p, a) in actual {
        if !expected.contains_key(p) {
            out.push(format!("EXTRA   {}  ({})", p.display(), a.describe()));
        }
    }
    out
}

/// Panics with a readable list of differences if the trees differ under `cmp`.
pub fn assert_tree_eq(what: &str, expected: &Snapshot, actual: &Snapshot, cmp: Cmp) {
    let d = diff(expected, actual, cmp);
    if d.is_empty() {
        return;
    }
    let shown: Vec<&String> = d.iter().take(200).collect();
    let mut msg = format!(
        "{what}: {} difference(s) between expected ({} entries) and actual ({} entries):\n",
        d.len(),
        expected.len(),
        actual.len()
    );
    for l in shown {
        msg += "  ";
        msg += l;
        msg += "\n";
    }
    if d.len() > 200 {
        msg += &format!("  ... and {} more\n", d.len() - 200);
    }
    panic!("{msg}");
}

/// st_ino rules, generically. `reference` says which paths are the same object: two paths
/// are the same object iff their (st_dev, st_ino) are equal in `reference` (a kernel
/// overlay view, or an expectation built from the branch objects). In `actual` (one union
/// mount), paths of the same object must share st_ino, different objects must have
/// different st_ino, and every entry must have the same st_dev. Only paths present in both
/// are considered.
pub fn ino_problems(reference: &Snapshot, actual: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let devs: BTreeSet<u64> = actual
        .values()
        .filter(|e| !matches!(e.kind, Kind::Missing(_)))
        .map(|e| e.dev)
        .collect();
    if devs.len() > 1 {
        out.push(format!(
            "entries of one mount report several st_dev values: {devs:?}"
        ));
    }
    let mut by_obj: BTreeMap<(u64, u64), BTreeMap<u64, Vec<&PathBuf>>> = BTreeMap::new();
    let mut by_ino: BTreeMap<u64, BTreeMap<(u64, u64), Vec<&PathBuf>>> = BTreeMap::new();
    for (p, r) in reference {
        let Some(a) = actual.get(p) else { continue };
        if matches!(r.kind, Kind::Missing(_)) || matches!(a.kind, Kind::Missing(_)) {
            continue;
        }
        by_obj
            .entry((r.dev, r.ino))
            .or_default()
            .entry(a.ino)
            .or_default()
            .push(p);
        by_ino
            .entry(a.ino)
            .or_default()
            .entry((r.dev, r.ino))
            .or_default()
            .push(p);
    }
    for inos in by_obj.values() {
        if inos.len() > 1 {
            out.push(format!(
                "one object (hard links) shows different st_ino values: {:?}",
                inos.iter()
                    .map(|(i, ps)| format!("{i}: {ps:?}"))
                    .collect::<Vec<_>>()
            ));
        }
    }
    for (ino, objs) in &by_ino {
        if objs.len() > 1 {
            out.push(format!(
                "different objects share st_ino {ino}: {:?}",
                objs.values().collect::<Vec<_>>()
            ));
        }
    }
    out
}

/// st_ino rules without a reference: paths sharing an st_ino must be the same non-dir
/// object (same type, mode, owner, size, content, mtime) with nlink >= the number of such
/// paths; all entries must share one st_dev.
pub fn ino_self_problems(actual: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let devs: BTreeSet<u64> = actual.values().map(|e| e.dev).collect();
    if devs.len() > 1 {
        out.push(format!(
            "entries of one mount report several st_dev values: {devs:?}"
        ));
    }
    let mut by_ino: BTreeMap<u64, Vec<(&PathBuf, &Entry)>> = BTreeMap::new();
    for (p, e) in actual {
        if !matches!(e.kind, Kind::Missing(_)) {
            by_ino.entry(e.ino).or_default().push((p, e));
        }
    }
    for (ino, group) in by_ino {
        if group.len() < 2 {
            continue;
        }
        let (p0, e0) = group[0];
        let same = group.iter().all(|(_, e)| {
            !e.is_dir()
                && e.kind == e0.kind
                && e.mode == e0.mode
                && e.uid == e0.uid
                && e.gid == e0.gid
                && e.size == e0.size
                && e.content == e0.content
                && e.target == e0.target
                && e.mtime == e0.mtime
                && e.nlink >= group.len() as u64
        });
        if !same {
            out.push(format!(
                "st_ino {ino} is shared by paths that are not hard links of one object: {:?} \
                 (first: {p0:?} {e0:?})",
                group
                    .iter()
                    .map(|(p, e)| format!("{} {e:?}", p.display()))
                    .collect::<Vec<_>>()
            ));
        }
    }
    out
}

pub fn assert_no_problems(what: &str, problems: &[String]) {
    if !problems.is_empty() {
        panic!("{what}:\n  {}", problems.join("\n  "));
    }
}

// ---------------------------------------------------------------------------------------
// Expected views
// ---------------------------------------------------------------------------------------

/// Private xattr prefixes that the union view must hide.
pub const PRIVATE_XATTR_PREFIXES: &[&str] = &[
    "trusted.overlay.",
    "user.overlay.",
    "user.fuseoverlayfs.",
    "trusted.unionfs.",
    "user.unionfs.",
];

pub fn is_private_xattr(name: &str) -> bool {
    PRIVATE_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// An expected union view, built from the branch objects that should win: each entry is
/// the lstat/content/xattrs of its source object (private xattrs removed), and its
/// (st_dev, st_ino) identifies the object for [`ino_problems`].
#[derive(Default)]
pub struct Expect {
    pub tree: Snapshot,
}

impl Expect {
    pub fn new() -> Expect {
        Expect::default()
    }

    /// `view` shows the object at `src` (a non-directory, or a directory found in only
    /// one branch: its own nlink).
    pub fn one(&mut self, view: &str, src: impl AsRef<Path>) -> &mut Expect {
        let src = src.as_ref();
        let mut e = entry_of(src);
        assert!(
            !matches!(e.kind, Kind::Missing(_)),
            "test bug: expectation source {} does not exist",
            src.display()
        );
        if let Ok(x) = &mut e.xattrs {
            x.retain(|(n, _)| !is_private_xattr(n));
        }
        let prev = self.tree.insert(PathBuf::from(view), e);
        assert!(prev.is_none(), "test bug: {view} expected twice");
        self
    }

    /// `view` is a directory merged from several branches; its attributes come from
    /// `src` (the topmost) and it reports nlink 1.
    pub fn merged(&mut self, view: &str, src: impl AsRef<Path>) -> &mut Expect {
        self.one(view, src);
        let e = self.tree.get_mut(Path::new(view)).expect("just inserted");
        assert!(e.is_dir(), "test bug: merged() on a non-directory {view}");
        e.nlink = 1;
        self
    }

    /// `view` and everything below it come from the directory `src` of one branch.
    pub fn subtree(&mut self, view: &str, src: impl AsRef<Path>) -> &mut Expect {
        let src = src.as_ref();
        for (rel, _) in snapshot(src) {
            let v = if rel == Path::new("/") {
                PathBuf::from(view)
            } else {
                Path::new(view).join(rel.strip_prefix("/").expect("abs"))
            };
            self.one(&v.to_string_lossy(), view_path(src, &rel));
        }
        self
    }
}

/// Checks a mounted view against an expectation: the exact tree (everything a user sees)
/// and the st_ino rules.
pub fn assert_view(expected: &Expect, view: &Snapshot) {
    assert_tree_eq(
        "union view differs from the expected tree",
        &expected.tree,
        view,
        Cmp::VIEW,
    );
    assert_no_problems("st_ino rules violated", &ino_problems(&expected.tree, view));
}

/// Each path (view paths like "/.wh.a") must not exist in the mounted view: lstat must
/// fail with ENOENT (or ENOTDIR when its parent is not a directory).
pub fn assert_absent(mnt: &Path, paths: &[&str]) {
    let mut bad = Vec::new();
    for p in paths {
        let full = at(mnt, p);
        let parent_is_dir = || {
            full.parent()
                .and_then(|d| fs::symlink_metadata(d).ok())
                .is_some_and(|m| m.is_dir())
        };
        match fs::symlink_metadata(&full) {
            Ok(md) => bad.push(format!("{p} is visible (mode {:o})", md.mode())),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) && !parent_is_dir() => {}
            Err(e) => bad.push(format!(
                "{p}: lstat fails with {} instead of ENOENT",
                errname(&e)
            )),
        }
    }
    assert_no_problems("names that must not be visible", &bad);
}

// ---------------------------------------------------------------------------------------
// Deterministic pseudo-random numbers
// ---------------------------------------------------------------------------------------

/// splitmix64: tiny, deterministic, good enough for fixtures.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }
}

/// Context switches of a daemon's threads, summed by kind: ring threads
/// ("fuser-ring-*") and the others.
pub fn switches(pid: i32) -> std::collections::BTreeMap<&'static str, u64> {
    let mut out = std::collections::BTreeMap::from([("ring", 0), ("other", 0)]);
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let status = fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let n: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        let kind = if comm.starts_with("fuser-ring") {
            "ring"
        } else {
            "other"
        };
        *out.entry(kind).or_default() += n;
    }
    out
}

/// How many io_uring threads ("fuser-ring-*") a daemon runs.
pub fn ring_threads(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter(|t| {
                    fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("fuser-ring"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Waits until the daemon's io_uring threads exist and answer requests
/// (the kernel uses the rings once every CPU's queue has an entry): asks
/// for absent names under `mnt` until a ring thread has answered one.
pub fn wait_for_rings(pid: i32, mnt: &Path) -> bool {
    if !wait_until(Duration::from_secs(10), || ring_threads(pid) > 0) {
        return false;
    }
    let mut n = 0;
    wait_until(Duration::from_secs(10), || {
        let before = switches(pid)["ring"];
        n += 1;
        let _ = fs::metadata(mnt.join(format!("absent-{n}")));
        switches(pid)["ring"] > before
    })
}
