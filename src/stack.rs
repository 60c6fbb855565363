//! The branch stack: one immutable snapshot of the union's branches,
//! topmost first, with the writers (`Upper`) of its writable branches and a
//! generation number.
//!
//! Invariant: a `BranchStack` never changes once built. The union holds
//! the current one in an `ArcSwap` and replaces it whole
//! (`UnionFs::replace_stack`), each replacement one generation higher; a
//! core operation loads one snapshot at its start and uses only that one,
//! so no branch it sees (by id or by position) shifts under it, and what it
//! writes goes through the writer of that same snapshot. The snapshot is
//! the whole truth about branches and writers: there is no writer outside
//! it. What outlives a snapshot is per union and shared by all of them: the
//! backing state (`Backings`) and the device numbering (`InoFolder`), so
//! inode numbers do not change when the stack does. The layer index
//! (`layer_index`, switched on under `udba=none`) belongs to one snapshot:
//! a successor starts with an empty one, so an index entry never outlives
//! the branch modes it was made under.
//! Locks: none of its own (the shared device table is a `DashMap`; the
//! layer index has its own mutex).

use std::sync::Arc;

use crate::backing::Backings;
use crate::branch::{Branch, BranchId, InoFolder};
use crate::error::{Error, Result};
use crate::layer_index::LayerIndex;
use crate::upper::Upper;

/// Marks the generation of a view (`view_from`): never a real stack's.
const VIEW_BIT: u64 = 1 << 63;

/// The branches of a union, topmost first (upper, then lowers left to
/// right), and the writers of the writable ones.
#[derive(Debug)]
pub struct BranchStack {
    branches: Vec<Branch>,
    /// One per writable branch that may be written (`Upper::branch` names
    /// it), topmost first; shared with the stacks before and after this one
    /// that keep the branch writable, so a live change never resets a
    /// staging area in use.
    writers: Vec<Arc<Upper>>,
    inos: Arc<InoFolder>,
    /// The union's backing state, which every branch was opened with.
    backings: Arc<Backings>,
    /// 0 for the stack a union is built with; one more at each replacement.
    generation: u64,
    /// Names of read-only branch directories (`layer_index.rs`); `None`
    /// unless switched on (`with_layer_index`).
    names: Option<Arc<LayerIndex>>,
    /// Held by this stack and its views: while a clone lives, a request
    /// may still write through this stack (`LayerIndex::settled`).
    alive: Arc<()>,
    /// Read-only branches in this stack.
    read_only: usize,
    /// The layer index is used from this many read-only branches on
    /// (`with_layer_index_from`).
    index_from: usize,
}

/// Read-only branches from which on the daemon uses the layer index. Below, a
/// lookup probes a few layers at most, which costs what hashing every
/// listed name costs, and the index would only hold memory: about 4.5 MiB
/// more peak RSS over a walk of /usr on a two-branch union (measured
/// 108.7 vs 104.1 MiB), no faster on the 2-layer rows of bench-deep.py.
pub const INDEXED_LAYERS: usize = 4;

fn read_only(branches: &[Branch]) -> usize {
    branches.iter().filter(|b| !b.mode.writable()).count()
}

impl BranchStack {
    /// Builds a stack (generation 0) from branches (topmost first) opened
    /// with `backings`, and the writers of the writable ones.
    pub fn new(branches: Vec<Branch>, writers: Vec<Upper>, backings: Arc<Backings>) -> Self {
        Self::with_shared(
            branches,
            writers.into_iter().map(Arc::new).collect(),
            backings,
        )
    }

    /// As `new`, with writers shared with another stack.
    pub fn with_shared(
        branches: Vec<Branch>,
        writers: Vec<Arc<Upper>>,
        backings: Arc<Backings>,
    ) -> Self {
        debug_assert!(branches.iter().all(|b| Arc::ptr_eq(&b.backings, &backings)));
        let inos = Arc::new(InoFolder::default());
        // Devices are numbered in branch order, so the numbering (and with it
        // every st_ino) is the same at every mount of the same branches.
        for b in &branches {
            inos.index(b.dev);
        }
        BranchStack {
            read_only: read_only(&branches),
            index_from: 0,
            branches,
            writers,
            inos,
            backings,
            generation: 0,
            names: None,
            alive: Arc::new(()),
        }
    }

    /// This stack with a layer index: only for a union whose read-only
    /// branches do not change behind it (`udba=none`).
    pub fn with_layer_index(self) -> Self {
        self.with_layer_index_from(0)
    }

    /// `with_layer_index`, used only while the stack has at least
    /// `read_only` read-only branches (the daemon: `INDEXED_LAYERS`).
    pub fn with_layer_index_from(mut self, read_only: usize) -> Self {
        self.names = Some(Arc::new(LayerIndex::default()));
        self.index_from = read_only;
        self
    }

    /// The layer index for `branch`'s directories, if there is one and the
    /// branch qualifies: never written by the union, and without a
    /// unionfs-fuse whiteout tree (whose path-based whiteouts are not
    /// names in the directory); and only once no request runs on an older
    /// stack, whose writes may still land in a branch read-only here; and
    /// only in a stack deep enough (`with_layer_index_from`).
    /// Take it before listing a directory to record.
    pub fn layer_index(&self, branch: &Branch) -> Option<&LayerIndex> {
        if self.read_only < self.index_from || branch.mode.writable() || branch.hidden.is_some() {
            return None;
        }
        self.names.as_deref().filter(|ix| ix.settled())
    }

    /// This stack as the successor of `old`: one generation higher, with
    /// `old`'s device numbering (new devices get the next numbers, in
    /// branch order). Its branches must have been opened with the union's
    /// backing state (EINVAL otherwise: their objects would be cached
    /// outside the union's bound).
    pub fn succeed(mut self, old: &BranchStack) -> Result<Self> {
        if !Arc::ptr_eq(&self.backings, &old.backings)
            || !self
                .branches
                .iter()
                .all(|b| Arc::ptr_eq(&b.backings, &old.backings))
        {
            return Err(Error::Invalid);
        }
        self.inos = Arc::clone(&old.inos);
        for b in &self.branches {
            self.inos.index(b.dev);
        }
        self.generation = old.generation.wrapping_add(1) & !VIEW_BIT;
        // A fresh index: branch modes may have changed. It waits for the
        // requests still running on `old` (or before it) to end.
        self.names = old
            .names
            .as_ref()
            .map(|ix| Arc::new(ix.successor(&old.alive)));
        self.index_from = old.index_from;
        Ok(self)
    }

    /// The part of this stack from branch `id` down, as a stack of its own
    /// whose topmost branch is `id`: what an operation writing to `id` (one
    /// of several writable branches) works on, so that `id` is its upper
    /// and everything below its lowers. Its generation differs from this
    /// stack's, so node states it resolves are re-resolved against the
    /// whole stack before they are looked in again.
    pub fn view_from(&self, id: BranchId) -> Option<BranchStack> {
        let pos = self.branches.iter().position(|b| b.id == id)?;
        let branches: Vec<Branch> = self.branches[pos..].to_vec();
        let writers = self
            .writers
            .iter()
            .filter(|w| branches.iter().any(|b| b.id == w.branch))
            .cloned()
            .collect();
        Some(BranchStack {
            read_only: read_only(&branches),
            index_from: self.index_from,
            branches,
            writers,
            inos: Arc::clone(&self.inos),
            backings: Arc::clone(&self.backings),
            generation: self.generation ^ VIEW_BIT,
            // the same branches in the same modes: the same index
            names: self.names.clone(),
            // a write through the view is a write through this stack
            alive: Arc::clone(&self.alive),
        })
    }

    /// True when the topmost branch is the one writable branch: every
    /// write goes there, no policy has anything to choose.
    pub fn one_writer_on_top(&self) -> bool {
        self.writers.len() == 1
            && self
                .branches
                .first()
                .is_some_and(|b| b.id == self.writers[0].branch)
    }

    /// True for a stack made by `view_from`.
    pub fn is_view(&self) -> bool {
        self.generation & VIEW_BIT != 0
    }

    /// The generation of this snapshot (see the module doc).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The union's backing state (fd cache, xattr generation).
    pub fn backings(&self) -> &Arc<Backings> {
        &self.backings
    }

    /// All branches, topmost first.
    pub fn iter(&self) -> impl Iterator<Item = &Branch> {
        self.branches.iter()
    }

    /// The branch with this id.
    pub fn get(&self, id: BranchId) -> Option<&Branch> {
        self.branches.iter().find(|b| b.id == id)
    }

    /// Position of branch `id` from the top (`usize::MAX` if unknown), in
    /// this snapshot only.
    pub fn position(&self, id: BranchId) -> usize {
        self.branches
            .iter()
            .position(|b| b.id == id)
            .unwrap_or(usize::MAX)
    }

    /// Branches strictly below `id`, topmost first.
    pub fn below(&self, id: BranchId) -> impl Iterator<Item = &Branch> {
        self.branches.iter().skip_while(move |b| b.id != id).skip(1)
    }

    /// The topmost writable branch, if any (the upper).
    pub fn upper(&self) -> Option<&Branch> {
        self.branches.iter().find(|b| b.mode.writable())
    }

    /// The writer of the upper (`upper()`), if the union may write.
    pub fn writer(&self) -> Option<&Upper> {
        self.upper().and_then(|b| self.writer_of(b.id))
    }

    /// The writer of branch `id`, if it has one.
    pub fn writer_of(&self, id: BranchId) -> Option<&Upper> {
        self.writers.iter().find(|u| u.branch == id).map(|u| &**u)
    }

    /// The writer of branch `id`, shared (to build the next stack with).
    pub fn shared_writer(&self, id: BranchId) -> Option<Arc<Upper>> {
        self.writers.iter().find(|u| u.branch == id).cloned()
    }

    /// The st_ino the union reports for backing object (dev, ino).
    pub fn fold_ino(&self, dev: u64, ino: u64) -> u64 {
        self.inos.fold(dev, ino)
    }
}
