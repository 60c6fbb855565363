//! Extended attributes of the merged view: the topmost instance's, with
//! every union-private attribute hidden; setting or removing one copies the
//! object up first.
//!
//! Invariant: no private (`*.overlay.*`, `*.unionfs.*`, fuse-overlayfs)
//! attribute is ever shown, set or removed through the mount.
//! Locks: node state (read); copy-up's striped lock.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use super::UnionFs;
use crate::copy_up::CopyUpData;
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
        sys::xattr::get(state.top()?.fd()?.as_fd(), name)?.ok_or(Error::NoXattr)
    }

    /// The NUL-separated xattr names of `ino`, private ones left out.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        let node = self.inodes.get(ino)?;
        let state = node.snapshot();
        let mut out = Vec::new();
        for n in sys::xattr::list(state.top()?.fd()?.as_fd())? {
            if !whiteout::is_private_xattr(&n) {
                out.extend_from_slice(n.as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }
}

impl UnionFs {
    /// setxattr(2): copies a lower object up, then sets the attribute on
    /// the upper instance. The union's own attributes cannot be set.
    pub fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        if whiteout::is_private_xattr(name) {
            return Err(Error::NotSupported);
        }
        let state = self.copy_up(ino, CopyUpData::Meta)?;
        sys::xattr::set(state.top()?.fd()?.as_fd(), name, value, flags)
    }

    /// removexattr(2).
    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> Result<()> {
        if whiteout::is_private_xattr(name) {
            return Err(Error::NoXattr);
        }
        // Nothing to remove: fail without copying up.
        self.getxattr(ino, name)?;
        let state = self.copy_up(ino, CopyUpData::Meta)?;
        sys::xattr::remove(state.top()?.fd()?.as_fd(), name)
    }
}
