//! Name lengths and reserved objects through a mounted union (issue 11,
//! items 2 and 3): the union's NAME_MAX (251 when it writes AUFS `.wh.`
//! whiteouts, 255 in overlay format) is the rule for new names and for
//! lookups of names no branch holds; lower names whose AUFS whiteout cannot
//! fit stay visible and copyable but cannot be deleted; a char 0:0 device
//! cannot be made in overlay format, where it would be a whiteout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag};

use common::*;

const ENAMETOOLONG: i32 = libc::ENAMETOOLONG;

struct Setup {
    s: Scratch,
    u: PathBuf,
    l1: PathBuf,
    l2: PathBuf,
    mnt: PathBuf,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let s = Scratch::new(tag);
        Setup {
            u: s.dir("upper"),
            l1: s.dir("l1"),
            l2: s.dir("l2"),
            mnt: s.dir("mnt"),
            s,
        }
    }

    /// Mounts l1:l2 over the upper, writing whiteouts in `format`.
    fn mount(&self, format: &str) -> Mount {
        let work = self.s.dir("work");
        let args: Vec<OsString> = vec![
            "mount".into(),
            format!("{}:{}", self.l1.display(), self.l2.display()).into(),
            self.u.clone().into(),
            self.mnt.clone().into(),
            "-o".into(),
            format!("whiteout={format},workdir={}", work.display()).into(),
        ];
        Mount::unionfs_args(&args, &self.mnt)
    }
}

/// A name of `n` bytes starting with `c`.
fn name(c: char, n: usize) -> OsString {
    OsString::from(c.to_string().repeat(n))
}

fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn nix_errno<T>(r: nix::Result<T>) -> Option<i32> {
    r.err().map(|e| e as i32)
}

/// Names in `dir` (not following anything), sorted.
fn listing(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

/// Names in the upper directory `dir` that are longer than `max` bytes.
fn long_names(dir: &Path, max: usize) -> Vec<usize> {
    listing(dir)
        .iter()
        .map(|n| n.len())
        .filter(|&l| l > max)
        .collect()
}

#[test]
fn aufs_format_refuses_new_names_longer_than_251() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("names-aufs-new");
    file(&t.l2, "lowerfile", b"l", 0o644);
    // Lower names the format cannot hold: visible, but no new name of theirs.
    let mut lower_long: Vec<OsString> = (252..=255).map(|n| name('y', n)).collect();
    for n in &lower_long {
        fs::write(t.l2.join(n), b"y").unwrap();
    }
    let m = t.mount("aufs");
    let p = |n: &OsStr| m.mnt.join(n);
    assert_eq!(
        nix::sys::statvfs::statvfs(&m.mnt).unwrap().name_max(),
        251,
        "statfs must report what the format can delete"
    );
    fs::write(p(OsStr::new("src")), b"s").unwrap();
    for n in 252..=255 {
        let long = name('x', n);
        let what = format!("{n}-byte name");
        assert_eq!(
            errno(fs::File::create(p(&long))),
            Some(ENAMETOOLONG),
            "create {what}"
        );
        assert_eq!(
            errno(fs::create_dir(p(&long))),
            Some(ENAMETOOLONG),
            "mkdir {what}"
        );
        assert_eq!(
            errno(std::os::unix::fs::symlink("target", p(&long))),
            Some(ENAMETOOLONG),
            "symlink {what}"
        );
        assert_eq!(
            nix_errno(nix::unistd::mkfifo(
                &p(&long),
                Mode::from_bits_truncate(0o644)
            )),
            Some(ENAMETOOLONG),
            "mknod fifo {what}"
        );
        assert_eq!(
            errno(fs::hard_link(p(OsStr::new("src")), p(&long))),
            Some(ENAMETOOLONG),
            "link {what}"
        );
        assert_eq!(
            errno(fs::rename(p(OsStr::new("src")), p(&long))),
            Some(ENAMETOOLONG),
            "rename an upper file to a {what}"
        );
        assert_eq!(
            errno(fs::rename(p(OsStr::new("lowerfile")), p(&long))),
            Some(ENAMETOOLONG),
            "rename a lower file to a {what}"
        );
        assert_eq!(
            errno(fs::rename(p(OsStr::new("src")), p(&name('y', n)))),
            Some(ENAMETOOLONG),
            "rename over a lower {what}"
        );
        assert_eq!(fs::read(p(&name('y', n))).unwrap(), b"y");
    }
    // Nothing was created, nothing moved, nothing copied up.
    assert_eq!(long_names(&t.u, 251), Vec::<usize>::new());
    assert_eq!(fs::read(p(OsStr::new("src"))).unwrap(), b"s");
    assert_eq!(fs::read(p(OsStr::new("lowerfile"))).unwrap(), b"l");
    assert!(!t.u.join("lowerfile").exists());
    let mut expected = vec![OsString::from("lowerfile"), OsString::from("src")];
    expected.append(&mut lower_long);
    expected.sort();
    assert_eq!(listing(&m.mnt), expected);

    // 251 bytes is the maximum, and everything works with it, deletion too.
    let max = name('m', 251);
    let dir = name('d', 251);
    let sym = name('s', 251);
    let lnk = name('k', 251);
    fs::write(p(&max), b"ok").unwrap();
    fs::create_dir(p(&dir)).unwrap();
    std::os::unix::fs::symlink("target", p(&sym)).unwrap();
    fs::hard_link(p(&max), p(&lnk)).unwrap();
    fs::rename(p(OsStr::new("lowerfile")), p(&dir).join(&max)).unwrap();
    assert_eq!(fs::read(p(&dir).join(&max)).unwrap(), b"l");
    assert!(t.u.join(".wh.lowerfile").exists());
    fs::remove_file(p(&dir).join(&max)).unwrap();
    fs::remove_dir(p(&dir)).unwrap();
    fs::remove_file(p(&sym)).unwrap();
    fs::remove_file(p(&lnk)).unwrap();
    fs::remove_file(p(&max)).unwrap();
    expected.retain(|n| n != "lowerfile");
    assert_eq!(listing(&m.mnt), expected);
}

#[test]
fn aufs_format_cannot_delete_a_lower_name_whose_whiteout_would_not_fit() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("names-aufs-delete");
    let long = name('a', 253);
    let long_dir = name('d', 253);
    fs::write(t.l2.join(&long), b"lower").unwrap();
    fs::create_dir(t.l2.join(&long_dir)).unwrap();
    // A hard-linked lower file: refusing must not copy it to the index either.
    let linked = name('h', 254);
    fs::write(t.l1.join(&linked), b"linked").unwrap();
    fs::hard_link(t.l1.join(&linked), t.l1.join("other-name")).unwrap();
    let lowers_before = snapshot_all(&[&t.l1, &t.l2]);
    let m = t.mount("aufs");
    let p = |n: &OsStr| m.mnt.join(n);

    let refused = |what: &str, r: Option<i32>| {
        assert_eq!(r, Some(ENAMETOOLONG), "{what}");
    };
    refused("unlink", errno(fs::remove_file(p(&long))));
    refused("rmdir", errno(fs::remove_dir(p(&long_dir))));
    refused(
        "rename away",
        errno(fs::rename(p(&long), p(OsStr::new("s")))),
    );
    refused(
        "rename a dir away",
        errno(fs::rename(p(&long_dir), p(OsStr::new("sd")))),
    );
    refused("unlink hard-linked", errno(fs::remove_file(p(&linked))));
    // Still there, unchanged; nothing was written into the upper.
    assert_eq!(fs::read(p(&long)).unwrap(), b"lower");
    assert!(fs::metadata(p(&long_dir)).unwrap().is_dir());
    assert_eq!(fs::read(p(&linked)).unwrap(), b"linked");
    assert_eq!(fs::metadata(p(&linked)).unwrap().nlink(), 2);
    assert!(listing(&m.mnt).contains(&long));
    assert!(listing(&m.mnt).contains(&long_dir));
    assert!(!p(OsStr::new("s")).exists() && !p(OsStr::new("sd")).exists());
    // (The AUFS whiteout base, made at mount as AUFS does, is no copy.)
    assert_eq!(
        listing(&t.u),
        vec![OsString::from(".wh..wh.aufs")],
        "nothing copied up"
    );

    // Copy-up needs no whiteout: metadata changes and writes work.
    fs::set_permissions(p(&long), fs::Permissions::from_mode(0o600)).unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(p(&long)).unwrap();
    f.write_all(b"+upper").unwrap();
    drop(f);
    assert_eq!(fs::read(p(&long)).unwrap(), b"lower+upper");
    assert_eq!(fs::metadata(p(&long)).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(fs::read(t.u.join(&long)).unwrap(), b"lower+upper");
    fs::write(p(&long_dir).join("inside"), b"i").unwrap();
    assert_eq!(fs::read(t.u.join(&long_dir).join("inside")).unwrap(), b"i");
    fs::remove_file(p(&long_dir).join("inside")).unwrap();
    // The lower still shows below the copy: still not deletable, still there.
    refused("unlink after copy-up", errno(fs::remove_file(p(&long))));
    refused("rmdir after copy-up", errno(fs::remove_dir(p(&long_dir))));
    assert_eq!(fs::read(p(&long)).unwrap(), b"lower+upper");
    assert!(listing(&t.u)
        .iter()
        .all(|n| !n.as_bytes().starts_with(b".wh.a")));
    drop(m);
    assert_unchanged(&lowers_before);
}

#[test]
fn lookups_of_names_longer_than_the_maximum_are_enametoolong() {
    if !can_mount_fuse() {
        return;
    }
    for (format, max) in [("aufs", 251usize), ("overlay", 255)] {
        let t = Setup::new(&format!("names-lookup-{format}"));
        file(&t.l2, "f", b"f", 0o644);
        let m = t.mount(format);
        let p = |n: &OsStr| m.mnt.join(n);
        assert_eq!(
            nix::sys::statvfs::statvfs(&m.mnt).unwrap().name_max() as usize,
            max
        );
        // FUSE hands the daemon names up to 4 KiB; all of these reach it.
        for n in [max + 1, 256, 1000, 4000] {
            let long = name('z', n);
            let lp = p(&long);
            let e = |what: &str, r: Option<i32>| {
                assert_eq!(r, Some(ENAMETOOLONG), "{format}: {what} of a {n}-byte name");
            };
            e("stat", errno(fs::metadata(&lp)));
            e("lstat", errno(fs::symlink_metadata(&lp)));
            e("open", errno(fs::File::open(&lp)));
            e("unlink", errno(fs::remove_file(&lp)));
            e("rmdir", errno(fs::remove_dir(&lp)));
            e(
                "chmod",
                errno(fs::set_permissions(&lp, fs::Permissions::from_mode(0o600))),
            );
            e("chown", errno(std::os::unix::fs::chown(&lp, Some(1), None)));
            e(
                "lchown",
                errno(std::os::unix::fs::lchown(&lp, Some(1), None)),
            );
            e("truncate", nix_errno(nix::unistd::truncate(&lp, 0)));
            e("link source", errno(fs::hard_link(&lp, p(OsStr::new("l")))));
            e("rename source", errno(fs::rename(&lp, p(OsStr::new("r")))));
            e("rename target", errno(fs::rename(p(OsStr::new("f")), &lp)));
            e("create", errno(fs::File::create(&lp)));
            e("mkdir", errno(fs::create_dir(&lp)));
        }
        // Up to the maximum, a name that is not there is just not there.
        let absent = name('z', max);
        assert_eq!(errno(fs::metadata(p(&absent))), Some(libc::ENOENT));
        assert_eq!(errno(fs::remove_file(p(&absent))), Some(libc::ENOENT));
        assert_eq!(listing(&m.mnt), vec![OsString::from("f")]);
        assert_eq!(long_names(&t.u, max), Vec::<usize>::new());
        assert!(!t.u.join("f").exists(), "{format}: nothing copied up");
    }
}

#[test]
fn overlay_format_takes_names_up_to_255_bytes() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("names-overlay-255");
    let lower = name('a', 255);
    fs::write(t.l2.join(&lower), b"l").unwrap();
    let m = t.mount("overlay");
    let p = |n: &OsStr| m.mnt.join(n);
    let new = name('n', 255);
    fs::write(p(&new), b"n").unwrap();
    fs::create_dir(p(&name('d', 255))).unwrap();
    fs::remove_dir(p(&name('d', 255))).unwrap();
    // A whiteout there is a char 0:0 under the same name: it always fits.
    fs::remove_file(p(&lower)).unwrap();
    assert!(!p(&lower).exists());
    let st = fs::symlink_metadata(t.u.join(&lower)).unwrap();
    assert!(st.file_type().is_char_device() && st.rdev() == 0);
    assert_eq!(listing(&m.mnt), vec![new]);
}

fn mknod_char(p: &Path, major: u64, minor: u64) -> nix::Result<()> {
    nix::sys::stat::mknod(
        p,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(major, minor),
    )
}

#[test]
fn overlay_format_refuses_char_0_0_devices_like_overlayfs() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("names-overlay-dev00");
    let m = t.mount("overlay");
    let p = |r: &str| m.mnt.join(r);
    fs::create_dir(p("d")).unwrap();
    assert_eq!(nix_errno(mknod_char(&p("dev00"), 0, 0)), Some(libc::EPERM));
    assert_eq!(
        nix_errno(mknod_char(&p("d/dev00"), 0, 0)),
        Some(libc::EPERM)
    );
    assert!(!t.u.join("dev00").exists() && fs::symlink_metadata(t.u.join("dev00")).is_err());
    assert_eq!(listing(&t.u.join("d")), Vec::<OsString>::new());
    // The directory is still empty: rmdir works and removes nothing hidden.
    fs::remove_dir(p("d")).unwrap();
    // Other devices are devices.
    mknod_char(&p("null"), 1, 3).unwrap();
    let st = fs::symlink_metadata(p("null")).unwrap();
    assert!(st.file_type().is_char_device());
    assert_eq!(st.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(listing(&m.mnt), vec![OsString::from("null")]);
}

#[test]
fn aufs_format_keeps_char_0_0_devices_as_devices() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("names-aufs-dev00");
    let m = t.mount("aufs");
    let p = |r: &str| m.mnt.join(r);
    fs::create_dir(p("d")).unwrap();
    mknod_char(&p("d/dev00"), 0, 0).unwrap();
    let st = fs::symlink_metadata(p("d/dev00")).unwrap();
    assert!(st.file_type().is_char_device());
    assert_eq!(st.rdev(), 0);
    // A device, not a whiteout: the name is taken, listed, and keeps its dir.
    assert_eq!(
        nix_errno(mknod_char(&p("d/dev00"), 0, 0)),
        Some(libc::EEXIST)
    );
    assert_eq!(listing(&p("d")), vec![OsString::from("dev00")]);
    assert_eq!(errno(fs::remove_dir(p("d"))), Some(libc::ENOTEMPTY));
    assert!(fs::symlink_metadata(t.u.join("d/dev00"))
        .unwrap()
        .file_type()
        .is_char_device());
    fs::remove_file(p("d/dev00")).unwrap();
    fs::remove_dir(p("d")).unwrap();
    assert_eq!(listing(&m.mnt), Vec::<OsString>::new());
}
