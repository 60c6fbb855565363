//! How a layer reaches its object in a branch without holding an open fd
//! for every inode the kernel remembers.
//!
//! Invariant: an object whose filesystem gives persistent handles
//! (`name_to_handle_at`) is held by its handle, and its O_PATH fd lives only
//! in a bounded LRU cache (reopened by handle on a miss); so the daemon's
//! open fds do not grow with the number of inodes looked up. A lookup in a
//! read-only branch may hand over a handle alone (no fd opened yet).
//! Objects without handles (no CAP_DAC_READ_SEARCH, or a filesystem
//! without export support) keep their fd pinned.
//!
//! A backing object also remembers that it has no visible xattrs, once a
//! listing showed none: the kernel asks for `security.capability` before
//! every write and chown, and the answer is then given without a syscall.
//! That knowledge is trusted only while no xattr was set or removed
//! through the union since the listing (one process-wide generation,
//! `forget_xattrs`: sets are rare, and an object may be served by several
//! backing objects over time, one per lookup), and it is only recorded on
//! filesystems whose listings show every xattr (the caller decides). A
//! visible xattr cannot appear otherwise: lowers never change, the upper is
//! the union's alone while mounted, a copy-up makes a new backing object,
//! and the kernel only removes xattrs on its own (kill-priv; an IMA
//! appraisal policy that writes `security.ima` into the upper is the
//! exception, and not supported).
//! Locks: one of `SHARDS` cache mutexes, held only for one get/put/remove;
//! the xattr knowledge is atomics.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use lru::LruCache;
use nix::fcntl::OFlag;
use parking_lot::Mutex;

use crate::error::Result;
use crate::sys;
use crate::sys::fs::ObjectHandle;

const SHARDS: usize = 32;

/// Bumped by every xattr change through the union: what a backing object
/// learnt before it is no longer trusted.
static XATTR_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Default number of cached O_PATH fds (all shards together).
pub const DEFAULT_CACHED_FDS: usize = 4096;

struct FdCache {
    shards: Vec<Mutex<LruCache<u64, Arc<OwnedFd>>>>,
}

static CACHE: OnceLock<FdCache> = OnceLock::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn cache() -> &'static FdCache {
    CACHE.get_or_init(|| FdCache::new(DEFAULT_CACHED_FDS))
}

impl FdCache {
    fn new(total: usize) -> Self {
        let per = std::num::NonZeroUsize::new((total / SHARDS).max(1))
            .unwrap_or(std::num::NonZeroUsize::MIN);
        FdCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per)))
                .collect(),
        }
    }

    fn shard(&self, id: u64) -> &Mutex<LruCache<u64, Arc<OwnedFd>>> {
        &self.shards[(id as usize) % SHARDS]
    }
}

/// Sets the bound on cached fds; effective only before the first use.
pub fn configure(total: usize) {
    let _ = CACHE.set(FdCache::new(total));
}

/// Number of fds the cache holds right now.
pub fn cached_fds() -> usize {
    cache().shards.iter().map(|s| s.lock().len()).sum()
}

#[derive(Debug)]
enum Reach {
    Pinned(Arc<OwnedFd>),
    Handle(ObjectHandle),
}

/// One object in one branch.
#[derive(Debug)]
pub struct Backing {
    id: u64,
    mount: Option<Arc<OwnedFd>>,
    reach: Reach,
    /// What the last listing of its visible xattrs showed, and when: the
    /// xattr generation it began in, shifted left by one, with bit 0 set
    /// when it showed none (0: never listed).
    listed: AtomicU64,
}

/// The current xattr generation (see `Backing::note_no_xattrs`).
pub fn xattr_generation() -> u64 {
    XATTR_GENERATION.load(Ordering::Acquire)
}

/// Forgets what every backing object knows of its xattrs: call after an
/// xattr was set or removed through the union.
pub fn forget_xattrs() {
    XATTR_GENERATION.fetch_add(1, Ordering::AcqRel);
}

impl Backing {
    /// The object behind `fd`. With `mount` (a readable fd of its
    /// filesystem), keeps a handle and lets the cache hold the fd.
    pub fn new(mount: Option<&Arc<OwnedFd>>, fd: OwnedFd) -> Arc<Backing> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let reach = if mount.is_some() {
            match sys::fs::name_to_handle(fd.as_fd()) {
                Ok(h) => {
                    cache().shard(id).lock().put(id, Arc::new(fd));
                    Reach::Handle(h)
                }
                Err(_) => Reach::Pinned(Arc::new(fd)),
            }
        } else {
            Reach::Pinned(Arc::new(fd))
        };
        Arc::new(Backing {
            id,
            mount: mount.cloned(),
            reach,
            listed: AtomicU64::new(0),
        })
    }

    /// An object known by its handle only (no fd opened yet), on the
    /// filesystem of `mount`.
    pub fn from_handle(mount: &Arc<OwnedFd>, h: ObjectHandle) -> Arc<Backing> {
        Arc::new(Backing {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            mount: Some(Arc::clone(mount)),
            reach: Reach::Handle(h),
            listed: AtomicU64::new(0),
        })
    }

    /// An object whose fd stays open (branch roots).
    pub fn pinned(fd: OwnedFd) -> Arc<Backing> {
        Self::new(None, fd)
    }

    /// True when the object is known to have no visible xattrs.
    pub fn has_no_xattrs(&self) -> bool {
        self.listed.load(Ordering::Acquire) == (xattr_generation() << 1 | 1)
    }

    /// True when a listing of the object's visible xattrs was recorded and
    /// no xattr was changed through the union since (so listing again
    /// would tell nothing new).
    pub fn xattrs_listed(&self) -> bool {
        self.listed.load(Ordering::Acquire) >> 1 == xattr_generation()
    }

    /// Records what a listing begun in `generation` (read it with
    /// `xattr_generation` before listing) showed: visible xattrs or none.
    /// Not trusted when an xattr was changed through the union since.
    pub fn note_xattrs(&self, generation: u64, any: bool) {
        self.listed
            .store(generation << 1 | u64::from(!any), Ordering::Release);
    }

    /// An O_PATH fd of the object (cached, or reopened by handle).
    pub fn fd(&self) -> Result<Arc<OwnedFd>> {
        match &self.reach {
            Reach::Pinned(fd) => Ok(Arc::clone(fd)),
            Reach::Handle(h) => {
                let mount = self.mount.as_ref().ok_or(crate::error::Error::StaleInode)?;
                let shard = cache().shard(self.id);
                if let Some(fd) = shard.lock().get(&self.id) {
                    return Ok(Arc::clone(fd));
                }
                let fd = Arc::new(sys::fs::open_by_handle(
                    mount.as_fd(),
                    h,
                    OFlag::O_PATH | OFlag::O_NOFOLLOW,
                )?);
                shard.lock().put(self.id, Arc::clone(&fd));
                Ok(fd)
            }
        }
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Reach::Handle(_) = self.reach {
            if let Some(c) = CACHE.get() {
                c.shard(self.id).lock().pop(&self.id);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)] // a test fails by panicking
mod tests {
    use super::*;

    fn backing() -> Arc<Backing> {
        Backing::pinned(OwnedFd::from(std::fs::File::open("/").expect("open /")))
    }

    /// The tests that move the process-wide generation take turns.
    static GENERATION: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn xattr_knowledge_holds_until_any_change() {
        let _turn = GENERATION.lock();
        let (b, c) = (backing(), backing());
        assert!(!b.has_no_xattrs());
        b.note_xattrs(xattr_generation(), false);
        c.note_xattrs(xattr_generation(), false);
        assert!(b.has_no_xattrs() && c.has_no_xattrs());
        // A change through another backing object of the same file, or of
        // any other: both forget.
        forget_xattrs();
        assert!(!b.has_no_xattrs() && !c.has_no_xattrs());
        assert!(!b.xattrs_listed());
        // One with xattrs: listed, not empty.
        b.note_xattrs(xattr_generation(), true);
        assert!(b.xattrs_listed() && !b.has_no_xattrs());
    }

    /// A listing that began before a change must not be trusted after it.
    #[test]
    fn a_listing_older_than_a_change_is_not_trusted() {
        let _turn = GENERATION.lock();
        let b = backing();
        let generation = xattr_generation();
        forget_xattrs(); // an xattr was set meanwhile
        b.note_xattrs(generation, false);
        assert!(!b.has_no_xattrs() && !b.xattrs_listed());
    }
}
