//! The writable side of the union: the staging area (workdir), the
//! whiteout/opaque writers for the chosen format, atomic placement of
//! staged objects into the upper, and the writer's settings (copy-up data
//! `Strategy`, durability, metacopy). One `Upper` per writable branch, held
//! by the branch stack snapshot (`stack::BranchStack::writer`).
//!
//! Invariant: every object that becomes visible through a write is either
//! created in place by one syscall, or built completely in the workdir and
//! moved into the upper with one rename; so a crash leaves at most junk in
//! the workdir (removed at the next mount), never a half-made object in the
//! view. Empty files for copy-ups are made ahead, unnamed, by a thread of
//! the writer's (`StagePool`). The hard-link index's names are known in
//! memory too (`IndexNames`: read at mount, a superset of the directory's
//! while mounted), so a lookup of a hard-linked lower file asks the disk
//! only when its entry may exist.
//!
//! Invariant: one union writes a branch and its workdir at a time. An
//! exclusive `flock` on the branch root and on the workdir is taken before
//! anything there is read or cleared, waiting (`IN_USE_WAIT`) while
//! another open file holds it: a daemon whose unmount was answered is
//! still publishing, and its fds go only with its last thread. The locks
//! are the union's, one cell per directory (`Backings::write_lock`), which
//! every `Upper` it opens there shares; a mount takes all of its cells
//! first, in (device, inode) order (`hold_all`).
//!
//! Locks: a directory's lock cell while its lock is taken (at open, which
//! may wait); the staging pool's state mutex and the index names' mutex
//! (leaves: one push, pop or set access, no syscall under them); the
//! temp-name counter is atomic.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::errno::Errno;

use crate::branch::{Branch, BranchId};
use crate::error::{Error, Result};
use crate::sys;
use crate::sys::fs::RenameMode;
use crate::whiteout::{self, WhiteoutFormat};

/// Which xattr namespace the union writes its own attributes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNs {
    /// `trusted.*` (root: invisible to unprivileged users).
    Trusted,
    /// `user.*` (unprivileged mounts).
    User,
}

impl XattrNs {
    fn prefix(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted",
            XattrNs::User => "user",
        }
    }
}

/// How copy-up moves data: the one way `copyup=` allows (`Upper::copy_strategy`),
/// and which way a copy took (`copy_up::copy_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// FICLONE: extents shared, nothing copied.
    Reflink,
    /// copy_file_range over the data extents.
    CopyFileRange,
    /// pread/pwrite over the data extents.
    ReadWrite,
}

/// Names of the workdir's parts.
const WORK: &str = "work";
const INDEX: &str = "index";
/// Holds the staging pool's directory (`pool_dir`).
const STAGE: &str = "stage";

/// The upper branch's writable machinery.
#[derive(Debug)]
pub struct Upper {
    /// The upper branch.
    pub branch: BranchId,
    /// Staging directory (same mount as the upper).
    pub work: OwnedFd,
    /// Hard-link index directory.
    pub index: OwnedFd,
    /// The names `index` holds (and names about to be linked there).
    pub index_names: IndexNames,
    /// Format of whiteouts and opaque markers written.
    pub format: WhiteoutFormat,
    /// Namespace of the union's own xattrs.
    pub ns: XattrNs,
    /// Hard-link index entries are kernel overlayfs's own (named by the
    /// lower file's overlay file handle, in WORKDIR/index, with
    /// `trusted.overlay.origin`), so a kernel mount of this upper and
    /// workdir keeps lower hard links together too. Only with the overlay
    /// format, as root, and a workdir of the user's.
    pub kernel_index: bool,
    /// Copied-up data reaches the disk before the copy is renamed into
    /// place (as overlayfs does, unless mounted `volatile`), so a crash of the
    /// machine cannot leave a copy with missing data in the view.
    pub durable: bool,
    /// A durable copy-up is synced with a burst of others and named in the
    /// upper after it (`publish.rs`), else synced and named at once.
    pub batch_sync: bool,
    /// Metadata changes of a lower file copy its metadata only.
    pub metacopy: bool,
    /// Opening a big lower file for writing copies no data (`sparse.rs`).
    pub sparse: bool,
    /// The one way copy-up may move data (`copyup=`); `None`: the best that works.
    pub copy_strategy: Option<Strategy>,
    /// AUFS whiteouts are hard links to the branch's whiteout base
    /// (`rw`), or separate empty files (`rw+nolwh`). Changed by a live
    /// `branch mod` between the two, so an atomic.
    pub link_whiteouts: AtomicBool,
    /// The whiteout base (`.wh..wh.aufs` in the branch root), once made.
    wh_base: std::sync::OnceLock<Option<OwnedFd>>,
    /// The branch root (to make the whiteout base in).
    root: std::sync::Arc<OwnedFd>,
    seq: AtomicU64,
    /// FICLONE was refused with EOPNOTSUPP (the upper's filesystem cannot
    /// clone at all): copy-up no longer asks.
    no_clone: AtomicBool,
    /// Empty files made ahead for copy-ups (`staged_file`).
    pool: StagePool,
    /// This boot's id and the upper's mount's unique id: a pending copy-up
    /// marked with them was staged while the upper stayed mounted, so
    /// its data is in the page cache still (`recover_pending`). Empty when
    /// the mount id is unknown (then nothing is recovered).
    session: Vec<u8>,
    /// The `flock`s on the branch root and the workdir that say this union
    /// writes them (`hold_in`): never read, released when the last of the
    /// union's writers of the directory goes.
    _locks: Vec<std::sync::Arc<crate::backing::WriteLock>>,
}

/// This union's lock cell of directory `dir`, holding the lock (`hold`)
/// unless the union held it already.
fn hold_in(
    backings: &crate::backing::Backings,
    dir: BorrowedFd<'_>,
    what: &Path,
) -> Result<std::sync::Arc<crate::backing::WriteLock>> {
    let st = sys::fs::fstat(dir)?;
    let cell = backings.write_lock(st.st_dev, st.st_ino);
    {
        let mut lock = cell.lock();
        if lock.is_none() {
            *lock = hold(dir, what)?;
        }
    }
    Ok(cell)
}

/// This union's lock cells of `dirs`, each held (`hold_in`), taken in
/// (device, inode) order so that two unions sharing some of them never
/// each hold one the other waits for.
pub fn hold_all<'a>(
    backings: &crate::backing::Backings,
    dirs: impl Iterator<Item = (BorrowedFd<'a>, &'a Path)>,
) -> Result<Vec<std::sync::Arc<crate::backing::WriteLock>>> {
    let mut keyed = Vec::new();
    for (fd, what) in dirs {
        let st = sys::fs::fstat(fd)?;
        keyed.push(((st.st_dev, st.st_ino), fd, what));
    }
    keyed.sort_by_key(|k| k.0);
    keyed.dedup_by_key(|k| k.0);
    keyed
        .into_iter()
        .map(|(_, fd, what)| hold_in(backings, fd, what))
        .collect()
}

/// How long a mount waits for another process's union to let go of its
/// writable branch or workdir: a daemon whose unmount was answered may
/// still be publishing its last copy-ups (and a daemon's threads outlive
/// its main thread's exit) — `umount; mount` must not race it.
const IN_USE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Takes the exclusive lock on `dir` (a writable branch or workdir) that
/// says a union writes it, waiting while another open file holds it: that
/// union's staged and pending copies live there, and this one would clear
/// them. (This union's own writers of one directory share its lock,
/// `hold_in`, so a live branch change never waits here.)
/// Filesystems without `flock` are not locked.
fn hold(dir: BorrowedFd<'_>, what: &Path) -> Result<Option<sys::fs::DirLock>> {
    let start = std::time::Instant::now();
    let mut told = false;
    loop {
        match sys::fs::try_lock_dir(dir) {
            Ok(Some(lock)) => return Ok(Some(lock)),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!("{}: not locked ({e})", what.display());
                return Ok(None);
            }
        }
        // For the messages only: /proc/locks names the process that took
        // the lock, which is not the holder after a daemon's fork.
        let who = || {
            sys::fs::flock_holder(dir)
                .map_or_else(|| "another process".into(), |p| format!("process {p}"))
        };
        if start.elapsed() >= IN_USE_WAIT {
            tracing::error!("{} is in use by {}", what.display(), who());
            return Err(Error::BranchInUse);
        }
        if !told && start.elapsed() >= std::time::Duration::from_secs(1) {
            tracing::warn!(
                "{} is in use by {} (a union still finishing?): waiting",
                what.display(),
                who()
            );
            told = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The names of the hard-link index directory, kept in memory: the union
/// owns its workdir while mounted, so every entry made there is made
/// through `Upper` (`adding`, before its link). A superset of the
/// directory's names — an entry the union takes back (a failed placing)
/// keeps its name here — so `may_hold` false means the entry does not
/// exist: the probe a lookup of every hard-linked lower file made before.
/// An index that cannot be listed, or holds more than `INDEX_NAMES_MAX`
/// names, is not kept (every such lookup asks the disk, as before).
#[derive(Debug, Default)]
pub struct IndexNames(parking_lot::Mutex<Option<std::collections::HashSet<OsString>>>);

/// Most index names kept in memory (about 100 bytes each with the overlay
/// format's hex file handles).
const INDEX_NAMES_MAX: usize = 65_536;

impl IndexNames {
    /// The names in index directory `dir` now.
    fn read(dir: BorrowedFd<'_>) -> Self {
        let names = sys::fs::read_dir(dir)
            .ok()
            .filter(|entries| entries.len() <= INDEX_NAMES_MAX)
            .map(|entries| entries.into_iter().map(|e| e.name).collect());
        IndexNames(parking_lot::Mutex::new(names))
    }

    /// True unless the index certainly lacks `name`.
    pub fn may_hold(&self, name: &OsStr) -> bool {
        self.0.lock().as_ref().is_none_or(|n| n.contains(name))
    }

    /// True when the index certainly holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.lock().as_ref().is_some_and(|n| n.is_empty())
    }

    /// Before an entry `name` is linked into the index.
    pub fn adding(&self, name: &OsStr) {
        let mut names = self.0.lock();
        if let Some(n) = names.as_mut() {
            n.insert(name.to_os_string());
            if n.len() > INDEX_NAMES_MAX {
                *names = None;
            }
        }
    }
}

/// The recorded union link-count offset of an upper file ("U±n", as
/// overlayfs writes it; `None` without one or in the lower-relative form).
pub fn nlink_offset(fd: BorrowedFd<'_>) -> Option<i64> {
    whiteout::NLINK_XATTRS.iter().find_map(|x| {
        let v = sys::xattr::get(fd, OsStr::new(x)).ok().flatten()?;
        let s = std::str::from_utf8(&v).ok()?;
        s.trim_end_matches('\0')
            .strip_prefix('U')?
            .parse::<i64>()
            .ok()
    })
}

/// The result of writing one of the union's bookkeeping xattrs: an upper
/// filesystem without xattrs (or without this namespace) is excused — the
/// union then works without that record, as it always has — but any other
/// failure, above all a full filesystem, fails the operation, which then
/// changes nothing visible.
fn bookkeeping(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if matches!(e.errno(), Errno::EOPNOTSUPP | Errno::EPERM) => Ok(()),
        r => r,
    }
}

/// Reads the whiteout format recorded on an upper root, if any.
pub fn recorded_format(root: BorrowedFd<'_>) -> Result<Option<WhiteoutFormat>> {
    for x in whiteout::FORMAT_XATTRS {
        if let Some(v) = sys::xattr::get(root, OsStr::new(x))? {
            return Ok(match v.as_slice() {
                b"aufs" => Some(WhiteoutFormat::Aufs),
                b"overlay" => Some(WhiteoutFormat::Overlay),
                _ => None,
            });
        }
    }
    Ok(None)
}

fn format_word(f: WhiteoutFormat) -> &'static [u8] {
    match f {
        WhiteoutFormat::Aufs => b"aufs",
        WhiteoutFormat::Overlay => b"overlay",
    }
}

fn mkdir_open(dir: BorrowedFd<'_>, name: &str) -> Result<OwnedFd> {
    match sys::fs::mkdir_at(dir, OsStr::new(name), 0o700) {
        Ok(()) => {}
        Err(e) if e.errno() == Errno::EEXIST => {}
        Err(e) => return Err(e),
    }
    sys::fs::open_path_at(dir, OsStr::new(name))
}

/// `dir/name` as an empty directory: its entries removed if it is one,
/// else (anything else there removed) made.
fn clear_dir(dir: BorrowedFd<'_>, name: &str) -> Result<OwnedFd> {
    if let Ok(fd) = sys::fs::open_path_at(dir, OsStr::new(name)) {
        if sys::fs::fstat(fd.as_fd())?.st_mode & libc::S_IFMT == libc::S_IFDIR {
            for e in sys::fs::read_dir(fd.as_fd())? {
                remove_tree(fd.as_fd(), &e.name)?;
            }
            return Ok(fd);
        }
        remove_tree(dir, OsStr::new(name))?;
    }
    mkdir_open(dir, name)
}

/// The xattr naming where a staged copy-up is to go (`publish.rs`).
fn pending_xattr(ns: XattrNs) -> OsString {
    format!("{}.unionfs.pending", ns.prefix()).into()
}

/// This boot's id and the unique id of the mount `root` is on; empty when
/// either is unknown.
fn session_id(root: BorrowedFd<'_>) -> Vec<u8> {
    let boot = crate::sparse::boot_id();
    match sys::fs::mount_unique_id(root) {
        Some(id) if !boot.is_empty() => [boot, id.to_le_bytes().to_vec()].concat(),
        _ => Vec::new(),
    }
}

/// Copy-ups a killed daemon left staged but not yet published
/// (`publish.rs`): each is complete and says where it goes and in which
/// session (boot and mount of the upper) it was made. In the same session
/// the daemon died, not the machine, and the upper was not unmounted: the
/// data is in the page cache still, so after one syncfs the copies take
/// their names (the writes made into them are not lost). Otherwise (a
/// power cut, a shut-down filesystem mounted again) their data may never
/// have reached the disk: they stay junk and are cleared with the rest.
///
/// A copy the upper cannot take now (full, over quota, read-only, failing)
/// refuses the mount, so it is not cleared with the junk: it holds what
/// was written, and the next mount, with room made, publishes it. One
/// whose path is gone (its parent removed offline) is cleared.
fn recover_pending(
    work: BorrowedFd<'_>,
    root: BorrowedFd<'_>,
    key: &OsStr,
    session: &[u8],
) -> Result<()> {
    let boot = session;
    if boot.is_empty() {
        return Ok(());
    }
    let Ok(entries) = sys::fs::read_dir(work) else {
        return Ok(());
    };
    let mut found = Vec::new();
    for e in entries {
        let Ok(fd) = sys::fs::open_path_at(work, &e.name) else {
            continue;
        };
        let Ok(Some(v)) = sys::xattr::get(fd.as_fd(), key) else {
            continue;
        };
        if let Some(target) = v.strip_prefix(boot) {
            if target.first() == Some(&0) {
                found.push((e.name, OsString::from_vec(target[1..].to_vec())));
            }
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    // A failed sync: their data may not be what was written (a later
    // mount's syncfs would not even say so), so they are junk.
    let synced = sys::fs::reopen(
        work,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
    )
    .and_then(|w| sys::fs::syncfs(w.as_fd()));
    if let Err(e) = synced {
        tracing::error!("dropped the copy-ups the last daemon left pending: syncfs: {e}");
        return Ok(());
    }
    // The first copy the upper could not take, and how many.
    let mut refused: Option<(PathBuf, Error)> = None;
    let mut unplaced = 0usize;
    for (tmp, target) in found {
        let target = Path::new(&target);
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            continue;
        };
        let dir = if parent.as_os_str().is_empty() {
            sys::fs::reopen(root, nix::fcntl::OFlag::O_PATH)
        } else {
            sys::fs::open_path_at(root, parent.as_os_str())
        };
        let placed = dir.and_then(|dir| {
            sys::fs::rename_at(work, &tmp, dir.as_fd(), name, RenameMode::NoReplace).map(|()| dir)
        });
        match placed {
            Ok(dir) => {
                if let Ok(fd) = sys::fs::open_path_at(dir.as_fd(), name) {
                    let _ = sys::xattr::remove(fd.as_fd(), key);
                }
                tracing::info!(
                    "published a copy-up the last daemon left pending: {}",
                    target.display()
                );
            }
            Err(e) if upper_cannot_take(&e) => {
                unplaced += 1;
                refused.get_or_insert((target.to_path_buf(), e));
            }
            Err(e) => tracing::warn!(
                "dropped a copy-up the last daemon left pending: {}: {e}",
                target.display()
            ),
        }
    }
    let Some((first, e)) = refused else {
        return Ok(());
    };
    tracing::error!(
        "cannot publish {unplaced} copy-up(s) the last daemon left pending ({}{}: {e}); \
         they stay in the workdir: make room on the upper and mount again",
        first.display(),
        if unplaced > 1 { ", ..." } else { "" },
    );
    Err(e)
}

/// Whether `e` says the upper cannot take a new name now, rather than that
/// the name's place is gone: full, over quota, read-only or failing.
fn upper_cannot_take(e: &Error) -> bool {
    matches!(
        e.errno(),
        Errno::ENOSPC | Errno::EDQUOT | Errno::EROFS | Errno::EIO | Errno::ENOMEM
    )
}

/// Removes `dir/name` and everything below it (never following symlinks).
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let fd = match sys::fs::open_path_at(dir, name) {
        Ok(fd) => fd,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    };
    let st = sys::fs::fstat(fd.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return sys::fs::unlink_at(dir, name, false);
    }
    for e in sys::fs::read_dir(fd.as_fd())? {
        remove_tree(fd.as_fd(), &e.name)?;
    }
    sys::fs::unlink_at(dir, name, true)
}

impl Upper {
    /// Opens (creating) the staging area — `workdir` if given, else a
    /// reserved directory inside the upper — and empties its `work` part.
    pub fn open(
        upper: &Branch,
        workdir: Option<&Path>,
        format: WhiteoutFormat,
        record: bool,
        ns: XattrNs,
    ) -> Result<Upper> {
        let base = match workdir {
            Some(w) => sys::fs::open_path_abs(w)?,
            None => mkdir_open(upper.root(), whiteout::STAGING_NAME)?,
        };
        let work_name = if workdir.is_some() {
            "unionfs-work"
        } else {
            WORK
        };
        let kernel_index =
            workdir.is_some() && format == WhiteoutFormat::Overlay && ns == XattrNs::Trusted;
        let index_name = if kernel_index || workdir.is_none() {
            INDEX
        } else {
            "unionfs-index"
        };
        // Nothing is read or cleared before no other union writes here.
        let mut locks = vec![hold_in(&upper.backings, upper.root(), &upper.path)?];
        if let Some(w) = workdir {
            locks.push(hold_in(&upper.backings, base.as_fd(), w)?);
        }
        let session = session_id(upper.root());
        // Copy-ups a killed daemon left pending take their names first.
        if let Ok(w) = sys::fs::open_path_at(base.as_fd(), OsStr::new(work_name)) {
            recover_pending(w.as_fd(), upper.root(), &pending_xattr(ns), &session)?;
        }
        // Leftovers of a crash are junk by construction: clear them —
        // emptying the directory rather than making it anew, so a full
        // filesystem (no inode to spare) can still be mounted.
        let work = clear_dir(base.as_fd(), work_name)?;
        let index = mkdir_open(base.as_fd(), index_name)?;
        let index_names = IndexNames::read(index.as_fd());
        let stage_name = if workdir.is_some() {
            "unionfs-stage"
        } else {
            STAGE
        };
        let pool_dir = pool_dir(base.as_fd(), stage_name);
        let up = Upper {
            branch: upper.id,
            work,
            index,
            index_names,
            format,
            ns,
            kernel_index,
            durable: true,
            batch_sync: true,
            metacopy: false,
            sparse: false,
            copy_strategy: None,
            link_whiteouts: AtomicBool::new(false),
            wh_base: std::sync::OnceLock::new(),
            root: std::sync::Arc::clone(&upper.root),
            seq: AtomicU64::new(0),
            no_clone: AtomicBool::new(false),
            pool: StagePool::new(pool_dir),
            session,
            _locks: locks,
        };
        // Record the format so a later mount reads this upper the same way
        // (best effort: without xattr support the default applies).
        if record {
            let _ = sys::xattr::set(upper.root(), &up.xattr("format"), format_word(format), 0);
        }
        Ok(up)
    }

    /// `<ns>.unionfs.<what>`.
    pub fn xattr(&self, what: &str) -> OsString {
        format!("{}.unionfs.{what}", self.ns.prefix()).into()
    }

    /// `<ns>.overlay.<what>` (kernel-compatible names).
    pub fn overlay_xattr(&self, what: &str) -> OsString {
        format!("{}.overlay.{what}", self.ns.prefix()).into()
    }

    /// Marks staged copy `fd` as pending for upper path `target`, made in
    /// this boot (`recover_pending` reads it after a killed daemon).
    pub fn set_pending(&self, fd: BorrowedFd<'_>, target: &Path) -> Result<()> {
        let mut v = self.session.clone();
        v.push(0);
        v.extend_from_slice(target.as_os_str().as_bytes());
        bookkeeping(sys::xattr::set(fd, &pending_xattr(self.ns), &v, 0))
    }

    /// `set_pending` through an open (not O_PATH) fd of the copy.
    pub fn set_pending_open(&self, fd: BorrowedFd<'_>, target: &Path) -> Result<()> {
        let mut v = self.session.clone();
        v.push(0);
        v.extend_from_slice(target.as_os_str().as_bytes());
        bookkeeping(sys::fdxattr::set(fd, &pending_xattr(self.ns), &v, 0))
    }

    /// Drops the pending mark of a published copy (best effort: a mark
    /// left on a copy in the upper is never read).
    pub fn clear_pending(&self, fd: BorrowedFd<'_>) {
        let _ = sys::xattr::remove(fd, &pending_xattr(self.ns));
    }

    /// An empty regular file (0600) in the workdir to stage a copy in,
    /// opened for writing, and its name: one made ahead by the pool's
    /// thread when there is one, else made now. Each call also lets the
    /// pool make more.
    pub fn staged_file(&self) -> Result<(OsString, OwnedFd)> {
        if let Some(made) = self.pool.take(self) {
            return Ok(made);
        }
        if let Some(made) = self.pool.make_now(self) {
            return Ok(made);
        }
        let tmp = self.temp_name();
        let fd = sys::fs::create_at(self.work.as_fd(), &tmp, nix::fcntl::OFlag::O_WRONLY, 0o600)?;
        Ok((tmp, fd))
    }

    /// Whether copy-up should try FICLONE (not once the filesystem
    /// refused it as unsupported).
    pub fn may_clone(&self) -> bool {
        !self.no_clone.load(Ordering::Relaxed)
    }

    /// Records that the upper's filesystem cannot clone (EOPNOTSUPP).
    pub fn clone_refused(&self) {
        self.no_clone.store(true, Ordering::Relaxed);
    }

    /// A fresh name in the workdir.
    pub fn temp_name(&self) -> OsString {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("#{:x}-{n:x}", std::process::id()).into()
    }

    /// Removes a staged object (after a failure).
    pub fn discard(&self, tmp: &OsStr) {
        let _ = remove_tree(self.work.as_fd(), tmp);
    }

    /// Is there a whiteout for `name` in upper directory `dir`?
    pub fn whiteout_at(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
        match sys::fs::stat_at(dir, &whiteout::whiteout_name(name)) {
            Ok(_) => return Ok(true),
            Err(e) if e.is_not_found() || e.errno() == Errno::ENAMETOOLONG => {}
            Err(e) => return Err(e),
        }
        match sys::fs::stat_at(dir, name) {
            Ok(st) => Ok(self.format == WhiteoutFormat::Overlay
                && whiteout::is_char_whiteout(st.st_mode, st.st_rdev)),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates `.wh.<name>` in upper directory `dir` (AUFS format), leaving
    /// any object under `name` in place.
    pub fn write_aufs_whiteout_only(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        let wh = whiteout::whiteout_name(name);
        if wh.len() > 255 {
            return Err(Error::NameTooLong);
        }
        if self.link_whiteouts.load(Ordering::Relaxed) {
            if let Some(base) = self.whiteout_base() {
                match sys::fs::link_fd(base.as_fd(), dir, &wh) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.errno() == Errno::EEXIST => return Ok(()),
                    // Too many links, no privilege for linkat(AT_EMPTY_PATH),
                    // a filesystem without hard links: a file of its own.
                    Err(_) => {}
                }
            }
        }
        match sys::fs::create_at(dir, &wh, nix::fcntl::OFlag::O_WRONLY, 0) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Errno::EEXIST => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Makes the whiteout base (`.wh..wh.aufs`, empty, in the branch
    /// root) if the branch links its whiteouts and has none, keeping the
    /// root's times (mounting is not a change of the branch). Called when
    /// the writer is set up, as AUFS does at mount and remount.
    pub fn prepare_whiteout_base(&self) -> Result<()> {
        if self.format != WhiteoutFormat::Aufs || !self.link_whiteouts.load(Ordering::Relaxed) {
            return Ok(());
        }
        let root = self.root.as_fd();
        let name = OsStr::new(whiteout::WHITEOUT_BASE);
        if sys::fs::stat_at(root, name).is_ok() {
            return Ok(());
        }
        let before = sys::fs::fstat(root)?;
        match sys::fs::create_at(root, name, nix::fcntl::OFlag::O_WRONLY, 0o444) {
            Ok(_) => {}
            Err(e) if e.errno() == Errno::EEXIST => return Ok(()),
            Err(e) => return Err(e),
        }
        let _ = sys::fs::utimes_fd(
            root,
            sys::fs::SetTime::At(before.st_atime, before.st_atime_nsec),
            sys::fs::SetTime::At(before.st_mtime, before.st_mtime_nsec),
        );
        Ok(())
    }

    /// The whiteout base, when the branch has one that is a plain empty
    /// file (anything else there is not linked to).
    fn whiteout_base(&self) -> Option<&OwnedFd> {
        self.wh_base
            .get_or_init(|| {
                let fd =
                    sys::fs::open_path_at(self.root.as_fd(), OsStr::new(whiteout::WHITEOUT_BASE))
                        .ok()?;
                let st = sys::fs::fstat(fd.as_fd()).ok()?;
                (st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size == 0).then_some(fd)
            })
            .as_ref()
    }

    /// Writes a whiteout for `name` into upper directory `dir`, replacing
    /// (atomically) any non-directory the upper holds under that name.
    pub fn write_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        match self.format {
            WhiteoutFormat::Aufs => {
                self.write_aufs_whiteout_only(dir, name)?;
                // The object under `name` (if any) goes after the whiteout
                // exists: the view never shows the lower one in between.
                match sys::fs::unlink_at(dir, name, false) {
                    Ok(()) => Ok(()),
                    Err(e) if e.is_not_found() => Ok(()),
                    Err(e) => Err(e),
                }
            }
            WhiteoutFormat::Overlay => {
                let tmp = self.temp_name();
                sys::fs::mknod_at(self.work.as_fd(), &tmp, libc::S_IFCHR, 0)?;
                let r = sys::fs::rename_at(self.work.as_fd(), &tmp, dir, name, RenameMode::Replace);
                if r.is_err() {
                    self.discard(&tmp);
                }
                r
            }
        }
    }

    /// Marks a staged or upper directory opaque.
    pub fn make_opaque(&self, dir: BorrowedFd<'_>) -> Result<()> {
        match self.format {
            WhiteoutFormat::Aufs => {
                match sys::fs::create_at(
                    dir,
                    OsStr::new(whiteout::OPAQUE_MARKER),
                    nix::fcntl::OFlag::O_WRONLY,
                    0,
                ) {
                    Ok(_) => Ok(()),
                    Err(e) if e.errno() == Errno::EEXIST => Ok(()),
                    Err(e) => Err(e),
                }
            }
            WhiteoutFormat::Overlay => sys::xattr::set(dir, &self.overlay_xattr("opaque"), b"y", 0),
        }
    }

    /// Moves staged `tmp` to `dir/name`, atomically replacing a whiteout
    /// the upper holds there; the result is visible in one step.
    pub fn place(
        &self,
        tmp: &OsStr,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        is_dir: bool,
    ) -> Result<()> {
        let r = self.place_keep(tmp, dir, name, is_dir);
        if r.is_err() {
            self.discard(tmp);
        }
        r
    }

    /// `place`, but a failure leaves the staged copy in the workdir (a
    /// pending copy-up keeps serving from it and is tried again).
    pub fn place_keep(
        &self,
        tmp: &OsStr,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        is_dir: bool,
    ) -> Result<()> {
        let at_name = match sys::fs::stat_at(dir, name) {
            Ok(st) => Some(st),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let r = match at_name {
            None => sys::fs::rename_at(self.work.as_fd(), tmp, dir, name, RenameMode::NoReplace),
            Some(st) if whiteout::is_char_whiteout(st.st_mode, st.st_rdev) => {
                if is_dir {
                    // A directory cannot replace a device: swap, then drop
                    // the whiteout that landed in the workdir.
                    sys::fs::rename_at(self.work.as_fd(), tmp, dir, name, RenameMode::Exchange)
                        .map(|()| self.discard(tmp))
                } else {
                    sys::fs::rename_at(self.work.as_fd(), tmp, dir, name, RenameMode::Replace)
                }
            }
            Some(_) => Err(Error::Exists),
        };
        r?;
        self.remove_aufs_whiteout(dir, name)
    }

    /// Removes `.wh.<name>` from upper directory `dir`, if there.
    pub fn remove_aufs_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        match sys::fs::unlink_at(dir, &whiteout::whiteout_name(name), false) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() || e.errno() == Errno::ENAMETOOLONG => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Marks upper directory `dir` as holding objects with recorded inode
    /// numbers. Only a filesystem without (these) xattrs is excused; a full
    /// one (ENOSPC, EDQUOT) is an error: without the mark, the numbers
    /// recorded below are not read after a remount and st_ino changes.
    pub fn mark_impure(&self, dir: BorrowedFd<'_>) -> Result<()> {
        bookkeeping(sys::xattr::set(dir, &self.xattr("impure"), b"y", 0))
    }

    /// Records the union inode number on an upper object (excused only
    /// where the filesystem has no xattrs, see `mark_impure`).
    pub fn record_ino(&self, fd: BorrowedFd<'_>, ino: u64) -> Result<()> {
        bookkeeping(sys::xattr::set(
            fd,
            &self.xattr("ino"),
            &ino.to_le_bytes(),
            0,
        ))
    }

    /// `record_ino` through an open (not O_PATH) fd of the object.
    pub fn record_ino_open(&self, fd: BorrowedFd<'_>, ino: u64) -> Result<()> {
        bookkeeping(sys::fdxattr::set(
            fd,
            &self.xattr("ino"),
            &ino.to_le_bytes(),
            0,
        ))
    }

    /// The xattr holding the union link count of an indexed file, in
    /// overlayfs's form "U+n" / "U-n": the upper inode's own count plus n.
    fn nlink_xattr(&self) -> OsString {
        match self.format {
            WhiteoutFormat::Overlay => self.overlay_xattr("nlink"),
            WhiteoutFormat::Aufs => self.xattr("nlink"),
        }
    }

    /// Records that the union link count of upper file `fd` is its own
    /// count plus `n` (excused only without xattr support).
    pub fn set_nlink_offset(&self, fd: BorrowedFd<'_>, n: i64) -> Result<()> {
        bookkeeping(sys::xattr::set(
            fd,
            &self.nlink_xattr(),
            format!("U{n:+}").as_bytes(),
            0,
        ))
    }

    /// Shifts the recorded offset of `fd` by `by` (no-op without a record).
    pub fn shift_nlink_offset(&self, fd: BorrowedFd<'_>, by: i64) -> Result<()> {
        match nlink_offset(fd) {
            Some(n) => self.set_nlink_offset(fd, n + by),
            None => Ok(()),
        }
    }

    /// Records that the union inode number `ino`'s upper file came from the
    /// lower file with overlay file handle `fh` (kernel's origin xattr;
    /// excused only without xattr support).
    pub fn set_origin(&self, fd: BorrowedFd<'_>, fh: &[u8]) -> Result<()> {
        bookkeeping(sys::xattr::set(fd, &self.overlay_xattr("origin"), fh, 0))
    }

    /// The metacopy marker in this upper's format.
    fn metacopy_xattr(&self) -> OsString {
        match self.format {
            WhiteoutFormat::Overlay => self.overlay_xattr("metacopy"),
            WhiteoutFormat::Aufs => self.xattr("metacopy"),
        }
    }

    /// Marks upper file `fd` as holding metadata only.
    pub fn set_metacopy(&self, fd: BorrowedFd<'_>) -> Result<()> {
        sys::xattr::set(fd, &self.metacopy_xattr(), b"", 0)
    }

    /// The extent map of a partially copied-up file (`sparse.rs`).
    pub fn partial_xattr(&self) -> OsString {
        self.xattr("partial")
    }

    /// Marks the staged upper file `fd` of `size` bytes as partial: all of
    /// its data below, by the map and by the union's own metacopy marker
    /// (in both formats: the kernel's marker would make a kernel mount
    /// read the written ranges from below; the union's is ignored by it).
    /// The map comes first, so a marked file always has its map.
    pub fn set_partial(&self, fd: BorrowedFd<'_>, size: u64, boot: &[u8]) -> Result<()> {
        sys::xattr::set(
            fd,
            &self.partial_xattr(),
            &crate::sparse::initial(size, boot),
            0,
        )?;
        sys::xattr::set(fd, &self.xattr("metacopy"), b"", 0)
    }

    /// Drops every metacopy marker (and a file's redirect, and a partial
    /// file's extent map) from `fd`: its data is complete.
    pub fn clear_metacopy(&self, fd: BorrowedFd<'_>) -> Result<()> {
        // Markers first: a crash half-way leaves a complete file with a
        // map that nothing reads.
        for n in crate::whiteout::METACOPY_XATTRS
            .iter()
            .chain(crate::whiteout::REDIRECT_XATTRS.iter())
            .chain(crate::whiteout::PARTIAL_XATTRS.iter())
        {
            match sys::xattr::remove(fd, OsStr::new(n)) {
                Ok(()) => {}
                Err(e) if e.errno() == nix::errno::Errno::ENODATA => {}
                // An unprivileged union may not remove `trusted.*` (EPERM),
                // and cannot have read one either (ENODATA for it): none
                // marks a file for this union, and its copy-up is complete.
                Err(e) if e.errno() == nix::errno::Errno::EPERM && n.starts_with("trusted.") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Records that upper directory `dir` takes its lower content from
    /// union path `target` (absolute).
    pub fn set_redirect(&self, dir: BorrowedFd<'_>, target: &Path) -> Result<()> {
        let mut v = b"/".to_vec();
        v.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()));
        let name = match self.format {
            WhiteoutFormat::Overlay => self.overlay_xattr("redirect"),
            WhiteoutFormat::Aufs => self.xattr("redirect"),
        };
        sys::xattr::set(dir, &name, &v, 0)
    }
}

/// How many empty files the staging pool keeps made ahead, and the level
/// below which its thread makes more. A burst of small copy-ups takes
/// them faster than one thread can make them where making an inode is
/// slow; between bursts the pool fills up again.
/// `POOL_SIZE` is also how many fds the pool holds open while the union
/// idles (each pooled file is an open fd): bounded, not a leak.
pub const POOL_SIZE: usize = 32;
const POOL_LOW: usize = 24;

/// Empty regular files made ahead in the workdir, for copy-ups to fill
/// (`Upper::staged_file`).
///
/// Making the inode is most of what a small copy-up costs where inode
/// allocation is slow: ext4 without a journal skips the inodes its group
/// freed in the last seconds and rescans them at every allocation (13 µs
/// to 280 µs per create here, by how much the group just freed — an
/// `rm -rf` nearby is enough). A thread of the pool's own pays that
/// ahead, outside the caller's OPEN, as overlayfs cannot; the copy-up
/// only links one into the workdir.
///
/// Invariant: a pooled file is an unnamed (`O_TMPFILE`) empty 0600
/// regular file of the workdir's filesystem with no xattrs, open for
/// writing, that nothing else knows: it has no name until a copy-up takes
/// it, so the workdir never shows it, and it is freed when its fd is
/// closed (the end of the mount, a killed daemon; after a power cut, by
/// the filesystem's orphan processing). The thread is started by the
/// first take (after the daemon's fork: threads do not survive one) and
/// runs at nice 19 (`sys::ahead::background_thread`). A
/// filesystem without `O_TMPFILE`, or a daemon that may not link an fd
/// (`linkat(AT_EMPTY_PATH)` needs CAP_DAC_READ_SEARCH), turns the pool off.
///
/// Locks: `state` is a leaf (one push or pop, or the condvar wait; no
/// syscall under it).
#[derive(Debug, Default)]
struct StagePool {
    /// Where its files are made (`pool_dir`); `None`: in the workdir.
    dir: Option<OwnedFd>,
    shared: std::sync::Arc<PoolShared>,
    /// The thread and the process it runs in.
    thread: parking_lot::Mutex<Option<(std::thread::JoinHandle<()>, u32)>>,
}

#[derive(Debug, Default)]
struct PoolShared {
    state: parking_lot::Mutex<PoolState>,
    wake: parking_lot::Condvar,
}

#[derive(Debug, Default)]
struct PoolState {
    files: Vec<OwnedFd>,
    /// The thread was asked to fill the pool and has not finished.
    wanted: bool,
    /// The pool is off (shut down, or the files cannot be made or named).
    stop: bool,
}

/// The directory the staging pool makes its files in, made fresh under
/// `base/stage_name` at every mount (best effort: `None` leaves them in
/// the workdir). An inode is allocated in its directory's block group,
/// and the workdir's group is where the union's own removals (and, in a
/// workdir of the user's, everyone's) free inodes — which ext4 without a
/// journal rescans at every allocation for seconds after. `stage_name` is
/// marked a top directory (`FS_TOPDIR_FL`), so the pool's directory, a
/// new name each mount, is spread to a group with free inodes to spare:
/// creating a file there cost 14-17 µs against 160-180 µs in a group
/// that had just freed 3,000 (ext4 root of this machine). The copies keep
/// their inodes there once renamed into the upper.
fn pool_dir(base: BorrowedFd<'_>, stage_name: &str) -> Option<OwnedFd> {
    let stage = clear_dir(base, stage_name).ok()?;
    // Not every filesystem has the flag; the directory still serves.
    let _ = sys::tmpfile::set_topdir(stage.as_fd());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!("p{:x}-{nanos:x}", std::process::id());
    mkdir_open(stage.as_fd(), &name).ok()
}

impl StagePool {
    fn new(dir: Option<OwnedFd>) -> StagePool {
        StagePool {
            dir,
            ..StagePool::default()
        }
    }

    /// Where the files are made.
    fn made_in<'a>(&'a self, upper: &'a Upper) -> BorrowedFd<'a> {
        self.dir.as_ref().unwrap_or(&upper.work).as_fd()
    }

    /// A file made now the pool's way (in its directory, linked into the
    /// workdir), when the pool is on; `None` when it is off or this fails.
    fn make_now(&self, upper: &Upper) -> Option<(OsString, OwnedFd)> {
        if self.shared.state.lock().stop {
            return None;
        }
        match sys::tmpfile::tmpfile_at(self.made_in(upper), nix::fcntl::OFlag::O_WRONLY, 0o600) {
            Ok(fd) => self.name(upper, fd),
            Err(e) => {
                if no_tmpfile(&e) {
                    self.stop();
                }
                None
            }
        }
    }

    /// Names pooled file `fd` in the workdir; a refusal turns the pool off.
    fn name(&self, upper: &Upper, fd: OwnedFd) -> Option<(OsString, OwnedFd)> {
        let tmp = upper.temp_name();
        match sys::fs::link_fd(fd.as_fd(), upper.work.as_fd(), &tmp) {
            Ok(()) => Some((tmp, fd)),
            Err(e) => {
                // No privilege for AT_EMPTY_PATH (or a filesystem that
                // refuses): copy-ups make their own files from now on.
                tracing::debug!("staging pool off: {e}");
                self.stop();
                None
            }
        }
    }

    /// A file made ahead, named `tmp` in the workdir, if there is one;
    /// asks for more when the pool runs low.
    fn take(&self, upper: &Upper) -> Option<(OsString, OwnedFd)> {
        let mut st = self.shared.state.lock();
        if st.stop {
            return None;
        }
        let got = st.files.pop();
        if st.files.len() < POOL_LOW && !st.wanted {
            st.wanted = true;
            drop(st);
            if self.ensure_thread(upper) {
                self.shared.wake.notify_one();
            } else {
                self.shared.state.lock().wanted = false;
            }
        } else {
            drop(st);
        }
        self.name(upper, got?)
    }

    fn ensure_thread(&self, upper: &Upper) -> bool {
        let mut t = self.thread.lock();
        let pid = std::process::id();
        if t.as_ref()
            .is_some_and(|(h, p)| *p == pid && !h.is_finished())
        {
            return true;
        }
        let Ok(work) = sys::fs::dup(self.made_in(upper)) else {
            return false;
        };
        let shared = std::sync::Arc::clone(&self.shared);
        match std::thread::Builder::new()
            .name("stage-pool".into())
            .spawn(move || fill_pool(&shared, &work))
        {
            Ok(h) => {
                *t = Some((h, pid));
                true
            }
            Err(_) => false,
        }
    }

    /// Turns the pool off and frees the files it holds.
    fn stop(&self) {
        let left = {
            let mut st = self.shared.state.lock();
            st.stop = true;
            std::mem::take(&mut st.files)
        };
        self.shared.wake.notify_all();
        drop(left);
    }

    /// Stops the thread and frees the files left (end of the mount). The
    /// thread is not waited for: running at nice 19 on a busy machine it
    /// may take a while to see the stop, and what it still makes is
    /// unnamed, so it is freed when the thread ends.
    fn shutdown(&self) {
        self.stop();
        drop(self.thread.lock().take());
    }
}

/// Whether the filesystem of `work` has room to spare for the pool: many
/// free inodes (or no inode limit) and free space. On a small or nearly
/// full upper the pool makes nothing — its inodes would be taken from the
/// operations that need them — so copy-ups make their own files, as
/// without it.
fn room_for_pool(work: BorrowedFd<'_>) -> bool {
    // 32 empty inodes are nothing to these; a few-MiB upper (the full-upper
    // tests' 64 inodes) gets none.
    const MIN_FREE_INODES: u64 = 4096;
    const MIN_FREE_BYTES: u64 = 16 << 20;
    let Ok(v) = sys::fs::statvfs(work) else {
        return false;
    };
    let inodes = v.files() == 0 || v.files_available() >= MIN_FREE_INODES;
    let bytes = v.blocks_available().saturating_mul(v.fragment_size()) >= MIN_FREE_BYTES;
    inodes && bytes
}

/// Whether `e` says the filesystem has no `O_TMPFILE` at all (old
/// kernels give EISDIR; some filesystems EINVAL).
fn no_tmpfile(e: &Error) -> bool {
    matches!(e.errno(), Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL)
}

/// The pool's thread: fills the pool whenever asked, until stopped. A
/// filesystem with little room left (`room_for_pool`) or a file that
/// cannot be made ends the round (no `O_TMPFILE` at all: the pool is
/// off); copy-ups then make their own files, and fail as they always did.
fn fill_pool(shared: &PoolShared, work: &OwnedFd) {
    // Work ahead should take little CPU from others: on a busy machine the
    // pool's creates would slow the very copy-ups they are for (which then
    // make their own files, as without the pool). Not idle-class: a create
    // holds a journal handle that a starved holder would keep open.
    sys::ahead::background_thread();
    loop {
        {
            let mut st = shared.state.lock();
            while !st.wanted && !st.stop {
                shared.wake.wait(&mut st);
            }
            if st.stop {
                return;
            }
        }
        while room_for_pool(work.as_fd()) {
            {
                let st = shared.state.lock();
                if st.stop || st.files.len() >= POOL_SIZE {
                    break;
                }
            }
            match sys::tmpfile::tmpfile_at(work.as_fd(), nix::fcntl::OFlag::O_WRONLY, 0o600) {
                Ok(fd) => {
                    let mut st = shared.state.lock();
                    if st.stop {
                        // Unnamed: freed with the fd.
                        return;
                    }
                    st.files.push(fd);
                }
                Err(e) => {
                    if no_tmpfile(&e) {
                        shared.state.lock().stop = true;
                        return;
                    }
                    break;
                }
            }
        }
        shared.state.lock().wanted = false;
    }
}

impl Drop for Upper {
    fn drop(&mut self) {
        self.pool.shutdown();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// `hold_all` takes its locks in (device, inode) order, whatever the
    /// order asked: with the lower-numbered directory held elsewhere it
    /// waits for that one first and leaves the other free, so another
    /// union asking the same two the other way round cannot hold one and
    /// wait for the other.
    #[test]
    fn hold_all_takes_its_locks_in_one_order() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dirs: Vec<PathBuf> = ["a", "b"].iter().map(|d| tmp.path().join(d)).collect();
        for d in &dirs {
            std::fs::create_dir(d).unwrap();
        }
        dirs.sort_by_key(|d| std::fs::metadata(d).unwrap().ino());
        let (lo, hi) = (dirs[0].clone(), dirs[1].clone());
        let lo_fd = sys::fs::open_path_abs(&lo).unwrap();
        let elsewhere = sys::fs::try_lock_dir(lo_fd.as_fd()).unwrap();
        assert!(elsewhere.is_some());
        let (started, start) = std::sync::mpsc::channel();
        let asker = std::thread::spawn({
            let (lo, hi) = (lo.clone(), hi.clone());
            move || {
                let backings = crate::backing::Backings::new(64);
                let fds = [&hi, &lo].map(|d| (sys::fs::open_path_abs(d).unwrap(), d.clone()));
                started.send(()).unwrap();
                let held = hold_all(&backings, fds.iter().map(|(f, d)| (f.as_fd(), d.as_path())));
                held.map(|h| h.len())
            }
        });
        // Its first attempts take microseconds; give it ample time.
        start.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let hi_fd = sys::fs::open_path_abs(&hi).unwrap();
        let probe = sys::fs::try_lock_dir(hi_fd.as_fd()).unwrap();
        assert!(
            probe.is_some(),
            "took the higher directory while waiting for the lower"
        );
        drop(probe);
        drop(elsewhere);
        assert_eq!(asker.join().unwrap().unwrap(), 2);
    }

    /// Every staged file is a fresh, empty, named file of the workdir,
    /// whether made now or by the pool's thread; the pool's own files are
    /// never seen in the workdir, and the end of the writer frees them.
    #[test]
    fn staged_files_are_fresh_named_and_the_pool_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["upper", "work"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let backings = crate::backing::Backings::new(64);
        let ub = Branch::open(
            BranchId(0),
            &dir.path().join("upper"),
            crate::mode::Mode::RW,
            false,
            &backings,
        )
        .unwrap();
        let up = Upper::open(
            &ub,
            Some(&dir.path().join("work")),
            WhiteoutFormat::Aufs,
            true,
            XattrNs::User,
        )
        .unwrap();
        let work = dir.path().join("work/unionfs-work");
        let mut names = Vec::new();
        let mut inodes = std::collections::HashSet::new();
        for i in 0..(POOL_SIZE * 3) {
            let (tmp, fd) = up.staged_file().unwrap();
            let st = sys::fs::fstat(fd.as_fd()).unwrap();
            assert_eq!(st.st_size, 0, "staged file {i} is not empty");
            assert_eq!(st.st_mode & 0o7777, 0o600);
            assert!(inodes.insert(st.st_ino), "staged file {i} handed out twice");
            // Named in the workdir, as the same inode, and writable.
            let named = std::fs::symlink_metadata(work.join(&tmp)).unwrap();
            assert_eq!(named.ino(), st.st_ino);
            assert_eq!(sys::fs::pwrite(fd.as_fd(), b"x", 0).unwrap(), 1);
            names.push(tmp);
            if i % 8 == 7 {
                // Let the pool's thread catch up now and then.
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let listed = |w: &Path| -> std::collections::BTreeSet<OsString> {
            std::fs::read_dir(w)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect()
        };
        assert_eq!(listed(&work), names.iter().cloned().collect());
        // The pool's thread fills it (on a filesystem with O_TMPFILE), and
        // what it holds is not in the workdir. (It runs at nice 19: on a
        // machine busy with other tests it may take a while.)
        let mut held = 0;
        for _ in 0..1000 {
            held = up.pool.shared.state.lock().files.len();
            if held > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(held > 0, "the pool's thread made no file");
        assert_eq!(listed(&work), names.iter().cloned().collect());
        drop(up);
        assert_eq!(listed(&work), names.into_iter().collect());
    }
}
