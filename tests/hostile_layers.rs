//! Hostile layers, through a mount: an image layer is untrusted input.
//!
//! One table lists every case — what the lower holds and what a caller through the mount
//! must get. For each case: the access gives the stated result (a clear errno, never a
//! hang or a panic), nothing outside the branches is ever shown, the daemon keeps serving
//! the rest of the view, and the lowers are untouched. The daemon's memory while it lists a
//! huge directory is measured against a stated bound.
//!
//! `UNIONFS_SOAK_BIG_DIR` sets the entries of the big directory (default 100 000; the soak
//! setting is 1 000 000).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;

/// The branches of one case: `l1` on top of `l2` on top of `l3`, and a directory beside
/// them that no access may ever reach.
struct Layers {
    l1: PathBuf,
    l2: PathBuf,
    l3: PathBuf,
    outside: PathBuf,
}

/// What a case's access must give.
type Check = fn(&Path, &Layers) -> Result<(), String>;

struct Case {
    name: &'static str,
    build: fn(&Layers),
    check: Check,
    /// Warnings the daemon logs for it (accessed twice): one per hostile object.
    log_lines: usize,
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn names(dir: &Path) -> Result<Vec<String>, String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map_err(|e| format!("readdir {}: {e}", dir.display()))?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

fn expect_names(dir: &Path, want: &[&str]) -> Result<(), String> {
    let got = names(dir)?;
    if got != want {
        return Err(format!("{}: {got:?}, want {want:?}", dir.display()));
    }
    Ok(())
}

fn expect_errno(what: &str, r: std::io::Result<impl Sized>, want: i32) -> Result<(), String> {
    match errno_of(r) {
        Some(e) if e == want => Ok(()),
        got => Err(format!(
            "{what}: errno {got:?}, want {want} ({})",
            std::io::Error::from_raw_os_error(want)
        )),
    }
}

/// A metadata-only file of 4096 bytes named `rel` (its data would be below).
fn metacopy_file(root: &Path, rel: &str) {
    let p = file(root, rel, b"", 0o644);
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(4096)
        .unwrap();
    set_xattr(root, rel, "trusted.overlay.metacopy", b"");
}

const SECRET: &str = "secret-outside-the-branches";

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "redirect with .. components",
            build: |l| {
                mkdir(&l.l1, "a", 0o755);
                file(&l.l1, "a/own", b"own", 0o644);
                redirect(&l.l1, "a", "/../outside");
                mkdir(&l.l1, "b", 0o755);
                redirect(&l.l1, "b", "../outside");
            },
            log_lines: 2,
            check: |m, _| {
                expect_names(&m.join("a"), &["own"])?;
                expect_names(&m.join("b"), &[])
            },
        },
        Case {
            name: "absolute redirect through a symlink out of the branch",
            build: |l| {
                mkdir(&l.l1, "a", 0o755);
                redirect(&l.l1, "a", "/s/x");
                symlink(&l.l2, "s", l.outside.to_str().unwrap());
                mkdir(&l.l3, "s/x", 0o755);
                file(&l.l3, "s/x/below", b"3", 0o644);
            },
            // l2's s is a symlink: the walk stops there, in l2 and below.
            log_lines: 0,
            check: |m, _| expect_names(&m.join("a"), &[]),
        },
        Case {
            name: "redirect value of 3000 bytes",
            build: |l| {
                mkdir(&l.l1, "a", 0o755);
                file(&l.l1, "a/own", b"own", 0o644);
                redirect(&l.l1, "a", &format!("/{}", "x/".repeat(1500)));
            },
            log_lines: 0,
            check: |m, _| expect_names(&m.join("a"), &["own"]),
        },
        Case {
            name: "redirect loop A -> B -> A across branches",
            build: |l| {
                mkdir(&l.l1, "a", 0o755);
                redirect(&l.l1, "a", "/b");
                mkdir(&l.l2, "b", 0o755);
                redirect(&l.l2, "b", "/a");
                file(&l.l2, "b/in-b", b"2", 0o644);
                mkdir(&l.l3, "a", 0o755);
                file(&l.l3, "a/in-a", b"3", 0o644);
            },
            log_lines: 0,
            check: |m, _| expect_names(&m.join("a"), &["in-a", "in-b"]),
        },
        Case {
            name: "redirect chain deeper than the stack",
            build: |l| {
                mkdir(&l.l1, "a", 0o755);
                redirect(&l.l1, "a", "/b");
                mkdir(&l.l2, "b", 0o755);
                redirect(&l.l2, "b", "/c");
                mkdir(&l.l3, "c", 0o755);
                redirect(&l.l3, "c", "/d");
                file(&l.l3, "c/in-c", b"3", 0o644);
            },
            log_lines: 0,
            check: |m, _| expect_names(&m.join("a"), &["in-c"]),
        },
        Case {
            name: "relative redirect with a slash",
            build: |l| {
                mkdir(&l.l1, "a", 0o755);
                redirect(&l.l1, "a", "x/../../outside");
            },
            log_lines: 1,
            check: |m, _| expect_names(&m.join("a"), &[]),
        },
        Case {
            name: "metacopy file with no data below",
            build: |l| {
                metacopy_file(&l.l1, "f");
            },
            log_lines: 1,
            check: |m, _| {
                expect_errno("stat f", fs::metadata(m.join("f")), libc::EIO)?;
                // the rest of the directory is served
                expect_names(m, &["f"]).or_else(|_| expect_names(m, &[]))
            },
        },
        Case {
            name: "metacopy file whose redirect points at nothing",
            build: |l| {
                metacopy_file(&l.l1, "f");
                set_xattr(&l.l1, "f", "trusted.overlay.redirect", b"/nowhere");
            },
            log_lines: 1,
            check: |m, _| expect_errno("stat f", fs::metadata(m.join("f")), libc::EIO),
        },
        Case {
            name: "origin xattr pointing at nothing",
            build: |l| {
                file(&l.l1, "f", b"data", 0o644);
                set_xattr(&l.l1, "f", "trusted.overlay.origin", b"\x00\xfb\x21garbage");
            },
            log_lines: 0,
            check: |m, _| {
                let d = fs::read(m.join("f")).map_err(|e| format!("read f: {e}"))?;
                (d == b"data")
                    .then_some(())
                    .ok_or_else(|| format!("f reads {d:?}"))
            },
        },
        Case {
            name: ".wh. names for '.', '..' and the empty name",
            build: |l| {
                mkdir(&l.l1, "d", 0o755);
                for n in [".wh.", ".wh..", ".wh..."] {
                    file(&l.l1, &format!("d/{n}"), b"", 0o644);
                }
                file(&l.l2, "d/f", b"2", 0o644);
            },
            log_lines: 0,
            check: |m, _| {
                expect_names(&m.join("d"), &["f"])?;
                fs::metadata(m.join("d/.."))
                    .map(|_| ())
                    .map_err(|e| format!("stat d/..: {e}"))
            },
        },
        Case {
            name: "symlink loop",
            build: |l| {
                symlink(&l.l1, "a", "b");
                symlink(&l.l1, "b", "a");
            },
            log_lines: 0,
            check: |m, _| {
                expect_errno("open a", fs::read(m.join("a")), libc::ELOOP)?;
                let t = fs::read_link(m.join("a")).map_err(|e| format!("readlink a: {e}"))?;
                (t == Path::new("b"))
                    .then_some(())
                    .ok_or_else(|| format!("a -> {}", t.display()))
            },
        },
        Case {
            name: "directories nested past PATH_MAX",
            build: |l| {
                // 24 levels of 200-byte names: 4824 bytes, more than PATH_MAX.
                let mut p = l.l1.clone();
                for _ in 0..DEEP_LEVELS {
                    p.push(deep_name());
                    // create_dir_all would pass the whole path to the kernel
                    fs::create_dir(short(&p)).unwrap();
                }
                fs::write(short(&p.join("leaf")), b"deep").unwrap();
            },
            log_lines: 0,
            check: |m, _| deep_walk(m),
        },
    ]
}

const DEEP_LEVELS: usize = 24;

fn deep_name() -> String {
    "d".repeat(200)
}

/// `p` as something the kernel accepts whatever its length: the tail of the path,
/// relative to the process's current directory moved into the parent of that tail.
fn short(p: &Path) -> PathBuf {
    let s = p.as_os_str().len();
    if s < 4000 {
        return p.to_path_buf();
    }
    // walk down from an fd: the directory that holds the last component
    let parent = p.parent().unwrap();
    let fd = open_deep(parent);
    PathBuf::from(format!(
        "/proc/self/fd/{}/{}",
        fd,
        p.file_name().unwrap().to_string_lossy()
    ))
}

thread_local! {
    static FDS: std::cell::RefCell<Vec<std::os::fd::OwnedFd>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An fd of directory `p` (any length), opened one component at a time; kept open for
/// the rest of the thread so `/proc/self/fd/N` stays valid.
fn open_deep(p: &Path) -> i32 {
    use nix::fcntl::{openat, OFlag, AT_FDCWD};
    use nix::sys::stat::Mode;
    use std::os::fd::{AsFd, AsRawFd};
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut fd = openat(AT_FDCWD, "/", flags, Mode::empty()).unwrap();
    for c in p.iter().skip(1) {
        fd = openat(fd.as_fd(), c, flags, Mode::empty()).unwrap();
    }
    let raw = fd.as_raw_fd();
    FDS.with(|f| f.borrow_mut().push(fd));
    raw
}

/// Through the mount: reads the leaf at the bottom, writes a new file next to it (copy-up
/// of every directory on the way, each deeper than PATH_MAX in the upper) and reads it
/// back, one component at a time.
fn deep_walk(m: &Path) -> Result<(), String> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    use std::os::fd::AsFd;
    let dflags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut fd = nix::fcntl::open(m, dflags, Mode::empty()).map_err(|e| e.to_string())?;
    for i in 0..DEEP_LEVELS {
        fd = openat(fd.as_fd(), deep_name().as_str(), dflags, Mode::empty())
            .map_err(|e| format!("level {i}: {e}"))?;
    }
    let leaf = openat(fd.as_fd(), "leaf", OFlag::O_RDONLY, Mode::empty())
        .map_err(|e| format!("open leaf: {e}"))?;
    let mut buf = [0u8; 16];
    let n = nix::unistd::read(&leaf, &mut buf).map_err(|e| e.to_string())?;
    if &buf[..n] != b"deep" {
        return Err(format!("leaf reads {:?}", &buf[..n]));
    }
    let new = openat(
        fd.as_fd(),
        "new",
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| format!("create new at the bottom: {e}"))?;
    nix::unistd::write(&new, b"written").map_err(|e| e.to_string())?;
    drop(new);
    let new = openat(fd.as_fd(), "new", OFlag::O_RDONLY, Mode::empty())
        .map_err(|e| format!("reopen new: {e}"))?;
    let n = nix::unistd::read(&new, &mut buf).map_err(|e| e.to_string())?;
    if &buf[..n] != b"written" {
        return Err(format!("new reads {:?}", &buf[..n]));
    }
    Ok(())
}

/// The secret beside the branches never shows anywhere in the view.
fn secret_shows(m: &Path) -> Option<PathBuf> {
    let mut stack = vec![m.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_name() == SECRET {
                return Some(p);
            }
            // depth-bounded: the deep case is walked by its own check
            if e.file_type().is_ok_and(|t| t.is_dir()) && p.as_os_str().len() < 1024 {
                stack.push(p);
            }
        }
    }
    None
}

#[test]
fn hostile_layers_are_served_safely() {
    if !can_mount_fuse() {
        return;
    }
    let mut failures = Vec::new();
    for case in cases() {
        let s = Scratch::new("hostile");
        let l = Layers {
            l1: s.dir("l1"),
            l2: s.dir("l2"),
            l3: s.dir("l3"),
            outside: s.dir("outside"),
        };
        file(&l.outside, SECRET, b"must never show", 0o644);
        (case.build)(&l);
        let before = snapshot_all(&[&l.l1, &l.l2, &l.l3]);
        let upper = s.dir("upper");
        let mnt = s.dir("mnt");
        let log = s.path("daemon.log");
        let lowers = format!("{}:{}:{}", l.l1.display(), l.l2.display(), l.l3.display());
        let opts = format!("log={}", log.display());
        let m = Mount::unionfs_args(
            &[
                "mount",
                &lowers,
                upper.to_str().unwrap(),
                mnt.to_str().unwrap(),
                "-o",
                &opts,
            ],
            &mnt,
        );
        let r = (case.check)(&m.mnt, &l);
        // the same access again: a fault is logged once, not per request
        let _ = (case.check)(&m.mnt, &l);
        if let Err(e) = r {
            failures.push(format!("{}: {e}", case.name));
        }
        if let Some(p) = secret_shows(&m.mnt) {
            failures.push(format!(
                "{}: the secret shows at {}",
                case.name,
                p.display()
            ));
        }
        // the daemon still serves
        if let Err(e) = fs::metadata(&m.mnt) {
            failures.push(format!("{}: the mount stopped answering: {e}", case.name));
        }
        if !m.daemon_pids.iter().all(|&p| pid_alive(p)) {
            failures.push(format!("{}: the daemon died", case.name));
        }
        m.unmount();
        let logged = fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = logged.lines().filter(|l| l.contains("WARN")).collect();
        eprintln!(
            "{}: {} log lines\n  {}",
            case.name,
            lines.len(),
            lines.join("\n  ")
        );
        if lines.len() != case.log_lines {
            failures.push(format!(
                "{}: {} log lines, want {}:\n  {}",
                case.name,
                lines.len(),
                case.log_lines,
                lines.join("\n  ")
            ));
        }
        assert_unchanged(&before);
        // the deep tree cannot be removed by a path: leave it to the kernel's
        // unlinkat from fds
        remove_deep(&l.l1);
        remove_deep(&upper);
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Removes a tree nested past PATH_MAX (std's remove_dir_all works from fds too, but
/// TempDir's drop must not fail).
fn remove_deep(root: &Path) {
    let p = root.join(deep_name());
    if p.exists() {
        fs::remove_dir_all(&p).unwrap();
    }
}

fn rss_kib(pid: i32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A directory of many entries (100 000 here, 1 000 000 in the soak setting) in a lower,
/// merged with an upper that deletes some and adds some: listed completely and exactly,
/// and the daemon's memory grows by less than 512 bytes an entry while it does (the
/// readdir snapshot holds each name once, with its type and inode number).
#[test]
fn a_huge_directory_is_listed_exactly_in_bounded_memory() {
    if !can_mount_fuse() {
        return;
    }
    let n: usize = std::env::var("UNIONFS_SOAK_BIG_DIR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let s = Scratch::new("hostile-bigdir");
    let l = s.dir("lower");
    let big = l.join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..n {
        fs::File::create(big.join(format!("entry-{i:07}"))).unwrap();
    }
    let upper = s.dir("upper");
    let mnt = s.dir("mnt");
    let m = Mount::unionfs(&[&l], Some(&upper), &mnt);
    let pid = *m.daemon_pids.first().expect("a daemon");
    let base = rss_kib(pid);
    for i in (0..n).step_by(1000) {
        fs::remove_file(m.mnt.join(format!("big/entry-{i:07}"))).unwrap();
    }
    fs::write(m.mnt.join("big/added"), b"x").unwrap();
    let mut count = 0usize;
    let mut peak = 0u64;
    for (i, e) in fs::read_dir(m.mnt.join("big")).unwrap().enumerate() {
        let e = e.unwrap();
        assert!(!e.file_name().to_string_lossy().starts_with(".wh."));
        count += 1;
        if i % 10_000 == 0 {
            peak = peak.max(rss_kib(pid));
        }
    }
    peak = peak.max(rss_kib(pid));
    let removed = n.div_ceil(1000);
    assert_eq!(count, n - removed + 1);
    let grew = peak.saturating_sub(base) * 1024;
    eprintln!(
        "{n} entries: daemon RSS {base} KiB before the listing, peak {peak} KiB ({} bytes an entry)",
        grew / n as u64
    );
    assert!(
        grew < 512 * n as u64,
        "the daemon grew by {grew} bytes listing {n} entries"
    );
    let st = fs::metadata(m.mnt.join("big")).unwrap();
    assert!(st.is_dir() && st.mode() & 0o777 == 0o755);
    // a name that does not exist, among many, is still ENOENT
    assert_eq!(
        fs::metadata(m.mnt.join("big/entry-0000000"))
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}
