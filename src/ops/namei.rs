//! Name operations of the read path: lookup and forget, and the union's
//! rule for names longer than its NAME_MAX.
//!
//! Invariant: a lookup counts exactly one kernel reference on the node it
//! returns (`InodeTable::remember`), and `forget` gives them back. A name
//! longer than the union's NAME_MAX is ENAMETOOLONG unless a branch holds
//! it (FUSE hands the daemon names of up to 4 KiB; the kernel leaves the
//! limit to the filesystem). Only an AUFS-format union, whose NAME_MAX is
//! 251, can meet such names in its lowers (252 to 255 bytes): they stay
//! visible, readable and copyable, though not deletable (see `ops::write`).
//! Locks: the inode table's shard lock, then the node's state lock (via
//! `InodeTable`); none held across a branch syscall.

use std::ffi::OsStr;
use std::sync::Arc;

use super::{Entry, UnionFs};
use crate::error::{Error, Result};
use crate::inode::{Ino, Kind, Node, NodeState};
use crate::lookup;
use crate::stack::BranchStack;

/// Freed nodes between two returns of free heap memory to the system.
const TRIM_EVERY: u64 = 4_096;

impl UnionFs {
    /// Looks `name` up in directory `parent`; counts one kernel lookup.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Entry> {
        let snapshot = self.stack.load_full();
        let stack = &*snapshot;
        self.lookup_node(stack, parent, name).map(|(e, _)| e)
    }

    pub(super) fn lookup_node(
        &self,
        stack: &BranchStack,
        parent: Ino,
        name: &OsStr,
    ) -> Result<(Entry, Arc<Node>)> {
        check_lookup_len(name)?;
        let dir = self.lookup_dir(stack, parent)?;
        self.lookup_in(stack, &dir, name)
    }

    /// What a lookup needs of its parent directory: taken once for all the
    /// names a READDIRPLUS looks up in it.
    pub(super) fn lookup_dir(&self, stack: &BranchStack, parent: Ino) -> Result<LookupDir> {
        let pnode = self.inodes.get(parent)?;
        if pnode.kind != Kind::Dir {
            return Err(Error::NotDir);
        }
        Ok(LookupDir {
            ino: parent,
            state: self.fresh_state(stack, &pnode)?,
            path: self.inodes.path_of(parent)?,
        })
    }

    /// Looks `name` up in `dir` (taken under the same `stack`). The name
    /// is one a branch can hold: checked by `lookup_node`, or listed by a
    /// branch (READDIRPLUS).
    pub(super) fn lookup_in(
        &self,
        stack: &BranchStack,
        dir: &LookupDir,
        name: &OsStr,
    ) -> Result<(Entry, Arc<Node>)> {
        let found = self
            .find_union(stack, dir.ino, &dir.state, &dir.path, name)
            .map_err(|e| self.or_too_long(e, name))?;
        let ino = self.ino_of(stack, &found);
        let attr = self.attr_of(stack, ino, &found.stat, &found.state);
        let node = self.inodes.remember(ino, found.kind, found.state);
        Ok((
            Entry {
                attr,
                node: node.ino,
            },
            node,
        ))
    }

    /// What "`name` is not there" is to the caller: ENAMETOOLONG for a name
    /// longer than the union's NAME_MAX, else `e` as it is.
    pub(super) fn or_too_long(&self, e: Error, name: &OsStr) -> Error {
        if e.is_not_found() && name.len() > self.opts.name_max {
            Error::NameTooLong
        } else {
            e
        }
    }

    /// Refuses a name to be created that is longer than the union's
    /// NAME_MAX (the kernel's FUSE client leaves this to the filesystem).
    pub(super) fn check_new_len(&self, name: &OsStr) -> Result<()> {
        if name.len() > self.opts.name_max {
            return Err(Error::NameTooLong);
        }
        Ok(())
    }

    /// The union inode number of a found object: the one recorded at
    /// copy-up, else derived from the topmost instance.
    pub(super) fn ino_of(&self, stack: &BranchStack, found: &lookup::Found) -> Ino {
        Ino(found
            .recorded_ino
            .unwrap_or_else(|| stack.fold_ino(found.stat.st_dev, found.stat.st_ino)))
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

/// A parent directory as a lookup sees it: its number, its layers (fresh
/// for the stack it was taken under) and its path in the union.
pub(super) struct LookupDir {
    ino: Ino,
    state: NodeState,
    path: std::path::PathBuf,
}

/// Refuses, before any branch is asked, a name no branch can hold.
pub(super) fn check_lookup_len(name: &OsStr) -> Result<()> {
    if name.len() > crate::whiteout::NAME_MAX {
        return Err(Error::NameTooLong);
    }
    Ok(())
}
