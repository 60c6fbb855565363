//! Syscalls of the control channel: the device of a mount without asking
//! its (possibly not yet serving) daemon, and the credentials of a peer.
//! Takes no locks.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use super::traced;
use crate::error::Result;

/// st_dev of whatever is mounted on `path`, read with
/// `AT_STATX_DONT_SYNC`, so a FUSE mount whose event loops have not
/// started yet answers from the superblock instead of waiting for GETATTR.
pub fn dev_nosync(path: &Path) -> Result<u64> {
    let s = super::fs::statx_path(path, libc::AT_STATX_DONT_SYNC, 0)?;
    Ok(libc::makedev(s.stx_dev_major, s.stx_dev_minor))
}

/// The uid of the process at the other end of unix socket `fd`.
pub fn peer_uid(fd: BorrowedFd<'_>) -> Result<u32> {
    let res = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.uid());
    traced!("getsockopt", fd.as_raw_fd(), res)
}
