//! Keeping the daemon's own machine code in memory.
//!
//! A filesystem daemon whose code was paged out (memory pressure, a
//! `drop_caches`) makes the first requests after it wait on the disk for
//! the daemon itself — several reads of its executable, 1-2 ms each on a
//! busy disk: most of what a cold first write to a lower file cost (the
//! kernel's overlayfs has no such wait). So the executable mappings of
//! the process and the read-only data beside them (its own and its
//! libraries', a few MiB) are locked with `mlock`; data, heap and stacks
//! are not (a locked heap could not be given back by
//! `process::trim_memory`). Best effort: where the lock is refused (an
//! unprivileged daemon's RLIMIT_MEMLOCK), nothing changes. Locks are not
//! inherited across fork: call it in the process that serves.
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

#[cfg(test)]
mod tests {
    use super::*;

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
