//! Extended attributes of objects held by an *open* fd (not O_PATH):
//! `fgetxattr`/`flistxattr`/`fsetxattr` on the fd itself, with no
//! `/proc/self/fd/N` path to resolve (`xattr.rs` must take that way for
//! the O_PATH fds the branches hold). Copy-up has both ends of a regular
//! file's copy open anyway (its data is read and written through them), so
//! its xattr work goes this way. Takes no locks.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd};

use super::xattr::{cstr, len_or_errno, names, set_result, sized, value};
use crate::error::Result;

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
    names(res, "flistxattr")
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
    value(res, "fgetxattr")
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
    set_result(r, "fsetxattr", fd, name, value.len())
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
