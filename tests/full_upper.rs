//! A full upper (issue 14, item 1): the upper and its workdir live on a
//! small filesystem that the test fills and then frees again, a little at
//! a time — a tmpfs (`size=2m,nr_inodes=256`: data blocks filled with a
//! filler file; inodes, and the xattr space tmpfs counts with them, with
//! empty files and small xattrs) and a loop-mounted 2 MiB ext4 image (1 KiB
//! blocks, 64 inodes: data, directory and xattr blocks all counted in
//! blocks, given back one block at a time).
//!
//! For every operation that needs space in the upper (write, create, mkdir,
//! symlink, copy-up of a file bigger than the whole filesystem, of a file
//! bigger than what is free, of a small file, of hard links, renames that
//! need a redirect and a whiteout, unlink and rmdir that need a whiteout,
//! link) the test first tries it with everything full, then sweeps the free
//! budget of the resource it needs upwards, one step at a time, and after
//! every attempt checks:
//!
//! * the caller got ENOSPC (or EDQUOT), or the operation succeeded;
//! * on failure the merged view is exactly as before (content byte for byte,
//!   inode numbers, link counts), and nothing is left in the workdir;
//! * on success the merged view shows the complete new state, and a
//!   remount of the same upper and workdir shows the same view;
//! * the daemon still serves (the other files read fine);
//! * the lowers are untouched.
//!
//! At the end all space is freed, every operation works again, and a
//! remount shows the same view. Both whiteout formats are run.
//!
//! Soak: `UNIONFS_SOAK_ROUNDS=N` repeats the whole sweep N times (fresh
//! filesystem each round; the order of the operations is shuffled; finer
//! steps of inode space on tmpfs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const SMALL_FS: &str = "size=2m,nr_inodes=256,mode=0755";
const MIB: usize = 1 << 20;

/// Which small filesystem the upper is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SmallFs {
    /// tmpfs: inodes and xattrs share one budget, given back in small steps.
    Tmpfs,
    /// A loop-mounted ext4 image (2 MiB, 1 KiB blocks, 64 inodes): blocks
    /// for data, directories and xattrs, given back one block at a time.
    Ext4,
}

/// The small filesystem the upper lives on, with the filler objects.
struct Small {
    root: PathBuf,
    blob: PathBuf,
    /// A second filler for the last free blocks: growing the big one may
    /// need an extent-tree block besides its data block, and a block left
    /// free that way would go to the operation under test.
    crumbs: PathBuf,
    fill: PathBuf,
    inodes: Vec<PathBuf>,
    /// Small xattrs on `fill` eating what is left of the inode space, so
    /// that space can be given back in steps far smaller than an inode.
    xattrs: Vec<String>,
    kind: SmallFs,
    _guard: Mount,
}

fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl Small {
    fn mount(at: PathBuf, kind: SmallFs, image: &Path) -> Small {
        match kind {
            SmallFs::Tmpfs => {
                let out = run(
                    "mount",
                    &["-t", "tmpfs", "-o", SMALL_FS, "tmpfs", at.to_str().unwrap()],
                );
                assert!(out.ok(), "cannot mount a tmpfs:\n{out}");
            }
            SmallFs::Ext4 => {
                fs::File::create(image).unwrap().set_len(2 << 20).unwrap();
                // 1 KiB blocks, 64 inodes, no reserve for root, no journal:
                // every block the union needs is one the test can count.
                let out = run(
                    "mkfs.ext4",
                    &[
                        "-q",
                        "-F",
                        "-b",
                        "1024",
                        "-N",
                        "64",
                        "-m",
                        "0",
                        "-O",
                        "^has_journal,^resize_inode",
                        image.to_str().unwrap(),
                    ],
                );
                assert!(out.ok(), "mkfs.ext4 failed:\n{out}");
                // A loop device that goes away with the mount (autoclear).
                let out = run(
                    "mount",
                    &["-o", "loop", image.to_str().unwrap(), at.to_str().unwrap()],
                );
                assert!(out.ok(), "cannot loop-mount the ext4 image:\n{out}");
            }
        }
        let guard = Mount::adopt(&at);
        let fill = at.join("fill");
        fs::create_dir(&fill).unwrap();
        // The filler file exists for good: making it later would need an
        // inode, and the inodes may be what is full.
        fs::File::create(fill.join("blob")).unwrap();
        fs::File::create(fill.join("crumbs")).unwrap();
        Small {
            blob: fill.join("blob"),
            crumbs: fill.join("crumbs"),
            fill,
            inodes: Vec::new(),
            xattrs: Vec::new(),
            kind,
            root: at,
            _guard: guard,
        }
    }

    /// Fills the data blocks: the filler file grows until the filesystem
    /// says no, even after its writeback. (ext4's delayed allocation
    /// reserves blocks for extent-tree metadata that the writeback may not
    /// need, and gives them back when it runs — later, on its own, or at
    /// the union's next syncfs — so a disk full only in its reservations
    /// would leave the operation under test a block or two.)
    fn fill_blocks(&self) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&self.blob)
            .unwrap();
        loop {
            let mut wrote = 0;
            for chunk in [256 << 10, 4096, 512] {
                let buf = vec![0xeeu8; chunk];
                loop {
                    match f.write(&buf) {
                        Ok(n) => {
                            wrote += n;
                            if n < buf.len() {
                                break;
                            }
                        }
                        Err(e) if is_full(&e) => break,
                        Err(e) => panic!("filling {}: {e}", self.blob.display()),
                    }
                }
            }
            match f.sync_all() {
                Ok(()) => {}
                Err(e) if is_full(&e) => {}
                Err(e) => panic!("syncing {}: {e}", self.blob.display()),
            }
            if wrote == 0 {
                break;
            }
        }
        // The crumbs, a block at a time: a few extents, held in its inode.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&self.crumbs)
            .unwrap();
        loop {
            match f.write(&[0xdd; 512]).and_then(|_| f.sync_all()) {
                Ok(()) => {}
                Err(e) if is_full(&e) => break,
                Err(e) => panic!("filling {}: {e}", self.crumbs.display()),
            }
        }
    }

    /// Frees about `n` bytes of data blocks (the crumbs go with the last).
    fn free_blocks(&self, n: u64) {
        if let Ok(m) = fs::metadata(&self.blob) {
            if n >= m.len() {
                fs::File::create(&self.crumbs).unwrap();
            }
            let f = fs::OpenOptions::new().write(true).open(&self.blob).unwrap();
            f.set_len(m.len().saturating_sub(n)).unwrap();
        }
    }

    /// Uses every inode (and so, on tmpfs, the xattr space too).
    fn fill_inodes(&mut self) {
        loop {
            let p = self.fill.join(format!("i{}", self.inodes.len()));
            match fs::File::create(&p) {
                Ok(_) => self.inodes.push(p),
                Err(e) if is_full(&e) => break,
                Err(e) => panic!("filling inodes: {e}"),
            }
        }
    }

    /// Then the rest of the inode space (tmpfs counts xattrs and inodes in
    /// one budget), with xattrs of a few dozen bytes.
    fn fill_ispace(&mut self) {
        loop {
            let n = format!("user.f{}", self.xattrs.len());
            match xattr::set(&self.fill, &n, &vec![0x5a; ispace_step()]) {
                Ok(()) => self.xattrs.push(n),
                Err(e) if is_full(&e) => break,
                Err(e) => panic!("filling the inode space: {e}"),
            }
        }
    }

    /// Gives back `k` steps of inode space: a small xattr each while there
    /// are some, else an inode.
    fn free_inodes(&mut self, k: usize) {
        for _ in 0..k {
            if let Some(n) = self.xattrs.pop() {
                xattr::remove(&self.fill, &n).unwrap();
            } else if let Some(p) = self.inodes.pop() {
                fs::remove_file(p).unwrap();
            }
        }
    }

    fn fill_all(&mut self) {
        // Inodes first: on ext4 a full disk also stops new directory
        // entries, which would leave inodes free.
        self.fill_inodes();
        // Trade a few inodes for small xattrs, so the sweep gives back the
        // space of an inode in a dozen steps and meets every allocation of
        // an operation (inode, then each xattr) one by one.
        // (tmpfs only: ext4 keeps xattrs in the inode or in data blocks.)
        if self.kind == SmallFs::Tmpfs {
            for _ in 0..4 {
                if let Some(p) = self.inodes.pop() {
                    fs::remove_file(p).unwrap();
                }
            }
            self.fill_ispace();
        }
        self.fill_blocks();
    }

    fn free_all(&mut self) {
        self.free_blocks(u64::MAX);
        let k = self.inodes.len() + self.xattrs.len();
        self.free_inodes(k);
    }

    /// Free blocks and inodes.
    fn free_counts(&self) -> (u64, u64) {
        let st = nix::sys::statvfs::statvfs(&self.root).unwrap();
        (st.blocks_available() as u64, st.files_available() as u64)
    }

    fn free_bytes(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.root).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    }
}

/// Bytes of xattr value per step of the inode-space sweep: fine when
/// soaking, coarser (fewer attempts) in CI.
fn ispace_step() -> usize {
    if rounds() > 1 {
        16
    } else {
        120
    }
}

/// One scenario: lowers on the ordinary disk, upper and workdir on a small tmpfs.
struct Setup {
    _s: Scratch,
    lower: PathBuf,
    small: Small,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    format: &'static str,
    kind: SmallFs,
}

/// Deterministic content for a lower file.
fn bytes_for(name: &str, len: usize) -> Vec<u8> {
    let seed = name
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    Rng::new(seed).bytes(len)
}

impl Setup {
    fn new(format: &'static str, kind: SmallFs) -> Setup {
        let s = Scratch::new(&format!("full-{kind:?}-{format}"));
        let lower = s.dir("lower");
        // Bigger than the whole upper filesystem: can never be copied up.
        file(&lower, "huge", &bytes_for("huge", 3 * MIB), 0o644);
        // Fits when the filesystem is empty, not when it is full.
        file(&lower, "big", &bytes_for("big", MIB / 2), 0o644);
        for i in 0..4 {
            let n = format!("s/small{i}");
            file(&lower, &n, &bytes_for(&n, 16 << 10), 0o644);
        }
        file(&lower, "dir/a", &bytes_for("dir/a", 3000), 0o644);
        file(&lower, "dir/sub/b", &bytes_for("dir/sub/b", 5000), 0o644);
        file(&lower, "h1", &bytes_for("h1", 48 << 10), 0o644);
        hardlink(&lower, "h1", "h2");
        file(&lower, "h3", &bytes_for("h3", 20 << 10), 0o644);
        hardlink(&lower, "h3", "h4");
        file(&lower, "h5", &bytes_for("h5", 20 << 10), 0o644);
        hardlink(&lower, "h5", "h6");
        file(&lower, "victim", b"delete me", 0o644);
        mkdir(&lower, "empty1", 0o755);
        file(&lower, "sdir/a", b"moving", 0o644);
        file(&lower, "tdir/x", b"to be deleted", 0o644);
        mkdir(&lower, "empty2", 0o755);
        file(
            &lower,
            "keep/reader",
            &bytes_for("keep/reader", 100 << 10),
            0o644,
        );
        let small = Small::mount(s.dir("small"), kind, &s.path("ext4.img"));
        let upper = small.root.join("upper");
        let work = small.root.join("work");
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&work).unwrap();
        Setup {
            mnt: s.dir("mnt"),
            lower,
            small,
            upper,
            work,
            format,
            kind,
            _s: s,
        }
    }

    fn mount(&self) -> Mount {
        Mount::unionfs_opts(
            &self.lower,
            &self.upper,
            &self.mnt,
            &format!("workdir={},whiteout={}", self.work.display(), self.format),
        )
    }

    fn m(&self, rel: &str) -> PathBuf {
        at(&self.mnt, rel)
    }

    /// Staged objects left in the workdir (must be none between operations).
    ///
    /// A copy-up that succeeded is not junk even when the operation it was
    /// for then failed (a write into a full filesystem, as in overlayfs):
    /// on a durable mount it may still be pending there, served from the
    /// workdir until its burst publishes it (`publish.rs`). An fsync of a
    /// directory of the union publishes it; if the full upper refuses even
    /// that, the copy keeps its pending mark (and the next mount publishes
    /// it). Anything else there is junk, and a pending mark is only
    /// excused when that fsync failed.
    fn work_junk(&self) -> Vec<String> {
        let published = fs::File::open(&self.mnt).and_then(|d| d.sync_all());
        let w = self.work.join("unionfs-work");
        let pending = |p: &Path| {
            published.is_err()
                && xattr::list(p)
                    .map(|mut names| {
                        names.any(|n| n.to_string_lossy().ends_with(".unionfs.pending"))
                    })
                    .unwrap_or(false)
        };
        fs::read_dir(&w)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| !pending(&e.path()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The daemon answers and other files read right.
    fn assert_serving(&self) {
        let got = fs::read(self.m("keep/reader")).expect("daemon no longer serves");
        assert!(
            got == bytes_for("keep/reader", 100 << 10),
            "keep/reader reads wrong"
        );
        fs::read_dir(self.m("/"))
            .expect("readdir of the root fails")
            .count();
    }
}

/// The view comparison after a failed operation: everything a user sees
/// (content, modes, link counts, inode numbers) except times, which a
/// failed attempt may touch on the upper parent.
const AFTER_FAILURE: Cmp = Cmp {
    nlink: true,
    mtime: false,
    root_mtime: false,
    ctime: false,
    dir_size: false,
    ino: true,
    dev: false,
};

/// The merged view for comparisons across a failed attempt. A failed
/// operation may have copied up parents (complete and atomic, each), which
/// makes a directory merged: it then reports nlink 1, as in overlayfs. So
/// directory link counts are left out; everything else stays.
fn view(mnt: &Path) -> Snapshot {
    let mut v = snapshot(mnt);
    for e in v.values_mut() {
        if e.is_dir() {
            e.nlink = 0;
        }
    }
    v
}

/// Operations that need space in the upper. Each is retried with more free
/// space until it succeeds; `done` checks the view once it did.
struct Op {
    name: &'static str,
    /// What is freed between attempts: inodes, or bytes of data.
    budget: Budget,
    /// Done first, while there is space.
    prepare: fn(&Setup),
    run: fn(&Setup) -> io::Result<()>,
    done: fn(&Setup),
    /// It needs only new hard links — whiteouts, which in AUFS format are
    /// links to the branch's whiteout base, and links from the index: no
    /// inode and, mostly, no block, so on a filesystem that does not count
    /// links as inodes (ext4, unlike tmpfs) it may succeed at once.
    links_only: bool,
}

#[derive(Clone, Copy, Debug)]
enum Budget {
    Inodes,
    Bytes(u64),
}

fn copy_up_append(s: &Setup, rel: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().append(true).open(s.m(rel))?;
    f.write_all(b"+appended")?;
    f.sync_all()
}

fn assert_appended(s: &Setup, rel: &str, len: usize) {
    let mut want = bytes_for(rel, len);
    want.extend_from_slice(b"+appended");
    let got = fs::read(s.m(rel)).unwrap();
    assert!(got == want, "{rel}: content after the copy-up is wrong");
}

fn ops() -> Vec<Op> {
    vec![
        Op {
            name: "create",
            links_only: false,
            prepare: |_| {},
            budget: Budget::Inodes,
            run: |s| fs::File::create(s.m("new-file")).map(drop),
            done: |s| assert_eq!(fs::read(s.m("new-file")).unwrap(), b""),
        },
        Op {
            name: "mkdir",
            links_only: false,
            prepare: |_| {},
            budget: Budget::Inodes,
            run: |s| fs::create_dir(s.m("new-dir")),
            done: |s| assert!(fs::metadata(s.m("new-dir")).unwrap().is_dir()),
        },
        Op {
            name: "symlink",
            links_only: false,
            prepare: |_| {},
            budget: Budget::Inodes,
            run: |s| std::os::unix::fs::symlink("target", s.m("new-link")),
            done: |s| assert_eq!(fs::read_link(s.m("new-link")).unwrap(), Path::new("target")),
        },
        Op {
            name: "copy-up of a small file",
            links_only: false,
            prepare: |_| {},
            budget: Budget::Bytes(4 << 10),
            run: |s| copy_up_append(s, "s/small0"),
            done: |s| assert_appended(s, "s/small0", 16 << 10),
        },
        Op {
            name: "copy-up of a small file (inodes)",
            links_only: false,
            prepare: |_| {},
            budget: Budget::Inodes,
            run: |s| copy_up_append(s, "s/small1"),
            done: |s| assert_appended(s, "s/small1", 16 << 10),
        },
        Op {
            name: "copy-up of a file bigger than the free space",
            links_only: false,
            prepare: |_| {},
            budget: Budget::Bytes(128 << 10),
            run: |s| copy_up_append(s, "big"),
            done: |s| assert_appended(s, "big", MIB / 2),
        },
        Op {
            name: "hard-link copy-up",
            links_only: false,
            prepare: |_| {},
            budget: Budget::Inodes,
            run: |s| copy_up_append(s, "h1"),
            done: |s| {
                assert_appended(s, "h1", 48 << 10);
                let mut want = bytes_for("h1", 48 << 10);
                want.extend_from_slice(b"+appended");
                assert!(fs::read(s.m("h2")).unwrap() == want, "h2 is not h1's data");
                let (a, b) = (
                    fs::metadata(s.m("h1")).unwrap(),
                    fs::metadata(s.m("h2")).unwrap(),
                );
                assert_eq!(
                    (a.ino(), a.nlink()),
                    (b.ino(), 2),
                    "h1/h2 not one file of 2 links"
                );
            },
        },
        Op {
            name: "link of a lower file",
            links_only: false,
            prepare: |_| {},
            budget: Budget::Inodes,
            run: |s| fs::hard_link(s.m("s/small2"), s.m("s/small2-link")),
            done: |s| {
                let (a, b) = (
                    fs::metadata(s.m("s/small2")).unwrap(),
                    fs::metadata(s.m("s/small2-link")).unwrap(),
                );
                assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
                assert!(fs::read(s.m("s/small2-link")).unwrap() == bytes_for("s/small2", 16 << 10));
            },
        },
        Op {
            name: "rename of a lower directory (redirect + whiteout)",
            links_only: false,
            prepare: |_| {},
            budget: Budget::Inodes,
            run: |s| fs::rename(s.m("dir"), s.m("dir-renamed")),
            done: |s| {
                assert_absent(&s.mnt, &["/dir"]);
                assert!(fs::read(s.m("dir-renamed/a")).unwrap() == bytes_for("dir/a", 3000));
                assert!(
                    fs::read(s.m("dir-renamed/sub/b")).unwrap() == bytes_for("dir/sub/b", 5000)
                );
            },
        },
        Op {
            name: "rename of a lower file (whiteout)",
            links_only: false,
            prepare: |_| {},
            budget: Budget::Inodes,
            run: |s| fs::rename(s.m("s/small3"), s.m("small3-moved")),
            done: |s| {
                assert_absent(&s.mnt, &["/s/small3"]);
                assert!(fs::read(s.m("small3-moved")).unwrap() == bytes_for("s/small3", 16 << 10));
            },
        },
        Op {
            name: "unlink of a lower file (whiteout)",
            links_only: true,
            prepare: |_| {},
            budget: Budget::Inodes,
            run: |s| fs::remove_file(s.m("victim")),
            done: |s| assert_absent(&s.mnt, &["/victim"]),
        },
        Op {
            name: "unlink of one name of a lower hard-link pair (index + whiteout)",
            links_only: false,
            prepare: |_| {},
            budget: Budget::Inodes,
            run: |s| fs::remove_file(s.m("h3")),
            done: |s| {
                assert_absent(&s.mnt, &["/h3"]);
                let m = fs::metadata(s.m("h4")).unwrap();
                assert_eq!(m.nlink(), 1, "h4 keeps a count of 2 after h3 went");
                assert!(fs::read(s.m("h4")).unwrap() == bytes_for("h3", 20 << 10));
            },
        },
        Op {
            name: "rename of the second name of a copied-up hard link (link from the index)",
            links_only: true,
            prepare: |s| copy_up_append(s, "h5").unwrap(),
            budget: Budget::Inodes,
            run: |s| fs::rename(s.m("h6"), s.m("h6-moved")),
            done: |s| {
                assert_absent(&s.mnt, &["/h6"]);
                let mut want = bytes_for("h5", 20 << 10);
                want.extend_from_slice(b"+appended");
                for n in ["h5", "h6-moved"] {
                    assert!(fs::read(s.m(n)).unwrap() == want, "{n}: wrong content");
                    assert_eq!(fs::metadata(s.m(n)).unwrap().nlink(), 2, "{n}: nlink");
                }
            },
        },
        Op {
            name: "rmdir of a lower directory (whiteout)",
            links_only: true,
            prepare: |_| {},
            budget: Budget::Inodes,
            run: |s| fs::remove_dir(s.m("empty1")),
            done: |s| assert_absent(&s.mnt, &["/empty1"]),
        },
        Op {
            name: "rmdir of a copied-up directory (whiteout, upper dir moved out)",
            links_only: true,
            prepare: |s| {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(s.m("empty2"), fs::Permissions::from_mode(0o700)).unwrap();
            },
            budget: Budget::Inodes,
            run: |s| fs::remove_dir(s.m("empty2")),
            done: |s| assert_absent(&s.mnt, &["/empty2"]),
        },
        Op {
            name: "rename of a lower directory over an emptied one (moved aside, whiteout)",
            links_only: false,
            // tdir is empty in the view but its upper instance holds a whiteout.
            prepare: |s| {
                if s.m("tdir/x").exists() {
                    fs::remove_file(s.m("tdir/x")).unwrap();
                }
            },
            budget: Budget::Inodes,
            run: |s| fs::rename(s.m("sdir"), s.m("tdir")),
            done: |s| {
                assert_absent(&s.mnt, &["/sdir", "/tdir/x"]);
                assert_eq!(fs::read(s.m("tdir/a")).unwrap(), b"moving");
            },
        },
    ]
}

/// The copy-up of a file bigger than the whole upper filesystem fails with
/// ENOSPC whatever is free, and gives all the space it took back.
fn huge_copy_up_fails_cleanly(s: &Setup) {
    let free = s.small.free_bytes();
    // A write copies only what it writes (sparse copy-up), so the copy-up
    // of all the data is asked for by a rename, which needs it whole.
    let e = fs::rename(s.m("huge"), s.m("huge-moved"))
        .expect_err("a 3 MiB copy-up into 2 MiB succeeded");
    assert!(
        !s.m("huge-moved").exists(),
        "the failed rename left its target"
    );
    assert!(
        is_full(&e),
        "copy-up of huge: {} instead of ENOSPC",
        errname(&e)
    );
    assert!(
        fs::read(s.m("huge")).unwrap() == bytes_for("huge", 3 * MIB),
        "huge changed"
    );
    assert_eq!(
        s.work_junk(),
        Vec::<String>::new(),
        "junk left in the workdir"
    );
    assert!(
        !s.upper.join("huge").exists(),
        "a partial copy of huge is in the upper"
    );
    assert_eq!(
        s.small.free_bytes(),
        free,
        "the failed copy-up did not give its space back"
    );
}

/// Unmounts and mounts the same upper and workdir again; the view must be
/// the same, inode numbers included (a copy-up records the lower object's
/// number, which must survive).
fn remount_same(s: &Setup, m: Mount, after: &str) -> Mount {
    let before = snapshot(&s.mnt);
    m.unmount();
    let m = s.mount();
    let again = snapshot(&s.mnt);
    let with_ino = Cmp {
        ino: true,
        ..Cmp::VIEW
    };
    assert_tree_eq(
        &format!("after {after}: the view changed across a remount"),
        &before,
        &again,
        with_ino,
    );
    m
}

fn run_sweep(format: &'static str, kind: SmallFs, seed: u64) {
    let mut s = Setup::new(format, kind);
    let lowers = snapshot_all(&[&s.lower]);
    let mut m = s.mount();
    s.assert_serving();

    // A file written while there was space, then written into a full filesystem.
    fs::write(s.m("log"), b"start\n").unwrap();
    huge_copy_up_fails_cleanly(&s);

    let mut ops = ops();
    Rng::new(seed).shuffle(&mut ops);
    for op in &ops {
        s.small.free_all();
        (op.prepare)(&s);
        s.small.fill_all();
        // Writing into the full filesystem.
        {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(s.m("log"))
                .unwrap();
            let r = f
                .write_all(&vec![b'x'; 256 << 10])
                .and_then(|()| f.sync_all());
            let e = r.expect_err("a 256 KiB write into a full filesystem succeeded");
            assert!(is_full(&e), "write: {} instead of ENOSPC", errname(&e));
        }
        // On ext4 everything the union writes — directory entries, xattr
        // blocks, data — is counted in blocks: sweep those, a block a time.
        let budget = match (s.kind, op.budget) {
            (SmallFs::Ext4, Budget::Inodes) => Budget::Bytes(1024),
            (_, b) => b,
        };
        let mut attempts = 0;
        let mut before = view(&s.mnt);
        // What was free when the first attempt ran (for the message below).
        let full = s.small.free_counts();
        loop {
            match (op.run)(&s) {
                Ok(()) => {
                    assert_eq!(s.work_junk(), Vec::<String>::new(), "{}: junk", op.name);
                    (op.done)(&s);
                    m = remount_same(&s, m, op.name);
                    break;
                }
                Err(e) => {
                    assert!(
                        is_full(&e),
                        "{} (attempt {attempts}): {} instead of ENOSPC",
                        op.name,
                        errname(&e)
                    );
                    let after = view(&s.mnt);
                    assert_tree_eq(
                        &format!(
                            "{} failed (attempt {attempts}) but the view changed",
                            op.name
                        ),
                        &before,
                        &after,
                        AFTER_FAILURE,
                    );
                    before = after;
                    assert_eq!(
                        s.work_junk(),
                        Vec::<String>::new(),
                        "{} failed (attempt {attempts}) and left junk in the workdir",
                        op.name
                    );
                }
            }
            s.assert_serving();
            attempts += 1;
            assert!(
                attempts < 400,
                "{}: still failing with everything freed",
                op.name
            );
            if attempts == 1 {
                // Refused with everything full; from now on the operation
                // lacks only the one resource swept: the other is freed.
                match budget {
                    Budget::Inodes => s.small.free_blocks(u64::MAX),
                    Budget::Bytes(_) => {
                        let k = s.small.inodes.len() + s.small.xattrs.len();
                        s.small.free_inodes(k);
                    }
                }
                continue;
            }
            match budget {
                Budget::Inodes => s.small.free_inodes(1),
                Budget::Bytes(n) => s.small.free_blocks(n),
            }
            if attempts > 300 {
                s.small.free_all();
            }
        }
        eprintln!(
            "{kind:?} {format}: {}: succeeded after {attempts} refused attempt(s)",
            op.name
        );
        assert!(
            attempts > 0 || (op.links_only && format == "aufs" && kind == SmallFs::Ext4),
            "{}: did not fail on a full filesystem (free blocks, inodes: {full:?})",
            op.name
        );
    }

    // Everything freed: everything works again.
    s.small.free_all();
    {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(s.m("log"))
            .unwrap();
        f.write_all(b"more\n").unwrap();
    }
    fs::write(s.m("after-free"), b"ok").unwrap();
    fs::rename(s.m("keep"), s.m("keep-moved")).unwrap();
    fs::rename(s.m("keep-moved"), s.m("keep")).unwrap();
    fs::remove_file(s.m("s/small2-link")).unwrap();
    huge_copy_up_fails_cleanly(&s);
    s.assert_serving();

    let m = remount_same(&s, m, "the end");
    assert_unchanged(&lowers);
    m.unmount();
}

/// A killed daemon's copy-ups still pending are published by the next
/// mount (same boot: their data is in the page cache). When the upper is
/// full then — the rename into place needs a directory block it does not
/// have — the mount is refused with one line, and the copies stay in the
/// workdir instead of being cleared with the junk: once room is made, the
/// next mount shows everything written before the kill.
#[test]
fn pending_copy_ups_of_a_killed_daemon_wait_for_room() {
    if !can_loop_mount_ext4() {
        return;
    }
    const N: usize = 12;
    const TRIES: usize = 5;
    let t = Scratch::new("full-killed");
    let lower = t.dir("lower");
    let rel = |k: usize, i: usize| format!("d{k}/f{i}");
    let old = |k: usize, i: usize| bytes_for(&rel(k, i), 2000);
    let new = |k: usize, i: usize| [old(k, i), b"+appended".to_vec()].concat();
    for k in 0..TRIES {
        for i in 0..N {
            file(&lower, &rel(k, i), &old(k, i), 0o644);
        }
    }
    let small = Small::mount(t.dir("small"), SmallFs::Ext4, &t.path("ext4.img"));
    let (upper, work) = (small.root.join("upper"), small.root.join("work"));
    fs::create_dir(&upper).unwrap();
    fs::create_dir(&work).unwrap();
    let mnt = t.dir("mnt");
    let opts = format!("workdir={}", work.display());
    // The daemon publishes within milliseconds: a kill right after the
    // writes usually finds some still pending; else the next directory.
    let mut k = 0;
    loop {
        let m = Mount::unionfs_opts(&lower, &upper, &mnt, &opts);
        for i in 0..N {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(mnt.join(rel(k, i)))
                .unwrap();
            f.write_all(b"+appended").unwrap();
        }
        let pid = m.daemon_pids[0];
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
        assert!(wait_until(Duration::from_secs(20), || !pid_alive(pid)));
        let _ = run("umount", &["-l", mnt.to_str().unwrap()]);
        drop(m);
        let staged = fs::read_dir(work.join("unionfs-work")).unwrap().count();
        eprintln!("killed with {staged} copy-up(s) of d{k} staged");
        if staged > 0 {
            break;
        }
        k += 1;
        assert!(k < TRIES, "every copy-up was published before each kill");
    }

    // Full: no free block, and upper/d's blocks full of entries (hard
    // links: they need no inode).
    small.fill_blocks();
    // Long names first, then shorter ones for what is left of a block,
    // down to the record size of the copies' own names.
    let d = upper.join(format!("d{k}"));
    let mut links = Vec::new();
    for len in [200, 64, 16, 4] {
        loop {
            let name = format!("{:z>len$}", links.len());
            match fs::hard_link(&small.blob, d.join(&name)) {
                Ok(()) => links.push(name),
                Err(e) if is_full(&e) => break,
                Err(e) => panic!("filling upper/d: {e}"),
            }
        }
    }
    let args = [
        "mount".as_ref(),
        lower.as_os_str(),
        upper.as_os_str(),
        mnt.as_os_str(),
        "-o".as_ref(),
        OsStr::new(&opts),
    ];
    let out = run_bin(&args);
    {
        let refused = !out.ok();
        let _ = run("umount", &[mnt.to_str().unwrap()]);
        assert!(
            refused,
            "mounted on a full upper with copy-ups it cannot publish:\n{out}"
        );
        eprintln!("refused: {}", out.stderr.trim());
        let lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert!(
            out.stderr.contains("left pending"),
            "the refusal does not say why:\n{out}"
        );
        assert!(lines.len() <= 2, "more than two lines:\n{out}");
    }
    assert!(wait_until(Duration::from_secs(20), || daemon_pids(&mnt).is_empty()));

    // Room made: everything written before the kill is there.
    for name in &links {
        fs::remove_file(d.join(name)).unwrap();
    }
    small.free_blocks(u64::MAX);
    let m = Mount::unionfs_opts(&lower, &upper, &mnt, &opts);
    for i in 0..N {
        let got = fs::read(mnt.join(rel(k, i))).unwrap();
        assert!(
            got == new(k, i),
            "{}: not the content written before the kill",
            rel(k, i)
        );
    }
    m.unmount();
}

fn rounds() -> u64 {
    std::env::var("UNIONFS_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

#[test]
fn full_upper_aufs() {
    if !can_mount_fuse() {
        return;
    }
    for r in 0..rounds() {
        run_sweep("aufs", SmallFs::Tmpfs, r);
    }
}

#[test]
fn full_upper_overlay() {
    if !can_mount_fuse() {
        return;
    }
    for r in 0..rounds() {
        run_sweep("overlay", SmallFs::Tmpfs, 1000 + r);
    }
}

#[test]
fn full_upper_ext4_aufs() {
    if !can_loop_mount_ext4() {
        return;
    }
    for r in 0..rounds() {
        run_sweep("aufs", SmallFs::Ext4, 2000 + r);
    }
}

#[test]
fn full_upper_ext4_overlay() {
    if !can_loop_mount_ext4() {
        return;
    }
    for r in 0..rounds() {
        run_sweep("overlay", SmallFs::Ext4, 3000 + r);
    }
}
