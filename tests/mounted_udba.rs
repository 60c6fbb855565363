//! Direct branch access (`udba=none|reval|notify`) and statfs (`sum`), through a mounted
//! union. For each udba mode a lower is changed behind the mount's back after the kernel
//! cached it — a new file, a removed file, a file's content, a file renamed over, a new
//! entry in a listed directory — and the mount is checked: `reval` shows every change at
//! the next access, `notify` within a short wait, `none` may show the old state (documented)
//! but never fails on a name the kernel did not cache in a directory the union has not
//! listed (a listed one is in the layer index: `mounted_read::deep_stack_*`). Under `notify` the union's own
//! writes stay right although each one raises watch events.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

struct Setup {
    s: Scratch,
    l: PathBuf,
    u: PathBuf,
    mnt: PathBuf,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let s = Scratch::new(tag);
        let t = Setup {
            l: s.dir("lower"),
            u: s.dir("upper"),
            mnt: s.dir("mnt"),
            s,
        };
        file(&t.l, "old", b"one", 0o644);
        file(&t.l, "gone", b"bye", 0o644);
        file(&t.l, "rep", b"rep-1", 0o644);
        mkdir(&t.l, "d", 0o755);
        file(&t.l, "d/a", b"a", 0o644);
        // `d` is merged: its union mtime is the upper's, which the lower
        // change below leaves alone.
        mkdir(&t.u, "d", 0o755);
        file(&t.u, "d/b", b"b", 0o644);
        t
    }

    fn mount(&self, opts: &str) -> Mount {
        Mount::unionfs_opts(&self.l, &self.u, &self.mnt, opts)
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Makes the kernel cache everything the change below touches.
    fn prime(&self) {
        assert!(fs::metadata(self.m("new")).is_err());
        assert_eq!(fs::read(self.m("old")).unwrap(), b"one");
        assert_eq!(fs::read(self.m("gone")).unwrap(), b"bye");
        assert_eq!(fs::read(self.m("rep")).unwrap(), b"rep-1");
        assert_eq!(names(&self.m("d")), set(&["a", "b"]));
    }

    /// Changes the lower directly.
    fn change_lower(&self) {
        file(&self.l, "new", b"fresh", 0o644);
        fs::remove_file(self.l.join("gone")).unwrap();
        // Same size: only the mtime says the content changed.
        fs::write(self.l.join("old"), b"two").unwrap();
        fs::write(self.l.join("rep.tmp"), b"rep-2-new").unwrap();
        fs::rename(self.l.join("rep.tmp"), self.l.join("rep")).unwrap();
        file(&self.l, "d/c", b"c", 0o644);
    }

    /// Every changed name the mount does not show as it now is (all of them, so a
    /// failure says which kinds of change were missed).
    fn all_seen(&self) -> Result<(), String> {
        let mut missed = Vec::new();
        let checks: [(&str, Option<&[u8]>); 5] = [
            // Looked up before `d` is listed again: found by a walk of the branches,
            // not ruled out by the listing `prime` took (no layer index but under `none`).
            ("d/c", Some(b"c")),
            ("new", Some(b"fresh")),
            ("gone", None),
            ("old", Some(b"two")),
            ("rep", Some(b"rep-2-new")),
        ];
        for (name, want) in checks {
            let got = fs::read(self.m(name)).ok();
            if got.as_deref() != want {
                let s = |v: Option<Vec<u8>>| v.map(|v| String::from_utf8_lossy(&v).into_owned());
                missed.push(format!(
                    "{name}: {:?}, want {:?}",
                    s(got),
                    s(want.map(<[u8]>::to_vec))
                ));
            }
        }
        let d = names(&self.m("d"));
        if d != set(&["a", "b", "c"]) {
            missed.push(format!("d lists {d:?}"));
        }
        if missed.is_empty() {
            Ok(())
        } else {
            Err(missed.join("; "))
        }
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn udba_reval_sees_lower_changes_at_next_access() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("udba-reval");
    let m = t.mount("udba=reval");
    t.prime();
    t.change_lower();
    if let Err(e) = t.all_seen() {
        panic!("udba=reval: a change of the lower was not seen at once: {e}");
    }
    // And back: a file removed from the lower behind the mount disappears.
    fs::remove_file(t.l.join("new")).unwrap();
    assert!(fs::metadata(t.m("new")).is_err());
    // An upper-only directory that gets a lower instance lists both.
    mkdir(&t.u, "e", 0o755);
    file(&t.u, "e/up", b"", 0o644);
    assert_eq!(names(&t.m("e")), set(&["up"]));
    mkdir(&t.l, "e", 0o755);
    file(&t.l, "e/low", b"", 0o644);
    assert_eq!(names(&t.m("e")), set(&["up", "low"]));
    m.unmount();
}

#[test]
fn udba_notify_sees_lower_changes_promptly() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("udba-notify");
    let m = t.mount("udba=notify");
    t.prime();
    t.change_lower();
    let mut last = Ok(());
    let seen = wait_until(Duration::from_secs(2), || {
        last = t.all_seen();
        last.is_ok()
    });
    assert!(seen, "udba=notify: not seen within 2 s: {last:?}");
    // A change in a directory looked up later than the mount is watched too.
    mkdir(&t.l, "d/sub", 0o755);
    assert_eq!(names(&t.m("d/sub")), set(&[]));
    file(&t.l, "d/sub/x", b"x", 0o644);
    let mut got = BTreeSet::new();
    let seen = wait_until(Duration::from_secs(2), || {
        got = names(&t.m("d/sub"));
        got == set(&["x"])
    });
    assert!(seen, "udba=notify: d/sub lists {got:?}");
    // A union directory that was upper-only gets a lower instance: its listing
    // changes without an event in any directory of its own.
    mkdir(&t.u, "e", 0o755);
    file(&t.u, "e/up", b"", 0o644);
    assert_eq!(names(&t.m("e")), set(&["up"]));
    fs::create_dir(t.s.path("e-new")).unwrap();
    file(&t.s.root, "e-new/low", b"", 0o644);
    fs::rename(t.s.path("e-new"), t.l.join("e")).unwrap();
    let seen = wait_until(Duration::from_secs(2), || {
        got = names(&t.m("e"));
        got == set(&["up", "low"])
    });
    assert!(seen, "udba=notify: e lists {got:?}");
    m.unmount();
}

#[test]
fn udba_none_trusts_caches_but_finds_uncached_names() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("udba-none");
    let m = t.mount("udba=none");
    t.prime();
    t.change_lower();
    // Documented: what the kernel cached may stay as it was (a day by default).
    // A name it never looked up, in a directory the union never listed (so not in the
    // layer index), is found in the branches as they are now.
    file(&t.l, "never-looked-up", b"here", 0o644);
    assert_eq!(fs::read(t.m("never-looked-up")).unwrap(), b"here");
    // Cached names answer either the old or the new state, never garbage.
    for (name, old, new) in [
        ("old", Some(&b"one"[..]), Some(&b"two"[..])),
        ("rep", Some(&b"rep-1"[..]), Some(&b"rep-2-new"[..])),
        ("new", None, Some(&b"fresh"[..])),
    ] {
        let got = fs::read(t.m(name)).ok();
        assert!(
            got.as_deref() == old || got.as_deref() == new,
            "{name}: {got:?}"
        );
    }
    m.unmount();
}

#[test]
fn udba_notify_own_writes_stay_right() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("udba-notify-own");
    let m = t.mount("udba=notify");
    let dir = t.m("d");
    for i in 0..200 {
        let a = dir.join(format!("w{i}"));
        let b = dir.join(format!("r{i}"));
        let body = format!("body {i}").repeat(i % 7 + 1);
        fs::write(&a, &body).unwrap();
        assert_eq!(fs::read_to_string(&a).unwrap(), body);
        fs::rename(&a, &b).unwrap();
        assert!(fs::metadata(&a).is_err(), "w{i} still there after rename");
        assert_eq!(fs::read_to_string(&b).unwrap(), body);
        // Rewrite in place (events on the upper file) and read back.
        fs::write(&b, format!("again {i}")).unwrap();
        assert_eq!(fs::read_to_string(&b).unwrap(), format!("again {i}"));
        if i % 2 == 0 {
            fs::remove_file(&b).unwrap();
            assert!(fs::metadata(&b).is_err());
        }
        // A lower file copied up and removed: a whiteout written, events raised.
        if i % 50 == 0 {
            fs::write(t.m("old"), format!("up {i}")).unwrap();
            assert_eq!(fs::read_to_string(t.m("old")).unwrap(), format!("up {i}"));
        }
    }
    let mut want: BTreeSet<String> = (0..200)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("r{i}"))
        .collect();
    want.insert("a".into());
    want.insert("b".into());
    // Let the last events arrive, then list again: still the same tree.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(names(&dir), want);
    m.unmount();
}

/// Mounts a tmpfs of `size` at `dir`.
fn tmpfs(dir: &Path, size: &str) {
    let out = run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            dir.to_str().unwrap(),
        ],
    );
    assert!(out.ok(), "{out}");
}

fn umount(dir: &Path) {
    let out = run("umount", &[dir]);
    assert!(out.ok(), "{out}");
}

#[test]
fn statfs_upper_by_default_and_sum_counts_each_filesystem_once() {
    if !can_mount_fuse() {
        return;
    }
    let s = Scratch::new("statfs-sum");
    let (a, b, mnt) = (s.dir("fs-a"), s.dir("fs-b"), s.dir("mnt"));
    tmpfs(&a, "8m");
    tmpfs(&b, "24m");
    // Two lowers on filesystem a (counted once), the upper on b.
    let (l1, l2, u) = (a.join("l1"), a.join("l2"), b.join("u"));
    for d in [&l1, &l2, &u] {
        fs::create_dir(d).unwrap();
    }
    let lowers = format!("{}:{}", l1.display(), l2.display());
    let mount = |opts: Option<&str>| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "mount".as_ref(),
            lowers.as_ref(),
            u.as_os_str(),
            mnt.as_os_str(),
        ];
        if let Some(o) = opts {
            args.push("-o".as_ref());
            args.push(o.as_ref());
        }
        Mount::unionfs_args(&args, &mnt)
    };

    let m = mount(None);
    let (sa, sb, su) = (
        nix::sys::statvfs::statvfs(&a).unwrap(),
        nix::sys::statvfs::statvfs(&b).unwrap(),
        nix::sys::statvfs::statvfs(&mnt).unwrap(),
    );
    assert_eq!(
        su.blocks() * su.fragment_size(),
        sb.blocks() * sb.fragment_size()
    );
    assert_eq!(su.files(), sb.files());
    m.unmount();

    let m = mount(Some("sum"));
    let su = nix::sys::statvfs::statvfs(&mnt).unwrap();
    let bytes = |s: &nix::sys::statvfs::Statvfs| s.blocks() * s.fragment_size();
    assert_eq!(bytes(&su), bytes(&sa) + bytes(&sb), "sum of 8m + 24m");
    assert_eq!(bytes(&su), 32 << 20);
    assert_eq!(su.files(), sa.files() + sb.files());
    assert_eq!(
        su.blocks_free() * su.fragment_size(),
        sa.blocks_free() * sa.fragment_size() + sb.blocks_free() * sb.fragment_size()
    );
    m.unmount();

    // `nosum` after `sum` is the upper's again.
    let m = mount(Some("sum,nosum"));
    let su = nix::sys::statvfs::statvfs(&mnt).unwrap();
    assert_eq!(bytes(&su), 24 << 20);
    m.unmount();
    umount(&a);
    umount(&b);
}

/// Number of inotify watches the process `pid` holds (its fdinfo lists one line each).
fn inotify_watches(pid: i32) -> usize {
    let mut n = 0;
    for e in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let is_inotify =
            fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:inotify");
        if is_inotify {
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            n += info
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    n
}

#[test]
fn udba_notify_watches_follow_what_the_kernel_holds() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("udba-notify-forget");
    for i in 0..300 {
        mkdir(&t.l, &format!("many/d{i}"), 0o755);
    }
    let m = t.mount("udba=notify");
    let pid = *m.daemon_pids.first().expect("daemon pid");
    // The root's two branch directories.
    assert_eq!(inotify_watches(pid), 2);
    for i in 0..300 {
        assert!(t.m(&format!("many/d{i}")).is_dir());
    }
    // Every directory looked up is watched: root (2), many, and its 300.
    assert_eq!(inotify_watches(pid), 303);
    // Once the kernel forgets them (FORGET), their watches go.
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    let mut n = 0;
    let fell = wait_until(Duration::from_secs(10), || {
        n = inotify_watches(pid);
        n <= 3
    });
    assert!(fell, "{n} watches left after the kernel forgot");
    // And a directory looked up again is watched again.
    assert!(t.m("many/d7").is_dir());
    assert!(inotify_watches(pid) >= 3);
    m.unmount();
}

#[test]
fn udba_notify_keeps_mounts_on_union_directories() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("udba-notify-mounts");
    mkdir(&t.l, "mp", 0o755);
    let m = t.mount("udba=notify");
    let mp = t.m("mp");
    tmpfs(&mp, "1m");
    fs::write(mp.join("inside"), b"x").unwrap();
    assert!(fs::metadata(t.m("sentinel")).is_err());
    // An event naming `mp` (its lower instance chmod-ed, as a container's
    // /dev or /proc directory may be) makes the kernel revalidate the name,
    // which still leads to the same directory: what is mounted there stays.
    fs::set_permissions(
        t.l.join("mp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    // Events are handled in order: once the sentinel shows, so did `mp`'s.
    file(&t.l, "sentinel", b"", 0o644);
    let seen = wait_until(Duration::from_secs(2), || t.m("sentinel").exists());
    assert!(seen, "udba=notify: the sentinel never showed");
    // ... and the second invalidation of each (100 ms later) is done too.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        is_mounted(&mp),
        "the tmpfs on a union directory was detached"
    );
    assert_eq!(fs::read(mp.join("inside")).unwrap(), b"x");
    umount(&mp);
    assert_eq!(
        std::os::unix::fs::MetadataExt::mode(&fs::metadata(&mp).unwrap()) & 0o777,
        0o700
    );
    m.unmount();
}
