//! Attribute operations: getattr, readlink, access, statfs, setattr.
//!
//! Invariant: attributes are the topmost instance's, except the union's
//! own rules (merged directories report nlink 1; a hard-linked copy reports
//! its recorded union count); setattr changes only an upper instance.
//! Locks: node state (read, for a snapshot); copy-up's striped lock.

use std::ffi::OsString;
use std::os::fd::AsFd;

use super::{Attr, Caller, UnionFs};
use crate::copy_up::CopyUpData;
use crate::error::{Error, Result};
use crate::handle::{Fh, Handle};
use crate::inode::{Ino, Kind};
use crate::stack::BranchStack;
use crate::sys;
use crate::sys::fs::SetTime;

/// Filesystem statistics as the union reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Maximum name length.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// `access(2)` write bit.
pub const W_OK: u32 = 2;
/// Execute/search permission.
pub const X_OK: u32 = 1;

impl UnionFs {
    /// Attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let snapshot = self.stack.load_full();
        self.getattr_in(&snapshot, ino)
    }

    /// `getattr` on the operation's stack snapshot.
    pub(super) fn getattr_in(&self, stack: &BranchStack, ino: Ino) -> Result<Attr> {
        let node = self.inodes.get(ino)?;
        // A directory changed through one of several writable branches, or
        // across a branch change, is read as the whole stack shows it now.
        let state = if node.kind == Kind::Dir && !stack.is_view() {
            self.fresh_state(stack, &node)
                .unwrap_or_else(|_| node.snapshot())
        } else {
            node.snapshot()
        };
        let st = sys::fs::fstat(state.top()?.fd()?.as_fd())?;
        Ok(self.attr_of(stack, node.st_ino, &st, &state))
    }

    /// Attributes of `ino` as seen through open handle `fh` (fstat(2)),
    /// which also works for a file unlinked since it was opened.
    pub fn getattr_fh(&self, ino: Ino, fh: Fh) -> Result<Attr> {
        let snapshot = self.stack.load_full();
        let stack = &*snapshot;
        let h = self.handles.file(fh)?;
        let Handle::File(f) = &*h else {
            return self.getattr_in(stack, ino);
        };
        let node = self.inodes.get(ino)?;
        let state = node.snapshot();
        if state.is_metacopy() {
            // The fd is on the data below; the attributes are the top's.
            return self.getattr_in(stack, ino);
        }
        // Through the fd reads use: the upper copy once a file opened on a
        // lower branch was copied up (its lower size is stale then).
        let st = sys::fs::fstat(self.read_fd(stack, f)?)?;
        Ok(self.attr_of(stack, node.st_ino, &st, &state))
    }

    /// Target of symlink `ino`.
    pub fn readlink(&self, ino: Ino) -> Result<OsString> {
        let node = self.inodes.get(ino)?;
        if node.kind != Kind::Symlink {
            return Err(Error::Invalid);
        }
        let state = node.snapshot();
        sys::fs::readlink(state.top()?.fd()?.as_fd())
    }

    /// `access(2)` by the classic owner/group/other rules (used when the
    /// kernel does not check permissions itself).
    pub fn access(&self, ino: Ino, mask: u32, caller: Caller) -> Result<()> {
        let snapshot = self.stack.load_full();
        let stack = &*snapshot;
        let attr = self.getattr_in(stack, ino)?;
        if mask & W_OK != 0 && stack.upper().is_none() {
            return Err(Error::ReadOnly);
        }
        let perm = u32::from(attr.perm);
        if caller.uid == 0 {
            // root may do anything but execute a file nobody may execute.
            if mask & X_OK != 0 && attr.kind != Kind::Dir && perm & 0o111 == 0 {
                return Err(Error::Access);
            }
            return Ok(());
        }
        let bits = if caller.uid == attr.uid {
            (perm >> 6) & 7
        } else if caller.gid == attr.gid {
            (perm >> 3) & 7
        } else {
            perm & 7
        };
        if mask & 7 & !bits != 0 {
            return Err(Error::Access);
        }
        Ok(())
    }

    /// Statistics of the filesystem new objects land on (the upper, else the
    /// topmost lower), or with `StatfsMode::Sum` of all branches.
    pub fn statfs(&self) -> Result<StatFs> {
        let snapshot = self.stack.load_full();
        let stack = &*snapshot;
        let namelen = |max: u64| {
            u32::try_from(
                u64::try_from(self.opts.name_max)
                    .unwrap_or(u64::MAX)
                    .min(max),
            )
            .unwrap_or(255)
        };
        if self.opts.statfs == StatfsMode::Sum {
            return self.statfs_sum(stack, namelen);
        }
        let b = stack
            .upper()
            .or_else(|| stack.iter().next())
            .ok_or(Error::StaleInode)?;
        let s = sys::fs::statvfs(b.root())?;
        Ok(StatFs {
            blocks: s.blocks(),
            bfree: s.blocks_free(),
            bavail: s.blocks_available(),
            files: s.files(),
            ffree: s.files_free(),
            bsize: u32::try_from(s.block_size()).unwrap_or(4096),
            namelen: namelen(s.name_max()),
            frsize: u32::try_from(s.fragment_size()).unwrap_or(4096),
        })
    }

    /// AUFS `sum`: blocks and inodes of every branch's filesystem added
    /// up, each filesystem (`st_dev` of the branch root) counted once;
    /// block counts in the smallest fragment size among them, the name
    /// length the smallest.
    fn statfs_sum(&self, stack: &BranchStack, namelen: impl Fn(u64) -> u32) -> Result<StatFs> {
        let mut seen = Vec::new();
        let mut all = Vec::new();
        for b in stack.iter() {
            let dev = sys::fs::fstat(b.root())?.st_dev;
            if seen.contains(&dev) {
                continue;
            }
            seen.push(dev);
            all.push(sys::fs::statvfs(b.root())?);
        }
        let unit = all
            .iter()
            .map(|s| s.fragment_size().max(1))
            .min()
            .ok_or(Error::StaleInode)?;
        let mut out = StatFs {
            blocks: 0,
            bfree: 0,
            bavail: 0,
            files: 0,
            ffree: 0,
            bsize: u32::try_from(unit).unwrap_or(4096),
            namelen: u32::MAX,
            frsize: u32::try_from(unit).unwrap_or(4096),
        };
        for s in &all {
            // Exact: every fragment size is a multiple of the smallest
            // (powers of two) in practice; saturate rather than wrap.
            let scale = |n: u64| n.saturating_mul(s.fragment_size().max(1) / unit);
            out.blocks = out.blocks.saturating_add(scale(s.blocks()));
            out.bfree = out.bfree.saturating_add(scale(s.blocks_free()));
            out.bavail = out.bavail.saturating_add(scale(s.blocks_available()));
            out.files = out.files.saturating_add(s.files());
            out.ffree = out.ffree.saturating_add(s.files_free());
            out.namelen = out.namelen.min(namelen(s.name_max()));
        }
        Ok(out)
    }
}

/// What statfs reports (AUFS `nosum` / `sum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatfsMode {
    /// The upper branch's filesystem (the first branch's without an
    /// upper): what a write can use. AUFS `nosum`, the default.
    #[default]
    Upper,
    /// The sum over the branches' filesystems, each counted once.
    Sum,
}

/// What a setattr changes (`None` = leave alone).
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// New permission bits (incl. suid/sgid/sticky).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// The open file the change came through (ftruncate, fchmod...).
    pub fh: Option<Fh>,
}

impl UnionFs {
    /// chmod/chown/truncate/utimens: copies a lower object up (without its
    /// data when it is truncated to zero), then changes the upper instance.
    pub fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Attr> {
        let snapshot = self.for_node(self.stack.load_full(), ino)?;
        let stack = &*snapshot;
        let node = self.inodes.get(ino)?;
        // A big file truncated to a size other than zero becomes (or stays)
        // a partial file (`sparse.rs`), truncated through its map: no data
        // is copied.
        let sparse = set.size.is_some_and(|s| s > 0)
            && node.kind == Kind::File
            && stack.writer().is_some_and(|u| u.sparse);
        let data = match set.size {
            Some(0) => CopyUpData::Empty,
            Some(_) if sparse => CopyUpData::Sparse,
            Some(_) => CopyUpData::Full,
            None => CopyUpData::Meta,
        };
        let mut state = self.copy_up_for_write(stack, ino, data)?;
        let partial = if sparse {
            self.partial_of(stack, ino, &state, true)?
        } else {
            None
        };
        if sparse && partial.is_none() && state.is_metacopy() {
            // A small metadata-only copy: its data, whole.
            state = self.complete_data(stack, ino, state, CopyUpData::Full)?;
        }
        let fd = state.top()?.fd()?;
        if let (Some(size), Some(p)) = (set.size, &partial) {
            p.set_size(size)?;
        } else if let Some(size) = set.size {
            if node.kind == Kind::Dir {
                return Err(Error::IsDir);
            }
            let handle = set.fh.and_then(|h| self.handles.file(h).ok());
            match handle.as_deref() {
                Some(Handle::File(f)) if f.branch == state.top()?.branch => {
                    sys::fs::ftruncate(f.fd.as_fd(), size)?
                }
                _ => {
                    let w = sys::fs::reopen(fd.as_fd(), nix::fcntl::OFlag::O_WRONLY)?;
                    sys::fs::ftruncate(w.as_fd(), size)?;
                }
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::fs::chown_fd(fd.as_fd(), set.uid, set.gid)?;
        }
        if let Some(mode) = set.mode {
            if node.kind == Kind::Symlink {
                return Err(Error::NotSupported);
            }
            sys::fs::chmod_fd(fd.as_fd(), mode & 0o7777)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            sys::fs::utimes_fd(
                fd.as_fd(),
                set.atime.unwrap_or(SetTime::Omit),
                set.mtime.unwrap_or(SetTime::Omit),
            )?;
        }
        let st = sys::fs::fstat(fd.as_fd())?;
        // Through a retired node (`retire`; a chmod by a name the kernel
        // still binds to it): the object's current node, whose attributes
        // the kernel caches, must learn of the change.
        self.changed_through(ino);
        Ok(self.attr_of(stack, node.st_ino, &st, &state))
    }
}
