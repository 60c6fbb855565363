//! Syscalls of the control channel: the device of a mount without asking
//! its (possibly not yet serving) daemon, and the credentials of a peer.
//! Takes no locks.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::traced;
use crate::error::Result;

/// st_dev of whatever is mounted on `path`, read with
/// `AT_STATX_DONT_SYNC`, so a FUSE mount whose event loops have not
/// started yet answers from the superblock instead of waiting for GETATTR.
pub fn dev_nosync(path: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| crate::error::Error::Invalid)?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is NUL-terminated and outlives the call; `stx` points to
    // writable memory of the right size for the kernel to fill.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_DONT_SYNC,
            0,
            stx.as_mut_ptr(),
        )
    };
    let res = if r == 0 {
        // SAFETY: statx returned 0, so it filled the struct.
        let s = unsafe { stx.assume_init() };
        Ok(libc::makedev(s.stx_dev_major, s.stx_dev_minor))
    } else {
        Err(nix::errno::Errno::last())
    };
    traced!("statx", path, res)
}

/// The uid of the process at the other end of unix socket `fd`.
pub fn peer_uid(fd: BorrowedFd<'_>) -> Result<u32> {
    let res = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.uid());
    traced!("getsockopt", fd.as_raw_fd(), res)
}
