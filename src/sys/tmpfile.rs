//! Unnamed files (`O_TMPFILE`), made ahead for copy-ups
//! (`upper::StagePool`) and named when one is taken. Takes no locks.

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
