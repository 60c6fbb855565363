//! Every union dialect's command line mounts the same union: native
//! (`LOWERS UPPER MNT`), overlay (`-o lowerdir=,upperdir=,workdir=`), AUFS
//! (`-o br=`, `-o br:`, `-o dirs=` with a source label) and unionfs-fuse
//! (`/u=RW:/a=RO MNT -o cow`). Each view equals the native one, and writes
//! land in the upper; an unknown mode word is one line and mounts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// The command line of one dialect, from (upper, mount point, workdir).
type Argv<'a> = Box<dyn Fn(&Path, &Path, &Path) -> Vec<OsString> + 'a>;

fn without_root(mut s: Snapshot) -> Snapshot {
    s.remove(Path::new("/"));
    s
}

#[test]
fn every_dialect_mounts_the_same_view() {
    if !can_mount_fuse() {
        return;
    }
    let s = Scratch::new("dialects");
    let (l1, l2) = (s.dir("l1"), s.dir("l2"));
    file(&l2, "etc/passwd", b"root\n", 0o644);
    file(&l2, "etc/group", b"root\n", 0o644);
    file(&l2, "gone", b"whited out by l1\n", 0o644);
    file(&l1, "etc/passwd", b"root\napp\n", 0o600);
    wh_aufs(&l1, "gone");
    symlink(&l1, "link", "etc/passwd");
    fix_times(&l1, 1_600_000_000);
    fix_times(&l2, 1_600_000_000);
    let (l1s, l2s) = (l1.display().to_string(), l2.display().to_string());

    let dialects: Vec<(&str, Argv<'_>)> = vec![
        (
            "native",
            Box::new(|u: &Path, m: &Path, _w: &Path| {
                vec![
                    "mount".into(),
                    format!("{l1s}:{l2s}").into(),
                    u.into(),
                    m.into(),
                ]
            }),
        ),
        (
            "overlay",
            Box::new(|u: &Path, m: &Path, w: &Path| {
                vec![
                    "-o".into(),
                    format!(
                        "lowerdir={l1s}:{l2s},upperdir={},workdir={}",
                        u.display(),
                        w.display()
                    )
                    .into(),
                    m.into(),
                ]
            }),
        ),
        (
            "aufs br=",
            Box::new(|u: &Path, m: &Path, _w: &Path| {
                vec![
                    "mount".into(),
                    "-o".into(),
                    format!("br={}=rw:{l1s}=ro+wh:{l2s}=ro", u.display()).into(),
                    m.into(),
                ]
            }),
        ),
        (
            "aufs br: with a source label",
            Box::new(|u: &Path, m: &Path, _w: &Path| {
                vec![
                    "mount".into(),
                    "none".into(),
                    m.into(),
                    "-o".into(),
                    // l1 holds a whiteout: it must say +wh to have it read (aufs.5).
                    format!("br:{}=rw:{l1s}=rr+wh:{l2s}", u.display()).into(),
                ]
            }),
        ),
        (
            "unionfs 1.x dirs=",
            Box::new(|u: &Path, m: &Path, _w: &Path| {
                vec![
                    "-o".into(),
                    format!("dirs={}=rw:{l1s}=ro+wh:{l2s}=nfsro", u.display()).into(),
                    "unionfs".into(),
                    m.into(),
                ]
            }),
        ),
        (
            "unionfs-fuse",
            Box::new(|u: &Path, m: &Path, _w: &Path| {
                vec![
                    "-o".into(),
                    "cow".into(),
                    format!("{}=RW:{l1s}=RO:{l2s}=RO", u.display()).into(),
                    m.into(),
                ]
            }),
        ),
    ];

    let before = snapshot_all(&[&l1, &l2]);
    let mut reference: Option<Snapshot> = None;
    for (i, (name, argv)) in dialects.iter().enumerate() {
        let (u, w, m): (PathBuf, PathBuf, PathBuf) = (
            s.dir(&format!("u{i}")),
            s.dir(&format!("w{i}")),
            s.dir(&format!("m{i}")),
        );
        let mnt = Mount::unionfs_args(&argv(&u, &m, &w), &m);
        let view = without_root(snapshot(&m));
        assert_absent(&m, &["/gone", "/.wh.gone"]);
        fs::write(m.join("etc/new"), b"x").unwrap();
        fs::remove_file(m.join("etc/group")).unwrap();
        mnt.unmount();
        assert_eq!(
            fs::read(u.join("etc/new")).unwrap(),
            b"x",
            "{name}: write not in the upper"
        );
        assert_unchanged(&before);
        match &reference {
            None => reference = Some(view),
            Some(r) => assert_tree_eq(
                &format!("{name} differs from the native dialect"),
                r,
                &view,
                Cmp::VIEW,
            ),
        }
    }
}

#[test]
fn unknown_mode_word_is_one_line_and_mounts_nothing() {
    let s = Scratch::new("dialect-bad");
    let (l1, u, m) = (s.dir("l1"), s.dir("u"), s.dir("m"));
    for args in [
        vec![
            "mount".to_string(),
            format!("{}=RW:{}=RX", u.display(), l1.display()),
            m.display().to_string(),
        ],
        vec![
            "mount".into(),
            "-o".into(),
            format!("br={}=rw:{}=ro+whiteout", u.display(), l1.display()),
            m.display().to_string(),
        ],
        vec![
            "mount".into(),
            "-o".into(),
            format!("br={}=rw+wh:{}=ro", u.display(), l1.display()),
            m.display().to_string(),
        ],
    ] {
        let c = run_bin(&args);
        assert!(!c.ok(), "{c}");
        assert_eq!(c.stderr.trim().lines().count(), 1, "{c}");
        assert!(!is_mounted(&m));
    }
}
