//! One branch of the union (the upper or a lower), opened once as an
//! O_PATH directory fd; and the inode-number folding that makes st_ino
//! unique across branches. The stack of branches is `stack::BranchStack`.
//!
//! Invariant: a `Branch` never changes once opened; a `BranchId` names a
//! branch for the life of the union (it is never a position that can shift
//! under a running request). `InoFolder` numbers each device once, for the
//! life of the union, whatever stack it is seen in.
//! Locks: the device table is a `DashMap` (one shard lock per access).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dashmap::DashMap;

use crate::backing::{Backing, Backings};
use crate::error::Result;
use crate::mode::Mode;
use crate::sys;
use crate::whiteout;

/// Stable identifier of a branch within a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BranchId(pub u16);

/// How a branch was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchView {
    /// A detached clone of the branch's mount without submounts (root):
    /// lookups see what lies under mount points, as overlayfs does.
    Clone,
    /// The directory itself (no privilege for clones): submounts show through.
    Direct,
}

/// One branch of the union. Cloning it shares its fds (a live branch
/// change builds the next stack from clones of the branches it keeps).
#[derive(Debug, Clone)]
pub struct Branch {
    /// Stable id.
    pub id: BranchId,
    /// The path the user gave, canonicalized (for messages only).
    pub path: PathBuf,
    /// O_PATH fd of the branch root.
    pub root: Arc<OwnedFd>,
    /// A readable fd of the root for `open_by_handle_at` (which refuses
    /// O_PATH fds), when objects of this branch can be reopened by handle
    /// and so need not keep their fds open (see `backing`).
    pub handle_mount: Option<Arc<OwnedFd>>,
    /// Its AUFS mode: writable or not, whiteouts honoured or not.
    pub mode: Mode,
    /// st_dev of the branch root.
    pub dev: u64,
    /// How it was opened.
    pub view: BranchView,
    /// Mount id of the branch root (to notice mount points in a Direct view).
    pub mnt_id: u64,
    /// The filesystem UUID the kernel knows (for overlayfs file handles).
    pub fs_uuid: Option<[u8; 16]>,
    /// unionfs-fuse whiteout tree (`.unionfs/` or `.unionfs-fuse/`), if present.
    pub hidden: Option<Arc<OwnedFd>>,
    /// Whether a char 0:0 device in this branch is a whiteout. False only for
    /// an upper recorded in AUFS format, where such a device is a user's device.
    pub char_whiteouts: bool,
    /// Whether the branch's filesystem lists every xattr it has (local disk
    /// filesystems and tmpfs; network ones have readable xattrs they do not
    /// list), so that an empty listing means no xattr at all.
    pub lists_all_xattrs: bool,
    /// The union's backing state (fd cache, xattr generation), handed to
    /// every backing object made for this branch.
    pub backings: Arc<Backings>,
}

/// Filesystems (`f_type`) whose `listxattr` shows every xattr `getxattr`
/// can read: ext2/3/4, xfs, btrfs, tmpfs, f2fs.
const LISTS_ALL_XATTRS: [i64; 5] = [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0xF2F5_2010];

impl Branch {
    /// Opens the branch at `path` for the union whose backing state is
    /// `backings`.
    pub fn open(
        id: BranchId,
        path: &Path,
        mode: Mode,
        clone: bool,
        backings: &Arc<Backings>,
    ) -> Result<Self> {
        let (root, view) = if clone {
            match sys::mount::clone_tree(path) {
                Ok(fd) => (fd, BranchView::Clone),
                Err(_) => (sys::fs::open_path_abs(path)?, BranchView::Direct),
            }
        } else {
            (sys::fs::open_path_abs(path)?, BranchView::Direct)
        };
        let st = sys::fs::fstat(root.as_fd())?;
        let mnt_id = sys::fs::mount_id_fd(root.as_fd()).unwrap_or(0);
        let fs_uuid = sys::fs::fs_uuid(root.as_fd()).ok();
        let lists_all_xattrs =
            sys::fs::fs_type(root.as_fd()).is_ok_and(|t| LISTS_ALL_XATTRS.contains(&t));
        let mut hidden = None;
        for name in whiteout::UNIONFS_FUSE_DIRS {
            if let Ok(fd) = sys::fs::open_path_at(root.as_fd(), OsStr::new(name)) {
                if sys::fs::fstat(fd.as_fd())
                    .map(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR)
                    .unwrap_or(false)
                {
                    hidden = Some(Arc::new(fd));
                    break;
                }
            }
        }
        // Handles work where the filesystem exports them and we may open
        // them (CAP_DAC_READ_SEARCH): try it once on the root.
        let handle_mount = sys::fs::reopen(
            root.as_fd(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        )
        .ok()
        .filter(|m| {
            sys::fs::name_to_handle(root.as_fd())
                .and_then(|h| sys::fs::open_by_handle(m.as_fd(), &h, nix::fcntl::OFlag::O_PATH))
                .is_ok()
        })
        .map(Arc::new);
        Ok(Branch {
            id,
            path: path.to_path_buf(),
            root: Arc::new(root),
            handle_mount,
            mode,
            dev: st.st_dev,
            view,
            mnt_id,
            fs_uuid,
            lists_all_xattrs,
            hidden,
            char_whiteouts: true,
            backings: Arc::clone(backings),
        })
    }

    /// Whether whiteouts and opaque markers in this branch hide what lies
    /// below (`rw`, `ro+wh`, `rr+wh`; not `ro`, `rr`: AUFS does not even
    /// look for them there).
    pub fn whiteouts(&self) -> bool {
        self.mode.wh
    }

    /// Whether a char 0:0 device here is a whiteout.
    pub fn char_whiteouts(&self) -> bool {
        self.char_whiteouts && self.mode.wh
    }

    /// The root fd.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// True when directory `fd` of this branch lies on another mount (only
    /// possible in a Direct view: clones have no submounts).
    pub fn is_mount_point(&self, fd: BorrowedFd<'_>) -> bool {
        self.view == BranchView::Direct
            && sys::fs::mount_id_fd(fd).is_ok_and(|id| id != self.mnt_id)
    }

    /// Whether lookups here may reach objects by name and file handle
    /// without opening them: a branch the union never changes (so the name
    /// cannot be swapped between the stat and the handle), whose objects
    /// can be reopened by handle, seen through a mount clone (so no mount
    /// point inside needs an fd to be recognised).
    pub fn reach_by_name(&self) -> bool {
        !self.mode.writable() && self.handle_mount.is_some() && self.view != BranchView::Direct
    }

    /// A backing object for `dir/name` known by its file handle only;
    /// `None` when the filesystem gives no handle for it.
    pub fn backing_at(&self, dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> Option<Arc<Backing>> {
        let mount = self.handle_mount.as_ref()?;
        let h = sys::fs::name_to_handle_at(dir, name).ok()?;
        Some(Backing::from_handle(&self.backings, mount, h))
    }

    /// A backing object of this branch for O_PATH `fd`.
    pub fn backing(&self, fd: OwnedFd) -> Arc<Backing> {
        Backing::new(&self.backings, self.handle_mount.as_ref(), fd)
    }

    /// A backing object of this branch whose fd stays open (roots).
    pub fn pinned(&self, fd: OwnedFd) -> Arc<Backing> {
        Backing::pinned(&self.backings, fd)
    }
}

/// Maps backing (st_dev, st_ino) to one 64-bit inode number, as overlayfs
/// `xino` does: objects on the first device keep their own st_ino; objects on
/// the n-th device seen get n in the top 8 bits. Inode 1 is the union root.
#[derive(Debug, Default)]
pub struct InoFolder {
    devs: DashMap<u64, u64>,
    next: std::sync::atomic::AtomicU64,
}

/// Bits of st_ino kept from the backing inode.
const INO_BITS: u32 = 56;

impl InoFolder {
    /// The number of device `dev` (the next free one when it is new).
    pub fn index(&self, dev: u64) -> u64 {
        if let Some(i) = self.devs.get(&dev) {
            return *i;
        }
        // The shard lock of `entry` makes the counter bump happen once per device.
        *self
            .devs
            .entry(dev)
            .or_insert_with(|| self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// Folds (dev, ino) into one union inode number (never 0 or 1).
    pub fn fold(&self, dev: u64, ino: u64) -> u64 {
        let idx = self.index(dev);
        let low = ino & ((1u64 << INO_BITS) - 1);
        let folded = low | (idx << INO_BITS);
        // 0 is invalid and 1 is the union root: move them out of the way
        // into a range backing filesystems do not hand out.
        if folded <= 1 {
            folded | (0xffu64 << INO_BITS)
        } else {
            folded
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_keeps_first_device_inos_and_separates_others() {
        let f = InoFolder::default();
        assert_eq!(f.fold(10, 1234), 1234);
        let other = f.fold(20, 1234);
        assert_ne!(other, 1234);
        assert_eq!(other & ((1 << INO_BITS) - 1), 1234);
        assert_eq!(f.fold(20, 1234), other, "stable");
        assert_ne!(f.fold(10, 1), 1, "1 is the root");
        assert_ne!(f.fold(10, 0), 0);
    }
}
