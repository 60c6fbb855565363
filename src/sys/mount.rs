//! Mount-time syscalls: detached clones of branch directories, the FUSE
//! mount itself, and unmount. Takes no locks.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::traced;
use crate::error::{Error, Result};

const OPEN_TREE_CLONE: libc::c_uint = 1;

/// A detached, non-recursive clone of the mount at `path`, rooted at `path`
/// (as a plain bind mount would be). Its fd is an O_PATH handle of the root.
///
/// The clone carries no submounts, so lookups in it see what lies under
/// mount points (as overlayfs does) and can never walk into another
/// filesystem — least of all into the union's own mount point. Needs
/// CAP_SYS_ADMIN.
pub fn clone_tree(path: &Path) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Invalid)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; the flags
    // are plain integers. On success the kernel returns a new fd we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    let res = if r < 0 {
        Err(Errno::last())
    } else {
        // SAFETY: r is a fresh fd returned by open_tree, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
    };
    traced!("open_tree", path, res)
}

/// Opens /dev/fuse and mounts a FUSE filesystem on `mnt` with it.
/// `data` is the option string after `fd=N,rootmode=...,user_id=...,group_id=...`.
pub fn fuse_mount(mnt: &Path, source: &str, data: &str, flags: MsFlags) -> Result<OwnedFd> {
    let dev = traced!(
        "open",
        "/dev/fuse",
        nix::fcntl::open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
    )?;
    let full = format!(
        "fd={},rootmode=40000,user_id={},group_id={}{}{}",
        std::os::fd::AsRawFd::as_raw_fd(&dev),
        nix::unistd::getuid(),
        nix::unistd::getgid(),
        if data.is_empty() { "" } else { "," },
        data
    );
    traced!(
        "mount",
        (mnt, &full),
        nix::mount::mount(
            Some(source),
            mnt,
            Some("fuse.unionfs"),
            flags,
            Some(full.as_str())
        )
    )?;
    Ok(dev)
}

/// Unmounts `mnt`; `lazy` detaches it even while busy.
pub fn umount(mnt: &Path, lazy: bool) -> Result<()> {
    let flags = if lazy {
        MntFlags::MNT_DETACH
    } else {
        MntFlags::empty()
    };
    traced!("umount2", mnt, nix::mount::umount2(mnt, flags))
}
