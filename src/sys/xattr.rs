//! Extended attributes of objects behind O_PATH fds.
//!
//! Goes through the `/proc/self/fd/N` magic link, which reaches the object
//! itself for every file type, symlinks included. (`getxattrat` with
//! `AT_EMPTY_PATH` refuses O_PATH fds with EBADF, and every branch fd here
//! is O_PATH.) Takes no locks.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::errno::Errno;

use crate::error::{Error, Result};

fn cstr(s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| Error::Invalid)
}

fn proc_path(fd: BorrowedFd<'_>) -> Result<CString> {
    cstr(OsStr::new(&format!("/proc/self/fd/{}", fd.as_raw_fd())))
}

/// A raw result of an xattr syscall: a length, or the errno.
fn len_or_errno(r: isize) -> std::result::Result<usize, Errno> {
    usize::try_from(r).map_err(|_| Errno::last())
}

/// One raw call: fills `buf` (or asks the size when `buf` is empty).
fn get_raw(
    fd: BorrowedFd<'_>,
    name: &CString,
    buf: &mut [u8],
) -> std::result::Result<usize, Errno> {
    let path = proc_path(fd).map_err(|_| Errno::EINVAL)?;
    // SAFETY: path and name are NUL-terminated; buf is valid for buf.len() bytes.
    len_or_errno(unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

fn list_raw(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::result::Result<usize, Errno> {
    let path = proc_path(fd).map_err(|_| Errno::EINVAL)?;
    // SAFETY: path is NUL-terminated; buf is valid for buf.len() bytes.
    len_or_errno(unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// Calls `f` with a buffer until the value fits: first a small one on the
/// stack (one syscall for most objects, which have few or no xattrs),
/// then one of the size the kernel reports.
fn sized(
    mut f: impl FnMut(&mut [u8]) -> std::result::Result<usize, Errno>,
) -> std::result::Result<Vec<u8>, Errno> {
    let mut first = [0u8; 512];
    match f(&mut first) {
        Ok(n) => return Ok(first[..n].to_vec()),
        Err(Errno::ERANGE) => {}
        Err(e) => return Err(e),
    }
    let mut len = f(&mut [])?;
    loop {
        let mut buf = vec![0u8; len.max(1)];
        match f(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            // The value grew between the two calls: ask again.
            Err(Errno::ERANGE) => len = f(&mut [])?,
            Err(e) => return Err(e),
        }
    }
}

/// The value of xattr `name`, or `None` when the object does not have it
/// (or the filesystem does not support xattrs).
pub fn get(fd: BorrowedFd<'_>, name: &OsStr) -> Result<Option<Vec<u8>>> {
    let cname = cstr(name)?;
    let res = sized(|buf| get_raw(fd, &cname, buf));
    tracing::trace!(
        "getxattrat({}, {:?}) = {:?}",
        fd.as_raw_fd(),
        name,
        res.as_ref().map(|v| v.len())
    );
    value(res, "getxattrat")
}

/// Every xattr name of the object (empty when xattrs are unsupported).
pub fn list(fd: BorrowedFd<'_>) -> Result<Vec<OsString>> {
    let res = sized(|buf| list_raw(fd, buf));
    tracing::trace!(
        "listxattrat({}) = {:?}",
        fd.as_raw_fd(),
        res.as_ref().map(|v| v.len())
    );
    names(res, "listxattrat")
}

/// The names in a raw listxattr result (none when xattrs are unsupported).
fn names(res: std::result::Result<Vec<u8>, Errno>, op: &'static str) -> Result<Vec<OsString>> {
    match res {
        Ok(raw) => Ok(raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| OsString::from_vec(s.to_vec()))
            .collect()),
        Err(Errno::EOPNOTSUPP) => Ok(Vec::new()),
        Err(e) => Err(Error::sys(op, e)),
    }
}

/// A raw getxattr result as "the value, or none".
fn value(res: std::result::Result<Vec<u8>, Errno>, op: &'static str) -> Result<Option<Vec<u8>>> {
    match res {
        Ok(v) => Ok(Some(v)),
        Err(Errno::ENODATA | Errno::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(Error::sys(op, e)),
    }
}

/// How `set` treats an existing attribute (setxattr flags).
pub fn set(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
    let cname = cstr(name)?;
    let path = proc_path(fd)?;
    // SAFETY: path and name are NUL-terminated; value is valid for its length.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    let res = if r == 0 { Ok(()) } else { Err(Errno::last()) };
    tracing::trace!(
        "setxattr({}, {:?}, {}) = {:?}",
        fd.as_raw_fd(),
        name,
        value.len(),
        res
    );
    res.map_err(|e| Error::sys("setxattr", e))
}

/// Removes xattr `name`.
pub fn remove(fd: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let cname = cstr(name)?;
    let path = proc_path(fd)?;
    // SAFETY: path and name are NUL-terminated.
    let r = unsafe { libc::removexattr(path.as_ptr(), cname.as_ptr()) };
    let res = if r == 0 { Ok(()) } else { Err(Errno::last()) };
    tracing::trace!("removexattr({}, {:?}) = {:?}", fd.as_raw_fd(), name, res);
    res.map_err(|e| Error::sys("removexattr", e))
}

fn u64_value(r: std::result::Result<usize, Errno>, buf: &[u8; 8]) -> Result<Option<u64>> {
    match r {
        Ok(8) => Ok(Some(u64::from_le_bytes(*buf))),
        Ok(_) | Err(Errno::ERANGE) => Ok(None),
        Err(Errno::ENODATA | Errno::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(Error::sys("getxattr", e)),
    }
}

/// An 8-byte little-endian xattr of the object behind `fd`, in one syscall.
pub fn get_u64(fd: BorrowedFd<'_>, name: &OsStr) -> Result<Option<u64>> {
    let cname = cstr(name)?;
    let mut buf = [0u8; 8];
    let r = get_raw(fd, &cname, &mut buf);
    tracing::trace!("getxattr({}, {:?}) = {:?}", fd.as_raw_fd(), name, r);
    u64_value(r, &buf)
}

/// The `/proc/self/fd/D/entry` path of `dir/entry`.
fn entry_path(dir: BorrowedFd<'_>, entry: &OsStr) -> Result<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(entry.as_bytes());
    CString::new(p).map_err(|_| Error::Invalid)
}

/// Names of the xattrs of `dir/entry` (not following a final symlink),
/// without opening the entry.
pub fn list_at(dir: BorrowedFd<'_>, entry: &OsStr) -> Result<Vec<OsString>> {
    let path = entry_path(dir, entry)?;
    let res = sized(|buf| {
        // SAFETY: path is NUL-terminated; buf is valid for buf.len() bytes.
        len_or_errno(unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
    });
    tracing::trace!(
        "llistxattr({}/{:?}) = {:?}",
        dir.as_raw_fd(),
        entry,
        res.as_ref().map(|v| v.len())
    );
    names(res, "llistxattr")
}

/// The value of xattr `name` of `dir/entry` (not following a final
/// symlink), without opening the entry; `None` when it has none.
pub fn get_at(dir: BorrowedFd<'_>, entry: &OsStr, name: &OsStr) -> Result<Option<Vec<u8>>> {
    let path = entry_path(dir, entry)?;
    let cname = cstr(name)?;
    let res = sized(|buf| {
        // SAFETY: path and name are NUL-terminated; buf is valid for buf.len() bytes.
        len_or_errno(unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })
    });
    tracing::trace!(
        "lgetxattr({}/{:?}, {:?}) = {:?}",
        dir.as_raw_fd(),
        entry,
        name,
        res.as_ref().map(|v| v.len())
    );
    value(res, "lgetxattr")
}

/// An 8-byte little-endian xattr of `dir/entry` (not following a final
/// symlink), in one syscall and without opening the entry.
pub fn get_u64_at(dir: BorrowedFd<'_>, entry: &OsStr, name: &OsStr) -> Result<Option<u64>> {
    let path = entry_path(dir, entry)?;
    let cname = cstr(name)?;
    let mut buf = [0u8; 8];
    // SAFETY: path and name are NUL-terminated; buf is valid for 8 bytes.
    let r = unsafe { libc::lgetxattr(path.as_ptr(), cname.as_ptr(), buf.as_mut_ptr().cast(), 8) };
    let r = if r >= 0 {
        Ok(r as usize)
    } else {
        Err(Errno::last())
    };
    tracing::trace!(
        "lgetxattr({}/{:?}, {:?}) = {:?}",
        dir.as_raw_fd(),
        entry,
        name,
        r
    );
    u64_value(r, &buf)
}
