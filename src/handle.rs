//! Open file and directory handles: Fh -> Handle.
//!
//! Invariant: a directory handle's listing is a snapshot taken at opendir
//! (and retaken only when the listing is restarted from offset 0 after it
//! was read), so offsets are stable while the directory changes.
//! (The listing type, `inode::Listing`, lives with the nodes, which keep
//! one too.)
//! Locks: the table is a `DashMap` (shard lock only for insert/get/remove);
//! a directory handle's snapshot sits behind its own `Mutex`.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::branch::BranchId;
use crate::error::{Error, Result};
use crate::inode::{Ino, Listing};

/// A file handle number handed to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fh(pub u64);

/// An open regular file (or other non-directory).
#[derive(Debug)]
pub struct FileHandle {
    /// The node it was opened on.
    pub ino: Ino,
    /// The branch the fd belongs to.
    pub branch: BranchId,
    /// The open fd on the backing object.
    pub fd: OwnedFd,
    /// For a file opened read-only on a lower branch and copied up since:
    /// a read-only fd on the upper copy, so reads never see stale data.
    pub upgraded: std::sync::OnceLock<OwnedFd>,
}

impl FileHandle {
    /// A handle on `fd`, opened on `branch`.
    pub fn new(ino: Ino, branch: BranchId, fd: OwnedFd) -> Self {
        FileHandle {
            ino,
            branch,
            fd,
            upgraded: std::sync::OnceLock::new(),
        }
    }
}

/// An open directory.
#[derive(Debug)]
pub struct DirHandle {
    /// The directory's node.
    pub ino: Ino,
    /// Its listing.
    pub listing: Mutex<Listing>,
}

/// Any open handle.
#[derive(Debug)]
pub enum Handle {
    /// A file.
    File(FileHandle),
    /// A directory.
    Dir(DirHandle),
}

/// Fh -> Handle.
#[derive(Debug, Default)]
pub struct HandleTable {
    map: DashMap<Fh, Arc<Handle>>,
    next: AtomicU64,
}

impl HandleTable {
    /// Stores a handle and returns its number.
    pub fn insert(&self, h: Handle) -> Fh {
        let fh = Fh(self.next.fetch_add(1, Ordering::Relaxed) + 1);
        self.map.insert(fh, Arc::new(h));
        fh
    }

    /// The handle `fh`.
    pub fn get(&self, fh: Fh) -> Result<Arc<Handle>> {
        self.map
            .get(&fh)
            .map(|h| Arc::clone(h.value()))
            .ok_or(Error::BadHandle)
    }

    /// The file handle `fh`.
    pub fn file(&self, fh: Fh) -> Result<Arc<Handle>> {
        let h = self.get(fh)?;
        match &*h {
            Handle::File(_) => Ok(h),
            Handle::Dir(_) => Err(Error::IsDir),
        }
    }

    /// Forgets `fh`.
    pub fn remove(&self, fh: Fh) -> Option<Arc<Handle>> {
        self.map.remove(&fh).map(|(_, h)| h)
    }

    /// True when any open handle satisfies `f`.
    pub fn any(&self, f: impl Fn(&Handle) -> bool) -> bool {
        self.map.iter().any(|h| f(h.value()))
    }

    /// Number of open handles.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no handle is open.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
