//! The operations and generated lowers of the differential tests, shared by
//! `tests/diff_ops.rs` (unionfs mounted, kernel overlayfs the oracle) and
//! `tests/core_model.rs` (`UnionFs` called directly, a plain directory the oracle): the
//! operation alphabet and its generator, applying an operation to a directory tree with
//! system calls ([`Side`]), generated lower branches ([`GenLowers`]) and the shrinking
//! case strategy ([`GenCase`]), tree snapshots ([`snapshot`]) and their comparison.
//! Included by those two tests with `#[path]`, not by `common/mod.rs`, so that the
//! other tests do not compile it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, OFlag, RenameFlags, AT_FDCWD};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use proptest::prelude::*;

/// How generated lowers mark whiteouts and opaque directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marks {
    /// char 0:0 whiteouts and `trusted.overlay.opaque=y` (kernel overlayfs reads these;
    /// root only)
    Overlay,
    /// `.wh.<name>` files and `.wh..wh..opq` (unprivileged)
    Aufs,
}

// ---------------------------------------------------------------------------------------
// The alphabet of paths: few names, so generated operations collide a lot
// ---------------------------------------------------------------------------------------

/// Every path an operation may name. `x` is a merged directory, `y` an opaque one, `x/z` a
/// directory of the bottom lower only; `a`, `b`, `c`, `z` are the names inside each.
pub const PATHS: &[&str] = &[
    "a", "b", "c", "z", "x", "y", "x/a", "x/b", "x/c", "x/z", "y/a", "y/b", "y/c", "y/z", "x/z/a",
    "x/z/b", "x/z/c", "x/z/z",
];

/// Directories listed by the `List` operation.
pub const DIRS: &[&str] = &["", "x", "y", "x/z", "y/z", "z"];

/// Symlink targets: relative and without `..`, so following one never leaves the mount.
pub const TARGETS: &[&str] = &["a", "x", "x/c", "nowhere"];

/// The fixed fixture of [`build_lowers`].
pub const FIXED: Alphabet = Alphabet {
    paths: PATHS,
    fresh: PATHS,
    dirs: DIRS,
    targets: TARGETS,
    structural: false,
};

// ---------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------

/// lchown, as root; nothing otherwise (only root gives files away).
pub fn lchown(root: &Path, rel: &str, uid: u32, gid: u32) {
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::lchown(root.join(rel), Some(uid), Some(gid)).unwrap();
    }
}

/// The two lower branches (`l1` on top), their whiteout and opaque directory in the
/// format `marks`. Every path of [`PATHS`] starts out interesting. Not as root, nothing
/// is given away to other owners.
pub fn build_lowers(l1: &Path, l2: &Path, marks: Marks) {
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
    match marks {
        Marks::Overlay => mk_node(l1, "b", SFlag::S_IFCHR, 0), // char 0:0 whiteout
        Marks::Aufs => mk_file(l1, ".wh.b", "", 0o644),
    }
    mk_file(l1, "c", "l1:c, hard-linked with x/c\n", 0o644);
    mk_dir(l1, "x", 0o750);
    lchown(l1, "x", 0, 100);
    xattr::set(l1.join("x"), "user.dir", b"l1").unwrap();
    fs::hard_link(l1.join("c"), at(l1, "x/c")).unwrap();
    mk_file(l1, "x/a", "l1:x/a\n", 0o664);
    mk_dir(l1, "y", 0o755);
    match marks {
        Marks::Overlay => xattr::set(l1.join("y"), "trusted.overlay.opaque", b"y").unwrap(),
        Marks::Aufs => mk_file(l1, "y/.wh..wh..opq", "", 0o644),
    }
    mk_file(l1, "y/b", "l1:y/b\n", 0o644);
    mk_file(l1, "y/z/a", "l1:y/z/a nested\n", 0o644);
    // deterministic times everywhere
    fix_times(&[l1.to_path_buf(), l2.to_path_buf()]);
}

/// Which lowers a case runs on.
#[derive(Clone, Debug)]
pub enum Lowers {
    /// [`build_lowers`]
    Fixed,
    Gen(GenLowers),
}

impl Lowers {
    pub fn count(&self) -> usize {
        match self {
            Lowers::Fixed => 2,
            Lowers::Gen(g) => g.0.len(),
        }
    }

    pub fn build(&self, roots: &[PathBuf], marks: Marks) {
        match self {
            Lowers::Fixed => build_lowers(&roots[0], &roots[1], marks),
            Lowers::Gen(g) => {
                for (i, r) in roots.iter().enumerate() {
                    g.build(i, r, marks);
                }
                fix_times(roots);
            }
        }
    }

    pub fn as_rust(&self) -> String {
        match self {
            Lowers::Fixed => "the fixed fixture (build_lowers)".into(),
            Lowers::Gen(g) => format!("gen_lowers({})", g.as_rust()),
        }
    }
}

/// Data written by write operations, by index.
pub fn data(i: u8) -> Vec<u8> {
    match i {
        0 => Vec::new(),
        1 => b"hi".to_vec(),
        2 => b"0123456789".to_vec(),
        _ => (0..9000u32).map(|n| b'A' + (n % 23) as u8).collect(),
    }
}

/// Times before this are ones the test set itself (fixture, utimensat): they must match
/// exactly. Later ones are "now" on one side or the other and are not compared.
pub const OLD_TIME: i64 = 1_600_000_000;

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

/// How a `Write` opens its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wr {
    /// O_WRONLY, pwrite at the offset
    Plain,
    /// O_WRONLY|O_APPEND, write
    Append,
    /// O_WRONLY|O_TRUNC, pwrite at the offset
    Trunc,
    /// O_WRONLY|O_CREAT (0644), pwrite at the offset
    Creat,
}

impl Wr {
    /// The open(2) flags of a `Write` opening its file this way.
    pub fn flags(self) -> OFlag {
        OFlag::O_WRONLY
            | match self {
                Wr::Plain => OFlag::empty(),
                Wr::Append => OFlag::O_APPEND,
                Wr::Trunc => OFlag::O_TRUNC,
                Wr::Creat => OFlag::O_CREAT,
            }
    }
}

/// rename flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rn {
    Plain,
    NoReplace,
    Exchange,
}

/// One timestamp argument of utimensat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ts {
    At(i64, i64),
    Omit,
    Now,
}

/// setxattr flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Xf {
    Any,
    Create,
    Replace,
}

/// fallocate modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fa {
    /// FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    Punch,
    /// mode 0 (may extend the file)
    Extend,
    /// FALLOC_FL_KEEP_SIZE
    KeepSize,
}

/// A mode, shown in octal (so that failing op lists read well and paste as Rust).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Oct(pub u32);

impl std::fmt::Debug for Oct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Oct(0o{:o})", self.0)
    }
}

/// One system call (or open+call+close) applied to both mounts. Paths are relative to the
/// mount point. Slots are file descriptors held open across later operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
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
    /// open(dir, O_TMPFILE|O_RDWR, 0600), write, close: a file that never has a name
    Tmpfile(&'static str),
    /// open(dir, O_TMPFILE|O_RDWR, 0600), write, linkat(/proc/self/fd/N, to,
    /// AT_SYMLINK_FOLLOW), close: the unnamed file gets a name
    TmpfileLink {
        dir: &'static str,
        to: &'static str,
    },
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

pub const SLOTS: usize = 2;

pub fn ts() -> impl Strategy<Value = Ts> {
    prop_oneof![
        Just(Ts::At(1_000_000_000, 123_456_789)),
        Just(Ts::At(1_234_567_890, 999_999_999)),
        Just(Ts::At(1_400_000_000, 1)),
        Just(Ts::Omit),
        Just(Ts::Now),
    ]
}

/// One of a fixed list of values.
pub fn one_of<T: Clone + std::fmt::Debug + 'static>(v: &'static [T]) -> prop::sample::Select<T> {
    prop::sample::select(v)
}

/// The names one property's operations use, and how often they change the namespace.
pub struct Alphabet {
    /// every path an operation may name
    pub paths: &'static [&'static str],
    /// where rename and mkdir go half of the time (names likely free in directories
    /// likely there, so that moves succeed more often)
    pub fresh: &'static [&'static str],
    /// directories `List` reads
    pub dirs: &'static [&'static str],
    /// symlink targets
    pub targets: &'static [&'static str],
    /// weight rename, mkdir, rmdir and unlink up (for lowers whose interest is their shape)
    pub structural: bool,
}

pub fn op(a: &'static Alphabet) -> impl Strategy<Value = Op> {
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
        1 => one_of(a.dirs).prop_map(Tmpfile),
        1 => (one_of(a.dirs), dest()).prop_map(|(dir, to)| TmpfileLink { dir, to }),
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
pub type Outcome = Result<String, Errno>;

pub fn show(o: &Outcome) -> String {
    match o {
        Ok(s) => format!("Ok({s})"),
        Err(e) => format!("Err({e:?})"),
    }
}

pub fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

/// A short, exact summary of file contents (length, FNV-1a hash, head).
pub fn summary(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let head: String = String::from_utf8_lossy(&bytes[..bytes.len().min(24)]).into_owned();
    format!("{} bytes #{h:016x} {head:?}", bytes.len())
}

pub fn kind_char(mode: u32) -> char {
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

pub fn stat_summary(st: &nix::sys::stat::FileStat) -> String {
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

pub fn lsetxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), Errno> {
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

pub fn read_all(fd: &OwnedFd) -> Result<Vec<u8>, Errno> {
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
pub fn rm_tree(p: &Path) -> Result<(), Errno> {
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
pub struct Side {
    pub mnt: PathBuf,
    pub fds: Vec<Option<OwnedFd>>,
    /// Per slot opened read-only: what `ReadFd` read right after the open.
    pub at_open: Vec<Option<Outcome>>,
}

impl Side {
    pub fn new(mnt: &Path) -> Side {
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
    #[allow(dead_code)] // used by diff_ops, not by core_model
    pub fn reads_as_at_open(&self, op: &Op, got: &Outcome) -> bool {
        matches!(*op, Op::ReadFd(slot) if self.at_open.get(slot).is_some_and(|o| o.as_ref() == Some(got)))
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.mnt.clone()
        } else {
            self.mnt.join(rel)
        }
    }

    pub fn open(&self, rel: &str, flags: OFlag, mode: u32) -> Result<OwnedFd, Errno> {
        // O_NONBLOCK: opening a fifo never waits for the other end
        nix::fcntl::open(
            &self.p(rel),
            flags | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
    }

    pub fn slot(&self, slot: usize) -> Option<&OwnedFd> {
        self.fds.get(slot).and_then(|f| f.as_ref())
    }

    pub fn apply(&mut self, op: &Op) -> Outcome {
        let ok = |()| String::new();
        match *op {
            Op::Write {
                p,
                how,
                off,
                data: d,
            } => {
                let flags = how.flags();
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
            Op::TmpfileLink { dir, to } => {
                use std::os::fd::AsRawFd;
                let fd = self.open(dir, OFlag::O_TMPFILE | OFlag::O_RDWR, 0o600)?;
                let n = nix::unistd::write(&fd, b"tmp")?;
                nix::unistd::linkat(
                    AT_FDCWD,
                    format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
                    AT_FDCWD,
                    &self.p(to),
                    nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
                )?;
                Ok(format!("wrote {n}, linked"))
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
pub fn at(root: &Path, rel: &str) -> PathBuf {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    p
}

pub fn mk_file(root: &Path, rel: &str, content: &str, mode: u32) {
    let p = at(root, rel);
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mk_dir(root: &Path, rel: &str, mode: u32) {
    let p = at(root, rel);
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mk_node(root: &Path, rel: &str, kind: SFlag, mode: u32) {
    nix::sys::stat::mknod(&at(root, rel), kind, Mode::from_bits_truncate(mode), 0).unwrap();
    // mknod applies the umask
    if kind != SFlag::S_IFCHR {
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
    }
}
/// Sets every object's atime and mtime to a fixed time of its own (depth first, sorted),
/// so that the two mounts see the same lowers and mtimes compare exactly.
pub fn fix_times(roots: &[PathBuf]) {
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
pub const GEN_NODES: &[&str] = &[
    "d", "d/d", "d/d/d", "d/d/e", "d/e", "d/e/d", "d/e/e", "e", "e/d", "e/d/d", "e/d/e", "e/e",
    "e/e/d", "e/e/e",
];

/// Paths the operations on generated lowers name: every node, and a fresh name `n` in
/// every directory that may exist (and a level under it), so that directories are moved
/// to new places, deeper and shallower — which is what makes redirects.
pub const GEN_PATHS: &[&str] = &[
    "d", "d/d", "d/d/d", "d/d/e", "d/e", "d/e/d", "d/e/e", "e", "e/d", "e/d/d", "e/d/e", "e/e",
    "e/e/d", "e/e/e", "n", "d/n", "e/n", "d/d/n", "d/e/n", "e/d/n", "e/e/n", "n/d", "n/n",
];

pub const GEN_DIRS: &[&str] = &["", "d", "e", "n", "d/d", "d/e", "e/d", "e/e"];

pub const GEN_TARGETS: &[&str] = &["d", "e/d", "nowhere"];

/// Operations on generated lowers.
pub const GEN: Alphabet = Alphabet {
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
pub fn xwhiteouts() -> bool {
    std::env::var("UNIONFS_DIFF_OPS_XWHITEOUTS").is_ok_and(|v| v == "1")
}

/// One object of a generated lower branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Obj {
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
pub struct GenLowers(pub Vec<Vec<(&'static str, Obj)>>);

/// A [`GenLowers`] written out in Rust (what a regression test passes).
pub fn gen_lowers(spec: &[&[(&'static str, Obj)]]) -> GenLowers {
    GenLowers(spec.iter().map(|l| l.to_vec()).collect())
}

impl GenLowers {
    /// From one object per [`GEN_NODES`] entry per lower: the names under a
    /// non-directory of their own lower, and absent ones, are left out.
    pub fn from_nodes(lowers: Vec<Vec<Obj>>) -> GenLowers {
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

    pub fn get(&self, lower: usize, p: &str) -> Option<Obj> {
        self.0[lower].iter().find(|(q, _)| *q == p).map(|&(_, o)| o)
    }

    /// The lowers (top first) whose directories make up the merged directory `dir`
    /// (`""`: the root) before any operation; empty if `dir` is not a directory.
    pub fn stack(&self, dir: &str) -> Vec<usize> {
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
    pub fn as_rust(&self) -> String {
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

    /// Builds lower `i` (0 = top) in `root`, its whiteouts and opaque directories in
    /// the format `marks` (AUFS marks need no privilege; overlay ones need root).
    pub fn build(&self, i: usize, root: &Path, marks: Marks) {
        for &(p, o) in &self.0[i] {
            match o {
                Obj::Absent => {}
                Obj::Dir => mk_dir(root, p, 0o755),
                Obj::Opaque => {
                    mk_dir(root, p, 0o755);
                    match marks {
                        Marks::Overlay => {
                            xattr::set(root.join(p), "trusted.overlay.opaque", b"y").unwrap()
                        }
                        Marks::Aufs => mk_file(root, &format!("{p}/.wh..wh..opq"), "", 0o644),
                    }
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
                Obj::Whiteout | Obj::XWhiteout if marks == Marks::Aufs => {
                    let (dir, name) = p.rsplit_once('/').map_or(("", p), |(d, n)| (d, n));
                    let wh = if dir.is_empty() {
                        format!(".wh.{name}")
                    } else {
                        format!("{dir}/.wh.{name}")
                    };
                    mk_file(root, &wh, "", 0o644);
                }
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
pub fn obj(depth: usize) -> impl Strategy<Value = Obj> {
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
pub fn gen_lowers_strategy() -> impl Strategy<Value = GenLowers> {
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

/// An op sequence of `len` operations that shrinks by cutting chunks (halves, quarters,
/// ..., single operations: a few dozen runs take 200 operations down to the few that
/// matter, where proptest's own `vec` cuts one at a time), then by simplifying the
/// operations left. Its length is exact, so a budget of "N operations" is N each time.
#[derive(Debug)]
pub struct OpSeq<S> {
    pub elem: S,
    pub len: usize,
}

pub fn op_seq(a: &'static Alphabet, len: usize) -> OpSeq<BoxedStrategy<Op>> {
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
pub struct GenCase {
    pub len: usize,
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

pub struct GenCaseTree {
    pub lowers: Box<dyn proptest::strategy::ValueTree<Value = GenLowers>>,
    pub ops: OpSeqTree<Box<dyn proptest::strategy::ValueTree<Value = Op>>>,
    /// 0: operations, 1: lowers, 2: operations again, 3: done
    pub phase: u8,
    /// what the last simplification changed (true: the operations)
    pub last_ops: Option<bool>,
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
pub enum Step {
    Cut(Vec<usize>),
    Shrink(usize),
}

pub struct OpSeqTree<T> {
    pub elems: Vec<T>,
    pub keep: Vec<bool>,
    /// cutting `chunk` kept operations at a time (0: done cutting)
    pub chunk: usize,
    /// the next cut starts at the first kept operation from here
    pub pos: usize,
    /// simplifying this operation
    pub elem_ix: usize,
    pub last: Option<Step>,
}

impl<T> OpSeqTree<T> {
    /// Cuts again from the start, in halves of what is left.
    pub fn restart(&mut self) {
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
// Snapshots
// ---------------------------------------------------------------------------------------

/// What a user sees of one path (never following symlinks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ent {
    pub kind: char,
    /// the type readdir reported ('-' for the root)
    pub dtype: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
    pub content: Option<String>,
    pub target: Option<String>,
    pub rdev: u64,
    pub xattrs: Vec<(String, String)>,
    pub mtime: (i64, i64),
    pub ino: u64,
    pub dev: u64,
    /// d_ino from readdir (0 for the root)
    pub dino: u64,
}

/// Path (relative, "" = root) to entry, or to the error lstat/readdir gave.
pub type Snap = BTreeMap<String, Result<Ent, String>>;

pub fn errname(e: &std::io::Error) -> String {
    format!("{:?}", io_errno(e))
}

pub fn dtype_char(ft: &fs::FileType) -> char {
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

pub fn xattrs_of(p: &Path) -> Result<Vec<(String, String)>, String> {
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

pub fn entry(p: &Path, dtype: char, dino: u64) -> Result<Ent, String> {
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

pub fn walk(root: &Path, rel: &str, out: &mut Snap) {
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

pub fn snapshot(root: &Path) -> Snap {
    let mut s = Snap::new();
    s.insert(String::new(), entry(root, '-', 0));
    walk(root, "", &mut s);
    s
}
/// What neither model test compares, whatever the two sides: st_ino, st_dev and
/// readdir's d_ino (numbering is each side's own), a directory's size and mtime (the
/// backing directory's), and any mtime at or after [`OLD_TIME`] ("now" on one side or
/// the other; shown as "recent"). Each test's own `comparable` says why, and what else.
pub fn without_numbers_and_recent_times(e: &Ent) -> Ent {
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

pub fn describe(r: &Result<Ent, String>) -> String {
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

/// Differences between two views, as readable lines: `names` labels them (expected
/// first), `norm` leaves out what the caller deliberately does not compare.
pub fn tree_diff_by(
    expected: &Snap,
    actual: &Snap,
    names: (&str, &str),
    norm: impl Fn(&Ent) -> Ent,
) -> Vec<String> {
    let keys: BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let get = |s: &Snap| {
            s.get(k)
                .map(|r| r.as_ref().map(&norm).map_err(Clone::clone))
        };
        let (a, b) = (get(expected), get(actual));
        if a == b {
            continue;
        }
        let show = |r: &Option<Result<Ent, String>>| match r {
            None => "(absent)".to_string(),
            Some(r) => describe(r),
        };
        let w = names.0.len().max(names.1.len()) + 1;
        out.push(format!(
            "  /{k}\n      {:w$} {}\n      {:w$} {}",
            format!("{}:", names.0),
            show(&a),
            format!("{}:", names.1),
            show(&b)
        ));
    }
    out
}

/// A fresh temporary directory for one case, and its canonical path.
pub fn case_root(prefix: &str) -> Result<(tempfile::TempDir, PathBuf), String> {
    let td = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| e.to_string())?;
    let root = td.path().canonicalize().map_err(|e| e.to_string())?;
    Ok((td, root))
}

/// `root/name`, made (mode 0755) if missing.
pub fn subdir(root: &Path, name: &str) -> PathBuf {
    let p = root.join(name);
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Everything of a raw branch that must not change (not atime/ctime).
pub fn branch_snapshot(root: &Path) -> Snap {
    snapshot(root)
}

pub fn lower_problems(before: &[(PathBuf, Snap)]) -> Vec<String> {
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

/// Operations tried and succeeded, by kind (`Write`, `Rename`, ...): the statistics
/// both model tests print on request.
#[derive(Default)]
pub struct OpStats(BTreeMap<String, (usize, usize)>);

impl OpStats {
    pub fn count(&mut self, op: &Op, ok: bool) {
        let dbg = format!("{op:?}");
        let kind = dbg
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or("");
        let e = self.0.entry(kind.to_string()).or_insert((0, 0));
        *e = (e.0 + usize::from(ok), e.1 + 1);
    }

    /// `Kind succeeded/tried, ...`
    pub fn line(&self) -> String {
        let kinds: Vec<String> = self
            .0
            .iter()
            .map(|(k, (ok, n))| format!("{k} {ok}/{n}"))
            .collect();
        kinds.join(", ")
    }
}

pub fn ops_as_rust(ops: &[Op]) -> String {
    let mut s = String::from("&[\n");
    for o in ops {
        s += &format!("    Op::{o:?},\n");
    }
    s + "]"
}

pub fn env_num(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The config of a generated-lowers property with `cases` cases. Shrinking takes results of values it has seen from a cache, and stops after
/// `PROPTEST_MAX_SHRINK_TIME` ms (10 minutes unless set) or `PROPTEST_MAX_SHRINK_ITERS`
/// runs (100000 unless set).
pub fn gen_config(cases: u32) -> ProptestConfig {
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
