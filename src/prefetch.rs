//! Read-ahead of a cold walk: when the union lists a directory, the
//! directories in it are read (in each layer that holds them) by a thread
//! of the union's own, before the walker asks for them.
//!
//! A walk through FUSE is serial: each directory is listed, and each entry
//! the reply carries looked up, only once the kernel asks, and on a cold
//! cache each of those waits for the disk in turn, between round trips in
//! which the disk is idle. This thread warms the branch filesystems' own
//! caches for what the walk reads next: it lists each subdirectory
//! (`getdents`: its blocks) and, when that read came from the disk (the
//! thread's own block reads grew), stats
//! the entries the next READDIRPLUS will look up — the subdirectories
//! always, the other entries only when the listing was made for a
//! requester that gets them in full (`fuse/rdplus.rs`); a tree already in
//! memory costs a `getdents` per directory. The newest listing's subdirectories go first (a
//! stack): a depth-first walker enters them next.
//!
//! The walker wants the first of those subdirectories at once, one round
//! trip after the listing that named it: a thread that only reads what the
//! union's listings name is never ahead of the walk, it meets the walk in
//! the same directory, waiting for the same disk read. So a directory the
//! thread read from the disk has its own subdirectories queued too, by the
//! thread itself, depth first: it goes down the tree on its own, the way the
//! walk will, and keeps ahead, since it makes no round trips. How far is
//! bounded: at most `LEAD` directories of its own beyond the listings the
//! union made; past that its own jobs wait for the walk to list more (a
//! `ls` of one directory has at most that many read after it; a walk
//! keeps earning more as it lists).
//!
//! Invariant: advisory only. Only branches the union never writes are read
//! ahead (a listing holds its directory's lock shared, which a thread at
//! low priority must not hold where the union's own writes need it). The
//! thread keeps nothing: no node, listing or fd cache of the union's
//! changes, and it reads with `O_NOATIME`, beneath the layer directory,
//! never across a mount, so what a request answers is the same with it or
//! without it (`prefetch=off`); a failure is ignored. A job holds its
//! layer directory weakly: the union's fd cache alone decides which fds
//! stay open (a job whose directory was evicted, or whose branch or union
//! is gone, is skipped). At most `BOUND` directories wait; the oldest are
//! dropped. The thread runs at the lowest normal priority (nice 19; not
//! `SCHED_IDLE`, whose starved holder of a lookup the union's own lookups
//! waited for, see `sys::resident::background_thread`) and ends with the
//! union.
//! Locks: the queue's mutex, a leaf (no syscall under it).

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Condvar, Mutex};

use crate::sys;

/// Most directories waiting to be read.
pub const BOUND: usize = 1024;

/// Where the kernel does not count a thread's disk reads
/// (`sys::resident::blocks_read`): a directory listed faster than this was
/// in memory (a read from the disk takes longer here, 100 µs and more).
/// Either way, a listing from memory has its entries not stat'ed, and the
/// thread does not go into its subdirectories on its own.
const WARM: std::time::Duration = std::time::Duration::from_micros(50);

/// Most directories the thread reads on its own beyond the number of
/// listings the union queued work for. Cold `find` of the bench image's
/// tree, medians of 8 interleaved runs, ms, three rounds: without 134 ·
/// 140 · 139, with 256 114 · 123 · 122; 64 gave 134, 1024 104 · 118. A
/// larger lead gains little more and costs more reading in the background
/// after a listing nobody walks on from.
pub const LEAD: u64 = 256;

/// One directory to read: a layer directory's fd (as long as the union
/// keeps it), the directory's path beneath it (one name for the union's
/// jobs, more for the thread's own), whether its non-directories are
/// stat'ed too, and whether the thread queued it itself.
struct Job {
    dir: Weak<OwnedFd>,
    name: OsString,
    files: bool,
    own: bool,
}

struct Inner {
    queue: Mutex<Vec<Job>>,
    wake: Condvar,
    /// Set when the union goes: the thread stops, even inside a job.
    stop: AtomicBool,
    /// Directories read so far.
    read: AtomicU64,
    /// Listings the union queued work for.
    listed: AtomicU64,
    /// Directories the thread read on its own (its own jobs).
    own: AtomicU64,
    /// Tests: every listing counts as read from the disk (`Some(true)`) or
    /// from memory (`Some(false)`); `None` measures.
    assume_cold: Option<bool>,
}

/// A union's read-ahead thread (started at the first job).
pub struct Prefetcher {
    inner: Arc<Inner>,
    /// Whether the thread runs (set once, at the first job).
    thread: std::sync::OnceLock<bool>,
    on: bool,
}

impl std::fmt::Debug for Prefetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetcher")
            .field("on", &self.on)
            .field("read", &self.read())
            .finish()
    }
}

impl Prefetcher {
    /// A prefetcher; `on: false` makes `push` do nothing.
    pub fn new(on: bool) -> Self {
        Self::assuming(on, None)
    }

    fn assuming(on: bool, assume_cold: Option<bool>) -> Self {
        Prefetcher {
            inner: Arc::new(Inner {
                queue: Mutex::default(),
                wake: Condvar::new(),
                stop: AtomicBool::new(false),
                read: AtomicU64::new(0),
                listed: AtomicU64::new(0),
                own: AtomicU64::new(0),
                assume_cold,
            }),
            thread: std::sync::OnceLock::new(),
            on,
        }
    }

    /// True when listings queue work.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Directories read ahead so far.
    pub fn read(&self) -> u64 {
        self.inner.read.load(Ordering::Relaxed)
    }

    /// Queues directories `names` of layer directory `dir` (of a branch
    /// the union never writes), the first to be read first; `files`: their
    /// non-directories are stat'ed too. At most `BOUND` names are taken.
    pub fn push(&self, dir: &Arc<OwnedFd>, names: Vec<OsString>, files: bool) {
        if !self.on || names.is_empty() || !self.running() {
            return;
        }
        self.inner.listed.fetch_add(1, Ordering::Relaxed);
        queue(&self.inner, &Arc::downgrade(dir), names, files, false);
        self.inner.wake.notify_one();
    }

    /// Starts the thread the first time; false when there is none.
    fn running(&self) -> bool {
        *self.thread.get_or_init(|| {
            let inner = Arc::clone(&self.inner);
            let spawned = std::thread::Builder::new()
                .name("unionfs-ahead".into())
                .spawn(move || {
                    sys::resident::background_thread();
                    run(&inner);
                });
            if let Err(e) = &spawned {
                tracing::debug!("no read-ahead thread: {e}");
            }
            spawned.is_ok()
        })
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        let jobs = std::mem::take(&mut *self.inner.queue.lock());
        self.inner.wake.notify_all();
        drop(jobs);
    }
}

/// Puts jobs for directories `names` beneath `dir` on the stack, the
/// first on top; at most `BOUND` wait, the oldest are dropped.
fn queue(inner: &Inner, dir: &Weak<OwnedFd>, names: Vec<OsString>, files: bool, own: bool) {
    let mut q = inner.queue.lock();
    let waiting = q.len();
    let over = (waiting + names.len()).saturating_sub(BOUND);
    q.drain(..over.min(waiting));
    for name in names.into_iter().take(BOUND).rev() {
        q.push(Job {
            dir: Weak::clone(dir),
            name,
            files,
            own,
        });
    }
}

fn run(inner: &Inner) {
    while let Some(job) = next(inner) {
        // Gone from the union's cache (or the union is gone): not ours to open.
        let Some(dir) = job.dir.upgrade() else {
            continue;
        };
        let before = sys::resident::blocks_read();
        let started = std::time::Instant::now();
        let listed = sys::fs::read_dir_ahead(dir.as_fd(), &job.name);
        drop(dir);
        let Ok((fd, entries)) = listed else {
            continue;
        };
        inner.read.fetch_add(1, Ordering::Relaxed);
        if job.own {
            inner.own.fetch_add(1, Ordering::Relaxed);
        }
        // Listed from memory: its inodes (and its subtree, most likely)
        // are cached too. The thread's own disk reads tell; where the
        // kernel does not count them, the time the listing took (which a
        // preempted thread at nice 19 overstates).
        let from_disk = match (inner.assume_cold, before, sys::resident::blocks_read()) {
            (Some(cold), _, _) => cold,
            (None, Some(a), Some(b)) => b > a,
            (None, _, _) => started.elapsed() >= WARM,
        };
        if !from_disk {
            continue;
        }
        for e in &entries {
            if inner.stop.load(Ordering::Relaxed) {
                return;
            }
            if job.files || e.kind == Some(nix::dir::Type::Directory) {
                let _ = sys::fs::stat_at(fd.as_fd(), &e.name);
            }
        }
        let below: Vec<OsString> = entries
            .iter()
            .filter(|e| e.kind == Some(nix::dir::Type::Directory))
            .map(|e| Path::new(&job.name).join(&e.name).into_os_string())
            .collect();
        if !below.is_empty() {
            queue(inner, &job.dir, below, job.files, true);
        }
    }
}

/// The newest job, waiting for one; `None` once the union is gone. `LEAD`
/// directories of its own beyond the union's listings, the thread's own
/// jobs wait (where they are) for the walk to list more.
fn next(inner: &Inner) -> Option<Job> {
    let mut q = inner.queue.lock();
    loop {
        if inner.stop.load(Ordering::Relaxed) {
            return None;
        }
        let ahead =
            inner.own.load(Ordering::Relaxed) >= inner.listed.load(Ordering::Relaxed) + LEAD;
        let newest = match ahead {
            false => q.len().checked_sub(1),
            true => q.iter().rposition(|j| !j.own),
        };
        if let Some(i) = newest {
            return Some(q.remove(i));
        }
        inner.wake.wait(&mut q);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn wait_for(p: &Prefetcher, n: u64) -> u64 {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while p.read() < n && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        p.read()
    }

    #[test]
    fn reads_the_directories_it_is_given_and_skips_what_fails() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["a", "b", "a/x"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        std::fs::write(tmp.path().join("a/f"), "f").unwrap();
        let dir = Arc::new(sys::fs::open_path_abs(tmp.path()).unwrap());
        // Every listing counts as warm: only what was pushed is read.
        let p = Prefetcher::assuming(true, Some(false));
        let names = ["a", "missing", "b"].map(OsString::from).to_vec();
        p.push(&dir, names, true);
        assert_eq!(wait_for(&p, 2), 2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(p.read(), 2, "a missing directory is not counted as read");
    }

    /// Advisory: a directory read ahead keeps its atime (which a listing
    /// would move forward, here from 2000, under relatime).
    #[test]
    fn reading_ahead_leaves_atime_alone() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("f"), "f").unwrap();
        let old = std::fs::FileTimes::new()
            .set_accessed(std::time::UNIX_EPOCH + std::time::Duration::from_secs(946_684_800));
        std::fs::File::open(&a).unwrap().set_times(old).unwrap();
        let before = std::fs::metadata(&a).unwrap().atime();
        let dir = Arc::new(sys::fs::open_path_abs(tmp.path()).unwrap());
        let p = Prefetcher::new(true);
        p.push(&dir, vec![OsString::from("a")], true);
        assert_eq!(wait_for(&p, 1), 1);
        assert_eq!(std::fs::metadata(&a).unwrap().atime(), before);
        assert_eq!(before, 946_684_800);
    }

    /// Waits for `n` directories read, then for 200 ms more: the count then.
    fn settle(p: &Prefetcher, n: u64) -> u64 {
        wait_for(p, n);
        std::thread::sleep(std::time::Duration::from_millis(200));
        p.read()
    }

    /// A directory read from the disk has its subdirectories read too, and
    /// theirs: the thread goes down ahead of the walk without being asked.
    #[test]
    fn goes_down_a_cold_tree_on_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b/c/d")).unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b2")).unwrap();
        let dir = Arc::new(sys::fs::open_path_abs(tmp.path()).unwrap());
        // Every listing counts as read from the disk.
        let p = Prefetcher::assuming(true, Some(true));
        p.push(&dir, vec![OsString::from("a")], false);
        assert_eq!(settle(&p, 5), 5, "a, a/b, a/b/c, a/b/c/d and a/b2");
        assert_eq!(p.inner.own.load(Ordering::Relaxed), 4);
    }

    /// On its own the thread reads at most `LEAD` directories beyond the
    /// listings the union made; the rest wait for the next listing.
    #[test]
    fn reads_at_most_lead_directories_beyond_the_unions_listings() {
        let tmp = tempfile::tempdir().unwrap();
        let wide = LEAD + 40;
        for i in 0..wide {
            std::fs::create_dir_all(tmp.path().join(format!("a/d{i}"))).unwrap();
        }
        std::fs::create_dir(tmp.path().join("b")).unwrap();
        let dir = Arc::new(sys::fs::open_path_abs(tmp.path()).unwrap());
        let p = Prefetcher::assuming(true, Some(true));
        p.push(&dir, vec![OsString::from("a")], false);
        let n = 1 + 1 + LEAD;
        assert_eq!(settle(&p, n), n, "a, then LEAD + 1 of its {wide}");
        assert_eq!(p.inner.own.load(Ordering::Relaxed), 1 + LEAD);
        // One more listing: b, and one more of a's.
        p.push(&dir, vec![OsString::from("b")], false);
        assert_eq!(settle(&p, n + 2), n + 2);
        assert_eq!(p.inner.own.load(Ordering::Relaxed), 2 + LEAD);
        let waiting = usize::try_from(wide - LEAD - 2).unwrap();
        assert_eq!(p.inner.queue.lock().len(), waiting);
    }

    #[test]
    fn off_reads_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        let dir = Arc::new(sys::fs::open_path_abs(tmp.path()).unwrap());
        let p = Prefetcher::new(false);
        p.push(&dir, vec![OsString::from("a")], false);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(p.read(), 0);
    }
}
