//! The inode table: FUSE node id -> `Node`.
//!
//! Invariant: a node's reported inode number (`st_ino`) is derived from its
//! backing object (see `BranchStack::fold_ino`), so hard links of one
//! backing file are one node and numbers survive a remount; the node stays
//! in the table exactly while the kernel holds lookups on it (root
//! excepted). The FUSE node id equals `st_ino`, except for an object whose
//! old node was *retired* (`rekey`): the kernel pins a node to the lower
//! file its passthrough readers use, so a copied-up object gets a fresh
//! node id (top byte 0xff, see `FRESH_BASE`) that lookups of its `st_ino`
//! return from then on, while the old node serves the readers it has (and
//! answers for the names the kernel still binds to it, such as another
//! hard link: the union then tells the new node of what changed).
//! Locks: the table is a `DashMap` (shard lock held only for insert/remove
//! and the lookup-count update that goes with it); each node's `state` is an
//! `RwLock` taken after the shard lock is released, never the other way round.
//! The `rekeyed` map's shard lock may be held while a `nodes` shard lock is
//! taken, never the other way round.

use std::ffi::OsString;
use std::ops::ControlFlow;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::RwLock;

use crate::backing::Backing;
use crate::branch::BranchId;
use crate::error::{Error, Result};
use crate::whiteout::Opacity;

/// A union inode number: the FUSE node id, or the reported `st_ino` (the
/// same number unless the node was rekeyed, see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

/// The union root's inode number (FUSE_ROOT_ID).
pub const ROOT_INO: Ino = Ino(1);

/// First fresh node id. `fold_ino` puts the device index in the top byte
/// and uses 0xff only for folded 0 and 1 (or a 256th device), so ids from
/// here up meet no backing-derived number in practice; `rekey` also skips
/// any id the table holds.
const FRESH_BASE: u64 = (0xff << 56) | 0x100;

/// File type of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
}

impl Kind {
    /// The kind of an `st_mode`.
    pub fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => Kind::File,
        }
    }
}

/// One entry of a merged listing (made by `readdir::merge`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedEntry {
    /// Its name.
    pub name: OsString,
    /// Type of the topmost instance.
    pub kind: Kind,
    /// Union inode number of the topmost instance.
    pub ino: u64,
}

/// The listing state of a directory being read: kept by its open handle,
/// or by its node when the kernel reads without opening (no-opendir).
/// Here, with the node, rather than in `handle` or `readdir`, so that the
/// tables sit below the algorithms that fill them.
#[derive(Debug, Default)]
pub struct Listing {
    /// The snapshot; `None` until first read.
    pub entries: Option<Arc<Vec<MergedEntry>>>,
    /// Whether entries were handed out since the snapshot was taken.
    pub consumed: bool,
    /// After a listing read to its end was let go (to free its memory):
    /// its length, so the kernel's read at that offset still finds the end.
    pub eof: Option<u64>,
}

/// One branch's instance of a node.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The branch holding it.
    pub branch: BranchId,
    /// The object in that branch.
    pub backing: Arc<Backing>,
    /// Where it lives in its branch (relative to the branch root); differs
    /// from the union path below a redirect. (An unnamed O_TMPFILE file:
    /// its directory's path.)
    pub path: PathBuf,
    /// For directories: whether lower branches show through (`Opaque` or
    /// `Transparent`).
    pub opacity: Opacity,
    /// For directories: entries here may be xattr whiteouts.
    pub xwhiteouts: bool,
    /// For upper directories: entries may carry a recorded union inode number.
    pub impure: bool,
    /// A hard-linked lower file's upper data, found through the index: the
    /// name itself has no upper instance yet.
    pub indexed: bool,
    /// A directory on another filesystem than its branch (a mount point
    /// seen through a branch opened without a mount clone): shown empty, so
    /// the union never walks into other filesystems — or into itself.
    pub sealed: bool,
    /// A regular file holding metadata only (`*.metacopy`): its data is
    /// the next layer's.
    pub metacopy: bool,
}

/// Where a node lives in the branches; replaced on every fresh lookup.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// The directory this node was last looked up in (itself for the root).
    pub parent: Ino,
    /// Its name in `parent` (empty for the root, and for an unnamed
    /// O_TMPFILE file until its first link: `parent` is then the directory
    /// it was made in). Paths are derived from (parent, name) links so that
    /// renaming a directory needs one update.
    pub name: OsString,
    /// Instances, topmost first. A directory may have several; anything
    /// else has exactly one.
    pub layers: Vec<Layer>,
    /// The generation of the branch stack (`BranchStack::generation`) these
    /// layers were resolved with. Layers name branches by id, which stays
    /// valid, but a node older than the current stack may miss a branch
    /// added since or name one deleted since: this is what lets later code
    /// tell such a node and look it up again (not done yet: today the
    /// stack never changes after mount).
    pub generation: u64,
}

impl Layer {
    /// A plain layer (transparent, not impure, not from the index) for
    /// the object `fd` at `path` in `branch`.
    pub fn new(branch: &crate::branch::Branch, fd: OwnedFd, path: PathBuf) -> Layer {
        Self::with_backing(branch, branch.backing(fd), path)
    }

    /// A plain layer for an object already held by `backing`.
    pub fn with_backing(
        branch: &crate::branch::Branch,
        backing: Arc<crate::backing::Backing>,
        path: PathBuf,
    ) -> Layer {
        Layer {
            branch: branch.id,
            backing,
            path,
            opacity: Opacity::Transparent,
            xwhiteouts: false,
            impure: false,
            indexed: false,
            sealed: false,
            metacopy: false,
        }
    }

    /// An O_PATH fd of the object.
    pub fn fd(&self) -> Result<Arc<OwnedFd>> {
        self.backing.fd()
    }
}

impl NodeState {
    /// The topmost instance.
    pub fn top(&self) -> Result<&Layer> {
        self.layers.first().ok_or(Error::StaleInode)
    }

    /// The instance holding the data: the topmost that is not a metadata-only copy.
    pub fn data(&self) -> Result<&Layer> {
        self.layers
            .iter()
            .find(|l| !l.metacopy)
            .ok_or(Error::StaleInode)
    }

    /// True when the topmost instance holds metadata only.
    pub fn is_metacopy(&self) -> bool {
        self.layers.first().is_some_and(|l| l.metacopy)
    }

    /// True when the object exists in more than one branch.
    pub fn is_merged(&self) -> bool {
        self.layers.len() > 1
    }
}

/// An inode known to the kernel.
#[derive(Debug)]
pub struct Node {
    /// Its FUSE node id.
    pub ino: Ino,
    /// The inode number reported for it (`st_ino`, `d_ino`).
    pub st_ino: Ino,
    /// Its type (fixed for the life of the node).
    pub kind: Kind,
    lookups: AtomicU64,
    /// Where it lives.
    pub state: RwLock<NodeState>,
    /// For a directory listed without an open handle (the kernel's
    /// no-opendir mode): the listing being read, kept from one read at
    /// offset 0 to the next.
    pub listing: parking_lot::Mutex<Listing>,
}

impl Node {
    /// The node's current state (a cheap clone of fds and path).
    pub fn snapshot(&self) -> NodeState {
        self.state.read().clone()
    }

    /// The node's name in its parent.
    pub fn name(&self) -> OsString {
        self.state.read().name.clone()
    }
}

/// Parent links deeper than this are not a real tree: a corrupt loop.
const MAX_DEPTH: usize = 4096;

/// Ino -> Node.
#[derive(Debug, Default)]
pub struct InodeTable {
    nodes: DashMap<Ino, Arc<Node>>,
    /// `st_ino` -> the fresh node id lookups of it return (module doc).
    /// An entry lives while its old node (id `st_ino`) or its fresh node is
    /// in the table.
    rekeyed: DashMap<Ino, Ino>,
    /// Fresh node ids handed out so far.
    fresh: AtomicU64,
}

impl InodeTable {
    /// Installs the root node (never forgotten).
    pub fn insert_root(&self, state: NodeState) {
        self.nodes.insert(
            ROOT_INO,
            Arc::new(Node {
                ino: ROOT_INO,
                st_ino: ROOT_INO,
                kind: Kind::Dir,
                lookups: AtomicU64::new(1),
                state: RwLock::new(state),
                listing: Default::default(),
            }),
        );
    }

    /// The node for `ino`.
    pub fn get(&self, ino: Ino) -> Result<Arc<Node>> {
        self.nodes
            .get(&ino)
            .map(|n| Arc::clone(n.value()))
            .ok_or(Error::StaleInode)
    }

    /// The node id lookups of the object numbered `st_ino` return.
    pub fn node_id(&self, st_ino: Ino) -> Ino {
        self.rekeyed.get(&st_ino).map_or(st_ino, |f| *f.value())
    }

    /// True when node `id` was retired: lookups of its object return
    /// another node now.
    pub fn is_retired(&self, id: Ino) -> bool {
        self.get(id).is_ok_and(|n| self.node_id(n.st_ino) != id)
    }

    /// Retires node `id`: later lookups of its object get a fresh node id
    /// (already done if `id` is not the current node of its object).
    pub fn rekey(&self, id: Ino) -> Result<()> {
        let node = self.get(id)?;
        if node.ino == ROOT_INO || node.kind == Kind::Dir {
            // Directories are never pinned to a backing file.
            return Err(Error::Invalid);
        }
        let st = node.st_ino;
        let mut e = self.rekeyed.entry(st).or_insert(st);
        if *e.value() != id {
            return Ok(());
        }
        let fresh = loop {
            let f = Ino(FRESH_BASE + self.fresh.fetch_add(1, Ordering::Relaxed));
            if !self.nodes.contains_key(&f) {
                break f;
            }
        };
        *e.value_mut() = fresh;
        Ok(())
    }

    /// Records one kernel lookup of the object `st_ino` found at `state`,
    /// creating the node or refreshing where an existing one lives.
    pub fn remember(&self, st_ino: Ino, kind: Kind, state: NodeState) -> Arc<Node> {
        let ino = self.node_id(st_ino);
        match self.nodes.entry(ino) {
            Entry::Occupied(mut e) => {
                if e.get().kind == kind {
                    let node = Arc::clone(e.get());
                    node.lookups.fetch_add(1, Ordering::Relaxed);
                    drop(e);
                    *node.state.write() = state;
                    node
                } else {
                    // The backing inode number was reused for an object of
                    // another type: the kernel marks its old inode bad, and
                    // the lookups it still holds carry over to the new node.
                    let held = e.get().lookups.load(Ordering::Relaxed);
                    let fresh = Arc::new(Node {
                        ino,
                        st_ino,
                        kind,
                        lookups: AtomicU64::new(held + 1),
                        state: RwLock::new(state),
                        listing: Default::default(),
                    });
                    e.insert(Arc::clone(&fresh));
                    fresh
                }
            }
            Entry::Vacant(e) => {
                let node = Arc::new(Node {
                    ino,
                    st_ino,
                    kind,
                    lookups: AtomicU64::new(1),
                    state: RwLock::new(state),
                    listing: Default::default(),
                });
                e.insert(Arc::clone(&node));
                node
            }
        }
    }

    /// Replaces where node `ino` lives without counting a lookup (after the
    /// union itself moved it: copy-up, rename). `ino` may also be an object's
    /// `st_ino`: then its current node, and its retired one, both move.
    pub fn refresh(&self, ino: Ino, kind: Kind, state: NodeState) {
        let current = self.node_id(ino);
        for id in [ino, current] {
            if let Some(node) = self.nodes.get(&id).map(|n| Arc::clone(n.value())) {
                if node.kind == kind {
                    *node.state.write() = state.clone();
                }
            }
            if current == ino {
                break;
            }
        }
    }

    /// Drops `n` kernel lookups; removes the node when none are left (and
    /// then returns true).
    pub fn forget(&self, ino: Ino, n: u64) -> bool {
        if ino == ROOT_INO {
            return false;
        }
        if let Entry::Occupied(e) = self.nodes.entry(ino) {
            let left = e
                .get()
                .lookups
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                    Some(c.saturating_sub(n))
                })
                .map_or(0, |before| before.saturating_sub(n));
            if left == 0 {
                let (_, node) = e.remove_entry();
                // The retirement is over once neither node is known.
                let st = node.st_ino;
                self.rekeyed.remove_if(&st, |_, f| {
                    !self.nodes.contains_key(&st) && !self.nodes.contains_key(f)
                });
                return true;
            }
        }
        false
    }

    /// Whether `ino` is `dir` or lies below it, following parent links (a
    /// node no longer known along the way counts as below: callers use
    /// this to decide what to publish, where too much is harmless).
    pub fn is_within(&self, ino: Ino, dir: Ino) -> bool {
        let found = self.walk_up(ino, |cur, _| {
            if cur == dir {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        match found {
            Ok(Some(())) => true,
            Ok(None) => dir == ROOT_INO,
            // A node gone on the way, or a loop: say yes, the cautious answer.
            Err(_) => true,
        }
    }

    /// The path of `ino` from the union root, following parent links.
    pub fn path_of(&self, ino: Ino) -> Result<PathBuf> {
        let mut names = Vec::new();
        self.walk_up(ino, |_, st| {
            names.push(st.name.clone());
            ControlFlow::<()>::Continue(())
        })?;
        Ok(names.iter().rev().collect())
    }

    /// Walks the parent links from `ino` up to the root: `step` sees each
    /// node below the root (its number and state, under its read lock) and
    /// may end the walk early with what it found. `Ok(None)` once the root
    /// is reached; `StaleInode` for a node gone on the way, or a walk
    /// deeper than real trees are (a corrupt loop).
    fn walk_up<T>(
        &self,
        ino: Ino,
        mut step: impl FnMut(Ino, &NodeState) -> ControlFlow<T>,
    ) -> Result<Option<T>> {
        let mut cur = ino;
        for _ in 0..MAX_DEPTH {
            if cur == ROOT_INO {
                return Ok(None);
            }
            let node = self.get(cur)?;
            let st = node.state.read();
            if let ControlFlow::Break(t) = step(cur, &st) {
                return Ok(Some(t));
            }
            cur = st.parent;
        }
        Err(Error::StaleInode)
    }

    /// Every live node's number, kind and place (parent, name), taken one
    /// shard at a time (a consistent picture is not needed: the caller
    /// invalidates kernel caches, where too much is harmless).
    pub fn entries(&self) -> Vec<(Ino, Kind, Ino, OsString)> {
        let nodes: Vec<Arc<Node>> = self.nodes.iter().map(|n| Arc::clone(n.value())).collect();
        nodes
            .into_iter()
            .map(|n| {
                let st = n.state.read();
                (n.ino, n.kind, st.parent, st.name.clone())
            })
            .collect()
    }

    /// Number of live nodes (root included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the table holds no node at all (not even the root).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> NodeState {
        NodeState {
            parent: ROOT_INO,
            name: "f".into(),
            layers: Vec::new(),
            generation: 0,
        }
    }

    #[test]
    fn a_rekeyed_object_gets_a_fresh_node_id_and_keeps_its_st_ino() {
        let t = InodeTable::default();
        let old = t.remember(Ino(42), Kind::File, state());
        assert_eq!((old.ino, old.st_ino), (Ino(42), Ino(42)));
        assert!(t.rekey(Ino(42)).is_ok());
        assert!(t.is_retired(Ino(42)));
        let new = t.remember(Ino(42), Kind::File, state());
        assert_ne!(new.ino, Ino(42));
        assert_eq!(new.st_ino, Ino(42));
        assert!(!t.is_retired(new.ino));
        // Retiring again is a no-op for the old node.
        assert!(t.rekey(Ino(42)).is_ok());
        assert_eq!(t.node_id(Ino(42)), new.ino);
        // The kernel's revalidation gives the fresh lookup back at once:
        // the mapping must outlive it while the old node lives.
        assert!(t.forget(new.ino, 1));
        assert_eq!(t.node_id(Ino(42)), new.ino);
        assert_eq!(t.remember(Ino(42), Kind::File, state()).ino, new.ino);
        assert!(t.forget(new.ino, 1));
        // Both gone: the object is back at its own number.
        assert!(t.forget(Ino(42), 1));
        assert_eq!(t.node_id(Ino(42)), Ino(42));
        assert_eq!(t.len(), 0);
    }
}
