//! File and directory syscalls on branch fds: open, stat, getdents, read,
//! readlink, lseek, statfs. All paths are single names relative to a
//! directory fd, or multi-component paths confined with `openat2`; and the
//! advisory `flock` a union holds on a directory it writes (`DirLock`,
//! its holder read from /proc/locks for messages). Takes no locks of the
//! process's own.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::Type;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode};
use nix::sys::statvfs::Statvfs;
use nix::unistd::Whence;

use super::traced;
use crate::error::Result;

/// Opens `name` in `dir` as an O_PATH handle without following a final symlink.
pub fn open_path_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd> {
    traced!(
        "openat",
        (dir.as_raw_fd(), name),
        nix::fcntl::openat(
            dir,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty()
        )
    )
}

/// Opens a (possibly multi-component) relative `path` beneath `dir` as O_PATH,
/// refusing `..` escapes, symlinks, magic links and mount crossings.
pub fn open_path_beneath(dir: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd> {
    open_beneath(dir, path, OFlag::O_PATH | OFlag::O_NOFOLLOW)
}

/// `openat2` of `path` beneath `dir` with `flags` (and O_CLOEXEC): no `..`
/// escape, no symlink, no magic link, no mount crossing on the way.
fn open_beneath(dir: BorrowedFd<'_>, path: &Path, flags: OFlag) -> Result<OwnedFd> {
    let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    );
    traced!(
        "openat2",
        (dir.as_raw_fd(), path),
        nix::fcntl::openat2(dir, path, how)
    )
}

/// Opens a directory given by an absolute host path as O_PATH (mount time only).
pub fn open_path_abs(path: &Path) -> Result<OwnedFd> {
    traced!(
        "open",
        path,
        nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_DIRECTORY,
            Mode::empty()
        )
    )
}

/// Opens the object behind an O_PATH fd for I/O with `flags`, through
/// `/proc/self/fd` (which works for any O_PATH handle, whatever its names).
/// A directory (`O_DIRECTORY`) is opened as `.` inside itself instead: a
/// walk of one component, where the `/proc` path walks four and a magic
/// link; the `/proc` path answers when that one is refused (`.` needs
/// search permission on the directory, which an unprivileged daemon may
/// lack).
pub fn reopen(fd: BorrowedFd<'_>, flags: OFlag) -> Result<OwnedFd> {
    if flags.contains(OFlag::O_DIRECTORY) {
        let dot = traced!(
            "openat",
            (fd.as_raw_fd(), ".", flags),
            nix::fcntl::openat(fd, ".", flags | OFlag::O_CLOEXEC, Mode::empty())
        );
        match dot {
            Err(e) if e.errno() == nix::errno::Errno::EACCES => {}
            r => return r,
        }
    }
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    traced!(
        "reopen",
        (fd.as_raw_fd(), flags),
        nix::fcntl::open(proc_path.as_str(), flags | OFlag::O_CLOEXEC, Mode::empty())
    )
}

/// `fstat` of any fd, O_PATH included.
pub fn fstat(fd: BorrowedFd<'_>) -> Result<FileStat> {
    traced!("fstat", fd.as_raw_fd(), nix::sys::stat::fstat(fd))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)` of one name.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<FileStat> {
    traced!(
        "fstatat",
        (dir.as_raw_fd(), name),
        nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
    )
}

/// Reads the target of the symlink behind an O_PATH fd.
pub fn readlink(fd: BorrowedFd<'_>) -> Result<OsString> {
    traced!("readlinkat", fd.as_raw_fd(), nix::fcntl::readlinkat(fd, ""))
}

/// `pread` into `buf`; returns the number of bytes read.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<usize> {
    let off = i64::try_from(offset).map_err(|_| crate::error::Error::Invalid)?;
    traced!(
        "pread",
        (fd.as_raw_fd(), buf.len(), offset),
        nix::sys::uio::pread(fd, buf, off)
    )
}

/// `lseek` with any whence, SEEK_DATA/SEEK_HOLE included.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: Whence) -> Result<i64> {
    traced!(
        "lseek",
        (fd.as_raw_fd(), offset, whence),
        nix::unistd::lseek(fd, offset, whence)
    )
}

/// The data extents of `fd` as (start, end) pairs, via SEEK_DATA/SEEK_HOLE
/// (one extent covering everything where the filesystem cannot tell).
pub fn data_extents(fd: BorrowedFd<'_>, size: u64) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut off = 0u64;
    let size_i = i64::try_from(size).map_err(|_| crate::error::Error::Invalid)?;
    while off < size {
        let o = i64::try_from(off).map_err(|_| crate::error::Error::Invalid)?;
        let data = match lseek(fd, o, Whence::SeekData) {
            Ok(d) => d,
            Err(e) if e.errno() == nix::errno::Errno::ENXIO => break,
            Err(e) if e.errno() == nix::errno::Errno::EINVAL => {
                out.push((off, size));
                break;
            }
            Err(e) => return Err(e),
        };
        let hole = lseek(fd, data, Whence::SeekHole)
            .unwrap_or(size_i)
            .min(size_i);
        let (d, h) = (data.unsigned_abs(), hole.unsigned_abs());
        if h <= d {
            break;
        }
        out.push((d, h));
        off = h;
    }
    Ok(out)
}

/// `fstatvfs` of the filesystem holding `fd`.
pub fn statvfs(fd: BorrowedFd<'_>) -> Result<Statvfs> {
    traced!("fstatvfs", fd.as_raw_fd(), nix::sys::statvfs::fstatvfs(fd))
}

/// One raw directory entry of one branch directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDirEntry {
    /// The entry's name (never `.` or `..`).
    pub name: OsString,
    /// `d_ino` as the branch reports it.
    pub ino: u64,
    /// `d_type`, when the branch filesystem reports one.
    pub kind: Option<Type>,
}

/// Lists a branch directory (behind an O_PATH fd) without `.` and `..`.
/// Plain `getdents64` on a fresh fd, not `fdopendir`: its two `fcntl` and
/// the `rewinddir` (`lseek`) nix's iterator makes on drop were 3 of the 7
/// syscalls a listing cost, and a deep stack lists each layer of a
/// directory (readdir, the layer index).
pub fn read_dir(dir: BorrowedFd<'_>) -> Result<Vec<RawDirEntry>> {
    let mut out = Vec::new();
    read_dir_batches(dir, |_| {}, &mut out)?;
    Ok(out)
}

/// `read_dir` into `out`, calling `batch` with the entries each
/// `getdents64` added (a caller can start work on them while the next
/// batch is read).
pub fn read_dir_batches(
    dir: BorrowedFd<'_>,
    batch: impl FnMut(&[RawDirEntry]),
    out: &mut Vec<RawDirEntry>,
) -> Result<()> {
    let fd = reopen(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
    read_open_dir_batches(fd.as_fd(), batch, out)
}

/// `read_dir_batches` of a directory already open for reading (from its
/// start: a fresh fd).
fn read_open_dir_batches(
    dir: BorrowedFd<'_>,
    mut batch: impl FnMut(&[RawDirEntry]),
    out: &mut Vec<RawDirEntry>,
) -> Result<()> {
    let mut buf = vec![0u8; DENTS_BUF];
    loop {
        let n = traced!("getdents64", dir.as_raw_fd(), getdents64(dir, &mut buf))?;
        if n == 0 {
            return Ok(());
        }
        let filled = buf.get(..n).ok_or_else(|| bad_dents(dir))?;
        let before = out.len();
        parse_dents(filled, out).ok_or_else(|| bad_dents(dir))?;
        batch(out.get(before..).unwrap_or_default());
    }
}

/// Lists directory `name` of `dir` for reading ahead: opened beneath `dir`
/// without following a symlink or crossing a mount, and without updating
/// its atime (`O_NOATIME`: EPERM where the caller neither owns it nor has
/// CAP_FOWNER, so such a directory is not read ahead).
pub fn read_dir_ahead(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(OwnedFd, Vec<RawDirEntry>)> {
    let fd = open_beneath(
        dir,
        Path::new(name),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_NOATIME,
    )?;
    let mut out = Vec::new();
    read_open_dir_batches(fd.as_fd(), |_| {}, &mut out)?;
    Ok((fd, out))
}

/// Bytes of directory entries read per `getdents64` (glibc's readdir
/// buffer size): a layer's share of a directory is one call, plus the empty
/// one that ends it.
const DENTS_BUF: usize = 32 * 1024;

/// Offsets in a `struct linux_dirent64`: d_ino (u64), d_off (i64),
/// d_reclen (u16), d_type (u8), then the NUL-terminated name.
const D_RECLEN: usize = 16;
const D_TYPE: usize = 18;
const D_NAME: usize = 19;

/// One `getdents64` into `buf`: the number of bytes filled, 0 at the end.
fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<usize> {
    // SAFETY: `buf` is writable memory of `buf.len()` bytes, which is the
    // most the kernel writes; `fd` is open for the call's duration.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    nix::errno::Errno::result(r).map(|r| usize::try_from(r).unwrap_or(0))
}

/// A listing the kernel filled in a shape it never has: EIO, rather than
/// a wrong list.
fn bad_dents(dir: BorrowedFd<'_>) -> crate::error::Error {
    tracing::trace!("getdents64({:?}) = malformed record", dir.as_raw_fd());
    crate::error::Error::sys("getdents64", nix::errno::Errno::EIO)
}

/// Appends the entries (but `.` and `..`) of one filled `getdents64`
/// buffer to `out`; `None` if a record does not fit in it.
fn parse_dents(filled: &[u8], out: &mut Vec<RawDirEntry>) -> Option<()> {
    let mut rest = filled;
    while !rest.is_empty() {
        let reclen = usize::from(u16::from_ne_bytes(
            rest.get(D_RECLEN..D_RECLEN + 2)?.try_into().ok()?,
        ));
        let rec = rest.get(..reclen).filter(|r| r.len() > D_NAME)?;
        rest = &rest[reclen..];
        let ino = u64::from_ne_bytes(rec.get(..8)?.try_into().ok()?);
        let name = &rec[D_NAME..];
        let name = &name[..name.iter().position(|&b| b == 0)?];
        if name == b"." || name == b".." {
            continue;
        }
        out.push(RawDirEntry {
            name: OsStr::from_bytes(name).to_os_string(),
            ino,
            kind: dirent_type(rec[D_TYPE]),
        });
    }
    Some(())
}

/// `d_type` as nix's `Type`; `None` for DT_UNKNOWN (and anything else).
fn dirent_type(t: u8) -> Option<Type> {
    Some(match t {
        libc::DT_FIFO => Type::Fifo,
        libc::DT_CHR => Type::CharacterDevice,
        libc::DT_DIR => Type::Directory,
        libc::DT_BLK => Type::BlockDevice,
        libc::DT_REG => Type::File,
        libc::DT_LNK => Type::Symlink,
        libc::DT_SOCK => Type::Socket,
        _ => return None,
    })
}

/// A duplicate of an fd (for handing one to another owner).
pub fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    traced!(
        "dup",
        fd.as_raw_fd(),
        fd.try_clone_to_owned()
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)))
    )
}

/// Borrows an owned fd (readability helper).
pub fn b(fd: &OwnedFd) -> BorrowedFd<'_> {
    fd.as_fd()
}

/// The mount id of the object behind any fd (statx, AT_EMPTY_PATH).
pub fn mount_id_fd(fd: BorrowedFd<'_>) -> Result<u64> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: the empty path is NUL-terminated; `stx` is writable memory of
    // the right size for the kernel to fill.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    let res = if r == 0 {
        // SAFETY: statx returned 0, so it filled the struct.
        Ok(unsafe { stx.assume_init() }.stx_mnt_id)
    } else {
        Err(nix::errno::Errno::last())
    };
    traced!("statx", fd.as_raw_fd(), res)
}

/// statx(2) of `path` with `flags` and `mask`.
pub(crate) fn statx_path(path: &Path, flags: i32, mask: u32) -> Result<libc::statx> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| crate::error::Error::Invalid)?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is NUL-terminated and outlives the call; `stx` points to
    // writable memory of the right size for the kernel to fill.
    let r = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), flags, mask, stx.as_mut_ptr()) };
    let res = if r == 0 {
        // SAFETY: statx returned 0, so it filled the struct.
        Ok(unsafe { stx.assume_init() })
    } else {
        Err(nix::errno::Errno::last())
    };
    traced!("statx", path, res)
}

/// (mount id, whether `path` is the root of its mount) via statx.
pub fn mount_id(path: &Path) -> Result<(u64, bool)> {
    let s = statx_path(path, libc::AT_STATX_SYNC_AS_STAT, libc::STATX_MNT_ID)?;
    let root = s.stx_attributes_mask & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0
        && s.stx_attributes & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0;
    Ok((s.stx_mnt_id, root))
}

/// Creates and opens a new regular file `name` in `dir` (O_EXCL).
pub fn create_at(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlag, mode: u32) -> Result<OwnedFd> {
    traced!(
        "openat(O_CREAT)",
        (dir.as_raw_fd(), name, flags, mode),
        nix::fcntl::openat(
            dir,
            name,
            flags | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode)
        )
    )
}

/// `mkdirat`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> Result<()> {
    traced!(
        "mkdirat",
        (dir.as_raw_fd(), name, mode),
        nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(mode))
    )
}

/// `mknodat` (fifos, sockets, devices, whiteouts).
pub fn mknod_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> Result<()> {
    let kind = nix::sys::stat::SFlag::from_bits_truncate(mode & libc::S_IFMT);
    traced!(
        "mknodat",
        (dir.as_raw_fd(), name, mode, rdev),
        nix::sys::stat::mknodat(
            dir,
            name,
            kind,
            Mode::from_bits_truncate(mode & 0o7777),
            rdev
        )
    )
}

/// `symlinkat`.
pub fn symlink_at(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    traced!(
        "symlinkat",
        (target, dir.as_raw_fd(), name),
        nix::unistd::symlinkat(target, dir, name)
    )
}

/// Links the object behind O_PATH `fd` as `dir/name` (AT_EMPTY_PATH).
pub fn link_fd(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    traced!(
        "linkat",
        (fd.as_raw_fd(), dir.as_raw_fd(), name),
        nix::unistd::linkat(fd, "", dir, name, nix::fcntl::AtFlags::AT_EMPTY_PATH)
    )
}

/// `unlinkat` of a non-directory (or of a directory with `dir_flag`).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> Result<()> {
    let flag = if is_dir {
        nix::unistd::UnlinkatFlags::RemoveDir
    } else {
        nix::unistd::UnlinkatFlags::NoRemoveDir
    };
    traced!(
        "unlinkat",
        (dir.as_raw_fd(), name, is_dir),
        nix::unistd::unlinkat(dir, name, flag)
    )
}

/// `unlinkat` of the non-directory `dir/name`, returning an O_PATH fd of
/// it opened just before (when it could be): while that fd is open, the
/// object's inode lives on, so freeing its data waits for the fd's close
/// instead of happening inside `unlinkat`.
pub fn unlink_holding(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<OwnedFd>> {
    let held = open_path_at(dir, name).ok();
    unlink_at(dir, name, false)?;
    Ok(held)
}

/// How `rename_at` treats an existing destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace it (plain rename(2)).
    Replace,
    /// Fail with EEXIST.
    NoReplace,
    /// Swap the two atomically.
    Exchange,
    /// Replace, and leave a char 0:0 whiteout at the source (RENAME_WHITEOUT).
    Whiteout,
}

/// `renameat2`.
pub fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
    mode: RenameMode,
) -> Result<()> {
    let flags = match mode {
        RenameMode::Replace => nix::fcntl::RenameFlags::empty(),
        RenameMode::NoReplace => nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        RenameMode::Exchange => nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        RenameMode::Whiteout => nix::fcntl::RenameFlags::RENAME_WHITEOUT,
    };
    traced!(
        "renameat2",
        (from_dir.as_raw_fd(), from, to_dir.as_raw_fd(), to, mode),
        nix::fcntl::renameat2(from_dir, from, to_dir, to, flags)
    )
}

/// Changes owner of the object behind any fd (O_PATH included, symlinks too).
pub fn chown_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    traced!(
        "fchownat",
        (fd.as_raw_fd(), uid, gid),
        nix::unistd::fchownat(
            fd,
            "",
            uid.map(nix::unistd::Uid::from_raw),
            gid.map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_EMPTY_PATH
        )
    )
}

/// `fchmodat2` (Linux 6.6), which takes AT_EMPTY_PATH.
static FCHMODAT2: super::NewCall = super::NewCall::new(452);

/// Changes the mode of the object behind an O_PATH fd (not for symlinks):
/// `fchmodat2(fd, "", AT_EMPTY_PATH)`, a third of the cost of going
/// through `/proc/self/fd/N`, which older kernels need (EINVAL: a kernel
/// whose fchmodat2 refuses AT_EMPTY_PATH).
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> Result<()> {
    let res = FCHMODAT2.run(
        &[nix::errno::Errno::EINVAL],
        |nr| {
            // SAFETY: the path is an empty NUL-terminated string; the fd is
            // borrowed for the call.
            let r = unsafe {
                libc::syscall(
                    nr,
                    fd.as_raw_fd(),
                    c"".as_ptr(),
                    mode & 0o7777,
                    libc::AT_EMPTY_PATH,
                )
            };
            if r == 0 {
                Ok(())
            } else {
                Err(nix::errno::Errno::last())
            }
        },
        || {
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
                Mode::from_bits_truncate(mode),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
        },
    );
    traced!("fchmodat2", (fd.as_raw_fd(), mode), res)
}

/// A time to set: a value, "now", or "leave alone".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// Keep the current value (UTIME_OMIT).
    Omit,
    /// The current time (UTIME_NOW).
    Now,
    /// Seconds and nanoseconds since the epoch.
    At(i64, i64),
}

fn timespec(t: SetTime) -> nix::sys::time::TimeSpec {
    match t {
        SetTime::Omit => nix::sys::time::TimeSpec::UTIME_OMIT,
        SetTime::Now => nix::sys::time::TimeSpec::UTIME_NOW,
        SetTime::At(s, ns) => nix::sys::time::TimeSpec::new(s, ns),
    }
}

/// Sets atime/mtime of the object behind any fd (symlinks included).
pub fn utimes_fd(fd: BorrowedFd<'_>, atime: SetTime, mtime: SetTime) -> Result<()> {
    traced!(
        "utimensat",
        (fd.as_raw_fd(), atime, mtime),
        {
            let times = [*timespec(atime).as_ref(), *timespec(mtime).as_ref()];
            // SAFETY: the empty path is NUL-terminated and `times` holds the
            // two timespecs utimensat reads.
            let r = unsafe {
                libc::utimensat(
                    fd.as_raw_fd(),
                    c"".as_ptr(),
                    times.as_ptr(),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            nix::errno::Errno::result(r).map(drop)
        }
        .or_else(|_| {
            // Kernels without AT_EMPTY_PATH support in utimensat.
            let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                proc_path.as_str(),
                &timespec(atime),
                &timespec(mtime),
                nix::sys::stat::UtimensatFlags::FollowSymlink,
            )
        })
    )
}

/// `pwrite`; returns bytes written.
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> Result<usize> {
    let off = i64::try_from(offset).map_err(|_| crate::error::Error::Invalid)?;
    traced!(
        "pwrite",
        (fd.as_raw_fd(), buf.len(), offset),
        nix::sys::uio::pwrite(fd, buf, off)
    )
}

/// `ftruncate`.
pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> Result<()> {
    let len = i64::try_from(size).map_err(|_| crate::error::Error::Invalid)?;
    traced!(
        "ftruncate",
        (fd.as_raw_fd(), size),
        nix::unistd::ftruncate(fd, len)
    )
}

/// `fallocate` with raw mode bits.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> Result<()> {
    let off = i64::try_from(offset).map_err(|_| crate::error::Error::Invalid)?;
    let len_i = i64::try_from(len).map_err(|_| crate::error::Error::Invalid)?;
    traced!(
        "fallocate",
        (fd.as_raw_fd(), mode, offset, len),
        nix::fcntl::fallocate(
            fd,
            nix::fcntl::FallocateFlags::from_bits_truncate(mode),
            off,
            len_i
        )
    )
}

/// `fsync` or `fdatasync`.
pub fn fsync(fd: BorrowedFd<'_>, data_only: bool) -> Result<()> {
    if data_only {
        traced!("fdatasync", fd.as_raw_fd(), nix::unistd::fdatasync(fd))
    } else {
        traced!("fsync", fd.as_raw_fd(), nix::unistd::fsync(fd))
    }
}

/// The id of the mount `fd` is on, unique in this boot (never reused after
/// an unmount: statx `STATX_MNT_ID_UNIQUE`, Linux 6.8), or None.
pub fn mount_unique_id(fd: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: an all-zero struct statx is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a NUL-terminated empty string (AT_EMPTY_PATH: the
    // fd itself), `stx` is a struct statx that outlives the call.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID_UNIQUE,
            &mut stx,
        )
    };
    (r == 0 && stx.stx_mask & libc::STATX_MNT_ID_UNIQUE != 0).then_some(stx.stx_mnt_id)
}

/// `syncfs`: everything written to the filesystem of `fd` reaches the
/// disk (`fd` must not be O_PATH).
pub fn syncfs(fd: BorrowedFd<'_>) -> Result<()> {
    traced!("syncfs", fd.as_raw_fd(), nix::unistd::syncfs(fd))
}

/// `copy_file_range` between two fds at explicit offsets.
pub fn copy_file_range(
    from: BorrowedFd<'_>,
    from_off: u64,
    to: BorrowedFd<'_>,
    to_off: u64,
    len: usize,
) -> Result<usize> {
    let mut fo = i64::try_from(from_off).map_err(|_| crate::error::Error::Invalid)?;
    let mut to_o = i64::try_from(to_off).map_err(|_| crate::error::Error::Invalid)?;
    traced!(
        "copy_file_range",
        (from.as_raw_fd(), from_off, to.as_raw_fd(), to_off, len),
        nix::fcntl::copy_file_range(from, Some(&mut fo), to, Some(&mut to_o), len)
    )
}

nix::ioctl_write_int!(ficlone_ioctl, 0x94, 9);

/// Reflinks all of `from` into `to` (FICLONE); EOPNOTSUPP/EXDEV/EINVAL when
/// the filesystem cannot share extents.
pub fn ficlone(to: BorrowedFd<'_>, from: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: FICLONE takes the source fd as its integer argument; both fds
    // are valid for the duration of the call.
    let r = unsafe { ficlone_ioctl(to.as_raw_fd(), from.as_raw_fd() as libc::c_ulong) };
    traced!(
        "ioctl(FICLONE)",
        (to.as_raw_fd(), from.as_raw_fd()),
        r.map(|_| ())
    )
}

nix::ioctl_read!(shutdown_ioctl, b'X', 125, u32);

/// `FS_SHUTDOWN_FLAGS_NOLOGFLUSH`: stop without flushing the log.
pub const SHUTDOWN_NOLOGFLUSH: u32 = 2;

/// Shuts down the filesystem of `fd` (FS_IOC_SHUTDOWN): with
/// [`SHUTDOWN_NOLOGFLUSH`] what is not yet committed is lost, as at a power
/// cut. Only the crash tests call it.
pub fn shutdown_fs(fd: BorrowedFd<'_>, flags: u32) -> Result<()> {
    let mut f = flags;
    // SAFETY: FS_IOC_SHUTDOWN reads one u32 through the pointer, which
    // points at `f` for the duration of the call; `fd` is valid.
    let r = unsafe { shutdown_ioctl(fd.as_raw_fd(), &mut f) };
    traced!(
        "ioctl(FS_IOC_SHUTDOWN)",
        (fd.as_raw_fd(), flags),
        r.map(|_| ())
    )
}

/// A filesystem's persistent handle of one object (`name_to_handle_at`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHandle {
    /// `handle_type`.
    pub ty: i32,
    /// The opaque handle bytes.
    pub bytes: Box<[u8]>,
}

const MAX_HANDLE_SZ: usize = 128;

/// One `name_to_handle_at` call: the handle of `dir/path` (`path` empty
/// with AT_EMPTY_PATH: of `dir` itself), and the id of the mount the
/// object was found on (the `STATX_MNT_ID` kind, not the unique one).
fn handle_raw(
    dir: BorrowedFd<'_>,
    path: &std::ffi::CStr,
    flags: libc::c_int,
) -> std::result::Result<(ObjectHandle, u64), nix::errno::Errno> {
    // u32 words keep the struct's alignment.
    let mut buf = vec![0u32; 2 + MAX_HANDLE_SZ / 4];
    buf[0] = MAX_HANDLE_SZ as u32;
    let mut mount_id: libc::c_int = 0;
    // SAFETY: buf starts with a file_handle header whose handle_bytes says
    // how much room follows (MAX_HANDLE_SZ bytes, which the buffer has); the
    // path is NUL-terminated; mount_id is a valid out pointer.
    let r = unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            path.as_ptr(),
            buf.as_mut_ptr().cast::<libc::file_handle>(),
            &mut mount_id,
            flags,
        )
    };
    if r != 0 {
        return Err(nix::errno::Errno::last());
    }
    let len = (buf[0] as usize).min(MAX_HANDLE_SZ);
    let ty = buf[1] as i32;
    let bytes: Vec<u8> = buf[2..]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .take(len)
        .collect();
    Ok((
        ObjectHandle {
            ty,
            bytes: bytes.into_boxed_slice(),
        },
        // The kernel's mount ids are positive ints.
        u64::try_from(mount_id).unwrap_or(0),
    ))
}

/// The handle of the object behind any fd (AT_EMPTY_PATH).
pub fn name_to_handle(fd: BorrowedFd<'_>) -> Result<ObjectHandle> {
    name_to_handle_mnt(fd).map(|(h, _)| h)
}

/// The handle of the object behind any fd (AT_EMPTY_PATH), and the id of
/// the mount it is on.
pub fn name_to_handle_mnt(fd: BorrowedFd<'_>) -> Result<(ObjectHandle, u64)> {
    traced!(
        "name_to_handle_at",
        fd.as_raw_fd(),
        handle_raw(fd, c"", libc::AT_EMPTY_PATH)
    )
}

/// The file handle of `dir/name` (not following a final symlink), without
/// opening it, and the id of the mount the object is on (a mount point's
/// name leads to the root of the mount on it, as every path walk does).
pub fn name_to_handle_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(ObjectHandle, u64)> {
    let cname =
        std::ffi::CString::new(name.as_bytes()).map_err(|_| crate::error::Error::Invalid)?;
    traced!(
        "name_to_handle_at",
        (dir.as_raw_fd(), name),
        handle_raw(dir, &cname, 0)
    )
}

/// Opens the object with handle `h` on the filesystem of `mount` (needs
/// CAP_DAC_READ_SEARCH).
pub fn open_by_handle(mount: BorrowedFd<'_>, h: &ObjectHandle, flags: OFlag) -> Result<OwnedFd> {
    let mut buf = vec![0u32; 2 + h.bytes.len().div_ceil(4)];
    buf[0] = h.bytes.len() as u32;
    buf[1] = h.ty as u32;
    for (i, chunk) in h.bytes.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        buf[2 + i] = u32::from_ne_bytes(w);
    }
    // SAFETY: buf holds a complete file_handle (header + handle_bytes bytes);
    // mount is a valid fd. On success the kernel returns a new fd we own.
    let r = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            buf.as_mut_ptr().cast::<libc::file_handle>(),
            (flags | OFlag::O_CLOEXEC).bits(),
        )
    };
    let res = if r >= 0 {
        // SAFETY: r is a fresh fd owned by nobody else.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r) })
    } else {
        Err(nix::errno::Errno::last())
    };
    traced!("open_by_handle_at", (mount.as_raw_fd(), h.ty), res)
}

/// struct fsuuid2 of linux/fs.h.
#[repr(C)]
pub struct FsUuid2 {
    len: u8,
    uuid: [u8; 16],
}

nix::ioctl_read!(getfsuuid_ioctl, 0x15, 0, FsUuid2);

/// The filesystem type (`f_type` of fstatfs) of the object behind any fd.
#[allow(clippy::unnecessary_cast)] // f_type is not i64 on every target
pub fn fs_type(fd: BorrowedFd<'_>) -> Result<i64> {
    traced!(
        "fstatfs",
        fd.as_raw_fd(),
        nix::sys::statfs::fstatfs(fd).map(|s| s.filesystem_type().0 as i64)
    )
}

/// The filesystem's UUID as the kernel knows it (`s_uuid`, FS_IOC_GETFSUUID).
pub fn fs_uuid(fd: BorrowedFd<'_>) -> Result<[u8; 16]> {
    let dir = reopen(fd, OFlag::O_RDONLY)?;
    let mut u = FsUuid2 {
        len: 0,
        uuid: [0; 16],
    };
    // SAFETY: FS_IOC_GETFSUUID fills a struct fsuuid2 (len + 16 bytes), which
    // `u` is, and `dir` is a valid open fd.
    let r = unsafe { getfsuuid_ioctl(dir.as_raw_fd(), &mut u) };
    traced!("ioctl(FS_IOC_GETFSUUID)", fd.as_raw_fd(), r.map(|_| u.uuid))
}

/// An exclusive `flock` on a directory, released when dropped — or when
/// the holder's last thread exits, with its fds.
pub type DirLock = nix::fcntl::Flock<OwnedFd>;

/// Takes an exclusive `flock` on directory `dir` without waiting:
/// `Ok(None)` while another open file description holds one.
pub fn try_lock_dir(dir: BorrowedFd<'_>) -> Result<Option<DirLock>> {
    let fd = reopen(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
    match nix::fcntl::Flock::lock(fd, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(crate::error::Error::sys("flock", e)),
    }
}

/// The process holding a `flock` on directory `dir`, as /proc/locks names
/// it (`None` when it lists none, or cannot be read).
pub fn flock_holder(dir: BorrowedFd<'_>) -> Option<i32> {
    let st = fstat(dir).ok()?;
    // /proc/locks names a file as "MAJ:MIN:INO", the device in hex.
    let file = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(st.st_dev),
        nix::sys::stat::minor(st.st_dev),
        st.st_ino
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 08:02:131090 0 EOF"; a waiter's
        // line has "->" after the number.
        match f.as_slice() {
            [_, "FLOCK", _, _, pid, at, ..] if *at == file => pid.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    /// A directory's lock is exclusive across open files (so across
    /// processes), /proc/locks names its holder, and dropping it frees it.
    #[test]
    fn a_directory_lock_is_exclusive_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let fd = open_path_abs(dir.path()).unwrap();
        assert_eq!(flock_holder(fd.as_fd()), None);
        let held = try_lock_dir(fd.as_fd()).unwrap();
        assert!(held.is_some(), "the lock is not free");
        assert!(try_lock_dir(fd.as_fd()).unwrap().is_none(), "taken twice");
        assert_eq!(
            flock_holder(fd.as_fd()),
            i32::try_from(std::process::id()).ok()
        );
        drop(held);
        assert!(try_lock_dir(fd.as_fd()).unwrap().is_some(), "not freed");
    }

    /// Every name and type `std::fs::read_dir` sees, across several
    /// `getdents64` buffers (3,000 long names are ~130 KiB of records).
    #[test]
    fn read_dir_lists_what_std_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for i in 0..3000 {
            std::fs::write(d.join(format!("file-with-a-longish-name-{i:05}")), b"").unwrap();
        }
        std::fs::create_dir(d.join("sub")).unwrap();
        std::os::unix::fs::symlink("nowhere", d.join("link")).unwrap();
        nix::unistd::mkfifo(&d.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let fd = open_path_abs(d).unwrap();
        let got: BTreeMap<OsString, (u64, Option<Type>)> = read_dir(fd.as_fd())
            .unwrap()
            .into_iter()
            .map(|e| (e.name, (e.ino, e.kind)))
            .collect();
        let want: BTreeMap<OsString, u64> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::os::unix::fs::DirEntryExt::ino(&e))
            })
            .collect();
        assert_eq!(got.len(), 3003);
        assert_eq!(
            got.iter()
                .map(|(n, (i, _))| (n.clone(), *i))
                .collect::<BTreeMap<_, _>>(),
            want
        );
        let kind = |n: &str| got[OsStr::new(n)].1;
        assert_eq!(kind("sub"), Some(Type::Directory));
        assert_eq!(kind("link"), Some(Type::Symlink));
        assert_eq!(kind("fifo"), Some(Type::Fifo));
        assert_eq!(kind("file-with-a-longish-name-00000"), Some(Type::File));
    }

    /// A directory reopened for reading (as `.` inside itself) lists what
    /// it holds; a removed one (held by an O_PATH fd) still reopens, as
    /// through `/proc/self/fd`, and its listing is ENOENT (the kernel's
    /// answer for a dead directory, whichever way it was opened).
    #[test]
    fn a_directory_reopens_even_when_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("f"), b"").unwrap();
        let fd = open_path_abs(&d).unwrap();
        let names: Vec<_> = read_dir(fd.as_fd())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, [OsString::from("f")]);
        std::fs::remove_file(d.join("f")).unwrap();
        std::fs::remove_dir(&d).unwrap();
        assert!(read_dir(fd.as_fd()).is_err_and(|e| e.is_not_found()));
        let again = reopen(fd.as_fd(), OFlag::O_RDONLY | OFlag::O_DIRECTORY).unwrap();
        assert_eq!(fstat(again.as_fd()).unwrap().st_nlink, 0);
    }

    /// A record that does not fit, or a zero length, is refused (never a
    /// loop, never a read past the buffer).
    #[test]
    fn malformed_records_are_refused() {
        let mut rec = vec![0u8; 24];
        rec[D_RECLEN..D_RECLEN + 2].copy_from_slice(&24u16.to_ne_bytes());
        rec[D_NAME] = b'a';
        let mut out = Vec::new();
        assert!(parse_dents(&rec, &mut out).is_some());
        assert_eq!(out.len(), 1);
        for reclen in [0u16, 5, 19, 25] {
            rec[D_RECLEN..D_RECLEN + 2].copy_from_slice(&reclen.to_ne_bytes());
            assert!(parse_dents(&rec, &mut Vec::new()).is_none(), "{reclen}");
        }
        // no NUL in the name
        let mut rec = vec![b'x'; 24];
        rec[D_RECLEN..D_RECLEN + 2].copy_from_slice(&24u16.to_ne_bytes());
        assert!(parse_dents(&rec, &mut Vec::new()).is_none());
    }
}
