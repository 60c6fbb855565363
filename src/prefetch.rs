//! Read-ahead of a cold walk: when the union lists a directory, the
//! directories in it are read (in each layer that holds them) by a thread
//! of the union's own, before the walker asks for them.
//!
//! A walk through FUSE is serial: each directory is listed, and each entry
//! the reply carries looked up, only once the kernel asks, and on a cold
//! cache each of those waits for the disk in turn, between round trips in
//! which the disk is idle. This thread warms the branch filesystems' own
//! caches for what the walk reads next: it lists each subdirectory
//! (`getdents`: its blocks) and, when that listing was cold (the thread
//! waited: a disk read of its own, another thread's read of the same
//! block, a network file system; or, for a directory whose entries live
//! in its inode, the stat of its first entry waited), stats the entries
//! the next READDIRPLUS will look up — the subdirectories always, the
//! other entries only when the listing was made for a requester that gets
//! them in full (`fuse/rdplus.rs`); a tree already in memory costs a
//! `getdents` and a `stat` per directory. The newest listing's
//! subdirectories go first (a stack): a depth-first walker enters them
//! next.
//!
//! The walker wants the first of those subdirectories at once, one round
//! trip after the listing that named it: a thread that only reads what the
//! union's listings name is never ahead of the walk, it meets the walk in
//! the same directory, waiting for the same disk read. So a cold directory
//! has its own subdirectories queued too, by the thread itself, on top of
//! the stack (stat'ing what its job stats): it goes down the tree depth
//! first, the way the walk will, and keeps ahead, since it makes no round
//! trips. How far is bounded by a budget: `LEAD` own jobs, one more per
//! listing the union queues work for, never above `LEAD`; spent, the
//! thread's own jobs wait where they are, and the newest of the union's is
//! taken from under them. So a listing nobody walks on from has at most
//! `LEAD` directories read after it, however long the mount was quiet.
//! The thread's own jobs take free room in the queue only: they never
//! push out a job the union asked for.
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
//! dropped (the union's jobs only push out older ones; see `Queue`). The
//! thread runs at the lowest normal priority (nice 19; not
//! `SCHED_IDLE`, whose starved holder of a lookup the union's own lookups
//! waited for, see `sys::ahead::background_thread`) and ends with the
//! union.
//! Locks: the queue's mutex (the jobs and the budget, `Queue`), a leaf
//! (no syscall under it); a push changes the budget and queues its jobs
//! under it before it wakes the thread, so no wake-up is lost.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Condvar, Mutex};

use crate::sys;

/// Most directories waiting to be read.
pub const BOUND: usize = 1024;

/// Where the kernel does not say what a thread waited for
/// (`sys::ahead::waits`): a directory listed faster than this was in
/// memory (a read from the disk takes longer here, 100 µs and more).
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

/// The jobs waiting (a stack, newest last), and how many directories the
/// thread may still go into on its own.
struct Queue {
    jobs: Vec<Job>,
    /// The thread's own jobs it may still take: one less per own job taken,
    /// one more per listing the union queues work for, never above `LEAD`
    /// (a mount's quiet listings do not save up a walk's worth).
    budget: u64,
}

impl Queue {
    /// Puts jobs for directories `names` beneath `dir` on the stack, the
    /// first on top. The union's jobs make room by dropping the oldest
    /// ones; the thread's own (`own`) take only free room, never the place
    /// of a job the union asked for.
    fn put(&mut self, dir: &Weak<OwnedFd>, names: Vec<OsString>, files: bool, own: bool) {
        let fit = if own {
            BOUND.saturating_sub(self.jobs.len())
        } else {
            let waiting = self.jobs.len();
            let over = (waiting + names.len()).saturating_sub(BOUND);
            self.jobs.drain(..over.min(waiting));
            BOUND
        };
        for name in names.into_iter().take(fit).rev() {
            self.jobs.push(Job {
                dir: Weak::clone(dir),
                name,
                files,
                own,
            });
        }
    }

    /// The newest job the thread may take: its own only while the budget
    /// lasts (past it they wait where they are, under the union's).
    fn take(&mut self) -> Option<Job> {
        let i = match self.budget {
            0 => self.jobs.iter().rposition(|j| !j.own)?,
            _ => self.jobs.len().checked_sub(1)?,
        };
        let job = self.jobs.remove(i);
        if job.own {
            self.budget -= 1;
        }
        Some(job)
    }
}

struct Inner {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Set when the union goes: the thread stops, even inside a job.
    stop: AtomicBool,
    /// Directories read so far.
    read: AtomicU64,
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
                queue: Mutex::new(Queue {
                    jobs: Vec::new(),
                    budget: LEAD,
                }),
                wake: Condvar::new(),
                stop: AtomicBool::new(false),
                read: AtomicU64::new(0),
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
        let mut q = self.inner.queue.lock();
        q.budget = (q.budget + 1).min(LEAD);
        q.put(&Arc::downgrade(dir), names, files, false);
        drop(q);
        self.inner.wake.notify_one();
    }

    /// Starts the thread the first time; false when there is none.
    fn running(&self) -> bool {
        *self.thread.get_or_init(|| {
            let inner = Arc::clone(&self.inner);
            let spawned = std::thread::Builder::new()
                .name("unionfs-ahead".into())
                .spawn(move || {
                    sys::ahead::background_thread();
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
        let jobs = std::mem::take(&mut self.inner.queue.lock().jobs);
        self.inner.wake.notify_all();
        drop(jobs);
    }
}

fn run(inner: &Inner) {
    while let Some(job) = next(inner) {
        // Gone from the union's cache (or the union is gone): not ours to open.
        let Some(dir) = job.dir.upgrade() else {
            continue;
        };
        let before = sys::ahead::waits();
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
        let mut wanted = entries.iter().filter(|e| job.files || e.kind == Some(DIR));
        // Listed from memory: its inodes (and its subtree, most likely)
        // are cached too. What the thread waited for tells (where the
        // kernel does not say, the time the listing took, which a thread
        // preempted at nice 19 overstates). A directory whose entries live
        // in its inode (XFS, ext4 `inline_data`) lists without a wait once
        // its parent's stats read that inode: its first entry's stat tells
        // (and is not made again below).
        let cold = match inner.assume_cold {
            Some(cold) => cold,
            None => {
                waited(before, started)
                    || wanted.next().is_some_and(|first| {
                        let (before, started) = (sys::ahead::waits(), std::time::Instant::now());
                        let _ = sys::fs::stat_at(fd.as_fd(), &first.name);
                        waited(before, started)
                    })
            }
        };
        if !cold {
            continue;
        }
        for e in wanted {
            if inner.stop.load(Ordering::Relaxed) {
                return;
            }
            let _ = sys::fs::stat_at(fd.as_fd(), &e.name);
        }
        // (They stat what this job stats: a walk that stats, all files.)
        let below: Vec<OsString> = entries
            .iter()
            .filter(|e| e.kind == Some(DIR))
            .map(|e| Path::new(&job.name).join(&e.name).into_os_string())
            .collect();
        if !below.is_empty() {
            inner.queue.lock().put(&job.dir, below, job.files, true);
        }
    }
}

const DIR: nix::dir::Type = nix::dir::Type::Directory;

/// Whether the thread waited since `before`: for a disk read of its own,
/// or gave up the CPU to wait (another thread's read of the same block, a
/// network file system); where the kernel does not say, whether `WARM`
/// passed since `started`.
fn waited(before: Option<sys::ahead::Waits>, started: std::time::Instant) -> bool {
    match (before, sys::ahead::waits()) {
        (Some(a), Some(b)) => b.blocks_read > a.blocks_read || b.blocked > a.blocked,
        _ => started.elapsed() >= WARM,
    }
}

/// The next job (`Queue::take`), waiting for one; `None` once the union is
/// gone.
fn next(inner: &Inner) -> Option<Job> {
    let mut q = inner.queue.lock();
    loop {
        if inner.stop.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(job) = q.take() {
            return Some(job);
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

    /// On its own the thread reads at most `LEAD` directories, one more
    /// per listing the union makes after that, however many listings came
    /// before; the rest wait for the next listing.
    #[test]
    fn reads_at_most_lead_directories_ahead_of_the_unions_listings() {
        let tmp = tempfile::tempdir().unwrap();
        let wide = LEAD + 40;
        for i in 0..wide {
            std::fs::create_dir_all(tmp.path().join(format!("a/d{i}"))).unwrap();
        }
        for d in ["b", "e0", "e1", "e2", "e3", "e4"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        let dir = Arc::new(sys::fs::open_path_abs(tmp.path()).unwrap());
        let p = Prefetcher::assuming(true, Some(true));
        // Five listings of directories with nothing below: no savings.
        for i in 0..5 {
            p.push(&dir, vec![OsString::from(format!("e{i}"))], false);
        }
        assert_eq!(settle(&p, 5), 5);
        p.push(&dir, vec![OsString::from("a")], false);
        let n = 5 + 1 + LEAD;
        assert_eq!(settle(&p, n), n, "a, then LEAD of its {wide}");
        assert_eq!(p.inner.own.load(Ordering::Relaxed), LEAD);
        // One more listing: b, and one more of a's.
        p.push(&dir, vec![OsString::from("b")], false);
        assert_eq!(settle(&p, n + 2), n + 2);
        assert_eq!(p.inner.own.load(Ordering::Relaxed), LEAD + 1);
        let waiting = usize::try_from(wide - LEAD - 1).unwrap();
        assert_eq!(p.inner.queue.lock().jobs.len(), waiting);
    }

    /// The thread's own jobs take free room only: what the union asked for
    /// is never dropped for them (the union's own drop the oldest).
    #[test]
    fn own_jobs_never_push_out_the_unions() {
        let names = |n: usize, tag: &str| {
            (0..n)
                .map(|i| OsString::from(format!("{tag}{i}")))
                .collect()
        };
        let mut q = Queue {
            jobs: Vec::new(),
            budget: LEAD,
        };
        let dir = Weak::new();
        q.put(&dir, names(BOUND - 10, "u"), false, false);
        q.put(&dir, names(100, "o"), false, true);
        assert_eq!(q.jobs.len(), BOUND);
        assert_eq!(q.jobs.iter().filter(|j| j.own).count(), 10);
        q.put(&dir, names(20, "v"), false, false);
        assert_eq!(q.jobs.len(), BOUND);
        assert_eq!(
            q.jobs.iter().filter(|j| !j.own).count(),
            BOUND - 10,
            "oldest dropped"
        );
        assert_eq!(
            q.take().map(|j| j.name),
            Some(OsString::from("v0")),
            "newest first"
        );
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
