//! File operations: open (copying up for writing), read, write, lseek,
//! fsync, fallocate, copy_file_range, release.
//!
//! Invariant: a handle opened on a lower branch never serves data older
//! than the upper copy made since (see `read_fd`).
//! Locks: the handle table's shard lock for a get; copy-up's striped lock.

use std::os::fd::AsFd;
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::unistd::Whence;

use super::UnionFs;
use crate::copy_up::CopyUpData;
use crate::error::{Error, Result};
use crate::handle::{Fh, FileHandle, Handle};
use crate::inode::{Ino, Kind};
use crate::stack::BranchStack;
use crate::sys;

/// What `open` hands the FUSE adapter besides the handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The handle.
    pub fh: Fh,
    /// The data cannot change behind the kernel's back (a lower file): the
    /// kernel may keep its page cache across opens.
    pub keep_cache: bool,
    /// The handle's fd is on the upper branch: the file's data will not
    /// move again, so the kernel may do its I/O on that file directly.
    pub on_upper: bool,
    /// The kernel may do this handle's I/O on its fd directly (FUSE
    /// passthrough). False for a partial file (`sparse.rs`): its fd holds
    /// holes where the data is still below, so every read must go through
    /// the union's map.
    pub passthrough_ok: bool,
}

/// Flags the union passes through to the backing open (O_CREAT and
/// O_EXCL are the union's own business; a new file needs no O_TRUNC).
pub(super) fn backing_flags(flags: i32) -> OFlag {
    let f = OFlag::from_bits_truncate(flags);
    let acc = match flags & libc::O_ACCMODE {
        libc::O_WRONLY => OFlag::O_WRONLY,
        libc::O_RDWR => OFlag::O_RDWR,
        _ => OFlag::O_RDONLY,
    };
    acc | (f
        & (OFlag::O_NOATIME
            | OFlag::O_DIRECT
            | OFlag::O_NONBLOCK
            | OFlag::O_APPEND
            | OFlag::O_TRUNC
            | OFlag::O_SYNC
            | OFlag::O_DSYNC))
}

impl UnionFs {
    /// Opens `ino` with open(2) `flags`; opening for writing (or with
    /// O_TRUNC) copies a lower object up first.
    pub fn open(&self, ino: Ino, flags: i32) -> Result<Opened> {
        let opened = self.open_handle(ino, flags)?;
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            // Through a retired node, a truncate or a copy-up of another
            // name's data changes the object behind its current node.
            self.changed_through(ino);
        }
        Ok(opened)
    }

    fn open_handle(&self, ino: Ino, flags: i32) -> Result<Opened> {
        // Before the stack is loaded: a branch change waits for this open,
        // or this open sees the changed stack.
        let _gate = self.gate.read();
        let node = self.inodes.get(ino)?;
        if node.kind == Kind::Dir {
            return Err(Error::IsDir);
        }
        let acc = flags & libc::O_ACCMODE;
        let writing = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let snapshot = if writing {
            self.for_node(self.stack.load_full(), ino)?
        } else {
            self.stack.load_full()
        };
        let stack = &*snapshot;
        let state = if writing {
            let data = if flags & libc::O_TRUNC != 0 {
                CopyUpData::Empty
            } else if node.kind == Kind::File && stack.writer().is_some_and(|u| u.sparse) {
                // A big file becomes a partial one (`copy_up_one` decides).
                CopyUpData::Sparse
            } else {
                CopyUpData::Full
            };
            self.copy_up_for_write(stack, ino, data)?
        } else {
            node.snapshot()
        };
        let partial = self.partial_of(stack, ino, &state, writing)?;
        // A small metadata-only copy opened for writing gets its data now.
        let state = if writing && partial.is_none() && state.is_metacopy() {
            self.complete_data(stack, ino, state, CopyUpData::Full)?
        } else {
            state
        };
        if let Some(p) = partial {
            // Its handle is on the upper file; reads and writes go through
            // the map, so never passthrough (the kernel would read the
            // holes), and no page cache kept from opens that read below.
            let f = backing_flags(flags) & !(OFlag::O_APPEND | OFlag::O_TRUNC);
            let fd = sys::fs::reopen(p.upper.as_fd(), f)?;
            let branch = state.top()?.branch;
            let fh = self
                .handles
                .insert(Handle::File(FileHandle::new(ino, branch, fd)));
            return Ok(Opened {
                fh,
                keep_cache: false,
                on_upper: false,
                passthrough_ok: false,
            });
        }
        if let Ok(t) = state.top().and_then(|t| t.fd()) {
            self.partials.evict_stale(ino.0, t.as_fd());
        }
        // A metadata-only copy is read from the layer with the data.
        let top = state.data()?;
        let fd = sys::fs::reopen(top.fd()?.as_fd(), backing_flags(flags))?;
        let keep_cache = stack.get(top.branch).is_some_and(|b| !b.mode.writable());
        let on_upper = stack.writer_of(top.branch).is_some();
        let fh = self
            .handles
            .insert(Handle::File(FileHandle::new(ino, top.branch, fd)));
        Ok(Opened {
            fh,
            keep_cache,
            on_upper,
            passthrough_ok: true,
        })
    }

    /// Retires file node `ino`, which the kernel has pinned to the lower
    /// file its passthrough readers read: copies it up (with its data),
    /// gives the object a fresh node id for every later lookup (its
    /// `st_ino` stays), and has the kernel drop its name of the old node, so
    /// path walks reach the new node, which is not pinned (until the kernel
    /// has dropped it, an open of the old node is sent to the new one by
    /// the adapter, see `is_retired`). The old node keeps serving the
    /// readers it has, from the lower file. Other names of a hard-linked
    /// file may still lead the kernel to the old node: changes made
    /// through it tell the new node (`object_changed`, `changed_through`).
    pub fn retire(&self, ino: Ino) -> Result<()> {
        let node = self.inodes.get(ino)?;
        if node.kind != Kind::File {
            return Err(Error::Busy);
        }
        let snapshot = self.for_node(self.stack.load_full(), ino)?;
        let state = self.copy_up(&snapshot, ino, CopyUpData::Full)?;
        self.inodes.rekey(ino)?;
        // What the kernel holds of the old node's attributes is the lower
        // file's; from now on they are the copy's (see `FuseAdapter::getattr`).
        self.invalidate_attributes(ino);
        if let Some(inv) = self.invalidator.get() {
            inv.drop_entry_soon(state.parent, &state.name);
        }
        Ok(())
    }

    /// True when node `ino` was retired (`retire`): path walks reach
    /// another node for its object now.
    pub fn is_retired(&self, ino: Ino) -> bool {
        self.inodes.is_retired(ino)
    }

    /// The partial file (`sparse.rs`) of node `ino` in `state`, loaded from
    /// its map on first use; `for_write`: a metadata-only upper copy
    /// without a map gets one (all below), so its data is never copied
    /// whole for a write either.
    pub(super) fn partial_of(
        &self,
        stack: &BranchStack,
        ino: Ino,
        state: &crate::inode::NodeState,
        for_write: bool,
    ) -> Result<Option<Arc<crate::sparse::Partial>>> {
        if !state.is_metacopy() || !self.in_upper(stack, state) {
            return Ok(None);
        }
        let upper = self.upper_ctx(stack)?;
        let top = state.top()?.fd()?;
        let data = state.data()?.fd()?;
        let load = || {
            self.partials.load(
                ino.0,
                top.as_fd(),
                data.as_fd(),
                upper.partial_xattr(),
                upper.durable,
                upper.format == crate::whiteout::WhiteoutFormat::Overlay,
            )
        };
        if let Some(p) = load()? {
            return Ok(Some(p));
        }
        let size = u64::try_from(sys::fs::fstat(top.as_fd())?.st_size).unwrap_or(0);
        if !for_write || !upper.sparse || size < crate::sparse::SPARSE_MIN {
            return Ok(None);
        }
        let _guard = self.copy_locks[(ino.0 as usize) % super::copyup::COPY_LOCKS].lock();
        if let Some(p) = load()? {
            return Ok(Some(p));
        }
        // The map first, then the union's marker beside the one it had.
        upper.set_partial(top.as_fd(), size, &self.partials.boot)?;
        load()
    }

    /// Publishes every copy-up not yet in the upper (`publish.rs`): the end
    /// of the mount.
    pub fn publish_pending(&self) -> Result<()> {
        self.publisher.flush()
    }

    /// The mount ends: partial files are synced, or filled (overlay format).
    pub fn finish_partials(&self) {
        self.partials.finish();
    }

    /// Fills partial file `ino` and makes it an ordinary upper file (before
    /// an operation the map cannot express).
    fn complete_partial(&self, ino: Ino) -> Result<()> {
        let snapshot = self.stack.load_full();
        let node = self.inodes.get(ino)?;
        let state = self.state_in(&snapshot, &node);
        self.complete_data(&snapshot, ino, state, CopyUpData::Full)?;
        Ok(())
    }

    /// Runs `f` on the backing fd of the open file `fh` (the FUSE adapter
    /// registers it with the kernel for passthrough).
    pub fn with_fd<R>(
        &self,
        fh: Fh,
        f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> R,
    ) -> Result<R> {
        let h = self.file(fh)?;
        let Handle::File(file) = &*h else {
            return Err(Error::IsDir);
        };
        Ok(f(file.fd.as_fd()))
    }

    fn file(&self, fh: Fh) -> Result<Arc<Handle>> {
        self.handles.file(fh)
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, fh: Fh, offset: u64, data: &[u8]) -> Result<u32> {
        let h = self.file(fh)?;
        let Handle::File(f) = &*h else {
            return Err(Error::IsDir);
        };
        if let Some(p) = self.partials.get(f.ino.0) {
            let (n, after) = p.write(data, offset)?;
            if after == crate::sparse::After::Nothing {
                return Ok(u32::try_from(n).unwrap_or(u32::MAX));
            }
            // This write would leave the file looking whole to lookup:
            // made whole first, it is then an ordinary upper file.
            self.complete_partial(f.ino)?;
        }
        let n = sys::fs::pwrite(f.fd.as_fd(), data, offset)?;
        // (A retired node's writers write here: the adapter gives them no
        // passthrough.)
        self.changed_through(f.ino);
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// fsync / fdatasync of an open file.
    pub fn fsync(&self, fh: Fh, data_only: bool) -> Result<()> {
        let h = self.file(fh)?;
        let Handle::File(f) = &*h else {
            return Err(Error::IsDir);
        };
        if let Some(p) = self.partials.get(f.ino.0) {
            // The data, then the map that points at it.
            return p.sync();
        }
        // A copy-up not yet published: its name first (`publish.rs`).
        self.publisher.flush()?;
        sys::fs::fsync(f.fd.as_fd(), data_only)?;
        // The file's data is on disk, but for a copy-up its name in the
        // upper came from a rename the filesystem may not have committed
        // (fdatasync of an in-place overwrite commits nothing on ext4):
        // after a crash the caller would see the old content it was told
        // was synced. A sync of the parent makes the name durable too; on
        // a journaling filesystem it costs nothing once that is so.
        let snapshot = self.stack.load_full();
        if snapshot.writer().is_some_and(|u| u.branch == f.branch) {
            let parent = self.inodes.get(f.ino)?.snapshot().parent;
            self.fsyncdir(parent, false)?;
        }
        Ok(())
    }

    /// fallocate(2) on an open file (punching holes included).
    pub fn fallocate(&self, fh: Fh, offset: u64, len: u64, mode: i32) -> Result<()> {
        let h = self.file(fh)?;
        let Handle::File(f) = &*h else {
            return Err(Error::IsDir);
        };
        if self.partials.get(f.ino.0).is_some() {
            self.complete_partial(f.ino)?;
        }
        sys::fs::fallocate(f.fd.as_fd(), mode, offset, len)?;
        self.changed_through(f.ino);
        Ok(())
    }

    /// copy_file_range(2) between two open files.
    pub fn copy_file_range(
        &self,
        fh_in: Fh,
        off_in: u64,
        fh_out: Fh,
        off_out: u64,
        len: u64,
    ) -> Result<u32> {
        let hi = self.file(fh_in)?;
        let ho = self.file(fh_out)?;
        let (Handle::File(i), Handle::File(o)) = (&*hi, &*ho) else {
            return Err(Error::IsDir);
        };
        // The kernel refuses an overlapping copy within one inode; a file
        // retired after one of the two was opened (`retire`) is two kernel
        // inodes, so the same check is made here for the one object.
        let same = i.ino == o.ino
            || matches!(
                (self.inodes.get(i.ino), self.inodes.get(o.ino)),
                (Ok(a), Ok(b)) if a.st_ino == b.st_ino
            );
        if same && off_out.saturating_add(len) > off_in && off_in.saturating_add(len) > off_out {
            return Err(Error::Invalid);
        }
        if self.partials.get(i.ino.0).is_some() || self.partials.get(o.ino.0).is_some() {
            // Through the map, a bounded piece per call (a short count is
            // allowed; the kernel or libc asks again).
            let want = u32::try_from(len.min(1 << 20)).unwrap_or(1 << 20);
            let data = self.read(fh_in, off_in, want)?;
            if data.is_empty() {
                return Ok(0);
            }
            return self.write(fh_out, off_out, &data);
        }
        let len = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(u32::MAX as usize);
        let n = sys::fs::copy_file_range(i.fd.as_fd(), off_in, o.fd.as_fd(), off_out, len)?;
        self.changed_through(o.ino);
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// The fd to read through: the handle's own, unless the file was
    /// opened on a lower branch and has been copied up since.
    pub(super) fn read_fd<'a>(
        &self,
        stack: &BranchStack,
        f: &'a FileHandle,
    ) -> Result<std::os::fd::BorrowedFd<'a>> {
        if let Some(fd) = f.upgraded.get() {
            return Ok(fd.as_fd());
        }
        let Some(upper) = stack.writer() else {
            return Ok(f.fd.as_fd());
        };
        if f.branch == upper.branch {
            return Ok(f.fd.as_fd());
        }
        let state = self.inodes.get(f.ino)?.snapshot();
        match state.layers.first() {
            Some(top) if top.branch == upper.branch && !top.metacopy => {
                let fd = sys::fs::reopen(top.fd()?.as_fd(), OFlag::O_RDONLY)?;
                let _ = f.upgraded.set(fd);
                Ok(f.upgraded.get().map_or(f.fd.as_fd(), |fd| fd.as_fd()))
            }
            _ => Ok(f.fd.as_fd()),
        }
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&self, fh: Fh, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.handles.file(fh)?;
        let Handle::File(f) = &*h else {
            return Err(Error::IsDir);
        };
        // The read path's snapshot: a guard (no shared refcount touched),
        // held for this one short read.
        if let Some(p) = self.partials.get(f.ino.0) {
            return p.read(offset, size);
        }
        let stack = self.stack.load();
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        // Short reads happen only at EOF for regular files; keep reading
        // otherwise so the kernel gets what it asked for.
        while done < buf.len() {
            let n = sys::fs::pread(
                self.read_fd(&stack, f)?,
                &mut buf[done..],
                offset + done as u64,
            )?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// `lseek` on an open file (SEEK_DATA / SEEK_HOLE included).
    pub fn lseek(&self, fh: Fh, offset: i64, whence: i32) -> Result<i64> {
        let h = self.handles.file(fh)?;
        let Handle::File(f) = &*h else {
            return Err(Error::IsDir);
        };
        let whence = match whence {
            libc::SEEK_SET => Whence::SeekSet,
            libc::SEEK_CUR => Whence::SeekCur,
            libc::SEEK_END => Whence::SeekEnd,
            libc::SEEK_DATA => Whence::SeekData,
            libc::SEEK_HOLE => Whence::SeekHole,
            _ => return Err(Error::Invalid),
        };
        if let Some(p) = self.partials.get(f.ino.0) {
            // Its data is everywhere as far as a reader can tell: the
            // ranges below are data there, and holes that happen to be
            // read from either side are zeros anyway.
            let size = sys::fs::fstat(p.upper.as_fd())?.st_size;
            return match whence {
                Whence::SeekData if offset < size => Ok(offset),
                Whence::SeekHole if offset < size => Ok(size),
                Whence::SeekData | Whence::SeekHole => Err(Error::Sys {
                    op: "lseek",
                    errno: nix::errno::Errno::ENXIO,
                }),
                _ => sys::fs::lseek(p.upper.as_fd(), offset, whence),
            };
        }
        sys::fs::lseek(self.read_fd(&self.stack.load(), f)?, offset, whence)
    }

    /// Closes a file handle.
    pub fn release(&self, fh: Fh) {
        self.handles.remove(fh);
    }
}
