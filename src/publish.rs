//! Deferred publishing of whole-file copy-ups on `durable` mounts with
//! `batch_sync=on` (the default outside the overlay dialect).
//!
//! A copy-up's data must be on disk before its name appears in the upper
//! (else a crash can leave the name with no data: an empty or zeroed file).
//! Instead of one fsync per copy-up inside the caller's write, the copy is
//! staged in the workdir with no sync, the node serves from the staged
//! inode at once, and the copy is queued here; this union's publisher
//! thread lets a burst gather (`GATHER`, or until `BURST_MAX` copies wait),
//! then takes every queued copy as one burst: one `syncfs` of the upper, then
//! one rename each into place.
//!
//! Invariant: a pending copy's name appears in the upper only after a
//! `syncfs` that started after the copy was staged has completed, so after
//! a crash the name shows the old (lower) object or the complete copy, and
//! the staged file is junk in the workdir (removed at the next mount).
//! Until it is published, `get` answers for its (parent, name), so lookups
//! see the copy. A namespace change publishes the pending copies of the
//! names it changes first (`quiesce_names`: a create, link, removal or
//! rename goes by those names only; a pending copy's parent directory is
//! held by fd, so moving it changes nothing here, and it cannot be removed,
//! as the lower object shows in it); fsync, fsyncdir, branch changes, a
//! directory's rename (`flush_where`, below) and the end of the mount
//! publish first. Listings need not: the lower object shows the name, and
//! `get` answers for its attributes.
//!
//! A copy also records its upper path, by which the next mount publishes
//! it after a killed daemon (`upper::recover_pending`). So the rename of a
//! directory first publishes the copies pending below it (`flush_where`),
//! and a copy-up that a directory rename overlapped (`moves`) is not
//! deferred: no pending copy's recorded path is ever out of date.
//!
//! Locks: `burst` is held across one syncfs and its renames (so `flush`
//! waits for a burst in flight); `queue` only for one map access or
//! condvar wait, and may be taken while holding `burst`, never the other
//! way around.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::inode::Ino;
use crate::stack::BranchStack;
use crate::sys;
use crate::sys::fs::SetTime;

/// One copy waiting for its rename into the upper.
#[derive(Debug)]
pub struct Pending {
    /// The union parent and the name the copy will take there.
    pub parent: Ino,
    pub name: OsString,
    /// Its name in the workdir.
    pub tmp: OsString,
    /// O_PATH fd of the parent's upper directory (renames of that
    /// directory since do not matter).
    pub dir: Arc<OwnedFd>,
    /// O_PATH fd of the staged copy.
    pub fd: OwnedFd,
    /// The union inode number recorded on the copy.
    pub ino: u64,
    /// The stack the copy was made in (its writer owns the workdir); a
    /// branch change publishes everything first, so it stays current.
    pub stack: Arc<BranchStack>,
}

impl Pending {
    /// Renames the copy into place, keeping the parent's times (a copy-up
    /// is not a change of the parent).
    fn publish(&self) -> Result<()> {
        let upper = self.stack.writer().ok_or(Error::ReadOnly)?;
        let dir = self.dir.as_fd();
        let pst = sys::fs::fstat(dir)?;
        upper.place_keep(&self.tmp, dir, &self.name, false)?;
        upper.clear_pending(self.fd.as_fd());
        let _ = sys::fs::utimes_fd(
            dir,
            SetTime::At(pst.st_atime, pst.st_atime_nsec),
            SetTime::At(pst.st_mtime, pst.st_mtime_nsec),
        );
        Ok(())
    }
}

impl Pending {
    /// Publishes this copy alone, now: its data synced, then the rename
    /// (a failure drops the staged copy, as a copy-up made in place does).
    pub fn publish_synced(self) -> Result<()> {
        let r = sys::fs::reopen(self.fd.as_fd(), nix::fcntl::OFlag::O_RDONLY)
            .and_then(|f| sys::fs::fsync(f.as_fd(), false))
            .and_then(|()| self.publish());
        if r.is_err() {
            if let Some(u) = self.stack.writer() {
                u.discard(&self.tmp);
            }
        }
        r
    }
}

type Key = (Ino, OsString);

#[derive(Default)]
struct Queue {
    map: HashMap<Key, Arc<Pending>>,
    stop: bool,
}

#[derive(Default)]
struct Inner {
    queue: Mutex<Queue>,
    wake: Condvar,
    burst: Mutex<()>,
    /// Entries in `queue.map` (read without the lock by lookups).
    count: AtomicUsize,
    /// Operations in flight that go by upper names (`quiesce`): while
    /// any is, no copy-up is deferred. Read under `queue`.
    by_name: AtomicUsize,
    /// Directory renames done (`moved`). A copy records its upper path
    /// for a killed daemon's recovery; one staged across a directory
    /// rename may have recorded a path the rename changed, so it is not
    /// deferred (`add`). Written under `queue`.
    moves: AtomicU64,
}

impl Inner {
    /// Publishes every copy queued now: one syncfs, then the renames.
    fn burst(&self) -> Result<()> {
        self.burst_of(|_| true)
    }

    /// `burst`, of the copies `pick` chooses.
    fn burst_of(&self, pick: impl Fn(&Pending) -> bool) -> Result<()> {
        let _burst = self.burst.lock();
        let batch: Vec<Arc<Pending>> = self
            .queue
            .lock()
            .map
            .values()
            .filter(|p| pick(p))
            .cloned()
            .collect();
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let upper = first.stack.writer().ok_or(Error::ReadOnly)?;
        // syncfs needs an fd that is not O_PATH.
        let work = sys::fs::reopen(
            upper.work.as_fd(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        )?;
        sys::fs::syncfs(work.as_fd())?;
        let mut res = Ok(());
        for p in &batch {
            match p.publish() {
                Ok(()) => {
                    let mut q = self.queue.lock();
                    let key = (p.parent, p.name.clone());
                    if q.map.get(&key).is_some_and(|e| Arc::ptr_eq(e, p)) {
                        q.map.remove(&key);
                        self.count.store(q.map.len(), Ordering::Release);
                    }
                }
                // Stays pending (and serving from the workdir): tried again
                // at the next burst; a caller that flushes gets the error,
                // as delayed allocation reports ENOSPC at fsync.
                Err(e) => {
                    tracing::warn!(
                        "copy-up of {:?} (inode {}) not published yet: {e}",
                        p.name,
                        p.ino
                    );
                    if res.is_ok() {
                        res = Err(e);
                    }
                }
            }
        }
        res
    }
}

/// The pending copies of one union and its publisher thread.
#[derive(Default)]
pub struct Publisher {
    inner: Arc<Inner>,
    /// The thread and the process it was started in: it is started at the
    /// first copy-up, after the daemon forked (threads do not survive a
    /// fork).
    thread: Mutex<Option<(JoinHandle<()>, u32)>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("pending", &self.inner.count.load(Ordering::Acquire))
            .finish()
    }
}

/// How long the publisher lets a burst gather after its first copy: a
/// stream of copy-ups then costs one syncfs per `GATHER` rather than one
/// per syncfs's own duration (a millisecond or two, so bursts of one or
/// two copies). Nobody waits for it: the copies are served from the
/// workdir meanwhile, and a caller that needs them published (fsync, a
/// name change, unmount) publishes at once.
const GATHER: Duration = Duration::from_millis(10);

/// How many waiting copies end the gathering early (each holds two fds
/// until it is published).
const BURST_MAX: usize = 1024;

fn run(inner: Arc<Inner>) {
    loop {
        {
            let mut q = inner.queue.lock();
            while q.map.is_empty() && !q.stop {
                inner.wake.wait(&mut q);
            }
            if q.map.is_empty() {
                return;
            }
            // Let the burst gather: copy-ups come in runs (a build, a
            // package install), and every syncfs is a journal commit and a
            // cache flush of the upper's device.
            let until = std::time::Instant::now() + GATHER;
            while !q.stop && q.map.len() < BURST_MAX {
                if inner.wake.wait_until(&mut q, until).timed_out() {
                    break;
                }
            }
        }
        if inner.burst().is_err() {
            if inner.queue.lock().stop {
                return;
            }
            // A failing upper (EIO, ENOSPC): do not spin on it.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Publisher {
    /// Queues a staged copy for publishing; gives it back when no
    /// publisher thread can run, or a name operation is in flight, or a
    /// directory was renamed since `moves` was read (before the copy's
    /// path was): the caller then publishes it itself.
    pub fn add(&self, p: Pending, moves: u64) -> std::result::Result<(), Pending> {
        if !self.ensure_thread() {
            return Err(p);
        }
        let mut q = self.inner.queue.lock();
        if self.inner.by_name.load(Ordering::SeqCst) > 0
            || self.inner.moves.load(Ordering::SeqCst) != moves
        {
            return Err(p);
        }
        q.map.insert((p.parent, p.name.clone()), Arc::new(p));
        self.inner.count.store(q.map.len(), Ordering::Release);
        // The publisher waits for a first copy, then for a full burst or
        // the end of `GATHER`: only those two need waking it.
        if q.map.len() == 1 || q.map.len() >= BURST_MAX {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    fn ensure_thread(&self) -> bool {
        let mut t = self.thread.lock();
        let pid = std::process::id();
        if t.as_ref()
            .is_some_and(|(h, p)| *p == pid && !h.is_finished())
        {
            return true;
        }
        if self.inner.queue.lock().stop {
            return false;
        }
        let inner = Arc::clone(&self.inner);
        match std::thread::Builder::new()
            .name("publish".into())
            .spawn(move || run(inner))
        {
            Ok(h) => {
                *t = Some((h, pid));
                true
            }
            Err(_) => false,
        }
    }

    /// The pending copy named `name` in union directory `parent`.
    pub fn get(&self, parent: Ino, name: &OsStr) -> Option<Arc<Pending>> {
        if self.is_idle() {
            return None;
        }
        self.inner
            .queue
            .lock()
            .map
            .get(&(parent, name.to_os_string()))
            .cloned()
    }

    /// The count of directory renames done: read before a copy-up takes
    /// the path it records, handed to `add`.
    pub fn moves(&self) -> u64 {
        self.inner.moves.load(Ordering::SeqCst)
    }

    /// A directory was renamed (called with its `quiesce_names` guard
    /// still held, after the union's parent links were updated).
    pub fn moved(&self) {
        let _q = self.inner.queue.lock();
        self.inner.moves.fetch_add(1, Ordering::SeqCst);
    }

    /// Publishes the pending copies `pick` chooses (waiting for a burst in
    /// flight), with one syncfs; the others stay pending.
    pub fn flush_where(&self, pick: impl Fn(&Pending) -> bool) -> Result<()> {
        if !self.inner.queue.lock().map.values().any(|p| pick(p)) {
            return Ok(());
        }
        self.inner.burst_of(pick)
    }

    /// True when no copy is pending.
    pub fn is_idle(&self) -> bool {
        self.inner.count.load(Ordering::Acquire) == 0
    }

    /// Publishes every pending copy now (waiting for a burst in flight).
    /// Looks at the queue under its lock: a copy queued by a thread that
    /// released the lock before is seen.
    pub fn flush(&self) -> Result<()> {
        if self.inner.queue.lock().map.is_empty() {
            return Ok(());
        }
        self.inner.burst()
    }

    /// For an operation that goes by upper names (namespace changes,
    /// branch changes): publishes every pending copy, and defers no new
    /// one until the returned guard is dropped (copy-ups made meanwhile
    /// are synced and placed at once), so the operation never meets a
    /// name that is not in the upper yet.
    pub fn quiesce(&self) -> Result<Quiet<'_>> {
        // Before the flush looks at the queue: a copy-up that queues after
        // that look sees the count (both under the queue's lock).
        self.inner.by_name.fetch_add(1, Ordering::SeqCst);
        let quiet = Quiet(&self.inner);
        self.flush()?;
        Ok(quiet)
    }
}

impl Publisher {
    /// For an operation on the upper names `names` (directory, name) —
    /// a create, link, removal or rename: publishes the pending copies of
    /// those names (each synced on its own, or with the burst in flight),
    /// and defers no new copy-up until the returned guard is dropped, so
    /// the operation never meets one of its names not yet in the upper.
    /// Copies pending under other names stay pending: an untar next to a
    /// stream of copy-ups does not pay a syncfs per file.
    pub fn quiesce_names(&self, names: &[(Ino, &OsStr)]) -> Result<Quiet<'_>> {
        // As in `quiesce`: counted before the queue is looked at.
        self.inner.by_name.fetch_add(1, Ordering::SeqCst);
        let quiet = Quiet(&self.inner);
        let ours = |q: &Queue| {
            names
                .iter()
                .any(|(p, n)| q.map.contains_key(&(*p, n.to_os_string())))
        };
        if !ours(&self.inner.queue.lock()) {
            return Ok(quiet);
        }
        // A burst in flight may be publishing them: wait for it (and keep
        // the next one out), then publish what is left of ours. Each leaves
        // the queue only once it has its name, as in a burst: a copy-up's
        // last look at a name asks the queue first, then the upper
        // (`copy_up_one`), and must never find it in neither.
        let _burst = self.inner.burst.lock();
        let picked: Vec<Arc<Pending>> = {
            let q = self.inner.queue.lock();
            names
                .iter()
                .filter_map(|(p, n)| q.map.get(&(*p, n.to_os_string())).cloned())
                .collect()
        };
        for p in picked {
            // Stays pending on failure, as in a burst; the operation fails.
            sys::fs::reopen(p.fd.as_fd(), nix::fcntl::OFlag::O_RDONLY)
                .and_then(|f| sys::fs::fsync(f.as_fd(), false))
                .and_then(|()| p.publish())?;
            let mut q = self.inner.queue.lock();
            let key = (p.parent, p.name.clone());
            if q.map.get(&key).is_some_and(|e| Arc::ptr_eq(e, &p)) {
                q.map.remove(&key);
                self.inner.count.store(q.map.len(), Ordering::Release);
            }
        }
        Ok(quiet)
    }
}

/// See `Publisher::quiesce`.
#[must_use]
pub struct Quiet<'a>(&'a Inner);

impl Drop for Quiet<'_> {
    fn drop(&mut self) {
        self.0.by_name.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.inner.queue.lock().stop = true;
        self.inner.wake.notify_all();
        if let Some((h, pid)) = self.thread.lock().take() {
            if pid == std::process::id() {
                let _ = h.join();
            }
        }
        if let Err(e) = self.flush() {
            tracing::warn!("copy-ups left unpublished at the end of the mount: {e}");
        }
    }
}
