//! unionfs without privilege (through fusermount3), and mount points
//! inside a branch: the union shows what lies under them (an empty
//! directory here), as root (mount clones) and without (sealed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

struct Undo(Box<dyn FnMut()>);

impl Drop for Undo {
    fn drop(&mut self) {
        (self.0)();
    }
}

fn lower_with_a_submount(s: &Scratch) -> (std::path::PathBuf, Undo) {
    let l = s.dir("lower");
    file(&l, "plain", b"p", 0o644);
    file(&l, "sub/under-the-mount", b"hidden by the tmpfs", 0o644);
    let sub = l.join("sub");
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&sub)
        .status()
        .unwrap()
        .success());
    fs::write(sub.join("on-the-tmpfs"), b"t").unwrap();
    let undo = Undo(Box::new(move || {
        let _ = Command::new("umount").arg("-l").arg(&sub).status();
    }));
    (l, undo)
}

#[test]
fn root_mount_shows_what_lies_under_a_mount_point() {
    if !can_mount_fuse() {
        return;
    }
    let s = Scratch::new("submount-root");
    let (l, _undo) = lower_with_a_submount(&s);
    let u = s.dir("upper");
    let mnt = s.dir("mnt");
    let m = Mount::unionfs(&[&l], Some(&u), &mnt);
    let names: Vec<_> = fs::read_dir(m.mnt.join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("under-the-mount")]);
}

#[test]
fn unprivileged_mount_through_fusermount3() {
    if !can_mount_fuse() {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip_or_fail("setpriv (util-linux) is missing");
        return;
    }
    let old = fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
    let _restore = Undo(Box::new(move || {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(old));
    }));
    // As udev sets it on a normal host (this machine leaves it 0600).
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    let s = Scratch::new_in("unpriv", Path::new("/dev/shm"));
    let (l, _undo) = lower_with_a_submount(&s);
    // A directory the daemon's user may not search: its attributes still
    // show (the union reads its markers without entering it).
    file(&l, "private/secret", b"s", 0o600);
    fs::set_permissions(l.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    let u = s.dir("upper");
    let mnt = s.dir("mnt");
    for d in [&u, &mnt] {
        nix::unistd::chown(
            d.as_path(),
            Some(nix::unistd::Uid::from_raw(65534)),
            Some(nix::unistd::Gid::from_raw(65534)),
        )
        .unwrap();
    }
    let nobody = |args: &[&std::ffi::OsStr]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(args)
            // Its control socket in /tmp/unionfs-65534, not in a runtime
            // directory of the caller's it could not use.
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap()
    };
    let o = nobody(&[
        bin().as_os_str(),
        "mount".as_ref(),
        l.as_os_str(),
        u.as_os_str(),
        mnt.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = Mount::adopt(&mnt);
    let info = mount_at(&mnt).unwrap();
    assert_eq!(info.fstype, "fuse.unionfs");
    assert!(
        info.options.contains("nosuid") && info.options.contains("nodev"),
        "{info:?}"
    );
    // The daemon runs as the unprivileged user.
    let pids = daemon_pids(&mnt);
    assert!(!pids.is_empty());
    for p in pids {
        let status = fs::read_to_string(format!("/proc/{p}/status")).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid_line.split_whitespace().nth(1) == Some("65534"),
            "{uid_line}"
        );
    }
    let o = nobody(&[
        "stat".as_ref(),
        "-c".as_ref(),
        "%a %u".as_ref(),
        m.mnt.join("private").as_os_str(),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "700 0\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The mount point inside the branch is sealed: empty, never crossed.
    let o = nobody(&["ls".as_ref(), "-A".as_ref(), m.mnt.join("sub").as_os_str()]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "");
    // Writes work, and copy-up keeps the daemon's owner where it may not chown.
    let o = nobody(&[
        "sh".as_ref(),
        "-c".as_ref(),
        format!("echo new > {0}/plain && cat {0}/plain", m.mnt.display()).as_ref(),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "new\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(fs::read(l.join("plain")).unwrap(), b"p");
    // Root reaches the user's daemon too (it looks where that user's
    // sockets are), as `unionfs umount` must to have the upper complete.
    let o = run_bin(&["branch".as_ref(), "list".as_ref(), mnt.as_os_str()]);
    assert!(o.ok(), "root cannot reach the user's union: {o}");
    assert!(o.stdout.contains(&*u.to_string_lossy()), "{o}");
    let o = nobody(&[bin().as_os_str(), "umount".as_ref(), mnt.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        !is_mounted(&mnt)
    }));
    drop(m);
}
