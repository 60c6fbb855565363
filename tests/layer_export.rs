//! `unionfs diff` and `unionfs export` on uppers written by a real mount, in
//! both whiteout formats: the diff lists exactly the expected A/C/D paths;
//! the exported layer, untarred (GNU tar) and mounted read-only as the top
//! lower over the same lowers, shows exactly the original union's view; and
//! exporting twice gives the same bytes and digests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use sha2::{Digest, Sha256};

struct Setup {
    s: Scratch,
    l1: PathBuf,
    l2: PathBuf,
    u: PathBuf,
    mnt: PathBuf,
}

fn setup(tag: &str) -> Setup {
    let s = Scratch::new(tag);
    let (l1, l2, u, mnt) = (s.dir("l1"), s.dir("l2"), s.dir("u"), s.dir("mnt"));
    file(&l2, "etc/passwd", b"root:x:0:0\n", 0o644);
    file(&l2, "etc/group", b"root:x:0:\n", 0o644);
    file(&l2, "dir/sub/f", b"f\n", 0o644);
    file(&l2, "old/x/y", b"y\n", 0o644);
    file(&l2, "hl", b"linked\n", 0o644);
    file(&l2, "keep/k", b"k\n", 0o644);
    file(&l2, "meta", b"data of a metacopy file\n", 0o644);
    file(&l1, "top", b"top\n", 0o644);
    file(&l1, "etc/hosts", b"127.0.0.1 localhost\n", 0o644);
    Setup { s, l1, l2, u, mnt }
}

/// The changes a container would make, through the mount.
fn change(m: &Path) {
    fs::write(m.join("new"), b"new\n").unwrap();
    xattr::set(m.join("new"), "user.test", b"v").unwrap();
    let mut passwd = fs::read(m.join("etc/passwd")).unwrap();
    passwd.extend_from_slice(b"app:x:1000:1000\n");
    fs::write(m.join("etc/passwd"), passwd).unwrap();
    fs::remove_file(m.join("etc/group")).unwrap();
    fs::remove_dir_all(m.join("dir")).unwrap();
    fs::create_dir(m.join("dir")).unwrap();
    fs::write(m.join("dir/z"), b"z\n").unwrap();
    fs::rename(m.join("old"), m.join("renamed")).unwrap();
    fs::set_permissions(m.join("meta"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::hard_link(m.join("hl"), m.join("hl2")).unwrap();
    fs::hard_link(m.join("new"), m.join("new2")).unwrap();
    fs::create_dir(m.join("emptynew")).unwrap();
    std::os::unix::fs::symlink("new", m.join("link")).unwrap();
    fifo(m, "fifo", 0o640);
    chardev(m, "null", 1, 3, 0o666);
}

const EXPECTED: &str = "\
C /dir
D /dir/sub
A /dir/z
A /emptynew
C /etc
D /etc/group
C /etc/passwd
A /fifo
C /hl
A /hl2
A /link
C /meta
A /new
A /new2
A /null
D /old
A /renamed
A /renamed/x
A /renamed/x/y
";

fn lowers_arg(t: &Setup) -> String {
    format!("{}:{}", t.l1.display(), t.l2.display())
}

/// The digest lines an export prints on stderr.
fn digests(c: &Cmd) -> (String, String) {
    let get = |k: &str| {
        c.stderr
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} line:\n{c}"))
            .to_string()
    };
    (get("diff_id "), get("digest "))
}

fn without_root(mut s: Snapshot) -> Snapshot {
    s.remove(Path::new("/"));
    s
}

fn round_trip(format: &str) {
    if !can_mount_fuse() {
        return;
    }
    let t = setup(&format!("export-{format}"));
    let m = Mount::unionfs_args(
        &[
            "mount".as_ref(),
            lowers_arg(&t).as_ref(),
            t.u.as_os_str(),
            t.mnt.as_os_str(),
            "-o".as_ref(),
            format!("whiteout={format}").as_ref(),
        ],
        &t.mnt,
    );
    change(&t.mnt);
    let view = without_root(snapshot(&t.mnt));
    for p in ["/renamed/x/y", "/new", "/null", "/fifo", "/keep/k", "/top"] {
        assert!(
            view.contains_key(Path::new(p)),
            "test bug: {p} not in the view"
        );
    }
    m.unmount();

    // diff, with and without the lowers.
    let d = run_bin(&[
        "diff".as_ref(),
        t.u.as_os_str(),
        "--lowers".as_ref(),
        lowers_arg(&t).as_ref(),
    ]);
    assert!(d.ok(), "{d}");
    assert_eq!(d.stdout, EXPECTED, "{format}: {d}");
    let j = run_bin(&[
        "diff".as_ref(),
        t.u.as_os_str(),
        "--lowers".as_ref(),
        lowers_arg(&t).as_ref(),
        "--json".as_ref(),
    ]);
    assert!(
        j.ok() && j.stdout.starts_with("[{\"kind\":\"C\",\"path\":\"/dir\"},"),
        "{j}"
    );
    assert_eq!(
        j.stdout.matches("\"kind\"").count(),
        EXPECTED.lines().count(),
        "{j}"
    );
    let bare = run_bin(&["diff".as_ref(), t.u.as_os_str()]);
    assert!(bare.ok(), "{bare}");
    let dels: Vec<&str> = bare
        .stdout
        .lines()
        .filter(|l| l.starts_with("D "))
        .collect();
    assert_eq!(dels, ["D /etc/group", "D /old"], "{format}: {bare}");
    for l in ["A /new", "A /renamed", "C /etc/passwd", "C /meta"] {
        assert!(
            bare.stdout.lines().any(|x| x == l),
            "{format}: no {l}: {bare}"
        );
    }
    assert!(
        !bare.stdout.contains(".wh.") && !bare.stdout.contains("unionfs"),
        "internal names leaked: {bare}"
    );

    // export: refused without the lowers (metacopy and redirect), one line.
    let out = t.s.path("layer.tar");
    let r = run_bin(&["export".as_ref(), t.u.as_os_str(), out.as_os_str()]);
    assert!(!r.ok() && r.stderr.lines().count() == 1, "{r}");
    assert!(
        r.stderr.contains("/meta") && r.stderr.contains("--lowers"),
        "{r}"
    );
    assert_eq!(
        fs::read_dir(&t.s.root).unwrap().count(),
        4,
        "a failed export left a file"
    );

    let export = |name: &str| {
        let p = t.s.path(name);
        let c = run_bin(&[
            "export".as_ref(),
            t.u.as_os_str(),
            p.as_os_str(),
            "--lowers".as_ref(),
            lowers_arg(&t).as_ref(),
        ]);
        assert!(c.ok(), "{c}");
        (p, digests(&c))
    };
    let (tar1, (id1, dg1)) = export("layer.tar");
    let bytes1 = fs::read(&tar1).unwrap();
    let (tar2, (id2, dg2)) = export("again.tar");
    assert_eq!((&id1, &dg1), (&id2, &dg2), "exports of one upper differ");
    assert_eq!(bytes1, fs::read(&tar2).unwrap());
    assert_eq!(id1, dg1, "an uncompressed layer's digest is its diff_id");
    let hex: String = Sha256::digest(&bytes1)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(id1, format!("sha256:{hex}"));
    for name in ["layer.tar.gz", "layer.tar.zst"] {
        let (p, (id, dg)) = export(name);
        assert_eq!(id, id1, "{name}: diff_id is the uncompressed tar's");
        assert_ne!(dg, id1, "{name}");
        let (_, (id_b, dg_b)) = export(&format!("b-{name}"));
        assert_eq!((id, dg), (id_b, dg_b), "{name} is not deterministic");
        assert!(fs::metadata(p).unwrap().len() < bytes1.len() as u64);
    }
    // The layer holds the OCI form of every whiteout, and nothing private.
    let list = run("tar", &["-tf".as_ref(), tar1.as_os_str()]);
    assert!(list.ok(), "{list}");
    for want in [
        ".wh.old",
        "dir/.wh..wh..opq",
        "etc/.wh.group",
        "renamed/.wh..wh..opq",
        "renamed/x/y",
    ] {
        assert!(
            list.stdout.lines().any(|l| l == want),
            "{format}: no {want}:\n{}",
            list.stdout
        );
    }
    assert!(!list.stdout.contains(".wh..wh.unionfs"), "{}", list.stdout);

    // Round trip: the untarred layer over the same lowers is the same view.
    let layer = t.s.dir("layer");
    let x = run(
        "tar",
        &[
            "-xpf".as_ref(),
            tar1.as_os_str(),
            "--xattrs".as_ref(),
            "--xattrs-include=*".as_ref(),
            "--numeric-owner".as_ref(),
            "-C".as_ref(),
            layer.as_os_str(),
        ],
    );
    assert!(x.ok(), "{x}");
    let mnt2 = t.s.dir("mnt2");
    let ro = Mount::unionfs(&[&layer, &t.l1, &t.l2], None, &mnt2);
    let again = without_root(snapshot(&mnt2));
    ro.unmount();
    let cmp = Cmp {
        nlink: false,
        mtime: false,
        root_mtime: false,
        ctime: false,
        dir_size: false,
        ino: false,
        dev: false,
    };
    assert_tree_eq(
        &format!("{format}: the exported layer over the lowers differs from the union"),
        &view,
        &again,
        cmp,
    );
    // Hard links stay hard links.
    for p in ["/hl", "/hl2", "/new", "/new2"] {
        assert_eq!(again[Path::new(p)].nlink, 2, "{p}");
    }
}

#[test]
fn aufs_upper_diff_export_round_trip() {
    round_trip("aufs");
}

#[test]
fn overlay_upper_diff_export_round_trip() {
    round_trip("overlay");
}

#[test]
fn bad_input_is_one_line() {
    let s = Scratch::new("export-bad");
    let u = s.dir("u");
    let missing = s.path("nope");
    let (out, inside) = (s.path("o.tar"), u.join("o.tar"));
    for args in [
        vec!["diff".as_ref(), missing.as_os_str()],
        vec!["export".as_ref(), missing.as_os_str(), out.as_os_str()],
        vec!["export".as_ref(), u.as_os_str(), inside.as_os_str()],
    ] {
        let c = run_bin(&args);
        assert!(!c.ok() && c.stderr.lines().count() == 1, "{c}");
    }
    assert!(!u.join("o.tar").exists());
}

#[test]
fn every_whiteout_format_in_a_hand_written_upper() {
    if !can_mount_overlay() {
        return; // trusted.* xattrs and mknod need root
    }
    let s = Scratch::new("export-formats");
    let (l, u) = (s.dir("l"), s.dir("u"));
    for f in [
        "a", "b", "f", "keep", "sub/c", "plain/n", "o/x", "o/y", "q/x", "fo/z",
    ] {
        file(&l, f, b"lower\n", 0o644);
    }
    wh_aufs(&u, "a");
    wh_chardev(&u, "b");
    wh_xattr(&u, "sub/c", Ns::User);
    wh_xattr_unmarked(&u, "plain/n", Ns::User); // not a whiteout: its dir is unmarked
    wh_unionfs_fuse(&u, "f", ".unionfs", false);
    opaque_xattr(&u, "o", "trusted.overlay.opaque", b"y");
    opaque_aufs(&u, "q");
    opaque_xattr(&u, "fo", "user.fuseoverlayfs.opaque", b"y");
    file(&u, "kept", b"k\n", 0o644);
    set_xattr(&u, "kept", "user.keep", b"1");
    set_xattr(&u, "kept", "trusted.overlay.origin", b"private");
    // Union internals, never reported.
    file(&u, ".wh..wh.aufs", b"", 0o644);
    mkdir(&u, ".wh..wh.plnk", 0o700);
    mkdir(&u, ".wh..wh.unionfs/work", 0o700);

    let lowers = l.display().to_string();
    let d = run_bin(&[
        "diff".as_ref(),
        u.as_os_str(),
        "--lowers".as_ref(),
        lowers.as_ref(),
    ]);
    assert!(d.ok(), "{d}");
    assert_eq!(
        d.stdout,
        "D /a\nD /b\nD /f\nC /fo\nD /fo/z\nA /kept\nC /o\nD /o/x\nD /o/y\n\
         C /plain\nC /plain/n\nC /q\nD /q/x\nC /sub\nD /sub/c\n",
        "{d}"
    );
    let bare = run_bin(&["diff".as_ref(), u.as_os_str()]);
    assert_eq!(
        bare.stdout,
        // /kept carries an origin xattr: without lowers, that says "copied up".
        "D /a\nD /b\nD /f\nC /fo\nC /kept\nC /o\nA /plain\nA /plain/n\nC /q\nC /sub\nD /sub/c\n",
        "{bare}"
    );

    let out = s.path("l.tar");
    let e = run_bin(&["export".as_ref(), u.as_os_str(), out.as_os_str()]);
    assert!(e.ok(), "{e}");
    let mut names = Vec::new();
    let mut pax = Vec::new();
    let mut ar = tar::Archive::new(fs::File::open(&out).unwrap());
    for entry in ar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        if let Some(exts) = entry.pax_extensions().unwrap() {
            for x in exts {
                pax.push((name.clone(), x.unwrap().key().unwrap().to_string()));
            }
        }
        names.push(name);
    }
    assert_eq!(
        names,
        [
            ".wh.a",
            ".wh.b",
            ".wh.f",
            "fo",
            "fo/.wh..wh..opq",
            "kept",
            "o",
            "o/.wh..wh..opq",
            "plain",
            "plain/n",
            "q",
            "q/.wh..wh..opq",
            "sub",
            "sub/.wh.c",
        ],
        "{e}"
    );
    assert_eq!(
        pax,
        [("kept".to_string(), "SCHILY.xattr.user.keep".to_string())],
        "only user xattrs leave"
    );

    // --mtime clamps every mtime (SOURCE_DATE_EPOCH does the same).
    let clamped = s.path("c.tar");
    let c = run_bin(&[
        "export".as_ref(),
        u.as_os_str(),
        clamped.as_os_str(),
        "--mtime".as_ref(),
        "1000".as_ref(),
    ]);
    assert!(c.ok(), "{c}");
    let mut ar = tar::Archive::new(fs::File::open(&clamped).unwrap());
    for entry in ar.entries().unwrap() {
        let entry = entry.unwrap();
        assert!(entry.header().mtime().unwrap() <= 1000);
    }

    // An upper recorded in AUFS format: a char 0:0 device is a device.
    let u2 = s.dir("u2");
    set_xattr(&u2, "", "trusted.unionfs.format", b"aufs");
    wh_chardev(&u2, "dev");
    let d2 = run_bin(&["diff".as_ref(), u2.as_os_str()]);
    assert_eq!(d2.stdout, "A /dev\n", "{d2}");
}
