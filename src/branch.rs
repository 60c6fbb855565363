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

use crate::backing::{Backing, Backings, Identity};
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
    /// without opening them (a stat, the markers read by name, then the
    /// handle; no fd, so no fd-cache churn): wherever objects can be
    /// reopened by handle. A mount point inside a branch opened directly
    /// is told by the mount id `name_to_handle_at` reports.
    ///
    /// The stat and the handle are two walks of one name. In a branch the
    /// union never changes, nothing can replace the name between them. In
    /// a writable one the union's own changes cannot either, for the
    /// lookups the kernel sends with the parent directory locked (LOOKUP,
    /// READDIRPLUS: every namespace change of that directory waits for
    /// them), and copy-up and publishing only place objects where the
    /// branch had none (`renameat2(RENAME_NOREPLACE)`), which a lookup saw
    /// as absent and went below. What can replace it: a revalidating
    /// LOOKUP (the kernel holds no lock of the parent for it) racing a
    /// rename or unlink-and-create of the name, and changes behind the
    /// union's back (udba). So objects of writable branches keep what the
    /// stat saw, and the first fd opened by the handle must be that object
    /// (`Backing::verify`): a swap is caught there, as a stale layer
    /// (ESTALE, which the kernel answers with a fresh lookup for the
    /// syscalls that retry), never served as the other object.
    pub fn reach_by_name(&self) -> bool {
        self.handle_mount.is_some()
    }

    /// A backing object for `dir/name`, which a lookup found with stat
    /// `st`, known by its file handle only (no fd opened). `None` when the
    /// filesystem gives no handle for it, or it lies on another mount (a
    /// mount point in a branch opened directly, see `is_mount_point`):
    /// such an object needs its fd.
    pub fn backing_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &std::ffi::OsStr,
        st: &nix::sys::stat::FileStat,
    ) -> Option<Arc<Backing>> {
        let mount = self.handle_mount.as_ref()?;
        let (h, on) = sys::fs::name_to_handle_at(dir, name).ok()?;
        if on != self.mnt_id {
            return None;
        }
        let expect = self.mode.writable().then(|| Identity::of(st));
        Some(Backing::from_handle(&self.backings, mount, h, expect))
    }

    /// Whether objects found here may be held by their name alone until an
    /// fd of them is needed (`Backing::named`): non-directories of a
    /// branch the union never changes, where the lookup would otherwise
    /// take a handle (an fd for the objects of branches without handles
    /// is opened by the probe already). A `find` or `ls -l` never opens
    /// the files it sees: their handles were a syscall each for nothing.
    /// Directories keep their handle: nearly every one looked up is
    /// opened (listed, or looked in), and a handle reopens it in one call.
    pub fn lazy_reach(&self, st: &nix::sys::stat::FileStat) -> bool {
        !self.mode.writable()
            && self.handle_mount.is_some()
            && st.st_mode & libc::S_IFMT != libc::S_IFDIR
    }

    /// A backing object of this branch for O_PATH `fd`, and whether the
    /// object lies on another mount than the branch (a mount point of a
    /// branch opened directly: its fd is pinned, see `backing`).
    pub fn backing_on(&self, fd: OwnedFd) -> (Arc<Backing>, bool) {
        if let Some(mount) = &self.handle_mount {
            if let Ok((h, on)) = sys::fs::name_to_handle_mnt(fd.as_fd()) {
                if on == self.mnt_id {
                    return (Backing::cached(&self.backings, mount, h, fd), false);
                }
                return (self.pinned(fd), self.view == BranchView::Direct);
            }
        }
        let other = self.is_mount_point(fd.as_fd());
        (self.pinned(fd), other)
    }

    /// A backing object of this branch for O_PATH `fd`.
    pub fn backing(&self, fd: OwnedFd) -> Arc<Backing> {
        Backing::new(
            &self.backings,
            self.handle_mount.as_ref().map(|m| (m, self.mnt_id)),
            fd,
        )
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
#[allow(clippy::unwrap_used, clippy::panic)] // a test fails by panicking
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::path::Path;

    /// Handles need CAP_DAC_READ_SEARCH (root): skipped without, unless
    /// UNIONFS_TEST_REQUIRE=1.
    fn handles_or_skip(b: &Branch) -> bool {
        if b.handle_mount.is_some() {
            return true;
        }
        if std::env::var_os("UNIONFS_TEST_REQUIRE").is_some_and(|v| v == "1") {
            panic!("UNIONFS_TEST_REQUIRE=1 but no file handles here");
        }
        eprintln!("SKIP: no file handles here (not root?)");
        false
    }

    fn open(dir: &Path, mode: Mode) -> Branch {
        Branch::open(BranchId(0), dir, mode, false, &Backings::new(64)).unwrap()
    }

    /// A name replaced between the lookup's stat and its handle, in a
    /// writable branch: the handle's first fd is refused as stale, never
    /// served as the object the stat did not see.
    #[test]
    fn a_name_swapped_between_stat_and_handle_is_caught() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), "stat'd").unwrap();
        std::fs::write(tmp.path().join("b"), "swapped in").unwrap();
        let b = open(tmp.path(), Mode::RW);
        if !handles_or_skip(&b) {
            return;
        }
        let a = OsStr::new("a");
        let st = sys::fs::stat_at(b.root(), a).unwrap();
        std::fs::rename(tmp.path().join("b"), tmp.path().join("a")).unwrap();
        let swapped = b.backing_at(b.root(), a, &st).unwrap();
        assert!(matches!(swapped.fd(), Err(crate::error::Error::StaleInode)));
        // and stays so
        assert!(swapped.fd().is_err());

        // A directory swapped for a file of another inode, likewise.
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        let st = sys::fs::stat_at(b.root(), OsStr::new("d")).unwrap();
        std::fs::remove_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d"), "").unwrap();
        let swapped = b.backing_at(b.root(), OsStr::new("d"), &st).unwrap();
        assert!(swapped.fd().is_err());

        // Unswapped: the object opens, again after its fd left the cache.
        let st = sys::fs::stat_at(b.root(), a).unwrap();
        let same = b.backing_at(b.root(), a, &st).unwrap();
        let fd = same.fd().unwrap();
        assert_eq!(sys::fs::fstat(fd.as_fd()).unwrap().st_ino, st.st_ino);
        drop(fd);
        let fillers: Vec<_> = (0..200)
            .map(|_| b.backing(sys::fs::open_path_at(b.root(), a).unwrap()))
            .collect();
        assert!(same.fd().is_ok());
        drop(fillers);
    }

    /// A file bind-mounted inside a branch opened directly: its handle
    /// belongs to another mount, so it is held by its fd.
    #[test]
    fn an_object_on_another_mount_is_not_held_by_a_handle() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), "under").unwrap();
        std::fs::write(tmp.path().join("g"), "over").unwrap();
        let b = open(tmp.path(), Mode::RW);
        if !handles_or_skip(&b) {
            return;
        }
        let f = tmp.path().join("f");
        nix::mount::mount(
            Some(&tmp.path().join("g")),
            &f,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        // Nothing may panic before the unmount.
        let by_name = sys::fs::stat_at(b.root(), OsStr::new("f"))
            .map(|st| b.backing_at(b.root(), OsStr::new("f"), &st).is_some());
        nix::mount::umount2(&f, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert!(!by_name.unwrap(), "held by a handle of another mount");
    }

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
