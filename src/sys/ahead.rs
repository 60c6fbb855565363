//! Threads that work ahead of the requests (the read-ahead, the copy-up
//! stage pool): their priority (`background_thread`), and what they waited
//! for (`waits`), by which work ahead tells the disk from memory.
//! Takes no locks.

/// Gives the calling thread the lowest normal priority (nice 19): for
/// work done ahead, which should take little CPU from the requests it is
/// done for. Not `SCHED_IDLE`: such a work thread takes kernel locks the
/// requests need too (a lookup in progress in a directory, a journal
/// handle), and an idle-class thread holding one on a busy CPU waited
/// there for milliseconds while the request waited for it — a cold stat
/// walk of a 2-layer union took 1.15 s with the read-ahead thread at
/// `SCHED_IDLE`, 0.33 s without read-ahead and 0.22 s with it at nice 19.
/// A nice-19 thread gets 1/70 of a CPU a nice-0 one wants, but it gets it
/// soon. Best effort (false where refused).
pub fn background_thread() -> bool {
    // SAFETY: setpriority takes plain integers; who = 0 is the calling
    // thread (Linux sets a thread's own nice value).
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    tracing::trace!("setpriority(PRIO_PROCESS, 0, 19) = {r}");
    r == 0
}

/// What the calling thread has waited for so far (`getrusage(RUSAGE_THREAD)`).
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    /// Blocks it read from disks (`ru_inblock`: the block layer counts a
    /// read against the thread that submits it; 0 on a kernel without
    /// per-task I/O accounting).
    pub blocks_read: i64,
    /// Times it gave up the CPU to wait (`ru_nvcsw`): for its own reads,
    /// another thread's read of the same block, a lock, a network file
    /// system. Being preempted is not counted here.
    pub blocked: i64,
}

/// The calling thread's `Waits`; `None` where the kernel does not say.
pub fn waits() -> Option<Waits> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD);
    usage.ok().map(|u| Waits {
        blocks_read: u.block_reads(),
        blocked: u.voluntary_context_switches(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// What the read-ahead tells a cold listing by (`prefetch.rs`): a read
    /// from the disk counts for the thread that made it, not another.
    #[test]
    fn a_read_from_the_disk_counts_for_the_thread_that_reads() {
        // (Under target/: a disk file system, where /tmp may be tmpfs.)
        let under = concat!(env!("CARGO_MANIFEST_DIR"), "/target");
        std::fs::create_dir_all(under).unwrap();
        let dir = tempfile::tempdir_in(under).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 256 * 1024]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        f.sync_all().unwrap();
        let drop_pages = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED;
        nix::fcntl::posix_fadvise(&f, 0, 0, drop_pages).unwrap();
        let before = waits().unwrap();
        let theirs = std::thread::scope(|s| {
            s.spawn(|| {
                let before = waits().unwrap();
                assert_eq!(std::fs::read(&path).unwrap().len(), 256 * 1024);
                waits().unwrap().blocks_read - before.blocks_read
            })
            .join()
            .unwrap()
        });
        assert!(
            theirs >= 8,
            "256 KiB read from the disk by the other thread: {theirs} blocks \
             (is {under} on a disk file system?)"
        );
        assert_eq!(
            waits().unwrap().blocks_read,
            before.blocks_read,
            "not this thread's"
        );
    }

    /// A thread that sleeps gave up the CPU to wait.
    #[test]
    fn a_wait_counts_as_blocked() {
        let before = waits().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert!(waits().unwrap().blocked > before.blocked);
    }
}
