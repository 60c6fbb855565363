//! Extended attributes of objects behind O_PATH fds.
//!
//! An object named inside a directory fd (`*_at`) is reached with
//! `getxattrat`/`listxattrat` (Linux 6.13) relative to that fd, a third of
//! the cost of resolving `/proc/self/fd/D/name`; on older kernels (ENOSYS,
//! remembered) through that magic path. An object known only by its own
//! fd goes through `/proc/self/fd/N`, which reaches it for every file
//! type, symlinks included (`getxattrat` with `AT_EMPTY_PATH` refuses O_PATH
//! fds with EBADF, and every branch fd here is O_PATH); a directory fd is
//! better named as `.` inside itself. Takes no locks (one atomic flag).

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::errno::Errno;

use crate::error::{Error, Result};

pub(super) fn cstr(s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| Error::Invalid)
}

fn proc_path(fd: BorrowedFd<'_>) -> Result<CString> {
    cstr(OsStr::new(&format!("/proc/self/fd/{}", fd.as_raw_fd())))
}

/// A raw result of an xattr syscall: a length, or the errno.
pub(super) fn len_or_errno(r: isize) -> std::result::Result<usize, Errno> {
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
pub(super) fn sized(
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
        "getxattr({}, {:?}) = {:?}",
        fd.as_raw_fd(),
        name,
        res.as_ref().map(|v| v.len())
    );
    value(res, "getxattr")
}

/// Every xattr name of the object (empty when xattrs are unsupported).
pub fn list(fd: BorrowedFd<'_>) -> Result<Vec<OsString>> {
    let res = sized(|buf| list_raw(fd, buf));
    tracing::trace!(
        "listxattr({}) = {:?}",
        fd.as_raw_fd(),
        res.as_ref().map(|v| v.len())
    );
    names(res, "listxattr")
}

/// The names in a raw listxattr result (none when xattrs are unsupported).
pub(super) fn names(
    res: std::result::Result<Vec<u8>, Errno>,
    op: &'static str,
) -> Result<Vec<OsString>> {
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
pub(super) fn value(
    res: std::result::Result<Vec<u8>, Errno>,
    op: &'static str,
) -> Result<Option<Vec<u8>>> {
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
    set_result(r, "setxattr", fd, name, value.len())
}

/// A raw set*xattr return as a result, traced.
pub(super) fn set_result(
    r: libc::c_int,
    op: &'static str,
    fd: BorrowedFd<'_>,
    name: &OsStr,
    len: usize,
) -> Result<()> {
    let res = if r == 0 { Ok(()) } else { Err(Errno::last()) };
    tracing::trace!("{op}({}, {:?}, {len}) = {:?}", fd.as_raw_fd(), name, res);
    res.map_err(|e| Error::sys(op, e))
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
fn entry_path(dir: BorrowedFd<'_>, entry: &CStr) -> std::result::Result<CString, Errno> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(entry.to_bytes());
    CString::new(p).map_err(|_| Errno::EINVAL)
}

/// `getxattrat` and `listxattrat` (Linux 6.13).
static GETXATTRAT: super::NewCall = super::NewCall::new(464);
static LISTXATTRAT: super::NewCall = super::NewCall::new(465);

/// `struct xattr_args` of `getxattrat`.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Runs the `*xattrat` form `at` (given its number) while `call` is
/// usable, else `fallback` on the `/proc` path of `dir/entry`.
fn at_or_proc(
    call: &super::NewCall,
    dir: BorrowedFd<'_>,
    entry: &CStr,
    at: impl FnOnce(libc::c_long) -> isize,
    fallback: impl FnOnce(&CStr) -> isize,
) -> std::result::Result<usize, Errno> {
    call.run(
        &[],
        |nr| len_or_errno(at(nr)),
        || len_or_errno(fallback(&entry_path(dir, entry)?)),
    )
}

/// One raw `getxattrat(dir, entry, AT_SYMLINK_NOFOLLOW)`.
fn get_at_raw(
    dir: BorrowedFd<'_>,
    entry: &CStr,
    name: &CStr,
    buf: &mut [u8],
) -> std::result::Result<usize, Errno> {
    let (ptr, len) = (buf.as_mut_ptr(), buf.len());
    let args = XattrArgs {
        value: ptr as u64,
        size: u32::try_from(len).unwrap_or(u32::MAX),
        flags: 0,
    };
    at_or_proc(
        &GETXATTRAT,
        dir,
        entry,
        // SAFETY: entry and name are NUL-terminated; args is a valid
        // xattr_args whose value buffer holds `size` bytes.
        |get| unsafe {
            libc::syscall(
                get,
                dir.as_raw_fd(),
                entry.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                name.as_ptr(),
                &args as *const XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            ) as isize
        },
        // SAFETY: path and name are NUL-terminated; buf is valid for len bytes.
        |path| unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), ptr.cast(), len) },
    )
}

/// One raw `listxattrat(dir, entry, AT_SYMLINK_NOFOLLOW)`.
fn list_at_raw(
    dir: BorrowedFd<'_>,
    entry: &CStr,
    buf: &mut [u8],
) -> std::result::Result<usize, Errno> {
    let (ptr, len) = (buf.as_mut_ptr(), buf.len());
    at_or_proc(
        &LISTXATTRAT,
        dir,
        entry,
        // SAFETY: entry is NUL-terminated; buf is valid for len bytes.
        |list| unsafe {
            libc::syscall(
                list,
                dir.as_raw_fd(),
                entry.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                ptr,
                len,
            ) as isize
        },
        // SAFETY: path is NUL-terminated; buf is valid for len bytes.
        |path| unsafe { libc::llistxattr(path.as_ptr(), ptr.cast(), len) },
    )
}

/// Names of the xattrs of `dir/entry` (not following a final symlink),
/// without opening the entry.
pub fn list_at(dir: BorrowedFd<'_>, entry: &OsStr) -> Result<Vec<OsString>> {
    let centry = cstr(entry)?;
    let res = sized(|buf| list_at_raw(dir, &centry, buf));
    tracing::trace!(
        "listxattrat({}/{:?}) = {:?}",
        dir.as_raw_fd(),
        entry,
        res.as_ref().map(|v| v.len())
    );
    names(res, "listxattrat")
}

/// The value of xattr `name` of `dir/entry` (not following a final
/// symlink), without opening the entry; `None` when it has none.
pub fn get_at(dir: BorrowedFd<'_>, entry: &OsStr, name: &OsStr) -> Result<Option<Vec<u8>>> {
    let centry = cstr(entry)?;
    let cname = cstr(name)?;
    let res = sized(|buf| get_at_raw(dir, &centry, &cname, buf));
    tracing::trace!(
        "getxattrat({}/{:?}, {:?}) = {:?}",
        dir.as_raw_fd(),
        entry,
        name,
        res.as_ref().map(|v| v.len())
    );
    value(res, "getxattrat")
}

/// An 8-byte little-endian xattr of `dir/entry` (not following a final
/// symlink), in one syscall and without opening the entry.
pub fn get_u64_at(dir: BorrowedFd<'_>, entry: &OsStr, name: &OsStr) -> Result<Option<u64>> {
    let centry = cstr(entry)?;
    let cname = cstr(name)?;
    let mut buf = [0u8; 8];
    let r = get_at_raw(dir, &centry, &cname, &mut buf);
    tracing::trace!(
        "getxattrat({}/{:?}, {:?}) = {:?}",
        dir.as_raw_fd(),
        entry,
        name,
        r
    );
    u64_value(r, &buf)
}

#[cfg(test)]
#[allow(clippy::expect_used)] // a test fails by panicking
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// The tests that flip the `*xattrat` calls on and off take turns.
    static FLAG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn open_path(p: &std::path::Path) -> std::os::fd::OwnedFd {
        nix::fcntl::open(
            p,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW,
            nix::sys::stat::Mode::empty(),
        )
        .expect("open O_PATH")
    }

    /// What the `*_at` readers say about `dir/entry`.
    fn read_all(dir: BorrowedFd<'_>, entry: &str) -> (Vec<OsString>, Option<Vec<u8>>, Option<u64>) {
        let e = OsStr::new(entry);
        let mut names = list_at(dir, e).expect("list_at");
        names.sort();
        (
            names,
            get_at(dir, e, OsStr::new("user.big")).expect("get_at"),
            get_u64_at(dir, e, OsStr::new("user.ino")).expect("get_u64_at"),
        )
    }

    /// The `*xattrat` syscalls and the `/proc` fallback (taken on kernels
    /// before 6.13) read the same thing: names, a value larger than the
    /// first buffer, an 8-byte number, and a directory named as `.`. (On a
    /// kernel without the syscalls both rounds take the `/proc` path.)
    #[test]
    fn xattrat_and_proc_fallback_agree() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        let big = vec![7u8; 3000];
        if ::xattr::set(&file, "user.big", &big).is_err() {
            eprintln!("skipped: no user xattrs on {}", tmp.path().display());
            return;
        }
        ::xattr::set(&file, "user.ino", &42u64.to_le_bytes()).expect("set");
        ::xattr::set(tmp.path(), "user.big", b"dir").expect("set dir");
        let dir = open_path(tmp.path());
        let _turn = FLAG.lock();
        let want_file = (
            vec![OsString::from("user.big"), OsString::from("user.ino")],
            Some(big),
            Some(42),
        );
        let want_dir = (
            vec![OsString::from("user.big")],
            Some(b"dir".to_vec()),
            None,
        );
        let had = (GETXATTRAT.usable(), LISTXATTRAT.usable());
        for at in [had.0 && had.1, false] {
            GETXATTRAT.set_usable(at);
            LISTXATTRAT.set_usable(at);
            assert_eq!(read_all(dir.as_fd(), "f"), want_file, "xattrat={at}");
            assert_eq!(read_all(dir.as_fd(), "."), want_dir, "xattrat={at}");
            let missing = list_at(dir.as_fd(), OsStr::new("missing"));
            assert!(missing.is_err_and(|e| e.is_not_found()), "xattrat={at}");
        }
        GETXATTRAT.set_usable(had.0);
        LISTXATTRAT.set_usable(had.1);
    }

    /// A seccomp filter that does not know `listxattrat` answers EPERM:
    /// the `/proc` path answers instead, and the call is not tried again;
    /// a real EPERM (the `/proc` path says it too) is passed on.
    #[test]
    fn an_xattrat_refused_by_a_filter_falls_back_for_good() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("f"), b"x").expect("write");
        let dir = open_path(tmp.path());
        let refused = |_| {
            Errno::set_raw(libc::EPERM);
            -1
        };
        let call = super::super::NewCall::new(465);
        let at_first = call.usable();
        let also_eperm = at_or_proc(&call, dir.as_fd(), c"f", refused, |_| {
            Errno::set_raw(libc::EPERM);
            -1
        });
        assert_eq!(also_eperm, Err(Errno::EPERM));
        assert_eq!(call.usable(), at_first);
        let mut buf = [0u8; 64];
        let r = at_or_proc(&call, dir.as_fd(), c"f", refused, |path| {
            // SAFETY: path is NUL-terminated; buf is valid for its length.
            unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
        });
        assert!(r.is_ok(), "{r:?}");
        assert!(!call.usable());
    }
}
