//! The mount(8) helper and fstab: `mount.fuse.unionfs SOURCE MNT -o OPTS`
//! called directly, through `mount -t fuse.unionfs` / `mount -t unionfs`,
//! and through `mount -T FSTAB -a`; and `scripts/install.sh` into a
//! temporary prefix. The helper links this test puts into /sbin are
//! removed again, and only those it created.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// Branches with a file in each lower and an empty upper.
fn branches(s: &Scratch, tag: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let (l1, l2, u, m) = (
        s.dir(&format!("{tag}-l1")),
        s.dir(&format!("{tag}-l2")),
        s.dir(&format!("{tag}-u")),
        s.dir(&format!("{tag}-m")),
    );
    file(&l1, "a", b"from l1\n", 0o644);
    file(&l2, "a", b"hidden\n", 0o644);
    file(&l2, "b", b"from l2\n", 0o644);
    (l1, l2, u, m)
}

/// Asserts the union at `m` shows l1 over l2, and writes go to `u`.
fn check_union(m: &Path, u: &Path) {
    assert_eq!(fs::read(m.join("a")).unwrap(), b"from l1\n");
    assert_eq!(fs::read(m.join("b")).unwrap(), b"from l2\n");
    fs::write(m.join("new"), b"n").unwrap();
    assert_eq!(fs::read(u.join("new")).unwrap(), b"n");
}

/// Guard for a mount made by mount(8): unmounts on drop.
fn adopted(m: &Path) -> Mount {
    assert!(is_mounted(m), "{} is not mounted", m.display());
    let mut g = Mount::adopt(m);
    g.kind = MountKind::Unionfs;
    g.daemon_pids = daemon_pids(m);
    g
}

#[test]
fn helper_called_as_mount_8_does() {
    if !can_mount_fuse() {
        return;
    }
    let s = Scratch::new("helper");
    let (l1, l2, u, m) = branches(&s, "h");
    let helper = s.path("mount.fuse.unionfs");
    std::os::unix::fs::symlink(bin(), &helper).unwrap();
    let c = run(
        &helper,
        &[
            format!("{}:{}", l1.display(), l2.display()),
            m.display().to_string(),
            "-n".into(),
            "-o".into(),
            format!(
                "rw,upperdir={},_netdev,noauto,user,users,nofail,auto,defaults,x-systemd.idle-timeout=1",
                u.display()
            ),
        ],
    );
    assert!(c.ok(), "{c}");
    // It returned: the mount is live now.
    let g = adopted(&m);
    check_union(&m, &u);
    g.unmount();
    // Fake mode does nothing; bad calls are one line.
    let fake = run(&helper, &["/x:/y", m.to_str().unwrap(), "-f"]);
    assert!(fake.ok() && !is_mounted(&m), "{fake}");
    let bad = run(&helper, &["/x:/y"]);
    assert!(!bad.ok() && bad.stderr.trim().lines().count() == 1, "{bad}");
    let mode = run(
        &helper,
        &[
            &format!("{}=RW:{}=XX", u.display(), l1.display()),
            m.to_str().unwrap(),
        ],
    );
    assert!(
        !mode.ok() && mode.stderr.contains("unknown branch mode 'XX'"),
        "{mode}"
    );
    assert_eq!(mode.stderr.trim().lines().count(), 1, "{mode}");
}

/// A helper link in /sbin made by this test, removed on drop if still ours.
struct SbinLink(PathBuf);

impl SbinLink {
    fn install(name: &str) -> Option<SbinLink> {
        let p = Path::new("/sbin").join(name);
        if let Ok(t) = fs::read_link(&p) {
            if t == bin() {
                // Left by an interrupted run of this test: adopt it.
                return Some(SbinLink(p));
            }
        }
        if fs::symlink_metadata(&p).is_ok() {
            skip_or_fail(&format!("{} exists and is not ours", p.display()));
            return None;
        }
        std::os::unix::fs::symlink(bin(), &p).unwrap();
        Some(SbinLink(p))
    }
}

impl Drop for SbinLink {
    fn drop(&mut self) {
        if fs::read_link(&self.0).is_ok_and(|t| t == bin()) {
            let _ = fs::remove_file(&self.0);
        }
    }
}

#[test]
fn fstab_and_mount_t() {
    if !can_mount_fuse() {
        return;
    }
    let Some(_fuse) = SbinLink::install("mount.fuse.unionfs") else {
        return;
    };
    let s = Scratch::new("fstab");
    let (l1, l2, u1, m1) = branches(&s, "a");
    let (_, _, u2, m2) = branches(&s, "b");
    let fstab = s.path("fstab");
    fs::write(
        &fstab,
        format!(
            "# unionfs test fstab\n\
             {l1}:{l2}  {m1}  fuse.unionfs  upperdir={u1},nofail,_netdev,x-systemd.automount,defaults  0 0\n\
             none  {m2}  fuse.unionfs  br={u2}=rw:{l1}=ro+wh:{l2}=ro,noauto  0 0\n",
            l1 = l1.display(),
            l2 = l2.display(),
            m1 = m1.display(),
            m2 = m2.display(),
            u1 = u1.display(),
            u2 = u2.display(),
        ),
    )
    .unwrap();
    let all = run("mount", &["-T".as_ref(), fstab.as_os_str(), "-a".as_ref()]);
    assert!(all.ok(), "{all}");
    let g1 = adopted(&m1);
    assert!(!is_mounted(&m2), "a noauto line was mounted by -a");
    assert_eq!(mount_at(&m1).map(|i| i.fstype), Some("fuse.unionfs".into()));
    check_union(&m1, &u1);
    let one = run("mount", &["-T".as_ref(), fstab.as_os_str(), m2.as_os_str()]);
    assert!(one.ok(), "{one}");
    let g2 = adopted(&m2);
    check_union(&m2, &u2);
    g1.unmount();
    g2.unmount();

    // mount -t fuse.unionfs on the command line, native source.
    let (_, _, u3, m3) = branches(&s, "c");
    let t = run(
        "mount",
        &[
            "-t".into(),
            "fuse.unionfs".into(),
            "-o".into(),
            format!("upperdir={}", u3.display()),
            format!("{}:{}", l1.display(), l2.display()),
            m3.display().to_string(),
        ],
    );
    assert!(t.ok(), "{t}");
    let g3 = adopted(&m3);
    check_union(&m3, &u3);
    g3.unmount();
}

#[test]
fn mount_t_unionfs_when_no_other_helper_owns_the_name() {
    if !can_mount_fuse() {
        return;
    }
    if fs::symlink_metadata("/sbin/mount.unionfs")
        .is_ok_and(|_| fs::read_link("/sbin/mount.unionfs").map_or(true, |t| t != bin()))
    {
        // Debian's unionfs-fuse owns the name: nothing of ours to test.
        eprintln!("SKIP: /sbin/mount.unionfs belongs to another package");
        return;
    }
    let Some(_link) = SbinLink::install("mount.unionfs") else {
        return;
    };
    let s = Scratch::new("mount-t");
    let (l1, l2, u, m) = branches(&s, "d");
    let t = run(
        "mount",
        &[
            "-t".into(),
            "unionfs".into(),
            "-o".into(),
            format!(
                "dirs={}=rw:{}=ro:{}=ro",
                u.display(),
                l1.display(),
                l2.display()
            ),
            "none".into(),
            m.display().to_string(),
        ],
    );
    assert!(t.ok(), "{t}");
    let g = adopted(&m);
    check_union(&m, &u);
    g.unmount();
}

#[test]
fn install_script_records_and_removes_only_its_files() {
    let s = Scratch::new("install");
    let (prefix, sbin, from) = (s.dir("prefix"), s.dir("sbin"), s.dir("from"));
    std::os::unix::fs::symlink(bin(), from.join("unionfs")).unwrap();
    std::os::unix::fs::symlink(
        bin().with_file_name("unionfs-run"),
        from.join("unionfs-run"),
    )
    .unwrap();
    // Someone else's mount.unionfs (Debian's unionfs-fuse) must stay.
    file(&sbin, "mount.unionfs", b"#!/bin/sh\necho theirs\n", 0o755);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh");
    let sh = |args: &[&Path]| {
        let mut c = std::process::Command::new("sh");
        c.arg(&script)
            .args(args)
            .env("SBINDIR", &sbin)
            .env("BINDIR_FROM", &from);
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&[&prefix]);
    let unionfs = prefix.join("bin/unionfs");
    assert!(unionfs.is_file());
    assert!(prefix.join("bin/unionfs-run").is_file());
    assert_eq!(
        fs::read_link(sbin.join("mount.fuse.unionfs")).unwrap(),
        unionfs
    );
    assert_eq!(
        fs::read(sbin.join("mount.unionfs")).unwrap(),
        b"#!/bin/sh\necho theirs\n"
    );
    let v = run(sbin.join("mount.fuse.unionfs"), &["/a"]);
    assert!(
        !v.ok() && v.stderr.contains("mount.fuse.unionfs SOURCE MOUNTPOINT"),
        "{v}"
    );
    // man pages and completions, generated from the command line
    let man = fs::read_to_string(prefix.join("share/man/man1/unionfs.1")).unwrap();
    assert!(man.contains(".TH unionfs"), "{man}");
    assert!(prefix.join("share/man/man1/unionfs-mount.1").is_file());
    let run_man = fs::read_to_string(prefix.join("share/man/man1/unionfs-run.1")).unwrap();
    assert!(run_man.contains(".TH unionfs-run"), "{run_man}");
    assert!(prefix.join("share/man/man1/unionfs-run-commit.1").is_file());
    let run_bash = prefix.join("share/bash-completion/completions/unionfs-run");
    assert!(fs::read_to_string(&run_bash)
        .unwrap()
        .contains("_unionfs__run()"));
    let bash = prefix.join("share/bash-completion/completions/unionfs");
    assert!(fs::read_to_string(&bash).unwrap().contains("_unionfs()"));
    assert!(prefix.join("share/zsh/site-functions/_unionfs").is_file());
    assert!(prefix
        .join("share/fish/vendor_completions.d/unionfs.fish")
        .is_file());
    // Installing again is harmless; uninstall removes exactly ours.
    sh(&[&prefix]);
    sh(&[Path::new("--uninstall"), &prefix]);
    assert!(!unionfs.exists() && !prefix.join("bin/unionfs-run").exists());
    assert!(!prefix.join("share/man/man1/unionfs.1").exists() && !bash.exists());
    assert!(fs::symlink_metadata(sbin.join("mount.fuse.unionfs")).is_err());
    assert!(sbin.join("mount.unionfs").is_file());
}
