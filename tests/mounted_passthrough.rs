//! Lower files read with FUSE passthrough by default, and written while
//! they are being read: the writer's open of a node the kernel pinned to
//! the lower file is moved (copy-up, fresh node id, one ESTALE the VFS
//! retries) to the copied-up file. Checks that no open(2) by a user sees
//! EINVAL, ETXTBSY or ESTALE, what a reader opened before the copy-up reads
//! (the lower file's data, as docs/ARCHITECTURE.md says), that `st_ino`
//! does not change, and the cases that keep the old answer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
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

fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn read_all(f: &mut fs::File) -> String {
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_string(&mut s).unwrap();
    s
}

fn root() -> bool {
    can_mount_fuse() && (nix::unistd::geteuid().is_root() || skip_or_fail("passthrough needs root"))
}

/// Bytes the daemon process read and wrote so far (rchar + wchar).
fn daemon_io(m: &Mount) -> u64 {
    let pid = m.daemon_pids[0];
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .filter(|l| l.starts_with("rchar:") || l.starts_with("wchar:"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn lower_files_are_read_in_the_kernel_by_default() {
    if !root() {
        return;
    }
    const LEN: usize = 32 << 20;
    let t = Setup::new("pt-default-read");
    file(&t.l2, "big", &vec![3u8; LEN], 0o644);
    let m = t.mount(&[]);
    let before = daemon_io(&m);
    let back = fs::read(m.mnt.join("big")).unwrap();
    assert!(back.len() == LEN && back.iter().all(|&b| b == 3));
    let moved = daemon_io(&m) - before;
    assert!(
        moved < (LEN as u64) / 8,
        "the daemon moved {moved} bytes of a {LEN}-byte lower file: no passthrough"
    );
    m.unmount();
    // passthrough=upper reads lower files through the daemon (so the check
    // above can fail).
    let m = t.mount(&["passthrough=upper"]);
    let before = daemon_io(&m);
    assert_eq!(fs::read(m.mnt.join("big")).unwrap().len(), LEN);
    assert!(daemon_io(&m) - before >= LEN as u64);
    m.unmount();
}

/// The main case, many times over: a reader holds a lower file open (the
/// kernel reads it from the lower file), then the same path — or another
/// hard link of it — is opened for writing.
#[test]
fn a_write_after_a_read_never_fails_and_the_reader_keeps_the_old_data() {
    if !root() {
        return;
    }
    const N: usize = 150;
    let t = Setup::new("pt-write-after-read");
    for i in 0..N {
        file(&t.l1, &format!("a{i}"), b"one\n", 0o644);
        file(&t.l2, &format!("d/b{i}"), b"one\n", 0o644);
        fs::hard_link(
            t.l2.join(format!("d/b{i}")),
            t.l2.join(format!("d/b{i}.link")),
        )
        .unwrap();
        file(&t.l2, &format!("e/c{i}"), b"one\n", 0o644);
        fs::hard_link(t.l2.join(format!("e/c{i}")), t.l2.join(format!("c{i}"))).unwrap();
    }
    let m = t.mount(&[]);
    for i in 0..N {
        // Same path.
        let p = m.mnt.join(format!("a{i}"));
        let ino = fs::metadata(&p).unwrap().ino();
        let mut r = fs::File::open(&p).unwrap();
        assert_eq!(read_all(&mut r), "one\n");
        let mut w = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&p)
            .unwrap_or_else(|e| panic!("a{i}: opening for writing: {e}"));
        w.write_all(b"two\n").unwrap();
        assert_eq!(read_all(&mut w), "one\ntwo\n", "a{i}: the writer's fd");
        assert_eq!(
            read_all(&mut r),
            "one\n",
            "a{i}: the reader keeps the lower data"
        );
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            "one\ntwo\n",
            "a{i}: new opens"
        );
        assert_eq!(fs::metadata(&p).unwrap().ino(), ino, "a{i}: st_ino");
        assert_eq!(
            w.metadata().unwrap().ino(),
            ino,
            "a{i}: st_ino of the writer"
        );
        assert_eq!(
            r.metadata().unwrap().ino(),
            ino,
            "a{i}: st_ino of the reader"
        );
        // Once copied up, the reader no longer stands in anyone's way.
        fs::OpenOptions::new().write(true).open(&p).unwrap();
        drop((r, w));

        // Another name of the same lower file.
        let p = m.mnt.join(format!("d/b{i}"));
        let link = m.mnt.join(format!("d/b{i}.link"));
        let ino = fs::metadata(&p).unwrap().ino();
        let mut r = fs::File::open(&p).unwrap();
        assert_eq!(read_all(&mut r), "one\n");
        let mut w = fs::OpenOptions::new()
            .append(true)
            .open(&link)
            .unwrap_or_else(|e| panic!("b{i}.link: opening for writing: {e}"));
        w.write_all(b"two\n").unwrap();
        drop(w);
        assert_eq!(
            read_all(&mut r),
            "one\n",
            "b{i}: the reader keeps the lower data"
        );
        assert_eq!(fs::read_to_string(&link).unwrap(), "one\ntwo\n");
        assert_eq!(fs::metadata(&link).unwrap().ino(), ino, "b{i}.link: st_ino");
        // A truncate(2) by name while the reader is still open.
        nix::unistd::truncate(&link, 3).unwrap_or_else(|e| panic!("b{i}: truncate: {e}"));
        assert_eq!(fs::read_to_string(&link).unwrap(), "one");
        drop(r);

        // Both names known to the kernel (one node), a reader on one; a
        // write through that name, then one through the other name, which
        // the kernel still holds on the old node (the soak's case).
        let p = m.mnt.join(format!("e/c{i}"));
        let link = m.mnt.join(format!("c{i}"));
        let ino = fs::metadata(&link).unwrap().ino();
        assert_eq!(fs::metadata(&p).unwrap().ino(), ino);
        let mut r = fs::File::open(&p).unwrap();
        assert_eq!(read_all(&mut r), "one\n");
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .and_then(|mut w| w.write_all(b"two\n"))
            .unwrap_or_else(|e| panic!("e/c{i}: writing: {e}"));
        fs::OpenOptions::new()
            .append(true)
            .open(&link)
            .and_then(|mut w| w.write_all(b"three\n"))
            .unwrap_or_else(|e| panic!("c{i}: writing the other name: {e}"));
        for q in [&p, &link] {
            assert_eq!(fs::read_to_string(q).unwrap(), "one\ntwo\nthree\n");
            assert_eq!(
                fs::metadata(q).unwrap().ino(),
                ino,
                "{}: st_ino",
                q.display()
            );
        }
        assert_eq!(
            read_all(&mut r),
            "one\n",
            "c{i}: the reader keeps the lower data"
        );
    }
    for i in 0..N {
        assert_eq!(
            fs::read_to_string(t.l1.join(format!("a{i}"))).unwrap(),
            "one\n",
            "the lower is untouched"
        );
    }
    m.unmount();
}

/// Readers and writers of the same lower files on several threads: no
/// error at all, and the data ends up consistent.
#[test]
fn racing_readers_and_writers_see_no_error_by_default() {
    if !root() {
        return;
    }
    let t = Setup::new("pt-race");
    for i in 0..40 {
        file(&t.l1, &format!("f{i}"), &[b'.'; 8192], 0o644);
    }
    let m = t.mount(&[]);
    let errors = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for seed in 0..4u64 {
            let (mnt, errors) = (&m.mnt, &errors);
            s.spawn(move || {
                use std::os::unix::fs::FileExt;
                let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                for _ in 0..400 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let p = mnt.join(format!("f{}", (x >> 33) % 40));
                    let off = (x >> 40) % 8000;
                    // Hold a reader open across a writer's open.
                    let r = fs::File::open(&p).and_then(|r| {
                        r.read_at(&mut [0u8; 64], off)?;
                        if (x >> 20) & 1 == 0 {
                            fs::OpenOptions::new()
                                .write(true)
                                .open(&p)?
                                .write_all_at(b"x", off)?;
                        }
                        r.read_at(&mut [0u8; 64], off).map(drop)
                    });
                    if let Err(e) = r {
                        errors.lock().unwrap().push(format!("{}: {e}", p.display()));
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    for i in 0..40 {
        let data = fs::read(m.mnt.join(format!("f{i}"))).unwrap();
        assert_eq!(data.len(), 8192);
        assert!(data.iter().all(|&b| b == b'.' || b == b'x'));
    }
    m.unmount();
}

/// A reopen that walks no name (/proc/self/fd/N) cannot be moved to the
/// new node: its retry comes back to the pinned one. A writer gets ETXTBSY
/// (the kernel's own answer for a file in another I/O mode); a reader gets
/// what the fd it reopens reads.
#[test]
fn a_reopen_through_proc_of_a_pinned_file_keeps_the_old_answer() {
    if !root() {
        return;
    }
    use std::os::fd::AsRawFd;
    let t = Setup::new("pt-proc");
    file(&t.l1, "f", b"one\n", 0o644);
    let m = t.mount(&[]);
    let p = m.mnt.join("f");
    let mut r = fs::File::open(&p).unwrap();
    assert_eq!(read_all(&mut r), "one\n");
    let proc = PathBuf::from(format!("/proc/self/fd/{}", r.as_raw_fd()));
    let w = fs::OpenOptions::new().write(true).open(&proc);
    assert_eq!(errno_of(w), Some(libc::ETXTBSY));
    let mut again = fs::File::open(&proc).unwrap();
    assert_eq!(read_all(&mut again), "one\n");
    // By name, it works (and the file was copied up meanwhile).
    fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"two\n")
        .unwrap();
    assert_eq!(fs::read_to_string(&p).unwrap(), "one\ntwo\n");
    assert_eq!(fs::read_to_string(t.u.join("f")).unwrap(), "one\ntwo\n");
    drop((r, again));
    m.unmount();
}

/// A retired node no reader pins any more, and a way back to it: hard links
/// `f` and `g` of a lower file; a reader of `f` pins its node to the lower
/// file, a writer by `g` (appending "four\n") retires that node, the reader
/// closes. `held`, an O_PATH fd of `f` taken first, still leads to the
/// retired node (through `proc()`).
struct Retired {
    m: Mount,
    held: std::os::fd::OwnedFd,
    _t: Setup,
}

impl Retired {
    fn new(tag: &str) -> Retired {
        let t = Setup::new(tag);
        file(&t.l1, "f", b"one two three\n", 0o644);
        hardlink(&t.l1, "f", "g");
        let m = t.mount(&[]);
        let held = nix::fcntl::open(
            &m.mnt.join("f"),
            nix::fcntl::OFlag::O_PATH,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let mut r = fs::File::open(m.mnt.join("f")).unwrap();
        assert_eq!(read_all(&mut r), "one two three\n");
        fs::OpenOptions::new()
            .append(true)
            .open(m.mnt.join("g"))
            .unwrap()
            .write_all(b"four\n")
            .unwrap();
        drop(r);
        Retired { m, held, _t: t }
    }

    /// The /proc path of `held`: it reopens the retired node.
    fn proc(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.held.as_raw_fd()))
    }

    fn done(self) {
        drop(self.held);
        self.m.unmount();
    }
}
/// A writer that reaches a retired node without a name (a reopen through
/// /proc of an O_PATH fd taken before the copy-up) is served there once no
/// reader pins it, and its ftruncate works: the kernel does not retry an
/// ftruncate on ESTALE, so none may come back. And the file's other names
/// show what it did.
#[test]
fn a_writer_that_came_back_to_a_retired_node_can_truncate() {
    if !root() {
        return;
    }
    let r = Retired::new("pt-retired-writer");
    let (f, g, proc) = (r.m.mnt.join("f"), r.m.mnt.join("g"), r.proc());
    let w = fs::OpenOptions::new().write(true).open(&proc).unwrap();
    w.set_len(3).unwrap();
    drop(w);
    assert_eq!(fs::read_to_string(&g).unwrap(), "one");
    assert_eq!(fs::read_to_string(&f).unwrap(), "one");
    assert_eq!(fs::symlink_metadata(&g).unwrap().len(), 3);
    r.done();
}

/// While such a writer is open, the file's other names show each of its
/// writes at once (kernel overlayfs has one inode: a stat by any name sees
/// the size a write left), not only after the writer closes — also when a
/// reader of the retired node opened it first.
#[test]
fn other_names_see_each_write_of_a_writer_on_a_retired_node() {
    if !root() {
        return;
    }
    let r = Retired::new("pt-retired-writes");
    let (g, proc) = (r.m.mnt.join("g"), r.proc());
    assert_eq!(fs::symlink_metadata(&g).unwrap().len(), 19);
    // A reader of the retired node first: the writer shares whatever
    // backing it was given.
    let mut r2 = fs::File::open(&proc).unwrap();
    assert_eq!(read_all(&mut r2).len(), 19);
    let mut w = fs::OpenOptions::new().append(true).open(&proc).unwrap();
    for (i, word) in ["five\n", "six\n", "seven\n"].iter().enumerate() {
        w.write_all(word.as_bytes()).unwrap();
        let want = 19 + ["five\n", "six\n", "seven\n"][..=i].concat().len() as u64;
        assert_eq!(
            fs::symlink_metadata(&g).unwrap().len(),
            want,
            "after {word:?}"
        );
    }
    drop(w);
    drop(r2);
    assert_eq!(
        fs::read_to_string(&g).unwrap(),
        "one two three\nfour\nfive\nsix\nseven\n"
    );
    r.done();
}

/// A running lower binary opened for writing: ETXTBSY from the VFS (the
/// running file's inode denies writers before the open reaches the
/// daemon), as kernel overlayfs answers on this kernel; once it exits, the
/// write goes through.
#[test]
fn writing_a_running_lower_binary_is_refused_as_by_overlayfs() {
    if !root() {
        return;
    }
    let t = Setup::new("pt-exec");
    let bin = t.l1.join("sl");
    fs::copy("/bin/sleep", &bin).unwrap();
    let overlay = {
        let s = Scratch::new("pt-exec-ovl");
        let (u, w, mnt) = (s.dir("u"), s.dir("w"), s.dir("m"));
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            t.l1.display(),
            u.display(),
            w.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &mnt,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .unwrap();
        let e = write_while_running(&mnt.join("sl"));
        nix::mount::umount(&mnt).unwrap();
        e
    };
    let m = t.mount(&[]);
    let e = write_while_running(&m.mnt.join("sl"));
    assert_eq!(e, overlay, "unionfs and overlayfs differ");
    assert_eq!(e, Some(libc::ETXTBSY));
    fs::OpenOptions::new()
        .append(true)
        .open(m.mnt.join("sl"))
        .unwrap();
    m.unmount();
}

/// Starts `bin 5`, opens `bin` for writing while it runs; the errno.
fn write_while_running(bin: &Path) -> Option<i32> {
    let mut child = std::process::Command::new(bin).arg("5").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = fs::OpenOptions::new().append(true).open(bin).map(drop);
    child.kill().unwrap();
    child.wait().unwrap();
    errno_of(r)
}
