//! Reporting branch faults: one log line per distinct fault, not one per
//! request.
//!
//! A failing branch (a disk returning EIO, a network filesystem gone stale,
//! a FUSE lower whose daemon died) fails every request that touches the
//! object, and the kernel retries reads page by page: logging each failure
//! would flood the log and hide the one line that matters. A *fault* is a
//! branch syscall failing with an errno that says the branch is unwell
//! (`is_fault`); ordinary answers (ENOENT, EACCES, ENOSPC, ...) are the
//! caller's business and never logged here.
//!
//! Invariant: a fault is logged (at `warn`) the first time its key —
//! (operation, union inode, failing syscall, errno) — is seen, and never
//! again while the key is remembered; at most `MAX_KEYS` keys are
//! remembered (so memory is bounded whatever a branch does), and once they
//! are all taken one line says that further new faults go unlogged.
//! Repeats are counted (`FaultLog::count`) for tests and diagnostics.
//!
//! Locks: one `Mutex` around the key table, held for one lookup or insert;
//! never across a syscall or while logging.

use std::collections::HashMap;

use nix::errno::Errno;
use parking_lot::Mutex;

use crate::error::Error;

/// Most distinct faults remembered (and logged).
pub const MAX_KEYS: usize = 1024;

/// What makes two faults the same fault.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FaultKey {
    /// The union operation (FUSE request) that met the fault.
    pub op: &'static str,
    /// The union inode it was about.
    pub ino: u64,
    /// The branch syscall that failed.
    pub syscall: &'static str,
    /// Its errno (raw: `Errno` is not `Hash`).
    pub errno: i32,
}

/// Errnos that mean "this branch is failing", not "this request is wrong".
pub fn is_fault(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EIO
            | Errno::ESTALE
            | Errno::ENOTCONN
            | Errno::ENODEV
            | Errno::ENXIO
            | Errno::EUCLEAN
            | Errno::EBADMSG
            | Errno::ENOMEDIUM
            | Errno::EREMOTEIO
            | Errno::ECONNABORTED
    )
}

/// The key of `e` met by `op` on inode `ino`, when it is a branch fault.
pub fn fault_key(op: &'static str, ino: u64, e: &Error) -> Option<FaultKey> {
    match e {
        // Layers the union cannot serve as they are (hostile or corrupt
        // markers): as much a fault of the branch as an EIO.
        Error::MetacopyWithoutData | Error::RedirectsTooDeep => Some(FaultKey {
            op,
            ino,
            syscall: "union layers",
            errno: e.errno() as i32,
        }),
        Error::Sys { op: syscall, errno } if is_fault(*errno) => Some(FaultKey {
            op,
            ino,
            syscall,
            errno: *errno as i32,
        }),
        _ => None,
    }
}

/// What `FaultLog::note` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// Not a fault: nothing recorded.
    NotAFault,
    /// A new fault: log it.
    New,
    /// Seen before: counted only.
    Repeat,
    /// A new fault, but the table is full: the first of these logs that.
    Overflow {
        /// True for the first fault that found the table full.
        first: bool,
    },
}

/// The table of faults seen (bounded).
#[derive(Debug, Default)]
pub struct FaultLog {
    seen: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    counts: HashMap<FaultKey, u64>,
    overflowed: bool,
}

impl FaultLog {
    /// Records `key` and says whether it is to be logged.
    pub fn note(&self, key: Option<&FaultKey>) -> Noted {
        let Some(key) = key else {
            return Noted::NotAFault;
        };
        let mut t = self.seen.lock();
        if let Some(n) = t.counts.get_mut(key) {
            *n += 1;
            return Noted::Repeat;
        }
        if t.counts.len() >= MAX_KEYS {
            let first = !t.overflowed;
            t.overflowed = true;
            return Noted::Overflow { first };
        }
        t.counts.insert(key.clone(), 1);
        Noted::New
    }

    /// How often `key` was met (0: never, or not remembered).
    pub fn count(&self, key: &FaultKey) -> u64 {
        self.seen.lock().counts.get(key).copied().unwrap_or(0)
    }

    /// Number of distinct faults remembered.
    pub fn distinct(&self) -> usize {
        self.seen.lock().counts.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Union rules are the union's decisions, not a branch failing.
    #[test]
    fn union_rules_are_not_faults() {
        for e in [
            Error::NotEmpty,
            Error::Exists,
            Error::LinkDir,
            Error::NameTooLong,
            Error::Reserved,
            Error::Unnamed,
        ] {
            assert_eq!(fault_key("rmdir", 7, &e), None, "{e}");
        }
    }

    #[test]
    fn one_line_per_distinct_fault() {
        let log = FaultLog::default();
        let eio = Error::sys("pread", Errno::EIO);
        let k = fault_key("read", 7, &eio);
        assert_eq!(log.note(k.as_ref()), Noted::New);
        for _ in 0..100 {
            assert_eq!(log.note(k.as_ref()), Noted::Repeat);
        }
        assert_eq!(log.count(k.as_ref().unwrap()), 101);
        // Another inode, another syscall, another errno: each its own fault.
        let k2 = fault_key("read", 8, &eio);
        assert_eq!(log.note(k2.as_ref()), Noted::New);
        let k3 = fault_key("readdir", 7, &Error::sys("getdents", Errno::EIO));
        assert_eq!(log.note(k3.as_ref()), Noted::New);
        let k4 = fault_key("read", 7, &Error::sys("pread", Errno::ESTALE));
        assert_eq!(log.note(k4.as_ref()), Noted::New);
        assert_eq!(log.distinct(), 4);
    }

    #[test]
    fn ordinary_errors_are_not_faults() {
        let log = FaultLog::default();
        for e in [
            Error::NotFound,
            Error::StaleInode,
            Error::sys("openat", Errno::ENOENT),
            Error::sys("write", Errno::ENOSPC),
            Error::sys("openat", Errno::EACCES),
        ] {
            assert_eq!(
                log.note(fault_key("lookup", 1, &e).as_ref()),
                Noted::NotAFault
            );
        }
        assert_eq!(log.distinct(), 0);
    }

    #[test]
    fn the_table_is_bounded() {
        let log = FaultLog::default();
        let eio = Error::sys("pread", Errno::EIO);
        for i in 0..MAX_KEYS as u64 {
            assert_eq!(log.note(fault_key("read", i, &eio).as_ref()), Noted::New);
        }
        let over = |i: u64| log.note(fault_key("read", i, &eio).as_ref());
        assert_eq!(over(1 << 40), Noted::Overflow { first: true });
        assert_eq!(over((1 << 40) + 1), Noted::Overflow { first: false });
        assert_eq!(over(3), Noted::Repeat);
        assert_eq!(log.distinct(), MAX_KEYS);
    }
}
