//! Copy-up orchestration: giving an object (and its parents, first) an
//! upper instance — whole, or metadata only (`CopyUpData::Meta`), and
//! completing a metadata-only one with its data (`complete_data`).
//!
//! Invariant: a copy appears in the upper in one rename, complete; a
//! metadata-only copy keeps its marker until its data is complete, so
//! until then its data is read from below.
//!
//! Locks: one of `COPY_LOCKS` striped mutexes, keyed by the object's inode
//! number, is held while that object is copied up, so concurrent writers to
//! one lower file cause exactly one copy-up. Parents are copied up before
//! the child's lock is taken, so no thread holds two of them. Inside it,
//! the name's lock (`UnionFs::name_lock`) is held from the last look at the
//! upper parent to the placing rename: an unlink, rmdir or rename that
//! whites the name out meanwhile (they take the same name lock, and never
//! a copy lock inside it) is seen, and its whiteout never replaced — a
//! name removed stays removed.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::UnionFs;
use crate::copy_up::{self, CopyUpData};
use crate::error::{Error, Result};
use crate::inode::{Ino, Kind, Layer, NodeState, ROOT_INO};
use crate::lookup::{self, Found};
use crate::stack::BranchStack;
use crate::sys;
use crate::sys::fs::SetTime;
use crate::upper::Upper;

/// The overlayfs file handle of a lower object ("struct ovl_fb": version 0,
/// magic 0xfb, length, flags, fid type, filesystem UUID, fid) — the value of
/// `trusted.overlay.origin` and, in hex, the name of its index entry.
fn overlay_fh(handle: &sys::fs::ObjectHandle, uuid: &[u8; 16]) -> Option<Vec<u8>> {
    let len = u8::try_from(21 + handle.bytes.len()).ok()?;
    let flags = if cfg!(target_endian = "big") { 1 } else { 0 };
    let mut fh = vec![0u8, 0xfb, len, flags, u8::try_from(handle.ty).ok()?];
    fh.extend_from_slice(uuid);
    fh.extend_from_slice(&handle.bytes);
    Some(fh)
}

fn hex(bytes: &[u8]) -> std::ffi::OsString {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into()
}

/// Records on a fresh copy's layer what staging learnt of its xattrs
/// (`copy_up::Staged::visible_xattrs`, listed in xattr generation
/// `generation` or later), so the kernel's question for
/// `security.capability` before the first write is answered without a
/// syscall when it has none (`ops/xattr.rs` trusts it only on filesystems
/// whose listings are complete, and only while no xattr changed through
/// the union since).
fn note_xattrs(layer: &Layer, generation: u64, visible: Option<bool>) {
    if let Some(any) = visible {
        layer.backing.note_xattrs(generation, any);
    }
}

/// Number of striped copy-up locks.
pub(super) const COPY_LOCKS: usize = 64;

impl UnionFs {
    /// The upper machinery, or EROFS for a read-only union.
    pub(super) fn upper_ctx<'s>(&self, stack: &'s BranchStack) -> Result<&'s Upper> {
        stack.writer().ok_or(Error::ReadOnly)
    }

    /// A layer for an object in the upper.
    /// (`path`: the object's union path, which is also its path in the upper.)
    pub(super) fn upper_layer(
        &self,
        stack: &BranchStack,
        fd: std::os::fd::OwnedFd,
        path: PathBuf,
        indexed: bool,
    ) -> Result<Layer> {
        let upper = self.upper_ctx(stack)?;
        let branch = stack.get(upper.branch).ok_or(Error::StaleInode)?;
        let mut l = Layer::new(branch, fd, path);
        l.indexed = indexed;
        Ok(l)
    }

    /// True when the topmost instance of `state` is in the upper.
    pub(super) fn in_upper(&self, stack: &BranchStack, state: &NodeState) -> bool {
        match (stack.writer(), state.layers.first()) {
            (Some(u), Some(l)) => l.branch == u.branch && !l.indexed,
            _ => false,
        }
    }

    /// Ensures node `ino` has an upper instance and returns its state.
    pub(super) fn copy_up(
        &self,
        stack: &BranchStack,
        ino: Ino,
        data: CopyUpData,
    ) -> Result<NodeState> {
        self.copy_up_as(stack, ino, data, false)
    }

    /// `copy_up` for writing into the file: a whole-file copy of a regular
    /// file may be published later (`publish.rs`); the node serves from
    /// the staged copy meanwhile. Only for callers that do nothing by the
    /// object's upper name afterwards.
    pub(super) fn copy_up_for_write(
        &self,
        stack: &BranchStack,
        ino: Ino,
        data: CopyUpData,
    ) -> Result<NodeState> {
        self.copy_up_as(stack, ino, data, true)
    }

    fn copy_up_as(
        &self,
        stack: &BranchStack,
        ino: Ino,
        data: CopyUpData,
        defer: bool,
    ) -> Result<NodeState> {
        self.upper_ctx(stack)?;
        let node = self.inodes.get(ino)?;
        let state = self.state_in(stack, &node);
        // An indexed hard link already has its upper data, whatever name
        // the node was last seen under (that name may be gone).
        if self.in_upper(stack, &state) || state.layers.first().is_some_and(|l| l.indexed) {
            if state.is_metacopy() && !data.is_deferred() {
                return self.complete_data(stack, ino, state, data);
            }
            return Ok(state);
        }
        if ino == ROOT_INO {
            return Err(Error::ReadOnly);
        }
        if state.name.is_empty() {
            // No name to copy it up by (`create_tmpfile`).
            return Err(Error::Unnamed);
        }
        // Parents first, through the inode table: ancestors already in the
        // upper cost nothing, and each missing one is looked up once.
        let parent = state.parent;
        let mut pstate = self.copy_up(stack, parent, CopyUpData::Full)?;
        let ppath = self.inodes.path_of(parent)?;
        let found = self.found_from_node(stack, ino, &state, &pstate);
        self.copy_up_one(
            stack,
            parent,
            &mut pstate,
            &ppath,
            &state.name,
            found,
            data,
            defer,
        )
    }

    /// What looking the name of node `ino` up again would find, taken
    /// from the node's own state (`state`; its parent's is `pstate`):
    /// only for a plain lower regular file (one layer, not hard-linked,
    /// not a metadata-only copy) resolved in this very stack, whose
    /// branch the parent still shows (so no opaque directory has
    /// replaced the parent since). The lowers do not change under the
    /// union, so the walk would find this same file; what may have
    /// changed since in the upper — a copy-up, a whiteout, an object by
    /// that name — `copy_up_one` looks at again under the copy-up lock,
    /// as for any caller's lookup. Saves the walk's syscalls (upper
    /// probes, a stat and xattr listing below, a file handle) at every
    /// first write. `None`: the caller looks the name up.
    fn found_from_node(
        &self,
        stack: &BranchStack,
        ino: Ino,
        state: &NodeState,
        pstate: &NodeState,
    ) -> Option<Found> {
        let [top] = state.layers.as_slice() else {
            return None;
        };
        if state.generation != stack.generation()
            || top.indexed
            || top.metacopy
            || stack.writer().is_none_or(|u| u.branch == top.branch)
            || !pstate.layers.iter().any(|l| l.branch == top.branch)
        {
            return None;
        }
        let stat = sys::fs::fstat(top.fd().ok()?.as_fd()).ok()?;
        if Kind::from_mode(stat.st_mode) != Kind::File || stat.st_nlink > 1 {
            return None;
        }
        Some(Found {
            state: state.clone(),
            stat,
            kind: Kind::File,
            recorded_ino: Some(ino.0),
        })
    }

    /// Walks `path` from the root, copying up each directory on the way
    /// and the final object. Returns the final object's state.
    pub(super) fn copy_up_path(
        &self,
        stack: &BranchStack,
        path: &Path,
        data: CopyUpData,
    ) -> Result<NodeState> {
        let mut ino = ROOT_INO;
        let mut state = self.state_in(stack, &*self.inodes.get(ROOT_INO)?);
        if !self.in_upper(stack, &state) {
            return Err(Error::ReadOnly);
        }
        let mut cur = PathBuf::new();
        let n = path.components().count();
        for (i, comp) in path.components().enumerate() {
            let name = comp.as_os_str();
            let found = self.find_union(stack, ino, &state, &cur, name)?;
            if i + 1 < n && found.kind != Kind::Dir {
                return Err(Error::NotDir);
            }
            let cino = self.ino_of(stack, &found);
            let this_data = if i + 1 == n { data } else { CopyUpData::Full };
            let next = if self.in_upper(stack, &found.state) {
                if found.state.is_metacopy() && !this_data.is_deferred() {
                    self.complete_data(stack, cino, found.state, this_data)?
                } else {
                    found.state
                }
            } else {
                self.copy_up_one(
                    stack,
                    ino,
                    &mut state,
                    &cur,
                    name,
                    Some(found),
                    this_data,
                    false,
                )?
            };
            cur.push(name);
            ino = cino;
            state = next;
        }
        Ok(state)
    }

    /// Marks the upper instance of directory `ino` (whose state is `state`)
    /// as holding objects with recorded inode numbers: on disk, in `state`
    /// and in the live node, so the next lookups read those numbers.
    /// Called before the object that needs it appears there, so a failure
    /// (a full upper) fails the operation while nothing has changed.
    pub(super) fn mark_impure(
        &self,
        stack: &BranchStack,
        ino: Ino,
        state: &mut NodeState,
    ) -> Result<()> {
        let Some(upper) = stack.writer() else {
            return Ok(());
        };
        let Some(l) = state.layers.first_mut() else {
            return Ok(());
        };
        if l.impure || l.branch != upper.branch {
            return Ok(());
        }
        upper.mark_impure(l.fd()?.as_fd())?;
        l.impure = true;
        if let Ok(node) = self.inodes.get(ino) {
            let mut st = node.state.write();
            if let Some(l0) = st.layers.first_mut().filter(|l0| l0.branch == upper.branch) {
                l0.impure = true;
            }
        }
        Ok(())
    }

    /// The index entry name of hard-linked lower file `found` (union inode
    /// `ino`), and the origin file handle to record when the index is the
    /// kernel's.
    fn index_key(
        &self,
        stack: &BranchStack,
        found: &Found,
        ino: Ino,
    ) -> Result<(std::ffi::OsString, Option<Vec<u8>>)> {
        let upper = self.upper_ctx(stack)?;
        if upper.kernel_index {
            let top = found.state.top()?;
            let uuid = stack.get(top.branch).and_then(|b| b.fs_uuid);
            let handle = sys::fs::name_to_handle(top.fd()?.as_fd()).ok();
            if let Some(fh) = handle.zip(uuid).and_then(|(h, u)| overlay_fh(&h, &u)) {
                return Ok((hex(&fh), Some(fh)));
            }
        }
        Ok((format!("{:016x}", ino.0).into(), None))
    }

    /// Stages a copy of `found` (union inode `ino`) in the workdir: the
    /// metadata of its top instance, the data of its data instance.
    fn stage_found(
        &self,
        stack: &BranchStack,
        found: &Found,
        ino: Ino,
        data: CopyUpData,
        publish: copy_up::Publish<'_>,
    ) -> Result<copy_up::Staged> {
        copy_up::stage_as(
            self.upper_ctx(stack)?,
            &*found.state.top()?.fd()?,
            &*found.state.data()?.fd()?,
            &found.stat,
            data,
            ino.0,
            publish,
        )
    }

    /// Stages a copy of hard-linked lower file `found` and links it into the
    /// index (recording the kernel's origin handle where the index is the
    /// kernel's). `upper_links`: how many upper names the copy will have
    /// once in place (the index entry included), so its union link count
    /// — the lower's — is recorded before the index entry appears: the
    /// entry is complete when it appears, or absent. Returns the staged
    /// name, its fd and the index entry's name.
    fn stage_into_index(
        &self,
        stack: &BranchStack,
        found: &Found,
        ino: Ino,
        data: CopyUpData,
        upper_links: u64,
    ) -> Result<(std::ffi::OsString, std::os::fd::OwnedFd, std::ffi::OsString)> {
        let upper = self.upper_ctx(stack)?;
        let (iname, origin) = self.index_key(stack, found, ino)?;
        let copy_up::Staged { tmp, fd: tfd, .. } =
            self.stage_found(stack, found, ino, data, copy_up::Publish::Synced)?;
        let offset = i64::try_from(found.stat.st_nlink).unwrap_or(i64::MAX)
            - i64::try_from(upper_links).unwrap_or(0);
        // Known before it exists (`IndexNames` is a superset), and kept
        // if the link fails: it may have failed because the entry exists.
        upper.index_names.adding(&iname);
        let linked = origin
            .as_ref()
            .map_or(Ok(()), |fh| upper.set_origin(tfd.as_fd(), fh))
            .and_then(|()| upper.set_nlink_offset(tfd.as_fd(), offset))
            .and_then(|()| sys::fs::link_fd(tfd.as_fd(), upper.index.as_fd(), &iname));
        if let Err(e) = linked {
            upper.discard(&tmp);
            return Err(e);
        }
        Ok((tmp, tfd, iname))
    }

    /// `lookup::lookup`, then, for a hard-linked lower file whose other
    /// name was copied up, the upper data from the index.
    pub(super) fn find_union(
        &self,
        stack: &BranchStack,
        pino: Ino,
        pstate: &NodeState,
        ppath: &Path,
        name: &OsStr,
    ) -> Result<Found> {
        // A copy-up not yet renamed into the upper (`publish.rs`): the name
        // is the staged copy's already. Asked before the branches are: a
        // pending copy leaves the queue only once it has its name, so if it
        // is not pending now, the lookup finds it in the upper (asked
        // after, one published in between would be found in neither place,
        // and the lower object taken for the name's).
        let pending = self.publisher.get(pino, name);
        let mut found = lookup::lookup(stack, Some(&self.faults), pino, pstate, ppath, name)?;
        if let Some(p) = pending {
            found.stat = sys::fs::fstat(p.fd.as_fd())?;
            found.kind = Kind::File;
            found.recorded_ino = Some(p.ino);
            let fd = sys::fs::dup(p.fd.as_fd())?;
            found.state.layers = vec![self.upper_layer(stack, fd, ppath.join(name), false)?];
            return Ok(found);
        }
        if let Some(upper) = stack.writer() {
            if found.kind == Kind::File
                && found.stat.st_nlink > 1
                && !upper.index_names.is_empty()
                && !self.in_upper(stack, &found.state)
            {
                let ino = self.ino_of(stack, &found);
                let (iname, _) = self.index_key(stack, &found, ino)?;
                let held = if upper.index_names.may_hold(&iname) {
                    sys::fs::open_path_at(upper.index.as_fd(), &iname)
                } else {
                    Err(Error::NotFound)
                };
                match held {
                    Ok(fd) => {
                        found.stat = sys::fs::fstat(fd.as_fd())?;
                        found.recorded_ino = Some(ino.0);
                        found.state.layers =
                            vec![self.upper_layer(stack, fd, ppath.join(name), true)?];
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(found)
    }

    /// Copies a hard-linked lower file into the index only (no name in the
    /// upper), so its other names keep finding it after this name goes.
    pub(super) fn copy_up_to_index(&self, stack: &BranchStack, found: &Found) -> Result<NodeState> {
        let upper = self.upper_ctx(stack)?;
        if found.state.top()?.indexed {
            return Ok(found.state.clone());
        }
        let ino = self.ino_of(stack, found);
        let _guard = self.copy_locks[(ino.0 as usize) % COPY_LOCKS].lock();
        let (iname, _) = self.index_key(stack, found, ino)?;
        let fd = match sys::fs::open_path_at(upper.index.as_fd(), &iname) {
            Ok(fd) => fd,
            Err(e) if e.is_not_found() => {
                // Its only upper name will be the index entry.
                let (tmp, _, _) = self.stage_into_index(stack, found, ino, CopyUpData::Full, 1)?;
                upper.discard(&tmp);
                sys::fs::open_path_at(upper.index.as_fd(), &iname)?
            }
            Err(e) => return Err(e),
        };
        let state = NodeState {
            parent: found.state.parent,
            name: found.state.name.clone(),
            layers: vec![self.upper_layer(stack, fd, PathBuf::new(), true)?],
            generation: stack.generation(),
        };
        self.inodes.refresh(ino, Kind::File, state.clone());
        Ok(state)
    }

    /// Gives the metadata-only upper copy of `ino` its data (`Full`) or
    /// none (`Empty`: it is being truncated to zero), then drops the
    /// marker: until that last step the data is read from below, so a
    /// crash half-way loses nothing. Times, mode and capabilities, which
    /// writing the data may change, are put back first.
    /// (`state`: the node's state as the caller saw it, used when the node
    /// is not in the inode table.)
    pub(super) fn complete_data(
        &self,
        stack: &BranchStack,
        ino: Ino,
        state: NodeState,
        data: CopyUpData,
    ) -> Result<NodeState> {
        let upper = self.upper_ctx(stack)?;
        let _guard = self.copy_locks[(ino.0 as usize) % COPY_LOCKS].lock();
        let state = self
            .inodes
            .get(ino)
            .map_or(state, |n| self.state_in(stack, &n));
        if !state.is_metacopy() {
            return Ok(state);
        }
        let top = state.top()?;
        let tfd = top.fd()?;
        let out = sys::fs::reopen(tfd.as_fd(), nix::fcntl::OFlag::O_WRONLY)?;
        let st = sys::fs::fstat(out.as_fd())?;
        // A partial file: only the ranges its map leaves below are copied
        // (the rest was written since); writers wait meanwhile.
        let partial = self.partials.load(
            ino.0,
            tfd.as_fd(),
            state.data()?.fd()?.as_fd(),
            upper.partial_xattr(),
            upper.durable,
            upper.format == crate::whiteout::WhiteoutFormat::Overlay,
        )?;
        let _excl;
        if let Some(p) = &partial {
            if data == CopyUpData::Full {
                p.fill()?;
            } else {
                p.abandon();
                sys::fs::ftruncate(out.as_fd(), 0)?;
            }
            _excl = p.exclusive();
        } else if data == CopyUpData::Full {
            let caps = OsStr::new("security.capability");
            let cap = sys::xattr::get(tfd.as_fd(), caps)?;
            let src = state.data()?.fd()?;
            let input = sys::fs::reopen(
                src.as_fd(),
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NOATIME,
            )
            .or_else(|_| sys::fs::reopen(src.as_fd(), nix::fcntl::OFlag::O_RDONLY))?;
            let how = copy_up::copy_data_with(
                input.as_fd(),
                out.as_fd(),
                u64::try_from(st.st_size).unwrap_or(0),
                upper.copy_strategy,
            )?;
            copy_up::sync_copy(upper, out.as_fd(), how)?;
            if let Some(v) = cap {
                sys::xattr::set(tfd.as_fd(), caps, &v, 0)?;
                // A listing while the data was written saw it gone.
                self.backings.forget_xattrs();
            }
            sys::fs::chmod_fd(tfd.as_fd(), st.st_mode & 0o7777)?;
            sys::fs::utimes_fd(
                tfd.as_fd(),
                SetTime::At(st.st_atime, st.st_atime_nsec),
                SetTime::At(st.st_mtime, st.st_mtime_nsec),
            )?;
        } else {
            sys::fs::ftruncate(out.as_fd(), 0)?;
        }
        upper.clear_metacopy(tfd.as_fd())?;
        if partial.is_some() {
            self.partials.remove(ino.0);
        }
        let mut layer = top.clone();
        layer.metacopy = false;
        let done = NodeState {
            parent: state.parent,
            name: state.name.clone(),
            layers: vec![layer],
            // Nothing was resolved again: the layer is the one it had.
            generation: state.generation,
        };
        self.inodes.refresh(ino, Kind::File, done.clone());
        // Its blocks are the upper file's now.
        self.invalidate_attributes(ino);
        Ok(done)
    }

    /// Copies up `name`, whose parent (`pstate`, at `ppath`) already has an
    /// upper instance; `found` is its lookup, if the caller has one.
    /// `defer`: see `copy_up_for_write`.
    #[allow(clippy::too_many_arguments)] // the operation's stack snapshot is the 8th
    fn copy_up_one(
        &self,
        stack: &BranchStack,
        pino: Ino,
        pstate: &mut NodeState,
        ppath: &Path,
        name: &OsStr,
        found: Option<Found>,
        data: CopyUpData,
        defer: bool,
    ) -> Result<NodeState> {
        let upper = self.upper_ctx(stack)?;
        let player = pstate.top()?.clone();
        let pfd_arc = player.fd()?;
        let pfd = pfd_arc.as_fd();
        let mut found = match found {
            Some(f) => f,
            None => self.find_union(stack, pino, pstate, ppath, name)?,
        };
        if self.in_upper(stack, &found.state) {
            if found.state.is_metacopy() && !data.is_deferred() {
                return self.complete_data(stack, self.ino_of(stack, &found), found.state, data);
            }
            return Ok(found.state);
        }
        let ino = self.ino_of(stack, &found);
        let _guard = self.copy_locks[(ino.0 as usize) % COPY_LOCKS].lock();
        let _name = self.name_lock(pino, name);
        // Another writer may have finished this copy-up while we waited (the
        // name is in the upper now, or pending), copied up another name of
        // this hard-linked file (its data is in the index now), or removed
        // or replaced the name (a whiteout or another object is there): look
        // again. The publisher is asked first: a pending copy leaves its
        // queue only after it took its name, so one that is in neither
        // place was never there (asked the other way round, one published
        // in between would be missed, and placing this copy fail).
        let raced = self.publisher.get(pino, name).is_some()
            || sys::fs::stat_at(pfd, name).is_ok()
            || (upper.format == crate::whiteout::WhiteoutFormat::Aufs
                && sys::fs::stat_at(pfd, &crate::whiteout::whiteout_name(name)).is_ok());
        if raced || (found.kind == Kind::File && found.stat.st_nlink > 1) {
            found = self.find_union(stack, pino, pstate, ppath, name)?;
            if self.in_upper(stack, &found.state) {
                return Ok(found.state);
            }
        }
        let top = found.state.top()?;
        let hard_linked = found.kind == Kind::File && found.stat.st_nlink > 1;
        // Metadata only for a plain, non-empty regular file (a hard-linked
        // one goes to the index whole), if the mount does metacopy.
        let data = match data {
            CopyUpData::Meta
                if upper.metacopy
                    && found.kind == Kind::File
                    && !hard_linked
                    && !top.indexed
                    && found.stat.st_size > 0 =>
            {
                CopyUpData::Meta
            }
            CopyUpData::Sparse
                if upper.sparse
                    && found.kind == Kind::File
                    && !hard_linked
                    && !top.indexed
                    && u64::try_from(found.stat.st_size).unwrap_or(0)
                        >= crate::sparse::SPARSE_MIN =>
            {
                CopyUpData::Sparse
            }
            CopyUpData::Meta | CopyUpData::Sparse => CopyUpData::Full,
            d => d,
        };
        // The copy carries its recorded inode number; the parent must say
        // so before the copy appears in it (else, after a remount, the
        // number would not be read and st_ino would change).
        self.mark_impure(stack, pino, pstate)?;
        // Each branch undoes its own staging when placing fails, so a
        // refused copy-up (a full upper) leaves nothing behind.
        // The copy is held by the fd it was staged with, not found again by
        // its name once placed: the name is the parent's, and a racing
        // unlink, rename or create may have put another object (in overlay
        // format a whiteout, a char device) there already.
        // `pst`: the parent's stat before the copy appeared in it (its
        // times are put back after); `visible`: what staging learnt of the
        // copy's xattrs, and since which xattr generation.
        let mut visible = None;
        let (nfd, pst) = if top.indexed {
            // Another name of this hard-linked file was copied up already:
            // link its upper data into place (one more upper link, the same
            // union count).
            let pst = sys::fs::fstat(pfd)?;
            let tmp = upper.temp_name();
            let fd = top.fd()?;
            sys::fs::link_fd(fd.as_fd(), upper.work.as_fd(), &tmp)?;
            let placed = upper
                .shift_nlink_offset(fd.as_fd(), -1)
                .and_then(|()| sys::fs::open_path_at(upper.work.as_fd(), &tmp));
            let nfd = match placed {
                Ok(nfd) => nfd,
                Err(e) => {
                    upper.discard(&tmp);
                    return Err(e);
                }
            };
            if let Err(e) = upper.place(&tmp, pfd, name, false) {
                let _ = upper.shift_nlink_offset(fd.as_fd(), 1);
                return Err(e);
            }
            (nfd, pst)
        } else if hard_linked {
            // Keep the lower hard links together (overlayfs index=on): the
            // other names find this copy through the index. Two upper
            // names once placed: the index entry and this one.
            let pst = sys::fs::fstat(pfd)?;
            let (tmp, nfd, iname) = self.stage_into_index(stack, &found, ino, data, 2)?;
            if let Err(e) = upper.place(&tmp, pfd, name, false) {
                // An index entry without its name would make the other
                // names report a wrong link count: take it back.
                let _ = sys::fs::unlink_at(upper.index.as_fd(), &iname, false);
                return Err(e);
            }
            (nfd, pst)
        } else if defer
            && found.kind == Kind::File
            && data == CopyUpData::Full
            && upper.durable
            && upper.batch_sync
        {
            // The data is synced later, with a whole burst of copy-ups, and
            // only then does the copy take its name (`publish.rs`); the
            // node serves from the staged copy meanwhile.
            let generation = self.backings.xattr_generation();
            // The path the copy records (`publish.rs`): taken after the
            // count of directory renames, from the union's parent links.
            let moves = self.publisher.moves();
            let target = self.inodes.path_of(pino)?.join(name);
            let staged = self.stage_found(
                stack,
                &found,
                ino,
                data,
                copy_up::Publish::Later(Some(&target)),
            )?;
            let (tmp, sfd) = (staged.tmp, staged.fd);
            // A second O_PATH fd of the copy (the queue keeps one, the
            // node's layer the other): a dup, not a reopen by path.
            let nfd = match sys::fs::dup(sfd.as_fd()) {
                Ok(fd) => fd,
                Err(e) => {
                    upper.discard(&tmp);
                    return Err(e);
                }
            };
            let current = self.stack.load_full();
            let pending = crate::publish::Pending {
                parent: pino,
                name: name.to_os_string(),
                tmp,
                dir: std::sync::Arc::clone(&pfd_arc),
                fd: sfd,
                ino: ino.0,
                stack: std::sync::Arc::clone(&current),
            };
            let refused = if current.generation() == stack.generation() {
                self.publisher.add(pending, moves).err()
            } else {
                Some(pending)
            };
            if let Some(p) = refused {
                // No publisher (or the stack just changed): synced and
                // placed now, as a copy-up always was.
                p.publish_synced()?;
            }
            let layer = self.upper_layer(stack, nfd, target, false)?;
            note_xattrs(&layer, generation, staged.visible_xattrs);
            let state = NodeState {
                parent: pino,
                name: name.to_os_string(),
                layers: vec![layer],
                generation: stack.generation(),
            };
            self.inodes.refresh(ino, found.kind, state.clone());
            return Ok(state);
        } else {
            let generation = self.backings.xattr_generation();
            let pst = sys::fs::fstat(pfd)?;
            let staged = self.stage_found(stack, &found, ino, data, copy_up::Publish::Synced)?;
            upper.place(&staged.tmp, pfd, name, found.kind == Kind::Dir)?;
            visible = staged.visible_xattrs.map(|v| (generation, v));
            (staged.fd, pst)
        };
        // Copy-up is not a change of the parent: keep its times (as overlayfs does).
        let _ = sys::fs::utimes_fd(
            pfd,
            SetTime::At(pst.st_atime, pst.st_atime_nsec),
            SetTime::At(pst.st_mtime, pst.st_mtime_nsec),
        );
        let mut layers = vec![self.upper_layer(stack, nfd, ppath.join(name), false)?];
        if let Some((generation, any)) = visible {
            note_xattrs(&layers[0], generation, Some(any));
        }
        if data.is_deferred() {
            layers[0].metacopy = true;
            layers.push(found.state.data()?.clone());
        }
        if found.kind == Kind::Dir {
            let had_lower = !found.state.layers.is_empty();
            layers.extend(found.state.layers);
            if had_lower {
                // Now merged: its link count is reported as 1, as overlayfs does.
                self.invalidate_attributes(ino);
            }
        }
        let state = NodeState {
            parent: pino,
            name: name.to_os_string(),
            layers,
            generation: stack.generation(),
        };
        self.inodes.refresh(ino, found.kind, state.clone());
        Ok(state)
    }
}
