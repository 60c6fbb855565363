//! Extended attributes of objects held by an *open* fd (not O_PATH):
//! `fgetxattr`/`flistxattr`/`fsetxattr` on the fd itself, with no
//! `/proc/self/fd/N` path to resolve (`xattr.rs` must take that way for
//! the O_PATH fds the branches hold). Copy-up has both ends of a regular
//! file's copy open anyway (its data is read and written through them), so
//! its xattr work goes this way. Takes no locks.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::errno::Errno;

use crate::error::{Error, Result};

fn cstr(s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| Error::Invalid)
}

fn len_or_errno(r: isize) -> std::result::Result<usize, Errno> {
    usize::try_from(r).map_err(|_| Errno::last())
}

/// Calls `f` with a buffer until the result fits (a small stack buffer
/// first: most objects have few or no xattrs).
fn sized(
    mut f: impl FnMut(&mut [u8]) -> std::result::Result<usize, Errno>,
) -> std::result::Result<Vec<u8>, Errno> {
    let mut first = [0u8; 512];
    match f(&mut first) {
        Ok(n) => return Ok(first[..n].to_vec()),
        Err(Errno::ERANGE) => {}
        Err(e) => return Err(e),
    }
    loop {
        let len = f(&mut [])?;
        let mut buf = vec![0u8; len.max(1)];
        match f(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            // It grew between the two calls: ask again.
            Err(Errno::ERANGE) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Every xattr name of the open file `fd` (none where unsupported).
pub fn list(fd: BorrowedFd<'_>) -> Result<Vec<OsString>> {
    let res = sized(|buf| {
        // SAFETY: buf is valid for buf.len() bytes; the fd is borrowed for
        // the call.
        len_or_errno(unsafe {
            libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
        })
    });
    tracing::trace!(
        "flistxattr({}) = {:?}",
        fd.as_raw_fd(),
        res.as_ref().map(|v| v.len())
    );
    match res {
        Ok(raw) => Ok(raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| OsString::from_vec(s.to_vec()))
            .collect()),
        Err(Errno::EOPNOTSUPP) => Ok(Vec::new()),
        Err(e) => Err(Error::sys("flistxattr", e)),
    }
}

/// The value of xattr `name` of the open file `fd`, or `None` without it.
pub fn get(fd: BorrowedFd<'_>, name: &OsStr) -> Result<Option<Vec<u8>>> {
    let cname = cstr(name)?;
    let res = sized(|buf| {
        // SAFETY: name is NUL-terminated; buf is valid for buf.len() bytes.
        len_or_errno(unsafe {
            libc::fgetxattr(
                fd.as_raw_fd(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })
    });
    tracing::trace!(
        "fgetxattr({}, {:?}) = {:?}",
        fd.as_raw_fd(),
        name,
        res.as_ref().map(|v| v.len())
    );
    match res {
        Ok(v) => Ok(Some(v)),
        Err(Errno::ENODATA | Errno::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(Error::sys("fgetxattr", e)),
    }
}

/// Sets xattr `name` of the open file `fd` (setxattr `flags`).
pub fn set(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
    let cname = cstr(name)?;
    // SAFETY: name is NUL-terminated; value is valid for its length.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    let res = if r == 0 { Ok(()) } else { Err(Errno::last()) };
    tracing::trace!(
        "fsetxattr({}, {:?}, {}) = {:?}",
        fd.as_raw_fd(),
        name,
        value.len(),
        res
    );
    res.map_err(|e| Error::sys("fsetxattr", e))
}

#[cfg(test)]
#[allow(clippy::expect_used)] // a test fails by panicking
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn set_get_list_on_an_open_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = std::fs::File::create(dir.path().join("f")).expect("create");
        let name = OsStr::new("user.fdxattr.test");
        set(f.as_fd(), name, b"v", 0).expect("fsetxattr");
        assert_eq!(get(f.as_fd(), name).expect("get"), Some(b"v".to_vec()));
        assert_eq!(get(f.as_fd(), OsStr::new("user.none")).expect("get"), None);
        assert!(list(f.as_fd())
            .expect("list")
            .iter()
            .any(|n| n.as_os_str() == name));
    }
}
