//! Union lookup: find a name in the branches of its parent directory.
//!
//! Invariant: the walk goes top-down through the parent's layers; a
//! whiteout ends it with ENOENT (or ends a merge), a non-directory ends it
//! (a metadata-only one continues it to the file with its data), a
//! directory continues downward unless opaque, and a redirect moves the
//! rest of the walk to another path. Every whiteout, opaque and metacopy
//! format of FORMATS.md is recognised in every branch. In branches the
//! union never changes, found objects are not opened (see `Probe`). Takes
//! no locks (it works on a snapshot of the parent's state).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::stat::FileStat;

use crate::branch::{Branch, BranchStack};
use crate::error::{Error, Result};
use crate::inode::{Ino, Kind, Layer, NodeState, ROOT_INO};
use crate::sys;
use crate::whiteout::{self, Opacity, Redirect};

/// A name found in the union.
#[derive(Debug)]
pub struct Found {
    /// Where it lives.
    pub state: NodeState,
    /// stat of the topmost instance.
    pub stat: FileStat,
    /// Its type.
    pub kind: Kind,
    /// The union inode number recorded at copy-up, if any.
    pub recorded_ino: Option<u64>,
}

/// What one branch directory says about a name.
enum Probe {
    /// Nothing here: keep looking below.
    Absent,
    /// A whiteout here: the name is deleted for all branches below.
    Whiteout,
    /// An object: an fd of it, or (`None`) reachable as its name in the
    /// candidate directory (read-only branches with file handles: no fd is
    /// opened for a lookup at all).
    Object(Option<OwnedFd>, FileStat),
}

/// An object whose union markers are read: through an fd of it, or by its
/// name in a directory (without opening it).
#[derive(Clone, Copy)]
enum ObjRef<'a> {
    Fd(std::os::fd::BorrowedFd<'a>),
    At(std::os::fd::BorrowedFd<'a>, &'a OsStr),
}

impl<'a> ObjRef<'a> {
    /// This object as a directory: one known by its fd is named as `.`
    /// inside itself, so its xattrs are read with the cheap `*at` calls.
    fn as_dir(self) -> ObjRef<'a> {
        match self {
            ObjRef::Fd(fd) => ObjRef::At(fd, OsStr::new(".")),
            at => at,
        }
    }

    fn xattrs(self) -> Result<Vec<OsString>> {
        match self {
            ObjRef::Fd(fd) => sys::xattr::list(fd),
            ObjRef::At(dir, name) => sys::xattr::list_at(dir, name),
        }
    }

    fn xattr(self, x: &OsStr) -> Result<Option<Vec<u8>>> {
        match self {
            ObjRef::Fd(fd) => sys::xattr::get(fd, x),
            ObjRef::At(dir, name) => sys::xattr::get_at(dir, name, x),
        }
    }

    fn xattr_u64(self, x: &OsStr) -> Result<Option<u64>> {
        match self {
            ObjRef::Fd(fd) => sys::xattr::get_u64(fd, x),
            ObjRef::At(dir, name) => sys::xattr::get_u64_at(dir, name, x),
        }
    }

    /// stat of `child` inside this (directory) object.
    fn child_stat(self, child: &OsStr) -> Result<FileStat> {
        match self {
            ObjRef::Fd(fd) => sys::fs::stat_at(fd, child),
            ObjRef::At(dir, name) => sys::fs::stat_at(dir, Path::new(name).join(child).as_os_str()),
        }
    }
}

/// A directory in one branch in which to look a name up.
struct Candidate<'a> {
    branch: &'a Branch,
    dir: Arc<OwnedFd>,
    /// The directory's path in its branch.
    dir_path: PathBuf,
    /// Empty regular files here may be xattr whiteouts.
    xwhiteouts: bool,
    /// Entries here may carry a recorded union inode number.
    impure: bool,
}

/// What one branch's instance of a directory says about the branches below.
#[derive(Debug, Default)]
pub struct DirInfo {
    /// Opaque or not.
    pub opacity: Opacity,
    /// Where the lower content comes from, if elsewhere.
    pub redirect: Option<Redirect>,
    /// Entries may carry a recorded union inode number (see `INO_XATTRS`).
    pub impure: bool,
}

fn not_found_is_none<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() || e.errno() == nix::errno::Errno::ENAMETOOLONG => Ok(None),
        Err(e) => Err(e),
    }
}

/// Like `not_found_is_none`, for markers inside a directory the daemon may
/// not search (an unprivileged daemon): no marker seen, no marker.
fn marker_absent<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Err(e) if e.errno() == nix::errno::Errno::EACCES => Ok(None),
        r => not_found_is_none(r),
    }
}

/// Reads the opacity and redirect of a directory instance `fd` in `branch`,
/// at union path `path`.
pub fn dir_info(branch: &Branch, fd: &OwnedFd, path: &Path) -> Result<DirInfo> {
    dir_info_of(branch, ObjRef::Fd(fd.as_fd()), path)
}

fn dir_info_of(branch: &Branch, obj: ObjRef<'_>, path: &Path) -> Result<DirInfo> {
    match dir_info_raw(branch, obj.as_dir(), path) {
        // `.` inside a directory needs search permission on it, which an
        // unprivileged daemon may lack; the object itself does not.
        Err(e) if e.errno() == nix::errno::Errno::EACCES && matches!(obj, ObjRef::Fd(_)) => {
            dir_info_raw(branch, obj, path)
        }
        r => r,
    }
}

fn dir_info_raw(branch: &Branch, obj: ObjRef<'_>, path: &Path) -> Result<DirInfo> {
    let mut info = DirInfo::default();
    let names = obj.xattrs()?;
    for n in &names {
        if whiteout::OPAQUE_XATTRS.iter().any(|x| n == OsStr::new(x)) {
            if let Some(v) = obj.xattr(n)? {
                match whiteout::opacity_from_xattr(&v) {
                    Opacity::Opaque => info.opacity = Opacity::Opaque,
                    Opacity::HasXattrWhiteouts if info.opacity != Opacity::Opaque => {
                        info.opacity = Opacity::HasXattrWhiteouts
                    }
                    _ => {}
                }
            }
        } else if whiteout::IMPURE_XATTRS.iter().any(|x| n == OsStr::new(x)) {
            info.impure = true;
        } else if info.redirect.is_none()
            && whiteout::REDIRECT_XATTRS.iter().any(|x| n == OsStr::new(x))
        {
            if let Some(v) = obj.xattr(n)? {
                info.redirect = whiteout::parse_redirect(&v);
            }
        }
    }
    if info.opacity != Opacity::Opaque
        && (marker_absent(obj.child_stat(OsStr::new(whiteout::OPAQUE_MARKER)))?.is_some()
            || hidden_in(branch, path)?)
    {
        info.opacity = Opacity::Opaque;
    }
    Ok(info)
}

/// True when the unionfs-fuse whiteout tree of `branch` hides `path`.
fn hidden_in(branch: &Branch, path: &Path) -> Result<bool> {
    let (Some(hidden), Some(name)) = (&branch.hidden, path.file_name()) else {
        return Ok(false);
    };
    let marker = path.with_file_name(whiteout::hidden_name(name));
    Ok(not_found_is_none(sys::fs::open_path_beneath(hidden.as_fd(), &marker))?.is_some())
}

/// True for the names of unionfs-fuse's whiteout trees.
pub fn is_unionfs_fuse_dir(name: &OsStr) -> bool {
    whiteout::UNIONFS_FUSE_DIRS
        .iter()
        .any(|d| name == OsStr::new(d))
}

/// The topmost branch whose unionfs-fuse whiteout tree hides `path`.
fn hidden_floor(stack: &BranchStack, path: &Path) -> Result<Option<crate::branch::BranchId>> {
    for b in stack.iter().filter(|b| b.hidden.is_some()) {
        if hidden_in(b, path)? {
            return Ok(Some(b.id));
        }
    }
    Ok(None)
}

/// Looks `name` up in one branch directory; `last` when no directory is
/// below it (a whiteout there would hide nothing, so none is looked for).
fn probe(c: &Candidate<'_>, name: &OsStr, path: &Path, last: bool) -> Result<Probe> {
    let found = if c.branch.reach_by_name() {
        not_found_is_none(sys::fs::stat_at(c.dir.as_fd(), name))?.map(|st| (None, st))
    } else {
        match not_found_is_none(sys::fs::open_path_at(c.dir.as_fd(), name))? {
            Some(fd) => {
                let st = sys::fs::fstat(fd.as_fd())?;
                Some((Some(fd), st))
            }
            None => None,
        }
    };
    let Some((fd, st)) = found else {
        if last {
            return Ok(Probe::Absent);
        }
        let wh = whiteout::whiteout_name(name);
        if not_found_is_none(sys::fs::stat_at(c.dir.as_fd(), &wh))?.is_some()
            || hidden_in(c.branch, path)?
        {
            return Ok(Probe::Whiteout);
        }
        return Ok(Probe::Absent);
    };
    if c.branch.char_whiteouts && whiteout::is_char_whiteout(st.st_mode, st.st_rdev) {
        return Ok(Probe::Whiteout);
    }
    let obj = match &fd {
        Some(fd) => ObjRef::Fd(fd.as_fd()),
        None => ObjRef::At(c.dir.as_fd(), name),
    };
    if c.xwhiteouts && is_xattr_whiteout_of(obj, &st)? {
        return Ok(Probe::Whiteout);
    }
    Ok(Probe::Object(fd, st))
}

/// True for an empty regular file carrying an overlay whiteout xattr.
pub fn is_xattr_whiteout_at(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &OsStr,
    st: &FileStat,
) -> Result<bool> {
    is_xattr_whiteout_of(ObjRef::At(dir, name), st)
}

fn is_xattr_whiteout_of(obj: ObjRef<'_>, st: &FileStat) -> Result<bool> {
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size != 0 {
        return Ok(false);
    }
    for x in whiteout::WHITEOUT_XATTRS {
        if obj.xattr(OsStr::new(x))?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The directories `path`'s parent in every branch below `below`.
fn redirect_candidates<'a>(
    stack: &'a BranchStack,
    below: &Branch,
    path: &Path,
) -> Result<Vec<Candidate<'a>>> {
    let parent = path.parent().unwrap_or(Path::new(""));
    let mut out = Vec::new();
    for b in stack.below(below.id) {
        let dir = if parent.as_os_str().is_empty() {
            Some(sys::fs::dup(b.root())?)
        } else {
            // A redirect through a whiteout or a file finds nothing here.
            match sys::fs::open_path_beneath(b.root(), parent) {
                Err(e) if e.errno() == nix::errno::Errno::ENOTDIR => None,
                r => not_found_is_none(r)?,
            }
        };
        if let Some(dir) = dir {
            out.push(Candidate {
                branch: b,
                dir: Arc::new(dir),
                dir_path: parent.to_path_buf(),
                xwhiteouts: true,
                impure: false,
            });
        }
    }
    Ok(out)
}

/// Moves the rest of a walk in `branch` to where `redirect` points:
/// another name in the same directories (relative), or a path from every
/// branch root below `branch` (absolute; one without a name is ignored).
fn follow<'a>(
    stack: &'a BranchStack,
    branch: &Branch,
    redirect: Option<Redirect>,
    cur_name: &mut OsString,
    cands: &mut Vec<Candidate<'a>>,
    i: &mut usize,
) -> Result<()> {
    match redirect {
        Some(Redirect::Absolute(p)) => {
            if let Some(n) = p.file_name() {
                *cur_name = n.to_os_string();
                *cands = redirect_candidates(stack, branch, &p)?;
                *i = 0;
            }
        }
        Some(Redirect::Relative(n)) => *cur_name = n,
        None => {}
    }
    Ok(())
}

/// Looks `name` up in the directory whose state is `parent`.
pub fn lookup(
    stack: &BranchStack,
    parent_ino: Ino,
    parent: &NodeState,
    parent_path: &Path,
    name: &OsStr,
) -> Result<Found> {
    if whiteout::is_reserved(name) {
        return Err(Error::NotFound);
    }
    let child_path = parent_path.join(name);
    let at_root = parent_path.as_os_str().is_empty();
    // unionfs-fuse whiteouts are path-based: a branch may hide a path even
    // where it lacks the parent directory. The topmost such branch is a floor.
    let floor = hidden_floor(stack, &child_path)?;
    let mut cands: Vec<Candidate<'_>> = Vec::with_capacity(parent.layers.len());
    for l in parent.layers.iter().filter(|l| !l.sealed) {
        if let Some(branch) = stack.get(l.branch) {
            cands.push(Candidate {
                branch,
                dir: l.fd()?,
                dir_path: l.path.clone(),
                xwhiteouts: l.opacity == Opacity::HasXattrWhiteouts,
                impure: l.impure,
            });
        }
    }
    let mut cur_name: OsString = name.to_os_string();
    let mut layers: Vec<Layer> = Vec::new();
    let mut top: Option<(FileStat, Kind)> = None;
    let mut recorded_ino = None;
    let mut i = 0;
    while i < cands.len() {
        let branch = cands[i].branch;
        if floor.is_some_and(|f| stack.position(branch.id) > stack.position(f)) {
            break;
        }
        if at_root && branch.hidden.is_some() && is_unionfs_fuse_dir(&cur_name) {
            i += 1;
            continue;
        }
        // Where the name lives in this branch (below a redirect, not at
        // its union path).
        let cur_path = cands[i].dir_path.join(&cur_name);
        let probe_res = probe(&cands[i], &cur_name, &cur_path, i + 1 == cands.len())?;
        let dir = Arc::clone(&cands[i].dir);
        i += 1;
        let (fd, st) = match probe_res {
            Probe::Absent => continue,
            Probe::Whiteout => break,
            Probe::Object(fd, st) => (fd, st),
        };
        let obj = match &fd {
            Some(fd) => ObjRef::Fd(fd.as_fd()),
            None => ObjRef::At(dir.as_fd(), &cur_name),
        };
        let kind = Kind::from_mode(st.st_mode);
        if top.is_none() && cands[i - 1].impure {
            recorded_ino = recorded_ino_at(obj)?;
        }
        if kind != Kind::Dir {
            // A non-directory ends the walk; below a directory it is hidden.
            // A metadata-only file continues it, to the file with its data.
            let wanted = match layers.last() {
                None => true,
                Some(l) => l.metacopy,
            };
            if !wanted || (!layers.is_empty() && kind != Kind::File) {
                break;
            }
            let meta = if kind == Kind::File && may_be_metacopy(&st) {
                metacopy_info(obj)?
            } else {
                None
            };
            let mut layer = layer_of(branch, fd, &dir, &cur_name, cur_path)?;
            layer.metacopy = meta.is_some();
            layers.push(layer);
            top.get_or_insert((st, kind));
            let Some(redirect) = meta else { break };
            follow(stack, branch, redirect, &mut cur_name, &mut cands, &mut i)?;
            continue;
        }
        if top.is_some() && layers.last().is_some_and(|l| l.metacopy) {
            break;
        }
        let sealed = fd
            .as_ref()
            .is_some_and(|fd| branch.is_mount_point(fd.as_fd()));
        let info = if sealed {
            DirInfo::default()
        } else {
            dir_info_of(branch, obj, &cur_path)?
        };
        let mut layer = layer_of(branch, fd, &dir, &cur_name, cur_path.clone())?;
        layer.opacity = if sealed {
            Opacity::Opaque
        } else {
            info.opacity
        };
        layer.impure = info.impure;
        layer.sealed = sealed;
        layers.push(layer);
        if top.is_none() {
            top = Some((st, kind));
        }
        if info.opacity == Opacity::Opaque {
            break;
        }
        follow(
            stack,
            branch,
            info.redirect,
            &mut cur_name,
            &mut cands,
            &mut i,
        )?;
    }
    let (stat, kind) = top.ok_or(Error::NotFound)?;
    if layers.last().is_some_and(|l| l.metacopy) {
        // Metadata without data anywhere below: as overlayfs, an I/O error.
        return Err(Error::sys("lookup", nix::errno::Errno::EIO));
    }
    Ok(Found {
        state: NodeState {
            parent: parent_ino,
            name: name.to_os_string(),
            layers,
        },
        stat,
        kind,
        recorded_ino,
    })
}

/// False for a regular file that certainly holds its own data, so its
/// xattrs need not be read for a metacopy marker: a file without data
/// blocks occupies at most its xattr block (one filesystem block), so one
/// that is not sparse and occupies more than a block has its data.
/// (A metadata-only file with more than a block of xattrs would be missed;
/// neither overlayfs nor unionfs writes those.)
fn may_be_metacopy(st: &FileStat) -> bool {
    let allocated = st.st_blocks.saturating_mul(512);
    st.st_size > 0 && (allocated < st.st_size || allocated <= st.st_blksize.max(4096))
}

/// For a metadata-only file: `Some(where its data is)`, `None` otherwise.
fn metacopy_info(obj: ObjRef<'_>) -> Result<Option<Option<Redirect>>> {
    let names = obj.xattrs()?;
    let has = |set: &[&str]| {
        names
            .iter()
            .find(|n| set.iter().any(|x| *n == OsStr::new(x)))
    };
    if has(&whiteout::METACOPY_XATTRS).is_none() {
        return Ok(None);
    }
    let redirect = match has(&whiteout::REDIRECT_XATTRS) {
        Some(n) => obj.xattr(n)?.and_then(|v| whiteout::parse_redirect(&v)),
        None => None,
    };
    Ok(Some(redirect))
}

/// The union inode number recorded on a copied-up object.
pub fn recorded_ino_of(fd: &OwnedFd) -> Result<Option<u64>> {
    recorded_ino_at(ObjRef::Fd(fd.as_fd()))
}

fn recorded_ino_at(obj: ObjRef<'_>) -> Result<Option<u64>> {
    for x in whiteout::INO_XATTRS {
        if let Some(v) = obj.xattr_u64(OsStr::new(x))? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// The layer of an object found in `branch`: by its fd, or — found by
/// name — by its file handle alone (falling back to an fd when the handle
/// cannot be had).
fn layer_of(
    branch: &Branch,
    fd: Option<OwnedFd>,
    dir: &OwnedFd,
    name: &OsStr,
    path: PathBuf,
) -> Result<Layer> {
    let fd = match fd {
        Some(fd) => fd,
        None => match branch.backing_at(dir.as_fd(), name) {
            Some(backing) => return Ok(Layer::with_backing(branch, backing, path)),
            None => sys::fs::open_path_at(dir.as_fd(), name)?,
        },
    };
    Ok(Layer::new(branch, fd, path))
}

/// The root directory: every branch root down to the first opaque one.
pub fn root(stack: &BranchStack) -> Result<(NodeState, FileStat)> {
    let mut layers = Vec::new();
    let mut top = None;
    for b in stack.iter() {
        let fd = sys::fs::dup(b.root())?;
        let st = sys::fs::fstat(fd.as_fd())?;
        let info = dir_info(b, &fd, Path::new(""))?;
        top.get_or_insert(st);
        layers.push(Layer {
            branch: b.id,
            backing: crate::backing::Backing::pinned(fd),
            opacity: info.opacity,
            impure: info.impure,
            indexed: false,
            sealed: false,
            metacopy: false,
            path: PathBuf::new(),
        });
        if info.opacity == Opacity::Opaque {
            break;
        }
    }
    let st = top.ok_or(Error::NotFound)?;
    Ok((
        NodeState {
            parent: ROOT_INO,
            name: OsString::new(),
            layers,
        },
        st,
    ))
}
