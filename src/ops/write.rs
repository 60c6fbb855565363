//! Namespace changes: create, mknod, mkdir, symlink, link, unlink, rmdir,
//! rename, and unnamed files (O_TMPFILE) that a link names later — each
//! matching kernel overlayfs: parents copied up first, new
//! objects replacing a whiteout atomically, whiteouts where a lower object
//! is deleted, opaque directories where a directory replaces a deleted one,
//! redirects where a directory with lower content is renamed (never EXDEV,
//! never a copy of the subtree).
//!
//! Names: a new name (create, mknod, mkdir, symlink, link, rename target)
//! longer than the union's NAME_MAX is ENAMETOOLONG, and `.wh.*` is
//! reserved. In AUFS format a lower name of 252 to 255 bytes cannot be
//! deleted or renamed away, because its whiteout `.wh.<name>` would not fit
//! in a directory: that is refused with ENAMETOOLONG and one warning, before
//! anything changes. In overlay format a char 0:0 device *is* a whiteout,
//! so mknod of one is EPERM, as in overlayfs.
//!
//! Locks: none of their own; copy-up takes its striped lock. A name
//! operation holds the publisher's name-operation count (`Quiet`, not a
//! lock) and may wait for its burst lock (a directory rename publishes the
//! copies pending below it first). The kernel serialises namespace changes
//! within one directory (i_rwsem).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::OFlag;

use super::{Caller, Entry, UnionFs};
use crate::copy_up::CopyUpData;
use crate::error::{Error, Result};
use crate::handle::{Fh, FileHandle, Handle};
use crate::inode::{Ino, Kind, NodeState};
use crate::lookup;
use crate::stack::BranchStack;
use crate::sys;
use crate::sys::fs::RenameMode;
use crate::upper::{remove_tree, Upper};
use crate::whiteout;

/// What to create.
#[derive(Debug)]
pub enum NewObject<'a> {
    /// A regular file, opened with these open(2) flags.
    File {
        /// open(2) flags.
        flags: i32,
    },
    /// A directory.
    Dir,
    /// A fifo, socket or device node.
    Node {
        /// Device number.
        rdev: u64,
    },
    /// A symbolic link.
    Symlink {
        /// Its target.
        target: &'a OsStr,
    },
}

/// rename(2) flags the union understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameHow {
    /// Replace an existing destination.
    Replace,
    /// RENAME_NOREPLACE.
    NoReplace,
    /// RENAME_EXCHANGE.
    Exchange,
}

fn check_reserved(name: &OsStr) -> Result<()> {
    if whiteout::is_reserved(name) {
        return Err(Error::Reserved);
    }
    Ok(())
}

impl UnionFs {
    /// Checks a name about to be created: not longer than the union's
    /// NAME_MAX, not reserved.
    fn check_new_name(&self, name: &OsStr) -> Result<()> {
        self.check_new_len(name)?;
        check_reserved(name)
    }

    /// Refuses to remove `name` from the view where that needs a whiteout
    /// the upper's format cannot write (an AUFS `.wh.<name>` longer than a
    /// name may be); says why once in the log, since ENAMETOOLONG for a name
    /// that is plainly there puzzles. Changes nothing.
    fn check_whiteout_fits(
        &self,
        stack: &BranchStack,
        upper: &Upper,
        pino: Ino,
        pstate: &NodeState,
        ppath: &Path,
        name: &OsStr,
    ) -> Result<()> {
        if upper.format != crate::whiteout::WhiteoutFormat::Aufs
            || whiteout::aufs_whiteout_fits(name)
            || !self.lower_has(stack, pino, pstate, ppath, name)?
        {
            return Ok(());
        }
        tracing::warn!(
            "cannot delete or rename away {:?} ({} bytes) in {}: a lower branch holds it and \
             its AUFS whiteout would be longer than {} bytes (whiteout=aufs hides lower names \
             of at most {} bytes)",
            name,
            name.len(),
            Path::new("/").join(ppath).display(),
            whiteout::NAME_MAX,
            whiteout::AUFS_NAME_MAX,
        );
        Err(Error::NameTooLong)
    }

    /// The union state of directory `ino` with an upper instance, and its path.
    fn upper_parent(
        &self,
        stack: &BranchStack,
        ino: Ino,
    ) -> Result<(NodeState, std::path::PathBuf)> {
        let node = self.inodes.get(ino)?;
        if node.kind != Kind::Dir {
            return Err(Error::NotDir);
        }
        let state = self.copy_up(stack, ino, CopyUpData::Full)?;
        Ok((state, self.inodes.path_of(ino)?))
    }

    /// The union state of directory `ino` as it is (no copy-up), and its path.
    fn dir_state(&self, stack: &BranchStack, ino: Ino) -> Result<(NodeState, std::path::PathBuf)> {
        let node = self.inodes.get(ino)?;
        if node.kind != Kind::Dir {
            return Err(Error::NotDir);
        }
        Ok((self.state_in(stack, &node), self.inodes.path_of(ino)?))
    }

    /// Looks `name` up in a directory state (no lookup counted).
    pub(super) fn find(
        &self,
        stack: &BranchStack,
        pino: Ino,
        pstate: &NodeState,
        ppath: &Path,
        name: &OsStr,
    ) -> Result<Option<lookup::Found>> {
        match self.find_union(stack, pino, pstate, ppath, name) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether any lower branch (below the upper) shows `name` in this directory.
    fn lower_has(
        &self,
        stack: &BranchStack,
        pino: Ino,
        pstate: &NodeState,
        ppath: &Path,
        name: &OsStr,
    ) -> Result<bool> {
        let lowers = NodeState {
            parent: pstate.parent,
            name: pstate.name.clone(),
            layers: pstate
                .layers
                .iter()
                .filter(|l| Some(l.branch) != stack.writer().map(|u| u.branch))
                .cloned()
                .collect(),
            generation: pstate.generation,
        };
        if lowers.layers.is_empty() {
            return Ok(false);
        }
        Ok(self.find(stack, pino, &lowers, ppath, name)?.is_some())
    }

    /// Sets the owner of a new object to the caller (group from a setgid
    /// parent), restoring suid/sgid bits that chown clears.
    fn own(
        &self,
        fd: BorrowedFd<'_>,
        parent: BorrowedFd<'_>,
        caller: Caller,
        mode: u32,
        kind: Kind,
        staged: bool,
    ) -> Result<()> {
        if caller.uid == 0 && caller.gid == 0 && !staged {
            // Made in place by a root daemon: the branch filesystem already
            // applied the owner and setgid-directory rules for a root caller.
            return Ok(());
        }
        // Staged objects were made in the workdir, which is not their
        // parent: apply the parent's setgid rule here.
        let pst = sys::fs::fstat(parent)?;
        let sgid_parent = pst.st_mode & libc::S_ISGID != 0;
        let gid = if sgid_parent { pst.st_gid } else { caller.gid };
        sys::fs::chown_fd(fd, Some(caller.uid), Some(gid))?;
        let mode = if kind == Kind::Dir && sgid_parent {
            mode | libc::S_ISGID
        } else {
            mode
        };
        if kind != Kind::Symlink && (mode & (libc::S_ISUID | libc::S_ISGID) != 0 || staged) {
            sys::fs::chmod_fd(fd, mode & 0o7777)?;
        }
        Ok(())
    }

    /// Makes `what` in `dir`/`name` (directly, or staged when it replaces a
    /// whiteout); returns an O_PATH fd and, for files, the open fd.
    fn make(
        &self,
        upper: &Upper,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        what: &NewObject<'_>,
        mode: u32,
        caller: Caller,
    ) -> Result<(OwnedFd, Option<OwnedFd>)> {
        let over_whiteout = upper.whiteout_at(dir, name)?;
        let (at, at_name): (BorrowedFd<'_>, OsString) = if over_whiteout {
            (upper.work.as_fd(), upper.temp_name())
        } else {
            (dir, name.to_os_string())
        };
        let kind;
        let mut open = None;
        match what {
            NewObject::File { flags } => {
                kind = Kind::File;
                open = Some(sys::fs::create_at(
                    at,
                    &at_name,
                    super::file::backing_flags(*flags) & !OFlag::O_TRUNC,
                    mode & 0o7777,
                )?);
            }
            NewObject::Dir => {
                kind = Kind::Dir;
                sys::fs::mkdir_at(at, &at_name, mode & 0o7777)?;
            }
            NewObject::Node { rdev } => {
                kind = Kind::from_mode(mode);
                sys::fs::mknod_at(at, &at_name, mode, *rdev)?;
            }
            NewObject::Symlink { target } => {
                kind = Kind::Symlink;
                sys::fs::symlink_at(target, at, &at_name)?;
            }
        }
        let finish = (|| -> Result<OwnedFd> {
            let fd = sys::fs::open_path_at(at, &at_name)?;
            self.own(fd.as_fd(), dir, caller, mode, kind, over_whiteout)?;
            if over_whiteout {
                if kind == Kind::Dir {
                    // A directory replacing a deleted one must not show what
                    // lay below it (overlayfs semantics).
                    upper.make_opaque(fd.as_fd())?;
                }
                upper.place(&at_name, dir, name, kind == Kind::Dir)?;
            }
            Ok(fd)
        })();
        match finish {
            Ok(fd) => Ok((fd, open)),
            Err(e) => {
                if over_whiteout {
                    upper.discard(&at_name);
                } else {
                    let _ = sys::fs::unlink_at(dir, name, kind == Kind::Dir);
                }
                Err(e)
            }
        }
    }

    /// Registers a new upper object as a node (counts one lookup).
    fn new_entry(
        &self,
        stack: &BranchStack,
        parent: Ino,
        ppath: &Path,
        name: &OsStr,
        fd: OwnedFd,
        open: Option<BorrowedFd<'_>>,
    ) -> Result<Entry> {
        let st = sys::fs::fstat(fd.as_fd())?;
        let layer = self.upper_layer(stack, fd, ppath.join(name), false)?;
        self.register(stack, parent, name, layer, &st, open)
    }

    /// Registers new upper object `layer` (stat `st`, named `name` in
    /// `parent`) as a node (counts one lookup).
    fn register(
        &self,
        stack: &BranchStack,
        parent: Ino,
        name: &OsStr,
        layer: crate::inode::Layer,
        st: &nix::sys::stat::FileStat,
        open: Option<BorrowedFd<'_>>,
    ) -> Result<Entry> {
        let kind = Kind::from_mode(st.st_mode);
        let ino = Ino(stack.fold_ino(st.st_dev, st.st_ino));
        if let Some(f) = open {
            // What the new file holds (an inherited ACL, a security label),
            // learnt now from its open fd: the kernel asks for
            // `security.capability` before its first write.
            self.learn_xattrs(stack, &layer, f);
        }
        let state = NodeState {
            parent,
            name: name.to_os_string(),
            layers: vec![layer],
            generation: stack.generation(),
        };
        let attr = self.attr_of(stack, ino, st, &state);
        let node = self.inodes.remember(ino, kind, state).ino;
        Ok(Entry { attr, node })
    }

    /// Creates `name` in `parent`. For files also returns an open handle.
    pub fn create_object(
        &self,
        parent: Ino,
        name: &OsStr,
        what: NewObject<'_>,
        mode: u32,
        caller: Caller,
    ) -> Result<(Entry, Option<Fh>)> {
        let _gate = self.gate.read();
        // Goes by the upper name: its copy-up may not be pending (`publish.rs`).
        let _quiet = self.publisher.quiesce_names(&[(parent, name)])?;
        self.check_new_name(name)?;
        let is_dir = matches!(what, NewObject::Dir);
        let snapshot = self.for_new(self.stack.load_full(), parent, name, is_dir)?;
        let stack = &*snapshot;
        let upper = self.upper_ctx(stack)?;
        if let NewObject::Node { rdev } = what {
            if upper.format == crate::whiteout::WhiteoutFormat::Overlay
                && whiteout::is_char_whiteout(mode, rdev)
            {
                // It would be read back as a whiteout: the name would vanish.
                return Err(Error::Reserved);
            }
        }
        let (pstate, ppath) = self.upper_parent(stack, parent)?;
        let pfd = pstate.top()?.fd()?;
        let (fd, open) = self.make(upper, pfd.as_fd(), name, &what, mode, caller)?;
        let entry = self.new_entry(
            stack,
            parent,
            &ppath,
            name,
            fd,
            open.as_ref().map(AsFd::as_fd),
        )?;
        let fh = open.map(|fd| {
            self.handles
                .insert(Handle::File(FileHandle::new(entry.node, upper.branch, fd)))
        });
        Ok((entry, fh))
    }

    /// open(2) with O_TMPFILE in directory `parent`: an unnamed file in the
    /// upper's instance of the directory (copied up first, as kernel
    /// overlayfs does), registered as a node with no name and opened.
    /// A LINK of the node (linkat through /proc, or AT_EMPTY_PATH) names it
    /// (`link`); unlinked, it goes with its last fd. The node holds an
    /// O_PATH fd of the file for its life: a handle could not reopen it.
    pub fn create_tmpfile(
        &self,
        parent: Ino,
        flags: i32,
        mode: u32,
        caller: Caller,
    ) -> Result<(Entry, Fh)> {
        let _gate = self.gate.read();
        // No name: an empty one never exists in a branch, so the branch
        // choice sees no whiteout and no instance.
        let snapshot = self.for_new(self.stack.load_full(), parent, OsStr::new(""), false)?;
        let stack = &*snapshot;
        let upper = self.upper_ctx(stack)?;
        let (pstate, ppath) = self.upper_parent(stack, parent)?;
        let pfd = pstate.top()?.fd()?;
        // (O_EXCL is the kernel's: it refuses to link such a file itself.)
        let open = sys::tmpfile::tmpfile_at(
            pfd.as_fd(),
            super::file::backing_flags(flags) & !OFlag::O_TRUNC,
            mode & 0o7777,
        )?;
        let path = sys::fs::reopen(open.as_fd(), OFlag::O_PATH)?;
        self.own(path.as_fd(), pfd.as_fd(), caller, mode, Kind::File, false)?;
        let st = sys::fs::fstat(path.as_fd())?;
        let branch = stack.get(upper.branch).ok_or(Error::StaleInode)?;
        let layer = crate::inode::Layer::with_backing(branch, branch.pinned(path), ppath);
        let entry = self.register(
            stack,
            parent,
            OsStr::new(""),
            layer,
            &st,
            Some(open.as_fd()),
        )?;
        let fh = self.handles.insert(Handle::File(FileHandle::new(
            entry.node,
            upper.branch,
            open,
        )));
        Ok((entry, fh))
    }

    /// Links node `ino` as `newparent/newname`.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> Result<Entry> {
        let at = self.inodes.get(ino)?.snapshot();
        let _quiet = self
            .publisher
            .quiesce_names(&[(at.parent, &at.name), (newparent, newname)])?;
        let snapshot = self.for_move(
            self.stack.load_full(),
            (ino, Path::new(""), None),
            newparent,
            newname,
        )?;
        let stack = &*snapshot;
        self.check_new_name(newname)?;
        let upper = self.upper_ctx(stack)?;
        let node = self.inodes.get(ino)?;
        if node.kind == Kind::Dir {
            return Err(Error::LinkDir);
        }
        let mut src = self.copy_up(stack, ino, CopyUpData::Full)?;
        let (mut pstate, nppath) = self.upper_parent(stack, newparent)?;
        // The new name carries the node's recorded number, if it has one.
        self.mark_impure(stack, newparent, &mut pstate)?;
        let pfd = pstate.top()?.fd()?;
        let sfd = src.top()?.fd()?;
        if upper.whiteout_at(pfd.as_fd(), newname)? {
            let tmp = upper.temp_name();
            sys::fs::link_fd(sfd.as_fd(), upper.work.as_fd(), &tmp)?;
            upper.place(&tmp, pfd.as_fd(), newname, false)?;
        } else {
            sys::fs::link_fd(sfd.as_fd(), pfd.as_fd(), newname)?;
        }
        // One more name in the union and one more upper link: the
        // recorded offset stays as it is.
        // The node keeps its number; count the lookup the reply implies.
        let st = sys::fs::fstat(sfd.as_fd())?;
        self.object_changed(node.st_ino);
        if src.name.is_empty() {
            // An unnamed (O_TMPFILE) file takes its first name.
            src.parent = newparent;
            src.name = newname.to_os_string();
            if let Some(l) = src.layers.first_mut() {
                l.path = nppath.join(newname);
            }
        }
        let attr = self.attr_of(stack, node.st_ino, &st, &src);
        // (A retired node's new name goes to its object's current node.)
        let node = self.inodes.remember(node.st_ino, node.kind, src).ino;
        Ok(Entry { attr, node })
    }

    /// unlink(2).
    pub fn unlink(&self, parent: Ino, name: &OsStr) -> Result<()> {
        let snapshot = self.for_child(self.stack.load_full(), parent, name)?;
        let stack = &*snapshot;
        self.remove(stack, parent, name, false)
    }

    /// rmdir(2): the merged view must be empty.
    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> Result<()> {
        let snapshot = self.for_child(self.stack.load_full(), parent, name)?;
        let stack = &*snapshot;
        self.remove(stack, parent, name, true)
    }

    fn remove(&self, stack: &BranchStack, parent: Ino, name: &OsStr, dir: bool) -> Result<()> {
        let _quiet = self.publisher.quiesce_names(&[(parent, name)])?;
        super::namei::check_lookup_len(name)?;
        let upper = self.upper_ctx(stack)?;
        if self
            .remove_in_upper_only_dir(stack, parent, name, dir)
            .map_err(|e| self.or_too_long(e, name))?
        {
            return Ok(());
        }
        // Everything that can fail is checked before anything is copied up.
        let (pstate, ppath) = self.dir_state(stack, parent)?;
        let found = self
            .find(stack, parent, &pstate, &ppath, name)?
            .ok_or_else(|| self.or_too_long(Error::NotFound, name))?;
        match (dir, found.kind == Kind::Dir) {
            (false, true) => return Err(Error::IsDir),
            (true, false) => return Err(Error::NotDir),
            _ => {}
        }
        if dir && !self.merged_dir_is_empty(stack, &found, &ppath.join(name))? {
            return Err(Error::NotEmpty);
        }
        self.check_whiteout_fits(stack, upper, parent, &pstate, &ppath, name)?;
        let (pstate, _) = self.upper_parent(stack, parent)?;
        let pfd = pstate.top()?.fd()?;
        let in_upper = self.in_upper(stack, &found.state);
        // An object that shows from below is a lower's: no second look.
        let lower_has = !in_upper || self.lower_has(stack, parent, &pstate, &ppath, name)?;
        let dropped = if dir {
            None
        } else {
            self.drop_name(stack, &found)?
        };
        let victim = self.ino_of(stack, &found);
        // (A plain unlink keeps the fd it unlinks through: `unlink_deferred`.)
        if in_upper && (lower_has || dir) {
            self.keep_victim(stack, victim, || found.state.top()?.fd());
        }
        // What the upper holds under the name changes under its lock (a
        // copy-up of it must see the whiteout, see `copyup.rs`).
        let _name = self.name_lock(parent, name);
        let removed = match (in_upper, lower_has, dir) {
            (true, false, false) => self
                .unlink_deferred(stack, pfd.as_fd(), name, |_| Ok(victim))
                .map(|_| ()),
            (true, false, true) => self.remove_upper_dir(upper, pfd.as_fd(), name, false),
            (true, true, true) => self.remove_upper_dir(upper, pfd.as_fd(), name, true),
            // write_whiteout replaces an upper non-directory atomically.
            (_, true, false) | (false, true, true) => upper.write_whiteout(pfd.as_fd(), name),
            (false, false, _) => Err(Error::NotFound),
        };
        match &removed {
            Ok(()) => self.object_changed(victim),
            Err(_) => self.undrop_name(stack, dropped),
        }
        removed
    }

    /// Unlinks upper non-directory `dir/name` through the fd it holds of
    /// it across the unlink: that fd is kept by the nodes the kernel still
    /// holds for the object (`keep_victim`; `ino` tells its number from
    /// the fd), or else closed on the union's closer thread
    /// (`Backings::defer_close`), which then frees its data (the last
    /// iput): an `rm -rf` waits for each unlink, not for ext4's truncate.
    /// Returns the object's number, when it could be told (the caller tells
    /// its current node: `object_changed`).
    fn unlink_deferred(
        &self,
        stack: &BranchStack,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        ino: impl FnOnce(&OwnedFd) -> Result<Ino>,
    ) -> Result<Option<Ino>> {
        let Some(fd) = sys::fs::unlink_holding(dir, name)? else {
            return Ok(None);
        };
        let fd = Arc::new(fd);
        let ino = ino(&fd).ok();
        let kept = ino.is_some_and(|ino| self.keep_victim(stack, ino, || Ok(Arc::clone(&fd))));
        if !kept {
            if let Ok(fd) = Arc::try_unwrap(fd) {
                self.backings.defer_close(fd);
            }
        }
        Ok(ino)
    }

    /// Before the union removes an upper object (numbered `ino`) by one of
    /// its names: the nodes the kernel still holds for it (an open file, a
    /// cwd, an O_PATH fd, a retired node's readers) keep an fd of it
    /// (`Backing::keep`, from `fd`), so their GETATTRs are answered once it
    /// has no name — as by the kernel's own file systems; a handle cannot
    /// reopen an unlinked object. Returns whether a node took the fd.
    /// Best effort: without an fd the node answers ESTALE, as before.
    fn keep_victim(
        &self,
        stack: &BranchStack,
        ino: Ino,
        fd: impl FnOnce() -> Result<Arc<std::os::fd::OwnedFd>>,
    ) -> bool {
        let Some(upper) = stack.writer() else {
            return false;
        };
        let current = self.inodes.node_id(ino);
        let tops: Vec<_> = [ino, current]
            .iter()
            .enumerate()
            .filter(|(i, id)| *i == 0 || **id != ino)
            .filter_map(|(_, id)| self.inodes.get(*id).ok())
            .filter_map(|n| {
                let st = n.state.read();
                st.layers
                    .first()
                    .filter(|l| l.branch == upper.branch)
                    .map(|l| Arc::clone(&l.backing))
            })
            .collect();
        if tops.is_empty() {
            return false;
        }
        let Ok(fd) = fd() else {
            return false;
        };
        for b in tops {
            b.keep(Arc::clone(&fd));
        }
        true
    }

    /// The fast path of `remove` (rm -rf of a tree the union made): in a
    /// directory that exists only in the upper nothing below can show the
    /// name, so no whiteout is needed and the object is the upper's. A
    /// file is unlinked; a directory that is not merged (no redirect) is
    /// removed when the upper holds nothing in it. Returns false when the
    /// general path must decide (merged parent or child, whiteouts left).
    fn remove_in_upper_only_dir(
        &self,
        stack: &BranchStack,
        parent: Ino,
        name: &OsStr,
        dir: bool,
    ) -> Result<bool> {
        let pstate = self.state_in(stack, &*self.inodes.get(parent)?);
        if pstate.layers.len() != 1 || !self.in_upper(stack, &pstate) {
            return Ok(false);
        }
        let pfd = pstate.top()?.fd()?;
        if !dir {
            // (unlinkat itself refuses a directory with EISDIR.)
            let impure = pstate.top()?.impure;
            let victim = self.unlink_deferred(stack, pfd.as_fd(), name, |fd| {
                let st = sys::fs::fstat(fd.as_fd())?;
                // Objects the union made here carry their own number; one
                // moved in from elsewhere may carry a recorded one.
                let recorded = match impure {
                    true => crate::lookup::recorded_ino_of(fd)?,
                    false => None,
                };
                Ok(Ino(
                    recorded.unwrap_or_else(|| stack.fold_ino(st.st_dev, st.st_ino))
                ))
            })?;
            if let Some(victim) = victim {
                self.object_changed(victim);
            }
            return Ok(true);
        }
        for n in sys::xattr::list_at(pfd.as_fd(), name)? {
            if whiteout::REDIRECT_XATTRS.iter().any(|x| n == OsStr::new(x)) {
                return Ok(false);
            }
        }
        match sys::fs::unlink_at(pfd.as_fd(), name, true) {
            Ok(()) => Ok(true),
            // Only whiteouts or markers inside, perhaps: merged emptiness decides.
            Err(e) if e.errno() == Errno::ENOTEMPTY || e.errno() == Errno::EEXIST => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Bookkeeping for a name of a non-directory about to go: a lower
    /// hard-linked file is copied to the index first (so its other names
    /// keep finding it and its count), then its union link count drops.
    /// Runs before the name goes, so a failure (a full upper) changes
    /// nothing; returns the state whose count was lowered, for
    /// `undrop_name` when removing the name then fails.
    fn drop_name(&self, stack: &BranchStack, found: &lookup::Found) -> Result<Option<NodeState>> {
        let in_upper = self.in_upper(stack, &found.state);
        let state = if found.kind == Kind::File && found.stat.st_nlink > 1 && !in_upper {
            self.copy_up_to_index(stack, found)?
        } else {
            found.state.clone()
        };
        // The union loses a name; the upper loses a link only when that
        // name is an upper link of the file (not a lower name, whited out).
        if in_upper {
            return Ok(None);
        }
        self.shift_nlink(stack, &state, -1)?;
        Ok(Some(state))
    }

    /// Undoes `drop_name`'s count change: the name did not go after all.
    /// (The index copy stays: it is complete, and the other names read the
    /// same data and count through it.)
    fn undrop_name(&self, stack: &BranchStack, dropped: Option<NodeState>) {
        if let Some(state) = dropped {
            let _ = self.shift_nlink(stack, &state, 1);
        }
    }

    /// True when the merged view of directory `found` (at `path`) lists nothing.
    fn merged_dir_is_empty(
        &self,
        stack: &BranchStack,
        found: &lookup::Found,
        path: &Path,
    ) -> Result<bool> {
        let layers = crate::readdir::layer_listings(stack, &found.state.layers, path)?;
        Ok(crate::readdir::merge(&layers).is_empty())
    }

    /// Removes the upper instance of directory `name` (which may hold
    /// whiteouts and markers), leaving a whiteout when `whiteout` says so;
    /// the view changes in one step.
    fn remove_upper_dir(
        &self,
        upper: &Upper,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        whiteout: bool,
    ) -> Result<()> {
        let tmp = upper.temp_name();
        match (whiteout, upper.format) {
            (true, crate::whiteout::WhiteoutFormat::Overlay) => {
                sys::fs::mknod_at(upper.work.as_fd(), &tmp, libc::S_IFCHR, 0)?;
                if let Err(e) =
                    sys::fs::rename_at(upper.work.as_fd(), &tmp, dir, name, RenameMode::Exchange)
                {
                    upper.discard(&tmp);
                    return Err(e);
                }
            }
            (true, crate::whiteout::WhiteoutFormat::Aufs) => {
                let had = upper.whiteout_at(dir, name)?;
                upper.write_aufs_whiteout_only(dir, name)?;
                if let Err(e) =
                    sys::fs::rename_at(dir, name, upper.work.as_fd(), &tmp, RenameMode::NoReplace)
                {
                    // The directory stays: so must the view, without a
                    // whiteout that would outlive it.
                    if !had {
                        let _ = upper.remove_aufs_whiteout(dir, name);
                    }
                    return Err(e);
                }
            }
            (false, _) => {
                sys::fs::rename_at(dir, name, upper.work.as_fd(), &tmp, RenameMode::NoReplace)?;
            }
        }
        remove_tree(upper.work.as_fd(), &tmp)
    }

    /// rename(2) / renameat2(2).
    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        how: RenameHow,
    ) -> Result<()> {
        let _quiet = self
            .publisher
            .quiesce_names(&[(parent, name), (newparent, newname)])?;
        let ppath = self.inodes.path_of(parent)?;
        let snapshot = self.for_move(
            self.stack.load_full(),
            (parent, &ppath, Some(name)),
            newparent,
            newname,
        )?;
        let stack = &*snapshot;
        super::namei::check_lookup_len(name)?;
        if how == RenameHow::Exchange {
            // Both names exist already and stay: nothing new is named and
            // no whiteout is needed.
            super::namei::check_lookup_len(newname)?;
            check_reserved(newname)?;
        } else {
            self.check_new_name(newname)?;
        }
        let upper = self.upper_ctx(stack)?;
        // Everything that can fail is checked before anything is copied up.
        let (pstate, ppath) = self.dir_state(stack, parent)?;
        let (npstate, nppath) = if newparent == parent {
            (pstate.clone(), ppath.clone())
        } else {
            self.dir_state(stack, newparent)?
        };
        let src = self
            .find(stack, parent, &pstate, &ppath, name)?
            .ok_or_else(|| self.or_too_long(Error::NotFound, name))?;
        let dst = self.find(stack, newparent, &npstate, &nppath, newname)?;
        let src_ino = self.ino_of(stack, &src);
        let dst_ino = dst.as_ref().map(|d| self.ino_of(stack, d));
        match (how, &dst) {
            (RenameHow::NoReplace, Some(_)) => return Err(Error::Exists),
            (RenameHow::Exchange, None) => return Err(self.or_too_long(Error::NotFound, newname)),
            _ => {}
        }
        if dst_ino == Some(src_ino) && how != RenameHow::Exchange {
            // Two names of one file: rename(2) does nothing.
            return Ok(());
        }
        let moves_dirs = src.kind == Kind::Dir || dst.as_ref().is_some_and(|d| d.kind == Kind::Dir);
        if moves_dirs {
            // A copy pending below a directory that moves is published by
            // its parent's fd, unaffected; but after a killed daemon the
            // next mount publishes it by the path it recorded, which this
            // rename changes. So those go first (`publish.rs`).
            let moving: Vec<Ino> = std::iter::once(src_ino).chain(dst_ino).collect();
            self.publisher
                .flush_where(|p| moving.iter().any(|&d| self.inodes.is_within(p.parent, d)))?;
        }
        if let (RenameHow::Replace, Some(d)) = (how, &dst) {
            match (src.kind == Kind::Dir, d.kind == Kind::Dir) {
                (true, false) => return Err(Error::NotDir),
                (false, true) => return Err(Error::IsDir),
                (true, true) if !self.merged_dir_is_empty(stack, d, &nppath.join(newname))? => {
                    // A target that is purely the upper's own (no lower
                    // content, never moved) is not checked before copy-up
                    // by overlayfs: the source is copied up, then the
                    // upper's rename refuses. The same here, so the tree
                    // after the failure is the same.
                    if self.is_pure_upper_dir(stack, d)? {
                        self.copy_up_path(stack, &ppath.join(name), CopyUpData::Full)?;
                    }
                    return Err(Error::NotEmpty);
                }
                _ => {}
            }
        }
        if how != RenameHow::Exchange {
            self.check_whiteout_fits(stack, upper, parent, &pstate, &ppath, name)?;
        }
        let (pstate, _) = self.upper_parent(stack, parent)?;
        let (npstate, _) = if newparent == parent {
            (pstate.clone(), nppath.clone())
        } else {
            self.upper_parent(stack, newparent)?
        };
        let pfd = pstate.top()?.fd()?;
        let npfd = npstate.top()?.fd()?;
        let src_path = ppath.join(name);
        let src_state = self.prepare_move(stack, &src, &src_path)?;
        let dst_state = match (&dst, how) {
            (Some(d), RenameHow::Exchange) => {
                Some(self.prepare_move(stack, d, &nppath.join(newname))?)
            }
            _ => None,
        };
        let src_lower = !self.in_upper(stack, &src.state)
            || self.lower_has(stack, parent, &pstate, &ppath, name)?;
        let dst_lower = self.lower_has(stack, newparent, &npstate, &nppath, newname)?;
        // A directory without lower content arriving where a lower directory
        // shows must hide it.
        if src.kind == Kind::Dir && self.lower_layer(stack, &src).is_none() && dst_lower {
            upper.make_opaque(src_state.top()?.fd()?.as_fd())?;
        }
        if let (Some(d), Some(ds)) = (&dst, &dst_state) {
            if d.kind == Kind::Dir && self.lower_layer(stack, d).is_none() && src_lower {
                upper.make_opaque(ds.top()?.fd()?.as_fd())?;
            }
        }
        // The moved object (and, exchanged, the other one) keeps its
        // recorded inode number only where its new parent says so: mark
        // before the move, so a failure here changes nothing.
        let mut npstate = npstate;
        self.mark_impure(stack, newparent, &mut npstate)?;
        if how == RenameHow::Exchange {
            let mut pstate = pstate.clone();
            self.mark_impure(stack, parent, &mut pstate)?;
        }
        let dropped = match (how, &dst) {
            (RenameHow::Replace, Some(d)) if d.kind != Kind::Dir => self.drop_name(stack, d)?,
            _ => None,
        };
        if let (RenameHow::Replace, Some(d), Some(ino)) = (how, &dst, dst_ino) {
            if self.in_upper(stack, &d.state) {
                self.keep_victim(stack, ino, || d.state.top()?.fd());
            }
        }
        let names = self.name_locks((parent, name), (newparent, newname));
        let moved = self.rename_in_upper(
            upper,
            (pfd.as_fd(), name, src_lower),
            (npfd.as_fd(), newname),
            dst.as_ref(),
            src.kind,
            how,
        );
        drop(names);
        if let Err(e) = moved {
            self.undrop_name(stack, dropped);
            return Err(e);
        }
        // The kernel moves its dentries itself; keep our parent links right.
        let mut moved = src_state;
        moved.parent = newparent;
        moved.name = newname.to_os_string();
        self.inodes.refresh(src_ino, src.kind, moved);
        if let (Some(d), Some(mut ds)) = (&dst, dst_state) {
            ds.parent = parent;
            ds.name = name.to_os_string();
            self.inodes.refresh(dst_ino.unwrap_or(src_ino), d.kind, ds);
        }
        // A replaced object lost a name, a moved one has a new ctime.
        self.object_changed(src_ino);
        if let Some(d) = dst_ino {
            self.object_changed(d);
        }
        if moves_dirs {
            // Copy-ups that overlapped this rename are not deferred.
            self.publisher.moved();
        }
        Ok(())
    }

    /// The upper half of a rename: moves `from` to `to` (or exchanges
    /// them), with the source whiteout where a lower still shows the old
    /// name (`from.2`). On failure the view is as before: an AUFS whiteout
    /// written first is taken back.
    fn rename_in_upper(
        &self,
        upper: &Upper,
        from: (BorrowedFd<'_>, &OsStr, bool),
        to: (BorrowedFd<'_>, &OsStr),
        dst: Option<&lookup::Found>,
        kind: Kind,
        how: RenameHow,
    ) -> Result<()> {
        let ((pfd, name, src_lower), (npfd, newname)) = (from, to);
        match how {
            RenameHow::Exchange => {
                sys::fs::rename_at(pfd, name, npfd, newname, RenameMode::Exchange)
            }
            RenameHow::Replace | RenameHow::NoReplace => {
                // An AUFS whiteout for the old name goes in first: while both
                // it and the object exist the object shows, so the view never
                // has the lower object peek through.
                let aufs = upper.format == crate::whiteout::WhiteoutFormat::Aufs;
                let wrote_aufs_whiteout = src_lower
                    && aufs
                    && match sys::fs::stat_at(pfd, &whiteout::whiteout_name(name)) {
                        Ok(_) => false,
                        Err(e) if e.is_not_found() => true,
                        Err(e) => return Err(e),
                    };
                if src_lower && aufs {
                    upper.write_aufs_whiteout_only(pfd, name)?;
                }
                let moved = self.move_into_place(
                    upper,
                    pfd,
                    name,
                    npfd,
                    newname,
                    dst,
                    kind,
                    src_lower && !aufs,
                );
                let left_whiteout = match moved {
                    Ok(w) => w,
                    Err(e) => {
                        if wrote_aufs_whiteout {
                            // The object is still under the old name: a
                            // whiteout beside it would outlive it there.
                            let _ = upper.remove_aufs_whiteout(pfd, name);
                        }
                        return Err(e);
                    }
                };
                if src_lower && !aufs && !left_whiteout {
                    upper.write_whiteout(pfd, name)?;
                }
                Ok(())
            }
        }
    }

    /// Gives a rename source an upper instance; a directory with lower
    /// content gets a redirect to where that content lives, so the rename
    /// costs O(1) whatever the size of the subtree.
    fn prepare_move(
        &self,
        stack: &BranchStack,
        found: &lookup::Found,
        path: &Path,
    ) -> Result<NodeState> {
        let upper = self.upper_ctx(stack)?;
        let redirect_to = match self.lower_layer(stack, found) {
            Some(i) if found.kind == Kind::Dir && !self.has_redirect(stack, found)? => {
                found.state.layers.get(i).map(|l| l.path.clone())
            }
            _ => None,
        };
        let state = if found.state.is_metacopy() && self.in_upper(stack, &found.state) {
            // Its data is found by its path below: give it the data first.
            self.complete_data(
                stack,
                self.ino_of(stack, found),
                found.state.clone(),
                CopyUpData::Full,
            )?
        } else if self.in_upper(stack, &found.state) {
            found.state.clone()
        } else {
            self.copy_up_path(stack, path, CopyUpData::Full)?
        };
        if let Some(target) = redirect_to {
            upper.set_redirect(state.top()?.fd()?.as_fd(), &target)?;
        }
        Ok(state)
    }

    /// Index of the first layer of `found` that is not in the upper.
    fn lower_layer(&self, stack: &BranchStack, found: &lookup::Found) -> Option<usize> {
        let up = stack.writer().map(|u| u.branch);
        found.state.layers.iter().position(|l| Some(l.branch) != up)
    }

    /// A directory only the upper holds and that was never moved (overlayfs:
    /// no lower and no origin — `ovl_pure_upper`).
    fn is_pure_upper_dir(&self, stack: &BranchStack, found: &lookup::Found) -> Result<bool> {
        Ok(found.state.layers.len() == 1
            && self.in_upper(stack, &found.state)
            && !self.has_redirect(stack, found)?)
    }

    /// Whether the upper instance of a directory already redirects.
    fn has_redirect(&self, stack: &BranchStack, found: &lookup::Found) -> Result<bool> {
        if !self.in_upper(stack, &found.state) {
            return Ok(false);
        }
        let fd = found.state.top()?.fd()?;
        for n in sys::xattr::list(fd.as_fd())? {
            if whiteout::REDIRECT_XATTRS.iter().any(|x| n == OsStr::new(x)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Moves upper `from_dir/from` to `to_dir/to`, replacing what the upper
    /// holds there (object, whiteout, or an emptied directory). With
    /// `whiteout_src`, tries to leave a char 0:0 whiteout at the source in
    /// the same step; returns whether it did.
    #[allow(clippy::too_many_arguments)]
    fn move_into_place(
        &self,
        upper: &Upper,
        from_dir: BorrowedFd<'_>,
        from: &OsStr,
        to_dir: BorrowedFd<'_>,
        to: &OsStr,
        dst: Option<&lookup::Found>,
        kind: Kind,
        whiteout_src: bool,
    ) -> Result<bool> {
        let at_dst = match sys::fs::stat_at(to_dir, to) {
            Ok(st) => Some(st),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let left_whiteout = match at_dst {
            Some(st) if whiteout::is_char_whiteout(st.st_mode, st.st_rdev) && kind == Kind::Dir => {
                // A directory cannot replace a device: swap; the device
                // lands at the source, which is the whiteout wanted there.
                sys::fs::rename_at(from_dir, from, to_dir, to, RenameMode::Exchange)?;
                if !whiteout_src {
                    sys::fs::unlink_at(from_dir, from, false)?;
                }
                whiteout_src
            }
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR && dst.is_some() => {
                // An (empty in the view) upper directory: it may still hold
                // whiteouts, so move it aside first.
                let tmp = upper.temp_name();
                sys::fs::rename_at(to_dir, to, upper.work.as_fd(), &tmp, RenameMode::NoReplace)?;
                if let Err(e) =
                    sys::fs::rename_at(from_dir, from, to_dir, to, RenameMode::NoReplace)
                {
                    // Put the replaced directory back: a failed rename
                    // changes nothing.
                    let _ = sys::fs::rename_at(
                        upper.work.as_fd(),
                        &tmp,
                        to_dir,
                        to,
                        RenameMode::NoReplace,
                    );
                    return Err(e);
                }
                remove_tree(upper.work.as_fd(), &tmp)?;
                false
            }
            _ if whiteout_src => {
                match sys::fs::rename_at(from_dir, from, to_dir, to, RenameMode::Whiteout) {
                    Ok(()) => true,
                    // No RENAME_WHITEOUT here (privilege, filesystem).
                    Err(e)
                        if matches!(
                            e.errno(),
                            Errno::EINVAL | Errno::EPERM | Errno::EOPNOTSUPP
                        ) =>
                    {
                        sys::fs::rename_at(from_dir, from, to_dir, to, RenameMode::Replace)?;
                        false
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => {
                sys::fs::rename_at(from_dir, from, to_dir, to, RenameMode::Replace)?;
                false
            }
        };
        upper.remove_aufs_whiteout(to_dir, to)?;
        Ok(left_whiteout)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    //! The name rules on the core itself, without a mount: the kernel's
    //! lookup pre-empts most of these checks through FUSE, so here they are
    //! checked where they are made.

    use std::ffi::OsString;
    use std::path::Path;

    use super::*;
    use crate::branch::{Branch, BranchId};
    use crate::inode::ROOT_INO;
    use crate::mode::Mode;
    use crate::ops::CoreOptions;
    use crate::stack::BranchStack;
    use crate::upper::XattrNs;
    use crate::whiteout::WhiteoutFormat;

    const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
    };

    fn name(c: char, n: usize) -> OsString {
        OsString::from(c.to_string().repeat(n))
    }

    /// A union over `<dir>/lower` (holding a 253-byte name and a 252-byte
    /// one) with upper `<dir>/upper`, writing `format`.
    fn union(dir: &Path, format: WhiteoutFormat) -> UnionFs {
        for d in ["lower", "upper", "work"] {
            std::fs::create_dir(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("lower").join(name('a', 253)), b"a").unwrap();
        std::fs::write(dir.join("lower").join(name('y', 252)), b"y").unwrap();
        let backings = crate::backing::Backings::new(64);
        let ub = Branch::open(BranchId(0), &dir.join("upper"), Mode::RW, false, &backings).unwrap();
        let up = Upper::open(&ub, Some(&dir.join("work")), format, true, XattrNs::User).unwrap();
        let lb = Branch::open(
            BranchId(1),
            &dir.join("lower"),
            Mode::RO_WH,
            false,
            &backings,
        )
        .unwrap();
        let stack = BranchStack::new(vec![ub, lb], vec![up], backings);
        let opts = CoreOptions {
            name_max: format.name_max(),
            ..CoreOptions::default()
        };
        UnionFs::new(stack, opts).unwrap()
    }

    fn err<T>(r: Result<T>) -> Option<Errno> {
        r.err().map(|e| e.errno())
    }

    fn upper_names(dir: &Path) -> Vec<OsString> {
        std::fs::read_dir(dir.join("upper"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    }

    #[test]
    fn aufs_core_refuses_long_new_names_and_undeletable_lower_names() {
        let td = tempfile::tempdir().unwrap();
        let fs = union(td.path(), WhiteoutFormat::Aufs);
        let long = name('n', 252);
        let file = NewObject::File {
            flags: libc::O_RDWR,
        };
        assert_eq!(
            err(fs.create_object(ROOT_INO, &long, file, 0o100_644, ROOT)),
            Some(Errno::ENAMETOOLONG)
        );
        assert_eq!(
            err(fs.create_object(ROOT_INO, &long, NewObject::Dir, 0o40_755, ROOT)),
            Some(Errno::ENAMETOOLONG)
        );
        let ok = name('o', 251);
        let (e, fh) = fs
            .create_object(ROOT_INO, &ok, NewObject::Dir, 0o40_755, ROOT)
            .unwrap();
        assert!(fh.is_none());
        let dir_ino = e.attr.ino;
        // link and rename to a long name, also onto a lower name that long.
        let src = fs.lookup(ROOT_INO, &name('a', 253)).unwrap().attr.ino;
        assert_eq!(
            err(fs.link(src, ROOT_INO, &long)),
            Some(Errno::ENAMETOOLONG)
        );
        let how = RenameHow::Replace;
        assert_eq!(
            err(fs.rename(ROOT_INO, &ok, ROOT_INO, &long, how)),
            Some(Errno::ENAMETOOLONG)
        );
        assert_eq!(
            err(fs.rename(ROOT_INO, &ok, ROOT_INO, &name('y', 252), how)),
            Some(Errno::ENAMETOOLONG)
        );
        // Lower names of 252-255 bytes are found; absent ones too long.
        assert!(fs.lookup(ROOT_INO, &name('y', 252)).is_ok());
        assert_eq!(err(fs.lookup(ROOT_INO, &long)), Some(Errno::ENAMETOOLONG));
        assert_eq!(
            err(fs.lookup(ROOT_INO, &name('z', 251))),
            Some(Errno::ENOENT)
        );
        assert_eq!(
            err(fs.lookup(ROOT_INO, &name('z', 300))),
            Some(Errno::ENAMETOOLONG)
        );
        // Their whiteout cannot fit: refused before anything changes.
        assert_eq!(
            err(fs.unlink(ROOT_INO, &name('a', 253))),
            Some(Errno::ENAMETOOLONG)
        );
        assert_eq!(
            err(fs.rename(ROOT_INO, &name('a', 253), dir_ino, OsStr::new("x"), how)),
            Some(Errno::ENAMETOOLONG)
        );
        assert_eq!(err(fs.unlink(ROOT_INO, &long)), Some(Errno::ENAMETOOLONG));
        let mut names = upper_names(td.path());
        names.sort();
        assert_eq!(names, vec![ok.clone()]);
        // Exchange names nothing new and needs no whiteout.
        fs.rename(
            ROOT_INO,
            &ok,
            ROOT_INO,
            &name('a', 253),
            RenameHow::Exchange,
        )
        .unwrap();
        // A char 0:0 device is a device in AUFS format.
        let dev = NewObject::Node { rdev: 0 };
        fs.create_object(
            dir_ino,
            OsStr::new("dev00"),
            dev,
            libc::S_IFCHR | 0o600,
            ROOT,
        )
        .unwrap();
    }

    #[test]
    fn overlay_core_refuses_char_0_0_and_names_over_255() {
        let td = tempfile::tempdir().unwrap();
        let fs = union(td.path(), WhiteoutFormat::Overlay);
        let dev = |rdev| NewObject::Node { rdev };
        assert_eq!(
            err(fs.create_object(
                ROOT_INO,
                OsStr::new("d"),
                dev(0),
                libc::S_IFCHR | 0o600,
                ROOT
            )),
            Some(Errno::EPERM)
        );
        let null = nix::sys::stat::makedev(1, 3);
        fs.create_object(
            ROOT_INO,
            OsStr::new("null"),
            dev(null),
            libc::S_IFCHR | 0o600,
            ROOT,
        )
        .unwrap();
        // rdev 0 is fine for other types (a fifo).
        fs.create_object(
            ROOT_INO,
            OsStr::new("p"),
            dev(0),
            libc::S_IFIFO | 0o600,
            ROOT,
        )
        .unwrap();
        let mut names = upper_names(td.path());
        names.sort();
        assert_eq!(names, vec![OsString::from("null"), OsString::from("p")]);
        // 255 bytes: created and deleted; a lower name of 253 deleted too.
        let max = name('m', 255);
        fs.create_object(ROOT_INO, &max, NewObject::Dir, 0o40_755, ROOT)
            .unwrap();
        fs.rmdir(ROOT_INO, &max).unwrap();
        fs.unlink(ROOT_INO, &name('a', 253)).unwrap();
        assert_eq!(
            err(fs.lookup(ROOT_INO, &name('a', 253))),
            Some(Errno::ENOENT)
        );
        assert_eq!(
            err(fs.create_object(ROOT_INO, &name('m', 256), NewObject::Dir, 0o40_755, ROOT)),
            Some(Errno::ENAMETOOLONG)
        );
        assert_eq!(
            err(fs.lookup(ROOT_INO, &name('m', 256))),
            Some(Errno::ENAMETOOLONG)
        );
    }
}
