//! Union lookup: find a name in the branches of its parent directory.
//!
//! Invariant: a lookup is a walk over layers, topmost first, in which every
//! layer gives one of the outcomes of [`Outcome`] and each outcome has one
//! rule: absent — go on to the next layer; whiteout — stop (deleted here
//! and below); directory — go on below unless it is opaque (or a sealed
//! mount point); non-directory — stop (a metadata-only file goes on, to the
//! file holding its data; below a directory it is hidden). A redirect on a
//! directory (or metadata-only file) moves the rest of the walk to another
//! path, in the layers below it only: the directories of that path are
//! found by the same walk, component by component from the branch roots,
//! so a non-directory, a whiteout or an opaque directory on the way ends
//! the search in that layer and below — never an error for the caller
//! (overlayfs `ovl_lookup_layer`). Every whiteout, opaque and metacopy
//! format of FORMATS.md is recognised in every branch. Where objects have
//! file handles, found objects are not opened (see `Probe`; in a writable
//! branch what the walk saw is checked when the handle is first opened,
//! `Branch::reach_by_name`). Takes
//! no locks (it works on a snapshot of the parent's state).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::stat::FileStat;

use crate::branch::Branch;
use crate::error::{Error, Result};
use crate::faults::{FaultKey, FaultLog};
use crate::inode::{Ino, Kind, Layer, NodeState, ROOT_INO};
use crate::layer_index::{Names, LIST_TO_INDEX_LAYERS};
use crate::stack::BranchStack;
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

/// What one layer says about a name: one step of the walk.
#[derive(Debug)]
enum Outcome {
    /// Nothing here: the walk goes on in the next layer.
    Absent,
    /// A whiteout here: the name is deleted in this layer and every layer
    /// below; the walk ends.
    Whiteout,
    /// A directory: the walk goes on below unless it is opaque; a redirect
    /// on it moves the rest of the walk.
    Dir(Probe),
    /// Anything else: the walk ends (a metadata-only file excepted).
    NonDir(Probe),
}

/// An object found in one layer: an fd of it, or (`fd: None`) reachable as
/// its name in the candidate directory (branches with file handles: no fd
/// is opened for a lookup at all).
#[derive(Debug)]
struct Probe {
    fd: Option<OwnedFd>,
    stat: FileStat,
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
    /// The directory, opened on first use (`dir()`): a layer the index
    /// rules out is never opened — in a deep stack, opening every layer's
    /// instance (an `open_by_handle_at` each when the fd cache is cold)
    /// would cost what the probes it saves cost.
    backing: Arc<crate::backing::Backing>,
    dir: std::cell::OnceCell<Arc<OwnedFd>>,
    /// The directory's path in its branch.
    dir_path: PathBuf,
    /// Empty regular files here may be xattr whiteouts.
    xwhiteouts: bool,
    /// Entries here may carry a recorded union inode number.
    impure: bool,
    /// The names this directory holds, when the layer index knows them
    /// (`layer_index.rs`): a name not among them is absent without a probe.
    names: Option<Arc<Names>>,
}

/// What one branch's instance of a directory says about the branches below.
#[derive(Debug, Default)]
pub struct DirInfo {
    /// Opaque (`Opaque`) or not (`Transparent`); never `HasXattrWhiteouts`,
    /// which is `xwhiteouts`, since one directory can be both (an overlay
    /// `opaque=x` xattr and an AUFS marker file, each format's own rule).
    pub opacity: Opacity,
    /// Its entries may be xattr whiteouts (overlay `opaque=x`).
    pub xwhiteouts: bool,
    /// Where the lower content comes from, if elsewhere.
    pub redirect: Option<Redirect>,
    /// Entries may carry a recorded union inode number (see `INO_XATTRS`).
    pub impure: bool,
    /// It has a redirect marker the union refuses to follow (hostile or
    /// corrupt: `..`, too long): ignored, the directory keeps its own layer.
    pub redirect_ignored: bool,
}

/// `None` where a name or path does not lead to an object in a branch:
/// it is absent, too long for the branch, or a component on the way is not
/// a directory. None of these is an error of the union: the walk treats
/// the layer as holding nothing there.
fn absent_is_none<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if e.is_not_found()
                || matches!(
                    e.errno(),
                    nix::errno::Errno::ENAMETOOLONG | nix::errno::Errno::ENOTDIR
                ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Like `absent_is_none`, for markers inside a directory the daemon may
/// not search (an unprivileged daemon): no marker seen, no marker.
fn marker_absent<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Err(e) if e.errno() == nix::errno::Errno::EACCES => Ok(None),
        r => absent_is_none(r),
    }
}

/// Reads the opacity and redirect of a directory instance `fd` in `branch`,
/// at union path `path`.
pub fn dir_info(branch: &Branch, fd: &OwnedFd, path: &Path) -> Result<DirInfo> {
    dir_info_of(branch, ObjRef::Fd(fd.as_fd()), path, false)
}

/// `last`: no layer is left below this one in the walk, so opacity can
/// only matter through a redirect (which moves the walk to the branches
/// below): without one, the opaque marker files (the AUFS `.wh..wh..opq`,
/// unionfs-fuse's hidden tree) are not looked for — a cold lookup then
/// does not read the directory's own blocks — and the layer may say
/// `Transparent` for a directory such a file makes opaque, which stops
/// nothing there. The xattrs are read either way: they also say whether
/// the directory's entries may be xattr whiteouts, and its redirect.
fn dir_info_of(branch: &Branch, obj: ObjRef<'_>, path: &Path, last: bool) -> Result<DirInfo> {
    match dir_info_raw(branch, obj.as_dir(), path, last) {
        // `.` inside a directory needs search permission on it, which an
        // unprivileged daemon may lack; the object itself does not.
        Err(e) if e.errno() == nix::errno::Errno::EACCES && matches!(obj, ObjRef::Fd(_)) => {
            dir_info_raw(branch, obj, path, last)
        }
        r => r,
    }
}

fn dir_info_raw(branch: &Branch, obj: ObjRef<'_>, path: &Path, last: bool) -> Result<DirInfo> {
    let mut info = DirInfo::default();
    let names = obj.xattrs()?;
    for n in &names {
        if whiteout::OPAQUE_XATTRS.iter().any(|x| n == OsStr::new(x)) {
            if !branch.whiteouts() {
                continue;
            }
            if let Some(v) = obj.xattr(n)? {
                match whiteout::opacity_from_xattr(&v) {
                    Opacity::Opaque => info.opacity = Opacity::Opaque,
                    Opacity::HasXattrWhiteouts => info.xwhiteouts = true,
                    Opacity::Transparent => {}
                }
            }
        } else if whiteout::IMPURE_XATTRS.iter().any(|x| n == OsStr::new(x)) {
            info.impure = true;
        } else if info.redirect.is_none()
            && whiteout::REDIRECT_XATTRS.iter().any(|x| n == OsStr::new(x))
        {
            if let Some(v) = obj.xattr(n)? {
                info.redirect = whiteout::parse_redirect(&v);
                info.redirect_ignored = info.redirect.is_none();
            }
        }
    }
    if info.opacity != Opacity::Opaque
        && branch.whiteouts()
        && (!last || info.redirect.is_some())
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
    Ok(absent_is_none(sys::fs::open_path_beneath(hidden.as_fd(), &marker))?.is_some())
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

/// Classifies `name` in one layer (candidate directory `c`); `last` when no
/// layer is below it (a whiteout there would hide nothing, so none is
/// looked for).
fn probe(c: &Candidate<'_>, name: &OsStr, path: &Path, last: bool) -> Result<Outcome> {
    if let Some(names) = &c.names {
        // The listing rules the name out, and its AUFS whiteout too where
        // one would be looked for: what the probes below would conclude.
        // (Indexed branches have no unionfs-fuse tree: `layer_index`.)
        let wh_wanted = !last && c.branch.whiteouts();
        let wh_listed = || names.may_hold(&whiteout::whiteout_name(name));
        if !(names.may_hold(name) || (wh_wanted && wh_listed())) {
            return Ok(Outcome::Absent);
        }
    }
    let found = if c.branch.reach_by_name() {
        absent_is_none(sys::fs::stat_at(c.dir()?.as_fd(), name))?.map(|st| (None, st))
    } else {
        match absent_is_none(sys::fs::open_path_at(c.dir()?.as_fd(), name))? {
            Some(fd) => {
                let st = sys::fs::fstat(fd.as_fd())?;
                Some((Some(fd), st))
            }
            None => None,
        }
    };
    let Some((fd, stat)) = found else {
        if last || !c.branch.whiteouts() {
            return Ok(Outcome::Absent);
        }
        let wh = whiteout::whiteout_name(name);
        if absent_is_none(sys::fs::stat_at(c.dir()?.as_fd(), &wh))?.is_some()
            || hidden_in(c.branch, path)?
        {
            return Ok(Outcome::Whiteout);
        }
        return Ok(Outcome::Absent);
    };
    if c.branch.char_whiteouts() && whiteout::is_char_whiteout(stat.st_mode, stat.st_rdev) {
        return Ok(Outcome::Whiteout);
    }
    let p = Probe { fd, stat };
    if c.xwhiteouts && is_xattr_whiteout_of(p.obj(c, name)?, &p.stat)? {
        return Ok(Outcome::Whiteout);
    }
    Ok(if Kind::from_mode(stat.st_mode) == Kind::Dir {
        Outcome::Dir(p)
    } else {
        Outcome::NonDir(p)
    })
}

impl Probe {
    /// The object, for reading its union markers.
    fn obj<'a>(&'a self, c: &'a Candidate<'_>, name: &'a OsStr) -> Result<ObjRef<'a>> {
        Ok(match &self.fd {
            Some(fd) => ObjRef::Fd(fd.as_fd()),
            None => ObjRef::At(c.dir()?.as_fd(), name),
        })
    }
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

impl<'a> Candidate<'a> {
    /// The directory, opened now if it was not yet.
    fn dir(&self) -> Result<&Arc<OwnedFd>> {
        if let Some(d) = self.dir.get() {
            return Ok(d);
        }
        let fd = self.backing.fd()?;
        Ok(self.dir.get_or_init(|| fd))
    }

    /// The directory instance `layer` of `branch`, as a place to look in.
    fn of_layer(branch: &'a Branch, l: &Layer) -> Result<Candidate<'a>> {
        Ok(Candidate {
            branch,
            backing: Arc::clone(&l.backing),
            dir: std::cell::OnceCell::new(),
            dir_path: l.path.clone(),
            xwhiteouts: l.xwhiteouts,
            impure: l.impure,
            names: None,
        })
    }
}

/// The layers of a directory, as places to look in (sealed mount points,
/// shown empty, have nothing to look in).
fn candidates_of<'a>(stack: &'a BranchStack, layers: &[Layer]) -> Result<Vec<Candidate<'a>>> {
    let mut out = Vec::with_capacity(layers.len());
    // Deep enough that listing each layer once (for this and every later
    // lookup in the directory) is cheaper than probing each layer each time.
    let mut list = layers.len() >= LIST_TO_INDEX_LAYERS;
    let mut first = true;
    for l in layers.iter().filter(|l| !l.sealed) {
        if let Some(branch) = stack.get(l.branch) {
            let mut c = Candidate::of_layer(branch, l)?;
            if let Some(ix) = stack.layer_index(branch) {
                c.names = ix.get(branch.id, &l.path);
                if c.names.is_none() && list && first {
                    // Listed only after a few lookups there: see
                    // LIST_TO_INDEX_LAYERS.
                    list = ix.time_to_list(branch.id, &l.path);
                    first = false;
                }
                if c.names.is_none() && list {
                    // Unreadable (an unprivileged daemon): probed as before.
                    c.names = sys::fs::read_dir(c.dir()?.as_fd()).ok().and_then(|raw| {
                        ix.insert(branch.id, &l.path, raw.iter().map(|r| r.name.as_os_str()))
                    });
                }
            }
            out.push(c);
        }
    }
    Ok(out)
}

/// Where the walk's result comes from: the layers found, topmost first.
#[derive(Default)]
struct Walked {
    layers: Vec<Layer>,
    /// stat and kind of the topmost instance.
    top: Option<(FileStat, Kind)>,
    recorded_ino: Option<u64>,
}

impl Walked {
    /// True when the last layer found holds metadata only, so the walk
    /// looks for the file with its data.
    fn wants_data(&self) -> bool {
        self.layers.last().is_some_and(|l| l.metacopy)
    }
}

/// How many layers one lookup may probe. A plain lookup probes each layer
/// once; a redirect adds a walk of its path. Hostile layers (redirects on
/// every directory of a deep stack, each to a long path) could make that
/// grow without bound: past this the lookup fails instead.
const MAX_PROBES: u32 = 1 << 16;

/// What one lookup walks over, and what it may still spend.
struct Ctx<'a> {
    stack: &'a BranchStack,
    probes_left: std::cell::Cell<u32>,
    /// Where refused markers are reported once each.
    faults: Option<&'a FaultLog>,
}

impl<'a> Ctx<'a> {
    fn new(stack: &'a BranchStack, faults: Option<&'a FaultLog>) -> Self {
        Ctx {
            stack,
            probes_left: std::cell::Cell::new(MAX_PROBES),
            faults,
        }
    }

    /// Reports (once per object) a redirect marker the walk refused.
    fn note_ignored_redirect(&self, branch: &Branch, here: &Path, st: &FileStat) {
        let key = FaultKey {
            op: "lookup",
            ino: self.stack.fold_ino(st.st_dev, st.st_ino),
            syscall: "redirect marker",
            errno: libc::EINVAL,
        };
        // Logged once: when the table is new to it (or there is no table);
        // never again once it is full (the table itself says so once).
        if self
            .faults
            .is_none_or(|f| f.note(Some(&key)) == crate::faults::Noted::New)
        {
            tracing::warn!(
                "ignoring the redirect of {} in branch {}: not a path inside the branches",
                here.display(),
                branch.path.display()
            );
        }
    }

    /// Counts one probe; an error of its own when the budget is spent.
    fn spend(&self, path: &Path) -> Result<()> {
        match self.probes_left.get().checked_sub(1) {
            Some(n) => {
                self.probes_left.set(n);
                Ok(())
            }
            None => {
                tracing::warn!(
                    "lookup of {} gave up after {MAX_PROBES} probes: redirects in the \
                     branches lead too far",
                    path.display()
                );
                Err(Error::RedirectsTooDeep)
            }
        }
    }
}

/// Walks `name` down the layers `cands` (topmost first): the union path of
/// the name is `path`. Each layer's [`Outcome`] decides whether the walk
/// goes on; a redirect replaces the layers still to visit.
fn walk(cx: &Ctx<'_>, cands: Vec<Candidate<'_>>, name: &OsStr, path: &Path) -> Result<Walked> {
    let stack = cx.stack;
    // unionfs-fuse whiteouts are path-based: a branch may hide a path even
    // where it lacks the parent directory. The topmost such branch is a floor.
    let floor = hidden_floor(stack, path)?.map(|f| stack.position(f));
    let at_root = path.parent().is_none_or(|p| p.as_os_str().is_empty());
    let mut name = name.to_os_string();
    let mut queue: VecDeque<Candidate<'_>> = cands.into();
    let mut w = Walked::default();
    while let Some(c) = queue.pop_front() {
        if floor.is_some_and(|f| stack.position(c.branch.id) > f) {
            break;
        }
        if at_root && c.branch.hidden.is_some() && is_unionfs_fuse_dir(&name) {
            continue;
        }
        // Where the name lives in this branch (below a redirect, not at
        // its union path).
        let here = c.dir_path.join(&name);
        cx.spend(path)?;
        let last = queue.is_empty();
        let redirect = match probe(&c, &name, &here, last)? {
            Outcome::Absent => continue,
            Outcome::Whiteout => break,
            Outcome::Dir(p) => {
                if w.wants_data() {
                    break;
                }
                let Some(redirect) = add_dir(cx, &mut w, &c, &name, p, here, last)? else {
                    break;
                };
                redirect
            }
            Outcome::NonDir(p) => {
                // Below a directory a non-directory is hidden, below a
                // metadata-only file only a regular file can hold its data.
                let kind = Kind::from_mode(p.stat.st_mode);
                if !w.layers.is_empty() && (!w.wants_data() || kind != Kind::File) {
                    break;
                }
                let Some(redirect) = add_non_dir(cx, &mut w, &c, &name, p, here)? else {
                    break;
                };
                redirect
            }
        };
        match redirect {
            Some(Redirect::Absolute(p)) => {
                // One without a name (the root) is ignored.
                if let Some(n) = p.file_name() {
                    name = n.to_os_string();
                    let parent = p.parent().unwrap_or(Path::new(""));
                    queue = resolve_dir(cx, c.branch, parent)?.into();
                }
            }
            Some(Redirect::Relative(n)) => name = n,
            None => {}
        }
    }
    Ok(w)
}

/// Outcome "directory": adds its layer. `Ok(None)` when the walk ends here
/// (opaque or sealed), otherwise `Ok(Some(its redirect))`.
fn add_dir(
    cx: &Ctx<'_>,
    w: &mut Walked,
    c: &Candidate<'_>,
    name: &OsStr,
    p: Probe,
    here: PathBuf,
    last: bool,
) -> Result<Option<Option<Redirect>>> {
    // A mount point is sealed: shown empty, its markers unread. Known now
    // for an object opened by the probe; for one reached by name, only
    // from its handle, taken after the markers are read (so that the
    // identity check of `Backing::verify` covers them too).
    let fd_sealed =
        p.fd.as_ref()
            .is_some_and(|fd| c.branch.is_mount_point(fd.as_fd()));
    let sealed_info = || DirInfo {
        opacity: Opacity::Opaque,
        ..DirInfo::default()
    };
    let mut info = if fd_sealed {
        sealed_info()
    } else {
        dir_info_of(c.branch, p.obj(c, name)?, &here, last)?
    };
    note_top(w, c, name, &p)?;
    let stat = p.stat;
    let (backing, sealed) = reach(c, name, p, fd_sealed)?;
    if sealed && !fd_sealed {
        info = sealed_info();
    }
    if info.redirect_ignored {
        cx.note_ignored_redirect(c.branch, &here, &stat);
    }
    let mut layer = Layer::with_backing(c.branch, backing, here);
    layer.opacity = info.opacity;
    layer.xwhiteouts = info.xwhiteouts;
    layer.impure = info.impure;
    layer.sealed = sealed;
    w.layers.push(layer);
    Ok((info.opacity != Opacity::Opaque).then_some(info.redirect))
}

/// Outcome "non-directory": adds its layer. `Ok(None)` when the walk ends
/// here, `Ok(Some(where its data is))` for a metadata-only file.
fn add_non_dir(
    cx: &Ctx<'_>,
    w: &mut Walked,
    c: &Candidate<'_>,
    name: &OsStr,
    p: Probe,
    here: PathBuf,
) -> Result<Option<Option<Redirect>>> {
    let meta = if Kind::from_mode(p.stat.st_mode) == Kind::File && may_be_metacopy(&p.stat) {
        metacopy_info(p.obj(c, name)?)?
    } else {
        None
    };
    if meta.as_ref().is_some_and(|(_, ignored)| *ignored) {
        cx.note_ignored_redirect(c.branch, &here, &p.stat);
    }
    let meta = meta.map(|(redirect, _)| redirect);
    note_top(w, c, name, &p)?;
    let (backing, _) = reach(c, name, p, false)?;
    let mut layer = Layer::with_backing(c.branch, backing, here);
    layer.metacopy = meta.is_some();
    w.layers.push(layer);
    Ok(meta)
}

/// Records the topmost instance's stat (and recorded inode number).
fn note_top(w: &mut Walked, c: &Candidate<'_>, name: &OsStr, p: &Probe) -> Result<()> {
    if w.top.is_none() {
        if c.impure {
            w.recorded_ino = recorded_ino_at(p.obj(c, name)?)?;
        }
        w.top = Some((p.stat, Kind::from_mode(p.stat.st_mode)));
    }
    Ok(())
}

/// The directories at union path `path` in the branches below `above`,
/// topmost first, found by the walk itself, one component at a time from
/// the branch roots: where the path meets a non-directory, a whiteout or
/// an opaque directory in some layer, that layer and those below give
/// nothing (a redirect's "lower layers only").
fn resolve_dir<'a>(cx: &Ctx<'a>, above: &Branch, path: &Path) -> Result<Vec<Candidate<'a>>> {
    let stack = cx.stack;
    let mut cands = Vec::new();
    for b in stack.below(above.id) {
        let layer = root_layer(b)?;
        let opaque = layer.opacity == Opacity::Opaque;
        cands.push(Candidate::of_layer(b, &layer)?);
        if opaque {
            break;
        }
    }
    let mut at = PathBuf::new();
    for comp in path.components() {
        let std::path::Component::Normal(comp) = comp else {
            return Ok(Vec::new());
        };
        at.push(comp);
        let w = walk(cx, cands, comp, &at)?;
        if !w.top.is_some_and(|(_, k)| k == Kind::Dir) {
            return Ok(Vec::new());
        }
        cands = candidates_of(stack, &w.layers)?;
    }
    Ok(cands)
}

/// Looks `name` up in the directory whose state is `parent`.
/// The topmost layer of directory state `parent` (by index in its
/// layers) holding a whiteout of `name`, if any: what a new object of that
/// name must be created at or above to be seen.
pub fn whiteout_layer(
    stack: &BranchStack,
    parent: &NodeState,
    name: &OsStr,
) -> Result<Option<usize>> {
    for (i, l) in parent.layers.iter().enumerate().filter(|(_, l)| !l.sealed) {
        let Some(branch) = stack.get(l.branch) else {
            continue;
        };
        let c = Candidate::of_layer(branch, l)?;
        let path = l.path.join(name);
        if matches!(probe(&c, name, &path, false)?, Outcome::Whiteout) {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

pub fn lookup(
    stack: &BranchStack,
    faults: Option<&FaultLog>,
    parent_ino: Ino,
    parent: &NodeState,
    parent_path: &Path,
    name: &OsStr,
) -> Result<Found> {
    if whiteout::is_reserved(name) {
        return Err(Error::NotFound);
    }
    let cands = candidates_of(stack, &parent.layers)?;
    let w = walk(
        &Ctx::new(stack, faults),
        cands,
        name,
        &parent_path.join(name),
    )?;
    let (stat, kind) = w.top.ok_or(Error::NotFound)?;
    if w.wants_data() {
        // Metadata without data anywhere below: as overlayfs, an I/O error.
        return Err(Error::MetacopyWithoutData);
    }
    Ok(Found {
        state: NodeState {
            parent: parent_ino,
            name: name.to_os_string(),
            layers: w.layers,
            generation: stack.generation(),
        },
        stat,
        kind,
        recorded_ino: w.recorded_ino,
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

/// For a metadata-only file: `Some(where its data is, whether a redirect
/// marker on it was refused)`, `None` otherwise.
fn metacopy_info(obj: ObjRef<'_>) -> Result<Option<(Option<Redirect>, bool)>> {
    let names = obj.xattrs()?;
    let has = |set: &[&str]| {
        names
            .iter()
            .find(|n| set.iter().any(|x| *n == OsStr::new(x)))
    };
    if has(&whiteout::METACOPY_XATTRS).is_none() {
        return Ok(None);
    }
    let Some(n) = has(&whiteout::REDIRECT_XATTRS) else {
        return Ok(Some((None, false)));
    };
    let redirect = obj.xattr(n)?.and_then(|v| whiteout::parse_redirect(&v));
    let ignored = redirect.is_none();
    Ok(Some((redirect, ignored)))
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

/// The backing object of `name`, found in candidate `c` by probe `p`: by
/// the probe's fd, or — found by name — by its file handle alone (an fd
/// when the handle cannot be had, or the object is on another mount).
/// Also whether it is a mount point to seal (`fd_sealed`: the probe's fd
/// showed it already); only directories are sealed.
///
/// A directory of a writable branch found by name is opened all the same
/// (its fd cached): the union may remove it while the kernel holds it
/// open, and a removed directory cannot be reopened by handle (the kernel
/// cannot connect it to the tree any more), so a later fstat of the open
/// directory needs an fd from before (as `core_model` checks). A removed
/// non-directory still held open reopens by handle.
fn reach(
    c: &Candidate<'_>,
    name: &OsStr,
    p: Probe,
    fd_sealed: bool,
) -> Result<(Arc<crate::backing::Backing>, bool)> {
    let is_dir = Kind::from_mode(p.stat.st_mode) == Kind::Dir;
    let fd = match p.fd {
        Some(fd) => {
            // A sealed mount point's handle is of another filesystem than
            // the branch's: its fd stays open.
            let backing = if fd_sealed {
                c.branch.pinned(fd)
            } else {
                c.branch.backing(fd)
            };
            return Ok((backing, fd_sealed));
        }
        None => {
            if c.branch.lazy_reach(&p.stat) {
                let dir = Arc::clone(&c.backing);
                let ident = crate::backing::Identity::of(&p.stat);
                let backing = crate::backing::Backing::named(&c.branch.backings, dir, name, ident);
                return Ok((backing, false));
            }
            let dir = c.dir()?.as_fd();
            if !(is_dir && c.branch.mode.writable()) {
                if let Some(backing) = c.branch.backing_at(dir, name, &p.stat) {
                    return Ok((backing, false));
                }
            }
            let fd = sys::fs::open_path_at(dir, name)?;
            // The name may have been replaced since the stat (a writable
            // branch, see `Branch::reach_by_name`): this fd must be what
            // the walk saw (its markers were read by name before).
            let st = sys::fs::fstat(fd.as_fd())?;
            if crate::backing::Identity::of(&st) != crate::backing::Identity::of(&p.stat) {
                return Err(Error::StaleInode);
            }
            fd
        }
    };
    let (backing, other_mount) = c.branch.backing_on(fd);
    Ok((backing, is_dir && other_mount))
}

/// The root directory: every branch root down to the first opaque one.
pub fn root(stack: &BranchStack) -> Result<(NodeState, FileStat)> {
    let mut layers = Vec::new();
    let mut top = None;
    for b in stack.iter() {
        let layer = root_layer(b)?;
        top.get_or_insert(sys::fs::fstat(layer.fd()?.as_fd())?);
        let opaque = layer.opacity == Opacity::Opaque;
        layers.push(layer);
        if opaque {
            break;
        }
    }
    let st = top.ok_or(Error::NotFound)?;
    Ok((
        NodeState {
            parent: ROOT_INO,
            name: OsString::new(),
            layers,
            generation: stack.generation(),
        },
        st,
    ))
}

/// The root directory of `b` as a layer.
fn root_layer(b: &Branch) -> Result<Layer> {
    let fd = sys::fs::dup(b.root())?;
    let info = dir_info(b, &fd, Path::new(""))?;
    Ok(Layer {
        branch: b.id,
        backing: b.pinned(fd),
        opacity: info.opacity,
        xwhiteouts: info.xwhiteouts,
        impure: info.impure,
        indexed: false,
        sealed: false,
        metacopy: false,
        path: PathBuf::new(),
    })
}

#[cfg(test)]
mod tests {
    //! Each outcome of the walk, on branches in temp dirs (no FUSE mount,
    //! no privilege: whiteouts are AUFS `.wh.` files, markers `user.*`
    //! xattrs).
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::branch::BranchId;
    use crate::mode::Mode;
    use std::fs;

    /// Branches `u` (writable) and `l1`, `l2`, ... under one temp dir.
    struct Stack {
        _dir: tempfile::TempDir,
        stack: BranchStack,
    }

    fn stack(build: impl FnOnce(&Path)) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        for b in ["u", "l1", "l2", "l3"] {
            fs::create_dir(dir.path().join(b)).unwrap();
        }
        build(dir.path());
        let backings = crate::backing::Backings::new(64);
        let branches = ["u", "l1", "l2", "l3"]
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mode = if i == 0 { Mode::RW } else { Mode::RO_WH };
                Branch::open(
                    BranchId(i as u16),
                    &dir.path().join(b),
                    mode,
                    false,
                    &backings,
                )
                .unwrap()
            })
            .collect();
        Stack {
            _dir: dir,
            stack: BranchStack::new(branches, Vec::new(), backings),
        }
    }

    fn mkdir(root: &Path, p: &str) {
        fs::create_dir_all(root.join(p)).unwrap();
    }

    fn file(root: &Path, p: &str, data: &str) {
        if let Some(d) = Path::new(p).parent() {
            mkdir(root, d.to_str().unwrap());
        }
        fs::write(root.join(p), data).unwrap();
    }

    fn redirect(root: &Path, p: &str, to: &str) {
        xattr::set(root.join(p), "user.overlay.redirect", to.as_bytes()).unwrap();
    }

    impl Stack {
        /// Looks up a union path from the root, one component at a time.
        fn find(&self, path: &str) -> Result<Found> {
            let (mut state, _) = root(&self.stack)?;
            let mut at = PathBuf::new();
            let mut found = None;
            for c in Path::new(path).iter() {
                let f = lookup(&self.stack, None, ROOT_INO, &state, &at, c)?;
                at.push(c);
                state = f.state.clone();
                found = Some(f);
            }
            Ok(found.expect("a non-empty path"))
        }

        /// The (branch, path in branch) of each layer of `path`.
        fn layers(&self, path: &str) -> Vec<(&'static str, String)> {
            let names = ["u", "l1", "l2", "l3"];
            self.find(path)
                .unwrap()
                .state
                .layers
                .iter()
                .map(|l| {
                    (
                        names[l.branch.0 as usize],
                        l.path.to_string_lossy().into_owned(),
                    )
                })
                .collect()
        }

        fn errno(&self, path: &str) -> nix::errno::Errno {
            self.find(path).map(|_| ()).unwrap_err().errno()
        }
    }

    fn l(b: &'static str, p: &str) -> (&'static str, String) {
        (b, p.to_string())
    }

    #[test]
    fn absent_goes_on_to_the_next_layer() {
        let s = stack(|r| file(r, "l2/f", "2"));
        assert_eq!(s.layers("f"), [l("l2", "f")]);
        assert_eq!(s.errno("nothing"), nix::errno::Errno::ENOENT);
    }

    /// Records every directory of the read-only branches in the stack's
    /// layer index, as readdir would.
    fn indexed(s: Stack) -> Stack {
        let Stack { _dir, stack } = s;
        let stack = stack.with_layer_index();
        for b in stack.iter() {
            let Some(ix) = stack.layer_index(b) else {
                continue;
            };
            for e in walkdir::WalkDir::new(&b.path) {
                let e = e.unwrap();
                if !e.file_type().is_dir() {
                    continue;
                }
                let rel = e.path().strip_prefix(&b.path).unwrap();
                let names: Vec<OsString> = fs::read_dir(e.path())
                    .unwrap()
                    .map(|d| d.unwrap().file_name())
                    .collect();
                ix.insert(b.id, rel, names.iter().map(|n| n.as_os_str()));
            }
        }
        Stack { _dir, stack }
    }

    /// The layer index skips probes, never changes an outcome: every
    /// outcome of the walk, looked up with and without it.
    #[test]
    fn layer_index_changes_no_outcome() {
        let build = |r: &Path| {
            file(r, "l1/a/f", "1");
            file(r, "l2/a/f", "2");
            file(r, "l3/a/g", "3");
            file(r, "l1/.wh.w", "");
            file(r, "l2/w", "hidden");
            file(r, "l1/d/.wh..wh..opq", "");
            file(r, "l2/d/x", "hidden by opacity");
            mkdir(r, "l1/r");
            redirect(r, "l1/r", "a");
            file(r, "l3/z", "z");
            file(r, "l1/n", "file over a dir");
            mkdir(r, "l2/n");
            mkdir(r, "l2/m");
            file(r, "l3/m", "file under a dir");
            file(r, "l2/a/.wh.g", "");
        };
        let plain = stack(build);
        let ix = indexed(stack(build));
        let paths = [
            "a",
            "a/f",
            "a/g",
            "w",
            "d",
            "d/x",
            "r",
            "r/f",
            "r/g",
            "z",
            "n",
            "m",
            "nothing",
            "a/nothing",
        ];
        for p in paths {
            match (plain.find(p), ix.find(p)) {
                (Ok(_), Ok(_)) => assert_eq!(plain.layers(p), ix.layers(p), "{p}"),
                (Err(a), Err(b)) => assert_eq!(a.errno(), b.errno(), "{p}"),
                (a, b) => panic!("{p}: {a:?} without the index, {b:?} with it"),
            }
        }
        // It is consulted: a name added to a lower after its listing is not
        // seen (udba=none: lowers do not change), where a probe sees it.
        for s in [&plain, &ix] {
            file(s._dir.path(), "l3/late", "late");
        }
        assert_eq!(plain.layers("late"), [l("l3", "late")]);
        assert_eq!(ix.errno("late"), nix::errno::Errno::ENOENT);
    }

    /// A lower file is held by its name until opened (no handle taken for
    /// a lookup); the name then leads to what the lookup saw, or the
    /// layer is stale — never another object.
    #[test]
    fn lower_files_are_opened_by_name_as_what_the_lookup_saw() {
        let s = stack(|r| {
            file(r, "l1/d/f", "seen");
            file(r, "l1/d/g", "seen too");
            file(r, "l1/d/other", "swapped in");
        });
        if s.stack.iter().any(|b| b.handle_mount.is_none()) {
            if std::env::var_os("UNIONFS_TEST_REQUIRE").is_some_and(|v| v == "1") {
                panic!("UNIONFS_TEST_REQUIRE=1 but no file handles here");
            }
            eprintln!("SKIP: no file handles here (not root?)");
            return;
        }
        let f = s.find("d/f").unwrap();
        let g = s.find("d/g").unwrap();
        let read = |fd: &OwnedFd| {
            let file = sys::fs::reopen(fd.as_fd(), nix::fcntl::OFlag::O_RDONLY).unwrap();
            std::io::read_to_string(std::fs::File::from(file)).unwrap()
        };
        assert_eq!(read(&f.state.layers[0].fd().unwrap()), "seen");
        // Behind the union's back (a lower must not change; udba aside).
        let l1 = s._dir.path().join("l1/d");
        fs::rename(l1.join("other"), l1.join("g")).unwrap();
        assert!(matches!(g.state.layers[0].fd(), Err(Error::StaleInode)));
        // What is open stays what it was.
        assert_eq!(read(&f.state.layers[0].fd().unwrap()), "seen");
    }

    #[test]
    fn whiteout_ends_the_walk() {
        let s = stack(|r| {
            file(r, "l1/.wh.f", "");
            file(r, "l2/f", "2");
            file(r, "l1/.wh.d", "");
            mkdir(r, "l2/d");
        });
        assert_eq!(s.errno("f"), nix::errno::Errno::ENOENT);
        assert_eq!(s.errno("d"), nix::errno::Errno::ENOENT);
    }

    #[test]
    fn directory_goes_on_below() {
        let s = stack(|r| {
            mkdir(r, "u/d");
            mkdir(r, "l2/d");
        });
        assert_eq!(s.layers("d"), [l("u", "d"), l("l2", "d")]);
        assert_eq!(s.find("d").unwrap().kind, Kind::Dir);
    }

    #[test]
    fn opaque_directory_ends_the_walk() {
        let s = stack(|r| {
            file(r, "l1/d/.wh..wh..opq", "");
            mkdir(r, "l2/d");
            mkdir(r, "l1/e");
            xattr::set(r.join("l1/e"), "user.overlay.opaque", b"y").unwrap();
            mkdir(r, "l2/e");
        });
        assert_eq!(s.layers("d"), [l("l1", "d")]);
        assert_eq!(s.layers("e"), [l("l1", "e")]);
        assert_eq!(
            s.find("e").unwrap().state.layers[0].opacity,
            Opacity::Opaque
        );
    }

    #[test]
    fn non_directory_ends_the_walk_and_is_hidden_below_a_directory() {
        let s = stack(|r| {
            file(r, "l1/d", "file over a dir");
            mkdir(r, "l2/d");
            mkdir(r, "l1/e");
            file(r, "l2/e", "file under a dir");
        });
        let f = s.find("d").unwrap();
        assert_eq!(f.kind, Kind::File);
        assert_eq!(s.layers("d"), [l("l1", "d")]);
        assert_eq!(s.layers("e"), [l("l1", "e")]);
    }

    #[test]
    fn relative_redirect_renames_in_the_same_layers() {
        let s = stack(|r| {
            mkdir(r, "u/new");
            redirect(r, "u/new", "old");
            file(r, "l1/old/f", "1");
        });
        assert_eq!(s.layers("new"), [l("u", "new"), l("l1", "old")]);
        assert_eq!(s.layers("new/f"), [l("l1", "old/f")]);
    }

    #[test]
    fn absolute_redirect_goes_on_in_lower_layers_only() {
        let s = stack(|r| {
            mkdir(r, "u/a/new");
            redirect(r, "u/a/new", "/d/d");
            mkdir(r, "u/d/d"); // the upper's own d/d is not the redirect's
            mkdir(r, "l1/d/d");
            mkdir(r, "l2/d/d");
        });
        assert_eq!(
            s.layers("a/new"),
            [l("u", "a/new"), l("l1", "d/d"), l("l2", "d/d")]
        );
    }

    /// The shape of issue 11: a non-directory on a redirect's path in a
    /// lower ends the search in that lower and below, silently.
    #[test]
    fn redirect_through_a_non_directory_stops_in_that_layer() {
        let s = stack(|r| {
            mkdir(r, "u/a/new");
            redirect(r, "u/a/new", "/d/d");
            mkdir(r, "l1/d/d");
            file(r, "l2/d", "a file where l1 has a directory");
            mkdir(r, "l3/d/d");
            file(r, "l3/d/d/hidden", "3");
        });
        assert_eq!(s.layers("a/new"), [l("u", "a/new"), l("l1", "d/d")]);
        assert_eq!(s.errno("a/new/hidden"), nix::errno::Errno::ENOENT);
    }

    #[test]
    fn redirect_through_a_symlink_or_missing_component_finds_nothing_there() {
        let s = stack(|r| {
            mkdir(r, "u/new");
            redirect(r, "u/new", "/d/d/d");
            std::os::unix::fs::symlink("/", r.join("l1/d")).unwrap();
            mkdir(r, "l2/d/d/d");
        });
        // l1's d is a symlink: not a directory of the union; the walk stops there.
        assert_eq!(s.layers("new"), [l("u", "new")]);
        let s = stack(|r| {
            mkdir(r, "u/new");
            redirect(r, "u/new", "/d/d/d");
            mkdir(r, "l1/d");
            mkdir(r, "l2/d/d/d");
        });
        // l1 lacks d/d: absent, so l2 shows through.
        assert_eq!(s.layers("new"), [l("u", "new"), l("l2", "d/d/d")]);
    }

    #[test]
    fn redirect_through_a_whiteout_or_opaque_directory_stops_below_it() {
        let s = stack(|r| {
            mkdir(r, "u/new");
            redirect(r, "u/new", "/d/d");
            file(r, "l1/.wh.d", "");
            mkdir(r, "l2/d/d");
        });
        assert_eq!(s.layers("new"), [l("u", "new")]);
        let s = stack(|r| {
            mkdir(r, "u/new");
            redirect(r, "u/new", "/d/d");
            mkdir(r, "l1/d/d");
            file(r, "l1/d/.wh..wh..opq", "");
            mkdir(r, "l2/d/d");
        });
        assert_eq!(s.layers("new"), [l("u", "new"), l("l1", "d/d")]);
    }

    /// In the walk's last layer an opaque marker file stops nothing, and
    /// is not looked for — except on a directory with a redirect, which
    /// moves the walk to the branches below: there it must stop it.
    #[test]
    fn the_last_layer_looks_for_an_opaque_marker_only_with_a_redirect() {
        let s = stack(|r| {
            mkdir(r, "u/a/new"); // `a` is in the upper only: `new` is its last layer
            redirect(r, "u/a/new", "/d/d");
            file(r, "u/a/new/.wh..wh..opq", "");
            mkdir(r, "l1/d/d");
            file(r, "l1/d/d/hidden", "1");
            file(r, "l3/last/.wh..wh..opq", "");
        });
        assert_eq!(s.layers("a/new"), [l("u", "a/new")]);
        assert_eq!(s.errno("a/new/hidden"), nix::errno::Errno::ENOENT);
        assert_eq!(s.layers("last"), [l("l3", "last")]);
        // Not read: the layer does not know it is opaque (nothing below).
        assert_eq!(
            s.find("last").unwrap().state.layers[0].opacity,
            Opacity::Transparent
        );
    }

    /// A directory marked both ways — an AUFS opaque marker file and an
    /// overlay `opaque=x` xattr — is opaque and has its xattr whiteouts
    /// honoured, each format's own rule, whether a layer lies below it or
    /// not (it once lost the xattr whiteouts where the marker was read).
    #[test]
    fn an_opaque_directory_with_xattr_whiteouts_is_both_in_every_layer() {
        let s = stack(|r| {
            for (dir, below) in [("l1/mixed", Some("l2/mixed")), ("l3/last", None)] {
                mkdir(r, dir);
                xattr::set(r.join(dir), "user.overlay.opaque", b"x").unwrap();
                file(r, &format!("{dir}/.wh..wh..opq"), "");
                file(r, &format!("{dir}/gone"), "");
                xattr::set(r.join(format!("{dir}/gone")), "user.overlay.whiteout", b"").unwrap();
                if let Some(b) = below {
                    file(r, &format!("{b}/below"), "hidden by the marker");
                }
            }
        });
        assert_eq!(s.layers("mixed"), [l("l1", "mixed")]);
        assert_eq!(s.errno("mixed/below"), nix::errno::Errno::ENOENT);
        assert_eq!(s.errno("mixed/gone"), nix::errno::Errno::ENOENT);
        assert_eq!(s.errno("last/gone"), nix::errno::Errno::ENOENT);
    }

    #[test]
    fn redirect_to_a_non_directory_or_nothing_gives_the_directory_alone() {
        let s = stack(|r| {
            mkdir(r, "u/new");
            redirect(r, "u/new", "/d/d");
            file(r, "l1/d/d", "a file");
            mkdir(r, "u/other");
            redirect(r, "u/other", "/nowhere/at/all");
        });
        assert_eq!(s.layers("new"), [l("u", "new")]);
        assert_eq!(s.layers("other"), [l("u", "other")]);
        assert_eq!(s.find("new").unwrap().kind, Kind::Dir);
    }

    #[test]
    fn redirect_in_a_lower_is_followed_on_the_way() {
        // l1 is a former upper: its d was renamed from e.
        let s = stack(|r| {
            mkdir(r, "u/new");
            redirect(r, "u/new", "/d/x");
            mkdir(r, "l1/d/x");
            redirect(r, "l1/d", "/e");
            mkdir(r, "l2/e/x");
            mkdir(r, "l2/d/x");
        });
        assert_eq!(
            s.layers("new"),
            [l("u", "new"), l("l1", "d/x"), l("l2", "e/x")]
        );
    }

    #[test]
    fn unionfs_fuse_marker_paths_through_files_hide_nothing() {
        let s = stack(|r| {
            // .unionfs/d is a file, so no marker below it can exist
            file(r, "u/.unionfs/d", "");
            mkdir(r, "l1/d");
            file(r, "l1/d/f", "1");
        });
        assert_eq!(s.layers("d/f"), [l("l1", "d/f")]);
    }

    #[test]
    fn metadata_only_file_without_data_is_an_error_of_its_own() {
        let s = stack(|r| {
            file(r, "u/f", "");
            fs::OpenOptions::new()
                .write(true)
                .open(r.join("u/f"))
                .unwrap()
                .set_len(100)
                .unwrap();
            xattr::set(r.join("u/f"), "user.overlay.metacopy", b"").unwrap();
            file(r, "l1/g", "data");
        });
        assert!(matches!(s.find("f"), Err(Error::MetacopyWithoutData)));
        assert_eq!(s.errno("f"), nix::errno::Errno::EIO);
    }

    // Hostile layers: an image layer is untrusted input.

    #[test]
    fn redirect_out_of_the_branch_is_ignored() {
        let s = stack(|r| {
            file(r, "secret/f", "outside every branch");
            mkdir(r, "u/a");
            redirect(r, "u/a", "/../secret");
            mkdir(r, "u/b");
            redirect(r, "u/b", "../secret");
            // a long path of components no branch has (the limit of
            // PATH_MAX is parse_redirect's, tested there: ext4 cannot
            // even store such a value)
            mkdir(r, "u/c");
            redirect(r, "u/c", &format!("/{}", "x/".repeat(1500)));
        });
        for d in ["a", "b", "c"] {
            assert_eq!(s.layers(d), [l("u", d)], "{d}");
            assert_eq!(s.errno(&format!("{d}/f")), nix::errno::Errno::ENOENT);
        }
    }

    #[test]
    fn redirect_loops_end() {
        // l1/a -> /b, l2/b -> /a: each step goes strictly down the stack.
        let s = stack(|r| {
            mkdir(r, "l1/a");
            redirect(r, "l1/a", "/b");
            mkdir(r, "l2/b");
            redirect(r, "l2/b", "/a");
            mkdir(r, "l3/a");
            mkdir(r, "u/b");
            redirect(r, "u/b", "b");
            mkdir(r, "l1/b");
            redirect(r, "l1/b", "b");
        });
        assert_eq!(s.layers("a"), [l("l1", "a"), l("l2", "b"), l("l3", "a")]);
        assert_eq!(
            s.layers("b"),
            [l("u", "b"), l("l1", "b"), l("l2", "b"), l("l3", "a")]
        );
    }

    #[test]
    fn a_lookup_that_needs_too_many_probes_fails_on_its_own() {
        let s = stack(|r| {
            mkdir(r, "u/new");
            redirect(r, "u/new", "/d/d/d/d");
            mkdir(r, "l1/d/d/d/d");
            mkdir(r, "l2/d/d/d/d");
        });
        let (root_state, _) = root(&s.stack).unwrap();
        let cands = candidates_of(&s.stack, &root_state.layers).unwrap();
        let cx = Ctx {
            stack: &s.stack,
            probes_left: std::cell::Cell::new(6),
            faults: None,
        };
        let r = walk(&cx, cands, OsStr::new("new"), Path::new("new"));
        assert!(matches!(r, Err(Error::RedirectsTooDeep)));
        assert_eq!(Error::RedirectsTooDeep.errno(), nix::errno::Errno::ELOOP);
        // with the real budget it resolves
        assert_eq!(s.layers("new").len(), 3);
    }

    #[test]
    fn whiteouts_of_dot_names_hide_nothing_they_should_not() {
        let s = stack(|r| {
            file(r, "l1/d/.wh.", "");
            file(r, "l1/d/.wh..", "");
            file(r, "l1/d/.wh...", "");
            file(r, "l2/d/f", "2");
        });
        assert_eq!(s.layers("d/f"), [l("l2", "d/f")]);
        assert_eq!(s.layers("d"), [l("l1", "d"), l("l2", "d")]);
    }
}
