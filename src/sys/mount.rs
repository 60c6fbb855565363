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

/// Mounts a FUSE filesystem on `mnt` without privilege, through the
/// setuid `fusermount3` helper (as libfuse does): it opens /dev/fuse,
/// mounts, and passes the fd back over a socket.
pub fn fusermount(mnt: &Path, opts: &str) -> Result<OwnedFd> {
    use nix::sys::socket::{
        recvmsg, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    };
    use std::os::fd::AsRawFd;
    let (ours, theirs) = traced!(
        "socketpair",
        (),
        socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::empty()
        )
    )?;
    let _ = nix::fcntl::fcntl(
        &ours,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let child = std::process::Command::new("fusermount3")
        .arg("-o")
        .arg(opts)
        .arg("--")
        .arg(mnt)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::sys(
                "fusermount3",
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)),
            )
        })?;
    drop(theirs);
    let mut buf = [0u8; 8];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let received = recvmsg::<()>(
        ours.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .ok()
    .and_then(|msg| {
        msg.cmsgs().ok()?.find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
    });
    let out = child.wait_with_output().map_err(|e| {
        Error::sys(
            "fusermount3",
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    })?;
    match received {
        // SAFETY: the fd arrived by SCM_RIGHTS and belongs to us alone.
        Some(fd) if out.status.success() => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        _ => {
            tracing::error!(
                "fusermount3: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Err(Error::sys("fusermount3", Errno::EPERM))
        }
    }
}
