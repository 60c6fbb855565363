//! Read-ahead of a cold walk: when the union lists a directory, the
//! directories in it are read (in each layer that holds them) by a thread
//! of the union's own, before the walker asks for them.
//!
//! A walk through FUSE is serial: each directory is listed, and each entry
//! the reply carries looked up, only once the kernel asks, and on a cold
//! cache each of those waits for the disk in turn, between round trips in
//! which the disk is idle. This thread warms the branch filesystems' own
//! caches for what the walk reads next: it lists each subdirectory
//! (`getdents`: its blocks) and, when that read came from the disk, stats
//! the entries the next READDIRPLUS will look up — the subdirectories
//! always, the other entries only when the listing was made for a
//! requester that gets them in full (`fuse/rdplus.rs`); a tree already in
//! memory costs a `getdents` per directory. The newest listing's subdirectories go first (a
//! stack): a depth-first walker enters them next.
//!
//! Invariant: advisory only. The thread reads branches through the layers'
//! fds and keeps nothing: no node, listing or fd cache of the union's
//! changes, so what a request answers is the same with it or without it
//! (`prefetch=off`); a failure is ignored. At most `BOUND` directories wait;
//! the oldest are dropped. The thread runs at idle priority (`SCHED_IDLE`:
//! only on a CPU nothing else wants) and ends with the union.
//! Locks: the queue's mutex, a leaf (no syscall under it).

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::sys;

/// Most directories waiting to be read.
pub const BOUND: usize = 1024;

/// A directory listed faster than this was in memory (a read from the
/// disk takes longer here, 100 µs and more): its entries are not stat'ed.
const WARM: std::time::Duration = std::time::Duration::from_micros(50);

/// One directory to read: its parent's layer fd, its name there, and
/// whether its non-directories are stat'ed too.
struct Job {
    dir: Arc<OwnedFd>,
    name: OsString,
    files: bool,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    stop: bool,
}

#[derive(Default)]
struct Inner {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Directories read so far.
    read: AtomicU64,
}

/// A union's read-ahead thread (started at the first job).
pub struct Prefetcher {
    inner: Arc<Inner>,
    started: std::sync::Once,
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
        Prefetcher {
            inner: Arc::default(),
            started: std::sync::Once::new(),
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

    /// Queues directories `names` of layer directory `dir`, the first to
    /// be read first; `files`: their non-directories are stat'ed too.
    pub fn push(&self, dir: &Arc<OwnedFd>, names: Vec<OsString>, files: bool) {
        if !self.on || names.is_empty() {
            return;
        }
        self.started.call_once(|| {
            let inner = Arc::clone(&self.inner);
            let spawned = std::thread::Builder::new()
                .name("unionfs-ahead".into())
                .spawn(move || {
                    sys::resident::idle_thread();
                    run(&inner);
                });
            if let Err(e) = spawned {
                tracing::debug!("no read-ahead thread: {e}");
            }
        });
        let mut q = self.inner.queue.lock();
        let waiting = q.jobs.len();
        let over = (waiting + names.len()).saturating_sub(BOUND);
        q.jobs.drain(..over.min(waiting));
        for name in names.into_iter().take(BOUND).rev() {
            q.jobs.push(Job {
                dir: Arc::clone(dir),
                name,
                files,
            });
        }
        drop(q);
        self.inner.wake.notify_one();
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.inner.queue.lock().stop = true;
        self.inner.wake.notify_all();
    }
}

fn run(inner: &Inner) {
    while let Some(job) = next(inner) {
        let Ok(fd) = sys::fs::open_path_at(job.dir.as_fd(), &job.name) else {
            continue;
        };
        let started = std::time::Instant::now();
        let Ok(entries) = sys::fs::read_dir(fd.as_fd()) else {
            continue;
        };
        inner.read.fetch_add(1, Ordering::Relaxed);
        if started.elapsed() < WARM {
            // Listed from memory: its inodes are most likely cached too.
            continue;
        }
        for e in &entries {
            if job.files || e.kind == Some(nix::dir::Type::Directory) {
                let _ = sys::fs::stat_at(fd.as_fd(), &e.name);
            }
        }
    }
}

/// The newest job, waiting for one; `None` once the union is gone.
fn next(inner: &Inner) -> Option<Job> {
    let mut q = inner.queue.lock();
    loop {
        if q.stop {
            return None;
        }
        if let Some(job) = q.jobs.pop() {
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
        let p = Prefetcher::new(true);
        let names = ["a", "missing", "b"].map(OsString::from).to_vec();
        p.push(&dir, names, true);
        assert_eq!(wait_for(&p, 2), 2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(p.read(), 2, "a missing directory is not counted as read");
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
