//! Extended attributes of the merged view: the topmost instance's, with
//! every union-private attribute hidden; setting or removing one copies the
//! object up first.
//!
//! Invariant: no private (`*.overlay.*`, `*.unionfs.*`, fuse-overlayfs)
//! attribute is ever shown, set or removed through the mount. An object
//! known to have no visible xattrs (see `Backing::has_no_xattrs`; only on
//! filesystems whose listings are complete) is answered without a syscall;
//! it is learnt by a listing, by the first question for a missing xattr,
//! by a copy-up's staging, and for a file the union creates from its open
//! fd (`learn_xattrs`). Setting or removing any xattr through the union
//! forgets all of that.
//! Locks: node state (read); copy-up's striped lock.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use super::UnionFs;
use crate::copy_up::CopyUpData;
use crate::error::{Error, Result};
use crate::inode::Ino;
use crate::stack::BranchStack;
use crate::sys;
use crate::whiteout;

impl UnionFs {
    /// The value of xattr `name` of `ino`.
    pub fn getxattr(&self, ino: Ino, name: &OsStr) -> Result<Vec<u8>> {
        let snapshot = self.stack.load_full();
        self.getxattr_in(&snapshot, ino, name)
    }

    /// `getxattr` on the operation's stack snapshot.
    fn getxattr_in(&self, stack: &BranchStack, ino: Ino, name: &OsStr) -> Result<Vec<u8>> {
        if whiteout::is_private_xattr(name) {
            return Err(Error::NoXattr);
        }
        let node = self.inodes.get(ino)?;
        let state = node.snapshot();
        let top = state.top()?;
        let knowable = self.lists_all_xattrs(stack, top);
        if knowable && top.backing.has_no_xattrs() {
            return Err(Error::NoXattr);
        }
        let generation = top.backing.xattr_generation();
        let fd = top.fd()?;
        match sys::xattr::get(fd.as_fd(), name)? {
            Some(v) => Ok(v),
            None => {
                // Not this one: learn (once) whether there are any at all,
                // so that the next question (the kernel asks before every
                // write) is free when there are none.
                if knowable && !top.backing.xattrs_listed() {
                    if let Ok(l) = self.visible_xattrs(fd.as_fd()) {
                        top.backing.note_xattrs(generation, !l.is_empty());
                    }
                }
                Err(Error::NoXattr)
            }
        }
    }

    /// The NUL-separated xattr names of `ino`, private ones left out.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        let snapshot = self.stack.load_full();
        let stack = &*snapshot;
        let node = self.inodes.get(ino)?;
        let state = node.snapshot();
        let top = state.top()?;
        let knowable = self.lists_all_xattrs(stack, top);
        if knowable && top.backing.has_no_xattrs() {
            return Ok(Vec::new());
        }
        let generation = top.backing.xattr_generation();
        let out = self.visible_xattrs(top.fd()?.as_fd())?;
        if knowable {
            top.backing.note_xattrs(generation, !out.is_empty());
        }
        Ok(out)
    }

    /// Records whether the object of `layer` (open as `fd`, not O_PATH)
    /// has visible xattrs, where a listing tells, so the kernel's
    /// questions before writes are answered without a syscall.
    pub(super) fn learn_xattrs(
        &self,
        stack: &BranchStack,
        layer: &crate::inode::Layer,
        fd: std::os::fd::BorrowedFd<'_>,
    ) {
        if !self.lists_all_xattrs(stack, layer) {
            return;
        }
        let generation = layer.backing.xattr_generation();
        match sys::fdxattr::list(fd) {
            Ok(names) => layer.backing.note_xattrs(
                generation,
                names.iter().any(|n| !whiteout::is_private_xattr(n)),
            ),
            Err(e) => tracing::debug!("cannot list the xattrs of a new file: {e}"),
        }
    }

    /// Whether an empty listing of `layer`'s object means it has no xattr.
    fn lists_all_xattrs(&self, stack: &BranchStack, layer: &crate::inode::Layer) -> bool {
        stack.get(layer.branch).is_some_and(|b| b.lists_all_xattrs)
    }

    /// The visible xattr names of the object behind `fd`, NUL-separated.
    fn visible_xattrs(&self, fd: std::os::fd::BorrowedFd<'_>) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for n in sys::xattr::list(fd)? {
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
        let snapshot = self.for_node(self.stack.load_full(), ino)?;
        let stack = &*snapshot;
        if whiteout::is_private_xattr(name) {
            return Err(Error::NotSupported);
        }
        let state = self.copy_up(stack, ino, CopyUpData::Meta)?;
        let res = sys::xattr::set(state.top()?.fd()?.as_fd(), name, value, flags);
        self.backings.forget_xattrs();
        // Its ctime (and, for an ACL, its mode) changed.
        self.changed_through(ino);
        res
    }

    /// removexattr(2).
    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> Result<()> {
        let snapshot = self.for_node(self.stack.load_full(), ino)?;
        let stack = &*snapshot;
        if whiteout::is_private_xattr(name) {
            return Err(Error::NoXattr);
        }
        // Nothing to remove: fail without copying up.
        self.getxattr_in(stack, ino, name)?;
        let state = self.copy_up(stack, ino, CopyUpData::Meta)?;
        let res = sys::xattr::remove(state.top()?.fd()?.as_fd(), name);
        self.backings.forget_xattrs();
        self.changed_through(ino);
        res
    }
}
