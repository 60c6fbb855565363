//! Power loss during copy-ups (issue 15, item 4): the guarantee is that after
//! a crash a copied-up file shows its old (lower) content or its new
//! content, never an empty or torn one, and no name that was not there.
//!
//! The upper (and so its workdir) lives on a loop-mounted ext4 image with a
//! journal. Small lower files are copied up by writing into them through
//! the mount — appends, overwrites in place, `O_TRUNC` rewrites — with no
//! fsync from the caller. Then the test makes the journal commit what the
//! union did to the namespace (an fsync of an unrelated file on the image:
//! one jbd2 commit, which in `data=ordered` does not write back delayed
//! allocations) and cuts the power: `FS_IOC_SHUTDOWN` with
//! `FS_SHUTDOWN_FLAGS_NOLOGFLUSH`, which drops everything not yet committed
//! (as a power cut would: the dirty page cache never reaches the disk).
//! Everything is unmounted, the image mounted again (the journal replays),
//! and the union mounted on it again; every file is checked through the
//! mount and in the upper itself.
//!
//! Without the sync of the copied data before the rename, ext4 commits the
//! rename with the inode's on-disk size still 0 (delayed allocation), so
//! the copies come back empty: the test fails, which is what it is for.
//!
//! `power_cut_with_copy_ups_pending`: the same with the power cut right
//! after the writes return (no forced commit first), so copy-ups the union
//! has staged but not yet published (`publish.rs`) are cut too: they must
//! come back as the old content (the next mount clears them: their data may
//! be gone), never as a name with no data. `..._commits_by_itself`: after
//! the 5 s journal commit instead.
//!
//! `sigkill_with_copy_ups_pending_loses_nothing`: a killed daemon is not a
//! power cut; its pending copy-ups are published by the next mount.
//! `a_mount_waits_for_the_daemon_still_using_its_upper`: `umount; mount`
//! does not let a new union clear what the old daemon still publishes.
//! `name_operations_right_after_copy_ups_see_them`: rename, link, unlink,
//! stat and listing of a file right after the write that copied it up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use unionfs::sys;

const FILES: usize = 48;
const SIZE: usize = 4096;

/// How a file is written into (the write is what copies it up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How {
    /// Appended to, no fsync: the copy is the old content; the appended
    /// bytes are the caller's own unsynced write, which ext4 may lose.
    Append,
    /// Overwritten in place (same size), no fsync: old or new, nothing else.
    Overwrite,
    /// Rewritten with `O_TRUNC`, then `fsync`: the caller asked, so new.
    TruncateSynced,
    /// Overwritten in place, then `fdatasync`: new.
    OverwriteSynced,
}

fn how(i: usize) -> How {
    match i % 4 {
        0 => How::Append,
        1 => How::Overwrite,
        2 => How::TruncateSynced,
        _ => How::OverwriteSynced,
    }
}

/// The union path of file `i`: a third at the root, the rest in two
/// directories (which are copied up first, synchronously).
fn rel(i: usize) -> String {
    match (i / 4) % 3 {
        0 => format!("f{i:02}"),
        1 => format!("d/f{i:02}"),
        _ => format!("d/e/f{i:02}"),
    }
}

fn old_content(i: usize) -> Vec<u8> {
    let mut r = Rng::new(1000 + i as u64);
    r.bytes(SIZE)
}

fn new_content(i: usize) -> Vec<u8> {
    let old = old_content(i);
    let fresh = Rng::new(5000 + i as u64).bytes(SIZE);
    match how(i) {
        How::Append => [old, b"appended".to_vec()].concat(),
        How::Overwrite | How::TruncateSynced | How::OverwriteSynced => fresh,
    }
}

fn write_through(mnt: &Path, i: usize) {
    let p = mnt.join(rel(i));
    let new = new_content(i);
    match how(i) {
        How::Append => {
            let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
            f.write_all(&new[SIZE..]).unwrap();
        }
        How::Overwrite | How::OverwriteSynced => {
            let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.seek(SeekFrom::Start(0)).unwrap();
            f.write_all(&new).unwrap();
            if how(i) == How::OverwriteSynced {
                f.sync_data().unwrap();
            }
        }
        How::TruncateSynced => {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&p)
                .unwrap();
            f.write_all(&new).unwrap();
            f.sync_all().unwrap();
        }
    }
}

/// The image, its mount point and the paths in it.
struct Image {
    image: PathBuf,
    at: PathBuf,
    upper: PathBuf,
}

impl Image {
    fn make(t: &Scratch) -> Image {
        let image = t.path("upper.img");
        fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
        // A journal (the default), data=ordered and delayed allocation (the
        // defaults): the setting where a rename can reach the disk before
        // the data of the file it names.
        let out = run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        assert!(out.ok(), "mkfs.ext4 failed:\n{out}");
        let at = t.dir("img");
        Image {
            upper: at.join("upper"),
            image,
            at,
        }
    }

    fn mount(&self) -> Mount {
        let out = run(
            "mount",
            &[
                "-o",
                "loop",
                self.image.to_str().unwrap(),
                self.at.to_str().unwrap(),
            ],
        );
        assert!(out.ok(), "cannot loop-mount the ext4 image:\n{out}");
        Mount::adopt(&self.at)
    }

    /// Unmounts the image; its loop device goes with it (autoclear), so
    /// the next mount reads the image afresh rather than finding the shut
    /// down filesystem still alive.
    fn unmount(&self, m: Mount) {
        // The backing files a FUSE mount passed through are let go a little
        // after its daemon exits (deferred fput): "busy" can be transient.
        let mut out = run("umount", &[self.at.to_str().unwrap()]);
        for _ in 0..100 {
            if out.ok() || !out.stderr.contains("busy") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            out = run("umount", &[self.at.to_str().unwrap()]);
        }
        assert!(out.ok(), "cannot unmount the image:\n{out}");
        drop(m);
        // The filesystem goes (and its loop device with it) only when its
        // last user does, which may be after umount returns; a mount before
        // that would find the shut down one again.
        let img = self.image.to_str().unwrap();
        assert!(
            wait_until(Duration::from_secs(30), || run("losetup", &["-j", img])
                .stdout
                .trim()
                .is_empty()),
            "the image's loop device stays: {}",
            run("losetup", &["-j", img])
        );
    }

    /// Power loss: the filesystem stops, its uncommitted journal dropped.
    fn shutdown(&self) {
        let dir = fs::File::open(&self.at).unwrap();
        sys::fs::shutdown_fs(dir.as_fd(), sys::fs::SHUTDOWN_NOLOGFLUSH).expect("FS_IOC_SHUTDOWN");
    }

    /// One journal commit of everything done so far to the namespace, and
    /// nothing else: fsync of a file of its own on the image.
    fn commit(&self) {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.at.join("commit-marker"))
            .unwrap();
        f.sync_all().unwrap();
    }
}

fn union_mount(lower: &Path, upper: &Path, mnt: &Path) -> Mount {
    Mount::unionfs(&[lower], Some(upper), mnt)
}

/// Unmounts a union whose upper filesystem was shut down: the daemon gets
/// EIO from the upper but must still go away.
fn unmount_after_shutdown(m: Mount) {
    let mnt = m.mnt.clone();
    let pids = m.daemon_pids.clone();
    let out = run("umount", &[mnt.to_str().unwrap()]);
    if !out.ok() {
        eprintln!("union umount after shutdown: {out}");
        let _ = run("umount", &["-l", mnt.to_str().unwrap()]);
    }
    assert!(
        wait_until(Duration::from_secs(20), || pids
            .iter()
            .all(|&p| !pid_alive(p))),
        "the daemon did not exit after its upper was shut down"
    );
    drop(m);
}

fn names(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Checks one file's bytes: old or new, nothing else (new only once the
/// caller synced it). Returns true for new.
fn judge(what: &str, i: usize, got: &[u8], problems: &mut Vec<String>) -> bool {
    let (old, new) = (old_content(i), new_content(i));
    let synced = matches!(how(i), How::TruncateSynced | How::OverwriteSynced);
    if got == new.as_slice() {
        return true;
    }
    if got == old.as_slice() && !synced {
        return false;
    }
    // An append the filesystem lost in part: the size it had already
    // committed, zeros where the unsynced bytes were. That is ext4's own
    // doing for any unsynced append; what the copy-up owes is the old part.
    let tail = got.get(SIZE..).unwrap_or_default();
    if how(i) == How::Append
        && got.len() <= new.len()
        && got.get(..SIZE) == Some(old.as_slice())
        && tail.iter().all(|&b| b == 0)
    {
        eprintln!(
            "{what} {}: the old content and {} zeros of a lost append",
            rel(i),
            tail.len()
        );
        return false;
    }
    let kind = if got.is_empty() {
        "empty".to_string()
    } else if got == old.as_slice() {
        "old content although the caller synced the new".to_string()
    } else {
        format!(
            "torn ({} bytes, {} of the first differ from old, {} from new, {} are zero)",
            got.len(),
            got.iter().zip(&old).filter(|(a, b)| a != b).count(),
            got.iter().zip(&new).filter(|(a, b)| a != b).count(),
            got.iter().filter(|&&b| b == 0).count(),
        )
    };
    problems.push(format!("{what} {} ({:?}): {kind}", rel(i), how(i)));
    false
}

/// The whole scenario. `commit_first`: force one journal commit of the
/// union's renames before the power cut (the hard case for the copy's
/// data); `settle`: wait this long before the cut instead (background work
/// and the 5 s journal commit may run).
fn scenario(tag: &str, commit_first: bool, settle: Duration) {
    let t = Scratch::new(tag);
    let lower = t.dir("lower");
    for i in 0..FILES {
        file(&lower, &rel(i), &old_content(i), 0o644);
    }
    let img = Image::make(&t);
    let img_mount = img.mount();
    fs::create_dir(&img.upper).unwrap();
    let mnt = t.dir("mnt");
    let m = union_mount(&lower, &img.upper, &mnt);
    // The synced ones first: their fsync publishes every copy-up before
    // it; the unsynced ones after them are the copy-ups a power cut may
    // find still pending.
    let synced = |i: &usize| matches!(how(*i), How::TruncateSynced | How::OverwriteSynced);
    for i in (0..FILES).filter(synced) {
        write_through(&mnt, i);
    }
    for i in (0..FILES).filter(|i| !synced(i)) {
        write_through(&mnt, i);
    }
    if commit_first {
        img.commit();
    }
    std::thread::sleep(settle);
    img.shutdown();
    unmount_after_shutdown(m);
    img.unmount(img_mount);

    // Back from the crash: the journal replays.
    let img_mount = img.mount();
    let work = img.upper.join(".wh..wh.unionfs/work");
    let leftovers = names(&work);
    eprintln!(
        "{tag}: the workdir holds {} entries after the crash: {leftovers:?}",
        leftovers.len()
    );
    let mut problems = Vec::new();
    // The upper itself: whatever it names is complete.
    let mut in_upper = 0;
    for i in 0..FILES {
        let p = img.upper.join(rel(i));
        if let Ok(got) = fs::read(&p) {
            in_upper += 1;
            judge("upper", i, &got, &mut problems);
        }
    }
    let m = union_mount(&lower, &img.upper, &mnt);
    assert!(
        names(&work).is_empty(),
        "mount left the crash's leftovers in the workdir: {:?}",
        names(&work)
    );
    let mut new = 0;
    for i in 0..FILES {
        match fs::read(mnt.join(rel(i))) {
            Ok(got) => new += usize::from(judge("union", i, &got, &mut problems)),
            Err(e) => problems.push(format!("union {}: {e}", rel(i))),
        }
    }
    // No leftover names: the union shows exactly the lower's names.
    for dir in ["", "d", "d/e"] {
        let want = names(&lower.join(dir));
        let got = names(&mnt.join(dir));
        if want != got {
            problems.push(format!("union {dir:?} lists {got:?}, want {want:?}"));
        }
    }
    eprintln!("{tag}: {in_upper} of {FILES} copies in the upper, {new} files show the new content");
    assert!(
        problems.is_empty(),
        "{tag}: after the power cut:\n{}",
        problems.join("\n")
    );
    // The union works on the replayed upper: a write after the crash sticks.
    fs::write(mnt.join("d/after"), b"after the crash").unwrap();
    m.unmount();
    let m = union_mount(&lower, &img.upper, &mnt);
    assert_eq!(fs::read(mnt.join("d/after")).unwrap(), b"after the crash");
    m.unmount();
    drop(img_mount);
}

#[test]
fn power_cut_after_copy_ups_are_committed() {
    if !can_loop_mount_ext4() {
        return;
    }
    scenario("crash-committed", true, Duration::ZERO);
}

#[test]
fn power_cut_with_copy_ups_pending() {
    if !can_loop_mount_ext4() {
        return;
    }
    scenario("crash-pending", false, Duration::ZERO);
}

#[test]
fn power_cut_after_the_journal_commits_by_itself() {
    if !can_loop_mount_ext4() {
        return;
    }
    // ext4 commits every 5 s; the data's writeback waits 30 s.
    scenario("crash-settled", false, Duration::from_secs(7));
}

/// A killed daemon is not a power cut: what it wrote is in the page cache
/// of the upper's filesystem. Copy-ups it had staged but not yet renamed
/// into the upper must not be lost with it: the next mount (same boot)
/// publishes them, so every file shows the content written before the kill.
#[test]
fn sigkill_with_copy_ups_pending_loses_nothing() {
    killed_with_copy_ups_pending("crash-killed", |_| {}, str::to_string);
}

/// A directory renamed while copy-ups below it are pending, then the
/// daemon killed: the next mount publishes what the killed daemon left
/// pending by the paths it recorded, which the rename changed. Each copy
/// must come back under the directory's new name with what was written.
#[test]
fn sigkill_after_a_directory_moved_over_pending_copy_ups() {
    killed_with_copy_ups_pending(
        "crash-moved",
        |mnt| fs::rename(mnt.join("d"), mnt.join("moved")).unwrap(),
        |rel| rel.replacen("d/", "moved/", 1),
    );
}

/// Writes the unsynced files through a union, runs `then` on the mount,
/// SIGKILLs the daemon and mounts again: nothing is left in the workdir,
/// and each file, at `now(its path)`, shows what was written.
fn killed_with_copy_ups_pending(name: &str, then: impl Fn(&Path), now: impl Fn(&str) -> String) {
    if !can_mount_fuse() {
        return;
    }
    let t = Scratch::new(name);
    let lower = t.dir("lower");
    for i in 0..FILES {
        file(&lower, &rel(i), &old_content(i), 0o644);
    }
    let upper = t.dir("upper");
    let mnt = t.dir("mnt");
    let unsynced: Vec<usize> = (0..FILES)
        .filter(|&i| matches!(how(i), How::Append | How::Overwrite))
        .collect();
    let m = union_mount(&lower, &upper, &mnt);
    for &i in &unsynced {
        write_through(&mnt, i);
    }
    then(&mnt);
    let pid = m.daemon_pids[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(20), || !pid_alive(pid)));
    let work = upper.join(".wh..wh.unionfs/work");
    eprintln!(
        "killed: {} copy-ups left staged in the workdir",
        names(&work).len()
    );
    let _ = run("umount", &["-l", mnt.to_str().unwrap()]);
    drop(m);
    let m = union_mount(&lower, &upper, &mnt);
    assert!(names(&work).is_empty(), "{:?}", names(&work));
    let mut problems = Vec::new();
    for &i in &unsynced {
        let at = now(&rel(i));
        match fs::read(mnt.join(&at)) {
            Ok(got) if got == new_content(i) => {}
            Ok(got) => {
                judge("union", i, &got, &mut problems);
                problems.push(format!("{at}: not the content written before the kill"));
            }
            Err(e) => problems.push(format!("{at}: {e}")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    m.unmount();
}

/// A FUSE unmount is answered before the daemon ends, and by default
/// (`batch_sync=on`) copy-ups take their names in the upper a burst
/// later. Whoever reads the upper right after unmounting must still find
/// every copy-up: podman, whose mount program speaks the overlay dialect
/// (each copy-up is synced and named at once there) and unmounts with
/// plain umount/fusermount; and `unionfs umount`, which waits for the
/// daemon.
#[test]
fn the_upper_is_complete_when_umount_returns() {
    if !can_mount_fuse() {
        return;
    }
    const N: usize = 400;
    let name = |i: usize| format!("f{i:03}");
    for how in [
        "overlay dialect, umount(8)",
        "native dialect, unionfs umount",
    ] {
        let t = Scratch::new("crash-umount");
        let lower = t.dir("lower");
        for i in 0..N {
            file(&lower, &name(i), b"old", 0o644);
        }
        let (upper, work, mnt) = (t.dir("upper"), t.dir("work"), t.dir("mnt"));
        let m = if how.starts_with("overlay") {
            let o = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            );
            Mount::unionfs_args(
                &["mount".as_ref(), "-o".as_ref(), o.as_ref(), mnt.as_os_str()],
                &mnt,
            )
        } else {
            union_mount(&lower, &upper, &mnt)
        };
        for i in 0..N {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(mnt.join(name(i)))
                .unwrap();
            f.write_all(b"+new").unwrap();
        }
        let out = if how.starts_with("overlay") {
            run("umount", &[mnt.to_str().unwrap()])
        } else {
            run_bin(&["umount".as_ref(), mnt.as_os_str()])
        };
        assert!(out.ok(), "{how}:\n{out}");
        let missing = (0..N)
            .filter(|&i| fs::read(upper.join(name(i))).ok().as_deref() != Some(b"old+new"))
            .count();
        drop(m);
        assert_eq!(
            missing, 0,
            "{how}: copy-ups not in the upper when umount returned (of {N})"
        );
    }
}

/// `unionfs umount` waits for a daemon that is slow to publish — here a
/// stopped one — as umount waits for a filesystem's writeback, says after a
/// few seconds what it waits for, and returns once the daemon has put its
/// copy-ups in the upper.
#[test]
fn unionfs_umount_waits_for_a_stopped_daemon_and_says_so() {
    if !can_mount_fuse() {
        return;
    }
    let t = Scratch::new("crash-umount-stopped");
    let lower = t.dir("lower");
    for i in 0..FILES {
        file(&lower, &rel(i), &old_content(i), 0o644);
    }
    let (upper, mnt) = (t.dir("upper"), t.dir("mnt"));
    let m = union_mount(&lower, &upper, &mnt);
    for i in 0..FILES {
        write_through(&mnt, i);
    }
    let pid = nix::unistd::Pid::from_raw(m.daemon_pids[0]);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let umount = std::process::Command::new(bin())
        .args(["umount".as_ref(), mnt.as_os_str()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(7));
    let finished_while_stopped = !pid_alive(umount.id() as i32)
        || fs::read_to_string(format!("/proc/{}/stat", umount.id()))
            .is_ok_and(|s| s.contains(") Z "));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let out = umount.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    drop(m);
    assert!(
        !finished_while_stopped,
        "umount returned while the daemon was stopped"
    );
    assert!(out.status.success(), "umount failed: {said}");
    assert!(
        said.contains("waiting for the daemon of") && said.contains("'flush'"),
        "umount did not say what it waits for: {said:?}"
    );
    for i in 0..FILES {
        assert_eq!(
            fs::read(upper.join(rel(i))).unwrap(),
            new_content(i),
            "{} not in the upper when umount returned",
            rel(i)
        );
    }
}

/// Two unions must not write one upper: each clears the other's staged
/// copies from the workdir. And `umount` is answered before the daemon
/// ends: it still publishes its pending copy-ups, and its threads (with
/// its fds) outlive its main one. So a union mounted on an upper another
/// daemon still uses — `umount; mount`, a container restarted — waits for
/// that daemon to let go, then sees everything it wrote. (Here the first
/// union is still mounted while the second waits, to hold that moment
/// open.)
#[test]
fn a_mount_waits_for_the_daemon_still_using_its_upper() {
    if !can_mount_fuse() {
        return;
    }
    let t = Scratch::new("crash-in-use");
    let lower = t.dir("lower");
    for i in 0..FILES {
        file(&lower, &rel(i), &old_content(i), 0o644);
    }
    let upper = t.dir("upper");
    let (mnt1, mnt2) = (t.dir("mnt1"), t.dir("mnt2"));
    let first = union_mount(&lower, &upper, &mnt1);
    for i in 0..FILES {
        write_through(&mnt1, i);
    }
    // Stands for a copy the first daemon has staged and not yet published.
    let staged = upper.join(".wh..wh.unionfs/work/#staged");
    fs::write(&staged, b"staged").unwrap();
    let second = {
        let (lower, upper, mnt) = (lower.clone(), upper.clone(), mnt2.clone());
        std::thread::spawn(move || union_mount(&lower, &upper, &mnt))
    };
    std::thread::sleep(Duration::from_millis(1500));
    let early = is_mounted(&mnt2);
    let cleared = !staged.exists();
    let pid = first.daemon_pids[0];
    first.unmount();
    let second = second.join().unwrap();
    assert!(
        !early && !cleared,
        "a second union started on an upper another daemon used (mounted: {early}, \
         staged copy cleared: {cleared})"
    );
    assert!(!pid_alive(pid));
    assert!(
        !staged.exists(),
        "the second union did not clear the workdir"
    );
    for i in 0..FILES {
        let got = fs::read(mnt2.join(rel(i))).unwrap();
        assert!(got == new_content(i), "{}: not the content written", rel(i));
    }
    second.unmount();
}

/// Copy-ups still pending (staged, not yet renamed into the upper) are the
/// name's already for every operation: renames, links and unlinks of them
/// right after the write that copied them up, their attributes and a
/// listing; after a remount the same.
#[test]
fn name_operations_right_after_copy_ups_see_them() {
    if !can_mount_fuse() {
        return;
    }
    const N: usize = 100;
    let t = Scratch::new("crash-names");
    let lower = t.dir("lower");
    for i in 0..N {
        file(&lower, &format!("p/a{i}"), &old_content(i), 0o644);
    }
    let upper = t.dir("upper");
    let mnt = t.dir("mnt");
    let m = union_mount(&lower, &upper, &mnt);
    let p = mnt.join("p");
    let new = |i: usize| [old_content(i), b"x".to_vec()].concat();
    // Each operation right after the write that copied its file up (the
    // copy is then usually still pending); the name operations publish it.
    let work = upper.join(".wh..wh.unionfs/work");
    let mut staged = 0;
    let mut want = std::collections::BTreeMap::new();
    for i in 0..N {
        let a = p.join(format!("a{i}"));
        let mut f = fs::OpenOptions::new().append(true).open(&a).unwrap();
        f.write_all(b"x").unwrap();
        drop(f);
        staged += usize::from(!names(&work).is_empty());
        match i % 5 {
            0 => {
                fs::rename(&a, p.join(format!("r{i}"))).unwrap();
                want.insert(format!("r{i}"), new(i));
            }
            1 => {
                fs::hard_link(&a, p.join(format!("l{i}"))).unwrap();
                want.insert(format!("a{i}"), new(i));
                want.insert(format!("l{i}"), new(i));
            }
            2 => fs::remove_file(&a).unwrap(),
            _ => {
                assert_eq!(fs::metadata(&a).unwrap().len(), SIZE as u64 + 1, "a{i}");
                want.insert(format!("a{i}"), new(i));
            }
        }
    }
    let check = |when: &str| {
        let mut problems = Vec::new();
        let listed: BTreeSet<String> = names(&p);
        let wanted: BTreeSet<String> = want.keys().cloned().collect();
        if listed != wanted {
            problems.push(format!(
                "{when}: listing differs: extra {:?}, missing {:?}",
                listed.difference(&wanted).collect::<Vec<_>>(),
                wanted.difference(&listed).collect::<Vec<_>>()
            ));
        }
        for e in fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(c) = want.get(&name) {
                let len = e.metadata().unwrap().len();
                if len != c.len() as u64 {
                    problems.push(format!("{when}: {name} listed with size {len}"));
                }
                if fs::read(e.path()).unwrap() != *c {
                    problems.push(format!("{when}: {name} has other content"));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    };
    eprintln!("{staged} of {N} operations found their copy-up still pending");
    check("mounted");
    m.unmount();
    let m = union_mount(&lower, &upper, &mnt);
    check("after a remount");
    m.unmount();
}
