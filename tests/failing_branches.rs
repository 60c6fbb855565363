//! Failing branches (issue 14, item 2): a lower that returns EIO on read,
//! readdir and getxattr of named objects (faultfs, a FUSE lower served by
//! this test process), a lower directory removed under a running union,
//! and a lower filesystem lazily unmounted under it.
//!
//! Asserted: the caller gets an error (EIO for injected faults; ENOENT,
//! ESTALE or EIO — or the old, intact data — for vanished branches), never
//! a hang (each operation runs on its own thread with a generous deadline,
//! as a hang guard only); the daemon (run in the foreground, stderr to a
//! file) logs one line per distinct fault, however often it is met;
//! nothing else in the view is affected; a refused copy-up leaves nothing
//! in the upper or the workdir.
//!
//! Soak: `UNIONFS_SOAK_ROUNDS=N` multiplies the repeated requests by N.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod faultfs;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use faultfs::{FaultOp, Faults};

/// Hang guard: generous, never a timing assertion.
const HANG: Duration = Duration::from_secs(60);

fn rounds() -> usize {
    std::env::var("UNIONFS_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Runs `f` on its own thread; panics if it has not returned after `HANG`
/// (the thread is left behind: it is stuck in the kernel).
fn guarded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(HANG) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer after {HANG:?} (hang)"),
    }
}

fn errno(r: &io::Result<impl Sized>) -> Option<i32> {
    r.as_ref().err().map(|e| e.raw_os_error().unwrap_or(-1))
}

fn name_of(e: i32) -> String {
    nix::errno::Errno::from_raw(e).to_string()
}

/// A union daemon in the foreground, its stderr in a file; Drop unmounts
/// and reaps it.
struct Daemon {
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(lowers: &[&Path], upper: &Path, work: &Path, mnt: &Path, log: &Path) -> Daemon {
        let lowers: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let child = Command::new(bin())
            .arg("mount")
            .arg("-f")
            .arg(lowers.join(":"))
            .arg(upper)
            .arg(mnt)
            .arg("-o")
            .arg(format!("workdir={}", work.display()))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            log: log.to_path_buf(),
        };
        let up = wait_until(HANG, || {
            is_mounted(mnt) || d.child.as_mut().unwrap().try_wait().unwrap().is_some()
        });
        assert!(
            up && is_mounted(mnt),
            "the daemon did not mount; its log:\n{}",
            d.log_text()
        );
        d
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's lines about branch faults.
    fn fault_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("branch fault"))
            .map(str::to_string)
            .collect()
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg(&self.mnt).status();
            if is_mounted(&self.mnt) {
                let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if let Some(mut c) = self.child.take() {
            if !wait_until(Duration::from_secs(20), || c.try_wait().unwrap().is_some()) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn work_junk(work: &Path) -> Vec<String> {
    fs::read_dir(work.join("unionfs-work"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Reads every file of the expected tree through the mount and compares.
fn assert_files(mnt: &Path, files: &[(&str, &[u8])]) {
    for (rel, want) in files {
        let p = at(mnt, rel);
        let got = guarded(&format!("read {rel}"), move || fs::read(p));
        match got {
            Ok(g) => assert!(g == *want, "{rel}: wrong content"),
            Err(e) => panic!("{rel} no longer reads: {}", errname(&e)),
        }
    }
}

#[test]
fn faulty_fuse_lower_gives_eio_and_logs_once() {
    if !can_mount_fuse() {
        return;
    }
    let s = Scratch::new("faultfs");
    let src = s.dir("src");
    let good1 = vec![1u8; 10_000];
    let good2 = b"two".to_vec();
    file(&src, "good1", &good1, 0o644);
    file(&src, "dir/good2", &good2, 0o644);
    file(&src, "bad_read", &vec![7u8; 50_000], 0o644);
    file(&src, "dir/bad_xattr", b"xattr fails", 0o644);
    file(&src, "bad_dir/inside", b"never listed", 0o644);
    file(&src, "bad_dir/sub/deeper", b"found by name", 0o644);
    file(&src, "dir/bad_lookup", b"cannot be found", 0o644);
    let lower2 = s.dir("lower2");
    file(&lower2, "from_lower2", b"lower2", 0o644);
    file(&lower2, "bad_dir/also_in_lower2", b"x", 0o644);
    let upper = s.dir("upper");
    let work = s.dir("work");
    let fmnt = s.dir("faultmnt");
    let mnt = s.dir("mnt");

    let faults = Arc::new(Faults::default());
    faults.add(FaultOp::Read, "bad_read", libc::EIO);
    faults.add(FaultOp::Readdir, "bad_dir", libc::EIO);
    faults.add(FaultOp::Getxattr, "bad_xattr", libc::EIO);
    faults.add(FaultOp::Lookup, "bad_lookup", libc::EIO);
    let session = faultfs::spawn(&src, &fmnt, Arc::clone(&faults));
    let session = match session {
        Ok(se) => se,
        Err(e) => {
            skip_or_fail(&format!("cannot mount faultfs: {e}"));
            return;
        }
    };
    let _fguard = Mount::adopt(&fmnt);
    assert!(
        wait_until(HANG, || is_mounted(&fmnt)),
        "faultfs not mounted"
    );

    let log = s.path("daemon.log");
    let mut d = Daemon::start(&[&fmnt, &lower2], &upper, &work, &mnt, &log);
    let n = 20 * rounds();

    // EIO on read, every time, whoever asks.
    for k in 0..n {
        let p = mnt.join("bad_read");
        let r = guarded("read bad_read", move || {
            let mut f = fs::File::open(p)?;
            let mut b = Vec::new();
            f.read_to_end(&mut b).map(|_| b)
        });
        assert_eq!(errno(&r), Some(libc::EIO), "read of bad_read #{k}");
    }
    // EIO on readdir.
    for k in 0..n {
        let p = mnt.join("bad_dir");
        let r = guarded("readdir bad_dir", move || {
            fs::read_dir(p).and_then(|rd| rd.collect::<io::Result<Vec<_>>>())
        });
        assert_eq!(errno(&r), Some(libc::EIO), "readdir of bad_dir #{k}");
    }
    // EIO on getxattr.
    for k in 0..n {
        let p = mnt.join("dir/bad_xattr");
        let r = guarded("getxattr bad_xattr", move || xattr::get(p, "user.x"));
        assert_eq!(errno(&r), Some(libc::EIO), "getxattr of dir/bad_xattr #{k}");
    }
    // EIO on lookup (the name is there, the branch cannot say so).
    for k in 0..n {
        let p = mnt.join("dir/bad_lookup");
        let r = guarded("stat bad_lookup", move || fs::metadata(p));
        assert_eq!(errno(&r), Some(libc::EIO), "lookup of dir/bad_lookup #{k}");
    }
    // A copy-up of a file that cannot be read fails, leaving nothing.
    let p = mnt.join("bad_read");
    let r = guarded("copy-up of bad_read", move || {
        let mut f = fs::OpenOptions::new().append(true).open(p)?;
        f.write_all(b"x")
    });
    assert_eq!(errno(&r), Some(libc::EIO), "copy-up of bad_read");
    assert!(
        !upper.join("bad_read").exists(),
        "a partial copy of bad_read is in the upper"
    );
    assert_eq!(
        work_junk(&work),
        Vec::<String>::new(),
        "junk in the workdir"
    );

    // Nothing else is affected: names still resolve, other files read,
    // the faulty objects' metadata is there, other directories list.
    assert_files(
        &mnt,
        &[
            ("good1", &good1),
            ("dir/good2", &good2),
            ("dir/bad_xattr", b"xattr fails"),
            ("from_lower2", b"lower2"),
            ("bad_dir/sub/deeper", b"found by name"),
        ],
    );
    assert_eq!(fs::metadata(mnt.join("bad_read")).unwrap().len(), 50_000);
    let mut root: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    assert_eq!(root, ["bad_dir", "bad_read", "dir", "from_lower2", "good1"]);
    fs::write(mnt.join("new"), b"writes work").unwrap();
    assert_eq!(fs::read(mnt.join("new")).unwrap(), b"writes work");
    assert!(d.alive(), "the daemon died");

    // The lower was asked again and again; the log says it once per fault.
    assert!(faults.hits(FaultOp::Read, "bad_read") >= n as u64);
    assert!(faults.hits(FaultOp::Readdir, "bad_dir") >= n as u64);
    assert!(faults.hits(FaultOp::Getxattr, "bad_xattr") >= n as u64);
    let lines = d.fault_lines();
    // (The kernel lists with READDIRPLUS where it can: "readdir" covers both.)
    let count = |op: &str, path: &str| {
        lines
            .iter()
            .filter(|l| {
                l.split_once("branch fault: ").is_some_and(|(_, rest)| {
                    rest.starts_with(op) && rest.contains(&format!(" of {path} "))
                })
            })
            .count()
    };
    // The daemon meets the fault where it touches the data: at open (a
    // lower file passed through) and/or at read (through the daemon). Each
    // of those two faults is logged once, and at least one is.
    let (reads, opens) = (count("read", "/bad_read"), count("open", "/bad_read"));
    assert!(
        reads <= 1 && opens <= 1 && reads + opens >= 1,
        "log:\n{}",
        lines.join("\n")
    );
    assert_eq!(
        count("readdir", "/bad_dir"),
        1,
        "log:\n{}",
        lines.join("\n")
    );
    assert_eq!(
        count("getxattr", "/dir/bad_xattr"),
        1,
        "log:\n{}",
        lines.join("\n")
    );
    assert_eq!(count("open", "/bad_read"), 1, "log:\n{}", lines.join("\n"));
    // A failed lookup is logged against the directory it was made in.
    assert_eq!(count("lookup", "/dir"), 1, "log:\n{}", lines.join("\n"));
    assert!(
        lines.len() <= 7,
        "more fault lines than distinct faults:\n{}",
        lines.join("\n")
    );

    // The fault heals: the same objects serve again (nothing was cached
    // as broken, nothing was poisoned).
    faults.remove(FaultOp::Read, "bad_read");
    faults.remove(FaultOp::Getxattr, "bad_xattr");
    assert_eq!(fs::read(mnt.join("bad_read")).unwrap(), vec![7u8; 50_000]);
    assert_eq!(
        errno(&xattr::get(mnt.join("dir/bad_xattr"), "user.x")),
        None,
        "getxattr after the fault healed"
    );
    d.stop();
    drop(session);
}

/// A union over one ordinary lower; returns what the tests need.
struct Plain {
    s: Scratch,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

fn plain(tag: &str) -> Plain {
    let s = Scratch::new(tag);
    Plain {
        lower: s.dir("lower"),
        upper: s.dir("upper"),
        work: s.dir("work"),
        mnt: s.dir("mnt"),
        s,
    }
}

/// What an operation on a vanished branch may give: the old data intact,
/// or ENOENT / ESTALE / EIO — or ENOTCONN, the lower's own error where the
/// kernel reads a lower file itself (passthrough, the default) and the
/// lower is an aborted FUSE mount. Anything else (other errors, other
/// data) fails.
fn vanished_ok(what: &str, r: io::Result<Vec<u8>>, old: &[u8]) {
    eprintln!(
        "{what}: {}",
        match &r {
            Ok(_) => "the old data".to_string(),
            Err(e) => errname(e),
        }
    );
    match r {
        Ok(d) => assert!(d == old, "{what}: returned data that was never there"),
        Err(e) => {
            let n = e.raw_os_error().unwrap_or(-1);
            assert!(
                [libc::ENOENT, libc::ESTALE, libc::EIO, libc::ENOTCONN].contains(&n),
                "{what}: {} (expected ENOENT, ESTALE, EIO or ENOTCONN)",
                name_of(n)
            );
        }
    }
}

fn read_path(p: PathBuf) -> impl FnOnce() -> io::Result<Vec<u8>> + Send + 'static {
    move || fs::read(p)
}

/// Exercises a branch that went away under the union: the known, the
/// open, the never-seen, a copy-up, a listing; then checks the rest.
/// `dead`: the whole branch answers nothing any more (not only `gone`).
fn exercise_vanished(p: &Plain, d: &mut Daemon, gone: &str, open: fs::File, dead: bool) {
    let m = &p.mnt;
    let old1 = b"one".to_vec();
    for _ in 0..rounds() {
        // (An earlier round's copy-up may have appended to it.)
        vanished_ok(
            "read of a known file",
            guarded("read", read_path(m.join(format!("{gone}/f1"))))
                .map(|d| d[..d.len().min(3)].to_vec()),
            &old1,
        );
        let open = open.try_clone().unwrap();
        vanished_ok(
            "read through a handle opened before",
            guarded("read handle", move || {
                use std::os::unix::fs::FileExt;
                let mut b = vec![0u8; 16];
                open.read_at(&mut b, 0).map(|n| b[..n].to_vec())
            }),
            b"two",
        );
        vanished_ok(
            "lookup of a name never seen",
            guarded("read new", read_path(m.join(format!("{gone}/sub/x")))),
            b"x",
        );
        let dir = m.join(gone);
        let listed = guarded("readdir", move || {
            fs::read_dir(dir).and_then(|rd| rd.collect::<io::Result<Vec<_>>>())
        });
        eprintln!(
            "readdir: {}",
            match &listed {
                Ok(v) => format!("{} entries", v.len()),
                Err(e) => errname(e),
            }
        );
        if let Err(e) = &listed {
            let n = e.raw_os_error().unwrap_or(-1);
            assert!(
                [libc::ENOENT, libc::ESTALE, libc::EIO].contains(&n),
                "readdir: {}",
                name_of(n)
            );
        }
        let f1 = m.join(format!("{gone}/f1"));
        let copied = guarded("copy-up", move || {
            fs::OpenOptions::new()
                .append(true)
                .open(&f1)?
                .write_all(b"+")?;
            fs::read(f1)
        });
        vanished_ok("copy-up", copied.map(|d| d[..3].to_vec()), &old1);
        // A copy-up stays staged in the workdir until its data is synced
        // and it is renamed into place (a moment): junk is what stays.
        wait_until(Duration::from_secs(10), || work_junk(&p.work).is_empty());
        assert_eq!(
            work_junk(&p.work),
            Vec::<String>::new(),
            "junk in the workdir"
        );
    }
    // The rest of the view is not affected: what the union found before
    // (in other branches, or in the upper) serves, and writes to it work.
    assert_files(
        m,
        &[
            ("keep/file", b"kept"),
            ("top", b"top"),
            ("written", b"before"),
        ],
    );
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("written"))
        .and_then(|mut f| f.write_all(b"+after"))
        .unwrap();
    assert_eq!(fs::read(m.join("written")).unwrap(), b"before+after");
    // A name the union has not seen must be asked of every branch, the
    // dead one too (it might hold the name, or a whiteout of it): while a
    // branch is dead such a lookup is EIO — never a guess, never a hang.
    let fresh = m.join("fresh");
    let r = guarded("create fresh", move || fs::write(fresh, b"new"));
    if dead {
        assert_eq!(errno(&r), Some(libc::EIO), "a new name under a dead branch");
    } else {
        r.unwrap();
        assert_eq!(fs::read(m.join("fresh")).unwrap(), b"new");
    }
    assert!(d.alive(), "the daemon died");
    // No flood in the log either way.
    let lines = d.fault_lines();
    eprintln!("fault lines:\n{}", lines.join("\n"));
    assert!(lines.len() <= 10, "fault lines:\n{}", lines.join("\n"));
}

/// Before the branch goes: the union and the kernel know these.
fn visit_before(m: &Path) {
    assert_eq!(fs::read(m.join("keep/file")).unwrap(), b"kept");
    assert_eq!(fs::read(m.join("top")).unwrap(), b"top");
    fs::write(m.join("written"), b"before").unwrap();
}

fn populate(root: &Path, gone: &str) {
    file(root, &format!("{gone}/f1"), b"one", 0o644);
    file(root, &format!("{gone}/f2"), b"two", 0o644);
    file(root, &format!("{gone}/sub/x"), b"x", 0o644);
}

#[test]
fn lower_directory_removed_under_the_union() {
    if !can_mount_fuse() {
        return;
    }
    let p = plain("rmdir-lower");
    populate(&p.lower, "d");
    file(&p.lower, "keep/file", b"kept", 0o644);
    file(&p.lower, "top", b"top", 0o644);
    let log = p.s.path("daemon.log");
    let mut d = Daemon::start(&[&p.lower], &p.upper, &p.work, &p.mnt, &log);
    // Known to the union and the kernel before it goes.
    assert_eq!(fs::read(p.mnt.join("d/f1")).unwrap(), b"one");
    let open = fs::File::open(p.mnt.join("d/f2")).unwrap();
    visit_before(&p.mnt);
    fs::remove_dir_all(p.lower.join("d")).unwrap();
    exercise_vanished(&p, &mut d, "d", open, false);
    d.stop();
}

#[test]
fn lower_filesystem_unmounted_under_the_union() {
    if !can_mount_fuse() {
        return;
    }
    let p = plain("umount-lower");
    let lt = p.s.dir("lt");
    let out = run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "tmpfs",
            lt.to_str().unwrap(),
        ],
    );
    assert!(out.ok(), "cannot mount a tmpfs:\n{out}");
    let _tguard = Mount::adopt(&lt);
    populate(&lt, "d");
    file(&p.lower, "keep/file", b"kept", 0o644);
    file(&p.lower, "top", b"top", 0o644);
    let log = p.s.path("daemon.log");
    let mut d = Daemon::start(&[&lt, &p.lower], &p.upper, &p.work, &p.mnt, &log);
    assert_eq!(fs::read(p.mnt.join("d/f1")).unwrap(), b"one");
    let open = fs::File::open(p.mnt.join("d/f2")).unwrap();
    visit_before(&p.mnt);
    let out = run("umount", &["-l", lt.to_str().unwrap()]);
    assert!(out.ok(), "lazy umount failed:\n{out}");
    assert!(!is_mounted(&lt));
    exercise_vanished(&p, &mut d, "d", open, false);
    d.stop();
}

#[test]
fn fuse_lower_aborted_under_the_union() {
    if !can_mount_fuse() {
        return;
    }
    let p = plain("abort-lower");
    let src = p.s.dir("src");
    populate(&src, "d");
    file(&p.lower, "keep/file", b"kept", 0o644);
    file(&p.lower, "top", b"top", 0o644);
    let fmnt = p.s.dir("faultmnt");
    let session = match faultfs::spawn(&src, &fmnt, Arc::new(Faults::default())) {
        Ok(se) => se,
        Err(e) => {
            skip_or_fail(&format!("cannot mount faultfs: {e}"));
            return;
        }
    };
    let _fguard = Mount::adopt(&fmnt);
    assert!(
        wait_until(HANG, || is_mounted(&fmnt)),
        "faultfs not mounted"
    );
    let log = p.s.path("daemon.log");
    let mut d = Daemon::start(&[&fmnt, &p.lower], &p.upper, &p.work, &p.mnt, &log);
    assert_eq!(fs::read(p.mnt.join("d/f1")).unwrap(), b"one");
    let open = fs::File::open(p.mnt.join("d/f2")).unwrap();
    visit_before(&p.mnt);
    // The lower's daemon goes away as if it crashed: its connection is
    // aborted, and every request to it fails with ENOTCONN from now on.
    // (fusectl mounted privately under the scratch dir, not at the
    // machine-wide /sys/fs/fuse/connections.)
    let ctl = p.s.dir("fusectl");
    let out = run(
        "mount",
        &["-t", "fusectl", "fusectl", ctl.to_str().unwrap()],
    );
    if !out.ok() {
        skip_or_fail(&format!("cannot mount fusectl:\n{out}"));
        return;
    }
    let _cguard = Mount::adopt(&ctl);
    let dev = std::os::unix::fs::MetadataExt::dev(&fs::metadata(&fmnt).unwrap());
    let abort = ctl.join(format!("{}/abort", nix::sys::stat::minor(dev)));
    fs::write(&abort, b"1").unwrap_or_else(|e| panic!("{}: {e}", abort.display()));
    exercise_vanished(&p, &mut d, "d", open, true);
    d.stop();
    drop(session);
}
