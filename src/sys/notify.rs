//! inotify, for `udba=notify`: watches on branch directories held as fds.
//!
//! Invariant: a watch is added through the directory's fd (its
//! `/proc/self/fd` link), never through a path a branch could redirect, so
//! the watched inode is exactly the one the union serves.
//! Takes no locks.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify as NixInotify};

pub use nix::sys::inotify::{InotifyEvent, WatchDescriptor};

use crate::error::Result;
use crate::sys::traced;

/// The events that change what a directory shows: names coming and going,
/// and a child's content or attributes changing.
pub fn dir_events() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// An inotify instance (blocking reads).
#[derive(Debug)]
pub struct Inotify(NixInotify);

impl Inotify {
    /// A new instance, closed on exec.
    pub fn new() -> Result<Inotify> {
        traced!(
            "inotify_init1",
            "IN_CLOEXEC",
            NixInotify::init(InitFlags::IN_CLOEXEC)
        )
        .map(Inotify)
    }

    /// Watches the directory `dir` for `dir_events()`; the same inode
    /// watched twice gives the same descriptor.
    pub fn watch_dir(&self, dir: BorrowedFd<'_>) -> Result<WatchDescriptor> {
        let path = format!("/proc/self/fd/{}", dir.as_raw_fd());
        traced!(
            "inotify_add_watch",
            path,
            self.0.add_watch(path.as_str(), dir_events())
        )
    }

    /// Drops a watch (EINVAL when the kernel already dropped it).
    pub fn unwatch(&self, wd: WatchDescriptor) -> Result<()> {
        traced!("inotify_rm_watch", wd, self.0.rm_watch(wd))
    }

    /// Waits up to `timeout` (`None`: for ever) for events to read;
    /// false when the time ran out first (or a signal came).
    pub fn wait(&self, timeout: Option<std::time::Duration>) -> Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        // Rounded up, so a wait for 0.4 ms does not spin at 0 ms.
        let ms = timeout.map(|t| {
            let ms = t
                .as_millis()
                .saturating_add(u128::from(t.subsec_nanos() % 1_000_000 != 0));
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        });
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        match traced!(
            "poll(inotify)",
            ms,
            poll(&mut fds, ms.unwrap_or(PollTimeout::NONE))
        ) {
            Ok(n) => Ok(n > 0),
            Err(e) if e.errno() == nix::errno::Errno::EINTR => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Returns the events queued (waits for one when none is).
    pub fn read(&self) -> Result<Vec<InotifyEvent>> {
        traced!("read(inotify)", (), self.0.read_events())
    }
}
