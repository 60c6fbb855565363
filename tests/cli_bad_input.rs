//! Bad command lines: each must exit non-zero with exactly one stderr line that starts
//! with `unionfs: ` and names the problem, leave nothing mounted, start no daemon, and
//! create or change nothing (the whole scratch tree, upper included, is compared before and
//! after). The overlay dialect (`-o lowerdir=...`) only warns about unknown keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// A scratch dir with `l1`, `l2`, `upper`, `mnt` (plus whatever the case adds).
struct Case {
    s: Scratch,
    l1: PathBuf,
    l2: PathBuf,
    upper: PathBuf,
    mnt: PathBuf,
}

impl Case {
    fn new(tag: &str) -> Case {
        let s = Scratch::new(tag);
        let l1 = s.dir("l1");
        let l2 = s.dir("l2");
        file(&l1, "a", b"a", 0o644);
        file(&l2, "b", b"b", 0o644);
        Case {
            l1,
            l2,
            upper: s.dir("upper"),
            mnt: s.dir("mnt"),
            s,
        }
    }
}

fn os(p: &Path) -> OsString {
    p.as_os_str().to_os_string()
}

fn lowers(ps: &[&Path]) -> OsString {
    let mut s = OsString::new();
    for (i, p) in ps.iter().enumerate() {
        if i > 0 {
            s.push(":");
        }
        s.push(p);
    }
    s
}

/// Runs `unionfs args...` in the case's scratch dir and asserts a clean rejection.
/// `tokens`: the message must contain at least one of them (the offending name).
/// `keep_mounts`: mount points under the scratch dir that existed before (and must be the
/// only ones after).
fn assert_rejected(c: &Case, args: &[OsString], tokens: &[&str], keep_mounts: &[&Path]) {
    if !can_mount_fuse() {
        return;
    }
    let before = snapshot(&c.s.root);
    let mounts_before: Vec<PathBuf> = mounts_under(&c.s.root)
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    let out = run_bin(args);
    let mounts_after: Vec<PathBuf> = mounts_under(&c.s.root)
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    let daemons = daemon_pids_under(&c.s.root);
    // clean up first if the binary wrongly mounted something (the Scratch guard would do it
    // too, but the assertions below should not depend on that)
    for m in mounts_after.iter().filter(|m| !mounts_before.contains(m)) {
        let _ = nix::mount::umount2(m.as_path(), nix::mount::MntFlags::MNT_DETACH);
    }

    assert!(!out.ok(), "bad input was accepted:\n{out}");
    assert!(
        out.status.code().is_some(),
        "killed by a signal instead of exiting non-zero:\n{out}"
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr must be exactly one line:\n{out}");
    assert!(
        lines[0].starts_with("unionfs: "),
        "the stderr line must start with `unionfs: `:\n{out}"
    );
    assert!(
        tokens.iter().any(|t| lines[0].contains(t)),
        "the message should name the problem (one of {tokens:?}):\n{out}"
    );
    assert_eq!(
        mounts_after, mounts_before,
        "mount table under the scratch dir changed:\n{out}"
    );
    let expect_mounts: Vec<PathBuf> = keep_mounts.iter().map(|p| p.to_path_buf()).collect();
    assert_eq!(mounts_before, expect_mounts, "test setup");
    assert!(
        daemons.is_empty(),
        "unionfs processes left running: {daemons:?}"
    );
    let after = snapshot(&c.s.root);
    assert_tree_eq(
        "the command created or changed files although it failed",
        &before,
        &after,
        Cmp::EXACT,
    );
}

fn mount_args(lowers: OsString, upper: OsString, mnt: OsString) -> Vec<OsString> {
    vec!["mount".into(), lowers, upper, mnt]
}

#[test]
fn missing_lower_dir() {
    let c = Case::new("bad-missing-lower");
    let missing = c.s.path("no-such-lower");
    let args = mount_args(lowers(&[&missing, &c.l2]), os(&c.upper), os(&c.mnt));
    assert_rejected(&c, &args, &["no-such-lower"], &[]);
}

#[test]
fn missing_upper_dir() {
    let c = Case::new("bad-missing-upper");
    let missing = c.s.path("no-such-upper");
    let args = mount_args(lowers(&[&c.l1, &c.l2]), os(&missing), os(&c.mnt));
    assert_rejected(&c, &args, &["no-such-upper"], &[]);
}

#[test]
fn lower_is_a_regular_file() {
    let c = Case::new("bad-lower-file");
    let f = file(&c.s.root, "lower-is-file", b"x", 0o644);
    let args = mount_args(lowers(&[&c.l1, &f]), os(&c.upper), os(&c.mnt));
    assert_rejected(&c, &args, &["lower-is-file"], &[]);
}

#[test]
fn upper_is_a_regular_file() {
    let c = Case::new("bad-upper-file");
    let f = file(&c.s.root, "upper-is-file", b"x", 0o644);
    let args = mount_args(lowers(&[&c.l1, &c.l2]), os(&f), os(&c.mnt));
    assert_rejected(&c, &args, &["upper-is-file"], &[]);
}

#[test]
fn mountpoint_is_a_regular_file() {
    let c = Case::new("bad-mnt-file");
    let f = file(&c.s.root, "mnt-is-file", b"x", 0o644);
    let args = mount_args(lowers(&[&c.l1, &c.l2]), os(&c.upper), os(&f));
    assert_rejected(&c, &args, &["mnt-is-file"], &[]);
}

#[test]
fn same_lower_twice() {
    let c = Case::new("bad-dup-lower");
    let d = c.s.dir("dup-lower");
    let args = mount_args(lowers(&[&d, &c.l1, &d]), os(&c.upper), os(&c.mnt));
    assert_rejected(&c, &args, &["dup-lower"], &[]);
}

#[test]
fn same_lower_twice_through_a_symlink() {
    let c = Case::new("bad-dup-symlink");
    let d = c.s.dir("dup-target");
    let alias = c.s.path("dup-alias");
    std::os::unix::fs::symlink(&d, &alias).unwrap();
    let args = mount_args(lowers(&[&d, &alias]), os(&c.upper), os(&c.mnt));
    assert_rejected(&c, &args, &["dup-target", "dup-alias"], &[]);
}

#[test]
fn lower_is_also_the_upper() {
    let c = Case::new("bad-lower-upper");
    let d = c.s.dir("both-lower-and-upper");
    let args = mount_args(lowers(&[&c.l1, &d]), os(&d), os(&c.mnt));
    assert_rejected(&c, &args, &["both-lower-and-upper"], &[]);
}

#[test]
fn upper_inside_a_lower() {
    let c = Case::new("bad-upper-in-lower");
    let outer = c.s.dir("outer-lower");
    let inner = c.s.dir("outer-lower/inner-upper");
    let args = mount_args(lowers(&[&c.l1, &outer]), os(&inner), os(&c.mnt));
    assert_rejected(&c, &args, &["inner-upper", "outer-lower"], &[]);
}

#[test]
fn mountpoint_inside_a_lower() {
    let c = Case::new("bad-mnt-in-lower");
    let outer = c.s.dir("outer-lower");
    let inner = c.s.dir("outer-lower/inner-mnt");
    let args = mount_args(lowers(&[&outer, &c.l2]), os(&c.upper), os(&inner));
    assert_rejected(&c, &args, &["inner-mnt", "outer-lower"], &[]);
}

#[test]
fn lower_inside_the_mountpoint() {
    let c = Case::new("bad-lower-in-mnt");
    let outer = c.s.dir("outer-mnt");
    let inner = c.s.dir("outer-mnt/inner-lower");
    let args = mount_args(lowers(&[&c.l1, &inner]), os(&c.upper), os(&outer));
    assert_rejected(&c, &args, &["inner-lower", "outer-mnt"], &[]);
}

#[test]
fn missing_mountpoint() {
    let c = Case::new("bad-missing-mnt");
    let missing = c.s.path("no-such-mnt");
    let args = mount_args(lowers(&[&c.l1, &c.l2]), os(&c.upper), os(&missing));
    assert_rejected(&c, &args, &["no-such-mnt"], &[]);
    assert!(!missing.exists(), "the mountpoint was created");
}

#[test]
fn mountpoint_already_a_mount_point() {
    if !can_mount_fuse() {
        return;
    }
    let c = Case::new("bad-busy-mnt");
    let busy = c.s.dir("busy-mnt");
    nix::mount::mount(
        Some("tmpfs"),
        busy.as_path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m,mode=0755"),
    )
    .expect("mount a tmpfs");
    let tmpfs = Mount::adopt(&busy);
    let args = mount_args(lowers(&[&c.l1, &c.l2]), os(&c.upper), os(&busy));
    assert_rejected(&c, &args, &["busy-mnt"], &[&busy]);
    assert_eq!(mount_at(&busy).map(|m| m.fstype), Some("tmpfs".to_string()));
    drop(tmpfs);
    assert!(!is_mounted(&busy));
}

#[test]
fn unknown_option_in_native_dialect() {
    let c = Case::new("bad-option");
    let mut args = mount_args(lowers(&[&c.l1, &c.l2]), os(&c.upper), os(&c.mnt));
    args.push("-o".into());
    args.push("bogus=1".into());
    assert_rejected(&c, &args, &["bogus"], &[]);
}

#[test]
fn unknown_option_in_native_dialect_before_the_branches() {
    let c = Case::new("bad-option-first");
    let mut args: Vec<OsString> = vec!["mount".into(), "-o".into(), "bogus=1".into()];
    args.extend(
        mount_args(lowers(&[&c.l1, &c.l2]), os(&c.upper), os(&c.mnt))
            .into_iter()
            .skip(1),
    );
    assert_rejected(&c, &args, &["bogus"], &[]);
}

// ---------------------------------------------------------------------------------------
// Overlay dialect: unknown keys are warned about and ignored
// ---------------------------------------------------------------------------------------

fn overlay_dialect_mounts(tag: &str, extra_before: &str, extra_after: &str, warn: Option<&str>) {
    if !can_mount_fuse() {
        return;
    }
    let c = Case::new(tag);
    let work = c.s.dir("work");
    let mut opts = OsString::from(extra_before);
    opts.push("lowerdir=");
    opts.push(lowers(&[&c.l1, &c.l2]));
    opts.push(",upperdir=");
    opts.push(&c.upper);
    opts.push(",workdir=");
    opts.push(&work);
    opts.push(extra_after);
    let m = Mount::unionfs_args(&["-o".into(), opts, os(&c.mnt)], &c.mnt);
    if let Some(key) = warn {
        assert!(
            m.stderr.contains(key),
            "the unknown option {key:?} should be warned about on stderr, got {:?}",
            m.stderr
        );
    }
    let mut names: Vec<String> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(fs::read(m.mnt.join("a")).unwrap(), b"a");
    assert_eq!(fs::read(m.mnt.join("b")).unwrap(), b"b");
    m.unmount();
    assert!(mounts_under(&c.s.root).is_empty());
}

#[test]
fn overlay_dialect_unknown_option_is_ignored() {
    overlay_dialect_mounts("ovl-unknown", "", ",bogus=1", Some("bogus"));
}

#[test]
fn overlay_dialect_unknown_option_first_is_ignored() {
    overlay_dialect_mounts("ovl-unknown-first", "frobnicate,", "", Some("frobnicate"));
}

#[test]
fn overlay_dialect_podman_style_empty_items() {
    // containers-storage passes a trailing ",", and ",,volatile" for --rm containers
    overlay_dialect_mounts("ovl-podman", "", ",,volatile,", None);
}
