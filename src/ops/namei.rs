//! Name operations of the read path: lookup and forget.
//!
//! Invariant: a lookup counts exactly one kernel reference on the node it
//! returns (`InodeTable::remember`), and `forget` gives them back.
//! Locks: the inode table's shard lock, then the node's state lock (via
//! `InodeTable`); none held across a branch syscall.

use std::ffi::OsStr;
use std::sync::Arc;

use super::{Entry, UnionFs};
use crate::error::{Error, Result};
use crate::inode::{Ino, Kind, Node};
use crate::lookup;

/// Freed nodes between two returns of free heap memory to the system.
const TRIM_EVERY: u64 = 4_096;

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
        let ppath = self.inodes.path_of(parent)?;
        let found = self.find_union(parent, &pstate, &ppath, name)?;
        let ino = self.ino_of(&found);
        let attr = self.attr_of(ino, &found.stat, &found.state);
        let node = self.inodes.remember(ino, found.kind, found.state);
        Ok((Entry { attr }, node))
    }

    /// The union inode number of a found object: the one recorded at
    /// copy-up, else derived from the topmost instance.
    pub(super) fn ino_of(&self, found: &lookup::Found) -> Ino {
        Ino(found
            .recorded_ino
            .unwrap_or_else(|| self.stack.fold_ino(found.stat.st_dev, found.stat.st_ino)))
    }

    /// Drops `n` kernel lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        if self.inodes.forget(ino, n) {
            // Every so many freed nodes, hand the memory back: what the
            // daemon holds then follows what the kernel keeps cached.
            let freed = self
                .freed_nodes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if freed % TRIM_EVERY == 0 {
                crate::sys::process::trim_memory();
            }
        }
    }
}
