//! Extended attributes of the merged view: the topmost instance's, with
//! every union-private attribute hidden.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use super::UnionFs;
use crate::error::{Error, Result};
use crate::inode::Ino;
use crate::sys;
use crate::whiteout;

impl UnionFs {
    /// The value of xattr `name` of `ino`.
    pub fn getxattr(&self, ino: Ino, name: &OsStr) -> Result<Vec<u8>> {
        if whiteout::is_private_xattr(name) {
            return Err(Error::NoXattr);
        }
        let node = self.inodes.get(ino)?;
        let state = node.snapshot();
        sys::xattr::get(state.top()?.fd.as_fd(), name)?.ok_or(Error::NoXattr)
    }

    /// The NUL-separated xattr names of `ino`, private ones left out.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        let node = self.inodes.get(ino)?;
        let state = node.snapshot();
        let mut out = Vec::new();
        for n in sys::xattr::list(state.top()?.fd.as_fd())? {
            if !whiteout::is_private_xattr(&n) {
                out.extend_from_slice(n.as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }
}
