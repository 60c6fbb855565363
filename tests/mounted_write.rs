//! Write path through a mounted union: copy-up (atomic, sparse, typed,
//! metadata, inode numbers), whiteout formats, reserved names, O(1)
//! directory rename, hard links, locks and open-unlinked files, workdir
//! cleanup. Kernel equivalence op by op is `diff_ops.rs`; this file checks
//! what the kernel oracle cannot (the on-disk upper) or does not cover.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

struct Setup {
    _s: Scratch,
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
            _s: s,
        }
    }

    fn mount(&self, opts: &[&str]) -> Mount {
        let mut args: Vec<std::ffi::OsString> = vec![
            "mount".into(),
            format!("{}:{}", self.l1.display(), self.l2.display()).into(),
            self.u.clone().into(),
            self.mnt.clone().into(),
        ];
        for o in opts {
            args.push("-o".into());
            args.push((*o).into());
        }
        Mount::unionfs_args(&args, &self.mnt)
    }
}

fn errno_of(r: std::io::Result<()>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn xattr_of(p: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get_deref(p, name).ok().flatten()
}

#[test]
fn copy_up_keeps_type_mode_owner_times_xattrs_and_inode() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("copyup-meta");
    let f = file(&t.l2, "d/f", b"lower data", 0o4750);
    chown(&t.l2, "d/f", 1234, 5678);
    // chown clears suid: set the mode after it.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4750)).unwrap();
    xattr::set(&f, "user.note", b"kept").unwrap();
    // VFS_CAP_REVISION_2 with cap_net_raw permitted.
    let cap: [u8; 20] = [
        0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    xattr::set(&f, "security.capability", &cap).unwrap();
    fifo(&t.l2, "d/pipe", 0o640);
    chown(&t.l2, "d/pipe", 42, 43);
    chardev(&t.l2, "d/null", 1, 3, 0o666);
    symlink(&t.l2, "d/link", "f");
    fix_times(&t.l2, 1_300_000_000);
    let m = t.mount(&[]);
    let p = |r: &str| m.mnt.join(r);
    let before: Vec<_> = ["d/f", "d/pipe", "d/null", "d/link"]
        .iter()
        .map(|r| fs::symlink_metadata(p(r)).unwrap())
        .collect();

    // Metadata-changing operations copy each object up.
    xattr::set(p("d/f"), "user.more", b"1").unwrap();
    let pipe_mode = fs::Permissions::from_mode(0o600);
    fs::set_permissions(p("d/pipe"), pipe_mode).unwrap();
    std::os::unix::fs::lchown(p("d/null"), Some(7), None).unwrap();
    std::os::unix::fs::lchown(p("d/link"), Some(8), None).unwrap();

    let after: Vec<_> = ["d/f", "d/pipe", "d/null", "d/link"]
        .iter()
        .map(|r| fs::symlink_metadata(p(r)).unwrap())
        .collect();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.ino(), a.ino(), "st_ino changed by copy-up");
        assert_eq!(b.mtime(), a.mtime());
        assert_eq!(b.mtime_nsec(), a.mtime_nsec());
        assert_eq!(b.file_type(), a.file_type());
    }
    // d/f: data, suid mode, owner, xattrs survive.
    assert_eq!(fs::read(p("d/f")).unwrap(), b"lower data");
    assert_eq!(after[0].mode() & 0o7777, 0o4750);
    assert_eq!((after[0].uid(), after[0].gid()), (1234, 5678));
    assert_eq!(
        xattr_of(&p("d/f"), "user.note").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(xattr_of(&p("d/f"), "user.more").as_deref(), Some(&b"1"[..]));
    // File capabilities survive copy-up (chown, which drops them, comes first).
    let cap = xattr_of(&t.l2.join("d/f"), "security.capability");
    assert!(
        cap.is_some(),
        "test setup: the lower file has no capability"
    );
    assert_eq!(xattr_of(&t.u.join("d/f"), "security.capability"), cap);
    // The fifo stays a fifo (fuse-overlayfs turns it into a file), with its owner.
    assert!(after[1].file_type().is_fifo());
    assert_eq!(after[1].mode() & 0o7777, 0o600);
    assert_eq!((after[1].uid(), after[1].gid()), (42, 43));
    assert!(after[2].file_type().is_char_device());
    assert_eq!(after[2].rdev(), before[2].rdev());
    assert_eq!(after[2].uid(), 7);
    assert_eq!(fs::read_link(p("d/link")).unwrap(), Path::new("f"));
    // All four are in the upper now, the lower untouched.
    for r in ["d/f", "d/pipe", "d/null", "d/link"] {
        assert!(
            fs::symlink_metadata(t.u.join(r)).is_ok(),
            "{r} not copied up"
        );
    }
    assert_eq!(fs::read(t.l2.join("d/f")).unwrap(), b"lower data");
    assert!(xattr_of(&t.l2.join("d/f"), "user.more").is_none());
    // The parent directory was copied up with its own metadata.
    assert_eq!(
        fs::metadata(t.u.join("d")).unwrap().mtime(),
        fs::metadata(t.l2.join("d")).unwrap().mtime()
    );
    // Same inode numbers after a remount.
    m.unmount();
    let m = t.mount(&[]);
    for (r, b) in ["d/f", "d/pipe", "d/null", "d/link"].iter().zip(&before) {
        assert_eq!(
            fs::symlink_metadata(m.mnt.join(r)).unwrap().ino(),
            b.ino(),
            "{r}"
        );
    }
}

/// Makes a sparse file of `size` bytes holding `parts` at their offsets.
fn sparse_file(path: &Path, size: u64, parts: &[(u64, &[u8])]) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (at, bytes) in parts {
        f.write_all_at(bytes, *at).unwrap();
    }
}

#[test]
fn sparse_file_stays_sparse_after_copy_up() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("copyup-sparse");
    let size: u64 = 1 << 30;
    sparse_file(
        &t.l1.join("big"),
        size,
        &[(0, b"head"), (size / 2, b"middle"), (size - 4, b"tail")],
    );
    let lower_blocks = fs::metadata(t.l1.join("big")).unwrap().blocks();
    let m = t.mount(&[]);
    let p = m.mnt.join("big");
    {
        let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.seek(SeekFrom::Start(8)).unwrap();
        f.write_all(b"!").unwrap();
    }
    let up = fs::metadata(t.u.join("big")).unwrap();
    assert_eq!(up.len(), size);
    assert!(
        up.blocks() <= lower_blocks + 64,
        "upper copy allocates {} blocks, lower {lower_blocks}",
        up.blocks()
    );
    let mut f = fs::File::open(&p).unwrap();
    let mut buf = [0u8; 9];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"head\0\0\0\0!");
    f.seek(SeekFrom::Start(size / 2)).unwrap();
    let mut mid = [0u8; 6];
    f.read_exact(&mut mid).unwrap();
    assert_eq!(&mid, b"middle");
}

#[test]
fn concurrent_writers_cause_one_copy_up() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("copyup-race");
    file(&t.l1, "shared", &vec![b'.'; 1 << 20], 0o666);
    let m = t.mount(&[]);
    let p = m.mnt.join("shared");
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let p = p.clone();
            std::thread::spawn(move || {
                let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
                use std::os::unix::fs::FileExt;
                f.write_at(&[b'a' + i], u64::from(i) * 4096).unwrap();
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let data = fs::read(&p).unwrap();
    assert_eq!(data.len(), 1 << 20);
    for i in 0..8u8 {
        assert_eq!(
            data[usize::from(i) * 4096],
            b'a' + i,
            "writer {i} lost: a second copy-up replaced the first"
        );
    }
    // Nothing half-made is left in the staging area.
    let work = t.u.join(".wh..wh.unionfs/work");
    assert_eq!(fs::read_dir(work).unwrap().count(), 0);
}

/// A copy-up (an open for writing, a chmod) racing an unlink or a rename
/// of the same lower file: every open, chmod and unlink answers with
/// success or ENOENT only (never, say, ENXIO from opening an overlay
/// whiteout that took the name meanwhile), and a name whose unlink or
/// rename succeeded stays gone: no copy-up puts it back.
#[test]
fn a_copy_up_racing_a_removal_never_brings_the_name_back() {
    if !can_mount_fuse() {
        return;
    }
    const N: usize = 300;
    for fmt in ["aufs", "overlay"] {
        let t = Setup::new(&format!("copyup-vs-unlink-{fmt}"));
        for i in 0..N {
            file(&t.l1, &format!("d/f{i}"), &vec![b'.'; 64 << 10], 0o666);
        }
        let m = t.mount(&[&format!("whiteout={fmt}")]);
        let d = m.mnt.join("d");
        let go = std::sync::Barrier::new(3);
        let (gone, answers) = std::thread::scope(|sc| {
            let writer = sc.spawn(|| {
                let mut errs = Vec::new();
                for i in 0..N {
                    go.wait();
                    let r = fs::OpenOptions::new()
                        .append(true)
                        .open(d.join(format!("f{i}")))
                        .and_then(|mut f| f.write_all(b"x"));
                    errs.extend(errno_of(r).map(|e| ("open", e)));
                }
                errs
            });
            let chmod = sc.spawn(|| {
                let mut errs = Vec::new();
                for i in 0..N {
                    go.wait();
                    let r = fs::set_permissions(
                        d.join(format!("f{i}")),
                        fs::Permissions::from_mode(0o640),
                    );
                    errs.extend(errno_of(r).map(|e| ("chmod", e)));
                }
                errs
            });
            let mut gone = Vec::new();
            let mut errs = Vec::new();
            for i in 0..N {
                go.wait();
                let p = d.join(format!("f{i}"));
                // half unlinked, half renamed away (the source name goes)
                let r = if i % 2 == 0 {
                    fs::remove_file(&p)
                } else {
                    fs::rename(&p, d.join(format!("moved{i}")))
                };
                match errno_of(r) {
                    None => gone.push(i),
                    Some(e) => errs.push(("remove", e)),
                }
            }
            errs.extend(writer.join().unwrap());
            errs.extend(chmod.join().unwrap());
            (gone, errs)
        });
        let bad: Vec<_> = answers.iter().filter(|(_, e)| *e != libc::ENOENT).collect();
        assert!(bad.is_empty(), "{fmt}: errors other than ENOENT: {bad:?}");
        assert!(!gone.is_empty(), "{fmt}: no removal succeeded");
        let back = |root: &Path| -> Vec<usize> {
            gone.iter()
                .copied()
                .filter(|i| fs::symlink_metadata(root.join(format!("d/f{i}"))).is_ok())
                .collect()
        };
        assert_eq!(
            back(&m.mnt),
            Vec::<usize>::new(),
            "{fmt}: removed names came back"
        );
        m.unmount();
        let m = t.mount(&[&format!("whiteout={fmt}")]);
        assert_eq!(
            back(&m.mnt),
            Vec::<usize>::new(),
            "{fmt}: ... after a remount"
        );
        m.unmount();
    }
}

#[test]
fn aufs_format_whiteouts_opaque_and_user_char_devices() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("aufs-format");
    file(&t.l1, "gone", b"x", 0o644);
    file(&t.l1, "d/old", b"x", 0o644);
    let m = t.mount(&[]);
    let p = |r: &str| m.mnt.join(r);
    fs::remove_file(p("gone")).unwrap();
    fs::remove_dir_all(p("d")).unwrap();
    fs::create_dir(p("d")).unwrap();
    fs::write(p("d/new"), b"n").unwrap();
    // A char 0:0 device made by a user is a device in an AUFS-format upper.
    nix::sys::stat::mknod(
        &p("dev00"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        0,
    )
    .unwrap();
    assert!(fs::symlink_metadata(p("dev00"))
        .unwrap()
        .file_type()
        .is_char_device());
    // On disk: .wh. files and the opaque marker, no char devices as whiteouts.
    assert!(t.u.join(".wh.gone").exists());
    assert!(t.u.join("d/.wh..wh..opq").exists());
    assert!(!t.u.join("gone").exists());
    assert_eq!(
        fs::read_dir(p("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>(),
        vec![OsStr::new("new").to_os_string()]
    );
    // The format is recorded: a remount reads the upper the same way.
    m.unmount();
    let m = t.mount(&[]);
    assert!(fs::symlink_metadata(m.mnt.join("dev00"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(!m.mnt.join("gone").exists());
    assert!(!m.mnt.join("d/old").exists());
    drop(m);
    // Mounting it with the other format is refused with one line.
    let out = run_bin(&[
        OsStr::new("mount"),
        t.l1.as_os_str(),
        t.u.as_os_str(),
        t.mnt.as_os_str(),
        OsStr::new("-o"),
        OsStr::new("whiteout=overlay"),
    ]);
    assert!(!out.ok());
    assert!(out.stderr.starts_with("unionfs: "), "{out}");
    assert!(!is_mounted(&t.mnt));
}

#[test]
fn overlay_format_upper_mounts_in_the_kernel() {
    if !can_mount_fuse() || !can_mount_overlay() {
        return;
    }
    let t = Setup::new("overlay-format");
    let work = t._s.dir("work");
    let kwork = t._s.dir("kwork");
    let kmnt = t._s.dir("kmnt");
    file(&t.l1, "a/x", b"x", 0o644);
    file(&t.l2, "a/y", b"y", 0o644);
    file(&t.l2, "b", b"b", 0o644);
    let w = format!("whiteout=overlay,workdir={}", work.display());
    let m = t.mount(&[&w]);
    let p = |r: &str| m.mnt.join(r);
    fs::rename(p("a"), p("renamed")).unwrap();
    fs::remove_file(p("b")).unwrap();
    fs::create_dir(p("b")).unwrap();
    fs::write(p("b/inside"), b"i").unwrap();
    fs::remove_file(p("renamed/y")).unwrap();
    let ours = snapshot(&m.mnt);
    m.unmount();
    let k = Mount::overlay(
        &[&t.l1, &t.l2],
        Some((&t.u, &kwork)),
        &kmnt,
        "redirect_dir=on",
    );
    let kernel = snapshot(&k.mnt);
    let names = |s: &Snapshot| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&kernel));
    assert!(fs::symlink_metadata(t.u.join("a"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(
        xattr_of(&t.u.join("renamed"), "trusted.overlay.redirect").as_deref(),
        Some(&b"/a"[..])
    );
    assert_eq!(
        xattr_of(&t.u.join("b"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
}

#[test]
fn reserved_names_cannot_be_created() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("reserved");
    let m = t.mount(&[]);
    let p = |r: &str| m.mnt.join(r);
    fs::write(p("ok"), b"").unwrap();
    let eperm = Some(libc::EPERM);
    assert_eq!(errno_of(fs::write(p(".wh.x"), b"")), eperm);
    assert_eq!(errno_of(fs::create_dir(p(".wh..wh..opq"))), eperm);
    assert_eq!(errno_of(std::os::unix::fs::symlink("t", p(".wh.l"))), eperm);
    assert_eq!(errno_of(fs::hard_link(p("ok"), p(".wh.h"))), eperm);
    assert_eq!(errno_of(fs::rename(p("ok"), p(".wh.ok"))), eperm);
    assert!(fs::read_dir(&t.u).unwrap().all(|e| {
        let n = e.unwrap().file_name();
        // (and AUFS's whiteout base, made at mount)
        n == "ok" || n == ".wh..wh.unionfs" || n == ".wh..wh.aufs"
    }));
}

#[test]
fn renaming_a_big_lower_directory_copies_nothing() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("rename-big");
    for i in 0..10_000 {
        file(&t.l1, &format!("big/sub{}/f{i}", i % 10), b"", 0o644);
    }
    let m = t.mount(&[]);
    fs::rename(m.mnt.join("big"), m.mnt.join("moved")).unwrap();
    // The upper holds the renamed directory itself and a whiteout, not 10,000 files.
    let upper_entries = walkdir::WalkDir::new(&t.u)
        .into_iter()
        .filter_entry(|e| e.file_name() != ".wh..wh.unionfs")
        .count();
    assert!(upper_entries <= 4, "{upper_entries} entries in the upper");
    assert!(!m.mnt.join("big").exists());
    assert_eq!(
        fs::read_dir(m.mnt.join("moved/sub3")).unwrap().count(),
        1000
    );
    // And it persists.
    m.unmount();
    let m = t.mount(&[]);
    assert_eq!(
        fs::read_dir(m.mnt.join("moved/sub7")).unwrap().count(),
        1000
    );
    assert!(!m.mnt.join("big").exists());
}

#[test]
fn lower_hard_links_stay_linked_after_copy_up_and_remount() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("hardlink-index");
    file(&t.l1, "a", b"old", 0o644);
    hardlink(&t.l1, "a", "d/b");
    let m = t.mount(&[]);
    let ino = fs::metadata(m.mnt.join("a")).unwrap().ino();
    fs::OpenOptions::new()
        .append(true)
        .open(m.mnt.join("a"))
        .unwrap()
        .write_all(b"+new")
        .unwrap();
    assert_eq!(fs::read(m.mnt.join("d/b")).unwrap(), b"old+new");
    for r in ["a", "d/b"] {
        let md = fs::metadata(m.mnt.join(r)).unwrap();
        assert_eq!((md.ino(), md.nlink()), (ino, 2), "{r}");
    }
    m.unmount();
    let m = t.mount(&[]);
    assert_eq!(fs::read(m.mnt.join("d/b")).unwrap(), b"old+new");
    fs::remove_file(m.mnt.join("a")).unwrap();
    let md = fs::metadata(m.mnt.join("d/b")).unwrap();
    assert_eq!((md.ino(), md.nlink()), (ino, 1));
    assert_eq!(fs::read(t.l1.join("a")).unwrap(), b"old", "lower changed");
}

#[test]
fn open_unlinked_file_and_locks_across_processes() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("unlinked-locks");
    file(&t.l1, "lower", b"lower bytes", 0o644);
    let m = t.mount(&[]);
    let mut lower = fs::File::open(m.mnt.join("lower")).unwrap();
    fs::remove_file(m.mnt.join("lower")).unwrap();
    let mut s = String::new();
    lower.read_to_string(&mut s).unwrap();
    assert_eq!(s, "lower bytes");
    let mut up = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.mnt.join("up"))
        .unwrap();
    up.write_all(b"upper bytes").unwrap();
    fs::remove_file(m.mnt.join("up")).unwrap();
    up.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    up.read_to_string(&mut s).unwrap();
    assert_eq!(s, "upper bytes");
    assert_eq!(up.metadata().unwrap().nlink(), 0);

    // flock and fcntl locks conflict across processes on the mount.
    let lockfile = m.mnt.join("lockfile");
    fs::write(&lockfile, b"").unwrap();
    let f = fs::File::open(&lockfile).unwrap();
    let locked = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let other = run(
        "flock",
        &[OsStr::new("-n"), lockfile.as_os_str(), OsStr::new("true")],
    );
    assert!(!other.ok(), "a second process got the flock:\n{other}");
    drop(locked);
    let other = run(
        "flock",
        &[OsStr::new("-n"), lockfile.as_os_str(), OsStr::new("true")],
    );
    assert!(other.ok(), "{other}");
    let f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(0)
        .open(&lockfile)
        .unwrap();
    let lock = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETLK(&lock)).unwrap();
    let py = "import fcntl,sys\nf=open(sys.argv[1],'w')\ntry:\n fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\n sys.exit(0)\nexcept OSError:\n sys.exit(3)";
    let other = run(
        "python3",
        &[OsStr::new("-c"), OsStr::new(py), lockfile.as_os_str()],
    );
    assert!(!other.ok(), "a second process got the fcntl lock:\n{other}");
}

#[test]
fn crash_leftovers_in_the_workdir_are_cleaned_at_mount() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("leftovers");
    file(&t.l1, "f", b"x", 0o644);
    let m = t.mount(&[]);
    fs::write(m.mnt.join("new"), b"n").unwrap();
    m.unmount();
    // As if a copy-up died half-way: junk in the staging area.
    let work = t.u.join(".wh..wh.unionfs/work");
    fs::write(work.join("#dead-1"), b"half a file").unwrap();
    fs::create_dir_all(work.join("#dead-2/sub")).unwrap();
    let m = t.mount(&[]);
    assert_eq!(fs::read_dir(&work).unwrap().count(), 0);
    let names: Vec<_> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// `rchar` + `wchar` of a daemon: the bytes it moved through read/write
/// calls (pread/pwrite of file data included).
fn daemon_io_bytes(pid: i32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .filter(|l| l.starts_with("rchar:") || l.starts_with("wchar:"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Writes then reads `len` bytes of a new file through the mount; returns
/// how many bytes the daemon moved meanwhile.
fn bytes_through_daemon(m: &Mount, name: &str, len: usize) -> u64 {
    let pid = m.daemon_pids[0];
    let before = daemon_io_bytes(pid);
    let p = m.mnt.join(name);
    fs::write(&p, vec![7u8; len]).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), len as u64);
    let back = fs::read(&p).unwrap();
    assert!(back.len() == len && back.iter().all(|&b| b == 7));
    daemon_io_bytes(pid) - before
}

#[test]
fn upper_files_do_their_io_in_the_kernel() {
    if !can_mount_fuse() || !nix::unistd::geteuid().is_root() {
        return;
    }
    const LEN: usize = 32 << 20;
    let t = Setup::new("passthrough-upper");
    let m = t.mount(&[]);
    let moved = bytes_through_daemon(&m, "new", LEN);
    assert!(
        moved < (LEN as u64) / 8,
        "the daemon moved {moved} bytes for {LEN} written and read: no passthrough"
    );
    m.unmount();
    // The fallback path does move them (so the check above can fail).
    let m = t.mount(&["passthrough=off"]);
    let moved = bytes_through_daemon(&m, "new2", LEN);
    assert!(
        moved >= 2 * LEN as u64,
        "passthrough=off moved only {moved}"
    );
}

#[test]
fn lower_reader_sees_copy_up_or_keeps_the_lower_file() {
    if !can_mount_fuse() || !nix::unistd::geteuid().is_root() {
        return;
    }
    let t = Setup::new("passthrough-lower");
    file(&t.l1, "log", b"one\n", 0o644);
    file(&t.l1, "pinned", b"one\n", 0o644);
    let read_all = |f: &mut fs::File| {
        let mut s = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    };
    let append = |p: &Path| -> std::io::Result<()> {
        fs::OpenOptions::new()
            .append(true)
            .open(p)?
            .write_all(b"two\n")
    };
    {
        // passthrough=upper: a lower file is read through the daemon, so a
        // reader opened before a copy-up sees the upper copy.
        let m = t.mount(&["passthrough=upper"]);
        let p = m.mnt.join("log");
        let mut r = fs::File::open(&p).unwrap();
        assert_eq!(read_all(&mut r), "one\n");
        append(&p).unwrap();
        assert_eq!(read_all(&mut r), "one\ntwo\n");
        assert_eq!(fs::read_to_string(&p).unwrap(), "one\ntwo\n");
        drop(r);
        m.unmount();
    }
    // passthrough=all (the default): the kernel reads the lower file
    // itself and goes on doing so after a copy-up; the writer gets the
    // copied-up file as a new node (more in mounted_passthrough.rs).
    let m = t.mount(&["passthrough=all"]);
    let p = m.mnt.join("pinned");
    let mut r = fs::File::open(&p).unwrap();
    assert_eq!(read_all(&mut r), "one\n");
    append(&p).unwrap();
    assert_eq!(read_all(&mut r), "one\n", "the reader keeps the lower file");
    assert_eq!(fs::read_to_string(&p).unwrap(), "one\ntwo\n");
    nix::unistd::truncate(&p, 3).unwrap();
    assert_eq!(fs::read_to_string(&p).unwrap(), "one");
    drop(r);
    assert_eq!(fs::read_to_string(t.l1.join("pinned")).unwrap(), "one\n");
    m.unmount();
}

/// Blocks allocated under `dir` (files only), in 512-byte units.
fn blocks_under(dir: &Path) -> u64 {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        if md.is_dir() {
            n += blocks_under(&e.path());
        } else {
            n += md.blocks();
        }
    }
    n
}

#[test]
fn chown_r_copies_metadata_only_until_a_write() {
    if !can_mount_fuse() || !nix::unistd::geteuid().is_root() {
        return;
    }
    let t = Setup::new("metacopy");
    let body = |i: usize| -> Vec<u8> { (0..(256 << 10)).map(|j| (i * 7 + j) as u8).collect() };
    for i in 0..20 {
        file(&t.l1, &format!("tree/d{}/f{i}", i % 3), &body(i), 0o644);
    }
    file(&t.l1, "tree/cap", b"\x7fELF not really", 0o755);
    let lower_before = blocks_under(&t.l1);
    let m = t.mount(&[]);
    let tree = m.mnt.join("tree");
    let out = run("chown", &["-R", "1234:5678", tree.to_str().unwrap()]);
    assert!(out.ok(), "{out}");
    // chmod/utimens/setxattr too. (chown drops capabilities: set one after.)
    let cap = {
        // VFS_CAP_REVISION_2, cap_net_raw permitted+effective
        let mut v = vec![0u8; 20];
        v[0..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        v[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
        v
    };
    xattr::set(tree.join("cap"), "security.capability", &cap).unwrap();
    fs::set_permissions(tree.join("cap"), fs::Permissions::from_mode(0o750)).unwrap();
    xattr::set(tree.join("d1/f1"), "user.note", b"x").unwrap();
    let upper_tree = t.u.join("tree");
    let moved = blocks_under(&upper_tree);
    assert!(
        moved <= 8 * 4,
        "chown -R of {lower_before} lower blocks allocated {moved} in the upper"
    );
    for i in 0..20 {
        let p = tree.join(format!("d{}/f{i}", i % 3));
        let md = fs::metadata(&p).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
        assert!(md.blocks() >= 256 << 10 >> 9, "st_blocks is the data's");
        assert_eq!(fs::read(&p).unwrap(), body(i), "f{i} reads its lower data");
    }
    let mtime = fs::metadata(tree.join("d1/f1")).unwrap().mtime();
    // A write copies the data, keeps times, owner and capabilities.
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(tree.join("d1/f1"))
            .unwrap();
        f.seek(SeekFrom::Start(10)).unwrap();
        f.write_all(b"!").unwrap();
    }
    let mut want = body(1);
    want[10] = b'!';
    assert_eq!(fs::read(tree.join("d1/f1")).unwrap(), want);
    let md = fs::metadata(upper_tree.join("d1/f1")).unwrap();
    assert!(md.blocks() >= 256 << 10 >> 9, "data copied up");
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert!(fs::metadata(tree.join("d1/f1")).unwrap().mtime() >= mtime);
    // Opening for writing copies the data, which must not drop the
    // capability (a write would, as on any filesystem).
    drop(
        fs::OpenOptions::new()
            .append(true)
            .open(tree.join("cap"))
            .unwrap(),
    );
    assert_eq!(
        xattr_of(&upper_tree.join("cap"), "trusted.unionfs.metacopy"),
        None
    );
    assert_eq!(
        xattr_of(&upper_tree.join("cap"), "security.capability"),
        Some(cap)
    );
    // Truncation to zero needs no data; truncation elsewhere does.
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(tree.join("d0/f0"))
        .unwrap();
    assert_eq!(fs::read(tree.join("d0/f0")).unwrap(), b"");
    nix::unistd::truncate(&tree.join("d0/f3"), 5).unwrap();
    assert_eq!(fs::read(tree.join("d0/f3")).unwrap(), &body(3)[..5]);
    // Renamed and linked metadata-only files keep their data.
    fs::rename(tree.join("d2/f2"), tree.join("moved")).unwrap();
    fs::hard_link(tree.join("d2/f5"), tree.join("linked")).unwrap();
    m.unmount();
    // Lower untouched; after a remount everything reads the same.
    for i in 0..20 {
        assert_eq!(
            fs::read(t.l1.join(format!("tree/d{}/f{i}", i % 3))).unwrap(),
            body(i)
        );
    }
    let m = t.mount(&[]);
    let tree = m.mnt.join("tree");
    assert_eq!(fs::read(tree.join("moved")).unwrap(), body(2));
    assert_eq!(fs::read(tree.join("linked")).unwrap(), body(5));
    assert_eq!(fs::read(tree.join("d1/f4")).unwrap(), body(4));
    assert_eq!(fs::metadata(tree.join("d1/f4")).unwrap().uid(), 1234);
    m.unmount();
    // metacopy=off copies data on chown; so does the overlay dialect
    // (podman reads the upper itself), unless it asks for metacopy=on.
    let t2 = Setup::new("metacopy-off");
    let work = t2._s.dir("work");
    for (i, opts) in [
        vec!["metacopy=off".to_string()],
        vec![format!(
            "lowerdir={},upperdir={},workdir={}",
            t2.l1.display(),
            t2.u.display(),
            work.display()
        )],
    ]
    .iter()
    .enumerate()
    {
        let name = format!("f{i}");
        file(&t2.l1, &name, &body(0), 0o644);
        let m = if i == 0 {
            t2.mount(&[opts[0].as_str()])
        } else {
            Mount::unionfs_args(&["-o", opts[0].as_str(), t2.mnt.to_str().unwrap()], &t2.mnt)
        };
        nix::unistd::chown(&m.mnt.join(&name), Some(1.into()), None).unwrap();
        // A whole-file copy-up takes its upper name once its data is
        // synced, a moment later, or at unmount at the latest.
        m.unmount();
        let up = fs::metadata(t2.u.join(&name)).unwrap();
        assert!(up.blocks() >= 256 << 10 >> 9, "{opts:?}: data copied");
    }
}

#[test]
fn every_copy_up_strategy_makes_the_same_sparse_copy() {
    if !can_mount_fuse() {
        return;
    }
    let size: u64 = 64 << 20;
    for strategy in ["auto", "copy_file_range", "readwrite", "reflink"] {
        let t = Setup::new(&format!("strategy-{strategy}"));
        {
            let f = fs::File::create(t.l1.join("f")).unwrap();
            f.set_len(size).unwrap();
            use std::os::unix::fs::FileExt;
            f.write_at(&[1u8; 8192], 0).unwrap();
            f.write_at(&[2u8; 4096], size / 2).unwrap();
        }
        let lower = fs::read(t.l1.join("f")).unwrap();
        let m = t.mount(&[&format!("copyup={strategy}")]);
        let res = fs::OpenOptions::new()
            .write(true)
            .open(m.mnt.join("f"))
            .map(|_| ());
        let work = t.u.join(".wh..wh.unionfs/work");
        if strategy == "reflink" && res.is_err() {
            // ext4 and friends cannot share extents: a clear error, nothing half-made.
            assert_eq!(errno_of(res), Some(libc::EOPNOTSUPP));
            assert!(!t.u.join("f").exists());
            assert_eq!(fs::read_dir(&work).unwrap().count(), 0);
            m.unmount();
            continue;
        }
        res.unwrap();
        let up = fs::metadata(t.u.join("f")).unwrap();
        assert_eq!(up.len(), size, "{strategy}");
        assert!(
            up.blocks() <= 64,
            "{strategy}: {} blocks, holes filled",
            up.blocks()
        );
        assert!(
            fs::read(m.mnt.join("f")).unwrap() == lower,
            "{strategy}: data differs"
        );
        m.unmount();
    }
}

/// Readers and writers racing on the same files, with copy-ups among them:
/// every open is legal for the kernel's per-inode I/O mode (an illegal one
/// fails with EIO, EBUSY or EINVAL), and the data ends up consistent.
#[test]
fn racing_readers_and_writers_never_trip_the_kernels_io_mode() {
    if !can_mount_fuse() || !nix::unistd::geteuid().is_root() {
        return;
    }
    for mode in ["upper", "all", "off"] {
        let t = Setup::new(&format!("iomode-{mode}"));
        for i in 0..6 {
            file(&t.l1, &format!("f{i}"), &vec![b'.'; 64 << 10], 0o644);
        }
        let m = t.mount(&[&format!("passthrough={mode}")]);
        let errors = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for seed in 0..6u64 {
                let (mnt, errors) = (&m.mnt, &errors);
                s.spawn(move || {
                    use std::os::unix::fs::FileExt;
                    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    for _ in 0..1500 {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let p = mnt.join(format!("f{}", (x >> 33) % 6));
                        let off = ((x >> 40) % 600) * 100;
                        let r = if (x >> 20) & 1 == 0 {
                            fs::File::open(&p)
                                .and_then(|f| f.read_at(&mut [0u8; 4096], off).map(drop))
                        } else {
                            fs::OpenOptions::new()
                                .write(true)
                                .open(&p)
                                .and_then(|f| f.write_all_at(&[b'x'; 100], off))
                        };
                        if let Err(e) = r {
                            errors.lock().unwrap().push(e.to_string());
                        }
                    }
                });
            }
        });
        let errors = errors.into_inner().unwrap();
        assert!(errors.is_empty(), "{mode}: {errors:?}");
        for i in 0..6 {
            let data = fs::read(m.mnt.join(format!("f{i}"))).unwrap();
            assert_eq!(data.len(), 64 << 10);
            assert!(
                data.iter().all(|&b| b == b'.' || b == b'x'),
                "f{i} has foreign bytes"
            );
        }
        m.unmount();
    }
}

/// A big lower file read through the union's page cache and then written:
/// its handles stay on the (still right) page cache instead of passthrough,
/// whose open would make the kernel drop it. Every reader sees every write.
#[test]
fn a_big_cached_file_written_after_reading_stays_coherent() {
    if !can_mount_fuse() {
        return;
    }
    use std::os::unix::fs::FileExt;
    let t = Setup::new("bigcache");
    let size: u64 = 128 << 20;
    sparse_file(&t.l1.join("big"), size, &[(0, b"lower")]);
    // Lower files read through the daemon (by default the kernel reads them
    // itself, and a reader opened before the copy-up keeps the lower file).
    let m = t.mount(&["passthrough=upper"]);
    let p = m.mnt.join("big");
    assert_eq!(fs::read(&p).unwrap().len() as u64, size);
    let old = fs::File::open(&p).unwrap();
    {
        let w = fs::OpenOptions::new().write(true).open(&p).unwrap();
        w.write_all_at(b"UPPER", 0).unwrap();
        w.write_all_at(b"mid", 100 << 20).unwrap();
    }
    let at = |f: &fs::File, off: u64, n: usize| {
        let mut b = vec![0u8; n];
        f.read_exact_at(&mut b, off).unwrap();
        b
    };
    for f in [&old, &fs::File::open(&p).unwrap()] {
        assert_eq!(at(f, 0, 5), b"UPPER");
        assert_eq!(at(f, 100 << 20, 3), b"mid");
    }
    drop(old);
    // A later writer and reader, and truncation, still agree.
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .write_all_at(b"again", 5)
        .unwrap();
    assert_eq!(at(&fs::File::open(&p).unwrap(), 0, 10), b"UPPERagain");
    nix::unistd::truncate(&p, 1 << 20).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 1 << 20);
    assert_eq!(&fs::read(&p).unwrap()[..10], b"UPPERagain");
    let up = fs::read(t.u.join("big")).unwrap();
    assert_eq!((up.len(), &up[..10]), (1 << 20, &b"UPPERagain"[..]));
    assert_eq!(&fs::read(t.l1.join("big")).unwrap()[..5], b"lower");
    m.unmount();
}

/// The daemon remembers that an object has no xattrs (the kernel asks for
/// `security.capability` before every write); an xattr set or removed
/// through the union must show at once, on an upper file, on a lower file
/// (set after a copy-up) and on a directory, after absent ones were asked
/// for and after a write.
#[test]
fn xattrs_show_at_once_after_absent_ones_were_asked_for() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("xattr-absent");
    file(&t.l1, "low", b"lower", 0o644);
    mkdir(&t.l1, "dir", 0o755);
    let m = t.mount(&[]);
    fs::write(m.mnt.join("new"), b"upper").unwrap();
    for name in ["new", "low", "dir"] {
        let p = m.mnt.join(name);
        assert_eq!(xattr_of(&p, "user.a"), None, "{name}");
        assert_eq!(xattr::list_deref(&p).unwrap().count(), 0, "{name}");
        if name != "dir" {
            // A write: the kernel asks for security.capability first.
            fs::OpenOptions::new()
                .append(true)
                .open(&p)
                .unwrap()
                .write_all(b"+")
                .unwrap();
            assert_eq!(xattr_of(&p, "security.capability"), None, "{name}");
        }
        xattr::set_deref(&p, "user.a", b"1").unwrap();
        assert_eq!(xattr_of(&p, "user.a").as_deref(), Some(&b"1"[..]), "{name}");
        let names: Vec<_> = xattr::list_deref(&p).unwrap().collect();
        assert_eq!(names, vec![OsStr::new("user.a").to_os_string()], "{name}");
        xattr::remove_deref(&p, "user.a").unwrap();
        assert_eq!(xattr_of(&p, "user.a"), None, "{name}");
        xattr::set_deref(&p, "user.b", b"2").unwrap();
        assert_eq!(xattr_of(&p, "user.b").as_deref(), Some(&b"2"[..]), "{name}");
    }
    m.unmount();
    // And on disk: the upper holds them.
    assert_eq!(
        xattr_of(&t.u.join("new"), "user.b").as_deref(),
        Some(&b"2"[..])
    );
    assert_eq!(
        xattr_of(&t.u.join("low"), "user.b").as_deref(),
        Some(&b"2"[..])
    );
}

/// A file created through the union shows the xattrs its creation gave it
/// (here an access ACL inherited from the upper directory's default ACL):
/// the union learns them from the new file at once, and must not take a
/// new file for one without any. And what is set on it later shows too.
#[test]
fn created_files_show_the_xattrs_they_were_given() {
    if !can_mount_fuse() {
        return;
    }
    let t = Setup::new("created-xattrs");
    let dir = t.u.join("acl");
    fs::create_dir(&dir).unwrap();
    // A default ACL with a named user (a minimal one would turn into mode
    // bits): POSIX ACL xattr version 2; entries (tag, perm, id).
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 6, 1234),
        (0x04, 4, u32::MAX),
        (0x10, 6, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(id.to_le_bytes());
    }
    xattr::set(&dir, "system.posix_acl_default", &acl).unwrap();
    let m = t.mount(&[]);
    let plain = m.mnt.join("plain");
    let inherits = m.mnt.join("acl/f");
    for p in [&plain, &inherits] {
        let mut f = fs::File::create(p).unwrap();
        f.write_all(b"data").unwrap();
    }
    // (Labels of a security module, if one is active, are not this test's.)
    let names = |p: &Path| -> Vec<String> {
        xattr::list(p)
            .unwrap()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("security."))
            .collect()
    };
    assert!(
        xattr_of(&t.u.join("acl/f"), "system.posix_acl_access").is_some(),
        "test setup: the upper file inherited no ACL"
    );
    assert_eq!(names(&inherits), vec!["system.posix_acl_access"]);
    assert_eq!(names(&plain), Vec::<String>::new());
    xattr::set(&plain, "user.later", b"1").unwrap();
    assert_eq!(xattr_of(&plain, "user.later").as_deref(), Some(&b"1"[..]));
    assert_eq!(names(&plain), vec!["user.later"]);
    m.unmount();
}
