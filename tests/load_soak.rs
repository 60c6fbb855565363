//! Load and soak (issue 14 item 5): many threads of random operations on overlapping
//! paths, a million lookups, and ten containers on one image, with a hang guard.
//!
//! * [`random_operations_on_overlapping_paths`]: 4 × CPUs threads run random operations
//!   (create, write, append, truncate, rename, unlink, mkdir, rmdir, link, symlink, chmod,
//!   setxattr, readdir, stat, read, 1-byte writes that copy up 8 MiB lower files) on a
//!   small set of paths that collide all the time, over a two-lower tree of ~3,300 entries
//!   with hard links, for `UNIONFS_SOAK_LOAD_SECS` seconds (20 in CI; soak 3600). ENOENT,
//!   EEXIST, ENOTEMPTY and their kind are answers to races; any other errno (EIO, ESTALE,
//!   ENOTCONN, ...) or a dead daemon fails. A watchdog fails the test when one operation
//!   takes over 10 s (a deadlock) and names it; it then aborts the FUSE connection so the
//!   stuck threads return and the test ends instead of hanging. Afterwards: the daemon's
//!   fds and RSS after a kernel cache drop are back near their baseline; the view before
//!   the unmount equals the view of a fresh mount of the same upper, and equals kernel
//!   overlayfs mounted on the same lowers, upper and workdir; the lowers are untouched.
//!   [`random_operations_on_overlapping_paths_aufs`] runs the same load for half the time
//!   in AUFS format (the default), checked against a remount (the kernel cannot read it).
//! * [`lookups_keep_rss_bounded`]: `UNIONFS_SOAK_LOOKUPS` lookups (100,000 in CI; soak
//!   1,000,000) over a tree of 25,000 files (`UNIONFS_SOAK_TREE`): every name in turn,
//!   repeated ones and absent ones, the kernel's caches dropped after each pass so that
//!   every pass reaches the daemon. The daemon's peak RSS stays under
//!   `baseline + 1 KiB × cached nodes + 16 MiB` (docs/RELIABILITY.md has the measured
//!   figures), and after the last drop it is back near its baseline.
//! * [`ten_containers_on_one_image`]: 10 `unionfs-run` at once on one image (a directory
//!   over the host's `/`), each writing its own files, reading the image's and checking
//!   from inside that it sees no other container's files; five `--rm`, five with an
//!   upper of their own kept for inspection. Each exits 0 within 120 s (a hang guard),
//!   each kept upper holds exactly its own writes, the image is unchanged and no mount,
//!   cgroup, daemon or state directory is left.
//!
//! The tests take a lock so that they run one after the other (their measurements and
//! cache drops would disturb each other). Needs root and /dev/fuse (a skip is a failure
//! under `UNIONFS_TEST_REQUIRE=1`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// One test at a time: cache drops and RSS readings of one must not meet another's load.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An operation taking longer than this is a deadlock (nothing here needs a second).
const HANG: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The daemon's resources
// ---------------------------------------------------------------------------------------

fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A `/proc/PID/status` field in KiB (VmRSS, VmHWM).
fn status_kib(pid: i32, field: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Makes the kernel forget the dentries and inodes it caches (FORGET to the daemon), then
/// waits until the daemon's fd count has stopped falling (FORGETs are handled
/// asynchronously).
fn drop_caches_and_settle(pid: i32) {
    // 2: dentries and inodes only; the page cache (3) is not ours to throw away on a
    // shared machine, and it plays no part in FORGET
    fs::write("/proc/sys/vm/drop_caches", "2").expect("drop_caches");
    let mut last = fd_count(pid);
    let mut stable = 0;
    wait_until(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(200));
        let now = fd_count(pid);
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
        stable >= 5
    });
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: usize,
    rss_kib: u64,
}

fn usage(pid: i32) -> Usage {
    Usage {
        fds: fd_count(pid),
        rss_kib: status_kib(pid, "VmRSS:"),
    }
}

// ---------------------------------------------------------------------------------------
// Watchdog
// ---------------------------------------------------------------------------------------

/// What each worker is doing: an operation and when it began.
type Slot = Mutex<Option<(String, Instant)>>;

/// Fails (records) any operation running longer than its limit ([`HANG`]), then calls
/// `abort` once so that stuck system calls return and the test can end.
struct Watchdog {
    limit: Duration,
    slots: Arc<Vec<Slot>>,
    hung: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(n: usize, abort: impl Fn() + Send + 'static) -> Watchdog {
        Self::start_with(n, HANG, abort)
    }

    fn start_with(n: usize, limit: Duration, abort: impl Fn() + Send + 'static) -> Watchdog {
        let slots: Arc<Vec<Slot>> = Arc::new((0..n).map(|_| Mutex::new(None)).collect());
        let hung = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, h, st) = (slots.clone(), hung.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut aborted = false;
            while !st.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                for (i, slot) in s.iter().enumerate() {
                    let g = slot.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some((op, since)) = &*g {
                        if since.elapsed() > limit {
                            let msg = format!(
                                "worker {i}: `{op}` has not returned within {limit:?} \
                                 (deadlock?)"
                            );
                            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
                            if !h.contains(&msg) {
                                eprintln!("WATCHDOG: {msg}");
                                h.push(msg);
                            }
                        }
                    }
                }
                if !aborted && !h.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                    aborted = true;
                    abort();
                }
            }
        });
        Watchdog {
            limit,
            slots,
            hung,
            stop,
            thread: Some(thread),
        }
    }

    /// Runs `f` as operation `op` of worker `i`, watched.
    fn watch<T>(&self, i: usize, op: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
        *self.slots[i].lock().unwrap() = Some((op(), Instant::now()));
        let r = f();
        *self.slots[i].lock().unwrap() = None;
        r
    }

    /// Stops the watchdog; panics with every hang it saw.
    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let hung = self.hung.lock().unwrap();
        assert!(
            hung.is_empty(),
            "operations hung for over {:?}:\n  {}",
            self.limit,
            hung.join("\n  ")
        );
    }
}

/// The hang guard itself can fail: an operation that outlives the limit is reported by
/// name and the abort runs (once), and the report fails the test.
#[test]
fn watchdog_reports_a_hung_operation() {
    let aborted = Arc::new(AtomicU64::new(0));
    let a = aborted.clone();
    let wd = Watchdog::start_with(2, Duration::from_millis(200), move || {
        a.fetch_add(1, Ordering::Relaxed);
    });
    wd.watch(0, || "quick".into(), || ());
    wd.watch(
        1,
        || "sleep 600 ms".into(),
        || std::thread::sleep(Duration::from_millis(600)),
    );
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wd.finish()));
    let msg = r
        .expect_err("a hung operation must fail the test")
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    assert!(msg.contains("worker 1: `sleep 600 ms`"), "{msg}");
    assert!(!msg.contains("quick"), "{msg}");
    assert_eq!(aborted.load(Ordering::Relaxed), 1, "abort runs once");
}

/// The watchdog's way out works: after the abort, requests to the mount fail
/// (ENOTCONN) instead of waiting on the daemon.
#[test]
fn watchdog_abort_ends_the_connection() {
    if !can_mount_fuse() {
        return;
    }
    let s = Scratch::new("abort");
    let lower = s.dir("lower");
    file(&lower, "a", b"a", 0o644);
    let (upper, mnt) = (s.dir("upper"), s.dir("mnt"));
    let m = Mount::unionfs(&[&lower], Some(&upper), &mnt);
    assert_eq!(fs::read(mnt.join("a")).unwrap(), b"a");
    fuse_abort(&mnt, &s.path("fusectl"))();
    let e = fs::symlink_metadata(mnt.join("b")).expect_err("the connection is aborted");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    drop(m);
}

/// Aborts the FUSE connection of the mount at `mnt` through a private fusectl mount
/// (made under `ctl`, not at the machine-wide /sys/fs/fuse/connections).
fn fuse_abort(mnt: &Path, ctl: &Path) -> impl Fn() + Send + 'static {
    let dev = fs::metadata(mnt).unwrap().dev();
    let minor = nix::sys::stat::minor(dev);
    let ctl = ctl.to_path_buf();
    move || {
        let _ = fs::create_dir_all(&ctl);
        let _ = run(
            "mount",
            &["-t", "fusectl", "fusectl", ctl.to_str().unwrap()],
        );
        let f = ctl.join(minor.to_string()).join("abort");
        eprintln!("WATCHDOG: aborting the FUSE connection ({})", f.display());
        let _ = fs::write(&f, "1");
        let _ = nix::mount::umount2(&ctl, nix::mount::MntFlags::MNT_DETACH);
    }
}

// ---------------------------------------------------------------------------------------
// 1. Random operations on overlapping paths
// ---------------------------------------------------------------------------------------

const LOWER_DIRS: usize = 20;
const LOWER_SUBDIRS: usize = 10;
const LOWER_FILES: usize = 15;
const BIG_FILES: usize = 3;
const BIG_SIZE: usize = 8 << 20;

/// The lower tree: `l2` holds `d{0..20}/s{0..10}/f{0..15}` (3,000 files of 0–4,000
/// bytes), hard links inside and across directories, symlinks, xattrs and three 8 MiB
/// files; `l1` (on top) replaces some files and adds to some directories, so directories
/// are merged.
fn build_lowers(l1: &Path, l2: &Path) {
    let mut g = Rng::new(1);
    for d in 0..LOWER_DIRS {
        for s in 0..LOWER_SUBDIRS {
            for f in 0..LOWER_FILES {
                let len = g.below(4000) as usize;
                let data = format!("l2 d{d}/s{s}/f{f} ").repeat(1 + len / 16);
                file(l2, &format!("d{d}/s{s}/f{f}"), data.as_bytes(), 0o644);
            }
        }
        symlink(l2, &format!("d{d}/ln"), "s0/f1");
        set_xattr(l2, &format!("d{d}/s2/f2"), "user.lower", b"x");
        // the top lower: a replaced file, an added file, its own view of some dirs
        if d < 8 {
            file(l1, &format!("d{d}/s3/f3"), b"l1 replaces this", 0o600);
            file(l1, &format!("d{d}/s3/n0"), b"l1 adds this", 0o644);
            mkdir(l1, &format!("d{d}/s4"), 0o755);
        }
    }
    for d in 0..LOWER_DIRS {
        hardlink(l2, &format!("d{d}/s0/f0"), &format!("d{d}/h"));
        hardlink(
            l2,
            &format!("d{}/s1/f1", (d + 1) % LOWER_DIRS),
            &format!("d{d}/s1/hx"),
        );
    }
    for b in 0..BIG_FILES {
        file(l2, &format!("big{b}"), &g.bytes(BIG_SIZE), 0o644);
    }
}

/// The directories the workers work in: few, so that they meet all the time. Names come
/// from [`NAMES`], which mixes lower files, new names and subdirectory names.
fn hot_dirs() -> Vec<String> {
    let mut v = vec![String::new()];
    for d in 0..4 {
        v.push(format!("d{d}"));
        for s in 0..4 {
            v.push(format!("d{d}/s{s}"));
        }
    }
    v
}

const NAMES: &[&str] = &[
    "f0", "f1", "f2", "f3", "f4", "f5", "n0", "n1", "n2", "n3", "s0", "s1", "s2", "s3", "h", "ln",
    "hx",
];

/// errnos that answer a race between workers (the path was just removed, created, filled,
/// made a directory, ...). Everything else fails the test.
fn expected_errno(op: &str, e: nix::errno::Errno) -> bool {
    use nix::errno::Errno::*;
    match e {
        ENOENT | EEXIST | ENOTEMPTY | ENOTDIR | EISDIR => true,
        // rename of a directory into itself or below itself
        EINVAL => op == "rename",
        // link(2) of a directory; a user.* xattr on a symlink (the kernel's rule: user
        // xattrs only on files and directories)
        EPERM => op == "link" || op == "setxattr",
        // getxattr/removexattr of a name another worker removed
        ENODATA => op == "setxattr",
        // a path through a symlink another worker made, pointing at itself by now
        ELOOP => true,
        _ => false,
    }
}

struct Worker<'a> {
    mnt: &'a Path,
    g: Rng,
    dirs: &'a [String],
}

impl Worker<'_> {
    fn path(&mut self) -> String {
        let d = self.g.pick(self.dirs).clone();
        let n = *self.g.pick(NAMES);
        if d.is_empty() {
            n.to_string()
        } else {
            format!("{d}/{n}")
        }
    }

    fn full(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// One random operation: its name, a description and its result.
    fn step(
        &mut self,
    ) -> (
        &'static str,
        String,
        Box<dyn FnOnce() -> std::io::Result<()>>,
    ) {
        let a = self.path();
        let b = self.path();
        let pa = self.full(&a);
        let pb = self.full(&b);
        let k = self.g.below(100);
        let len = self.g.below(9000) as usize;
        let data = self.g.bytes(len);
        let off = self.g.below(20_000);
        match k {
            0..=7 => ("create", format!("create {a} ({len} bytes)"), {
                Box::new(move || {
                    fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o644)
                        .open(&pa)?
                        .write_all(&data)
                })
            }),
            8..=15 => ("write", format!("write {a} at {off}"), {
                Box::new(move || {
                    fs::OpenOptions::new()
                        .write(true)
                        .open(&pa)?
                        .write_all_at(&data[..len.min(512)], off)
                })
            }),
            16..=21 => ("append", format!("append {a}"), {
                Box::new(move || {
                    fs::OpenOptions::new()
                        .append(true)
                        .open(&pa)?
                        .write_all(&data[..len.min(300)])
                })
            }),
            22..=26 => ("truncate", format!("truncate {a} to {off}"), {
                Box::new(move || Ok(nix::unistd::truncate(&pa, off as i64)?))
            }),
            27..=35 => ("rename", format!("rename {a} -> {b}"), {
                Box::new(move || fs::rename(&pa, &pb))
            }),
            36..=41 => ("unlink", format!("unlink {a}"), {
                Box::new(move || fs::remove_file(&pa))
            }),
            42..=47 => ("mkdir", format!("mkdir {a}"), {
                Box::new(move || fs::create_dir(&pa))
            }),
            48..=52 => ("rmdir", format!("rmdir {a}"), {
                Box::new(move || fs::remove_dir(&pa))
            }),
            53..=57 => ("link", format!("link {a} -> {b}"), {
                Box::new(move || fs::hard_link(&pa, &pb))
            }),
            58..=59 => ("symlink", format!("symlink {a} -> f0"), {
                Box::new(move || std::os::unix::fs::symlink("f0", &pa))
            }),
            60..=63 => ("chmod", format!("chmod {a}"), {
                let mode = 0o600 | (off as u32 & 0o077);
                Box::new(move || fs::set_permissions(&pa, fs::Permissions::from_mode(mode)))
            }),
            64..=67 => ("setxattr", format!("setxattr {a}"), {
                Box::new(move || {
                    if off % 3 == 0 {
                        xattr::remove(&pa, "user.load")
                    } else {
                        xattr::set(&pa, "user.load", &data[..len.min(64)])
                    }
                })
            }),
            68..=75 => ("readdir", format!("readdir {a}"), {
                Box::new(move || {
                    for e in fs::read_dir(&pa)? {
                        let _ = fs::symlink_metadata(e?.path());
                    }
                    Ok(())
                })
            }),
            76..=85 => ("stat", format!("stat {a}"), {
                Box::new(move || fs::symlink_metadata(&pa).map(|_| ()))
            }),
            86..=93 => ("read", format!("read {a}"), {
                Box::new(move || {
                    let mut v = Vec::new();
                    fs::File::open(&pa)?.read_to_end(&mut v).map(|_| ())
                })
            }),
            94..=95 => {
                // copy-up of an 8 MiB lower file (once; later writes land in the copy)
                let big = format!("big{}", off % BIG_FILES as u64);
                let p = self.mnt.join(&big);
                let at = off * 397 % BIG_SIZE as u64;
                ("bigwrite", format!("write 1 byte into {big} at {at}"), {
                    Box::new(move || {
                        fs::OpenOptions::new()
                            .write(true)
                            .open(&p)?
                            .write_all_at(b"!", at)
                    })
                })
            }
            _ => {
                // a walk of a cold part of the tree: many lookups, many nodes
                let d = 4 + off as usize % (LOWER_DIRS - 4);
                let rel = format!("d{d}/s{}", off as usize % LOWER_SUBDIRS);
                let p = self.mnt.join(&rel);
                ("walk", format!("walk {rel}"), {
                    Box::new(move || {
                        for e in fs::read_dir(&p)? {
                            let e = e?;
                            let mut v = Vec::new();
                            if e.file_type()?.is_file() {
                                fs::File::open(e.path())?.read_to_end(&mut v)?;
                            }
                        }
                        Ok(())
                    })
                })
            }
        }
    }
}

/// A view for comparing two mounts of the same branches: unionfs's private xattrs (which
/// kernel overlayfs shows) are left out.
fn comparable(s: Snapshot) -> Snapshot {
    s.into_iter()
        .map(|(p, mut e)| {
            if let Ok(x) = &mut e.xattrs {
                x.retain(|(n, _)| !n.starts_with("trusted.unionfs."));
            }
            (p, e)
        })
        .collect()
}

/// Names, types, sizes, contents, modes, owners, symlink targets and xattrs; link counts
/// of non-directories and mtimes are compared only where the two views are the same union.
const CROSS: Cmp = Cmp {
    nlink: true,
    mtime: false,
    root_mtime: false,
    ctime: false,
    dir_size: false,
    ino: false,
    dev: false,
};

#[test]
fn random_operations_on_overlapping_paths() {
    if !can_mount_fuse() {
        return;
    }
    let _serial = serial();
    load("overlay", env_u64("UNIONFS_SOAK_LOAD_SECS", 20));
}

/// The same in AUFS format, the default (`.wh.` files, whiteouts written before a
/// rename or rmdir and undone on failure): half the time; the kernel cannot read this
/// upper, so the view is checked against a remount only.
#[test]
fn random_operations_on_overlapping_paths_aufs() {
    if !can_mount_fuse() {
        return;
    }
    let _serial = serial();
    load("aufs", env_u64("UNIONFS_SOAK_LOAD_SECS", 20).div_ceil(2));
}

/// The load in whiteout format `fmt` for `secs` seconds, and every check after it.
fn load(fmt: &str, secs: u64) {
    let threads = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let s = Scratch::new("load");
    let (l1, l2) = (s.dir("l1"), s.dir("l2"));
    build_lowers(&l1, &l2);
    let lowers_before = snapshot_all(&[&l1, &l2]);
    let (upper, work, mnt) = (s.dir("upper"), s.dir("work"), s.dir("mnt"));
    let lowers = PathBuf::from(format!("{}:{}", l1.display(), l2.display()));
    // more mount options for a soak run (e.g. `ttl=0`: every access reaches the daemon)
    let extra = std::env::var("UNIONFS_SOAK_LOAD_OPTS")
        .map(|o| format!(",{o}"))
        .unwrap_or_default();
    let opts = format!("whiteout={fmt},workdir={}{extra}", work.display());
    let m = Mount::unionfs_opts(&lowers, &upper, &mnt, &opts);
    let pid = m.daemon_pids[0];
    // baseline: mounted, root looked up, nothing else cached
    fs::read_dir(&mnt).unwrap().for_each(drop);
    drop_caches_and_settle(pid);
    let base = usage(pid);

    let dirs = hot_dirs();
    let watchdog = Watchdog::start(threads, fuse_abort(&mnt, &s.path("fusectl")));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let total = AtomicU64::new(0);
    // (op, errno) -> count, for the report and the verdict
    let errors: Mutex<BTreeMap<(&'static str, i32), u64>> = Mutex::new(BTreeMap::new());
    let oks: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|sc| {
        // memory pressure: the kernel forgets inodes while they are being used, so
        // FORGET meets LOOKUP, copy-up and rename on the same nodes
        sc.spawn(|| {
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_secs(2));
                let _ = fs::write("/proc/sys/vm/drop_caches", "2");
            }
        });
        for i in 0..threads {
            let (mnt, dirs, wd) = (&mnt, &dirs, &watchdog);
            let (total, errors, oks) = (&total, &errors, &oks);
            sc.spawn(move || {
                let mut w = Worker {
                    mnt,
                    g: Rng::new(1000 + i as u64),
                    dirs,
                };
                let mut my_oks: BTreeMap<&'static str, u64> = BTreeMap::new();
                let mut my_errs: BTreeMap<(&'static str, i32), u64> = BTreeMap::new();
                while Instant::now() < deadline {
                    let (op, desc, f) = w.step();
                    let r = wd.watch(i, || desc, f);
                    total.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Ok(()) => *my_oks.entry(op).or_default() += 1,
                        Err(e) => {
                            *my_errs
                                .entry((op, e.raw_os_error().unwrap_or(0)))
                                .or_default() += 1;
                            // a dead connection: nothing more to learn
                            if e.raw_os_error() == Some(libc::ENOTCONN) {
                                break;
                            }
                        }
                    }
                }
                let mut o = oks.lock().unwrap();
                for (k, v) in my_oks {
                    *o.entry(k).or_default() += v;
                }
                let mut e = errors.lock().unwrap();
                for (k, v) in my_errs {
                    *e.entry(k).or_default() += v;
                }
            });
        }
    });
    watchdog.finish();
    let total = total.into_inner();
    let errors = errors.into_inner().unwrap();
    let oks = oks.into_inner().unwrap();
    let bad: Vec<String> = errors
        .iter()
        .filter(|((op, e), _)| !expected_errno(op, nix::errno::Errno::from_raw(*e)))
        .map(|((op, e), n)| format!("{op} {:?} × {n}", nix::errno::Errno::from_raw(*e)))
        .collect();
    let errors: BTreeMap<String, u64> = errors
        .into_iter()
        .map(|((op, e), n)| (format!("{op} {:?}", nix::errno::Errno::from_raw(e)), n))
        .collect();
    eprintln!(
        "load ({fmt}): {threads} threads, {secs} s, {total} operations ({:.0}/s)\n  succeeded: {oks:?}\n  \
         errors: {errors:?}",
        total as f64 / secs as f64
    );

    assert!(
        pid_alive(pid),
        "the daemon died under load; errors: {errors:?}"
    );
    assert!(bad.is_empty(), "unexpected errors under load: {bad:?}");
    for op in [
        "create", "rename", "unlink", "mkdir", "link", "bigwrite", "read",
    ] {
        assert!(
            oks.get(op).copied().unwrap_or(0) > 0,
            "no `{op}` ever succeeded: the load did not exercise it ({oks:?})"
        );
    }

    // quiesced (every worker joined): resources back to baseline once the kernel forgets
    let loaded = usage(pid);
    drop_caches_and_settle(pid);
    let after = usage(pid);
    eprintln!(
        "daemon: baseline {} fds, {} KiB RSS; after the load {} fds, {} KiB; after \
         drop_caches {} fds, {} KiB (peak {} KiB)",
        base.fds,
        base.rss_kib,
        loaded.fds,
        loaded.rss_kib,
        after.fds,
        after.rss_kib,
        status_kib(pid, "VmHWM:")
    );
    assert!(
        after.fds <= base.fds + FD_SLACK,
        "the daemon holds {} fds after the load and a cache drop, {} before: a leak",
        after.fds,
        base.fds
    );
    assert!(
        after.rss_kib <= base.rss_kib + RSS_SLACK_KIB,
        "the daemon's RSS is {} KiB after the load and a cache drop, {} KiB before \
         (bound: + {RSS_SLACK_KIB} KiB)",
        after.rss_kib,
        base.rss_kib
    );

    // the view: before the unmount = after a remount = kernel overlayfs on the same dirs
    let view = comparable(snapshot(&mnt));
    m.unmount();
    let m2 = Mount::unionfs_opts(&lowers, &upper, &mnt, &opts);
    let again = comparable(snapshot(&mnt));
    m2.unmount();
    assert_tree_eq(
        "the view after a remount differs from the view before",
        &view,
        &again,
        Cmp::VIEW,
    );
    if fmt != "overlay" {
        eprintln!(
            "view: {} entries agree (before unmount, remount)",
            view.len()
        );
        assert_unchanged(&lowers_before);
        return;
    }
    let kmnt = s.dir("kmnt");
    let k = Mount::overlay(
        &[&l1, &l2],
        Some((&upper, &work)),
        &kmnt,
        "redirect_dir=on,index=on,metacopy=on",
    );
    let kernel = comparable(snapshot(&kmnt));
    k.unmount();
    assert_tree_eq(
        "kernel overlayfs on the same lowers, upper and workdir shows another view",
        &kernel,
        &view,
        CROSS,
    );
    eprintln!(
        "view: {} entries agree (before unmount, remount, kernel overlayfs)",
        view.len()
    );
    assert_unchanged(&lowers_before);
}

/// fds the daemon may hold after the load beyond its baseline: the staging pool's files
/// (made ahead once copy-ups began, each an open fd: `unionfs::upper::POOL_SIZE`) and a
/// few for a lookup the kernel has not forgotten (the mount root's own listing).
const FD_SLACK: usize = 4 + unionfs::upper::POOL_SIZE;

/// RSS the daemon may keep after the load and a cache drop beyond its baseline: heap the
/// allocator keeps for reuse (arenas of the FUSE threads, grown tables). Measured here
/// +2.0 to +2.4 MiB after 20 s, 300 s and 900 s of load (docs/RELIABILITY.md).
const RSS_SLACK_KIB: u64 = 16 << 10;

// ---------------------------------------------------------------------------------------
// 2. Lookups
// ---------------------------------------------------------------------------------------

/// Memory the daemon may use per node the kernel holds: measured 534–544 bytes here
/// (docs/RELIABILITY.md; docs/ARCHITECTURE.md, "Backing objects and the fd bound", has
/// ~450 for a walk), bounded at about twice that.
const BYTES_PER_NODE: u64 = 1024;
/// Constant part of the bound: allocator arenas, listing snapshots, fd cache table.
const LOOKUP_CONST_KIB: u64 = 16 << 10;

#[test]
fn lookups_keep_rss_bounded() {
    if !can_mount_fuse() {
        return;
    }
    let _serial = serial();
    let lookups = env_u64("UNIONFS_SOAK_LOOKUPS", 100_000);
    let files = env_u64("UNIONFS_SOAK_TREE", 25_000) as usize;
    const PER_DIR: usize = 1000;
    let s = Scratch::new("lookups");
    let lower = s.dir("lower");
    let t = Instant::now();
    let mut names = Vec::with_capacity(files);
    for i in 0..files {
        let d = i / PER_DIR;
        if i % PER_DIR == 0 {
            fs::create_dir(lower.join(format!("d{d}"))).unwrap();
        }
        let rel = format!("d{d}/file-with-a-longish-name-{i:07}");
        fs::File::create(lower.join(&rel)).unwrap();
        names.push(rel);
    }
    let dirs = files.div_ceil(PER_DIR);
    eprintln!("tree of {files} files built in {:?}", t.elapsed());
    let (upper, work, mnt) = (s.dir("upper"), s.dir("work"), s.dir("mnt"));
    let opts = format!("workdir={}", work.display());
    let m = Mount::unionfs_opts(&lower, &upper, &mnt, &opts);
    let pid = m.daemon_pids[0];
    fs::read_dir(&mnt).unwrap().for_each(drop);
    drop_caches_and_settle(pid);
    let base = usage(pid);

    let watchdog = Watchdog::start(1, fuse_abort(&mnt, &s.path("fusectl")));
    let mut g = Rng::new(5);
    let mut done = 0u64;
    let mut passes = 0;
    // (RSS at the end of a pass, RSS after the cache drop that follows it) in KiB
    let mut per_pass: Vec<(u64, u64)> = Vec::new();
    let t = Instant::now();
    while done < lookups {
        g.shuffle(&mut names);
        for (k, rel) in names.iter().enumerate() {
            if done >= lookups {
                break;
            }
            // every tenth lookup: a name looked up over and over, or one that is absent
            let p = match k % 20 {
                0 => mnt.join(&names[k % 64]),
                10 => mnt.join(format!("{rel}-absent")),
                _ => mnt.join(rel),
            };
            let r = watchdog.watch(
                0,
                || format!("lstat {}", p.display()),
                || fs::symlink_metadata(&p),
            );
            match r {
                Ok(_) => {}
                Err(e) if k % 20 == 10 && e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => panic!("lstat {}: {}", p.display(), errname(&e)),
            }
            done += 1;
        }
        passes += 1;
        if done < lookups {
            let end = status_kib(pid, "VmRSS:");
            drop_caches_and_settle(pid);
            per_pass.push((end, status_kib(pid, "VmRSS:")));
        }
    }
    watchdog.finish();
    let elapsed = t.elapsed();
    let loaded = usage(pid);
    let hwm = status_kib(pid, "VmHWM:");
    drop_caches_and_settle(pid);
    let after = usage(pid);
    // the kernel holds at most every file and directory of the tree at once
    let nodes = (files + dirs + 1) as u64;
    let bound = base.rss_kib + nodes * BYTES_PER_NODE / 1024 + LOOKUP_CONST_KIB;
    eprintln!(
        "lookups: {done} in {passes} passes over {files} files in {elapsed:?} ({:.0}/s); \
         daemon RSS: baseline {} KiB, {} fds; end of the last pass {} KiB, {} fds; peak \
         {hwm} KiB (bound {bound} KiB = baseline + {nodes} nodes × {BYTES_PER_NODE} B + \
         {LOOKUP_CONST_KIB} KiB; {:.0} B per node above baseline); after drop_caches {} KiB, \
         {} fds; per pass (end, after the drop): {per_pass:?}",
        done as f64 / elapsed.as_secs_f64(),
        base.rss_kib,
        base.fds,
        loaded.rss_kib,
        loaded.fds,
        (hwm.saturating_sub(base.rss_kib) * 1024) as f64 / nodes as f64,
        after.rss_kib,
        after.fds,
    );
    assert!(
        hwm <= bound,
        "the daemon's peak RSS {hwm} KiB is over the bound {bound} KiB"
    );
    assert!(
        after.fds <= base.fds + FD_SLACK,
        "{} fds after the lookups and a cache drop, {} before: a leak",
        after.fds,
        base.fds
    );
    assert!(
        after.rss_kib <= base.rss_kib + LOOKUP_CONST_KIB,
        "RSS {} KiB after the lookups and a cache drop, {} KiB before",
        after.rss_kib,
        base.rss_kib
    );
    m.unmount();
}

// ---------------------------------------------------------------------------------------
// 3. Ten containers on one image
// ---------------------------------------------------------------------------------------

const CONTAINERS: usize = 10;
/// Files each container writes into its upper.
const FILES_PER_CONTAINER: usize = 200;
/// A container's whole run may take this long before it counts as hung.
const CONTAINER_HANG: Duration = Duration::from_secs(120);

fn run_bin_path() -> PathBuf {
    bin().with_file_name("unionfs-run")
}

fn cgroup_leftovers(name: &str, dir: &Path, depth: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if e.file_name().to_string_lossy() == name {
            out.push(e.path());
        } else if depth > 0 {
            out.extend(cgroup_leftovers(name, &e.path(), depth - 1));
        }
    }
    out
}

/// The files of a tree (paths relative to it) with their contents; directories as `/`.
fn files_of(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (p, e) in snapshot(root) {
        let rel = p.to_string_lossy().into_owned();
        if rel == "/" {
            continue;
        }
        let v = match e.kind {
            Kind::Dir => b"/".to_vec(),
            Kind::File => fs::read(view_path(root, &p)).unwrap(),
            k => format!("{k:?}").into_bytes(),
        };
        out.insert(rel, v);
    }
    out
}

#[test]
fn ten_containers_on_one_image() {
    if !can_mount_fuse() {
        return;
    }
    let _serial = serial();
    let launcher = run_bin_path();
    assert!(
        launcher.is_file() && bin().is_file(),
        "{} is missing: `cargo build --workspace` first",
        launcher.display()
    );
    // On tmpfs, beside the launcher's own state: the host's `/` is the image's bottom
    // layer, so nothing of the container may live on the root filesystem's own tree.
    let s = Scratch::new_in("containers", Path::new("/dev/shm"));
    let image = s.dir("image");
    let mut g = Rng::new(9);
    for i in 0..20 {
        file(
            &image,
            &format!("shared/s{i}"),
            &g.bytes(1000 + i * 100),
            0o644,
        );
    }
    let image_before = snapshot_all(&[&image]);
    let state = s.dir("state");
    let tag = std::process::id();
    let expected_cksum = {
        let o = run(
            "sh",
            &["-c", &format!("cat {}/shared/* | cksum", image.display())],
        );
        assert!(o.ok(), "{o}");
        o.stdout.trim().to_string()
    };
    // Each container writes its own files, reads the image's, and checks from inside that
    // it sees the image's data and none of the other containers' files.
    let script = |n: usize| {
        format!(
            "set -e; mkdir /out-{n}; i=0; while [ $i -lt {FILES_PER_CONTAINER} ]; do \
             echo \"container {n} file $i\" > /out-{n}/f$i; \
             cat /shared/s$((i % 20)) > /dev/null; i=$((i+1)); done; \
             cat /shared/* | cksum > /out-{n}/cksum; \
             [ \"$(cat /out-{n}/cksum)\" = \"$CK\" ] || {{ echo \"image reads $(cat /out-{n}/cksum)\"; exit 4; }}; \
             for d in /out-*; do [ \"$d\" = /out-{n} ] || {{ echo \"sees $d\"; exit 3; }}; done"
        )
    };
    let t = Instant::now();
    // even ones `--rm` (a fresh upper in the state dir, removed at exit), odd ones with an
    // upper of their own that stays for inspection
    let mut kids: Vec<(usize, String, Option<PathBuf>, Child, PathBuf, PathBuf)> = Vec::new();
    for n in 0..CONTAINERS {
        let name = format!("load-{tag}-{n}");
        let upper = (n % 2 == 1).then(|| s.path(&format!("upper-{n}")));
        let out = s.path(&format!("out-{n}"));
        let err = s.path(&format!("err-{n}"));
        let mut cmd = Command::new(&launcher);
        cmd.args(["--name", &name, "--pids", "256"]);
        match &upper {
            Some(u) => cmd.arg("--upper").arg(u),
            None => cmd.arg("--rm"),
        };
        let child = cmd
            .arg("--image")
            .arg(format!("{}:/", image.display()))
            .args(["-e", &format!("CK={expected_cksum}")])
            .args(["--", "sh", "-c", &script(n)])
            .env("UNIONFS_RUN_DIR", &state)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        kids.push((n, name, upper, child, out, err));
    }
    let mut failures = Vec::new();
    for (n, _, _, child, out, err) in &mut kids {
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if t.elapsed() > CONTAINER_HANG {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = format!(
            "stdout: {}stderr: {}",
            fs::read_to_string(&*out).unwrap_or_default(),
            fs::read_to_string(&*err).unwrap_or_default()
        );
        match status {
            None => {
                let _ = child.kill();
                let _ = child.wait();
                failures.push(format!(
                    "container {n} still running after {CONTAINER_HANG:?} (hang?): {text}"
                ));
            }
            Some(st) if !st.success() => {
                failures.push(format!("container {n} exited {st}: {text}"))
            }
            Some(_) => {}
        }
    }
    eprintln!("{CONTAINERS} containers ran at once in {:?}", t.elapsed());
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    for (n, name, upper, _, _, _) in &kids {
        let cg = cgroup_leftovers(
            &format!("unionfs-run-{name}"),
            Path::new("/sys/fs/cgroup"),
            4,
        );
        assert!(cg.is_empty(), "cgroups left: {cg:?}");
        let Some(upper) = upper else { continue };
        let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        want.insert(format!("/out-{n}"), b"/".to_vec());
        for i in 0..FILES_PER_CONTAINER {
            want.insert(
                format!("/out-{n}/f{i}"),
                format!("container {n} file {i}\n").into_bytes(),
            );
        }
        want.insert(
            format!("/out-{n}/cksum"),
            format!("{expected_cksum}\n").into_bytes(),
        );
        // the union's own bookkeeping (no workdir given: the staging area and the
        // hard-link index live in the upper) must be empty after a clean exit
        let (internal, got): (BTreeMap<_, _>, BTreeMap<_, _>) = files_of(upper)
            .into_iter()
            .partition(|(p, _)| p.starts_with("/.wh..wh.unionfs"));
        // AUFS's whiteout base, made at mount, is no write of the container's.
        let got: BTreeMap<_, _> = got
            .into_iter()
            .filter(|(p, _)| p != "/.wh..wh.aufs")
            .collect();
        assert!(
            internal.values().all(|v| v == b"/"),
            "container {n}: left in the union's staging area: {:?}",
            internal.keys().collect::<Vec<_>>()
        );
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "container {n}'s upper holds other names than its own writes"
        );
        assert_eq!(got, want, "container {n}'s upper holds other data");
    }
    assert_unchanged(&image_before);
    // Containers started without --rm keep their record, as docker keeps a
    // stopped container, until `unionfs-run rm`; an upper given with --upper
    // stays even then. `--rm` ones leave nothing.
    let names_in = |dir: &Path| -> std::collections::BTreeSet<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let kept: Vec<&String> = kids
        .iter()
        .filter(|k| k.2.is_some())
        .map(|k| &k.1)
        .collect();
    assert_eq!(
        names_in(&state),
        kept.iter().map(|n| n.to_string()).collect(),
        "launcher state: only the kept containers' records"
    );
    let rm = Command::new(&launcher)
        .arg("rm")
        .args(&kept)
        .env("UNIONFS_RUN_DIR", &state)
        .output()
        .unwrap();
    assert!(
        rm.status.success(),
        "unionfs-run rm: {}",
        String::from_utf8_lossy(&rm.stderr)
    );
    for k in kids.iter().filter(|k| k.2.is_some()) {
        let upper = k.2.as_ref().unwrap();
        assert!(
            upper.join(format!("out-{}", k.0)).is_dir(),
            "rm removed --upper"
        );
    }
    let left: Vec<_> = fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "launcher state left: {left:?}");
    let m = mounts_under(&s.root);
    assert!(m.is_empty(), "mounts left: {m:?}");
    let d = daemon_pids_under(&s.root);
    assert!(d.is_empty(), "unionfs daemons left: {d:?}");
}
