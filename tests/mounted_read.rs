//! Read-path tests of a mounted union: one fixture per whiteout/opaque format and a
//! combination over an upper and three lowers. Each test builds its branches in its own
//! scratch dir, mounts with the real binary, asserts the EXACT tree a user sees (names,
//! types, modes, owners, sizes, contents, mtimes, symlink targets, xattrs, nlink and st_ino
//! rules), then unmounts and checks that the lower branches are unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Branch dirs of one test: `u` (upper), `l1` (topmost lower), `l2`, `l3`, and `mnt`.
struct Branches {
    s: Scratch,
    u: PathBuf,
    l1: PathBuf,
    l2: PathBuf,
    l3: PathBuf,
    mnt: PathBuf,
}

impl Branches {
    fn new(tag: &str) -> Branches {
        let s = Scratch::new(tag);
        Branches {
            u: s.dir("upper"),
            l1: s.dir("l1"),
            l2: s.dir("l2"),
            l3: s.dir("l3"),
            mnt: s.dir("mnt"),
            s,
        }
    }

    fn lowers(&self) -> [&Path; 3] {
        [&self.l1, &self.l2, &self.l3]
    }

    /// Distinct deterministic times in every branch, so an object taken from the wrong
    /// branch shows up as an mtime difference.
    fn fix_times(&self) {
        fix_times(&self.u, 1_500_000_000);
        fix_times(&self.l1, 1_400_000_000);
        fix_times(&self.l2, 1_300_000_000);
        fix_times(&self.l3, 1_200_000_000);
    }

    fn mount(&self) -> Mount {
        Mount::unionfs(&self.lowers(), Some(&self.u), &self.mnt)
    }
}

/// Distinct content per branch and path.
fn c(branch: &str, path: &str) -> Vec<u8> {
    format!("{branch}:{path}\n").into_bytes()
}

// ---------------------------------------------------------------------------------------
// One test per format
// ---------------------------------------------------------------------------------------

#[test]
fn aufs_whiteouts_opaque_dirs_and_internal_names() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("aufs");
    let (u, l1, l2, l3) = (&b.u, &b.l1, &b.l2, &b.l3);
    // l3 (bottom)
    file(l3, "a", &c("l3", "a"), 0o644);
    file(l3, "b/x", &c("l3", "b/x"), 0o644);
    file(l3, "b/y", &c("l3", "b/y"), 0o600);
    file(l3, "c/z", &c("l3", "c/z"), 0o644);
    file(l3, "d/q", &c("l3", "d/q"), 0o644);
    file(l3, "e", &c("l3", "e"), 0o644);
    file(l3, "keep", &c("l3", "keep"), 0o644);
    file(l3, "deep/one/two/f", &c("l3", "deep/one/two/f"), 0o644);
    file(l3, "gonedir/inner", &c("l3", "gonedir/inner"), 0o644);
    // l2
    wh_aufs(l2, "a"); // hides l3 a
    wh_aufs(l2, "b/x"); // hides l3 b/x
    file(l2, "b/w", &c("l2", "b/w"), 0o640);
    opaque_aufs(l2, "c"); // c shows only its own n
    file(l2, "c/n", &c("l2", "c/n"), 0o644);
    wh_aufs(l2, "e"); // l3's file e is hidden, l2's dir e shows
    file(l2, "e/k", &c("l2", "e/k"), 0o644);
    wh_aufs(l2, "gonedir"); // a directory whited out
                            // l1
    file(l1, ".wh..wh.aufs", b"", 0o600);
    hardlink(l1, ".wh..wh.aufs", ".wh.nothing"); // AUFS hardlinks whiteouts to .wh..wh.aufs
    file(l1, ".wh..wh.plnk/123.456", b"", 0o600);
    mkdir(l1, ".wh..wh.orph", 0o700);
    mkdir(l1, "d", 0o750);
    wh_aufs(l1, "d/q");
    wh_aufs(l1, "deep/one/two");
    // upper
    wh_aufs(u, "keep");
    wh_aufs(u, "b/y");
    mkdir(u, ".wh..wh.orph", 0o700);
    b.fix_times();

    let before = snapshot_all(&b.lowers());
    let m = b.mount();
    let view = snapshot(&m.mnt);
    let mut e = Expect::new();
    e.merged("/", u)
        .merged("/b", u.join("b"))
        .one("/b/w", l2.join("b/w"))
        .one("/c", l2.join("c")) // opaque: not merged, own nlink
        .one("/c/n", l2.join("c/n"))
        .merged("/d", l1.join("d"))
        .merged("/deep", l1.join("deep"))
        .merged("/deep/one", l1.join("deep/one"))
        .one("/e", l2.join("e"))
        .one("/e/k", l2.join("e/k"));
    assert_view(&e, &view);
    assert_absent(
        &m.mnt,
        &[
            "/a",
            "/keep",
            "/gonedir",
            "/b/x",
            "/b/y",
            "/c/z",
            "/d/q",
            "/deep/one/two",
            "/.wh.a",
            "/.wh.e",
            "/.wh.nothing",
            "/.wh..wh.aufs",
            "/.wh..wh.plnk",
            "/.wh..wh.orph",
            "/c/.wh..wh..opq",
            "/b/.wh.x",
            "/nothing",
        ],
    );
    m.unmount();
    assert_unchanged(&before);
}

/// A directory big enough to be listed in several batches, with its
/// whiteouts stat'ed beside the listing (`readdir::read_and_stat`): every
/// whiteout hides its name below, every real device shows, nothing else
/// is lost.
#[test]
fn chardev_whiteouts_in_a_big_merged_directory() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("chardev-big");
    let (l1, l2) = (&b.l1, &b.l2);
    let mut want = std::collections::BTreeSet::new();
    for i in 0..4000 {
        let name = format!("d/entry-with-a-longish-name-{i:05}");
        file(l2, &name, b"below", 0o644);
        match i % 10 {
            0 => {
                wh_chardev(l1, &name);
            }
            1 => {
                chardev(l1, &name, 1, 3, 0o666);
                want.insert(name);
            }
            _ => {
                want.insert(name);
            }
        }
    }
    for i in 0..1500 {
        let name = format!("d/only-above-{i:04}");
        file(l1, &name, b"above", 0o644);
        want.insert(name);
    }
    let m = b.mount();
    let listed: std::collections::BTreeSet<String> = std::fs::read_dir(m.mnt.join("d"))
        .unwrap()
        .map(|e| format!("d/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert_eq!(listed.len(), want.len());
    assert!(
        listed == want,
        "the merged listing differs from the expected one"
    );
    use std::os::unix::fs::FileTypeExt;
    let dev = std::fs::symlink_metadata(m.mnt.join("d/entry-with-a-longish-name-00001")).unwrap();
    assert!(dev.file_type().is_char_device());
    m.unmount();
}

#[test]
fn chardev_whiteouts() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("chardev");
    let (u, l1, l2, l3) = (&b.u, &b.l1, &b.l2, &b.l3);
    file(l3, "f1", &c("l3", "f1"), 0o644);
    file(l3, "dir1/x", &c("l3", "dir1/x"), 0o644);
    file(l3, "dir2/y", &c("l3", "dir2/y"), 0o644);
    file(l3, "dir2/z", &c("l3", "dir2/z"), 0o644);
    file(l3, "h", &c("l3", "h"), 0o644);
    wh_chardev(l2, "f1");
    wh_chardev(l2, "dir1");
    wh_chardev(l2, "dir2/z");
    chardev(l2, "realdev", 1, 3, 0o666); // not a whiteout
    file(l2, "g", &c("l2", "g"), 0o644);
    file(l2, "f2", &c("l2", "f2"), 0o644);
    // the kernel shares one inode between whiteouts: nlink 2 is normal
    wh_chardev(l1, "g");
    hardlink(l1, "g", "h");
    file(l1, "f3", &c("l1", "f3"), 0o644);
    wh_chardev(u, "f2");
    wh_chardev(u, "f3");
    b.fix_times();

    let before = snapshot_all(&b.lowers());
    let m = b.mount();
    let view = snapshot(&m.mnt);
    let mut e = Expect::new();
    e.merged("/", u)
        .merged("/dir2", l2.join("dir2"))
        .one("/dir2/y", l3.join("dir2/y"))
        .one("/realdev", l2.join("realdev"));
    assert_view(&e, &view);
    assert_absent(
        &m.mnt,
        &["/f1", "/f2", "/f3", "/g", "/h", "/dir1", "/dir2/z"],
    );
    m.unmount();
    assert_unchanged(&before);
}

fn xattr_whiteouts(ns: Ns, tag: &str) {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new(tag);
    let (u, l1, l2, _) = (&b.u, &b.l1, &b.l2, &b.l3);
    file(l2, "d/a", &c("l2", "d/a"), 0o644);
    file(l2, "d/b", &c("l2", "d/b"), 0o644);
    file(l2, "e/a", &c("l2", "e/a"), 0o644);
    file(l2, "e/other", &c("l2", "e/other"), 0o644);
    // d is marked opaque=x: NOT opaque (b shows), its xattr whiteout hides a
    mkdir(l1, "d", 0o755);
    wh_xattr(l1, "d/a", ns);
    file(l1, "d/c", &c("l1", "d/c"), 0o644);
    // e is not marked: e/a is just an empty regular file (its whiteout xattr hidden)
    mkdir(l1, "e", 0o755);
    wh_xattr_unmarked(l1, "e/a", ns);
    file(l1, "g/h", &c("l1", "g/h"), 0o644);
    file(l1, "g/i", &c("l1", "g/i"), 0o644);
    // the format is honoured in the upper too
    mkdir(u, "g", 0o755);
    wh_xattr(u, "g/h", ns);
    b.fix_times();

    let before = snapshot_all(&b.lowers());
    let m = b.mount();
    let view = snapshot(&m.mnt);
    let mut e = Expect::new();
    e.merged("/", u)
        .merged("/d", l1.join("d"))
        .one("/d/b", l2.join("d/b"))
        .one("/d/c", l1.join("d/c"))
        .merged("/e", l1.join("e"))
        .one("/e/a", l1.join("e/a"))
        .one("/e/other", l2.join("e/other"))
        .merged("/g", u.join("g"))
        .one("/g/i", l1.join("g/i"));
    assert_view(&e, &view);
    assert_eq!(view[Path::new("/e/a")].size, 0);
    assert_absent(&m.mnt, &["/d/a", "/g/h"]);
    m.unmount();
    assert_unchanged(&before);
}

#[test]
fn xattr_whiteouts_trusted() {
    xattr_whiteouts(Ns::Trusted, "xwh-trusted");
}

#[test]
fn xattr_whiteouts_user() {
    xattr_whiteouts(Ns::User, "xwh-user");
}

#[test]
fn opaque_xattr_variants() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("opaque");
    let (u, l1, l2, l3) = (&b.u, &b.l1, &b.l2, &b.l3);
    for d in ["o1", "o2", "o3", "o4", "o5", "o6", "o7"] {
        file(l2, &format!("{d}/a"), &c("l2", d), 0o644);
        file(l1, &format!("{d}/b"), &c("l1", d), 0o644);
    }
    opaque_xattr(l1, "o1", "trusted.overlay.opaque", b"y");
    opaque_xattr(l1, "o2", "user.overlay.opaque", b"y");
    opaque_xattr(l1, "o3", "user.fuseoverlayfs.opaque", b"y");
    opaque_xattr(l1, "o4", "trusted.overlay.opaque", b"x"); // x: not opaque
    opaque_xattr(l1, "o5", "user.overlay.opaque", b"x");
    // opaque in the upper hides both lowers
    file(u, "o6/c", &c("u", "o6"), 0o644);
    opaque_xattr(u, "o6", "trusted.overlay.opaque", b"y");
    // opaque in the middle of three: l3 hidden, l1 merges with l2 only
    file(l3, "o7/deep", &c("l3", "o7"), 0o644);
    opaque_xattr(l2, "o7", "trusted.overlay.opaque", b"y");
    // an ordinary user xattr must stay visible next to a private one
    set_xattr(l1, "o1", "user.note", b"kept");
    b.fix_times();

    let before = snapshot_all(&b.lowers());
    let m = b.mount();
    let view = snapshot(&m.mnt);
    let mut e = Expect::new();
    e.merged("/", u);
    for d in ["o1", "o2", "o3"] {
        e.one(&format!("/{d}"), l1.join(d))
            .one(&format!("/{d}/b"), l1.join(d).join("b"));
    }
    for d in ["o4", "o5"] {
        e.merged(&format!("/{d}"), l1.join(d))
            .one(&format!("/{d}/a"), l2.join(d).join("a"))
            .one(&format!("/{d}/b"), l1.join(d).join("b"));
    }
    e.one("/o6", u.join("o6")).one("/o6/c", u.join("o6/c"));
    e.merged("/o7", l1.join("o7"))
        .one("/o7/a", l2.join("o7/a"))
        .one("/o7/b", l1.join("o7/b"));
    assert_view(&e, &view);
    assert_eq!(
        view[Path::new("/o1")].xattrs,
        Ok(vec![("user.note".to_string(), b"kept".to_vec())]),
        "user.note must be visible, the opaque marker must not"
    );
    m.unmount();
    assert_unchanged(&before);
}

#[test]
fn redirect_absolute_and_relative() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("redirect");
    let (u, l1, l2, _) = (&b.u, &b.l1, &b.l2, &b.l3);
    file(l2, "old/f", &c("l2", "old/f"), 0o644);
    file(l2, "old/sub/g", &c("l2", "old/sub/g"), 0o644);
    file(l2, "d/orig/h", &c("l2", "d/orig/h"), 0o644);
    file(l2, "d/other", &c("l2", "d/other"), 0o644);
    file(l2, "new/ignored", &c("l2", "new/ignored"), 0o644); // not used: /new redirects
                                                             // l1: /old renamed to /new (absolute redirect), /d/orig renamed to /d/ren (relative)
    file(l1, "new/mine", &c("l1", "new/mine"), 0o644);
    redirect(l1, "new", "/old");
    wh_chardev(l1, "old");
    file(l1, "d/ren/x", &c("l1", "d/ren/x"), 0o644);
    redirect(l1, "d/ren", "orig");
    wh_chardev(l1, "d/orig");
    // a dir moved to another parent: /top/inner takes its lower content from /far/away
    file(
        l2,
        "far/away/deepfile",
        &c("l2", "far/away/deepfile"),
        0o644,
    );
    file(l2, "far/sibling", &c("l2", "far/sibling"), 0o644);
    mkdir(l1, "top/inner", 0o755);
    redirect(l1, "top/inner", "/far/away");
    wh_chardev(l1, "far/away");
    b.fix_times();

    let before = snapshot_all(&b.lowers());
    let m = b.mount();
    let view = snapshot(&m.mnt);
    let mut e = Expect::new();
    e.merged("/", u)
        .merged("/new", l1.join("new"))
        .one("/new/mine", l1.join("new/mine"))
        .one("/new/f", l2.join("old/f"))
        .one("/new/sub", l2.join("old/sub"))
        .one("/new/sub/g", l2.join("old/sub/g"))
        .merged("/d", l1.join("d"))
        .merged("/d/ren", l1.join("d/ren"))
        .one("/d/ren/x", l1.join("d/ren/x"))
        .one("/d/ren/h", l2.join("d/orig/h"))
        .one("/d/other", l2.join("d/other"))
        .one("/top", l1.join("top"))
        .merged("/top/inner", l1.join("top/inner"))
        .one("/top/inner/deepfile", l2.join("far/away/deepfile"))
        .merged("/far", l1.join("far"))
        .one("/far/sibling", l2.join("far/sibling"));
    assert_view(&e, &view);
    assert_absent(&m.mnt, &["/old", "/d/orig", "/new/ignored", "/far/away"]);
    m.unmount();
    assert_unchanged(&before);
}

#[test]
fn unionfs_fuse_hidden_markers() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("hidden");
    let (u, l1, l2, _) = (&b.u, &b.l1, &b.l2, &b.l3);
    file(l2, "x", &c("l2", "x"), 0o644);
    file(l2, "keep", &c("l2", "keep"), 0o644);
    file(l2, "e/f", &c("l2", "e/f"), 0o644);
    file(l2, "sub/.unionfs", &c("l2", "sub/.unionfs"), 0o644); // not at a branch root
    file(l2, "visible", &c("l2", "visible"), 0o644);
    // unionfs-fuse 2.x layout in l1
    wh_unionfs_fuse(l1, "x", ".unionfs", false);
    // own dir + a marker dir of that name: hides the lower e entirely (opaque)
    file(l1, "e/g", &c("l1", "e/g"), 0o644);
    wh_unionfs_fuse(l1, "e", ".unionfs", true);
    // unionfs-fuse 1.0 layout in the upper
    wh_unionfs_fuse(u, "keep", ".unionfs-fuse", false);
    b.fix_times();

    let before = snapshot_all(&b.lowers());
    let m = b.mount();
    let view = snapshot(&m.mnt);
    let mut e = Expect::new();
    e.merged("/", u)
        .one("/e", l1.join("e"))
        .one("/e/g", l1.join("e/g"))
        .one("/sub", l2.join("sub"))
        .one("/sub/.unionfs", l2.join("sub/.unionfs"))
        .one("/visible", l2.join("visible"));
    assert_view(&e, &view);
    assert_absent(
        &m.mnt,
        &["/x", "/keep", "/e/f", "/.unionfs", "/.unionfs-fuse"],
    );
    m.unmount();
    assert_unchanged(&before);
}

#[test]
fn unionfs_fuse_hidden_markers_for_nested_paths() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("hidden-nested");
    let (u, l1, l2, _) = (&b.u, &b.l1, &b.l2, &b.l3);
    file(l2, "d/y", &c("l2", "d/y"), 0o644);
    file(l2, "d/z", &c("l2", "d/z"), 0o644);
    file(l2, "d/w", &c("l2", "d/w"), 0o644);
    file(l2, "f/p", &c("l2", "f/p"), 0o644);
    file(l2, "f/q", &c("l2", "f/q"), 0o644);
    // the hiding branch has no d/ of its own (unionfs-fuse records the deletion only in
    // its .unionfs tree)
    wh_unionfs_fuse(l1, "d/y", ".unionfs", false);
    wh_unionfs_fuse(u, "d/z", ".unionfs-fuse", false);
    // the hiding branch has f/ itself
    file(l1, "f/r", &c("l1", "f/r"), 0o644);
    wh_unionfs_fuse(l1, "f/p", ".unionfs", false);
    b.fix_times();

    let before = snapshot_all(&b.lowers());
    let m = b.mount();
    let view = snapshot(&m.mnt);
    let mut e = Expect::new();
    e.merged("/", u)
        .one("/d", l2.join("d"))
        .one("/d/w", l2.join("d/w"))
        .merged("/f", l1.join("f"))
        .one("/f/q", l2.join("f/q"))
        .one("/f/r", l1.join("f/r"));
    assert_view(&e, &view);
    assert_absent(&m.mnt, &["/d/y", "/d/z", "/f/p"]);
    m.unmount();
    assert_unchanged(&before);
}

/// Builds the combination fixture over u + l1 + l2 + l3 (see [`expect_combination`]).
fn build_combination(b: &Branches) {
    let (u, l1, l2, l3) = (&b.u, &b.l1, &b.l2, &b.l3);
    // l3: a small "image base"
    file(l3, "etc/passwd", &c("l3", "passwd"), 0o644);
    file(l3, "etc/hosts", &c("l3", "hosts"), 0o644);
    file(l3, "etc/old.conf", &c("l3", "old.conf"), 0o644);
    file(l3, "bin/sh", &c("l3", "sh"), 0o755);
    file(l3, "bin/ls", &c("l3", "ls"), 0o755);
    file(l3, "var/log/syslog", &c("l3", "syslog"), 0o640);
    file(l3, "opt/app/v1", &c("l3", "v1"), 0o644);
    file(l3, "t", &c("l3", "t"), 0o644);
    file(l3, "t2/z", &c("l3", "t2/z"), 0o644);
    file(l3, "x", &c("l3", "x"), 0o644);
    file(l3, "suid", &c("l3", "suid"), 0o4755);
    chown(l3, "suid", 1000, 1000);
    symlink(l3, "bin/sh-link", "sh");
    // l2
    file(l2, "etc/hosts", &c("l2", "hosts"), 0o644);
    wh_aufs(l2, "etc/old.conf");
    wh_chardev(l2, "bin/ls");
    file(l2, "opt/app/v2", &c("l2", "v2"), 0o644);
    opaque_xattr(l2, "opt/app", "trusted.overlay.opaque", b"y");
    file(l2, "t/inner", &c("l2", "t/inner"), 0o644); // dir over a file
    file(l2, "t2", &c("l2", "t2"), 0o644); // file over a dir
    wh_unionfs_fuse(l2, "x", ".unionfs", false);
    file(l2, "home/user/.bashrc", &c("l2", "bashrc"), 0o644);
    fifo(l2, "pipe", 0o620);
    // l1
    file(l1, "etc/passwd", &c("l1", "passwd"), 0o600);
    opaque_aufs(l1, "var");
    file(l1, "var/cache/c", &c("l1", "cache"), 0o644);
    wh_aufs(l1, "home/user");
    mkdir(l1, "home/guest", 0o700);
    chown(l1, "home/guest", 1001, 100);
    set_xattr(l1, "home", "user.note", b"hello");
    symlink(l1, "lnk", "etc/passwd");
    // upper
    mkdir(u, "etc", 0o755);
    wh_xattr(u, "etc/hosts", Ns::Trusted);
    wh_aufs(u, "bin/sh");
    file(u, "new", &c("u", "new"), 0o644);
    mkdir(u, ".wh..wh.orph", 0o700);
    b.fix_times();
}

/// The expected view of [`build_combination`]. Built after mounting: the root's
/// attributes are the upper dir's at that time.
fn expect_combination(b: &Branches) -> Expect {
    let (u, l1, l2, l3) = (&b.u, &b.l1, &b.l2, &b.l3);
    let mut e = Expect::new();
    e.merged("/", u)
        .merged("/etc", u.join("etc"))
        .one("/etc/passwd", l1.join("etc/passwd"))
        .merged("/bin", u.join("bin"))
        .one("/bin/sh-link", l3.join("bin/sh-link"))
        .one("/var", l1.join("var"))
        .one("/var/cache", l1.join("var/cache"))
        .one("/var/cache/c", l1.join("var/cache/c"))
        .merged("/opt", l2.join("opt"))
        .one("/opt/app", l2.join("opt/app"))
        .one("/opt/app/v2", l2.join("opt/app/v2"))
        .one("/t", l2.join("t"))
        .one("/t/inner", l2.join("t/inner"))
        .one("/t2", l2.join("t2"))
        .one("/suid", l3.join("suid"))
        .merged("/home", l1.join("home"))
        .one("/home/guest", l1.join("home/guest"))
        .one("/pipe", l2.join("pipe"))
        .one("/lnk", l1.join("lnk"))
        .one("/new", u.join("new"));
    e
}

const COMBINATION_ABSENT: &[&str] = &[
    "/etc/hosts",
    "/etc/old.conf",
    "/bin/sh",
    "/bin/ls",
    "/var/log",
    "/opt/app/v1",
    "/t2/z",
    "/x",
    "/home/user",
    "/.unionfs",
    "/.wh..wh.orph",
    "/var/.wh..wh..opq",
];

#[test]
fn all_formats_three_lowers_and_upper() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("combo");
    build_combination(&b);
    let before = snapshot_all(&b.lowers());
    let m = b.mount();
    let view = snapshot(&m.mnt);
    let e = expect_combination(&b);
    assert_view(&e, &view);
    assert_absent(&m.mnt, COMBINATION_ABSENT);
    // a few direct reads through the mount
    assert_eq!(
        fs::read(m.mnt.join("etc/passwd")).unwrap(),
        c("l1", "passwd")
    );
    assert_eq!(fs::read(m.mnt.join("lnk")).unwrap(), c("l1", "passwd"));
    assert_eq!(
        fs::read_to_string(m.mnt.join("bin/sh-link")).map_err(|e| errname(&e)),
        Err("ENOENT".to_string()),
        "bin/sh-link points to the whited-out sh"
    );
    m.unmount();
    assert_unchanged(&before);
}

#[test]
fn readonly_mount_without_upper() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("ro");
    let (l1, l2) = (&b.l1, &b.l2);
    file(l2, "a", &c("l2", "a"), 0o644);
    file(l2, "d/x", &c("l2", "d/x"), 0o644);
    file(l2, "d/y", &c("l2", "d/y"), 0o644);
    file(l1, "b", &c("l1", "b"), 0o644);
    wh_aufs(l1, "d/x");
    b.fix_times();
    let before = snapshot_all(&[l1, l2]);
    let m = Mount::unionfs(&[l1, l2], None, &b.mnt);
    let view = snapshot(&m.mnt);
    let mut e = Expect::new();
    e.merged("/", l1)
        .one("/a", l2.join("a"))
        .one("/b", l1.join("b"))
        .merged("/d", l1.join("d"))
        .one("/d/y", l2.join("d/y"));
    assert_view(&e, &view);
    // nothing can be written without an upper
    let err = fs::write(m.mnt.join("newfile"), b"x").expect_err("write must fail");
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM)
        ),
        "unexpected error {err}"
    );
    m.unmount();
    assert_unchanged(&before);
}

#[test]
fn overlay_dialect_shows_same_view() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("dialect");
    build_combination(&b);
    let work = b.s.dir("work");
    let before = snapshot_all(&b.lowers());
    let mut opts = std::ffi::OsString::from("lowerdir=");
    opts.push(&b.l1);
    opts.push(":");
    opts.push(&b.l2);
    opts.push(":");
    opts.push(&b.l3);
    opts.push(",upperdir=");
    opts.push(&b.u);
    opts.push(",workdir=");
    opts.push(&work);
    let m = Mount::unionfs_args(
        &[
            std::ffi::OsString::from("-o"),
            opts,
            b.mnt.clone().into_os_string(),
        ],
        &b.mnt,
    );
    let view = snapshot(&m.mnt);
    let e = expect_combination(&b);
    assert_view(&e, &view);
    assert_absent(&m.mnt, COMBINATION_ABSENT);
    m.unmount();
    assert_unchanged(&before);
}

// ---------------------------------------------------------------------------------------
// Individual read-path operations
// ---------------------------------------------------------------------------------------

#[test]
fn xattr_filtering_getxattr_listxattr() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("xattr");
    let (l1, l2) = (&b.l1, &b.l2);
    let f = file(l2, "f", b"data", 0o644);
    let private = [
        "trusted.overlay.origin",
        // (a metacopy marker would send the data lookup below: see the metacopy test)
        "trusted.overlay.nlink",
        "user.overlay.opaque",
        "user.fuseoverlayfs.origin",
        "trusted.unionfs.ino",
        "user.unionfs.x",
    ];
    for n in private {
        xattr::set(&f, n, b"secret").unwrap();
    }
    xattr::set(&f, "user.visible", b"hello").unwrap();
    xattr::set(&f, "user.empty", b"").unwrap();
    file(l1, "d/g", b"g", 0o644);
    set_xattr(l1, "d", "user.dirattr", b"on a dir");
    set_xattr(l1, "d", "trusted.overlay.opaque", b"y");
    b.fix_times();
    let before = snapshot_all(&b.lowers());
    let m = b.mount();
    let mf = m.mnt.join("f");
    let mut names: Vec<String> = xattr::list(&mf)
        .expect("listxattr through the mount")
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("security.") && !n.starts_with("system."))
        .collect();
    names.sort();
    assert_eq!(names, vec!["user.empty", "user.visible"]);
    assert_eq!(
        xattr::get(&mf, "user.visible").unwrap(),
        Some(b"hello".to_vec())
    );
    assert_eq!(xattr::get(&mf, "user.empty").unwrap(), Some(Vec::new()));
    for n in private {
        match xattr::get(&mf, n) {
            Ok(None) => {}
            other => panic!("getxattr {n} through the mount must be ENODATA, got {other:?}"),
        }
    }
    assert_eq!(xattr::get(&mf, "user.nonexistent").unwrap(), None);
    let md: Vec<String> = xattr::list(m.mnt.join("d"))
        .unwrap()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("security.") && !n.starts_with("system."))
        .collect();
    assert_eq!(md, vec!["user.dirattr"]);
    assert_eq!(
        xattr::get(m.mnt.join("d"), "trusted.overlay.opaque").unwrap(),
        None
    );
    m.unmount();
    assert_unchanged(&before);
}

#[test]
fn statfs_works() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("statfs");
    file(&b.l1, "a", b"a", 0o644);
    let m = b.mount();
    let st = nix::sys::statvfs::statvfs(&m.mnt).expect("statvfs on the mount");
    assert!(st.block_size() > 0, "f_bsize is 0");
    assert!(st.blocks() > 0, "f_blocks is 0");
    assert!(st.blocks_free() <= st.blocks(), "f_bfree > f_blocks");
    assert!(
        (200..=255).contains(&st.name_max()),
        "f_namemax {} not in 200..=255",
        st.name_max()
    );
    // also through an open file
    let f = fs::File::open(m.mnt.join("a")).unwrap();
    nix::sys::statvfs::fstatvfs(&f).expect("fstatvfs on a file of the mount");
    drop(f);
    m.unmount();
}

#[test]
fn sparse_file_seek_data_and_hole() {
    if !can_mount_fuse() {
        return;
    }
    use nix::unistd::{lseek, Whence};
    const MIB: i64 = 1 << 20;
    let b = Branches::new("sparse");
    let p = b.l2.join("sparse");
    {
        let f = fs::File::create(&p).unwrap();
        f.write_all_at(&[0xAB; 4096], MIB as u64).unwrap();
    }
    file(&b.l1, "other", b"o", 0o644);
    b.fix_times();
    // what the lower filesystem itself answers
    let lf = fs::File::open(&p).unwrap();
    let lower_data = lseek(&lf, 0, Whence::SeekData).expect("SEEK_DATA on the lower");
    let lower_hole = lseek(&lf, 0, Whence::SeekHole).expect("SEEK_HOLE on the lower");
    let lower_hole2 = lseek(&lf, MIB, Whence::SeekHole).expect("SEEK_HOLE on the lower");
    drop(lf);
    if lower_data == 0 {
        skip_or_fail("the scratch filesystem does not report holes");
        return;
    }
    assert_eq!(
        lower_data, MIB,
        "ext4 should report the data at 1 MiB exactly"
    );
    let before = snapshot_all(&b.lowers());
    let m = b.mount();
    let f = fs::File::open(m.mnt.join("sparse")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), (MIB + 4096) as u64);
    let data = lseek(&f, 0, Whence::SeekData).expect("SEEK_DATA through the mount");
    assert!(
        data >= MIB,
        "SEEK_DATA from 0 gave {data}, the data starts at {MIB}"
    );
    assert_eq!(data, lower_data, "SEEK_DATA must match the lower file");
    assert_eq!(
        lseek(&f, 0, Whence::SeekHole).expect("SEEK_HOLE through the mount"),
        lower_hole
    );
    assert_eq!(
        lseek(&f, MIB, Whence::SeekHole).expect("SEEK_HOLE through the mount"),
        lower_hole2
    );
    assert_eq!(
        lseek(&f, MIB + 4096, Whence::SeekData).map_err(|e| e as i32),
        Err(libc::ENXIO),
        "SEEK_DATA at EOF must be ENXIO"
    );
    let mut buf = [0u8; 8];
    f.read_exact_at(&mut buf, (MIB - 4) as u64).unwrap();
    assert_eq!(buf, [0, 0, 0, 0, 0xAB, 0xAB, 0xAB, 0xAB]);
    drop(f);
    m.unmount();
    assert_unchanged(&before);
}

#[test]
fn readlink_targets() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("readlink");
    let long = "x/".repeat(1500) + "end"; // 3003 bytes
    let targets: Vec<(&str, String)> = vec![
        ("rel", "a/b/c".to_string()),
        ("abs", "/etc/passwd".to_string()),
        ("dangling", "does-not-exist".to_string()),
        ("dotdot", "../../outside".to_string()),
        ("spaces", "with space:and colon".to_string()),
        ("long", long),
        ("self", "self".to_string()),
    ];
    for (name, t) in &targets {
        symlink(&b.l2, name, t);
    }
    symlink(&b.l1, "rel", "overridden"); // topmost wins
    file(&b.l2, "dir/target", b"t", 0o644);
    symlink(&b.l1, "dir/link", "target");
    b.fix_times();
    let before = snapshot_all(&b.lowers());
    let m = b.mount();
    for (name, t) in &targets {
        let want = if *name == "rel" {
            "overridden"
        } else {
            t.as_str()
        };
        let got =
            fs::read_link(m.mnt.join(name)).unwrap_or_else(|e| panic!("readlink {name}: {e}"));
        assert_eq!(got, PathBuf::from(want), "readlink {name}");
        let md = fs::symlink_metadata(m.mnt.join(name)).unwrap();
        assert!(md.file_type().is_symlink());
        assert_eq!(md.len(), want.len() as u64, "st_size of symlink {name}");
    }
    assert_eq!(
        fs::read(m.mnt.join("dir/link")).unwrap(),
        b"t",
        "follow a relative link"
    );
    assert_eq!(
        fs::metadata(m.mnt.join("dangling"))
            .map_err(|e| errname(&e))
            .err(),
        Some("ENOENT".to_string())
    );
    assert_eq!(
        fs::metadata(m.mnt.join("self"))
            .map_err(|e| errname(&e))
            .err(),
        Some("ELOOP".to_string())
    );
    m.unmount();
    assert_unchanged(&before);
}

#[test]
fn large_file_byte_exact() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("large");
    let mut rng = Rng::new(42);
    let big = rng.bytes(5 * 1024 * 1024 + 12345);
    file(&b.l3, "big", &big, 0o644);
    file(&b.l2, "medium", &big[..200_000], 0o600);
    b.fix_times();
    let before = snapshot_all(&b.lowers());
    let m = b.mount();
    let got = fs::read(m.mnt.join("big")).unwrap();
    assert_eq!(got.len(), big.len(), "length read back");
    assert!(got == big, "content of big differs");
    // odd-sized sequential reads
    let mut f = fs::File::open(m.mnt.join("big")).unwrap();
    let mut acc = Vec::new();
    let mut buf = vec![0u8; 77_777];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        acc.extend_from_slice(&buf[..n]);
    }
    assert!(acc == big, "odd-sized sequential reads differ");
    // random positioned reads
    for _ in 0..50 {
        let off = rng.below(big.len() as u64) as usize;
        let len = (rng.below(70_000) as usize).min(big.len() - off);
        let mut chunk = vec![0u8; len];
        f.read_exact_at(&mut chunk, off as u64).unwrap();
        assert!(
            chunk == big[off..off + len],
            "pread at {off} len {len} differs"
        );
    }
    // reading past EOF
    let mut tail = [0u8; 16];
    assert_eq!(f.read_at(&mut tail, big.len() as u64 + 10).unwrap(), 0);
    drop(f);
    assert_eq!(fs::read(m.mnt.join("medium")).unwrap(), &big[..200_000]);
    m.unmount();
    assert_unchanged(&before);
}

#[test]
fn hard_links_share_inode() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("hardlinks");
    let (u, l1, l2) = (&b.u, &b.l1, &b.l2);
    file(l1, "a", &c("l1", "a"), 0o644);
    hardlink(l1, "a", "sub/b");
    file(l2, "three/x", &c("l2", "x"), 0o640);
    hardlink(l2, "three/x", "three/y");
    hardlink(l2, "three/x", "z");
    file(l2, "lonely", &c("l2", "lonely"), 0o644);
    file(l1, "copy", &c("l2", "lonely"), 0o644); // same content, different object
    b.fix_times();
    let before = snapshot_all(&b.lowers());
    let m = b.mount();
    let view = snapshot(&m.mnt);
    let mut e = Expect::new();
    e.merged("/", u)
        .one("/a", l1.join("a"))
        .one("/sub", l1.join("sub"))
        .one("/sub/b", l1.join("sub/b"))
        .one("/three", l2.join("three"))
        .one("/three/x", l2.join("three/x"))
        .one("/three/y", l2.join("three/y"))
        .one("/z", l2.join("z"))
        .one("/lonely", l2.join("lonely"))
        .one("/copy", l1.join("copy"));
    assert_view(&e, &view);
    let ino = |p: &str| view[Path::new(p)].ino;
    assert_eq!(ino("/a"), ino("/sub/b"));
    assert_eq!(view[Path::new("/a")].nlink, 2);
    assert_eq!(ino("/three/x"), ino("/three/y"));
    assert_eq!(ino("/three/x"), ino("/z"));
    assert_eq!(view[Path::new("/z")].nlink, 3);
    assert_ne!(ino("/lonely"), ino("/copy"));
    assert_ne!(ino("/a"), ino("/z"));
    // stat through an open fd agrees with lstat
    let f = fs::File::open(m.mnt.join("sub/b")).unwrap();
    assert_eq!(f.metadata().unwrap().ino(), ino("/a"));
    drop(f);
    m.unmount();
    assert_unchanged(&before);
}

/// Paths whose st_ino differs between two snapshots (or that are in only one).
fn ino_changes(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in a {
        match b.get(p) {
            Some(f) if f.ino == e.ino => {}
            Some(f) => out.push(format!("{}: st_ino {} then {}", p.display(), e.ino, f.ino)),
            None => out.push(format!("{}: gone", p.display())),
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push(format!("{}: new", p.display()));
    }
    out
}

fn inodes_stable_across_remount(tag: &str, with_upper: bool) {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new(tag);
    build_combination(&b);
    // plus hard links and more depth
    file(&b.l2, "hl/one", b"1", 0o644);
    hardlink(&b.l2, "hl/one", "hl/two");
    file(&b.l3, "a/b/c/d/e", b"deep", 0o644);
    let before = snapshot_all(&b.lowers());
    let upper = with_upper.then_some(b.u.as_path());
    let m = Mount::unionfs(&b.lowers(), upper, &b.mnt);
    let first = snapshot(&m.mnt);
    assert!(first.len() > 20);
    // looking things up again in the same mount gives the same numbers
    let again = snapshot(&m.mnt);
    assert_no_problems(
        "st_ino changed within one mount",
        &ino_changes(&first, &again),
    );
    assert_no_problems("st_ino rules", &ino_self_problems(&first));
    m.unmount();
    let m = Mount::unionfs(&b.lowers(), upper, &b.mnt);
    // look paths up in a different order (deepest first) before the full walk
    let mut paths: Vec<&PathBuf> = first.keys().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut changed = Vec::new();
    for p in paths {
        let md = fs::symlink_metadata(view_path(&m.mnt, p)).unwrap();
        if md.ino() != first[p].ino {
            changed.push(format!(
                "{}: st_ino {} then {}",
                p.display(),
                first[p].ino,
                md.ino()
            ));
        }
    }
    assert_no_problems(
        "st_ino changed after remount (deepest-first lookups)",
        &changed,
    );
    let second = snapshot(&m.mnt);
    assert_no_problems(
        "st_ino per path differs after remount",
        &ino_changes(&first, &second),
    );
    m.unmount();
    assert_unchanged(&before);
}

#[test]
fn inodes_stable_across_remount_with_upper() {
    inodes_stable_across_remount("remount", true);
}

#[test]
fn inodes_stable_across_remount_read_only() {
    inodes_stable_across_remount("remount-ro", false);
}

// ---------------------------------------------------------------------------------------
// The daemon goes away when its mount does
// ---------------------------------------------------------------------------------------

fn daemon_exits_when_unmounted_by(argv: &[&str], tag: &str) {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new(tag);
    file(&b.l1, "a", b"a", 0o644);
    let m = b.mount();
    assert!(
        !m.daemon_pids.is_empty(),
        "no unionfs process with {} in its command line serves the mount",
        m.mnt.display()
    );
    assert_eq!(fs::read(m.mnt.join("a")).unwrap(), b"a");
    let pids = m.daemon_pids.clone();
    let mnt = m.mnt.clone();
    // unmount_with asserts: command exits 0, mount gone, daemon pids gone
    m.unmount_with(argv);
    assert!(
        daemon_pids(&mnt).is_empty(),
        "a unionfs process is left for {}",
        mnt.display()
    );
    assert!(pids.iter().all(|&p| !pid_alive(p)));
    assert!(
        mounts_under(&b.s.root).is_empty(),
        "something is still mounted under the scratch dir"
    );
}

#[test]
fn daemon_exits_on_umount() {
    daemon_exits_when_unmounted_by(&["umount"], "exit-umount");
}

#[test]
fn daemon_exits_on_fusermount3() {
    daemon_exits_when_unmounted_by(&["fusermount3", "-u"], "exit-fusermount");
}

#[test]
fn daemon_exits_on_unionfs_umount() {
    let bin = bin();
    let bin = bin.to_str().expect("utf-8 path");
    daemon_exits_when_unmounted_by(&[bin, "umount"], "exit-self");
}

#[test]
fn daemon_exits_on_lazy_umount() {
    daemon_exits_when_unmounted_by(&["umount", "-l"], "exit-lazy");
}

#[test]
fn mount_is_serving_when_the_command_returns() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("live");
    file(&b.l1, "a", b"first", 0o644);
    // Mount::unionfs checks mountinfo immediately after exit; the very first access
    // must work too (no window where the mount exists but does not answer)
    let m = b.mount();
    let mut f = fs::File::open(m.mnt.join("a")).expect("first open right after mount");
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "first");
    drop(f);
    m.unmount();
}

/// A directory listed while it changes: no name twice, and every name that
/// existed from opendir to the end of the listing is listed.
#[test]
fn listing_is_stable_while_the_directory_changes() {
    if !can_mount_fuse() {
        return;
    }
    let b = Branches::new("stable-listing");
    // Long names so the listing takes many getdents and FUSE readdir rounds.
    let name = |i: usize| format!("{i:04}-{}", "x".repeat(200));
    for i in 0..300 {
        let branch = if i % 2 == 0 { &b.l1 } else { &b.l2 };
        file(branch, &format!("d/{}", name(i)), b"", 0o644);
    }
    let m = b.mount();
    let d = m.mnt.join("d");
    let mut dir = nix::dir::Dir::open(
        &d,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut removed = std::collections::BTreeSet::new();
    for (n, ent) in dir.iter().enumerate() {
        let ent = ent.unwrap();
        let s = ent.file_name().to_string_lossy().into_owned();
        if s != "." && s != ".." {
            seen.push(s);
        }
        if n == 40 {
            // Change the directory in the middle of the listing: remove
            // names already read and names not yet read, add new ones.
            for i in (0..300).step_by(7) {
                fs::remove_file(d.join(name(i))).unwrap();
                removed.insert(name(i));
            }
            for i in 300..340 {
                fs::write(d.join(name(i)), b"new").unwrap();
            }
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    let before = sorted.len();
    sorted.dedup();
    assert_eq!(before, sorted.len(), "a name was listed twice");
    for i in 0..300 {
        if !removed.contains(&name(i)) {
            assert!(
                sorted.binary_search(&name(i)).is_ok(),
                "{i} existed throughout but was not listed"
            );
        }
    }
    // A fresh listing shows the changes.
    let now: std::collections::BTreeSet<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(now.len(), 300 - removed.len() + 40);
    assert!(removed.iter().all(|r| !now.contains(r)));
}

/// Metadata-only files (kernel `metacopy=on`, composefs) in a lower: metadata from
/// the marked file, data from the same path below — or from where its redirect points.
#[test]
fn metacopy_files_take_their_data_from_below() {
    if !can_mount_fuse() || !nix::unistd::geteuid().is_root() {
        return;
    }
    let b = Branches::new("metacopy");
    let (l1, l2) = (&b.l1, &b.l2);
    let data = c("l2", "f");
    file(l2, "f", &data, 0o644);
    file(l2, "elsewhere/g", &c("l2", "elsewhere/g"), 0o644);
    for (p, len) in [("f", data.len()), ("g", c("l2", "elsewhere/g").len())] {
        let f = file(l1, p, b"", 0o600);
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(len as u64)
            .unwrap();
        set_xattr(l1, p, "trusted.overlay.metacopy", b"");
        chown(l1, p, 1234, 1234);
    }
    set_xattr(l1, "g", "trusted.overlay.redirect", b"/elsewhere/g");
    // A marker with no data anywhere below is an I/O error, as in overlayfs.
    let orphan = file(l1, "orphan", b"", 0o644);
    fs::File::options()
        .write(true)
        .open(&orphan)
        .unwrap()
        .set_len(10)
        .unwrap();
    set_xattr(l1, "orphan", "trusted.overlay.metacopy", b"");
    let before = snapshot_all(&b.lowers());
    let m = b.mount();
    for (p, want) in [("f", data.clone()), ("g", c("l2", "elsewhere/g"))] {
        let md = fs::metadata(m.mnt.join(p)).unwrap();
        assert_eq!(
            (md.uid(), md.mode() & 0o777),
            (1234, 0o600),
            "{p}: l1's metadata"
        );
        assert_eq!(fs::read(m.mnt.join(p)).unwrap(), want, "{p}: l2's data");
        assert!(xattr::get(m.mnt.join(p), "trusted.overlay.metacopy")
            .unwrap()
            .is_none());
    }
    let err = fs::metadata(m.mnt.join("orphan")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // Writing copies the data up, with l1's metadata.
    fs::OpenOptions::new()
        .append(true)
        .open(m.mnt.join("g"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    let mut want = c("l2", "elsewhere/g");
    want.extend_from_slice(b"more\n");
    // (A whole-file copy-up takes its upper name once its data is synced:
    // a moment later, at unmount at the latest.)
    m.unmount();
    assert_eq!(fs::read(b.u.join("g")).unwrap(), want);
    assert_eq!(fs::metadata(b.u.join("g")).unwrap().uid(), 1234);
    assert_unchanged(&before);
}

fn vm_rss_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// The daemon's memory and fds follow what the kernel keeps cached, not the
/// number of inodes ever looked up: after the kernel forgets (drop_caches),
/// both fall back.
#[test]
fn memory_and_fds_follow_the_kernel_cache() {
    if !can_mount_fuse() || !nix::unistd::geteuid().is_root() {
        return;
    }
    // On tmpfs: creating 60,000 files on this machine's root ext4 is slow.
    let td = tempfile::Builder::new()
        .prefix("unionfs-test-bounded-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let (lower, mnt) = (td.path().join("lower"), td.path().join("mnt"));
    fs::create_dir(&mnt).unwrap();
    for d in 0..300 {
        let dir = lower.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..200 {
            fs::File::create(dir.join(format!("file-with-a-longish-name-{f}"))).unwrap();
        }
    }
    let m = Mount::unionfs(&[&lower], None, &mnt);
    let pid = m.daemon_pids[0];
    let base = vm_rss_kib(pid);
    // The premise (the kernel holds 60k inodes after the walk) is broken by
    // anyone dropping the kernel's caches meanwhile (other tests, a
    // benchmark's cold runs): walk again, up to three times.
    let mut peak = base;
    for _ in 0..3 {
        let out = run("find", &[m.mnt.to_str().unwrap(), "-printf", "%s\n"]);
        assert!(out.ok(), "{out}");
        peak = vm_rss_kib(pid);
        if peak > base + 10_000 {
            break;
        }
    }
    let peak_fds = open_fds(pid);
    assert!(
        peak > base + 10_000,
        "60k nodes should show: {base} -> {peak} KiB"
    );
    // The kernel forgets its unused inodes; FORGET frees the nodes.
    let drop = || {
        nix::unistd::sync();
        fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    };
    drop();
    let fell = wait_until(Duration::from_secs(20), || {
        vm_rss_kib(pid) < base + (peak - base) / 2 && open_fds(pid) < 64
    });
    assert!(
        fell,
        "after the kernel forgot: RSS {} KiB (base {base}, peak {peak}), fds {} (peak {peak_fds})",
        vm_rss_kib(pid),
        open_fds(pid)
    );
    m.unmount();
}

/// A deep stack (12 `ro+wh` lowers, default options: `udba=none`, so the layer index is
/// on): once a directory is listed — by the daemon itself at its third lookup there, or
/// by readdir — lookups of names it has not answered yet still find a name only the
/// bottom layer holds, honour an AUFS whiteout in a middle layer (and one below the
/// name, which hides nothing) and an opaque middle layer. Each name is looked up once,
/// so the kernel's dentry cache never answers for the daemon.
#[test]
fn deep_stack_lookups_after_a_listing() {
    if !can_mount_fuse() {
        return;
    }
    let s = Scratch::new("deep");
    let lowers: Vec<PathBuf> = (0..12).map(|i| s.dir(&format!("l{i}"))).collect();
    let (u, mnt) = (s.dir("upper"), s.dir("mnt"));
    for l in &lowers {
        mkdir(l, "d", 0o755);
        mkdir(l, "e", 0o755);
    }
    for i in 0..6 {
        file(&lowers[11], &format!("d/b{i}"), b"bottom", 0o644);
    }
    file(&lowers[9], "d/gone", b"hidden", 0o644);
    wh_aufs(&lowers[5], "d/gone");
    file(&lowers[6], "d/mid", b"mid", 0o644);
    wh_aufs(&lowers[8], "d/mid");
    opaque_aufs(&lowers[4], "d/o");
    file(&lowers[3], "d/o/seen", b"seen", 0o644);
    file(&lowers[10], "d/o/hidden", b"hidden", 0o644);
    file(&lowers[11], "e/x", b"x", 0o644);
    wh_aufs(&lowers[7], "e/x");
    file(&lowers[11], "e/y", b"y", 0o644);
    let refs: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    let before = snapshot_all(&refs);
    let m = Mount::unionfs(&refs, Some(&u), &mnt);

    // Three lookups in d that probe every layer; the third lists d's 12 layers.
    assert_absent(&mnt, &["/d/n0", "/d/n1", "/d/n2"]);
    for i in 0..6 {
        assert_eq!(fs::read(mnt.join(format!("d/b{i}"))).unwrap(), b"bottom");
    }
    assert_absent(&mnt, &["/d/gone", "/d/o/hidden"]);
    assert_eq!(fs::read(mnt.join("d/mid")).unwrap(), b"mid");
    assert_eq!(fs::read(mnt.join("d/o/seen")).unwrap(), b"seen");

    // e is listed by readdir; x (whited out in l7) is not in the listing, so the kernel
    // asks the daemon, which must find the whiteout, not the bottom file.
    let names: Vec<_> = fs::read_dir(mnt.join("e"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["y"]);
    assert_absent(&mnt, &["/e/x"]);

    assert_unchanged(&before);

    // The index answered: a name put in the bottom layer behind the mount after the
    // listings is not seen (udba=none promises that does not happen), where a probe of
    // every layer would see it. So the checks above ran on the index.
    file(&lowers[11], "d/late", b"late", 0o644);
    file(&lowers[11], "e/late", b"late", 0o644);
    assert_absent(&mnt, &["/d/late", "/e/late"]);
    m.unmount();
}

/// `unionfs mount` returns once its daemon is ready to serve, not as soon as it forked:
/// the daemon's code is locked in memory by then (`sys::resident`; a root daemon with
/// CAP_IPC_LOCK may lock). A program that measures the daemon right after `mount` returns
/// finds it as it stays (the memory test of `hostile_layers` once measured a daemon that
/// had not locked its code yet). The binary runs from a fresh copy out of the page cache,
/// so that locking it reads it from the disk and takes a while: a mount command that
/// returned at the fork is seen early (in the debug build CI runs; a release build's
/// smaller code may be locked before this test looks).
#[test]
fn the_mount_command_returns_once_the_daemon_is_ready() {
    if !can_mount_fuse() || !nix::unistd::geteuid().is_root() {
        return;
    }
    // CAP_IPC_LOCK (bit 14) in our effective set: the daemon we start has it too.
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if cap_eff & (1 << 14) == 0 {
        skip_or_fail("no CAP_IPC_LOCK: the daemon cannot lock its code");
        return;
    }
    let s = Scratch::new("ready");
    let bins = s.dir("bin");
    for i in 0..3 {
        // A copy per round: the last round's daemon may still be exiting
        // (running its copy, which cannot be rewritten then: ETXTBSY).
        let copy = bins.join(format!("unionfs-copy-{i}"));
        fs::copy(bin(), &copy).unwrap();
        let f = fs::File::open(&copy).unwrap();
        f.sync_all().unwrap();
        nix::fcntl::posix_fadvise(
            &f,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
        drop(f);
        let (l, u, mnt) = (
            s.dir(&format!("l{i}")),
            s.dir(&format!("u{i}")),
            s.dir(&format!("m{i}")),
        );
        let o = run(
            &copy,
            &[
                "mount".as_ref(),
                l.as_os_str(),
                u.as_os_str(),
                mnt.as_os_str(),
            ],
        );
        assert!(o.ok(), "round {i}: mount failed:\n{o}");
        let pid = *daemon_pids(&mnt).first().expect("a daemon");
        let kib = |key: &str| proc_field(pid, "status", key).unwrap_or(0);
        let (locked, resident) = (kib("VmLck:"), kib("VmRSS:"));
        let u = run_bin(&["umount".as_ref(), mnt.as_os_str()]);
        assert!(u.ok(), "round {i}: umount failed:\n{u}");
        assert!(
            locked > 0 && resident >= locked,
            "round {i}: the daemon's code is not in memory yet when mount returns \
             ({resident} KiB resident, {locked} KiB locked)"
        );
    }
}

/// The daemon grows its fd table before it serves: a table grown while requests are
/// served makes the request that crossed the size wait for an RCU grace period
/// (10-13 ms per doubling here), which a first `git status` crossed six times. The
/// table's size is `FDSize` in /proc/PID/status.
#[test]
fn the_daemon_reserves_its_fd_table_before_serving() {
    if !can_mount_fuse() {
        return;
    }
    let s = Scratch::new("fdtable");
    let (l, u, mnt) = (s.dir("l"), s.dir("u"), s.dir("m"));
    let pid = mount_for_pid(&l, &u, &mnt);
    let fd_size = proc_field(pid, "status", "FDSize:").unwrap_or(0);
    // The soft limit the daemon raised to its hard one.
    let limit = proc_field(pid, "limits", "Max open files").unwrap_or(0);
    let u = run_bin(&["umount".as_ref(), mnt.as_os_str()]);
    assert!(u.ok(), "umount failed:\n{u}");
    if limit < 128 {
        skip_or_fail("an fd limit under 128: the daemon reserves nothing");
        return;
    }
    // What the daemon reserves: twice its fd cache (half the limit), at most 16,384.
    let want = (2 * (limit / 2)).min(16_384);
    assert!(
        fd_size >= want,
        "the daemon's fd table holds {fd_size} fds after the mount, under its limit {limit}: \
         want at least {want}"
    );
}

/// The first number after `key` on its line of /proc/PID/FILE.
fn proc_field(pid: i32, file: &str, key: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The daemon's threads that work ahead (the walk's read-ahead, the copy-up stage pool)
/// run at nice 19 in the normal class, not `SCHED_IDLE`: an idle-class thread that held
/// a lookup the union's own requests waited for was left off a busy CPU for
/// milliseconds (a cold stat walk of a 2-layer union ran 5 times slower with its
/// read-ahead than with it at nice 19).
#[test]
fn work_ahead_runs_at_low_priority_not_in_the_idle_class() {
    if !can_mount_fuse() || !nix::unistd::geteuid().is_root() {
        return;
    }
    let s = Scratch::new("ahead-prio");
    let (l, u, mnt) = (s.dir("l"), s.dir("u"), s.dir("m"));
    fs::create_dir_all(l.join("d/e")).unwrap();
    fs::write(l.join("d/f"), "lower").unwrap();
    let pid = mount_for_pid(&l, &u, &mnt);
    // A listing of a directory with subdirectories starts the read-ahead; a first
    // write to a lower file, the stage pool.
    fs::read_dir(&mnt).unwrap().for_each(drop);
    fs::read_dir(mnt.join("d")).unwrap().for_each(drop);
    fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("d/f"))
        .unwrap();
    // (name, nice, policy) of each of the daemon's threads.
    let threads = || -> Vec<(String, i64, u64)> {
        fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| {
                let stat = fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
                // "pid (comm) state ...": fields after the comm, from field 3 on.
                let (head, rest) = stat.rsplit_once(')')?;
                let name = head.split_once('(')?.1.to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some((name, f.get(16)?.parse().ok()?, f.get(38)?.parse().ok()?))
            })
            .collect()
    };
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = threads();
        let names: Vec<&str> = seen.iter().map(|(n, _, _)| n.as_str()).collect();
        if names.contains(&"unionfs-ahead") && names.contains(&"stage-pool") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let u = run_bin(&["umount".as_ref(), mnt.as_os_str()]);
    assert!(u.ok(), "umount failed:\n{u}");
    // Only they: the threads that serve requests keep the daemon's priority.
    let serving: Vec<_> = seen
        .iter()
        .filter(|(n, _, _)| n.starts_with("fuser"))
        .collect();
    assert!(
        !serving.is_empty() && serving.iter().all(|(_, nice, _)| *nice == 0),
        "the serving threads: {serving:?}"
    );
    for want in ["unionfs-ahead", "stage-pool"] {
        let Some((_, nice, policy)) = seen.iter().find(|(n, _, _)| n == want) else {
            panic!("no {want} thread among the daemon's: {seen:?}");
        };
        assert_eq!(
            (*nice, *policy),
            (19, libc::SCHED_OTHER as u64),
            "{want}: nice {nice}, policy {policy} (SCHED_IDLE is {})",
            libc::SCHED_IDLE
        );
    }
}

/// Mounts lower `l` and upper `u` at `mnt` with the default options; the daemon's pid.
fn mount_for_pid(l: &Path, u: &Path, mnt: &Path) -> i32 {
    let o = run_bin(&[
        "mount".as_ref(),
        l.as_os_str(),
        u.as_os_str(),
        mnt.as_os_str(),
    ]);
    assert!(o.ok(), "mount failed:\n{o}");
    *daemon_pids(mnt).first().expect("a daemon")
}
