//! Name operations of the read path: lookup and forget.

use std::ffi::OsStr;
use std::sync::Arc;

use super::{Entry, UnionFs};
use crate::error::{Error, Result};
use crate::inode::{Ino, Kind, Node};
use crate::lookup;

impl UnionFs {
    /// Looks `name` up in directory `parent`; counts one kernel lookup.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Entry> {
        self.lookup_node(parent, name).map(|(e, _)| e)
    }

    pub(super) fn lookup_node(&self, parent: Ino, name: &OsStr) -> Result<(Entry, Arc<Node>)> {
        let pnode = self.inodes.get(parent)?;
        if pnode.kind != Kind::Dir {
            return Err(Error::NotDir);
        }
        let pstate = pnode.snapshot();
        let found = lookup::lookup(&self.stack, parent, &pstate, name)?;
        let ino = Ino(self.stack.fold_ino(found.stat.st_dev, found.stat.st_ino));
        let attr = self.attr_of(ino, &found.stat, &found.state);
        let node = self.inodes.remember(ino, found.kind, found.state);
        Ok((Entry { attr }, node))
    }

    /// Drops `n` kernel lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        self.inodes.forget(ino, n);
    }
}
