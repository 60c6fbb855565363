//! Differential property test of the write path: kernel overlayfs is the oracle.
//!
//! Every case builds lower branches, mounts them twice — kernel overlayfs
//! (`redirect_dir=on,index=on`) and unionfs (`-o whiteout=overlay` or `-o whiteout=aufs`,
//! with a separate workdir) — and applies one generated sequence of system calls to both
//! mounts. It checks that
//!
//! 1. every call gives the same result on both sides (success value or errno);
//! 2. the merged trees are the same afterwards (names, types, modes, owners, sizes of
//!    non-directories, contents, symlink targets, nlink, xattrs, and old mtimes of
//!    non-directories — see [`comparable`] for exactly what is left out and why);
//! 3. the trees are still the same after both are unmounted and mounted again on the same
//!    upper and workdirs (persistence), and so are unionfs's inode numbers;
//! 4. unionfs's inode numbers group paths exactly as the kernel's do (hard links share one
//!    number, everything else has its own) and readdir's d_ino equals st_ino;
//! 5. the lower branches are untouched, and (overlay format) unionfs's upper holds no
//!    `.wh.` names.
//!
//! The lowers are either the fixed fixture of [`build_lowers`] (a merged directory, an
//! opaque directory, a char 0:0 whiteout, a hard-linked pair, a symlink, a fifo, nested
//! directories, user xattrs, suid bits, odd owners; short sequences over [`PATHS`]) or
//! generated ([`gen_lowers_strategy`]: two or three lowers in which the same name is
//! often a directory in one and a file, symlink, fifo, whiteout or opaque directory in
//! another, at every depth; long sequences over [`GEN_PATHS`] that move directories a
//! lot). Each property runs in both whiteout formats; a further property in each
//! family (`*kernel_reads_unionfs_upper`, overlay format only) mounts kernel overlayfs on
//! the upper and workdir unionfs wrote and compares that with the kernel's own result.
//!
//! Budget: fixed fixture 64 cases (32 for kernel-reads) unless `UNIONFS_SOAK_CASES`;
//! generated lowers `UNIONFS_DIFF_OPS_CASES` cases (16 by default; `scripts/test.sh`
//! asks for 1024 once, `scripts/soak.sh` for thousands) of `UNIONFS_DIFF_OPS_LEN` (200)
//! operations. docs/TESTING.md has the timings. Failures proptest found and shrank are
//! kept below as `regression_*` tests with explicit op lists (and lowers).
//!
//! Each case runs in a mount namespace of its own (see [`PrivateMountNs`]), with fresh
//! temporary directories; every mount is guarded and unmounted also on failure.
//!
//! Harness self-check: `DIFFOPS_SUT=kernel` replaces unionfs by a second kernel overlay
//! mount; every test must then pass. Debugging: `DIFFOPS_VERBOSE=1` prints both views,
//! `DIFFOPS_KEEP=1` keeps each case's directory, `DIFFOPS_STATS=1` prints per case how
//! many operations succeeded and how many of them moved a directory. Timing a budget on a
//! unionfs with known mismatches: `DIFFOPS_TIME_ONLY=1` (a mismatch prints a line and
//! the case passes).
//!
//! Needs root, /dev/fuse and kernel overlayfs; skips (with a message) without them unless
//! `UNIONFS_TEST_REQUIRE=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, OFlag, RenameFlags, AT_FDCWD};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// The alphabet of paths: few names, so generated operations collide a lot
// ---------------------------------------------------------------------------------------

/// Every path an operation may name. `x` is a merged directory, `y` an opaque one, `x/z` a
/// directory of the bottom lower only; `a`, `b`, `c`, `z` are the names inside each.
const PATHS: &[&str] = &[
    "a", "b", "c", "z", "x", "y", "x/a", "x/b", "x/c", "x/z", "y/a", "y/b", "y/c", "y/z", "x/z/a",
    "x/z/b", "x/z/c", "x/z/z",
];

/// Directories listed by the `List` operation.
const DIRS: &[&str] = &["", "x", "y", "x/z", "y/z", "z"];

/// Symlink targets: relative and without `..`, so following one never leaves the mount.
const TARGETS: &[&str] = &["a", "x", "x/c", "nowhere"];

/// Data written by write operations, by index.
fn data(i: u8) -> Vec<u8> {
    match i {
        0 => Vec::new(),
        1 => b"hi".to_vec(),
        2 => b"0123456789".to_vec(),
        _ => (0..9000u32).map(|n| b'A' + (n % 23) as u8).collect(),
    }
}

/// Times before this are ones the test set itself (fixture, utimensat): they must match
/// exactly. Later ones are "now" on one side or the other and are not compared.
const OLD_TIME: i64 = 1_600_000_000;

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

/// How a `Write` opens its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wr {
    /// O_WRONLY, pwrite at the offset
    Plain,
    /// O_WRONLY|O_APPEND, write
    Append,
    /// O_WRONLY|O_TRUNC, pwrite at the offset
    Trunc,
    /// O_WRONLY|O_CREAT (0644), pwrite at the offset
    Creat,
}

/// rename flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rn {
    Plain,
    NoReplace,
    Exchange,
}

/// One timestamp argument of utimensat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ts {
    At(i64, i64),
    Omit,
    Now,
}

/// setxattr flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Xf {
    Any,
    Create,
    Replace,
}

/// fallocate modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fa {
    /// FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    Punch,
    /// mode 0 (may extend the file)
    Extend,
    /// FALLOC_FL_KEEP_SIZE
    KeepSize,
}

/// A mode, shown in octal (so that failing op lists read well and paste as Rust).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Oct(u32);

impl std::fmt::Debug for Oct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Oct(0o{:o})", self.0)
    }
}

/// One system call (or open+call+close) applied to both mounts. Paths are relative to the
/// mount point. Slots are file descriptors held open across later operations.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Write {
        p: &'static str,
        how: Wr,
        off: u64,
        data: u8,
    },
    /// open(O_CREAT|O_EXCL|O_WRONLY, mode), close
    Create {
        p: &'static str,
        mode: Oct,
    },
    /// truncate(2) (follows symlinks)
    Truncate {
        p: &'static str,
        len: u64,
    },
    Unlink(&'static str),
    Mkdir {
        p: &'static str,
        mode: Oct,
    },
    Rmdir(&'static str),
    /// `rm -rf`: unlink/rmdir everything below (sorted, depth first), then the path itself
    RmTree(&'static str),
    Rename {
        from: &'static str,
        to: &'static str,
        how: Rn,
    },
    Link {
        from: &'static str,
        to: &'static str,
    },
    Symlink {
        target: &'static str,
        p: &'static str,
    },
    Mkfifo {
        p: &'static str,
        mode: Oct,
    },
    /// chmod(2) (follows symlinks)
    Chmod {
        p: &'static str,
        mode: Oct,
    },
    /// lchown(2)
    Chown {
        p: &'static str,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// utimensat(AT_SYMLINK_NOFOLLOW)
    Utimens {
        p: &'static str,
        atime: Ts,
        mtime: Ts,
    },
    /// lsetxattr
    SetXattr {
        p: &'static str,
        name: &'static str,
        value: &'static str,
        how: Xf,
    },
    /// lremovexattr
    RemoveXattr {
        p: &'static str,
        name: &'static str,
    },
    /// open(O_WRONLY), fallocate, close
    Fallocate {
        p: &'static str,
        mode: Fa,
        off: u64,
        len: u64,
    },
    /// open `from` O_RDONLY and `to` O_WRONLY, copy_file_range 100 bytes from offset 3 to
    /// offset 1, close
    CopyRange {
        from: &'static str,
        to: &'static str,
    },
    /// open(dir, O_TMPFILE|O_RDWR, 0600), write, close (not generated: see [`comparable`])
    Tmpfile(&'static str),
    /// open(O_RDONLY), read everything, close
    Read(&'static str),
    /// lstat: type, mode, owner, nlink, size of non-directories
    Stat(&'static str),
    /// sorted names of a directory
    List(&'static str),
    /// open into a slot (O_RDONLY or O_RDWR), replacing what the slot held
    Open {
        p: &'static str,
        slot: usize,
        rw: bool,
    },
    /// pread everything from a slot
    ReadFd(usize),
    /// pwrite into a slot
    WriteFd {
        slot: usize,
        off: u64,
        data: u8,
    },
    /// fstat a slot
    FstatFd(usize),
}

const SLOTS: usize = 2;

fn ts() -> impl Strategy<Value = Ts> {
    prop_oneof![
        Just(Ts::At(1_000_000_000, 123_456_789)),
        Just(Ts::At(1_234_567_890, 999_999_999)),
        Just(Ts::At(1_400_000_000, 1)),
        Just(Ts::Omit),
        Just(Ts::Now),
    ]
}

/// One of a fixed list of values.
fn one_of<T: Clone + std::fmt::Debug + 'static>(v: &'static [T]) -> prop::sample::Select<T> {
    prop::sample::select(v)
}

/// The names one property's operations use, and how often they change the namespace.
struct Alphabet {
    /// every path an operation may name
    paths: &'static [&'static str],
    /// where rename and mkdir go half of the time (names likely free in directories
    /// likely there, so that moves succeed more often)
    fresh: &'static [&'static str],
    /// directories `List` reads
    dirs: &'static [&'static str],
    /// symlink targets
    targets: &'static [&'static str],
    /// weight rename, mkdir, rmdir and unlink up (for lowers whose interest is their shape)
    structural: bool,
}

/// The fixed fixture of [`build_lowers`].
const FIXED: Alphabet = Alphabet {
    paths: PATHS,
    fresh: PATHS,
    dirs: DIRS,
    targets: TARGETS,
    structural: false,
};

fn op(a: &'static Alphabet) -> impl Strategy<Value = Op> {
    use Op::*;
    let path = || one_of(a.paths);
    let dest = || prop_oneof![one_of(a.paths), one_of(a.fresh)];
    // (fixed fixture, generated lowers): the generated lowers are all about which name is
    // a directory where, so their operations move, make and remove names far more often
    let w = |fixed: u32, structural: u32| if a.structural { structural } else { fixed };
    let off = || one_of(&[0u64, 3, 5000]);
    let dat = || 0u8..4;
    let wr = one_of(&[Wr::Plain, Wr::Append, Wr::Trunc, Wr::Creat]);
    let rn = one_of(&[Rn::Plain, Rn::Plain, Rn::NoReplace, Rn::Exchange]);
    let chmod = one_of(&[0o644u32, 0o600, 0o4755, 0o2755, 0o1777, 0o000, 0o6711]);
    let uid = one_of(&[None, Some(0u32), Some(1000), Some(65534)]);
    let gid = one_of(&[None, Some(0u32), Some(100), Some(1000)]);
    let xname = one_of(&["user.a", "user.b"]);
    let xval = one_of(&["", "v1", "a-longer-value"]);
    let xf = one_of(&[Xf::Any, Xf::Any, Xf::Create, Xf::Replace]);
    let fa = one_of(&[Fa::Punch, Fa::Punch, Fa::Extend, Fa::KeepSize]);
    let fa_off = one_of(&[0u64, 3, 4096]);
    let fa_len = one_of(&[1u64, 4096, 10000]);
    prop_oneof![
        6 => (path(), wr, off(), dat())
            .prop_map(|(p, how, off, data)| Write { p, how, off, data }),
        3 => (path(), one_of(&[0o644u32, 0o600, 0o4755]))
            .prop_map(|(p, m)| Create { p, mode: Oct(m) }),
        2 => (path(), one_of(&[0u64, 2, 7000])).prop_map(|(p, len)| Truncate { p, len }),
        w(4, 6) => path().prop_map(Unlink),
        w(4, 12) => (dest(), one_of(&[0o755u32, 0o700, 0o2775]))
            .prop_map(|(p, m)| Mkdir { p, mode: Oct(m) }),
        w(3, 4) => path().prop_map(Rmdir),
        w(2, 1) => path().prop_map(RmTree),
        w(7, 28) => (path(), dest(), rn).prop_map(|(from, to, how)| Rename { from, to, how }),
        3 => (path(), path()).prop_map(|(from, to)| Link { from, to }),
        2 => (one_of(a.targets), path()).prop_map(|(target, p)| Symlink { target, p }),
        1 => (path(), one_of(&[0o644u32, 0o600])).prop_map(|(p, m)| Mkfifo { p, mode: Oct(m) }),
        3 => (path(), chmod).prop_map(|(p, m)| Chmod { p, mode: Oct(m) }),
        2 => (path(), uid, gid).prop_map(|(p, uid, gid)| Chown { p, uid, gid }),
        3 => (path(), ts(), ts()).prop_map(|(p, atime, mtime)| Utimens { p, atime, mtime }),
        3 => (path(), xname, xval, xf)
            .prop_map(|(p, name, value, how)| SetXattr { p, name, value, how }),
        1 => (path(), one_of(&["user.a", "user.b", "user.origin"]))
            .prop_map(|(p, name)| RemoveXattr { p, name }),
        2 => (path(), fa, fa_off, fa_len)
            .prop_map(|(p, mode, off, len)| Fallocate { p, mode, off, len }),
        2 => (path(), path()).prop_map(|(from, to)| CopyRange { from, to }),
        2 => path().prop_map(Read),
        w(2, 5) => path().prop_map(Stat),
        w(1, 3) => one_of(a.dirs).prop_map(List),
        3 => (path(), 0..SLOTS, any::<bool>()).prop_map(|(p, slot, rw)| Open { p, slot, rw }),
        2 => (0..SLOTS).prop_map(ReadFd),
        2 => (0..SLOTS, off(), dat()).prop_map(|(slot, off, data)| WriteFd { slot, off, data }),
        1 => (0..SLOTS).prop_map(FstatFd),
    ]
}

// ---------------------------------------------------------------------------------------
// Applying operations
// ---------------------------------------------------------------------------------------

/// The result of one operation: a success value, or an errno.
type Outcome = Result<String, Errno>;

fn show(o: &Outcome) -> String {
    match o {
        Ok(s) => format!("Ok({s})"),
        Err(e) => format!("Err({e:?})"),
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

/// A short, exact summary of file contents (length, FNV-1a hash, head).
fn summary(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let head: String = String::from_utf8_lossy(&bytes[..bytes.len().min(24)]).into_owned();
    format!("{} bytes #{h:016x} {head:?}", bytes.len())
}

fn kind_char(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFREG => 'f',
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        _ => '?',
    }
}

fn stat_summary(st: &nix::sys::stat::FileStat) -> String {
    let kind = kind_char(st.st_mode);
    let size = if kind == 'd' {
        String::new()
    } else {
        format!(" size {}", st.st_size)
    };
    format!(
        "{kind} {:04o} {}:{} nlink {}{size}",
        st.st_mode & 0o7777,
        st.st_uid,
        st.st_gid,
        st.st_nlink
    )
}

fn lsetxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), Errno> {
    // The crate's own wrapper takes an O_PATH fd (symlinks included) and flags.
    let fd = nix::fcntl::open(
        p,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    unionfs::sys::xattr::set(
        std::os::fd::AsFd::as_fd(&fd),
        std::ffi::OsStr::new(name),
        value,
        flags,
    )
    .map_err(|e| e.errno())
}

fn read_all(fd: &OwnedFd) -> Result<Vec<u8>, Errno> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = nix::sys::uio::pread(fd, &mut buf, out.len() as i64)?;
        if n == 0 || out.len() > 1 << 20 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// `rm -rf p`, stopping at the first error.
fn rm_tree(p: &Path) -> Result<(), Errno> {
    let md = fs::symlink_metadata(p).map_err(|e| io_errno(&e))?;
    if !md.is_dir() {
        return nix::unistd::unlink(p);
    }
    let mut names = Vec::new();
    for e in fs::read_dir(p).map_err(|e| io_errno(&e))? {
        names.push(e.map_err(|e| io_errno(&e))?.file_name());
    }
    names.sort();
    for n in names {
        rm_tree(&p.join(n))?;
    }
    nix::unistd::unlinkat(AT_FDCWD, p, nix::unistd::UnlinkatFlags::RemoveDir)
}

/// One mount as the operations see it.
struct Side {
    mnt: PathBuf,
    fds: Vec<Option<OwnedFd>>,
    /// Per slot opened read-only: what `ReadFd` read right after the open.
    at_open: Vec<Option<Outcome>>,
}

impl Side {
    fn new(mnt: &Path) -> Side {
        Side {
            mnt: mnt.to_path_buf(),
            fds: (0..SLOTS).map(|_| None).collect(),
            at_open: (0..SLOTS).map(|_| None).collect(),
        }
    }

    /// unionfs's documented difference (docs/ARCHITECTURE.md, "Data path"):
    /// a descriptor opened read-only on a lower file before a copy-up of it
    /// goes on reading the lower file, where overlayfs >= 4.19 switches it
    /// to the copy. True when `op` read through such a descriptor what it
    /// read when opened.
    fn reads_as_at_open(&self, op: &Op, got: &Outcome) -> bool {
        matches!(*op, Op::ReadFd(slot) if self.at_open.get(slot).is_some_and(|o| o.as_ref() == Some(got)))
    }

    fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.mnt.clone()
        } else {
            self.mnt.join(rel)
        }
    }

    fn open(&self, rel: &str, flags: OFlag, mode: u32) -> Result<OwnedFd, Errno> {
        // O_NONBLOCK: opening a fifo never waits for the other end
        nix::fcntl::open(
            &self.p(rel),
            flags | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
    }

    fn slot(&self, slot: usize) -> Option<&OwnedFd> {
        self.fds.get(slot).and_then(|f| f.as_ref())
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        let ok = |()| String::new();
        match *op {
            Op::Write {
                p,
                how,
                off,
                data: d,
            } => {
                let flags = OFlag::O_WRONLY
                    | match how {
                        Wr::Plain => OFlag::empty(),
                        Wr::Append => OFlag::O_APPEND,
                        Wr::Trunc => OFlag::O_TRUNC,
                        Wr::Creat => OFlag::O_CREAT,
                    };
                let fd = self.open(p, flags, 0o644)?;
                let buf = data(d);
                let n = if how == Wr::Append {
                    nix::unistd::write(&fd, &buf)?
                } else {
                    nix::sys::uio::pwrite(&fd, &buf, off as i64)?
                };
                Ok(format!("wrote {n}"))
            }
            Op::Create { p, mode: Oct(mode) } => {
                self.open(p, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL, mode)?;
                Ok(String::new())
            }
            Op::Truncate { p, len } => nix::unistd::truncate(&self.p(p), len as i64).map(ok),
            Op::Unlink(p) => nix::unistd::unlink(&self.p(p)).map(ok),
            Op::Mkdir { p, mode: Oct(mode) } => {
                nix::unistd::mkdir(&self.p(p), Mode::from_bits_truncate(mode)).map(ok)
            }
            Op::Rmdir(p) => {
                nix::unistd::unlinkat(AT_FDCWD, &self.p(p), nix::unistd::UnlinkatFlags::RemoveDir)
                    .map(ok)
            }
            Op::RmTree(p) => rm_tree(&self.p(p)).map(|()| String::new()),
            Op::Rename { from, to, how } => {
                let flags = match how {
                    Rn::Plain => RenameFlags::empty(),
                    Rn::NoReplace => RenameFlags::RENAME_NOREPLACE,
                    Rn::Exchange => RenameFlags::RENAME_EXCHANGE,
                };
                nix::fcntl::renameat2(AT_FDCWD, &self.p(from), AT_FDCWD, &self.p(to), flags).map(ok)
            }
            Op::Link { from, to } => nix::unistd::linkat(
                AT_FDCWD,
                &self.p(from),
                AT_FDCWD,
                &self.p(to),
                nix::fcntl::AtFlags::empty(),
            )
            .map(ok),
            Op::Symlink { target, p } => {
                nix::unistd::symlinkat(target, AT_FDCWD, &self.p(p)).map(ok)
            }
            Op::Mkfifo { p, mode: Oct(mode) } => {
                nix::unistd::mkfifo(&self.p(p), Mode::from_bits_truncate(mode)).map(ok)
            }
            Op::Chmod { p, mode: Oct(mode) } => nix::sys::stat::fchmodat(
                AT_FDCWD,
                &self.p(p),
                Mode::from_bits_truncate(mode),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map(ok),
            Op::Chown { p, uid, gid } => nix::unistd::fchownat(
                AT_FDCWD,
                &self.p(p),
                uid.map(Uid::from_raw),
                gid.map(Gid::from_raw),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map(ok),
            Op::Utimens { p, atime, mtime } => {
                let t = |t: Ts| match t {
                    Ts::At(s, ns) => TimeSpec::new(s, ns),
                    Ts::Omit => TimeSpec::UTIME_OMIT,
                    Ts::Now => TimeSpec::UTIME_NOW,
                };
                nix::sys::stat::utimensat(
                    AT_FDCWD,
                    &self.p(p),
                    &t(atime),
                    &t(mtime),
                    UtimensatFlags::NoFollowSymlink,
                )
                .map(ok)
            }
            Op::SetXattr {
                p,
                name,
                value,
                how,
            } => {
                let flags = match how {
                    Xf::Any => 0,
                    Xf::Create => libc::XATTR_CREATE,
                    Xf::Replace => libc::XATTR_REPLACE,
                };
                lsetxattr(&self.p(p), name, value.as_bytes(), flags).map(ok)
            }
            Op::RemoveXattr { p, name } => xattr::remove(self.p(p), name)
                .map_err(|e| io_errno(&e))
                .map(ok),
            Op::Fallocate { p, mode, off, len } => {
                let fd = self.open(p, OFlag::O_WRONLY, 0)?;
                let flags = match mode {
                    Fa::Punch => {
                        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE
                    }
                    Fa::Extend => FallocateFlags::empty(),
                    Fa::KeepSize => FallocateFlags::FALLOC_FL_KEEP_SIZE,
                };
                nix::fcntl::fallocate(&fd, flags, off as i64, len as i64).map(ok)
            }
            Op::CopyRange { from, to } => {
                let src = self.open(from, OFlag::O_RDONLY, 0)?;
                let dst = self.open(to, OFlag::O_WRONLY, 0)?;
                let (mut off_in, mut off_out) = (3i64, 1i64);
                nix::fcntl::copy_file_range(&src, Some(&mut off_in), &dst, Some(&mut off_out), 100)
                    .map(|n| format!("copied {n}"))
            }
            Op::Tmpfile(dir) => {
                let fd = self.open(dir, OFlag::O_TMPFILE | OFlag::O_RDWR, 0o600)?;
                nix::unistd::write(&fd, b"tmp").map(|n| format!("wrote {n}"))
            }
            Op::Read(p) => {
                let fd = self.open(p, OFlag::O_RDONLY, 0)?;
                read_all(&fd).map(|b| summary(&b))
            }
            Op::Stat(p) => nix::sys::stat::lstat(&self.p(p)).map(|st| stat_summary(&st)),
            Op::List(d) => {
                let rd = fs::read_dir(self.p(d)).map_err(|e| io_errno(&e))?;
                let mut names = Vec::new();
                for e in rd {
                    let e = e.map_err(|e| io_errno(&e))?;
                    names.push(e.file_name().to_string_lossy().into_owned());
                }
                names.sort();
                Ok(names.join(" "))
            }
            Op::Open { p, slot, rw } => {
                self.fds[slot] = None;
                self.at_open[slot] = None;
                let acc = if rw { OFlag::O_RDWR } else { OFlag::O_RDONLY };
                let fd = self.open(p, acc, 0)?;
                if !rw {
                    self.at_open[slot] = Some(read_all(&fd).map(|b| summary(&b)));
                }
                self.fds[slot] = Some(fd);
                Ok(String::new())
            }
            Op::ReadFd(slot) => match self.slot(slot) {
                None => Ok("no fd".into()),
                Some(fd) => read_all(fd).map(|b| summary(&b)),
            },
            Op::WriteFd { slot, off, data: d } => match self.slot(slot) {
                None => Ok("no fd".into()),
                Some(fd) => nix::sys::uio::pwrite(fd, &data(d), off as i64).map(|n| n.to_string()),
            },
            Op::FstatFd(slot) => match self.slot(slot) {
                None => Ok("no fd".into()),
                Some(fd) => nix::sys::stat::fstat(fd).map(|st| stat_summary(&st)),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------

fn at(root: &Path, rel: &str) -> PathBuf {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    p
}

fn mk_file(root: &Path, rel: &str, content: &str, mode: u32) {
    let p = at(root, rel);
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn mk_dir(root: &Path, rel: &str, mode: u32) {
    let p = at(root, rel);
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn mk_node(root: &Path, rel: &str, kind: SFlag, mode: u32) {
    nix::sys::stat::mknod(&at(root, rel), kind, Mode::from_bits_truncate(mode), 0).unwrap();
    // mknod applies the umask
    if kind != SFlag::S_IFCHR {
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn lchown(root: &Path, rel: &str, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(root.join(rel), Some(uid), Some(gid)).unwrap();
}

/// The two lower branches (`l1` on top). Every path of [`PATHS`] starts out interesting.
fn build_lowers(l1: &Path, l2: &Path) {
    // bottom
    mk_file(l2, "a", "l2:a\n", 0o644);
    xattr::set(l2.join("a"), "user.origin", b"l2").unwrap();
    mk_file(l2, "b", "l2:b (whited out by l1)\n", 0o644);
    std::os::unix::fs::symlink("a", at(l2, "z")).unwrap();
    lchown(l2, "z", 65534, 65534);
    mk_dir(l2, "x", 0o755);
    xattr::set(l2.join("x"), "user.dir", b"l2").unwrap();
    mk_file(l2, "x/a", "l2:x/a (hidden by l1's x/a)\n", 0o644);
    mk_file(l2, "x/b", "l2:x/b\n", 0o600);
    lchown(l2, "x/b", 1000, 1000);
    mk_dir(l2, "x/z", 0o700);
    mk_file(l2, "x/z/a", "l2:x/z/a suid\n", 0o4755);
    mk_node(l2, "x/z/z", SFlag::S_IFIFO, 0o640);
    mk_file(l2, "y/a", "l2:y/a (hidden: l1's y is opaque)\n", 0o644);
    mk_file(l2, "y/c", "l2:y/c (hidden: l1's y is opaque)\n", 0o644);
    // top
    mk_node(l1, "b", SFlag::S_IFCHR, 0); // char 0:0 whiteout
    mk_file(l1, "c", "l1:c, hard-linked with x/c\n", 0o644);
    mk_dir(l1, "x", 0o750);
    lchown(l1, "x", 0, 100);
    xattr::set(l1.join("x"), "user.dir", b"l1").unwrap();
    fs::hard_link(l1.join("c"), at(l1, "x/c")).unwrap();
    mk_file(l1, "x/a", "l1:x/a\n", 0o664);
    mk_dir(l1, "y", 0o755);
    xattr::set(l1.join("y"), "trusted.overlay.opaque", b"y").unwrap();
    mk_file(l1, "y/b", "l1:y/b\n", 0o644);
    mk_file(l1, "y/z/a", "l1:y/z/a nested\n", 0o644);
    // deterministic times everywhere
    fix_times(&[l1.to_path_buf(), l2.to_path_buf()]);
}

/// Sets every object's atime and mtime to a fixed time of its own (depth first, sorted),
/// so that the two mounts see the same lowers and mtimes compare exactly.
fn fix_times(roots: &[PathBuf]) {
    for (i, root) in roots.iter().enumerate() {
        let mut n = 0i64;
        for e in walkdir::WalkDir::new(root).sort_by_file_name() {
            let e = e.unwrap();
            n += 1;
            let t = TimeSpec::new(1_500_000_000 + 1000 * i as i64 + n, 7 + 1000 * n);
            nix::sys::stat::utimensat(AT_FDCWD, e.path(), &t, &t, UtimensatFlags::NoFollowSymlink)
                .unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Generated lowers: the same names as directories here and non-directories there
// ---------------------------------------------------------------------------------------

/// The names a generated lower may hold, parents before children: `d` and `e` at depths
/// 1 to 3. Every lower draws an object for each, independently, so one name is often a
/// directory in one lower and a file, symlink, fifo, whiteout or opaque directory in
/// another — at every depth. (A name under a non-directory of its own lower is dropped.)
const GEN_NODES: &[&str] = &[
    "d", "d/d", "d/d/d", "d/d/e", "d/e", "d/e/d", "d/e/e", "e", "e/d", "e/d/d", "e/d/e", "e/e",
    "e/e/d", "e/e/e",
];

/// Paths the operations on generated lowers name: every node, and a fresh name `n` in
/// every directory that may exist (and a level under it), so that directories are moved
/// to new places, deeper and shallower — which is what makes redirects.
const GEN_PATHS: &[&str] = &[
    "d", "d/d", "d/d/d", "d/d/e", "d/e", "d/e/d", "d/e/e", "e", "e/d", "e/d/d", "e/d/e", "e/e",
    "e/e/d", "e/e/e", "n", "d/n", "e/n", "d/d/n", "d/e/n", "e/d/n", "e/e/n", "n/d", "n/n",
];

const GEN_DIRS: &[&str] = &["", "d", "e", "n", "d/d", "d/e", "e/d", "e/e"];

const GEN_TARGETS: &[&str] = &["d", "e/d", "nowhere"];

/// Operations on generated lowers.
const GEN: Alphabet = Alphabet {
    paths: GEN_PATHS,
    fresh: &["n", "d/n", "e/n", "n/n", "d/d/n", "e/d/n"],
    dirs: GEN_DIRS,
    targets: GEN_TARGETS,
    structural: true,
};

/// Whether generated lowers hold xattr whiteouts (`UNIONFS_DIFF_OPS_XWHITEOUTS=1`; plain
/// whiteouts take their place otherwise). Off by default: kernel 6.18 reads them, but its
/// rmdir counts one as an entry — ENOTEMPTY for a directory whose readdir is empty —
/// so the property would keep reporting the oracle's inconsistency.
fn xwhiteouts() -> bool {
    std::env::var("UNIONFS_DIFF_OPS_XWHITEOUTS").is_ok_and(|v| v == "1")
}

/// One object of a generated lower branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Obj {
    /// nothing: the name is looked up further down
    Absent,
    /// a directory (mode 0755)
    Dir,
    /// a directory with `trusted.overlay.opaque=y`
    Opaque,
    /// a regular file with content of its own: `0`, `1` or `2` (mode 0644, 0600, 0755;
    /// `2` holds 5000 bytes)
    File(u8),
    /// a symlink
    Symlink(&'static str),
    /// a fifo (mode 0640)
    Fifo,
    /// a whiteout: char 0:0 (the kernel reads only overlay-format whiteouts in lowers);
    /// generated only where the directory continues below (see
    /// [`GenLowers::from_nodes`])
    Whiteout,
    /// an xattr whiteout (kernel 6.8+): an empty file with `trusted.overlay.whiteout`, in a
    /// directory marked `trusted.overlay.opaque=x` (unless it is opaque `y` already);
    /// only with [`xwhiteouts`];
    /// generated only where the directory continues below (see
    /// [`GenLowers::from_nodes`])
    XWhiteout,
}

/// A set of generated lower branches (top first), each a list of (path, object) with
/// parents before children and nothing under a non-directory. [`GenLowers::as_rust`]
/// prints it as the argument of [`gen_lowers`], for regression tests.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GenLowers(Vec<Vec<(&'static str, Obj)>>);

/// A [`GenLowers`] written out in Rust (what a regression test passes).
fn gen_lowers(spec: &[&[(&'static str, Obj)]]) -> GenLowers {
    GenLowers(spec.iter().map(|l| l.to_vec()).collect())
}

impl GenLowers {
    /// From one object per [`GEN_NODES`] entry per lower: the names under a
    /// non-directory of their own lower, and absent ones, are left out.
    fn from_nodes(lowers: Vec<Vec<Obj>>) -> GenLowers {
        let mut g = GenLowers(
            lowers
                .into_iter()
                .map(|objs| {
                    let mut out: Vec<(&'static str, Obj)> = Vec::new();
                    for (&p, o) in GEN_NODES.iter().zip(objs) {
                        let parent_is_dir = match p.rsplit_once('/') {
                            None => true,
                            Some((parent, _)) => out
                                .iter()
                                .any(|(q, o)| *q == parent && matches!(o, Obj::Dir | Obj::Opaque)),
                        };
                        let o = if o == Obj::XWhiteout && !xwhiteouts() {
                            Obj::Whiteout
                        } else {
                            o
                        };
                        if o != Obj::Absent && parent_is_dir {
                            out.push((p, o));
                        }
                    }
                    out
                })
                .collect(),
        );
        // Kernel overlayfs hides a whiteout (char 0:0 or xattr) from lookup wherever it
        // is, but from readdir only where its directory continues in a lower below: in a
        // directory of one layer (or the last layer of a merged one) the name is listed
        // and cannot be looked up, until a copy-up makes the directory merged. A quirk of
        // the oracle, not a behaviour to copy: such whiteouts hide nothing, and are left
        // out. (Operations never change which lowers make up a lower path's directory:
        // redirects name lower paths, resolved from the top lower.)
        for i in 0..g.0.len() {
            let mut keep = Vec::new();
            for &(p, o) in &g.0[i] {
                if matches!(o, Obj::Whiteout | Obj::XWhiteout) {
                    let dir = p.rsplit_once('/').map_or("", |(d, _)| d);
                    let stack = g.stack(dir);
                    let pos = stack.iter().position(|&k| k == i);
                    if pos.is_none_or(|n| n + 1 >= stack.len()) {
                        continue;
                    }
                }
                keep.push((p, o));
            }
            g.0[i] = keep;
        }
        g
    }

    fn get(&self, lower: usize, p: &str) -> Option<Obj> {
        self.0[lower].iter().find(|(q, _)| *q == p).map(|&(_, o)| o)
    }

    /// The lowers (top first) whose directories make up the merged directory `dir`
    /// (`""`: the root) before any operation; empty if `dir` is not a directory.
    fn stack(&self, dir: &str) -> Vec<usize> {
        if dir.is_empty() {
            return (0..self.0.len()).collect();
        }
        let parent = dir.rsplit_once('/').map_or("", |(d, _)| d);
        let mut out = Vec::new();
        for k in self.stack(parent) {
            match self.get(k, dir) {
                None => {}
                Some(Obj::Dir) => out.push(k),
                Some(Obj::Opaque) => {
                    out.push(k);
                    break;
                }
                // a whiteout or a non-directory ends the search
                Some(_) => break,
            }
        }
        out
    }

    /// Pasteable Rust: the argument of [`gen_lowers`].
    fn as_rust(&self) -> String {
        let mut s = String::from("&[\n");
        for l in &self.0 {
            s += "    &[\n";
            for (p, o) in l {
                s += &format!("        ({p:?}, Obj::{o:?}),\n");
            }
            s += "    ],\n";
        }
        s + "]"
    }

    /// Builds lower `i` (0 = top) in `root`.
    fn build(&self, i: usize, root: &Path) {
        for &(p, o) in &self.0[i] {
            match o {
                Obj::Absent => {}
                Obj::Dir => mk_dir(root, p, 0o755),
                Obj::Opaque => {
                    mk_dir(root, p, 0o755);
                    xattr::set(root.join(p), "trusted.overlay.opaque", b"y").unwrap();
                }
                Obj::File(k) => {
                    let mode = [0o644, 0o600, 0o755][usize::from(k % 3)];
                    let text = format!("l{}:{p}:{k}\n", i + 1);
                    let text = if k == 2 {
                        text.repeat(5000 / text.len() + 1)
                    } else {
                        text
                    };
                    mk_file(root, p, &text, mode);
                }
                Obj::Symlink(t) => std::os::unix::fs::symlink(t, at(root, p)).unwrap(),
                Obj::Fifo => mk_node(root, p, SFlag::S_IFIFO, 0o640),
                Obj::Whiteout => mk_node(root, p, SFlag::S_IFCHR, 0),
                Obj::XWhiteout => {
                    mk_file(root, p, "", 0o644);
                    xattr::set(root.join(p), "trusted.overlay.whiteout", b"").unwrap();
                    let dir = root.join(p).parent().unwrap().to_path_buf();
                    let opaque = xattr::get(&dir, "trusted.overlay.opaque").unwrap();
                    if opaque.as_deref() != Some(b"y") {
                        xattr::set(&dir, "trusted.overlay.opaque", b"x").unwrap();
                    }
                }
            }
        }
    }
}

/// One object of a generated lower at `depth` (1..=3). Shallow names are mostly
/// directories (so that deeper ones exist); `Absent` comes first so that shrinking
/// empties the lowers.
fn obj(depth: usize) -> impl Strategy<Value = Obj> {
    let deep = depth >= 3;
    prop_oneof![
        if deep { 3 } else { 2 } => Just(Obj::Absent),
        if deep { 3 } else { 13 } => Just(Obj::Dir),
        if deep { 1 } else { 2 } => Just(Obj::Opaque),
        if deep { 5 } else { 2 } => (0u8..3).prop_map(Obj::File),
        1 => one_of(GEN_TARGETS).prop_map(Obj::Symlink),
        1 => Just(Obj::Fifo),
        2 => Just(Obj::Whiteout),
        1 => Just(Obj::XWhiteout),
    ]
}

/// Two or three generated lowers.
fn gen_lowers_strategy() -> impl Strategy<Value = GenLowers> {
    let lower = || {
        GEN_NODES
            .iter()
            .map(|p| obj(p.split('/').count()).boxed())
            .collect::<Vec<_>>()
    };
    (lower(), lower(), prop::option::of(lower())).prop_map(|(a, b, c)| {
        GenLowers::from_nodes([Some(a), Some(b), c].into_iter().flatten().collect())
    })
}

/// Which lowers a case runs on.
#[derive(Clone, Debug)]
enum Lowers {
    /// [`build_lowers`]
    Fixed,
    Gen(GenLowers),
}

impl Lowers {
    fn count(&self) -> usize {
        match self {
            Lowers::Fixed => 2,
            Lowers::Gen(g) => g.0.len(),
        }
    }

    fn build(&self, roots: &[PathBuf]) {
        match self {
            Lowers::Fixed => build_lowers(&roots[0], &roots[1]),
            Lowers::Gen(g) => {
                for (i, r) in roots.iter().enumerate() {
                    g.build(i, r);
                }
                fix_times(roots);
            }
        }
    }

    fn as_rust(&self) -> String {
        match self {
            Lowers::Fixed => "the fixed fixture (build_lowers)".into(),
            Lowers::Gen(g) => format!("gen_lowers({})", g.as_rust()),
        }
    }
}

/// An op sequence of `len` operations that shrinks by cutting chunks (halves, quarters,
/// ..., single operations: a few dozen runs take 200 operations down to the few that
/// matter, where proptest's own `vec` cuts one at a time), then by simplifying the
/// operations left. Its length is exact, so a budget of "N operations" is N each time.
#[derive(Debug)]
struct OpSeq<S> {
    elem: S,
    len: usize,
}

fn op_seq(a: &'static Alphabet, len: usize) -> OpSeq<BoxedStrategy<Op>> {
    OpSeq {
        elem: op(a).boxed(),
        len,
    }
}

impl<S: Strategy> Strategy for OpSeq<S> {
    type Tree = OpSeqTree<S::Tree>;
    type Value = Vec<S::Value>;

    fn new_tree(
        &self,
        runner: &mut proptest::test_runner::TestRunner,
    ) -> proptest::strategy::NewTree<Self> {
        let elems = (0..self.len)
            .map(|_| self.elem.new_tree(runner))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OpSeqTree {
            keep: vec![true; elems.len()],
            chunk: elems.len().div_ceil(2),
            elems,
            pos: 0,
            elem_ix: 0,
            last: None,
        })
    }
}

/// A case on generated lowers: the lowers and `len` operations. Shrinks the operations,
/// then the lowers, then the operations again (proptest's tuples shrink each part once,
/// in order: the lowers would stay as big as the long sequence needed).
#[derive(Debug)]
struct GenCase {
    len: usize,
}

impl Strategy for GenCase {
    type Tree = GenCaseTree;
    type Value = (GenLowers, Vec<Op>);

    fn new_tree(
        &self,
        runner: &mut proptest::test_runner::TestRunner,
    ) -> proptest::strategy::NewTree<Self> {
        Ok(GenCaseTree {
            lowers: gen_lowers_strategy().boxed().new_tree(runner)?,
            ops: op_seq(&GEN, self.len).new_tree(runner)?,
            phase: 0,
            last_ops: None,
        })
    }
}

struct GenCaseTree {
    lowers: Box<dyn proptest::strategy::ValueTree<Value = GenLowers>>,
    ops: OpSeqTree<Box<dyn proptest::strategy::ValueTree<Value = Op>>>,
    /// 0: operations, 1: lowers, 2: operations again, 3: done
    phase: u8,
    /// what the last simplification changed (true: the operations)
    last_ops: Option<bool>,
}

impl proptest::strategy::ValueTree for GenCaseTree {
    type Value = (GenLowers, Vec<Op>);

    fn current(&self) -> (GenLowers, Vec<Op>) {
        (self.lowers.current(), self.ops.current())
    }

    fn simplify(&mut self) -> bool {
        loop {
            let done = match self.phase {
                0 | 2 => !self.ops.simplify(),
                1 => !self.lowers.simplify(),
                _ => return false,
            };
            if !done {
                self.last_ops = Some(self.phase != 1);
                return true;
            }
            self.phase += 1;
            if self.phase == 2 {
                self.ops.restart();
            }
        }
    }

    fn complicate(&mut self) -> bool {
        match self.last_ops.take() {
            None => false,
            Some(true) => {
                let more = self.ops.complicate();
                if more {
                    self.last_ops = Some(true);
                }
                more
            }
            Some(false) => {
                let more = self.lowers.complicate();
                if more {
                    self.last_ops = Some(false);
                }
                more
            }
        }
    }
}

/// The last simplification of an [`OpSeqTree`], undone by `complicate`.
enum Step {
    Cut(Vec<usize>),
    Shrink(usize),
}

struct OpSeqTree<T> {
    elems: Vec<T>,
    keep: Vec<bool>,
    /// cutting `chunk` kept operations at a time (0: done cutting)
    chunk: usize,
    /// the next cut starts at the first kept operation from here
    pos: usize,
    /// simplifying this operation
    elem_ix: usize,
    last: Option<Step>,
}

impl<T> OpSeqTree<T> {
    /// Cuts again from the start, in halves of what is left.
    fn restart(&mut self) {
        self.chunk = self.keep.iter().filter(|k| **k).count().div_ceil(2);
        self.pos = 0;
        self.elem_ix = 0;
        self.last = None;
    }
}

impl<T: proptest::strategy::ValueTree> proptest::strategy::ValueTree for OpSeqTree<T> {
    type Value = Vec<T::Value>;

    fn current(&self) -> Vec<T::Value> {
        self.elems
            .iter()
            .zip(&self.keep)
            .filter(|(_, k)| **k)
            .map(|(e, _)| e.current())
            .collect()
    }

    fn simplify(&mut self) -> bool {
        while self.chunk > 0 {
            let cut: Vec<usize> = (self.pos..self.elems.len())
                .filter(|&i| self.keep[i])
                .take(self.chunk)
                .collect();
            if cut.is_empty() {
                self.chunk /= 2;
                self.pos = 0;
                continue;
            }
            for &i in &cut {
                self.keep[i] = false;
            }
            self.last = Some(Step::Cut(cut));
            return true;
        }
        while self.elem_ix < self.elems.len() {
            let i = self.elem_ix;
            if self.keep[i] && self.elems[i].simplify() {
                self.last = Some(Step::Shrink(i));
                return true;
            }
            self.elem_ix += 1;
        }
        false
    }

    fn complicate(&mut self) -> bool {
        match self.last.take() {
            None => false,
            Some(Step::Cut(cut)) => {
                // these matter: keep them, cut after them next
                self.pos = cut.last().map_or(self.pos, |&i| i + 1);
                for i in cut {
                    self.keep[i] = true;
                }
                true
            }
            Some(Step::Shrink(i)) if self.elems[i].complicate() => {
                self.last = Some(Step::Shrink(i));
                true
            }
            Some(Step::Shrink(_)) => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------

/// The calling thread in a mount namespace of its own (propagation private) until drop,
/// then back in the one it came from. Every mount of a case lives in such a namespace:
/// no other process on the host (say, a container started meanwhile, which copies the
/// mount table) can pin them, so an unmounted kernel overlay really is gone and its
/// upper can be mounted again; and whatever a crash leaves mounted dies with the
/// namespace.
struct PrivateMountNs {
    orig: OwnedFd,
}

impl PrivateMountNs {
    fn enter() -> Result<PrivateMountNs, String> {
        let orig = nix::fcntl::open(
            "/proc/thread-self/ns/mnt",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open /proc/thread-self/ns/mnt: {e}"))?;
        // CLONE_NEWNS (with the CLONE_FS it implies) only affects this thread.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
        let ns = PrivateMountNs { orig };
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("make / rprivate: {e}"))?;
        Ok(ns)
    }
}

impl Drop for PrivateMountNs {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(&self.orig, nix::sched::CloneFlags::CLONE_NEWNS) {
            eprintln!("setns back to the original mount namespace: {e}");
        }
    }
}

fn is_mounted(mnt: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/thread-self/mountinfo") else {
        return false;
    };
    let want = mnt.as_os_str().as_bytes();
    text.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape_octal(m) == want)
    })
}

fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(
                b[i + 1..i + 4]
                    .iter()
                    .fold(0u8, |a, c| a.wrapping_mul(8) + (c - b'0')),
            );
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn pid_alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let st = s
            .rsplit_once(')')
            .and_then(|(_, r)| r.trim_start().chars().next());
        !matches!(st, Some('Z') | Some('X') | None)
    })
}

/// The unionfs daemon serving `mnt` (its command line names the mount point).
fn find_daemon(mnt: &Path) -> Option<i32> {
    let me = std::process::id() as i32;
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = raw.split(|&c| c == 0).collect();
        let is_unionfs = argv
            .first()
            .is_some_and(|a| Path::new(std::ffi::OsStr::from_bytes(a)).ends_with("unionfs"));
        if is_unionfs
            && argv
                .iter()
                .skip(1)
                .any(|a| *a == mnt.as_os_str().as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// A fork of this multi-threaded process holds copies of all its descriptors until the
/// child execs. An operation's short-lived descriptors must not live on in such a child
/// of another test thread: a fifo the operation opened for reading and closed would
/// still have a reader, so a later non-blocking open for writing would succeed on one
/// side and fail with ENXIO on the other. Operations hold this for reading, spawning
/// (up to the exec) holds it for writing.
static FORK_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn spawn(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    let _no_ops = FORK_LOCK.write().unwrap_or_else(|e| e.into_inner());
    // returns once the child has exec'd (or failed to)
    cmd.spawn()
}

/// One live mount. Dropping it unmounts (lazily if need be) and ends the daemon: also when
/// the test panics.
struct MountGuard {
    mnt: PathBuf,
    /// unmounted with `unionfs umount` (else umount2)
    unionfs: bool,
    /// the unionfs daemon serving it, if found
    daemon: Option<i32>,
    active: bool,
}

/// Where one side keeps its branches.
#[derive(Clone)]
struct Dirs {
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

fn colon_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

impl MountGuard {
    /// Kernel overlayfs on `d`. The oracle runs without metacopy: metadata-only copy-up
    /// must look exactly like a full one (and the kernel's own has a bug that one would
    /// copy: a hard-linked file's data copy-up after a metacopy rename or unlink loses
    /// its mtime). Reading unionfs's upper needs `metacopy` (unionfs writes such files).
    fn kernel(d: &Dirs) -> Result<MountGuard, String> {
        Self::kernel_with(d, "")
    }

    fn kernel_with(d: &Dirs, extra: &str) -> Result<MountGuard, String> {
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=on,index=on{extra}",
            colon_list(&d.lowers),
            d.upper.display(),
            d.work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &d.mnt,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| format!("kernel overlay mount -o {opts} failed: {e}"))?;
        Ok(MountGuard {
            mnt: d.mnt.clone(),
            unionfs: false,
            daemon: None,
            active: true,
        })
    }

    fn unionfs(d: &Dirs, fmt: Fmt) -> Result<MountGuard, String> {
        let mut err = tempfile::tempfile().map_err(|e| e.to_string())?;
        let opts = format!("whiteout={},workdir={}", fmt.option(), d.work.display());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_unionfs"));
        cmd.arg("mount")
            .arg(colon_list(&d.lowers))
            .arg(&d.upper)
            .arg(&d.mnt)
            .arg("-o")
            .arg(&opts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err.try_clone().map_err(|e| e.to_string())?);
        let status = spawn(&mut cmd)
            .and_then(|mut c| c.wait())
            .map_err(|e| format!("cannot run unionfs: {e}"))?;
        // guard first, so that whatever is mounted gets unmounted
        let g = MountGuard {
            mnt: d.mnt.clone(),
            unionfs: true,
            daemon: find_daemon(&d.mnt),
            active: true,
        };
        let mut msg = String::new();
        use std::io::{Read, Seek};
        let _ = err.seek(std::io::SeekFrom::Start(0));
        let _ = err.read_to_string(&mut msg);
        if !status.success() {
            return Err(format!("unionfs mount failed ({status}): {msg}"));
        }
        if !is_mounted(&d.mnt) {
            return Err(format!(
                "unionfs mount exited 0 but nothing is mounted: {msg}"
            ));
        }
        Ok(g)
    }

    /// One unmount attempt: `unionfs umount` for unionfs, umount2 otherwise.
    fn unmount_once(&self) -> Result<(), String> {
        if self.unionfs {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_unionfs"));
            cmd.arg("umount")
                .arg(&self.mnt)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let out = spawn(&mut cmd)
                .and_then(|c| c.wait_with_output())
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "unionfs umount {} failed: {}",
                    self.mnt.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(())
        } else {
            nix::mount::umount2(&self.mnt, MntFlags::empty())
                .map_err(|e| format!("umount {}: {e}", self.mnt.display()))
        }
    }

    /// Unmounts normally and waits for the daemon to end.
    fn unmount(mut self) -> Result<(), String> {
        // A child that another test thread is forking holds copies of this process's
        // descriptors until it execs, which can make a mount busy for an instant: retry
        // briefly before calling it a failure.
        let start = Instant::now();
        while let Err(e) = self.unmount_once() {
            if start.elapsed() > Duration::from_secs(5) {
                return Err(e); // Drop detaches it
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.active = false;
        if is_mounted(&self.mnt) {
            self.active = true;
            return Err(format!("{} still mounted after umount", self.mnt.display()));
        }
        if let Some(pid) = self.daemon {
            if !wait_until(Duration::from_secs(20), || !pid_alive(pid)) {
                self.active = true;
                return Err(format!("unionfs daemon {pid} still running after umount"));
            }
        }
        Ok(())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        if is_mounted(&self.mnt) && nix::mount::umount2(&self.mnt, MntFlags::empty()).is_err() {
            let _ = nix::mount::umount2(&self.mnt, MntFlags::MNT_DETACH);
        }
        if let Some(pid) = self.daemon {
            if !wait_until(Duration::from_secs(5), || !pid_alive(pid)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------

/// What a user sees of one path (never following symlinks).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ent {
    kind: char,
    /// the type readdir reported ('-' for the root)
    dtype: char,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: u64,
    content: Option<String>,
    target: Option<String>,
    rdev: u64,
    xattrs: Vec<(String, String)>,
    mtime: (i64, i64),
    ino: u64,
    dev: u64,
    /// d_ino from readdir (0 for the root)
    dino: u64,
}

/// Path (relative, "" = root) to entry, or to the error lstat/readdir gave.
type Snap = BTreeMap<String, Result<Ent, String>>;

fn errname(e: &std::io::Error) -> String {
    format!("{:?}", io_errno(e))
}

fn dtype_char(ft: &fs::FileType) -> char {
    if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        '?'
    }
}

fn xattrs_of(p: &Path) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for n in xattr::list(p).map_err(|e| format!("listxattr: {}", errname(&e)))? {
        let v = xattr::get(p, &n).map_err(|e| format!("getxattr {n:?}: {}", errname(&e)))?;
        out.push((
            n.to_string_lossy().into_owned(),
            v.map_or("<gone>".into(), |v| {
                String::from_utf8_lossy(&v).into_owned()
            }),
        ));
    }
    out.sort();
    Ok(out)
}

fn entry(p: &Path, dtype: char, dino: u64) -> Result<Ent, String> {
    let md = fs::symlink_metadata(p).map_err(|e| errname(&e))?;
    let kind = kind_char(md.mode());
    let content = if kind == 'f' {
        Some(summary(
            &fs::read(p).map_err(|e| format!("read: {}", errname(&e)))?,
        ))
    } else {
        None
    };
    let target = if kind == 'l' {
        Some(
            fs::read_link(p)
                .map_err(|e| format!("readlink: {}", errname(&e)))?
                .to_string_lossy()
                .into_owned(),
        )
    } else {
        None
    };
    Ok(Ent {
        kind,
        dtype,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        nlink: md.nlink(),
        size: md.size(),
        content,
        target,
        rdev: md.rdev(),
        xattrs: xattrs_of(p)?,
        mtime: (md.mtime(), md.mtime_nsec()),
        ino: md.ino(),
        dev: md.dev(),
        dino,
    })
}

fn walk(root: &Path, rel: &str, out: &mut Snap) {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) => {
            out.insert(format!("{rel}/<readdir>"), Err(errname(&e)));
            return;
        }
    };
    for e in rd {
        let e = match e {
            Ok(e) => e,
            Err(e) => {
                out.insert(format!("{rel}/<readdir>"), Err(errname(&e)));
                return;
            }
        };
        let name = e.file_name().to_string_lossy().into_owned();
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let dtype = e.file_type().map_or('?', |t| dtype_char(&t));
        let ent = entry(&e.path(), dtype, e.ino());
        let is_dir = matches!(&ent, Ok(en) if en.kind == 'd');
        out.insert(child.clone(), ent);
        if is_dir {
            walk(root, &child, out);
        }
    }
}

fn snapshot(root: &Path) -> Snap {
    let mut s = Snap::new();
    s.insert(String::new(), entry(root, '-', 0));
    walk(root, "", &mut s);
    s
}

// ---------------------------------------------------------------------------------------
// Comparing, and the deliberate differences
// ---------------------------------------------------------------------------------------

/// THE ONE PLACE listing what is deliberately not compared between kernel overlayfs and
/// unionfs (and why). Everything else must be equal.
///
/// * st_ino, st_dev and readdir's d_ino: numbering differs by design. unionfs's numbers are
///   checked on their own by [`ino_problems`] (same partition into hard-link groups as the
///   kernel, stable across a remount, d_ino == st_ino).
/// * Sizes of directories: they are the sizes of whichever backing directory each
///   implementation reports, not part of the union's contract.
/// * mtimes of directories, and any mtime set to "now" by a write (the two sides run at
///   different instants): an mtime is compared only when it is older than [`OLD_TIME`] on
///   either side, i.e. came from the fixture or from a utimensat with an explicit time.
/// * atime and ctime: never compared.
/// * Names beginning with `.wh.` are reserved in unionfs (creating one fails with EPERM,
///   the OCI rule); the kernel allows them. Not a comparison rule: [`PATHS`] simply never
///   contains one.
/// * O_TMPFILE: unionfs answers EOPNOTSUPP, the kernel (6.7+) supports it: FUSE passes
///   O_TMPFILE as its own request (FUSE_TMPFILE), which fuser 0.18 does not implement.
///   Not generated, so that the property explores everything else; `regression_o_tmpfile`
///   (ignored until fuser can carry the request) keeps the difference visible.
/// * When the kernel reads unionfs's upper ([`Check::KernelReadsUpper`],
///   [`cross_comparable`]): unionfs's own bookkeeping xattrs `trusted.unionfs.*` show
///   through the kernel mount (the kernel hides only `trusted.overlay.*`).
fn comparable(e: &Ent) -> Ent {
    let mut c = e.clone();
    c.ino = 0;
    c.dev = 0;
    c.dino = 0;
    if c.kind == 'd' {
        c.size = 0;
        c.mtime = (0, 0);
    } else if c.mtime.0 >= OLD_TIME {
        c.mtime = (i64::MAX, 0); // "recent"
    }
    c
}

/// [`comparable`], for kernel overlayfs reading an upper unionfs wrote: also without
/// unionfs's private xattrs (see the list above).
fn cross_comparable(e: &Ent) -> Ent {
    let mut c = comparable(e);
    c.xattrs.retain(|(n, _)| !n.starts_with("trusted.unionfs."));
    c
}

fn describe(r: &Result<Ent, String>) -> String {
    match r {
        Err(e) => format!("<{e}>"),
        Ok(e) => {
            let mut s = format!(
                "{} {:04o} {}:{} nlink={}",
                e.kind, e.mode, e.uid, e.gid, e.nlink
            );
            if e.dtype != e.kind && e.dtype != '-' {
                s += &format!(" dtype={}", e.dtype);
            }
            if e.kind != 'd' {
                s += &format!(" size={}", e.size);
            }
            if let Some(c) = &e.content {
                s += &format!(" content=[{c}]");
            }
            if let Some(t) = &e.target {
                s += &format!(" -> {t:?}");
            }
            if e.kind == 'c' || e.kind == 'b' {
                s += &format!(" rdev={:x}", e.rdev);
            }
            if !e.xattrs.is_empty() {
                s += &format!(" xattrs={:?}", e.xattrs);
            }
            if e.mtime == (i64::MAX, 0) {
                s += " mtime=recent";
            } else if e.mtime != (0, 0) {
                s += &format!(" mtime={}.{:09}", e.mtime.0, e.mtime.1);
            }
            s
        }
    }
}

/// Differences between two views, as readable lines (expected = kernel).
fn tree_diff(kernel: &Snap, unionfs: &Snap) -> Vec<String> {
    let keys: BTreeSet<&String> = kernel.keys().chain(unionfs.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let norm = |s: &Snap| {
            s.get(k)
                .map(|r| r.as_ref().map(comparable).map_err(Clone::clone))
        };
        let (a, b) = (norm(kernel), norm(unionfs));
        if a == b {
            continue;
        }
        let show = |r: &Option<Result<Ent, String>>| match r {
            None => "(absent)".to_string(),
            Some(r) => describe(r),
        };
        out.push(format!(
            "  /{k}\n      kernel:  {}\n      unionfs: {}",
            show(&a),
            show(&b)
        ));
    }
    out
}

/// Paths grouped by inode: path -> the other paths with the same number.
fn ino_groups(s: &Snap, with_dev: bool) -> BTreeMap<String, BTreeSet<String>> {
    let mut by: BTreeMap<(u64, u64), BTreeSet<String>> = BTreeMap::new();
    for (p, e) in s {
        if let Ok(e) = e {
            let dev = if with_dev { e.dev } else { 0 };
            by.entry((dev, e.ino)).or_default().insert(p.clone());
        }
    }
    let mut out = BTreeMap::new();
    for group in by.values() {
        for p in group {
            out.insert(p.clone(), group.clone());
        }
    }
    out
}

/// unionfs's inode-number rules, with the kernel's view as the reference for which paths
/// are hard links of one another.
fn ino_problems(kernel: &Snap, unionfs: &Snap) -> Vec<String> {
    let mut out = Vec::new();
    let kg = ino_groups(kernel, true);
    let ug = ino_groups(unionfs, false);
    for (p, g) in &ug {
        if let Some(k) = kg.get(p) {
            if k != g {
                out.push(format!(
                    "  st_ino of /{p}: unionfs groups it with {g:?}, the kernel with {k:?}"
                ));
            }
        }
    }
    for (p, e) in unionfs {
        if let Ok(e) = e {
            if !p.is_empty() && e.dino != e.ino {
                out.push(format!(
                    "  /{p}: readdir d_ino {} != st_ino {}",
                    e.dino, e.ino
                ));
            }
        }
    }
    out
}

/// Everything of a raw branch that must not change (not atime/ctime).
fn branch_snapshot(root: &Path) -> Snap {
    snapshot(root)
}

fn lower_problems(before: &[(PathBuf, Snap)]) -> Vec<String> {
    let mut out = Vec::new();
    for (root, snap) in before {
        let now = branch_snapshot(root);
        if &now != snap {
            let keys: BTreeSet<&String> = snap.keys().chain(now.keys()).collect();
            for k in keys {
                if snap.get(k) != now.get(k) {
                    out.push(format!(
                        "  lower {}/{k}: before {:?}, after {:?}",
                        root.display(),
                        snap.get(k),
                        now.get(k)
                    ));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// One case
// ---------------------------------------------------------------------------------------

fn can_run() -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        "not running as root"
    } else if !Path::new("/dev/fuse").exists() {
        "/dev/fuse is missing"
    } else {
        return true;
    };
    if std::env::var_os("UNIONFS_TEST_REQUIRE").is_some_and(|v| v == "1") {
        panic!("UNIONFS_TEST_REQUIRE=1 but the test cannot run: {why}");
    }
    eprintln!("SKIP: {why}");
    false
}

/// The views at the end of a case, for extra assertions.
struct CaseOut {
    /// kernel overlayfs (after the remount, in a full check)
    kernel: Snap,
    /// unionfs (after the remount), or kernel overlayfs reading unionfs's upper
    unionfs: Snap,
}

/// The whiteout format unionfs writes (`-o whiteout=...`). The merged view must equal
/// the kernel's in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fmt {
    /// char 0:0 whiteouts and `trusted.overlay.*` xattrs: the kernel can read the upper
    Overlay,
    /// `.wh.` files in the upper
    Aufs,
}

impl Fmt {
    fn option(self) -> &'static str {
        match self {
            Fmt::Overlay => "overlay",
            Fmt::Aufs => "aufs",
        }
    }
}

/// What a case checks after applying the ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// trees, inode numbers, then the same after unmounting and mounting both again
    Full,
    /// kernel overlayfs mounted on unionfs's upper and workdir shows what kernel
    /// overlayfs shows on its own upper
    KernelReadsUpper,
}

fn ops_as_rust(ops: &[Op]) -> String {
    let mut s = String::from("&[\n");
    for o in ops {
        s += &format!("    Op::{o:?},\n");
    }
    s + "]"
}

/// Harness self-check: `DIFFOPS_SUT=kernel` puts a second kernel overlay mount where
/// unionfs would be; every test must then pass.
fn sut_is_kernel() -> bool {
    std::env::var("DIFFOPS_SUT").is_ok_and(|v| v == "kernel")
}

fn mount_sut(d: &Dirs, fmt: Fmt) -> Result<MountGuard, String> {
    if sut_is_kernel() {
        MountGuard::kernel(d)
    } else {
        MountGuard::unionfs(d, fmt)
    }
}

fn print_views(what: &str, k: &Snap, u: &Snap) {
    for (n, s) in [("kernel", k), ("unionfs", u)] {
        eprintln!("--- {what}: {n}");
        for (p, e) in s {
            let ino = e.as_ref().map(|e| (e.dev, e.ino, e.dino)).ok();
            eprintln!("  /{p}: {} (dev, ino, d_ino) = {ino:?}", describe(e));
        }
    }
}

/// Runs one sequence on both sides and checks everything. Err = a readable report.
///
/// Debugging aids: `DIFFOPS_VERBOSE=1` prints both views, `DIFFOPS_KEEP=1` keeps the
/// case's directory (branches, uppers, workdirs) and prints its path.
fn run_case(lowers: &Lowers, ops: &[Op], check: Check, fmt: Fmt) -> Result<CaseOut, String> {
    assert!(
        check != Check::KernelReadsUpper || fmt == Fmt::Overlay,
        "the kernel reads only an overlay-format upper"
    );
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    // first in, last out: every guard below unmounts inside this namespace
    let _ns = PrivateMountNs::enter()?;
    let td = tempfile::Builder::new()
        .prefix("unionfs-diffops-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let root = td.path().canonicalize().map_err(|e| e.to_string())?;
    let mk = |n: &str| {
        let p = root.join(n);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    let lower_dirs: Vec<PathBuf> = (1..=lowers.count()).map(|i| mk(&format!("l{i}"))).collect();
    lowers.build(&lower_dirs);
    let before: Vec<(PathBuf, Snap)> = lower_dirs
        .iter()
        .map(|l| (l.clone(), branch_snapshot(l)))
        .collect();
    let dirs = |tag: &str| Dirs {
        lowers: lower_dirs.clone(),
        upper: mk(&format!("{tag}-upper")),
        work: mk(&format!("{tag}-work")),
        mnt: mk(&format!("{tag}-mnt")),
    };
    let (kd, ud) = (dirs("k"), dirs("u"));
    // the roots of both views come from the uppers: make them alike
    for r in [&kd.upper, &ud.upper] {
        let t = TimeSpec::new(1_500_000_000, 0);
        nix::sys::stat::utimensat(AT_FDCWD, r, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| e.to_string())?;
    }
    let verbose = std::env::var_os("DIFFOPS_VERBOSE").is_some();
    let mut report: Vec<String> = Vec::new();

    // 1. the ops, on both mounts
    let (k1, u1) = {
        let k = MountGuard::kernel(&kd)?;
        let u = mount_sut(&ud, fmt)?;
        let mut ks = Side::new(&kd.mnt);
        let mut us = Side::new(&ud.mnt);
        let stats = std::env::var_os("DIFFOPS_STATS").is_some();
        let (mut oks, mut dir_moves) = (0, 0);
        let mut by_kind: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            let moves_dir = stats
                && matches!(op, Op::Rename { from, .. }
                    if fs::symlink_metadata(ks.p(from)).is_ok_and(|m| m.is_dir()));
            let (a, b) = {
                let _no_forks = FORK_LOCK.read().unwrap_or_else(|e| e.into_inner());
                (ks.apply(op), us.apply(op))
            };
            oks += usize::from(a.is_ok());
            if stats {
                let dbg = format!("{op:?}");
                let kind = dbg
                    .split(|c: char| !c.is_alphanumeric())
                    .next()
                    .unwrap_or("");
                let e = by_kind.entry(kind.to_string()).or_insert((0, 0));
                *e = (e.0 + usize::from(a.is_ok()), e.1 + 1);
            }
            dir_moves += usize::from(moves_dir && a.is_ok());
            if a != b && !us.reads_as_at_open(op, &b) {
                report.push(format!(
                    "op #{i} {op:?}:\n      kernel:  {}\n      unionfs: {}",
                    show(&a),
                    show(&b)
                ));
                break; // the states diverge from here on
            }
        }
        if stats {
            let kinds: Vec<String> = by_kind
                .iter()
                .map(|(k, (ok, n))| format!("{k} {ok}/{n}"))
                .collect();
            eprintln!(
                "{} ops: {oks} succeeded, {dir_moves} of them renamed a directory ({})",
                ops.len(),
                kinds.join(", ")
            );
        }
        // no descriptor may keep a mount busy
        drop(ks);
        drop(us);
        let views = (snapshot(&kd.mnt), snapshot(&ud.mnt));
        u.unmount()?;
        k.unmount()?;
        views
    };
    if verbose {
        print_views("after the ops", &k1, &u1);
    }

    let out = match check {
        Check::Full => {
            let d = tree_diff(&k1, &u1);
            if !d.is_empty() {
                report.push(format!("trees differ after the ops:\n{}", d.join("\n")));
            }
            let d = ino_problems(&k1, &u1);
            if !d.is_empty() {
                report.push(format!("inode numbers after the ops:\n{}", d.join("\n")));
            }
            // with whiteout=overlay and a workdir of its own, the upper holds no AUFS
            // names (whiteouts are char 0:0, the staging area is in the workdir); with
            // whiteout=aufs it is made of them
            let wh: Vec<String> = walkdir::WalkDir::new(&ud.upper)
                .into_iter()
                .flatten()
                .filter(|e| e.file_name().as_bytes().starts_with(b".wh."))
                .map(|e| format!("  {}", e.path().display()))
                .collect();
            if !wh.is_empty() && !sut_is_kernel() && fmt == Fmt::Overlay {
                report.push(format!(
                    "`.wh.` names in unionfs's upper:\n{}",
                    wh.join("\n")
                ));
            }
            // 2. persistence: mount both again on the same upper and workdirs
            let k = MountGuard::kernel(&kd)?;
            let u = mount_sut(&ud, fmt)?;
            let (k2, u2) = (snapshot(&kd.mnt), snapshot(&ud.mnt));
            u.unmount()?;
            k.unmount()?;
            if verbose {
                print_views("after the remount", &k2, &u2);
            }
            let d = tree_diff(&k2, &u2);
            if !d.is_empty() {
                report.push(format!("trees differ after the remount:\n{}", d.join("\n")));
            }
            let mut d = ino_problems(&k2, &u2);
            for (p, e) in &u2 {
                if let (Ok(e), Some(Ok(old))) = (e, u1.get(p)) {
                    if e.ino != old.ino {
                        d.push(format!(
                            "  /{p}: st_ino {} before the remount, {} after",
                            old.ino, e.ino
                        ));
                    }
                }
            }
            if !d.is_empty() {
                report.push(format!(
                    "inode numbers after the remount:\n{}",
                    d.join("\n")
                ));
            }
            CaseOut {
                kernel: k2,
                unionfs: u2,
            }
        }
        Check::KernelReadsUpper => {
            // 2'. the kernel reads the upper (and workdir) unionfs wrote. The workdir
            // matters: with index=on the kernel keeps copied-up lower hard links together
            // through workdir/index, as unionfs does through workdir/unionfs-index.
            let xd = Dirs {
                lowers: lower_dirs.clone(),
                upper: ud.upper.clone(),
                work: ud.work.clone(),
                mnt: mk("x-mnt"),
            };
            let x = MountGuard::kernel_with(&xd, ",metacopy=on")?;
            let x1 = snapshot(&xd.mnt);
            x.unmount()?;
            if verbose {
                print_views("kernel on its upper / kernel on unionfs's upper", &k1, &x1);
            }
            let strip = |s: &Snap| -> Snap {
                s.iter()
                    .map(|(p, e)| (p.clone(), e.clone().map(|e| cross_comparable(&e))))
                    .collect()
            };
            let d = tree_diff(&strip(&k1), &strip(&x1));
            if !d.is_empty() {
                report.push(format!(
                    "kernel overlayfs reading unionfs's upper (shown as 'unionfs') differs \
                     from kernel overlayfs reading its own:\n{}",
                    d.join("\n")
                ));
            }
            CaseOut {
                kernel: k1,
                unionfs: x1,
            }
        }
    };

    let d = lower_problems(&before);
    if !d.is_empty() {
        report.push(format!("lower branches changed:\n{}", d.join("\n")));
    }
    if std::env::var_os("DIFFOPS_KEEP").is_some() {
        eprintln!("kept {}", td.keep().display());
    }
    if report.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "unionfs (whiteout={}) differs from kernel overlayfs ({check:?})\n\
             lowers = {}\nops = {}\n{}",
            fmt.option(),
            lowers.as_rust(),
            ops_as_rust(ops),
            report.join("\n")
        ))
    }
}

/// Runs a fixed op list (regression tests): panics with the report on a difference.
fn check(ops: &[Op]) -> Option<CaseOut> {
    check_with(ops, Check::Full)
}

fn check_with(ops: &[Op], check: Check) -> Option<CaseOut> {
    check_on(&Lowers::Fixed, ops, check, Fmt::Overlay)
}

fn check_on(lowers: &Lowers, ops: &[Op], check: Check, fmt: Fmt) -> Option<CaseOut> {
    if !can_run() {
        return None;
    }
    match run_case(lowers, ops, check, fmt) {
        Ok(o) => Some(o),
        Err(e) => panic!("{e}"),
    }
}

// ---------------------------------------------------------------------------------------
// The property
// ---------------------------------------------------------------------------------------

fn env_num(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Cases of the fixed-fixture properties: `UNIONFS_SOAK_CASES`, 64 by default.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: env_num("UNIONFS_SOAK_CASES", 64),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Cases of the generated-lowers properties: `UNIONFS_DIFF_OPS_CASES`, 16 by default
/// (`scripts/test.sh` asks for 256 in its first pass, `scripts/soak.sh` for thousands).
/// Shrinking takes results of values it has seen from a cache, and stops after
/// `PROPTEST_MAX_SHRINK_TIME` ms (10 minutes unless set) or `PROPTEST_MAX_SHRINK_ITERS`
/// runs (100000 unless set).
fn gen_config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    ProptestConfig {
        cases,
        failure_persistence: None,
        result_cache: prop::test_runner::basic_result_cache,
        max_shrink_time: if base.max_shrink_time == 0 {
            600_000
        } else {
            base.max_shrink_time
        },
        // proptest's default is 4 per case: far too few for 200 operations
        max_shrink_iters: if base.max_shrink_iters == u32::MAX {
            100_000
        } else {
            base.max_shrink_iters
        },
        ..base
    }
}

fn gen_cases() -> u32 {
    env_num("UNIONFS_DIFF_OPS_CASES", 16)
}

/// Operations per sequence on generated lowers: `UNIONFS_DIFF_OPS_LEN`, 200 by default.
fn gen_len() -> usize {
    env_num("UNIONFS_DIFF_OPS_LEN", 200) as usize
}

/// One case of a property. `DIFFOPS_TIME_ONLY=1` makes a mismatch print one line
/// (`MISMATCH ...`) instead of failing: for timing a whole budget on a unionfs with
/// known mismatches, never for testing.
fn prop_case(lowers: &Lowers, ops: &[Op], check: Check, fmt: Fmt) -> Result<(), TestCaseError> {
    if can_run() {
        if let Err(e) = run_case(lowers, ops, check, fmt) {
            if std::env::var_os("DIFFOPS_TIME_ONLY").is_some() {
                eprintln!("MISMATCH {check:?} whiteout={}", fmt.option());
                return Ok(());
            }
            return Err(TestCaseError::fail(e));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ops_match_kernel_overlayfs(ops in prop::collection::vec(op(&FIXED), 1..=25)) {
        prop_case(&Lowers::Fixed, &ops, Check::Full, Fmt::Overlay)?;
    }

    /// The same with `-o whiteout=aufs`.
    #[test]
    fn ops_match_kernel_overlayfs_aufs(ops in prop::collection::vec(op(&FIXED), 1..=25)) {
        prop_case(&Lowers::Fixed, &ops, Check::Full, Fmt::Aufs)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: config().cases.div_ceil(2), ..config() })]

    /// The upper unionfs writes (`-o whiteout=overlay`) is meant to be readable by kernel
    /// overlayfs: after the ops, kernel overlayfs on unionfs's upper must show what kernel
    /// overlayfs shows on its own.
    #[test]
    fn kernel_reads_unionfs_upper(ops in prop::collection::vec(op(&FIXED), 1..=25)) {
        prop_case(&Lowers::Fixed, &ops, Check::KernelReadsUpper, Fmt::Overlay)?;
    }
}

proptest! {
    #![proptest_config(gen_config(gen_cases()))]

    /// Generated lowers (see [`GEN_NODES`]), long sequences, `-o whiteout=overlay`.
    #[test]
    fn gen_lowers_match_kernel_overlayfs((g, ops) in GenCase { len: gen_len() }) {
        prop_case(&Lowers::Gen(g), &ops, Check::Full, Fmt::Overlay)?;
    }

    /// The same with `-o whiteout=aufs`.
    #[test]
    fn gen_lowers_match_kernel_overlayfs_aufs((g, ops) in GenCase { len: gen_len() }) {
        prop_case(&Lowers::Gen(g), &ops, Check::Full, Fmt::Aufs)?;
    }
}

proptest! {
    #![proptest_config(gen_config(gen_cases().div_ceil(4)))]

    /// Kernel overlayfs reads the upper unionfs wrote on generated lowers.
    #[test]
    fn gen_lowers_kernel_reads_unionfs_upper((g, ops) in GenCase { len: gen_len() }) {
        prop_case(&Lowers::Gen(g), &ops, Check::KernelReadsUpper, Fmt::Overlay)?;
    }
}

// ---------------------------------------------------------------------------------------
// Dedicated tests
// ---------------------------------------------------------------------------------------

// Regression tests: failures the properties found, shrunk. In their comments "Kernel:" is
// the expected behaviour and "unionfs:" is what unionfs did when the failure was found;
// they stay after the fix.

/// `link(2)` of a lower file into a directory other than its own, then the link's
/// st_ino. Kernel: the new name shares the number of x/a (one object). unionfs: the new
/// name y/a gets a number of its own — the upper directory y is not marked impure by
/// link(), so the number recorded on y/a is not read back (found as `Link c -> y/a`).
#[test]
fn regression_link_into_other_dir_shares_st_ino() {
    check(&[Op::Link {
        from: "x/a",
        to: "y/a",
    }]);
}

/// rename(2) over one name of a lower hard-linked pair (c, x/c) that was never copied
/// up. Kernel: the remaining name c has nlink 1. unionfs: c still reports nlink 2, also
/// after a remount. (unlink x/c, and the same rename after c was copied up, are right.)
#[test]
fn regression_rename_over_lower_hardlink_nlink() {
    check(&[Op::Rename {
        from: "z",
        to: "x/c",
        how: Rn::Plain,
    }]);
}

/// A failing rmdir (ENOTEMPTY: y/z holds l1's y/z/a). Both fail alike, but unionfs has
/// copied the parent y up before finding out, the kernel checks emptiness first and
/// leaves the upper untouched. Visible as y's nlink: kernel 3 (y lives in l1 only, which
/// is opaque: not merged), unionfs 1 (now merged with its upper copy). Persists.
#[test]
fn regression_failed_rmdir_copies_up_parent() {
    check(&[Op::Rmdir("y/z")]);
}

/// stat of a directory right after one of its entries was copied up (which copies the
/// directory up and makes it merged). Kernel: nlink 1 (merged). unionfs: the stale nlink
/// 3 of the lower-only directory, from the kernel's attribute cache (unionfs does not
/// invalidate the directory's attributes when copy-up changes them); a readdir refreshes
/// it.
#[test]
fn regression_dir_nlink_stale_after_copy_up() {
    check(&[
        Op::Utimens {
            p: "y/b",
            atime: Ts::At(1000000000, 123456789),
            mtime: Ts::At(1000000000, 123456789),
        },
        Op::Stat("y"),
    ]);
}

/// Creating a file over a whiteout in a setgid directory. Kernel: the file gets the
/// directory's group (100). unionfs: group 0 — the file is made in the workdir (not
/// setgid) and moved over the whiteout, and unionfs skips fixing the owner for a root
/// caller on the assumption that the branch filesystem applied the setgid rule.
#[test]
fn regression_create_over_whiteout_in_setgid_dir_group() {
    check(&[
        Op::Chmod {
            p: "x",
            mode: Oct(0o2755),
        },
        Op::Unlink("x/c"),
        Op::Create {
            p: "x/c",
            mode: Oct(0o644),
        },
    ]);
}

/// rename(2) from one name of a file to another name of the same file must do nothing
/// (POSIX). Kernel: nothing changes, nlink stays 3. unionfs: all three names remain but
/// nlink drops to 2 (persistently). Reached through the st_ino bug above: the new link
/// x/z/b gets its own inode number, so the VFS cannot see that source and target are one
/// file and unionfs's rename runs, counting a replaced link that was not removed.
#[test]
fn regression_rename_between_links_of_one_file_nlink() {
    check(&[
        Op::Link {
            from: "c",
            to: "x/z/b",
        },
        Op::Rename {
            from: "c",
            to: "x/z/b",
            how: Rn::Plain,
        },
    ]);
}

/// The same for a failing rename (ENOTEMPTY: x is not empty): unionfs copies the source's
/// parent y up first; the kernel does not. y's nlink: kernel 3, unionfs 1.
#[test]
fn regression_failed_rename_copies_up_parent() {
    check(&[Op::Rename {
        from: "y/z",
        to: "x",
        how: Rn::Plain,
    }]);
}

/// Moving a directory out of a directory that was itself renamed. Kernel: the moved
/// directory gets `redirect=/x/z` (its path in the lowers) and shows l2's x/z content.
/// unionfs: writes `redirect=/b/z` (its path in the union before the move); resolving
/// that in l1, where b is a whiteout (char 0:0), fails with ENOTDIR, and that error makes
/// readdir of the ROOT fail with ENOTDIR — the whole mount is unlistable, also after a
/// remount.
#[test]
fn regression_redirect_of_dir_moved_out_of_renamed_dir() {
    check(&[
        Op::Rename {
            from: "x",
            to: "b",
            how: Rn::Plain,
        },
        Op::Rename {
            from: "b/z",
            to: "x",
            how: Rn::Plain,
        },
    ]);
}

/// The same with RENAME_EXCHANGE: after x <-> y, x/z (which is l1's y/z) is exchanged with
/// c. Kernel: c gets `redirect=/y/z` and holds y/z/a. unionfs: `redirect=/x/z`, so c shows
/// l2's x/z/a and x/z/z instead.
#[test]
fn regression_redirect_after_exchange_of_parents() {
    check(&[
        Op::Rename {
            from: "y",
            to: "x",
            how: Rn::Exchange,
        },
        Op::Rename {
            from: "c",
            to: "x/z",
            how: Rn::Exchange,
        },
    ]);
}

/// A file renamed into a directory that the rename copies up (x/z), then looked up
/// again (a failing mkdir forces the kernel to revalidate the name). unionfs answers the
/// new lookup with another inode number than the rename kept (the upper file's own
/// number instead of the recorded one: the directory was marked impure on disk, but not
/// in the directory's in-memory state). The kernel then holds two inodes for one file,
/// so data written through an fd opened before is invisible to a reader that opens the
/// path: kernel reads 5002 bytes, unionfs 5 (stale cached size). After a remount the
/// number is the recorded one again.
#[test]
fn regression_renamed_file_changes_st_ino_on_relookup() {
    check(&[
        Op::Rename {
            from: "a",
            to: "x/z/a",
            how: Rn::Plain,
        },
        Op::Open {
            p: "x/z/a",
            slot: 0,
            rw: true,
        },
        Op::Mkdir {
            p: "x/z/a",
            mode: Oct(0o755),
        },
        Op::WriteFd {
            slot: 0,
            off: 5000,
            data: 1,
        },
        Op::Read("x/z/a"),
    ]);
}

/// fstat through a descriptor opened before another name of the file was replaced by
/// rename. x/c (one name of the lower hard-linked pair c, x/c) is moved to y/c, c is
/// opened, then y/c is replaced. Kernel: fstat says nlink 1 (so does stat c on both
/// sides). unionfs: fstat through the descriptor still says nlink 2.
#[test]
fn regression_fstat_nlink_after_other_link_replaced() {
    check(&[
        Op::Rename {
            from: "x/c",
            to: "y/c",
            how: Rn::Plain,
        },
        Op::Open {
            p: "c",
            slot: 0,
            rw: false,
        },
        Op::Rename {
            from: "x/z/z",
            to: "y/c",
            how: Rn::Plain,
        },
        Op::FstatFd(0),
    ]);
}

/// A lower file opened read-only, then written through a second descriptor (which copies
/// it up), then read through the first one. Kernel: the first descriptor reads the new
/// 10 bytes. unionfs once read the new data cut to the old size, "01234" (5 bytes): the
/// size the kernel holds for the first descriptor's file was not updated by the write.
/// Now, by default (lower files passed through), the first descriptor reads the old
/// lower file whole, the documented difference `Side::reads_as_at_open` accepts; under
/// `passthrough=upper` it reads the copy, as the kernel.
#[test]
fn regression_fd_opened_before_copy_up_reads_stale_size() {
    check(&[
        Op::Open {
            p: "a",
            slot: 1,
            rw: false,
        },
        Op::Write {
            p: "a",
            how: Wr::Plain,
            off: 0,
            data: 2,
        },
        Op::ReadFd(1),
    ]);
}

/// O_TMPFILE in a merged directory. Kernel: works. unionfs: EOPNOTSUPP, because fuser
/// 0.18 has no FUSE_TMPFILE request (see [`comparable`]).
#[test]
#[ignore = "O_TMPFILE needs FUSE_TMPFILE, which fuser 0.18 does not implement"]
fn regression_o_tmpfile() {
    check(&[Op::Tmpfile("x")]);
}

/// Kernel overlayfs reading unionfs's upper and workdir after a write to one name (c) of
/// a lower hard-linked pair. unionfs keeps the pair together through an index of its own
/// (`WORKDIR/unionfs-index`), the kernel through `WORKDIR/index` in its own format, so
/// the kernel knows nothing of unionfs's index: the upper holds c's new data but nothing
/// for x/c, and under the kernel x/c still shows the old lower data ("l1:c..."), while
/// the kernel on its own upper shows "hi:c..." under both names. (An incompatibility of
/// formats rather than a slip: the fix is for unionfs to write the kernel's index entries
/// and `trusted.overlay.origin` too.)
#[test]
fn regression_kernel_reads_upper_lower_hardlink_copy_up() {
    check_with(
        &[Op::Write {
            p: "c",
            how: Wr::Plain,
            off: 0,
            data: 1,
        }],
        Check::KernelReadsUpper,
    );
}

/// The fixture alone (no ops): both views, the remount and the lowers agree.
#[test]
fn fixture_views_agree() {
    check(&[]);
}

/// The fixture alone, read by the kernel from an upper unionfs mounted once.
#[test]
fn fixture_kernel_reads_unionfs_upper() {
    check_with(&[], Check::KernelReadsUpper);
}

/// utimensat with nanoseconds on a lower file copies it up with exactly that mtime.
#[test]
fn utimensat_nanoseconds_on_lower_file() {
    let t = (1_234_567_890, 987_654_321);
    let Some(out) = check(&[Op::Utimens {
        p: "x/a",
        atime: Ts::Omit,
        mtime: Ts::At(t.0, t.1),
    }]) else {
        return;
    };
    for (side, s) in [("kernel", &out.kernel), ("unionfs", &out.unionfs)] {
        let e = s["x/a"].as_ref().unwrap();
        assert_eq!(e.mtime, t, "{side}: mtime of x/a");
        assert_eq!(
            e.content.as_deref().map(|c| c.contains("l1:x/a")),
            Some(true)
        );
    }
}

/// A hard-linked lower file renamed (metadata-only copy-up into the index), then opened
/// for writing (its data copied up). Kernel with `metacopy=on`: the file's mtime becomes
/// "now" — a kernel bug, the kernel without metacopy keeps it. unionfs keeps it; the
/// oracle runs without metacopy (see `MountGuard::kernel`).
#[test]
fn regression_metacopy_rename_then_write_keeps_mtime() {
    check(&[
        Op::Rename {
            from: "x/c",
            to: "x/z/a",
            how: Rn::Plain,
        },
        Op::Open {
            p: "c",
            slot: 0,
            rw: true,
        },
    ]);
}

/// As above, with the other name unlinked first.
#[test]
fn regression_metacopy_unlink_then_write_keeps_mtime() {
    check(&[
        Op::Unlink("c"),
        Op::CopyRange {
            from: "x",
            to: "x/c",
        },
    ]);
}

/// Issue 11, item 1: a directory moved to a new place (`mkdir e/n; rename d/d e/n/x`)
/// gets `redirect=/d/d`. In the lower below, `d` is a regular file: following the
/// redirect there must end the search in that lower and below (overlayfs
/// `ovl_lookup_layer`), never fail. Kernel: e/n/x is a directory. unionfs: ENOTDIR as
/// soon as the name is looked up again (at once with `-o ttl=0`, here after the remount),
/// and the directory and everything under it drop out of the view.
fn redirect_through_lower_file(fmt: Fmt) {
    let lowers = gen_lowers(&[
        &[("d", Obj::Dir), ("d/d", Obj::Dir), ("e", Obj::Dir)],
        &[("d", Obj::File(0))],
    ]);
    check_on(
        &Lowers::Gen(lowers),
        &[
            Op::Mkdir {
                p: "e/n",
                mode: Oct(0o755),
            },
            Op::Rename {
                from: "d/d",
                to: "e/n/x",
                how: Rn::Plain,
            },
            Op::Stat("e/n/x"),
        ],
        Check::Full,
        fmt,
    );
}

#[test]
fn regression_redirect_through_lower_file() {
    redirect_through_lower_file(Fmt::Overlay);
}

#[test]
fn regression_redirect_through_lower_file_aufs() {
    redirect_through_lower_file(Fmt::Aufs);
}

/// A rename of a lower directory over a non-empty directory that only the upper holds
/// (made by mkdir). Kernel: no emptiness check before copy-up for such a target
/// (`ovl_pure_upper`): the source (and its parents) are copied up, then the upper's
/// rename fails with ENOTEMPTY, so e and e/e are merged directories afterwards (nlink 1).
/// unionfs: failed before copying anything up (nlink 3 and 2). Found by the generated
/// lowers at 1024 cases.
fn failed_rename_over_upper_dir_copies_up_source(fmt: Fmt) {
    let lowers = gen_lowers(&[
        &[("e", Obj::Dir), ("e/e", Obj::Dir), ("e/e/d", Obj::Dir)],
        &[],
    ]);
    check_on(
        &Lowers::Gen(lowers),
        &[
            Op::Mkdir {
                p: "n",
                mode: Oct(0o755),
            },
            Op::Mkdir {
                p: "n/d",
                mode: Oct(0o755),
            },
            Op::Rename {
                from: "e/e/d",
                to: "n",
                how: Rn::Plain,
            },
            Op::Rename {
                from: "e/e",
                to: "n",
                how: Rn::Plain,
            },
        ],
        Check::Full,
        fmt,
    );
}

#[test]
fn regression_failed_rename_over_upper_dir_copies_up_source() {
    failed_rename_over_upper_dir_copies_up_source(Fmt::Overlay);
}

#[test]
fn regression_failed_rename_over_upper_dir_copies_up_source_aufs() {
    failed_rename_over_upper_dir_copies_up_source(Fmt::Aufs);
}

/// An opaque directory on a redirect's path in a lower ends the search in that lower and
/// below, as a file there does. Kernel: /n/e absent (l1's e is opaque, so l2's e/e/e
/// never shows). unionfs before the layer walk: the redirect `/e/e` was opened in every
/// lower on its own, and l2's e/e/e leaked into /n.
fn redirect_through_opaque_lower_dir(fmt: Fmt) {
    let lowers = gen_lowers(&[
        &[("e", Obj::Opaque), ("e/e", Obj::Dir)],
        &[("e", Obj::Dir), ("e/e", Obj::Dir), ("e/e/e", Obj::Dir)],
    ]);
    check_on(
        &Lowers::Gen(lowers),
        &[
            Op::Rename {
                from: "e/e",
                to: "n",
                how: Rn::Plain,
            },
            Op::Stat("n/e"),
            Op::Rmdir("n"),
        ],
        Check::Full,
        fmt,
    );
}

#[test]
fn regression_redirect_through_opaque_lower_dir() {
    redirect_through_opaque_lower_dir(Fmt::Overlay);
}

#[test]
fn regression_redirect_through_opaque_lower_dir_aufs() {
    redirect_through_opaque_lower_dir(Fmt::Aufs);
}

/// copy_file_range from a lower file onto itself, overlapping. Kernel: EINVAL (one
/// inode). unionfs copied: the destination's open for writing moved the file to a new
/// node (the source, opened first, pinned the old one to the lower file), so the
/// kernel saw two inodes and left the check to the daemon.
#[test]
fn regression_copy_range_onto_itself_after_the_writer_moved_to_a_new_node() {
    check(&[Op::CopyRange {
        from: "x/z/a",
        to: "x/z/a",
    }]);
}
