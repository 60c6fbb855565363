//! Unnamed files (`O_TMPFILE`), made ahead for copy-ups
//! (`upper::StagePool`) and named when one is taken, and the directory
//! flag that places them (`set_topdir`). Takes no locks.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::traced;
use crate::error::Result;

/// An unnamed regular file in directory `dir`'s filesystem, open with
/// `flags` (O_WRONLY or O_RDWR), to be named later by `fs::link_fd`:
/// freed if it never is (its fd closed, the process killed).
pub fn tmpfile_at(dir: BorrowedFd<'_>, flags: OFlag, mode: u32) -> Result<OwnedFd> {
    traced!(
        "openat(O_TMPFILE)",
        (dir.as_raw_fd(), flags, mode),
        nix::fcntl::openat(
            dir,
            ".",
            flags | OFlag::O_TMPFILE | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode)
        )
    )
}

nix::ioctl_read!(fs_getflags, b'f', 1, libc::c_long);
nix::ioctl_write_ptr!(fs_setflags, b'f', 2, libc::c_long);

/// `FS_TOPDIR_FL`: the Orlov allocator spreads this directory's
/// subdirectories over the block groups (ext2/3/4; elsewhere ignored or
/// refused).
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Marks directory `dir` (any fd of it) as a top of a hierarchy, so its
/// subdirectories are placed away from it (`FS_TOPDIR_FL`).
pub fn set_topdir(dir: BorrowedFd<'_>) -> Result<()> {
    let d = super::fs::reopen(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
    // The ioctls are numbered for a long but move an int: the flags are
    // the buffer's first four bytes, whatever the byte order.
    let mut buf: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer, which
    // points at a long (larger) for the duration of the call.
    let r = unsafe { fs_getflags(d.as_raw_fd(), &mut buf) };
    traced!("ioctl(FS_IOC_GETFLAGS)", d.as_raw_fd(), r)?;
    let first = (&mut buf as *mut libc::c_long).cast::<libc::c_int>();
    // SAFETY: `first` points at the first four bytes of `buf`, which is
    // live and aligned for an int.
    let flags = unsafe { first.read() };
    if flags & FS_TOPDIR_FL != 0 {
        return Ok(());
    }
    // SAFETY: as above; the write stays inside `buf`.
    unsafe { first.write(flags | FS_TOPDIR_FL) };
    // SAFETY: FS_IOC_SETFLAGS reads one int through the pointer, which
    // points at a long (larger) for the duration of the call.
    let r = unsafe { fs_setflags(d.as_raw_fd(), &buf) };
    traced!("ioctl(FS_IOC_SETFLAGS)", (d.as_raw_fd(), flags), r).map(drop)
}
