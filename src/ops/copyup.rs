//! Copy-up orchestration: giving an object (and its parents, first) an
//! upper instance.
//!
//! Locks: one of `COPY_LOCKS` striped mutexes, keyed by the object's inode
//! number, is held while that object is copied up, so concurrent writers to
//! one lower file cause exactly one copy-up. Parents are copied up before
//! the child's lock is taken, so no thread holds two of them.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::UnionFs;
use crate::copy_up::{self, CopyUpData};
use crate::error::{Error, Result};
use crate::inode::{Ino, Kind, Layer, NodeState, ROOT_INO};
use crate::lookup::{self, Found};
use crate::sys;
use crate::sys::fs::SetTime;
use crate::upper::Upper;
use crate::whiteout::Opacity;

/// Number of striped copy-up locks.
pub(super) const COPY_LOCKS: usize = 64;

impl UnionFs {
    /// The upper machinery, or EROFS for a read-only union.
    pub(super) fn upper_ctx(&self) -> Result<&Upper> {
        self.upper.as_ref().ok_or(Error::ReadOnly)
    }

    /// True when the topmost instance of `state` is in the upper.
    pub(super) fn in_upper(&self, state: &NodeState) -> bool {
        match (&self.upper, state.layers.first()) {
            (Some(u), Some(l)) => l.branch == u.branch,
            _ => false,
        }
    }

    /// Ensures node `ino` has an upper instance and returns its state.
    pub(super) fn copy_up(&self, ino: Ino, data: CopyUpData) -> Result<NodeState> {
        self.upper_ctx()?;
        let node = self.inodes.get(ino)?;
        let state = node.snapshot();
        if self.in_upper(&state) {
            return Ok(state);
        }
        let path = self.inodes.path_of(ino)?;
        self.copy_up_path(&path, data)
    }

    /// Walks `path` from the root, copying up each directory on the way
    /// and the final object. Returns the final object's state.
    pub(super) fn copy_up_path(&self, path: &Path, data: CopyUpData) -> Result<NodeState> {
        let mut ino = ROOT_INO;
        let mut state = self.inodes.get(ROOT_INO)?.snapshot();
        if !self.in_upper(&state) {
            return Err(Error::ReadOnly);
        }
        let mut cur = PathBuf::new();
        let n = path.components().count();
        for (i, comp) in path.components().enumerate() {
            let name = comp.as_os_str();
            let found = lookup::lookup(&self.stack, ino, &state, &cur, name)?;
            if i + 1 < n && found.kind != Kind::Dir {
                return Err(Error::NotDir);
            }
            let cino = self.ino_of(&found);
            let this_data = if i + 1 == n { data } else { CopyUpData::Full };
            let next = if self.in_upper(&found.state) {
                found.state
            } else {
                self.copy_up_one(ino, &mut state, &cur, name, cino, found, this_data)?
            };
            cur.push(name);
            ino = cino;
            state = next;
        }
        Ok(state)
    }

    /// Copies up one object whose parent (`pstate`, at `ppath`) already has
    /// an upper instance.
    #[allow(clippy::too_many_arguments)]
    fn copy_up_one(
        &self,
        pino: Ino,
        pstate: &mut NodeState,
        ppath: &Path,
        name: &OsStr,
        ino: Ino,
        found: Found,
        data: CopyUpData,
    ) -> Result<NodeState> {
        let upper = self.upper_ctx()?;
        let player = pstate.top()?.clone();
        let pfd = player.fd.as_fd();
        let _guard = self.copy_locks[(ino.0 as usize) % COPY_LOCKS].lock();
        // Another writer may have finished this copy-up while we waited.
        let again = lookup::lookup(&self.stack, pino, pstate, ppath, name)?;
        if self.in_upper(&again.state) {
            return Ok(again.state);
        }
        let top = found.state.top()?;
        let pst = sys::fs::fstat(pfd)?;
        let (tmp, _) = copy_up::stage(upper, &top.fd, &found.stat, data, ino.0)?;
        upper.place(&tmp, pfd, name, found.kind == Kind::Dir)?;
        // Copy-up is not a change of the parent: keep its times (as overlayfs does).
        let _ = sys::fs::utimes_fd(
            pfd,
            SetTime::At(pst.st_atime, pst.st_atime_nsec),
            SetTime::At(pst.st_mtime, pst.st_mtime_nsec),
        );
        if !player.impure {
            upper.mark_impure(pfd);
            if let Some(l) = pstate.layers.first_mut() {
                l.impure = true;
            }
            self.inodes.refresh(pino, Kind::Dir, pstate.clone());
        }
        let nfd = sys::fs::open_path_at(pfd, name)?;
        let mut layers = vec![Layer {
            branch: upper.branch,
            fd: Arc::new(nfd),
            opacity: Opacity::Transparent,
            impure: false,
        }];
        if found.kind == Kind::Dir {
            layers.extend(found.state.layers);
        }
        let state = NodeState {
            parent: pino,
            name: name.to_os_string(),
            layers,
        };
        self.inodes.refresh(ino, found.kind, state.clone());
        Ok(state)
    }
}
