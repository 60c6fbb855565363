//! Extended attributes of the merged view: the topmost instance's, with
//! every union-private attribute hidden; setting or removing one copies the
//! object up first.
//!
//! Invariant: no private (`*.overlay.*`, `*.unionfs.*`, fuse-overlayfs)
//! attribute is ever shown, set or removed through the mount. An object
//! known to have no visible xattrs (see `Backing::has_no_xattrs`) is
//! answered without a syscall; setting or removing one forgets that.
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
        let top = state.top()?;
        if top.backing.has_no_xattrs() {
            return Err(Error::NoXattr);
        }
        if !top.backing.xattrs_listed() {
            // The first question about this object: list its xattrs (as
            // cheap as asking for one), so that the next questions about
            // absent ones (the kernel asks before every write) are free.
            let names = self.visible_xattrs(top)?;
            if !names.split(|b| *b == 0).any(|n| n == name.as_bytes()) {
                return Err(Error::NoXattr);
            }
        }
        sys::xattr::get(top.fd()?.as_fd(), name)?.ok_or(Error::NoXattr)
    }

    /// The NUL-separated xattr names of `ino`, private ones left out.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        let node = self.inodes.get(ino)?;
        let state = node.snapshot();
        let top = state.top()?;
        if top.backing.has_no_xattrs() {
            return Ok(Vec::new());
        }
        self.visible_xattrs(top)
    }

    /// The visible xattr names of `layer`'s object, NUL-separated; records
    /// whether there are any.
    fn visible_xattrs(&self, layer: &crate::inode::Layer) -> Result<Vec<u8>> {
        let era = layer.backing.xattr_era();
        let mut out = Vec::new();
        for n in sys::xattr::list(layer.fd()?.as_fd())? {
            if !whiteout::is_private_xattr(&n) {
                out.extend_from_slice(n.as_bytes());
                out.push(0);
            }
        }
        layer.backing.note_xattrs(era, !out.is_empty());
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
        let top = state.top()?;
        let res = sys::xattr::set(top.fd()?.as_fd(), name, value, flags);
        top.backing.forget_xattrs();
        res
    }

    /// removexattr(2).
    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> Result<()> {
        if whiteout::is_private_xattr(name) {
            return Err(Error::NoXattr);
        }
        // Nothing to remove: fail without copying up.
        self.getxattr(ino, name)?;
        let state = self.copy_up(ino, CopyUpData::Meta)?;
        let top = state.top()?;
        let res = sys::xattr::remove(top.fd()?.as_fd(), name);
        top.backing.forget_xattrs();
        res
    }
}
