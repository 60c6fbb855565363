//! The kernel's I/O mode of every open file, mirrored (see the kernel's
//! fs/fuse/iomode.c).
//!
//! Invariant: while any handle of a node is passthrough, every new handle
//! of that node is passthrough on the *same* backing id; while any handle
//! of it is cached (served by the daemon through the page cache), no new
//! handle is passthrough. The kernel refuses an open that breaks either
//! rule, so we never send one. A backing id lives exactly as long as the
//! last passthrough handle that uses it. The kernel lets go of a file
//! before its RELEASE reaches us, so this mirror can only lag behind the
//! kernel by counting a handle the kernel has already dropped — which makes
//! us choose the cached mode or reuse a still-registered backing, both
//! accepted.
//!
//! A backing on a *lower* file (`passthrough=all`) pins the node to that
//! file: the kernel would keep serving its data after a copy-up, so a
//! pinned node is never opened for writing. The adapter instead retires
//! the node (the copied-up object gets a fresh node id) and answers ESTALE,
//! which makes the VFS retry the open once through a fresh lookup — that
//! reaches the new node. `note_estale`/`take_estale` remember whom it told
//! so, to recognise a retry that came back to the same node (an open of
//! /proc/PID/fd/N walks no name): that one gets the old answer.
//!
//! The kernel sends RELEASE after close(2) has returned, so "pinned" may
//! still be true for a moment after the last reader closed: such a writer
//! waits (briefly, on `unpinned`) for the RELEASE before it is refused.
//!
//! Locks: one `DashMap` shard lock per node, held while the mode is chosen
//! and the backing registered (one ioctl); never across a core call. The
//! `unpinned` mutex is taken only by a writer of a pinned node and by the
//! release of a lower backing; the `estale` mutex only around its list.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use dashmap::DashMap;
use parking_lot::{Condvar, Mutex};

/// How the kernel does I/O on a new handle.
#[derive(Debug)]
pub enum Grant<B> {
    /// Through the daemon, with the page cache.
    Cached,
    /// Directly on the backing file.
    Passthrough(Arc<B>),
}

#[derive(Debug)]
struct NodeIo<B> {
    /// Open cached handles.
    cached: u32,
    /// The backing shared by the node's passthrough handles.
    backing: Weak<B>,
    /// The backing is a lower file.
    lower: bool,
}

impl<B> Default for NodeIo<B> {
    fn default() -> Self {
        NodeIo {
            cached: 0,
            backing: Weak::new(),
            lower: false,
        }
    }
}

/// Node -> I/O mode, and handle -> what it holds. `B` is fuser's
/// `BackingId` (whose Drop closes the id in the kernel); tests use a stand-in.
#[derive(Debug)]
pub struct IoModes<B> {
    nodes: DashMap<u64, NodeIo<B>>,
    handles: DashMap<u64, (u64, Option<Arc<B>>)>,
    unpinned: (Mutex<()>, Condvar),
    /// Per node the kernel still holds: bytes the daemon served to its page
    /// cache (READ only comes for cached handles) — roughly what the kernel
    /// caches of it — and whether any handle was passthrough since (the
    /// cache may then be stale: passthrough writes bypass it).
    cache: DashMap<u64, CacheState>,
    /// (node, pid, when) of opens answered ESTALE, newest last; at most
    /// `MAX_ESTALE`, none older than `RETRY_WINDOW`.
    estale: Mutex<Vec<(u64, u32, Instant)>>,
}

/// How long after an ESTALE the same caller's open of the same node counts
/// as the VFS's retry of it (which follows at once).
const RETRY_WINDOW: Duration = Duration::from_secs(2);

/// Most ESTALE answers remembered at once.
const MAX_ESTALE: usize = 256;

#[derive(Debug, Default, Clone, Copy)]
struct CacheState {
    read_bytes: u64,
    passthrough_seen: bool,
}

impl<B> Default for IoModes<B> {
    fn default() -> Self {
        IoModes {
            nodes: DashMap::new(),
            handles: DashMap::new(),
            unpinned: (Mutex::new(()), Condvar::new()),
            cache: DashMap::new(),
            estale: Mutex::new(Vec::new()),
        }
    }
}

impl<B> IoModes<B> {
    /// True while readers served straight from a lower file pin `ino`.
    pub fn pinned_to_lower(&self, ino: u64) -> bool {
        self.nodes
            .get(&ino)
            .is_some_and(|n| n.lower && n.backing.strong_count() > 0)
    }

    /// Remembers that `pid`'s open of `ino` is answered ESTALE.
    pub fn note_estale(&self, ino: u64, pid: u32) {
        let now = Instant::now();
        let mut v = self.estale.lock();
        v.retain(|&(_, p, t)| p != pid && now.duration_since(t) < RETRY_WINDOW);
        if v.len() >= MAX_ESTALE {
            v.remove(0);
        }
        v.push((ino, pid, now));
    }

    /// True when `pid`'s last open was of `ino` and answered ESTALE just
    /// now: this open is the VFS's retry, and it came back to the same node.
    /// Every open by `pid` takes its note, whatever the node: the retry is
    /// the caller's very next open, so a note not taken by it (the retry
    /// walked to another node) must not make a later open of `ino` — a
    /// second hard-link name still on the old node — look like a retry.
    pub fn take_estale(&self, ino: u64, pid: u32) -> bool {
        let now = Instant::now();
        let mut v = self.estale.lock();
        if v.is_empty() {
            return false;
        }
        match v.iter().position(|&(_, p, _)| p == pid) {
            Some(i) => {
                let (n, _, t) = v.remove(i);
                n == ino && now.duration_since(t) < RETRY_WINDOW
            }
            None => false,
        }
    }

    /// `n` bytes of `ino` went into the kernel's page cache.
    pub fn note_read(&self, ino: u64, n: usize) {
        self.cache.entry(ino).or_default().read_bytes += n as u64;
    }

    /// True when the kernel likely caches at least `above` bytes of `ino`
    /// and that cache is still right (no passthrough handle since). Opening
    /// such a node for passthrough, or cached without FOPEN_KEEP_CACHE,
    /// would make the kernel drop it (about 150 ms per GiB here).
    pub fn big_valid_cache(&self, ino: u64, above: u64) -> bool {
        self.cache
            .get(&ino)
            .is_some_and(|c| c.read_bytes >= above && !c.passthrough_seen)
    }

    /// The kernel forgot `ino` (and its page cache).
    pub fn forget(&self, ino: u64) {
        self.cache.remove(&ino);
    }

    /// Waits up to `limit` for `ino` to be unpinned; true if it is.
    pub fn wait_unpinned(&self, ino: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut g = self.unpinned.0.lock();
        while self.pinned_to_lower(ino) {
            if self.unpinned.1.wait_until(&mut g, deadline).timed_out() {
                return !self.pinned_to_lower(ino);
            }
        }
        true
    }

    /// Chooses the mode of the new handle `fh` of `ino`. `want`: the mount
    /// would like passthrough for it; `on_upper`: its data is on the upper;
    /// `writing`: the handle may write; `register` makes a backing id of
    /// the handle's file. A backing that cannot be registered (stacked or
    /// odd filesystem) means cached I/O.
    pub fn grant(
        &self,
        ino: u64,
        fh: u64,
        want: bool,
        on_upper: bool,
        writing: bool,
        register: impl FnOnce() -> std::io::Result<B>,
    ) -> Result<Grant<B>> {
        let mut n = self.nodes.entry(ino).or_default();
        let grant = match n.backing.upgrade() {
            // The kernel insists on the backing it has; writes through a
            // lower one would go to the lower file. (A reader of a node
            // retired since gets the lower file the node stands for.)
            Some(_) if n.lower && on_upper && writing => return Err(Error::Busy),
            Some(b) => Grant::Passthrough(b),
            None if want && n.cached == 0 => match register() {
                Ok(b) => {
                    let b = Arc::new(b);
                    n.backing = Arc::downgrade(&b);
                    n.lower = !on_upper;
                    Grant::Passthrough(b)
                }
                Err(e) => {
                    tracing::debug!("passthrough refused for node {ino}: {e}");
                    n.cached += 1;
                    Grant::Cached
                }
            },
            None => {
                n.cached += 1;
                Grant::Cached
            }
        };
        drop(n);
        let held = match &grant {
            Grant::Cached => None,
            Grant::Passthrough(b) => {
                if let Some(mut c) = self.cache.get_mut(&ino) {
                    c.passthrough_seen = true;
                }
                Some(Arc::clone(b))
            }
        };
        self.handles.insert(fh, (ino, held));
        Ok(grant)
    }

    /// The handle `fh` is closed.
    pub fn release(&self, fh: u64) {
        let Some((_, (ino, held))) = self.handles.remove(&fh) else {
            return;
        };
        if held.is_none() {
            if let Some(mut n) = self.nodes.get_mut(&ino) {
                n.cached = n.cached.saturating_sub(1);
            }
        }
        // The last holder closes the backing id (fuser's Drop does the ioctl).
        let was_pinned = held.is_some() && self.pinned_to_lower(ino);
        drop(held);
        self.nodes
            .remove_if(&ino, |_, n| n.cached == 0 && n.backing.strong_count() == 0);
        if was_pinned && !self.pinned_to_lower(ino) {
            let _g = self.unpinned.0.lock();
            self.unpinned.1.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts closes, like the kernel's backing id table.
    #[derive(Debug)]
    struct Id<'a>(&'a AtomicUsize);
    impl Drop for Id<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn is_pt<B>(g: &Result<Grant<B>>) -> bool {
        matches!(g, Ok(Grant::Passthrough(_)))
    }

    #[test]
    fn one_backing_per_node_until_its_last_handle_closes() {
        let closed = AtomicUsize::new(0);
        let io = IoModes::default();
        let made = AtomicUsize::new(0);
        let reg = || {
            made.fetch_add(1, Ordering::SeqCst);
            Ok(Id(&closed))
        };
        assert!(is_pt(&io.grant(7, 1, true, true, true, reg)));
        assert!(is_pt(&io.grant(7, 2, true, true, true, reg)));
        assert_eq!(made.load(Ordering::SeqCst), 1, "the backing is shared");
        io.release(1);
        assert_eq!(closed.load(Ordering::SeqCst), 0);
        io.release(2);
        assert_eq!(
            closed.load(Ordering::SeqCst),
            1,
            "closed with the last handle"
        );
        assert!(io.nodes.is_empty() && io.handles.is_empty());
    }

    #[test]
    fn cached_and_passthrough_never_mix() {
        let closed = AtomicUsize::new(0);
        let io = IoModes::default();
        // A lower file read through the page cache...
        assert!(matches!(
            io.grant(7, 1, false, false, false, || Ok(Id(&closed))),
            Ok(Grant::Cached)
        ));
        // ...keeps a later upper open cached too, while it is open.
        assert!(matches!(
            io.grant(7, 2, true, true, true, || Ok(Id(&closed))),
            Ok(Grant::Cached)
        ));
        io.release(1);
        io.release(2);
        assert!(is_pt(&io.grant(7, 3, true, true, true, || Ok(Id(&closed)))));
        // A handle that does not want passthrough still gets it while the
        // kernel holds a backing for the node.
        assert!(is_pt(
            &io.grant(7, 4, false, true, true, || Ok(Id(&closed)))
        ));
    }

    #[test]
    fn a_lower_backing_pins_the_node() {
        let closed = AtomicUsize::new(0);
        let io = IoModes::default();
        assert!(is_pt(
            &io.grant(7, 1, true, false, false, || Ok(Id(&closed)))
        ));
        assert!(io.pinned_to_lower(7));
        assert!(matches!(
            io.grant(7, 2, true, true, true, || Ok(Id(&closed))),
            Err(Error::Busy)
        ));
        let waiter = std::thread::scope(|sc| {
            let w = sc.spawn(|| io.wait_unpinned(7, Duration::from_secs(30)));
            std::thread::sleep(Duration::from_millis(20));
            io.release(1);
            w.join().unwrap_or(false)
        });
        assert!(waiter, "the writer was woken by the release");
        assert!(!io.pinned_to_lower(7));
        assert!(io.wait_unpinned(7, Duration::ZERO));
        assert!(is_pt(&io.grant(7, 3, true, true, true, || Ok(Id(&closed)))));
    }

    #[test]
    fn a_reader_of_a_copied_up_pinned_node_shares_its_lower_backing() {
        let closed = AtomicUsize::new(0);
        let io = IoModes::default();
        assert!(is_pt(
            &io.grant(7, 1, true, false, false, || Ok(Id(&closed)))
        ));
        // Its data is on the upper now, but the kernel holds the lower file.
        assert!(is_pt(
            &io.grant(7, 2, true, true, false, || Ok(Id(&closed)))
        ));
        assert!(matches!(
            io.grant(7, 3, true, true, true, || Ok(Id(&closed))),
            Err(Error::Busy)
        ));
    }

    #[test]
    fn an_estale_answer_is_recognised_only_in_its_callers_next_open() {
        let io: IoModes<()> = IoModes::default();
        io.note_estale(7, 100);
        assert!(!io.take_estale(7, 101), "another caller");
        assert!(io.take_estale(7, 100));
        assert!(!io.take_estale(7, 100), "only once");
        // the retry went to another node: the note is gone with it
        io.note_estale(7, 100);
        assert!(!io.take_estale(8, 100), "another node");
        assert!(!io.take_estale(7, 100), "a later open is not the retry");
        for pid in 0..(MAX_ESTALE as u32 + 10) {
            io.note_estale(9, pid);
        }
        assert!(io.estale.lock().len() <= MAX_ESTALE, "bounded");
    }

    #[test]
    fn a_refused_backing_falls_back_to_the_page_cache() {
        let io: IoModes<()> = IoModes::default();
        let g = io.grant(7, 1, true, true, true, || {
            Err(std::io::Error::from_raw_os_error(libc::ELOOP))
        });
        assert!(matches!(g, Ok(Grant::Cached)));
        io.release(1);
        assert!(io.nodes.is_empty());
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    #[test]
    fn a_big_cache_is_kept_until_a_passthrough_handle() {
        let io: IoModes<()> = IoModes::default();
        assert!(!io.big_valid_cache(7, 100));
        io.note_read(7, 60);
        io.note_read(7, 60);
        assert!(io.big_valid_cache(7, 100));
        assert!(matches!(
            io.grant(7, 1, true, true, true, || Ok(())),
            Ok(Grant::Passthrough(_))
        ));
        io.release(1);
        assert!(
            !io.big_valid_cache(7, 100),
            "passthrough may have written past it"
        );
        io.forget(7);
        io.note_read(7, 120);
        assert!(io.big_valid_cache(7, 100), "a new inode starts afresh");
    }
}
