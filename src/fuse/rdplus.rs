//! Which directory listings carry the attributes of their files.
//!
//! The kernel asks for READDIRPLUS at offset 0 of every directory it lists
//! (`readdirplus_auto`), so that a program that stats what it lists finds
//! the attributes cached. Answering it in full costs a lookup of every
//! entry: on a cold cache an inode read per file, which a program that only
//! wants names (`find`, `du --inodes`, a shell's globbing) never needed —
//! on the kernel's own filesystems a names-only walk reads no inode.
//!
//! So a listing carries attributes of its *directories* always (a walk goes
//! into them, which needs their lookup anyway) and of its other entries
//! only for a requester known to look at them: a thread that has looked up
//! a non-directory by name. A walk that stats gives itself away with the
//! first file of the first directory it lists (that file costs a LOOKUP
//! round trip, the rest of the walk is served in full); one that only reads
//! names never does. Which answer a listing gets changes no result: an
//! entry given without attributes is looked up by the kernel when used.
//!
//! Invariant: `Habits` only ever makes a listing fuller than names and
//! directories; it is a bounded memory (the most recent `REMEMBERED`
//! requesters) that may forget a thread (which then costs it one
//! directory's LOOKUPs again) and may be fooled by a reused thread id
//! (which then gets attributes it did not need). Requests without a thread
//! (pid 0: the kernel's own) get full listings.
//!
//! Locks: one mutex around the LRU, held for one get or put.

use std::num::NonZeroUsize;

use lru::LruCache;
use parking_lot::Mutex;

use crate::config::ReaddirPlus;

/// How many requesters are remembered.
const REMEMBERED: usize = 1024;

/// The requesters (thread ids) seen looking up non-directories.
#[derive(Debug)]
pub struct Habits {
    mode: ReaddirPlus,
    stat: Mutex<LruCache<u32, ()>>,
}

impl Habits {
    /// Habits under `mode`.
    pub fn new(mode: ReaddirPlus) -> Self {
        let cap = NonZeroUsize::new(REMEMBERED).unwrap_or(NonZeroUsize::MIN);
        Habits {
            mode,
            stat: Mutex::new(LruCache::new(cap)),
        }
    }

    /// A lookup by `pid` found an object; `dir` when it is a directory.
    pub fn looked_up(&self, pid: u32, dir: bool) {
        if self.mode == ReaddirPlus::All || dir || pid == 0 {
            return;
        }
        self.stat.lock().put(pid, ());
    }

    /// Whether a listing for `pid` gives its non-directories' attributes.
    pub fn non_dirs(&self, pid: u32) -> bool {
        self.mode == ReaddirPlus::All || pid == 0 || self.stat.lock().get(&pid).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_gets_attributes_once_it_looked_up_a_file() {
        let h = Habits::new(ReaddirPlus::Auto);
        assert!(!h.non_dirs(42));
        h.looked_up(42, true);
        assert!(!h.non_dirs(42), "a directory lookup is part of any walk");
        h.looked_up(42, false);
        assert!(h.non_dirs(42));
        assert!(!h.non_dirs(43), "per thread");
        assert!(h.non_dirs(0), "the kernel's own requests");
    }

    #[test]
    fn all_gives_every_listing_in_full_and_the_memory_is_bounded() {
        let all = Habits::new(ReaddirPlus::All);
        assert!(all.non_dirs(7));
        let h = Habits::new(ReaddirPlus::Auto);
        for pid in 1..=(REMEMBERED as u32 + 1) {
            h.looked_up(pid, false);
        }
        assert!(!h.non_dirs(1), "the oldest is forgotten");
        assert!(h.non_dirs(REMEMBERED as u32 + 1));
    }
}
