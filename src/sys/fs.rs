//! File and directory syscalls on branch fds: open, stat, getdents, read,
//! readlink, lseek, statfs. All paths are single names relative to a
//! directory fd, or multi-component paths confined with `openat2`.
//! Takes no locks.

use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::{Dir, Type};
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
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
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
pub fn reopen(fd: BorrowedFd<'_>, flags: OFlag) -> Result<OwnedFd> {
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
pub fn read_dir(dir: BorrowedFd<'_>) -> Result<Vec<RawDirEntry>> {
    let fd = reopen(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
    let mut d = traced!("fdopendir", dir.as_raw_fd(), Dir::from_fd(fd))?;
    let mut out = Vec::new();
    for ent in d.iter() {
        let ent = traced!("getdents64", dir.as_raw_fd(), ent)?;
        let name: &CStr = ent.file_name();
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        out.push(RawDirEntry {
            name: OsStr::from_bytes(bytes).to_os_string(),
            ino: ent.ino(),
            kind: ent.file_type(),
        });
    }
    Ok(out)
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

/// (mount id, whether `path` is the root of its mount) via statx.
pub fn mount_id(path: &Path) -> Result<(u64, bool)> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| crate::error::Error::Invalid)?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is NUL-terminated and outlives the call; `stx` points to
    // writable memory of the right size for the kernel to fill.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    let res = if r == 0 {
        // SAFETY: statx returned 0, so it filled the struct.
        let s = unsafe { stx.assume_init() };
        let root = s.stx_attributes_mask & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0
            && s.stx_attributes & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0;
        Ok((s.stx_mnt_id, root))
    } else {
        Err(nix::errno::Errno::last())
    };
    traced!("statx", path, res)
}
