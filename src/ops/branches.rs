//! Branch changes on a live union (`unionfs branch add|del|mod`): the
//! swap itself, and what keeps every request right across it.
//!
//! Invariant: a change is one `replace_stack`, made while no file handle
//! can be opened (the gate, taken exclusively) and only when no open file
//! handle lives in a branch the change removes (else EBUSY). Then the root's
//! layers are re-read from the new stack, and the kernel is told to
//! revalidate every entry it holds (one FUSE_NOTIFY_INC_EPOCH, or each
//! entry the union knows of on kernels without it), every attribute and
//! every cached listing. A node resolved against an older stack is
//! re-resolved by its path before it is used as a directory to look in
//! or to list (`fresh_dir`), so a reader whose working directory is inside
//! the union sees the new stack too.
//! Locks: the gate (exclusive) around the check and the swap; then node
//! state locks one at a time; no lock across the kernel notifications.

use std::path::Path;

use super::UnionFs;
use crate::branch::BranchId;
use crate::error::{Error, Result};
use crate::handle::Handle;
use crate::inode::{Ino, Kind, Node, NodeState, ROOT_INO};
use crate::lookup;
use crate::stack::BranchStack;

impl UnionFs {
    /// Installs `next` as the stack, unless a file is open in one of the
    /// branches in `gone` (EBUSY); then makes every cache see it.
    pub fn change_branches(&self, next: BranchStack, gone: &[BranchId]) -> Result<()> {
        // Pending copy-ups are published into the upper they were made for.
        let _quiet = self.publisher.quiesce()?;
        {
            let _gate = self.gate.write();
            if self.handles.any(|h| match h {
                Handle::File(f) => gone.contains(&f.branch),
                Handle::Dir(_) => false,
            }) {
                return Err(Error::BranchBusy);
            }
            self.replace_stack(next)?;
            let stack = self.stack.load_full();
            let (root, _) = lookup::root(&stack)?;
            self.inodes.refresh(ROOT_INO, Kind::Dir, root);
        }
        self.forget_cached_view();
        Ok(())
    }

    /// Makes the kernel revalidate everything it cached of the view.
    fn forget_cached_view(&self) {
        let Some(inv) = self.invalidator.get() else {
            return;
        };
        let all = inv.all_entries();
        tracing::info!(
            "branches changed (generation {}): the kernel revalidates {}",
            self.stack.load().generation(),
            if all {
                "every entry (epoch)"
            } else {
                "the entries the union knows, one by one"
            }
        );
        for (ino, kind, parent, name) in self.inodes.entries() {
            if !all && !name.is_empty() {
                inv.entry(parent, &name);
            }
            if kind == Kind::Dir || ino != ROOT_INO {
                inv.inode(ino);
            }
        }
        if !all {
            // Without an epoch, a name the kernel remembers as absent stays
            // so until its entry times out: name the ones a directory the
            // kernel holds now shows.
            for (ino, kind, _, _) in self.inodes.entries() {
                if kind != Kind::Dir {
                    continue;
                }
                if let Ok(names) = self.names_in(ino) {
                    for n in names {
                        inv.entry(ino, &n);
                    }
                }
            }
        }
    }

    /// Every name the branches hold in directory `ino`, whiteouts' targets
    /// included (the names whose cached absence may be wrong now).
    fn names_in(&self, ino: Ino) -> Result<Vec<std::ffi::OsString>> {
        let stack = self.stack.load_full();
        let state = self.fresh_dir(&stack, ino)?;
        let path = self.inodes.path_of(ino)?;
        let mut out = Vec::new();
        for layer in crate::readdir::layer_listings(&stack, &state.layers, &path)? {
            for e in layer {
                out.push(match e {
                    crate::readdir::LayerEntry::Object { name, .. } => name,
                    crate::readdir::LayerEntry::Whiteout(name) => name,
                });
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The state of directory `ino`, re-resolved by its path when it was
    /// resolved against an older stack than `stack`.
    pub(super) fn fresh_dir(&self, stack: &BranchStack, ino: Ino) -> Result<NodeState> {
        self.fresh_state(stack, &*self.inodes.get(ino)?)
    }

    /// `fresh_dir` for a node the caller holds already (one table lookup
    /// less on the lookup and getattr paths).
    pub(super) fn fresh_state(&self, stack: &BranchStack, node: &Node) -> Result<NodeState> {
        let state = node.snapshot();
        if state.generation == stack.generation() || node.ino == ROOT_INO {
            return Ok(state);
        }
        let path = self.inodes.path_of(node.ino)?;
        let fresh = self.resolve_path(stack, &path)?;
        self.inodes.refresh(node.ino, node.kind, fresh.clone());
        Ok(fresh)
    }

    /// Walks `path` from the root through `stack`.
    fn resolve_path(&self, stack: &BranchStack, path: &Path) -> Result<NodeState> {
        let mut ino = ROOT_INO;
        let mut state = self.inodes.get(ROOT_INO)?.snapshot();
        let mut cur = std::path::PathBuf::new();
        for comp in path.components() {
            let name = comp.as_os_str();
            let found = self.find_union(stack, ino, &state, &cur, name)?;
            ino = self.ino_of(stack, &found);
            cur.push(name);
            state = found.state;
        }
        Ok(state)
    }
}
