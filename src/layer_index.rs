//! Per-directory layer index: which names one read-only branch's instance
//! of a directory holds, so that a lookup in a deep stack probes only the
//! layers that may hold the name (or its AUFS whiteout) instead of two
//! `fstatat` calls in every layer.
//!
//! Invariant: an index entry for (branch, path in the branch) holds the
//! hash of every name `getdents` returned for that directory, so a name
//! whose hash is missing is absent there — as long as the directory does
//! not change. Entries are therefore kept only for branches the union never
//! writes, and the index is switched on only under `udba=none` (the user's
//! promise that branches do not change behind the union); a new branch
//! stack (live branch change) starts with an empty index, so a branch that
//! became writable is never answered from an old entry — and that new
//! index is neither read nor filled while a request may still run on an
//! older stack (`settled`): such a request may still be writing into a
//! branch that was writable there and is read-only now, and a listing
//! taken before its write lands would miss the name for good. A hash collision
//! only costs a probe: the index may say "maybe" wrongly, never "absent".
//! Memory is bounded: at most `MAX_HASHES` 8-byte units in all (a
//! directory's hashes, its path, one for the entry),
//! least recently used directories dropped first; a directory with more
//! than `MAX_DIR_NAMES` names is not indexed (probing it is cheap compared
//! to listing it again after eviction).
//!
//! Locks: one mutex over the table, held for table work only (never across
//! a syscall); one over the older stacks' tokens, held to prune them (only
//! until they are all gone).

use std::ffi::OsStr;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use lru::LruCache;
use parking_lot::Mutex;

use crate::branch::BranchId;

/// Hashes kept in all (2 MiB).
const MAX_HASHES: usize = 1 << 18;
/// Bigger directories are not indexed.
const MAX_DIR_NAMES: usize = 1 << 15;
/// A lookup that would probe at least this many layers of a directory not
/// yet indexed, and not among the first `PROBED_LOOKUPS` there, lists
/// those layers first (one `getdents` each, reused by every later lookup in
/// the directory) instead of probing them.
pub const LIST_TO_INDEX_LAYERS: usize = 8;
/// Lookups in a directory that probe before one lists it: listing a layer
/// (open, getdents, close: about 5 syscalls) costs what two lookups' probes
/// (a `fstatat` of the name and of its whiteout) cost there, so a path
/// walked once (an open) never pays a listing, and a directory looked up
/// in often pays at most twice what it would with the listing known from
/// the start.
const PROBED_LOOKUPS: u8 = 2;
/// Directories remembered as looked up in once (keys only).
const MAX_TOUCHED: usize = 4096;

/// The names of one branch directory, as sorted hashes.
#[derive(Debug)]
pub struct Names(Box<[u64]>);

impl Names {
    /// False only when `name` is certainly not in the directory.
    pub fn may_hold(&self, name: &OsStr) -> bool {
        self.0.binary_search(&hash(name)).is_ok()
    }
}

/// A fixed-key hash: the same name always hashes the same (no per-process
/// state), and a collision costs one probe only.
fn hash(name: &OsStr) -> u64 {
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    h.write(std::os::unix::ffi::OsStrExt::as_bytes(name));
    h.finish()
}

/// What a directory's entry counts against `MAX_HASHES`, in 8-byte units:
/// its hashes, its key's path, and one for the entry itself (so empty
/// directories and long paths are bounded too).
fn charge(path: &Path, n: &Names) -> usize {
    n.0.len() + path.as_os_str().len() / 8 + 1
}

struct Table {
    dirs: LruCache<(BranchId, PathBuf), Arc<Names>>,
    hashes: usize,
    /// Directories (by their topmost indexable layer) looked up in once.
    touched: LruCache<(BranchId, PathBuf), u8>,
}

/// The index of one branch stack.
pub struct LayerIndex {
    table: Mutex<Table>,
    /// The liveness tokens of the stacks this one's stack replaced that
    /// may still be in use (`BranchStack` holds one, shared with its views).
    older: Mutex<Vec<Weak<()>>>,
    /// Set once `older` is empty: from then on no request runs on an older
    /// stack, and the union writes only into branches this stack says are
    /// writable (never indexed).
    settled: AtomicBool,
}

impl std::fmt::Debug for LayerIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerIndex").finish_non_exhaustive()
    }
}

impl Default for LayerIndex {
    fn default() -> Self {
        LayerIndex {
            table: Mutex::new(Table {
                dirs: LruCache::unbounded(),
                hashes: 0,
                touched: LruCache::new(
                    std::num::NonZeroUsize::new(MAX_TOUCHED).unwrap_or(std::num::NonZeroUsize::MIN),
                ),
            }),
            older: Mutex::new(Vec::new()),
            settled: AtomicBool::new(true),
        }
    }
}

impl LayerIndex {
    /// An empty index for the stack replacing the one that held `self`,
    /// whose liveness token is `replaced`: not settled while that stack,
    /// or one of those `self` was still waiting for, is in use.
    pub fn successor(&self, replaced: &Arc<()>) -> LayerIndex {
        let mut older: Vec<Weak<()>> = self
            .older
            .lock()
            .iter()
            .filter(|w| w.strong_count() > 0)
            .cloned()
            .collect();
        older.push(Arc::downgrade(replaced));
        LayerIndex {
            older: Mutex::new(older),
            settled: AtomicBool::new(false),
            ..LayerIndex::default()
        }
    }

    /// True once no older stack is in use: only then may the index be read
    /// or filled. Take it before listing a directory for `insert`, so that
    /// every write made on an older stack is in the listing.
    pub fn settled(&self) -> bool {
        if self.settled.load(Ordering::Acquire) {
            return true;
        }
        let mut older = self.older.lock();
        older.retain(|w| w.strong_count() > 0);
        if !older.is_empty() {
            return false;
        }
        // The last holder's drop (after its writes returned) comes before
        // the listings that follow this.
        std::sync::atomic::fence(Ordering::Acquire);
        self.settled.store(true, Ordering::Release);
        true
    }

    /// The names of `path` in `branch`, if indexed.
    pub fn get(&self, branch: BranchId, path: &Path) -> Option<Arc<Names>> {
        let mut t = self.table.lock();
        // (BranchId, PathBuf) keys: the lookup needs an owned key; paths
        // in a branch are short.
        t.dirs.get(&(branch, path.to_path_buf())).cloned()
    }

    /// Counts a lookup in directory `path` of `branch`; true when it is
    /// time to list the directory (`PROBED_LOOKUPS`).
    pub fn time_to_list(&self, branch: BranchId, path: &Path) -> bool {
        let mut t = self.table.lock();
        let n = t
            .touched
            .get(&(branch, path.to_path_buf()))
            .copied()
            .unwrap_or(0);
        t.touched
            .put((branch, path.to_path_buf()), n.saturating_add(1));
        n >= PROBED_LOOKUPS
    }

    /// Records the full listing `names` of `path` in `branch`.
    pub fn insert<'a>(
        &self,
        branch: BranchId,
        path: &Path,
        names: impl ExactSizeIterator<Item = &'a OsStr>,
    ) -> Option<Arc<Names>> {
        if names.len() > MAX_DIR_NAMES {
            return None;
        }
        let mut v: Vec<u64> = names.map(hash).collect();
        v.sort_unstable();
        v.dedup();
        let n = Arc::new(Names(v.into_boxed_slice()));
        let mut t = self.table.lock();
        let add = charge(path, &n);
        if let Some(old) = t.dirs.put((branch, path.to_path_buf()), Arc::clone(&n)) {
            t.hashes -= charge(path, &old);
        }
        t.hashes += add;
        while t.hashes > MAX_HASHES {
            match t.dirs.pop_lru() {
                Some(((_, p), old)) => t.hashes -= charge(&p, &old),
                None => break,
            }
        }
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn absent_only_when_not_listed() {
        let ix = LayerIndex::default();
        let names = [OsStr::new("a"), OsStr::new(".wh.b")];
        let n = ix
            .insert(BranchId(1), Path::new("d"), names.into_iter())
            .unwrap();
        assert!(n.may_hold(OsStr::new("a")));
        assert!(n.may_hold(OsStr::new(".wh.b")));
        assert!(!n.may_hold(OsStr::new("b")));
        assert!(ix.get(BranchId(1), Path::new("d")).is_some());
        assert!(ix.get(BranchId(2), Path::new("d")).is_none());
        assert!(ix.get(BranchId(1), Path::new("e")).is_none());
    }

    #[test]
    fn a_successor_waits_for_every_older_stack() {
        let first = LayerIndex::default();
        assert!(first.settled());
        let (a, b) = (Arc::new(()), Arc::new(()));
        let second = first.successor(&a);
        let third = second.successor(&b);
        assert!(!second.settled() && !third.settled());
        drop(b);
        assert!(!third.settled(), "the stack before the last one is in use");
        let held = Arc::clone(&a);
        drop(a);
        assert!(!second.settled(), "a view or request still holds it");
        drop(held);
        assert!(second.settled() && third.settled());
    }

    #[test]
    fn memory_stays_bounded() {
        let ix = LayerIndex::default();
        let names: Vec<String> = (0..4096).map(|i| format!("n{i}")).collect();
        for d in 0..200 {
            ix.insert(
                BranchId(0),
                Path::new(&format!("d{d}")),
                names.iter().map(OsStr::new),
            );
        }
        assert!(ix.table.lock().hashes <= MAX_HASHES);
        // the most recent is kept, the oldest dropped
        assert!(ix.get(BranchId(0), Path::new("d199")).is_some());
        assert!(ix.get(BranchId(0), Path::new("d0")).is_none());
    }
}
