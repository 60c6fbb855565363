//! Directory operations: opendir, readdir(plus), releasedir, fsyncdir.
//!
//! Invariant: a listing is a snapshot, retaken only when read again from
//! offset 0 after entries were handed out, so offsets stay stable while the
//! directory changes.
//! A snapshot queues the subdirectories it lists for the read-ahead
//! thread (`prefetch.rs`), which changes nothing the union answers.
//! Locks: the handle's or the node's listing mutex, held while a snapshot
//! is taken (branch getdents) — per directory, never global.

use std::ffi::OsString;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{DirEntryOut, Entry, UnionFs};
use crate::error::{Error, Result};
use crate::handle::{DirHandle, Fh, Handle};
use crate::inode::{Ino, Kind, Listing, MergedEntry};
use crate::readdir;
use crate::stack::BranchStack;

/// The handle the kernel passes when it does not open directories.
pub const NO_HANDLE: Fh = Fh(0);

impl UnionFs {
    /// Opens directory `ino` for listing.
    pub fn opendir(&self, ino: Ino) -> Result<Fh> {
        let node = self.inodes.get(ino)?;
        if node.kind != Kind::Dir {
            return Err(Error::NotDir);
        }
        Ok(self.handles.insert(Handle::Dir(DirHandle {
            ino,
            listing: Mutex::new(Listing::default()),
        })))
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: Fh) {
        self.handles.remove(fh);
    }

    /// The merged listing of directory `ino`, `.` and `..` first;
    /// `files_too`: made for a requester that gets every entry's attributes
    /// (what the read-ahead of its subdirectories then reads).
    fn snapshot_dir(
        &self,
        stack: &BranchStack,
        ino: Ino,
        files_too: bool,
    ) -> Result<Vec<MergedEntry>> {
        let state = self.fresh_dir(stack, ino)?;
        let path = self.inodes.path_of(ino)?;
        let layers = readdir::layer_listings(stack, &state.layers, &path)?;
        if self.prefetch.is_on() {
            self.read_ahead(stack, &state.layers, &layers, files_too);
        }
        let merged = readdir::merge(&layers);
        let mut out = Vec::with_capacity(merged.len() + 2);
        out.push(MergedEntry {
            name: ".".into(),
            kind: Kind::Dir,
            ino: ino.0,
        });
        out.push(MergedEntry {
            name: "..".into(),
            kind: Kind::Dir,
            ino: state.parent.0,
        });
        out.extend(merged);
        Ok(out)
    }

    /// Queues the subdirectories each read-only layer of a listed
    /// directory holds for the union's read-ahead thread (`prefetch.rs`;
    /// a writable branch is never read ahead). `listed` is
    /// `layer_listings`' answer for `layers`, one listing per layer, unless
    /// a unionfs-fuse whiteout tree added listings of its own (then the
    /// layers are not matched up, and nothing is read ahead).
    fn read_ahead(
        &self,
        stack: &BranchStack,
        layers: &[crate::inode::Layer],
        listed: &[Vec<readdir::LayerEntry>],
        files_too: bool,
    ) {
        if layers.len() != listed.len() {
            return;
        }
        for (layer, entries) in layers.iter().zip(listed) {
            if stack.get(layer.branch).is_none_or(|b| b.mode.writable()) {
                continue;
            }
            let dirs: Vec<OsString> = entries
                .iter()
                .filter_map(|e| match e {
                    readdir::LayerEntry::Object {
                        name,
                        kind: Kind::Dir,
                        ..
                    } => Some(name.clone()),
                    _ => None,
                })
                .take(crate::prefetch::BOUND)
                .collect();
            if dirs.is_empty() {
                continue;
            }
            if let Ok(fd) = layer.fd() {
                self.prefetch.push(&fd, dirs, files_too);
            }
        }
    }

    /// The listing of directory `ino` read through handle `fh` from
    /// `offset` on: a snapshot per handle, or — without a handle (`Fh(0)`,
    /// the kernel's no-opendir mode) — per directory, retaken at offset 0.
    fn listing(
        &self,
        stack: &BranchStack,
        ino: Ino,
        fh: Fh,
        offset: u64,
        files_too: bool,
    ) -> Result<Arc<Vec<MergedEntry>>> {
        if fh == NO_HANDLE {
            let node = self.inodes.get(ino)?;
            if node.kind != Kind::Dir {
                return Err(Error::NotDir);
            }
            return self.listing_in(stack, ino, &mut node.listing.lock(), offset, files_too);
        }
        let h = self.handles.get(fh)?;
        let Handle::Dir(d) = &*h else {
            return Err(Error::NotDir);
        };
        let mut l = d.listing.lock();
        self.listing_in(stack, d.ino, &mut l, offset, files_too)
    }

    fn listing_in(
        &self,
        stack: &BranchStack,
        ino: Ino,
        l: &mut Listing,
        offset: u64,
        files_too: bool,
    ) -> Result<Arc<Vec<MergedEntry>>> {
        if offset != 0 && l.entries.is_none() && l.eof == Some(offset) {
            return Ok(Arc::new(Vec::new()));
        }
        // A restart from 0 after entries were handed out (rewinddir) sees
        // the directory as it is now, as POSIX asks.
        let stale = offset == 0 && l.consumed;
        let entries = match &l.entries {
            Some(e) if !stale => Arc::clone(e),
            _ => {
                let e = Arc::new(self.snapshot_dir(stack, ino, files_too)?);
                l.entries = Some(Arc::clone(&e));
                e
            }
        };
        l.consumed = true;
        Ok(entries)
    }

    /// Feeds entries from `offset` to `add` until it reports a full buffer.
    pub fn readdir(
        &self,
        ino: Ino,
        fh: Fh,
        offset: u64,
        mut add: impl FnMut(&DirEntryOut) -> bool,
    ) -> Result<()> {
        let snapshot = self.stack.load_full();
        let stack = &*snapshot;
        let entries = self.listing(stack, ino, fh, offset, false)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in entries.iter().enumerate().skip(start) {
            let out = DirEntryOut {
                name: e.name.clone(),
                ino: Ino(e.ino),
                kind: e.kind,
                next_offset: i as u64 + 1,
            };
            if add(&out) {
                return Ok(());
            }
        }
        self.listing_read_to_end(ino, fh, entries.len());
        Ok(())
    }

    /// A per-directory listing read to its end is let go: the kernel keeps
    /// its own copy, and a new reader starts at offset 0 anyway.
    fn listing_read_to_end(&self, ino: Ino, fh: Fh, len: usize) {
        if fh != NO_HANDLE {
            return;
        }
        if let Ok(node) = self.inodes.get(ino) {
            let mut l = node.listing.lock();
            l.entries = None;
            l.eof = Some(len as u64);
        }
    }

    /// Like `readdir`, with a full lookup of each entry (not of `.` and
    /// `..`, which the kernel does not link) — of each
    /// directory only, when `non_dirs` is false; of no non-directory whose
    /// node the kernel holds already (it looked the object up, by this name
    /// or another): the other entries are given by name and type alone
    /// (`None`), as `readdir` gives them, which the kernel lists without
    /// touching what it holds. So a walk that only wants names reads no
    /// inode of its files, and a listing of names the kernel has (`git
    /// status` lists what it stat'ed) costs no lookup. An entry the buffer
    /// had no room for has its lookup undone.
    pub fn readdirplus(
        &self,
        ino: Ino,
        fh: Fh,
        offset: u64,
        non_dirs: bool,
        mut add: impl FnMut(&DirEntryOut, Option<&Entry>) -> bool,
    ) -> Result<()> {
        let snapshot = self.stack.load_full();
        let stack = &*snapshot;
        let entries = self.listing(stack, ino, fh, offset, non_dirs)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        // The directory as its lookups see it, taken at the first of them.
        let mut dir: Option<Result<super::namei::LookupDir>> = None;
        for (i, e) in entries.iter().enumerate().skip(start) {
            // `.` and `..` are never linked by the kernel (it ignores their
            // attributes: `fuse_direntplus_link`), so they go by name too.
            // Directories are looked up whatever the kernel holds: a walk
            // enters them, and a held node is no proof of a dentry (the
            // kernel's FORGETs trail behind; a dentry can go before its
            // inode), which would cost a LOOKUP each.
            let skip = e.kind != Kind::Dir && (!non_dirs || self.kernel_holds(Ino(e.ino)));
            if i < 2 || skip {
                let out = DirEntryOut {
                    name: OsString::from(&e.name),
                    ino: Ino(e.ino),
                    kind: e.kind,
                    next_offset: i as u64 + 1,
                };
                if add(&out, None) {
                    return Ok(());
                }
                continue;
            }
            let dir = dir.get_or_insert_with(|| self.lookup_dir(stack, ino));
            let looked_up = match dir {
                Ok(dir) => self.lookup_in(stack, dir, &e.name),
                Err(err) => Err(err.clone()),
            };
            let entry = match looked_up {
                Ok((entry, _)) => entry,
                // Removed since the snapshot: skip it.
                Err(err) if err.is_not_found() => continue,
                // One entry that cannot be looked up must not make the
                // whole directory unlistable.
                // (logged once, as the lookup of the name would be)
                Err(err) => {
                    self.note_failure("lookup", ino, &err);
                    continue;
                }
            };
            let out = DirEntryOut {
                name: OsString::from(&e.name),
                ino: entry.attr.ino,
                kind: entry.attr.kind,
                next_offset: i as u64 + 1,
            };
            if add(&out, Some(&entry)) {
                self.forget(entry.node, 1);
                return Ok(());
            }
        }
        self.listing_read_to_end(ino, fh, entries.len());
        Ok(())
    }

    /// True when the kernel holds a node of the object numbered `st_ino`.
    fn kernel_holds(&self, st_ino: Ino) -> bool {
        self.inodes.get(self.inodes.node_id(st_ino)).is_ok()
    }
}

impl UnionFs {
    /// fsync of a directory: its upper instance, if it has one.
    pub fn fsyncdir(&self, ino: Ino, data_only: bool) -> Result<()> {
        // Its entries include the copy-ups not yet published (`publish.rs`).
        self.publisher.flush()?;
        let snapshot = self.stack.load_full();
        let stack = &*snapshot;
        let node = self.inodes.get(ino)?;
        let state = node.snapshot();
        if !self.in_upper(stack, &state) {
            return Ok(());
        }
        let fd = crate::sys::fs::reopen(
            std::os::fd::AsFd::as_fd(&*state.top()?.fd()?),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        )?;
        crate::sys::fs::fsync(std::os::fd::AsFd::as_fd(&fd), data_only)
    }
}
