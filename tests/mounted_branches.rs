//! AUFS branch management through a mounted union (issue 13): branch
//! modes (`rw`, `ro`, `ro+wh`, `rr`, `+nolwh`), several writable branches
//! with create and copy-up policies, and branches added, removed and
//! changed on a live mount (`unionfs branch`, `mount -o remount,...`),
//! each checked against what aufs.5 says.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// `unionfs mount MNT -o br=SPEC[,more]`.
fn mount_br(mnt: &Path, spec: &str, more: &str) -> Mount {
    let mut o = format!("br={spec}");
    if !more.is_empty() {
        o.push(',');
        o.push_str(more);
    }
    let args: Vec<OsString> = vec!["mount".into(), mnt.into(), "-o".into(), o.into()];
    Mount::unionfs_args(&args, mnt)
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn branch(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Cmd {
    let mut v: Vec<OsString> = vec!["branch".into()];
    v.extend(args.iter().map(|a| a.as_ref().to_os_string()));
    run_bin(&v)
}

/// One lower with an AUFS whiteout of `gone` and an opaque `d`, over a
/// lower that holds both.
fn whiteout_lowers(s: &Scratch) -> (PathBuf, PathBuf) {
    let (l1, l2) = (s.dir("l1"), s.dir("l2"));
    file(&l2, "gone", b"old\n", 0o644);
    file(&l2, "d/x", b"x\n", 0o644);
    wh_aufs(&l1, "gone");
    mkdir(&l1, "d", 0o755);
    file(&l1, "d/.wh..wh..opq", b"", 0o644);
    file(&l1, "d/y", b"y\n", 0o644);
    (l1, l2)
}

#[test]
fn ro_and_rr_read_no_whiteouts_unless_wh() {
    if !can_mount_fuse() {
        return;
    }
    let s = Scratch::new("br-modes");
    let (l1, l2) = whiteout_lowers(&s);
    for (m1, honoured) in [
        ("ro+wh", true),
        ("rr+wh", true),
        ("ro", false),
        ("rr", false),
    ] {
        let u = s.dir(&format!("u-{m1}"));
        let mnt = s.dir(&format!("m-{m1}"));
        let _m = mount_br(
            &mnt,
            &format!(
                "{}=rw:{}={m1}:{}=ro",
                u.display(),
                l1.display(),
                l2.display()
            ),
            "",
        );
        let root = names(&mnt);
        assert!(
            !root.iter().any(|n| n.starts_with(".wh.")),
            "{m1}: {root:?}"
        );
        assert_eq!(
            exists(&mnt.join("gone")),
            !honoured,
            "{m1}: whiteout of gone"
        );
        let d = names(&mnt.join("d"));
        let want: BTreeSet<String> = if honoured {
            ["y"].iter().map(|s| s.to_string()).collect()
        } else {
            ["x", "y"].iter().map(|s| s.to_string()).collect()
        };
        assert_eq!(d, want, "{m1}: opaque d");
    }
    // Unmarked lowers are ro+wh, whatever the dialect.
    let u = s.dir("u-unmarked");
    let mnt = s.dir("m-unmarked");
    let _m = mount_br(
        &mnt,
        &format!("{}=rw:{}:{}", u.display(), l1.display(), l2.display()),
        "",
    );
    assert!(!exists(&mnt.join("gone")));
    let list = branch(&[&"list", &mnt]);
    assert!(list.ok(), "{list}");
    assert_eq!(
        list.stdout,
        format!(
            "0 {}=rw\n1 {}=ro+wh\n2 {}=ro+wh\n",
            u.display(),
            l1.display(),
            l2.display()
        )
    );
}

#[test]
fn whiteouts_are_hard_links_to_the_base_unless_nolwh() {
    if !can_mount_fuse() {
        return;
    }
    let s = Scratch::new("br-lwh");
    let l = s.dir("l");
    file(&l, "a", b"a\n", 0o644);
    file(&l, "b", b"b\n", 0o644);
    for (mode, linked) in [("rw", true), ("rw+nolwh", false)] {
        let u = s.dir(&format!("u-{mode}"));
        let mnt = s.dir(&format!("m-{mode}"));
        let m = mount_br(
            &mnt,
            &format!("{}={mode}:{}=ro", u.display(), l.display()),
            "",
        );
        fs::remove_file(mnt.join("a")).unwrap();
        fs::remove_file(mnt.join("b")).unwrap();
        assert_eq!(names(&mnt), BTreeSet::new(), "{mode}");
        m.unmount();
        let wa = fs::metadata(u.join(".wh.a")).unwrap();
        let wb = fs::metadata(u.join(".wh.b")).unwrap();
        assert_eq!(wa.len(), 0);
        if linked {
            assert_eq!(wa.ino(), wb.ino(), "{mode}: one inode for all whiteouts");
            let base = fs::metadata(u.join(".wh..wh.aufs")).unwrap();
            assert_eq!(base.ino(), wa.ino());
            assert!(wa.nlink() >= 3);
        } else {
            assert_ne!(wa.ino(), wb.ino(), "{mode}: separate whiteouts");
            assert_eq!(wa.nlink(), 1);
            assert!(!exists(&u.join(".wh..wh.aufs")));
        }
    }
}

/// rw1 (top), rw2, ro: where creates, copy-ups, deletes and renames land.
struct Three {
    _s: Scratch,
    rw1: PathBuf,
    rw2: PathBuf,
    ro: PathBuf,
    mnt: PathBuf,
}

impl Three {
    fn new(tag: &str) -> Three {
        let s = Scratch::new(tag);
        let (rw1, rw2, ro, mnt) = (s.dir("rw1"), s.dir("rw2"), s.dir("ro"), s.dir("mnt"));
        file(&ro, "lowfile", b"low\n", 0o644);
        file(&ro, "onlyro/f", b"f\n", 0o644);
        file(&ro, "both/lowf", b"lowf\n", 0o644);
        mkdir(&rw2, "both", 0o755);
        file(&rw2, "mid", b"mid\n", 0o644);
        file(&rw2, "midover", b"mid\n", 0o644);
        file(&ro, "midover", b"low\n", 0o644);
        file(&rw1, "topover", b"top\n", 0o644);
        file(&rw2, "topover", b"mid\n", 0o644);
        Three {
            _s: s,
            rw1,
            rw2,
            ro,
            mnt,
        }
    }

    fn mount(&self, opts: &str) -> Mount {
        mount_br(
            &self.mnt,
            &format!(
                "{}=rw:{}=rw:{}=ro",
                self.rw1.display(),
                self.rw2.display(),
                self.ro.display()
            ),
            opts,
        )
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

#[test]
fn tdp_creates_beside_the_topmost_parent() {
    if !can_mount_fuse() {
        return;
    }
    let t = Three::new("br-tdp");
    let _m = t.mount("");
    fs::write(t.m("new"), b"n").unwrap();
    assert!(exists(&t.rw1.join("new")) && !exists(&t.rw2.join("new")));
    // The parent is only in the read-only branch: the nearest writable
    // branch above it gets it (aufs's bottom-up copy of the parent).
    fs::write(t.m("onlyro/new"), b"n").unwrap();
    assert!(exists(&t.rw2.join("onlyro/new")), "tdp: rw2 above ro");
    assert!(!exists(&t.rw1.join("onlyro")));
    // The parent is in rw2: the new file goes there.
    fs::write(t.m("both/new"), b"n").unwrap();
    assert!(exists(&t.rw2.join("both/new")) && !exists(&t.rw1.join("both")));
    // Writing a file of rw2 changes it in place; nothing is copied up.
    fs::OpenOptions::new()
        .append(true)
        .open(t.m("mid"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    assert_eq!(read(&t.rw2.join("mid")), "mid\nmore\n");
    assert!(!exists(&t.rw1.join("mid")));
    // A lower file copied up (cpup=tdp: the topmost branch holding the parent).
    fs::write(t.m("lowfile"), b"changed\n").unwrap();
    assert_eq!(read(&t.rw1.join("lowfile")), "changed\n");
    assert_eq!(read(&t.ro.join("lowfile")), "low\n");
    assert_eq!(read(&t.m("lowfile")), "changed\n");
}

/// O_TMPFILE with several writable branches: the unnamed file is made in the branch a
/// new file of its directory would go to (tdp: the topmost holding the directory), and
/// a link names it there; a first link whose name only a higher branch may hold (a
/// whiteout there) would need it copied up, which an unnamed file cannot be: EXDEV, a
/// union rule (`Error::Unnamed`), the file untouched. (Once named, it is copied up by
/// that name like any file.)
#[test]
fn an_unnamed_file_is_named_in_its_branch_or_not_at_all() {
    if !can_mount_fuse() {
        return;
    }
    use std::os::fd::AsRawFd;
    let t = Three::new("br-tmpfile");
    let m = t.mount("");
    // rw1 now holds .wh.topover, hiding rw2's topover.
    fs::remove_file(t.m("topover")).unwrap();
    let fd = nix::fcntl::open(
        &t.m("both"),
        nix::fcntl::OFlag::O_TMPFILE | nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    assert_eq!(nix::unistd::write(&fd, b"tmp\n").unwrap(), 4);
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let link = |to: &Path| {
        nix::unistd::linkat(
            nix::fcntl::AT_FDCWD,
            proc.as_str(),
            nix::fcntl::AT_FDCWD,
            to,
            nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
        )
    };
    assert_eq!(link(&t.m("topover")), Err(nix::errno::Errno::EXDEV));
    assert!(!exists(&t.m("topover")));
    link(&t.m("both/named")).unwrap();
    assert_eq!(read(&t.m("both/named")), "tmp\n");
    drop(fd);
    m.unmount();
    assert_eq!(read(&t.rw2.join("both/named")), "tmp\n");
    assert!(!exists(&t.rw1.join("both")));
    assert!(exists(&t.rw1.join(".wh.topover")) && !exists(&t.rw1.join("topover")));
    assert_eq!(read(&t.rw2.join("topover")), "mid\n");
}

#[test]
fn cpup_bu_copies_to_the_nearest_writable_branch() {
    if !can_mount_fuse() {
        return;
    }
    let t = Three::new("br-bu");
    let _m = t.mount("cpup=bu");
    fs::write(t.m("lowfile"), b"changed\n").unwrap();
    assert_eq!(read(&t.rw2.join("lowfile")), "changed\n");
    assert!(!exists(&t.rw1.join("lowfile")));
    assert_eq!(read(&t.m("lowfile")), "changed\n");
}

#[test]
fn whiteouts_go_where_they_hide_the_object() {
    if !can_mount_fuse() {
        return;
    }
    let t = Three::new("br-wh");
    let m = t.mount("");
    // In rw2 over ro: removed in rw2, whited out in rw2, rw1 untouched.
    fs::remove_file(t.m("midover")).unwrap();
    // Only in rw2: removed, no whiteout anywhere.
    fs::remove_file(t.m("mid")).unwrap();
    // In rw1 over rw2: removed in rw1, whited out in rw1; rw2 keeps its copy.
    fs::remove_file(t.m("topover")).unwrap();
    // Only in ro: a whiteout in a writable branch above it.
    fs::remove_file(t.m("lowfile")).unwrap();
    for n in ["midover", "mid", "topover", "lowfile"] {
        assert!(!exists(&t.m(n)), "{n} still visible");
    }
    m.unmount();
    assert!(!exists(&t.rw2.join("midover")) && exists(&t.rw2.join(".wh.midover")));
    assert!(!exists(&t.rw1.join(".wh.midover")));
    assert!(!exists(&t.rw2.join("mid")) && !exists(&t.rw2.join(".wh.mid")));
    assert!(!exists(&t.rw1.join(".wh.mid")));
    assert!(!exists(&t.rw1.join("topover")) && exists(&t.rw1.join(".wh.topover")));
    assert_eq!(read(&t.rw2.join("topover")), "mid\n");
    assert!(exists(&t.rw1.join(".wh.lowfile")) || exists(&t.rw2.join(".wh.lowfile")));
    assert_eq!(read(&t.ro.join("lowfile")), "low\n");
}

#[test]
fn rename_stays_in_the_source_branch_or_goes_up_to_the_target() {
    if !can_mount_fuse() {
        return;
    }
    let t = Three::new("br-rename");
    let m = t.mount("");
    // Source in rw2, no target: renamed within rw2.
    fs::rename(t.m("mid"), t.m("mid2")).unwrap();
    // Source in rw2, target in rw1: the higher branch gets it.
    fs::write(t.m("target"), b"t\n").unwrap(); // tdp: rw1
    fs::rename(t.m("midover"), t.m("target")).unwrap();
    assert_eq!(read(&t.m("target")), "mid\n");
    assert!(!exists(&t.m("midover")));
    assert_eq!(read(&t.m("mid2")), "mid\n");
    m.unmount();
    assert!(exists(&t.rw2.join("mid2")) && !exists(&t.rw1.join("mid2")));
    assert!(!exists(&t.rw2.join("mid")));
    // aufs writes one branch per call: the higher one, rw1, gets the
    // result and the whiteout; rw2's midover stays, hidden.
    assert_eq!(read(&t.rw1.join("target")), "mid\n");
    assert!(
        exists(&t.rw1.join(".wh.midover")),
        "midover below stays hidden"
    );
    assert_eq!(read(&t.rw2.join("midover")), "mid\n");
}

#[test]
fn a_whiteout_above_the_policy_branch_wins() {
    if !can_mount_fuse() {
        return;
    }
    let t = Three::new("br-whwins");
    let _m = t.mount("create=rr");
    // A whiteout in rw1 of a name rw2 holds: a new file of that name must
    // land in rw1 whatever round robin says, or rw1's whiteout hides it.
    fs::remove_file(t.m("topover")).unwrap();
    for i in 0..4 {
        fs::write(t.m("topover"), format!("{i}\n")).unwrap();
        assert_eq!(read(&t.m("topover")), format!("{i}\n"));
        fs::remove_file(t.m("topover")).unwrap();
    }
}

#[test]
fn round_robin_spreads_new_files_and_keeps_new_directories_together() {
    if !can_mount_fuse() {
        return;
    }
    let t = Three::new("br-rr");
    let _m = t.mount("create=rr");
    for i in 0..6 {
        fs::write(t.m(&format!("f{i}")), b"x").unwrap();
    }
    let in1 = (0..6)
        .filter(|i| exists(&t.rw1.join(format!("f{i}"))))
        .count();
    let in2 = (0..6)
        .filter(|i| exists(&t.rw2.join(format!("f{i}"))))
        .count();
    assert_eq!((in1, in2), (3, 3));
    for i in 0..4 {
        fs::create_dir(t.m(&format!("d{i}"))).unwrap();
    }
    let d1 = (0..4)
        .filter(|i| exists(&t.rw1.join(format!("d{i}"))))
        .count();
    let d2 = (0..4)
        .filter(|i| exists(&t.rw2.join(format!("d{i}"))))
        .count();
    assert!((d1, d2) == (4, 0) || (d1, d2) == (0, 4), "{d1} {d2}");
}

/// A tmpfs of `mib` MiB at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);
impl Tmpfs {
    fn new(dir: &Path, mib: u32) -> Tmpfs {
        let c = run(
            "mount",
            &[
                "-t".as_ref(),
                "tmpfs".as_ref(),
                "-o".as_ref(),
                format!("size={mib}m").as_ref() as &std::ffi::OsStr,
                "tmpfs".as_ref(),
                dir.as_os_str(),
            ],
        );
        assert!(c.ok(), "{c}");
        Tmpfs(dir.to_path_buf())
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run("umount", &["-l".as_ref(), self.0.as_os_str()]);
    }
}

#[test]
fn most_free_space_picks_the_emptier_branch() {
    if !can_mount_fuse() {
        return;
    }
    let s = Scratch::new("br-mfs");
    let (a, b, l, mnt) = (s.dir("a"), s.dir("b"), s.dir("l"), s.dir("mnt"));
    let _ta = Tmpfs::new(&a, 8);
    let _tb = Tmpfs::new(&b, 64);
    mkdir(&a, "pa", 0o755);
    file(&l, "lowfile", b"low\n", 0o644);
    let _m = mount_br(
        &mnt,
        &format!("{}=rw:{}=rw:{}=ro", a.display(), b.display(), l.display()),
        "create=mfs:0",
    );
    fs::write(mnt.join("new"), b"n").unwrap();
    assert!(exists(&b.join("new")) && !exists(&a.join("new")));
    drop(_m);
    // pmfs: the parent only in a: a, although b has more room.
    let _m = mount_br(
        &mnt,
        &format!("{}=rw:{}=rw:{}=ro", a.display(), b.display(), l.display()),
        "create=pmfs:0",
    );
    fs::write(mnt.join("pa/new"), b"n").unwrap();
    assert!(exists(&a.join("pa/new")) && !exists(&b.join("pa")));
    // mfsrr with LOW above both: round robin.
    drop(_m);
    let _m = mount_br(
        &mnt,
        &format!("{}=rw:{}=rw:{}=ro", a.display(), b.display(), l.display()),
        &format!("create=mfsrr:{}:0", 1u64 << 40),
    );
    for i in 0..4 {
        fs::write(mnt.join(format!("r{i}")), b"n").unwrap();
    }
    let ina = (0..4).filter(|i| exists(&a.join(format!("r{i}")))).count();
    assert_eq!(ina, 2);
}

/// Stacks for the live tests: upper, l1 (with a whiteout of `gone` and a
/// `shadow`), l2; and `extra`, to be added and removed.
struct Live {
    s: Scratch,
    u: PathBuf,
    l1: PathBuf,
    l2: PathBuf,
    extra: PathBuf,
    mnt: PathBuf,
}

impl Live {
    fn new(tag: &str) -> Live {
        let s = Scratch::new(tag);
        let (u, l1, l2, extra, mnt) = (
            s.dir("u"),
            s.dir("l1"),
            s.dir("l2"),
            s.dir("extra"),
            s.dir("mnt"),
        );
        file(&l2, "gone", b"old\n", 0o644);
        wh_aufs(&l1, "gone");
        file(&l1, "shadow", b"l1\n", 0o644);
        for i in 0..20 {
            file(
                &l2,
                &format!("dir/f{i}"),
                format!("{i}\n").as_bytes(),
                0o644,
            );
        }
        file(&extra, "shadow", b"extra\n", 0o644);
        file(&extra, "added", b"added\n", 0o644);
        file(&extra, "dir/e", b"e\n", 0o644);
        Live {
            s,
            u,
            l1,
            l2,
            extra,
            mnt,
        }
    }

    fn mount(&self) -> Mount {
        Mount::unionfs(&[&self.l1, &self.l2], Some(&self.u), &self.mnt)
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

#[test]
fn add_del_mod_change_the_view_at_once() {
    if !can_mount_fuse() {
        return;
    }
    let t = Live::new("br-live");
    let _m = t.mount();
    // Warm the kernel's caches: they must be dropped by the change.
    assert_eq!(read(&t.m("shadow")), "l1\n");
    assert!(!exists(&t.m("added")));
    assert!(!exists(&t.m("gone")));
    let before = names(&t.m("dir"));

    let c = branch(&[&"add", &t.mnt, &"--at", &"1", &t.extra]);
    assert!(c.ok(), "{c}");
    assert_eq!(read(&t.m("shadow")), "extra\n");
    assert_eq!(read(&t.m("added")), "added\n");
    assert!(names(&t.m("dir")).contains("e"));
    let list = branch(&[&"list", &t.mnt]);
    assert_eq!(
        list.stdout,
        format!(
            "0 {}=rw\n1 {}=ro+wh\n2 {}=ro+wh\n3 {}=ro+wh\n",
            t.u.display(),
            t.extra.display(),
            t.l1.display(),
            t.l2.display()
        )
    );

    // A file of the branch held open: the branch is busy.
    let mut held = fs::File::open(t.m("added")).unwrap();
    let c = branch(&[&"del", &t.mnt, &t.extra]);
    assert!(!c.ok() && c.stderr.contains("busy"), "{c}");
    assert_eq!(c.stderr.trim().lines().count(), 1, "{c}");
    let mut s = String::new();
    held.read_to_string(&mut s).unwrap();
    drop(held);
    // The kernel sends RELEASE after close returns.
    assert!(wait_until(Duration::from_secs(3), || branch(&[
        &"del", &t.mnt, &t.extra
    ])
    .ok()));
    assert_eq!(read(&t.m("shadow")), "l1\n");
    assert!(!exists(&t.m("added")));
    assert_eq!(names(&t.m("dir")), before);

    // mod l1 to ro: its whiteout no longer hides l2's gone.
    let c = branch(&[&"mod", &t.mnt, &format!("{}=ro", t.l1.display())]);
    assert!(c.ok(), "{c}");
    assert_eq!(read(&t.m("gone")), "old\n");
    let c = branch(&[&"mod", &t.mnt, &format!("{}=ro+wh", t.l1.display())]);
    assert!(c.ok(), "{c}");
    assert!(!exists(&t.m("gone")));

    // Bad requests: one line, nothing changed.
    for bad in [
        vec![
            OsString::from("del"),
            t.mnt.clone().into(),
            t.s.dir("nope").into(),
        ],
        vec![
            "add".into(),
            t.mnt.clone().into(),
            "--at".into(),
            "9".into(),
            t.extra.clone().into(),
        ],
        vec!["add".into(), t.mnt.clone().into(), t.l1.clone().into()],
        vec!["add".into(), t.mnt.clone().into(), t.mnt.join("dir").into()],
        vec![
            "add".into(),
            t.mnt.clone().into(),
            format!("{}=rw", t.l2.join("dir").display()).into(),
        ],
        vec![
            "mod".into(),
            t.mnt.clone().into(),
            format!("{}=bogus", t.l1.display()).into(),
        ],
        vec!["list".into(), t.s.dir("notamount").into()],
    ] {
        let mut v: Vec<OsString> = vec!["branch".into()];
        v.extend(bad);
        let c = run_bin(&v);
        assert!(!c.ok(), "{c}");
        assert_eq!(c.stderr.trim().lines().count(), 1, "{c}");
    }
    assert_eq!(branch(&[&"list", &t.mnt]).stdout.lines().count(), 3);
}

#[test]
fn writes_after_a_mod_follow_the_new_mode() {
    if !can_mount_fuse() {
        return;
    }
    let t = Live::new("br-livemod");
    let _m = t.mount();
    // The upper made read-only: writes fail with EROFS, reads go on.
    let c = branch(&[&"mod", &t.mnt, &format!("{}=ro", t.u.display())]);
    assert!(c.ok(), "{c}");
    let e = fs::write(t.m("newfile"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert_eq!(read(&t.m("shadow")), "l1\n");
    let c = branch(&[&"mod", &t.mnt, &format!("{}=rw", t.u.display())]);
    assert!(c.ok(), "{c}");
    fs::write(t.m("newfile"), b"x").unwrap();
    assert!(exists(&t.u.join("newfile")));
    // A lower made writable: its files change in place.
    let c = branch(&[&"mod", &t.mnt, &format!("{}=rw", t.l2.display())]);
    assert!(c.ok(), "{c}");
    fs::write(t.m("dir/f1"), b"in place\n").unwrap();
    assert_eq!(read(&t.l2.join("dir/f1")), "in place\n");
    assert!(!exists(&t.u.join("dir/f1")));
    // The branches the union writes stay its own across the changes: no
    // other union may write them (their flock is held), and a writable
    // branch deleted and added back is writable again at once.
    for b in [&t.u, &t.l2] {
        let dir = fs::File::open(b).unwrap();
        let other = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock);
        assert!(other.is_err(), "{} is not locked by its union", b.display());
    }
    let c = branch(&[&"del", &t.mnt, &t.l2]);
    assert!(c.ok(), "{c}");
    let c = branch(&[&"add", &t.mnt, &format!("{}=rw", t.l2.display())]);
    assert!(c.ok(), "{c}");
    fs::write(t.m("dir/f1"), b"again\n").unwrap();
    assert_eq!(read(&t.l2.join("dir/f1")), "again\n");
}

#[test]
fn remount_through_the_mount_helper() {
    if !can_mount_fuse() {
        return;
    }
    let link = Path::new("/sbin/mount.fuse.unionfs");
    let ours = fs::read_link(link).is_ok_and(|t| t == bin());
    if !ours {
        if fs::symlink_metadata(link).is_ok() {
            skip_or_fail("/sbin/mount.fuse.unionfs exists and is not ours");
            return;
        }
        std::os::unix::fs::symlink(bin(), link).unwrap();
    }
    struct Unlink<'a>(&'a Path);
    impl Drop for Unlink<'_> {
        fn drop(&mut self) {
            if fs::read_link(self.0).is_ok_and(|t| t == bin()) {
                let _ = fs::remove_file(self.0);
            }
        }
    }
    let _unlink = Unlink(link);
    let t = Live::new("br-remount");
    let _m = t.mount();
    assert!(!exists(&t.m("added")));
    let c = run(
        "mount",
        &[
            "-o".as_ref(),
            format!("remount,add:1:{}=ro+wh", t.extra.display()).as_ref() as &std::ffi::OsStr,
            t.mnt.as_os_str(),
        ],
    );
    assert!(c.ok(), "{c}");
    assert_eq!(read(&t.m("added")), "added\n");
    let c = run(
        "mount",
        &[
            "-o".as_ref(),
            format!(
                "remount,del:{},mod:{}=ro",
                t.extra.display(),
                t.l1.display()
            )
            .as_ref() as &std::ffi::OsStr,
            t.mnt.as_os_str(),
        ],
    );
    assert!(c.ok(), "{c}");
    assert!(!exists(&t.m("added")));
    assert_eq!(read(&t.m("gone")), "old\n");
}

#[test]
fn readers_and_writers_see_one_stack_or_the_other_during_changes() {
    if !can_mount_fuse() {
        return;
    }
    let t = Live::new("br-loop");
    let _m = t.mount();
    let without = names(&t.m("dir"));
    let mut with = without.clone();
    with.insert("e".into());
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for r in 0..2 {
        let (stop, reads, mnt) = (stop.clone(), reads.clone(), t.mnt.clone());
        let (without, with) = (without.clone(), with.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let listing: BTreeSet<String> = fs::read_dir(mnt.join("dir"))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                assert!(
                    listing == without || listing == with,
                    "reader {r}: a listing mixing two stacks: {listing:?}"
                );
                for i in 0..20 {
                    let p = mnt.join(format!("dir/f{i}"));
                    assert_eq!(fs::read_to_string(&p).unwrap(), format!("{i}\n"));
                }
                let sh = fs::read_to_string(mnt.join("shadow")).unwrap();
                assert!(sh == "l1\n" || sh == "extra\n", "{sh:?}");
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    {
        let (stop, mnt) = (stop.clone(), t.mnt.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = mnt.join(format!("w{}", i % 5));
                fs::write(&p, i.to_string()).unwrap();
                assert_eq!(fs::read_to_string(&p).unwrap(), i.to_string());
                i += 1;
            }
        }));
    }
    for _ in 0..15 {
        let c = branch(&[&"add", &t.mnt, &"--at", &"1", &t.extra]);
        assert!(c.ok(), "{c}");
        std::thread::sleep(Duration::from_millis(30));
        // A reader may hold a file of the branch open for a moment.
        assert!(
            wait_until(Duration::from_secs(5), || branch(&[
                &"del", &t.mnt, &t.extra
            ])
            .ok()),
            "del stayed busy"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, Ordering::Relaxed);
    for th in threads {
        th.join().expect("a reader or writer failed");
    }
    assert!(reads.load(Ordering::Relaxed) > 10);
}
