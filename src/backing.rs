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
//! That knowledge stays true, because a visible xattr can only appear
//! through this union's setxattr (which forgets it) — lowers never change,
//! the upper is the union's alone while mounted, a copy-up makes a new
//! backing object, and the kernel only removes xattrs on its own (kill-priv;
//! an IMA appraisal policy that writes `security.ima` into the upper is the
//! exception, and not supported).
//! Locks: one of `SHARDS` cache mutexes, held only for one get/put/remove;
//! the xattr knowledge is one atomic.

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

/// What is known of an object's visible xattrs (see `Backing::xattrs`).
const XATTRS_UNKNOWN: u64 = 0;
const XATTRS_NONE: u64 = 1;
const XATTRS_SOME: u64 = 2;
const XATTRS_MASK: u64 = 3;

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
    /// The low two bits: what a listing showed (`XATTRS_*`). Above them:
    /// an era, moved on by every change through the union, so that a
    /// listing taken before a change cannot record its answer after it.
    xattrs: AtomicU64,
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
            xattrs: AtomicU64::new(0),
        })
    }

    /// An object known by its handle only (no fd opened yet), on the
    /// filesystem of `mount`.
    pub fn from_handle(mount: &Arc<OwnedFd>, h: ObjectHandle) -> Arc<Backing> {
        Arc::new(Backing {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            mount: Some(Arc::clone(mount)),
            reach: Reach::Handle(h),
            xattrs: AtomicU64::new(0),
        })
    }

    /// An object whose fd stays open (branch roots).
    pub fn pinned(fd: OwnedFd) -> Arc<Backing> {
        Self::new(None, fd)
    }

    /// True when the object is known to have no visible xattrs.
    pub fn has_no_xattrs(&self) -> bool {
        self.xattrs.load(Ordering::Acquire) & XATTRS_MASK == XATTRS_NONE
    }

    /// True when a listing of the object's visible xattrs was recorded.
    pub fn xattrs_listed(&self) -> bool {
        self.xattrs.load(Ordering::Acquire) & XATTRS_MASK != XATTRS_UNKNOWN
    }

    /// The xattr era to hand to `note_xattrs`: read it before listing.
    pub fn xattr_era(&self) -> u64 {
        self.xattrs.load(Ordering::Acquire) & !XATTRS_MASK
    }

    /// Records that a listing begun in `era` showed visible xattrs or not;
    /// dropped when the union changed the object's xattrs since.
    pub fn note_xattrs(&self, era: u64, any: bool) {
        let known = if any { XATTRS_SOME } else { XATTRS_NONE };
        let _ = self.xattrs.compare_exchange(
            era | XATTRS_UNKNOWN,
            era | known,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Forgets what is known of the object's xattrs: call after setting or
    /// removing one through the union.
    pub fn forget_xattrs(&self) {
        let _ = self
            .xattrs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some((v & !XATTRS_MASK).wrapping_add(XATTRS_MASK + 1))
            });
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

    #[test]
    fn xattr_knowledge_follows_listings_and_changes() {
        let b = backing();
        assert!(!b.xattrs_listed() && !b.has_no_xattrs());
        let era = b.xattr_era();
        b.note_xattrs(era, false);
        assert!(b.xattrs_listed() && b.has_no_xattrs());
        b.forget_xattrs();
        assert!(!b.xattrs_listed() && !b.has_no_xattrs());
        let era = b.xattr_era();
        b.note_xattrs(era, true);
        assert!(b.xattrs_listed() && !b.has_no_xattrs());
    }

    /// A listing that began before a change through the union must not
    /// record its (stale) answer after the change.
    #[test]
    fn a_listing_older_than_a_change_is_dropped() {
        let b = backing();
        let era = b.xattr_era();
        b.forget_xattrs(); // an xattr was set meanwhile
        b.note_xattrs(era, false);
        assert!(!b.has_no_xattrs() && !b.xattrs_listed());
    }
}
