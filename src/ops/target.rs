//! Which writable branch an operation writes to, when there are several
//! (AUFS's create and copy-up policies, `policy`), and the stack the
//! operation then works on: the view from that branch down
//! (`BranchStack::view_from`), in which it is the upper and everything
//! below it the lowers — so every union rule written for one upper holds
//! for each writable branch unchanged.
//!
//! Invariant: an existing object is written in the writable branch that
//! holds its topmost instance, or copied up to a writable branch above it;
//! a new name goes where nothing above hides it; link and rename stay in
//! the source's branch unless the target's is higher (aufs.5). With one
//! writable branch on top (every default mount) the whole stack is
//! returned at once: no policy runs, no branch is probed.
//! Locks: none of their own (see `policy::PolicyState`).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use super::UnionFs;
use crate::error::{Error, Result};
use crate::inode::{Ino, NodeState};
use crate::lookup;
use crate::policy::{self, Slot};
use crate::stack::BranchStack;
use crate::sys;

/// Position of each layer of `state` in `stack` (unknown ones dropped).
fn positions(stack: &BranchStack, state: &NodeState) -> Vec<usize> {
    state
        .layers
        .iter()
        .map(|l| stack.position(l.branch))
        .filter(|&p| p != usize::MAX)
        .collect()
}

impl UnionFs {
    /// What the policies see of `stack`: each branch writable or not, and
    /// whether it holds the parent directory `parent` (if known).
    fn slots(&self, stack: &BranchStack, parent: Option<&NodeState>) -> Vec<Slot> {
        let held = parent.map(|p| positions(stack, p)).unwrap_or_default();
        stack
            .iter()
            .enumerate()
            .map(|(i, b)| Slot {
                writable: stack.writer_of(b.id).is_some(),
                has_parent: held.contains(&i),
            })
            .collect()
    }

    /// The stack an operation writing at position `pos` works on.
    fn view_at(&self, stack: &Arc<BranchStack>, pos: Option<usize>) -> Result<Arc<BranchStack>> {
        let pos = pos.ok_or(Error::ReadOnly)?;
        if pos == 0 {
            return Ok(Arc::clone(stack));
        }
        let id = stack.iter().nth(pos).ok_or(Error::StaleInode)?.id;
        stack.view_from(id).map(Arc::new).ok_or(Error::StaleInode)
    }

    /// Where an existing object whose topmost instance is at `top` is
    /// written: there if writable, else by the copy-up policy above it.
    fn pos_for_existing(
        &self,
        stack: &BranchStack,
        top: usize,
        parent: Option<&NodeState>,
    ) -> Option<usize> {
        let slots = self.slots(stack, parent);
        if slots.get(top).is_some_and(|s| s.writable) {
            return Some(top);
        }
        policy::copy_up(self.opts.cpup, &slots, top)
    }

    /// The lowest position a new `name` in directory `pstate` may be made
    /// at and be seen: not below the directory's last layer (its opaque
    /// one, or the bottom), nor below a whiteout of the name.
    fn limit_for_new(
        &self,
        stack: &BranchStack,
        pstate: &NodeState,
        name: &OsStr,
    ) -> Result<usize> {
        let pos = positions(stack, pstate);
        let mut limit = pos.last().copied().unwrap_or(0);
        if let Some(i) = lookup::whiteout_layer(stack, pstate, name)? {
            limit = limit.min(pos.get(i).copied().unwrap_or(0));
        }
        Ok(limit)
    }

    /// Free bytes for the union in the branch at `pos` (most-free-space).
    fn free_at(stack: &BranchStack, pos: usize) -> Option<u64> {
        let b = stack.iter().nth(pos)?;
        let s = sys::fs::statvfs(b.root()).ok()?;
        Some(s.blocks_available().saturating_mul(s.fragment_size()))
    }

    /// The node's state and its parent's, by inode number.
    fn states(&self, ino: Ino) -> Result<(NodeState, Option<NodeState>)> {
        let state = self.inodes.get(ino)?.snapshot();
        let parent = (ino != crate::inode::ROOT_INO)
            .then(|| self.inodes.get(state.parent).ok().map(|n| n.snapshot()))
            .flatten();
        Ok((state, parent))
    }

    /// The stack a write to existing node `ino` works on.
    pub(super) fn for_node(&self, stack: Arc<BranchStack>, ino: Ino) -> Result<Arc<BranchStack>> {
        if stack.one_writer_on_top() {
            return Ok(stack);
        }
        let (state, parent) = self.states(ino)?;
        let top = positions(&stack, &state)
            .first()
            .copied()
            .ok_or(Error::StaleInode)?;
        let pos = self.pos_for_existing(&stack, top, parent.as_ref());
        self.view_at(&stack, pos)
    }

    /// The stack a new `name` in directory `parent` is made in
    /// (`create=`; mkdir keeps round robin where it is).
    pub(super) fn for_new(
        &self,
        stack: Arc<BranchStack>,
        parent: Ino,
        name: &OsStr,
        is_dir: bool,
    ) -> Result<Arc<BranchStack>> {
        if stack.one_writer_on_top() {
            return Ok(stack);
        }
        let pstate = self.fresh_dir(&stack, parent)?;
        let limit = self.limit_for_new(&stack, &pstate, name)?;
        let slots = self.slots(&stack, Some(&pstate));
        let free = |p: usize| Self::free_at(&stack, p);
        let pos = self.policy.create(
            self.opts.create,
            &slots,
            limit,
            stack.generation(),
            is_dir,
            &free,
        );
        self.view_at(&stack, pos)
    }

    /// The stack `name` in directory `parent` is removed in: the writable
    /// branch holding its topmost instance, or one above it.
    pub(super) fn for_child(
        &self,
        stack: Arc<BranchStack>,
        parent: Ino,
        name: &OsStr,
    ) -> Result<Arc<BranchStack>> {
        if stack.one_writer_on_top() {
            return Ok(stack);
        }
        let pstate = self.fresh_dir(&stack, parent)?;
        let ppath = self.inodes.path_of(parent)?;
        let found = self.find_union(&stack, parent, &pstate, &ppath, name)?;
        let top = positions(&stack, &found.state)
            .first()
            .copied()
            .ok_or(Error::NotFound)?;
        let pos = self.pos_for_existing(&stack, top, Some(&pstate));
        self.view_at(&stack, pos)
    }

    /// The stack a link or rename of `name` in `parent` (or of node `src`)
    /// to `newname` in `newparent` works on: the source's writable branch
    /// (or its copy-up target), unless the target exists higher — then the
    /// target's (or its copy-up target); never below a whiteout of the new
    /// name (aufs.5, "Exceptions for Policies").
    pub(super) fn for_move(
        &self,
        stack: Arc<BranchStack>,
        src: (Ino, &Path, Option<&OsStr>),
        newparent: Ino,
        newname: &OsStr,
    ) -> Result<Arc<BranchStack>> {
        if stack.one_writer_on_top() {
            return Ok(stack);
        }
        let (src_state, src_parent) = match src {
            (parent, ppath, Some(name)) => {
                let pstate = self.fresh_dir(&stack, parent)?;
                let found = self.find_union(&stack, parent, &pstate, ppath, name)?;
                (found.state, Some(pstate))
            }
            (ino, _, None) => self.states(ino)?,
        };
        let s = positions(&stack, &src_state)
            .first()
            .copied()
            .ok_or(Error::NotFound)?;
        let npstate = self.fresh_dir(&stack, newparent)?;
        let nppath = self.inodes.path_of(newparent)?;
        let dst_top = self
            .find(&stack, newparent, &npstate, &nppath, newname)?
            .and_then(|d| positions(&stack, &d.state).first().copied());
        let slots = self.slots(&stack, src_parent.as_ref());
        let sel = dst_top.map_or(s, |d| d.min(s));
        let mut pos = if slots.get(sel).is_some_and(|x| x.writable) {
            Some(sel)
        } else {
            policy::copy_up(self.opts.cpup, &slots, sel)
        };
        let limit = self.limit_for_new(&stack, &npstate, newname)?;
        if pos.is_some_and(|p| p > limit) {
            pos = (0..=limit)
                .rev()
                .find(|&p| slots.get(p).is_some_and(|x| x.writable));
        }
        self.view_at(&stack, pos)
    }

    /// `node`'s state as an operation on `stack` sees it: in a view, the
    /// layers of branches above it are not there.
    pub(super) fn state_in(&self, stack: &BranchStack, node: &crate::inode::Node) -> NodeState {
        let mut state = node.snapshot();
        if stack.is_view() {
            state.layers.retain(|l| stack.get(l.branch).is_some());
        }
        state
    }
}
