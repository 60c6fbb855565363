//! How a layer reaches its object in a branch without holding an open fd
//! for every inode the kernel remembers.
//!
//! Invariant: an object whose filesystem gives persistent handles
//! (`name_to_handle_at`) is held by its handle, and its O_PATH fd lives only
//! in a bounded LRU cache (reopened by handle on a miss); so the daemon's
//! open fds do not grow with the number of inodes looked up. A lookup in a
//! read-only branch may hand over a handle alone (no fd opened yet).
//! Objects without handles (no CAP_DAC_READ_SEARCH, or a filesystem
//! without export support) keep their fd pinned.
//!
//! A backing object also remembers that it has no visible xattrs, once a
//! listing showed none: the kernel asks for `security.capability` before
//! every write and chown, and the answer is then given without a syscall.
//! That knowledge is trusted only while no xattr was set or removed
//! through the union since the listing (one generation per union,
//! `Backings::forget_xattrs`: sets are rare, and an object may be served by
//! several backing objects over time, one per lookup), and it is only recorded on
//! filesystems whose listings show every xattr (the caller decides). A
//! visible xattr cannot appear otherwise: lowers never change, the upper is
//! the union's alone while mounted, a copy-up makes a new backing object,
//! and the kernel only removes xattrs on its own (kill-priv; an IMA
//! appraisal policy that writes `security.ima` into the upper is the
//! exception, and not supported).
//!
//! Invariant: an object reached by name in a branch the union writes
//! (`Branch::backing_at`) is checked when its handle is first opened: the
//! object the handle opens must be the one the lookup stat'd (same device,
//! inode number and type), else the fd is refused with ESTALE. The stat and
//! the handle come from two path walks of one name, and in a writable
//! branch the name can change between them (see `Branch::reach_by_name`);
//! the check is once per backing object, as a handle names one object for
//! good (a reused inode number comes with a new generation, which the
//! handle holds). Objects on another mount than their branch's (mount
//! points of a branch opened directly) are never held by a handle, since
//! it would be reopened on the branch's filesystem: their fd is pinned.
//!
//! Invariant: all of this state belongs to one union (`Backings`, owned by
//! `UnionFs` and shared with its branches, which hand it to every backing
//! object they make): two unions in one process share no cache, no id and
//! no generation.
//!
//! Invariant: an object the union removes while a node still stands for
//! it is kept open by that node's backing object (`Backing::keep`) until
//! the node goes: neither a handle nor a name reaches an unlinked object,
//! and the kernel may still ask for its attributes (an open file, a cwd).
//!
//! Invariant: an fd handed to `Backings::defer_close` is closed by the
//! union's closer thread, never on a request's path (the last close of an
//! unlinked file is where its data is freed); at most `DEFERRED_BOUND` wait
//! at once, beyond that (or without the thread) the caller closes it.
//!
//! Locks: one of `SHARDS` cache mutexes, held only for one get/put/remove;
//! the closer's sender mutex, held only to send or to start the thread;
//! the write-lock map's mutex, held for one look-up (a leaf);
//! the xattr knowledge is atomics.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lru::LruCache;
use nix::fcntl::OFlag;
use parking_lot::Mutex;

use nix::sys::stat::FileStat;

use crate::error::{Error, Result};
use crate::sys;
use crate::sys::fs::ObjectHandle;

const SHARDS: usize = 32;

/// Default number of cached O_PATH fds (all shards together).
pub const DEFAULT_CACHED_FDS: usize = 4096;

/// The backing state of one union: the bounded fd cache, the ids that key
/// it, and the xattr generation. Shared (`Arc`) by the union, its branches
/// and every backing object they made.
#[derive(Debug)]
pub struct Backings {
    /// O_PATH fds of handle-reached objects, by backing id; the bound is
    /// the sum of the shards' capacities.
    shards: Vec<Mutex<LruCache<u64, Arc<OwnedFd>>>>,
    /// The next backing id (ids key the cache).
    next_id: AtomicU64,
    /// Bumped by every xattr change through the union: what a backing
    /// object learnt before it is no longer trusted.
    xattr_generation: AtomicU64,
    /// The closer thread's queue (started on first use), and how many fds
    /// wait in it.
    closer: Mutex<Option<std::sync::mpsc::Sender<OwnedFd>>>,
    deferred: Arc<AtomicU64>,
    /// The write-lock cells of this union's writable branches and
    /// workdirs, by (device, inode) (`write_lock`): every writer this union
    /// opens on one directory shares one, so the union never waits on
    /// itself.
    write_locks: Mutex<std::collections::HashMap<(u64, u64), std::sync::Weak<WriteLock>>>,
}

/// The cell of a directory's write lock (`upper::Upper::open` fills it).
pub type WriteLock = Mutex<Option<crate::sys::fs::DirLock>>;

/// Most fds waiting for the closer thread at once.
const DEFERRED_BOUND: u64 = 4096;

impl Backings {
    /// A union's backing state caching at most `total` fds (at least one per
    /// shard).
    pub fn new(total: usize) -> Arc<Self> {
        let per = std::num::NonZeroUsize::new((total / SHARDS).max(1))
            .unwrap_or(std::num::NonZeroUsize::MIN);
        Arc::new(Backings {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per)))
                .collect(),
            next_id: AtomicU64::new(1),
            xattr_generation: AtomicU64::new(1),
            closer: Mutex::new(None),
            deferred: Arc::new(AtomicU64::new(0)),
            write_locks: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Closes `fd` on the union's closer thread rather than here: the
    /// caller held it across an unlink so that freeing the file's data
    /// (the final iput: truncating and freeing its blocks) happens there,
    /// while the kernel's request is already answered — as it did when
    /// every looked-up object's fd was cached until the kernel forgot it.
    /// The thread ends when the union's backing state goes.
    pub fn defer_close(&self, fd: OwnedFd) {
        if self.deferred.fetch_add(1, Ordering::AcqRel) >= DEFERRED_BOUND {
            self.deferred.fetch_sub(1, Ordering::AcqRel);
            return; // closed here (dropped)
        }
        let mut closer = self.closer.lock();
        if closer.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<OwnedFd>();
            let deferred = Arc::clone(&self.deferred);
            let spawned = std::thread::Builder::new()
                .name("unionfs-closer".into())
                .spawn(move || {
                    for fd in rx {
                        drop(fd);
                        deferred.fetch_sub(1, Ordering::AcqRel);
                    }
                });
            if spawned.is_ok() {
                *closer = Some(tx);
            }
        }
        let unsent = match closer.as_ref() {
            Some(tx) => tx.send(fd).err().map(|e| e.0),
            None => Some(fd),
        };
        if unsent.is_some() {
            self.deferred.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The write-lock cell this union keeps for the directory `(dev, ino)`:
    /// the one its other writers of that directory share, else a new
    /// (empty) one.
    pub fn write_lock(&self, dev: u64, ino: u64) -> Arc<WriteLock> {
        let mut all = self.write_locks.lock();
        all.retain(|_, w| w.strong_count() > 0);
        if let Some(cell) = all.get(&(dev, ino)).and_then(std::sync::Weak::upgrade) {
            return cell;
        }
        let cell = Arc::new(Mutex::new(None));
        all.insert((dev, ino), Arc::downgrade(&cell));
        cell
    }

    fn shard(&self, id: u64) -> &Mutex<LruCache<u64, Arc<OwnedFd>>> {
        &self.shards[(id as usize) % SHARDS]
    }

    /// Number of fds the cache holds right now.
    pub fn cached_fds(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Most fds the cache holds.
    pub fn bound(&self) -> usize {
        self.shards.iter().map(|s| s.lock().cap().get()).sum()
    }

    /// The current xattr generation (see `Backing::note_xattrs`).
    pub fn xattr_generation(&self) -> u64 {
        self.xattr_generation.load(Ordering::Acquire)
    }

    /// Forgets what every backing object of this union knows of its
    /// xattrs: call after an xattr was set or removed through the union.
    pub fn forget_xattrs(&self) {
        self.xattr_generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Which object a stat saw: what an fd opened later by handle must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
    /// The file type bits of `st_mode`.
    fmt: u32,
}

impl Identity {
    /// The identity of the object `st` describes.
    pub fn of(st: &FileStat) -> Identity {
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            fmt: st.st_mode & libc::S_IFMT,
        }
    }
}

#[derive(Debug)]
enum Reach {
    Pinned(Arc<OwnedFd>),
    Handle(ObjectHandle),
    /// By its name in a directory of a branch the union never changes:
    /// opened by that name when an fd is first needed, and each time it
    /// must be the object the lookup stat'd (`ident`).
    Named {
        dir: Arc<Backing>,
        name: std::ffi::OsString,
        ident: Identity,
    },
}

/// One object in one branch.
#[derive(Debug)]
pub struct Backing {
    id: u64,
    /// The union's backing state this object's fd is cached in.
    store: Arc<Backings>,
    mount: Option<Arc<OwnedFd>>,
    reach: Reach,
    /// What the last listing of its visible xattrs showed, and when: the
    /// xattr generation it began in, shifted left by one, with bit 0 set
    /// when it showed none (0: never listed).
    listed: AtomicU64,
    /// The object the handle must open, until an fd opened by it showed
    /// that it does (then `None`).
    expect: Mutex<Option<Identity>>,
    /// An fd kept for good (`keep`): the union removed the object's last
    /// name while a node still stands for it, and a handle cannot reopen
    /// an unlinked object.
    kept: std::sync::OnceLock<Arc<OwnedFd>>,
}

impl Backing {
    /// The object behind `fd`. With `mount` (a readable fd of its
    /// filesystem, and the id of the mount it is on), keeps a handle and
    /// lets the cache hold the fd — unless `fd` is on another mount, whose
    /// handle `mount` could not reopen.
    pub fn new(
        store: &Arc<Backings>,
        mount: Option<(&Arc<OwnedFd>, u64)>,
        fd: OwnedFd,
    ) -> Arc<Backing> {
        let id = store.next_id.fetch_add(1, Ordering::Relaxed);
        let handle = mount.and_then(|(_, mnt_id)| {
            sys::fs::name_to_handle_mnt(fd.as_fd())
                .ok()
                .filter(|(_, on)| *on == mnt_id)
        });
        let reach = match handle {
            Some((h, _)) => {
                store.shard(id).lock().put(id, Arc::new(fd));
                Reach::Handle(h)
            }
            None => Reach::Pinned(Arc::new(fd)),
        };
        Arc::new(Backing {
            id,
            store: Arc::clone(store),
            mount: mount.map(|(m, _)| Arc::clone(m)),
            reach,
            listed: AtomicU64::new(0),
            expect: Mutex::new(None),
            kept: std::sync::OnceLock::new(),
        })
    }

    /// The object behind `fd`, whose handle `h` on the filesystem of
    /// `mount` the caller took (and checked to be of that mount): the
    /// cache holds the fd.
    pub fn cached(
        store: &Arc<Backings>,
        mount: &Arc<OwnedFd>,
        h: ObjectHandle,
        fd: OwnedFd,
    ) -> Arc<Backing> {
        let b = Self::from_handle(store, mount, h, None);
        store.shard(b.id).lock().put(b.id, Arc::new(fd));
        b
    }

    /// An object known by its name in directory `dir` only (no fd, no
    /// handle taken yet), which a lookup stat'd as `ident`. Only for
    /// branches the union never changes: a name there keeps its object
    /// (a union rename copies the object up; a lower is not renamed).
    /// Should a lower change behind the union's back, the object the name
    /// leads to is checked against `ident` each time it is opened.
    pub fn named(
        store: &Arc<Backings>,
        dir: Arc<Backing>,
        name: &std::ffi::OsStr,
        ident: Identity,
    ) -> Arc<Backing> {
        Arc::new(Backing {
            id: store.next_id.fetch_add(1, Ordering::Relaxed),
            store: Arc::clone(store),
            mount: None,
            reach: Reach::Named {
                dir,
                name: name.to_os_string(),
                ident,
            },
            listed: AtomicU64::new(0),
            expect: Mutex::new(None),
            kept: std::sync::OnceLock::new(),
        })
    }

    /// An object known by its handle only (no fd opened yet), on the
    /// filesystem of `mount`; with `expect`, the first fd opened by the
    /// handle must be that object (see the module doc).
    pub fn from_handle(
        store: &Arc<Backings>,
        mount: &Arc<OwnedFd>,
        h: ObjectHandle,
        expect: Option<Identity>,
    ) -> Arc<Backing> {
        Arc::new(Backing {
            id: store.next_id.fetch_add(1, Ordering::Relaxed),
            store: Arc::clone(store),
            mount: Some(Arc::clone(mount)),
            reach: Reach::Handle(h),
            listed: AtomicU64::new(0),
            expect: Mutex::new(expect),
            kept: std::sync::OnceLock::new(),
        })
    }

    /// An object whose fd stays open (branch roots).
    pub fn pinned(store: &Arc<Backings>, fd: OwnedFd) -> Arc<Backing> {
        Self::new(store, None, fd)
    }

    /// The xattr generation of this object's union: read it before a
    /// listing whose result goes to `note_xattrs`.
    pub fn xattr_generation(&self) -> u64 {
        self.store.xattr_generation()
    }

    /// True when the object is known to have no visible xattrs.
    pub fn has_no_xattrs(&self) -> bool {
        self.listed.load(Ordering::Acquire) == (self.xattr_generation() << 1 | 1)
    }

    /// True when a listing of the object's visible xattrs was recorded and
    /// no xattr was changed through the union since (so listing again
    /// would tell nothing new).
    pub fn xattrs_listed(&self) -> bool {
        self.listed.load(Ordering::Acquire) >> 1 == self.xattr_generation()
    }

    /// Records what a listing begun in `generation` (read it with
    /// `Backing::xattr_generation` before listing) showed: visible xattrs or none.
    /// Not trusted when an xattr was changed through the union since.
    pub fn note_xattrs(&self, generation: u64, any: bool) {
        self.listed
            .store(generation << 1 | u64::from(!any), Ordering::Release);
    }

    /// An O_PATH fd of the object (cached, or reopened by handle).
    pub fn fd(&self) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = self.kept.get() {
            return Ok(Arc::clone(fd));
        }
        match &self.reach {
            Reach::Pinned(fd) => Ok(Arc::clone(fd)),
            Reach::Handle(h) => {
                let mount = self.mount.as_ref().ok_or(crate::error::Error::StaleInode)?;
                let shard = self.store.shard(self.id);
                if let Some(fd) = shard.lock().get(&self.id) {
                    return Ok(Arc::clone(fd));
                }
                let fd =
                    sys::fs::open_by_handle(mount.as_fd(), h, OFlag::O_PATH | OFlag::O_NOFOLLOW)?;
                self.verify(&fd)?;
                let fd = Arc::new(fd);
                shard.lock().put(self.id, Arc::clone(&fd));
                Ok(fd)
            }
            Reach::Named { dir, name, ident } => {
                let shard = self.store.shard(self.id);
                if let Some(fd) = shard.lock().get(&self.id) {
                    return Ok(Arc::clone(fd));
                }
                let fd = sys::fs::open_path_at(dir.fd()?.as_fd(), name)?;
                let got = Identity::of(&sys::fs::fstat(fd.as_fd())?);
                if got != *ident {
                    tracing::debug!(
                        "stale layer: {name:?} now leads to {got:?}, the lookup stat'd {ident:?}"
                    );
                    return Err(Error::StaleInode);
                }
                let fd = Arc::new(fd);
                shard.lock().put(self.id, Arc::clone(&fd));
                Ok(fd)
            }
        }
    }

    /// Keeps `fd` (of this object) open as long as this backing object
    /// lives: the union is about to remove the object's last name while a
    /// node still stands for it (an open file, a cwd, an O_PATH fd), whose
    /// GETATTR must still be answered, as the kernel's own file systems
    /// do; neither a handle nor a name reaches an unlinked object.
    pub fn keep(&self, fd: Arc<OwnedFd>) {
        let _ = self.kept.set(fd);
    }

    /// Checks, the first time only, that `fd` (opened by the handle) is
    /// the object the lookup stat'd. A mismatch means the name was
    /// replaced between the lookup's stat and its handle: the layer is
    /// stale (ESTALE makes the kernel look the path up again, for the
    /// syscalls that retry) and stays so.
    fn verify(&self, fd: &OwnedFd) -> Result<()> {
        let mut expect = self.expect.lock();
        let Some(want) = *expect else {
            return Ok(());
        };
        let got = Identity::of(&sys::fs::fstat(fd.as_fd())?);
        if got != want {
            tracing::debug!(
                "stale layer: the handle opens {got:?}, the lookup stat'd {want:?} \
                 (the name was replaced meanwhile)"
            );
            return Err(Error::StaleInode);
        }
        *expect = None;
        Ok(())
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        if !matches!(self.reach, Reach::Pinned(_)) {
            self.store.shard(self.id).lock().pop(&self.id);
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)] // a test fails by panicking
mod tests {
    use super::*;

    fn backing(store: &Arc<Backings>) -> Arc<Backing> {
        Backing::pinned(
            store,
            OwnedFd::from(std::fs::File::open("/").expect("open /")),
        )
    }

    #[test]
    fn xattr_knowledge_holds_until_any_change() {
        let store = Backings::new(64);
        let (b, c) = (backing(&store), backing(&store));
        assert!(!b.has_no_xattrs());
        b.note_xattrs(store.xattr_generation(), false);
        c.note_xattrs(store.xattr_generation(), false);
        assert!(b.has_no_xattrs() && c.has_no_xattrs());
        // A change through another backing object of the same file, or of
        // any other: both forget.
        store.forget_xattrs();
        assert!(!b.has_no_xattrs() && !c.has_no_xattrs());
        assert!(!b.xattrs_listed());
        // One with xattrs: listed, not empty.
        b.note_xattrs(store.xattr_generation(), true);
        assert!(b.xattrs_listed() && !b.has_no_xattrs());
    }

    /// An fd whose close is deferred is closed by the closer thread, soon:
    /// the unlinked file it held is freed then.
    #[test]
    fn deferred_closes_happen_off_the_caller() {
        let store = Backings::new(64);
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = sys::fs::open_path_abs(tmp.path()).expect("open dir");
        for i in 0..10 {
            let name = format!("f{i}");
            std::fs::write(tmp.path().join(&name), b"data").expect("write");
            let held = sys::fs::unlink_holding(dir.as_fd(), std::ffi::OsStr::new(&name))
                .expect("unlink")
                .expect("held");
            assert_eq!(sys::fs::fstat(held.as_fd()).expect("fstat").st_nlink, 0);
            store.defer_close(held);
        }
        let waited = std::time::Instant::now();
        while store.deferred.load(Ordering::Acquire) > 0 {
            assert!(
                waited.elapsed().as_secs() < 10,
                "the closer never closed them"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(store.closer.lock().is_some(), "closed by the thread");
    }

    /// A listing that began before a change must not be trusted after it.
    #[test]
    fn a_listing_older_than_a_change_is_not_trusted() {
        let store = Backings::new(64);
        let b = backing(&store);
        let generation = store.xattr_generation();
        store.forget_xattrs(); // an xattr was set meanwhile
        b.note_xattrs(generation, false);
        assert!(!b.has_no_xattrs() && !b.xattrs_listed());
    }

    /// Two unions in one process: an xattr change in one leaves what the
    /// other knows alone, and each cache keeps its own bound and fds.
    #[test]
    fn two_unions_share_nothing() {
        let (one, two) = (Backings::new(64), Backings::new(4096));
        assert_eq!(one.bound(), 64);
        assert_eq!(two.bound(), 4096);
        let (a, b) = (backing(&one), backing(&two));
        a.note_xattrs(one.xattr_generation(), false);
        b.note_xattrs(two.xattr_generation(), false);
        one.forget_xattrs();
        assert!(!a.has_no_xattrs(), "the change was in a's union");
        assert!(b.has_no_xattrs(), "b's union changed nothing");

        // Objects reached by handle: their fds land in their own union's
        // cache only, and each cache keeps its own bound.
        let root = Arc::new(OwnedFd::from(std::fs::File::open("/").expect("open /")));
        let reach = |store: &Arc<Backings>| {
            let fd = sys::fs::open_path_abs(std::path::Path::new("/")).expect("open /");
            let mnt = sys::fs::mount_id_fd(fd.as_fd()).expect("mount id");
            Backing::new(store, Some((&root, mnt)), fd)
        };
        if sys::fs::name_to_handle(root.as_fd()).is_err() {
            return; // no file handles here: nothing is cached anywhere
        }
        let kept: Vec<_> = (0..100).map(|_| reach(&one)).collect();
        assert_eq!(one.cached_fds(), 64, "bounded by its own 64");
        assert_eq!(two.cached_fds(), 0, "nothing of one's in two's cache");
        let other: Vec<_> = (0..100).map(|_| reach(&two)).collect();
        assert_eq!(two.cached_fds(), 100);
        assert_eq!(one.cached_fds(), 64);
        drop(kept);
        assert_eq!(one.cached_fds(), 0, "dropping a backing empties its slot");
        assert_eq!(two.cached_fds(), 100);
        drop(other);
    }
}
