//! What the core offers for direct branch access (`udba=`, see
//! `crate::udba`): which branch directories a union directory is made of,
//! and forgetting what the kernel cached when one of them changed.
//!
//! Invariant: the daemon keeps nothing about a name that a fresh lookup
//! would not redo: a lookup always walks the branches again and replaces
//! the node's state, and a directory's listing snapshot is retaken at the
//! next read from offset 0 once it was read. So a change seen in a branch
//! only has to reach the kernel, whose caches decide whether a lookup or a
//! listing comes at all.
//! Locks: node state (read, for a snapshot); none held while the kernel is
//! told.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::UnionFs;
use crate::error::Result;
use crate::inode::{Ino, Kind};
use crate::mode::{Mode, Perm};

/// Whether changes made directly in a branch of `mode` are looked for:
/// really read-only (`rr`) branches never change, so they are trusted
/// forever (aufs.5: no watches on them).
fn may_change(mode: Mode) -> bool {
    match mode.perm {
        Perm::Rw | Perm::Ro => true,
        Perm::Rr => false,
    }
}

impl UnionFs {
    /// The branch directories directory `ino` is made of, in branches that
    /// may change behind the union (empty for a non-directory).
    pub fn watchable_dirs(&self, ino: Ino) -> Result<Vec<Arc<OwnedFd>>> {
        let node = self.inodes.get(ino)?;
        if node.kind != Kind::Dir {
            return Ok(Vec::new());
        }
        let state = node.snapshot();
        let stack = self.stack.load();
        let mut out = Vec::with_capacity(state.layers.len());
        for l in state.layers.iter().filter(|l| !l.sealed) {
            if stack.get(l.branch).is_some_and(|b| may_change(b.mode)) {
                out.push(l.fd()?);
            }
        }
        Ok(out)
    }

    /// True while the kernel holds node `ino`.
    pub fn is_live(&self, ino: Ino) -> bool {
        self.inodes.get(ino).is_ok()
    }

    /// A branch instance of directory `dir` changed behind the union: its
    /// entry `name` (created, removed, renamed, written, chmod-ed), or the
    /// directory itself (`None`). The kernel's entry expires, so the next
    /// access looks it up again and sees the new object, attributes and —
    /// with FUSE_AUTO_INVAL_DATA — content; with `names` (an entry came or
    /// went) or for the directory itself, the directory's cached listing
    /// and attributes go too. A directory instance that came or went
    /// (`names` and `is_dir`) may belong to a union directory the kernel
    /// holds, whose listing then changes without any event of its own: its
    /// cached listing goes as well. Not from inside a request.
    pub fn branch_changed(&self, dir: Ino, name: Option<&OsStr>, names: bool, is_dir: bool) {
        let Some(inv) = self.invalidator.get() else {
            return;
        };
        if let Some(name) = name {
            inv.entry(dir, name);
            if names && is_dir {
                if let Some(child) = self.held_child(dir, name) {
                    inv.inode(child);
                }
            }
        }
        if names || name.is_none() {
            inv.inode(dir);
        }
    }

    /// The node the kernel holds for `parent`'s entry `name` as the
    /// branches show it now. Its state is left alone: the kernel's next
    /// lookup refreshes it, serialised with the union's own changes of the
    /// name (this thread is not).
    fn held_child(&self, parent: Ino, name: &OsStr) -> Option<Ino> {
        let pstate = self.inodes.get(parent).ok()?.snapshot();
        let ppath = self.inodes.path_of(parent).ok()?;
        let stack = self.stack.load_full();
        let found = self
            .find_union(&stack, parent, &pstate, &ppath, name)
            .ok()?;
        let ino = self.ino_of(&stack, &found);
        self.is_live(ino).then_some(ino)
    }

    /// Branch changes were lost (the watch queue overflowed): the kernel
    /// forgets every entry and directory the union knows of.
    pub fn branches_changed(&self) {
        let Some(inv) = self.invalidator.get() else {
            return;
        };
        for (ino, kind, parent, name) in self.inodes.entries() {
            if !name.is_empty() {
                inv.entry(parent, &name);
            }
            if kind == Kind::Dir {
                inv.inode(ino);
            }
        }
    }
}
