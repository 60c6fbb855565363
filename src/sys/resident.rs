//! Keeping the daemon's own machine code in memory; and keeping work done
//! ahead from taking the CPUs its requests need (`background_thread`), or
//! doing what was not needed (`waits`).
//!
//! A filesystem daemon whose code was paged out (memory pressure, a
//! `drop_caches`) makes the first requests after it wait on the disk for
//! the daemon itself — several reads of its executable, 1-2 ms each on a
//! busy disk: most of what a cold first write to a lower file cost (the
//! kernel's overlayfs has no such wait). So the executable mappings of
//! the process and the read-only data beside them (its own and its
//! libraries', a few MiB) are locked
//! with `mlock`; data, heap and stacks are not (a locked heap could not
//! be given back by `malloc_trim`). Best effort: where the lock is refused
//! (an unprivileged daemon's RLIMIT_MEMLOCK), nothing changes. Locks are
//! not inherited across fork: call it in the process that serves.
//! Takes no locks.

/// The read-only, file-backed mappings of `/proc/self/maps` (code and
/// constant data): start, end.
fn executable_mappings(maps: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            // offset, device, inode, then the path (absent: anonymous).
            let path = f.nth(3)?;
            // Code and read-only data (string tables, vtables): never
            // written, so locking them costs no copy.
            if !perms.starts_with('r') || perms.contains('w') || !path.starts_with('/') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let start = usize::from_str_radix(a, 16).ok()?;
            let end = usize::from_str_radix(b, 16).ok()?;
            (end > start).then_some((start, end))
        })
        .collect()
}

/// Locks the process's executable mappings in memory; returns how many
/// bytes were locked (0 where it was refused).
pub fn lock_code() -> usize {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let mut locked = 0;
    for (start, end) in executable_mappings(&maps) {
        let len = end - start;
        // SAFETY: the range is a mapping of this process as the kernel
        // listed it; mlock only pins its pages and touches no memory the
        // program uses.
        let r = unsafe { libc::mlock(start as *const libc::c_void, len) };
        let res = if r == 0 {
            Ok(())
        } else {
            Err(nix::errno::Errno::last())
        };
        tracing::trace!("mlock({start:#x}, {len}) = {res:?}");
        match res {
            Ok(()) => locked += len,
            Err(e) => {
                tracing::debug!("the daemon's code stays pageable: mlock: {e}");
                break;
            }
        }
    }
    locked
}

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

    #[test]
    fn only_file_backed_read_only_mappings() {
        let maps = "\
55d0c0a00000-55d0c0b00000 r--p 00000000 fe:00 123 /usr/bin/unionfs
55d0c0b00000-55d0c0f00000 r-xp 00100000 fe:00 123 /usr/bin/unionfs
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000200000 r-xp 00028000 fe:00 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000300000-7f0000301000 r-xp 00000000 00:00 0 
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
";
        assert_eq!(
            executable_mappings(maps),
            vec![
                (0x55d0c0a00000, 0x55d0c0b00000),
                (0x55d0c0b00000, 0x55d0c0f00000),
                (0x7f0000000000, 0x7f0000200000)
            ]
        );
    }
}
