//! Process-level syscalls for daemonizing. Takes no locks.

use std::os::fd::AsFd;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, Pid};

use super::traced;
use crate::error::Result;

/// Which side of a fork we are on.
pub enum Forked {
    /// The original process; the child has this pid.
    Parent(Pid),
    /// The new process.
    Child,
}

/// Forks the process.
///
/// Only call this while the process has a single thread (before the FUSE
/// event loops start): the child gets a copy of the calling thread alone.
pub fn fork() -> Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded here, so
    // the child cannot inherit locks held by other threads.
    let r = unsafe { nix::unistd::fork() };
    traced!("fork", (), r).map(|r| match r {
        ForkResult::Parent { child } => Forked::Parent(child),
        ForkResult::Child => Forked::Child,
    })
}

/// The two ends of a daemon's readiness pipe, made before the fork: the
/// child tells the parent it is ready to serve (`Ready::tell`), or closes
/// its end by dying first; the parent waits for either (`wait_ready`).
pub fn ready_pipe() -> Result<(std::os::fd::OwnedFd, Ready)> {
    let (r, w) = traced!("pipe2", (), nix::unistd::pipe2(OFlag::O_CLOEXEC))?;
    Ok((r, Ready(w)))
}

/// The child's end of the readiness pipe.
pub struct Ready(std::os::fd::OwnedFd);

impl Ready {
    /// Tells the parent the daemon is ready (and closes the pipe).
    pub fn tell(self) {
        let _ = traced!("write", "readiness", nix::unistd::write(&self.0, b"r"));
    }
}

/// Waits on the parent's end of the readiness pipe: true once the child
/// said it is ready, false if it ended (closing its end) without saying so.
pub fn wait_ready(r: std::os::fd::OwnedFd) -> bool {
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(&r, &mut b) {
            Ok(n) => return n == 1,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::debug!("read(readiness pipe) = {e}");
                return false;
            }
        }
    }
}

/// Detaches the daemon from its terminal and session, with stdin and
/// stdout on /dev/null and stderr (the log) on `log`, or /dev/null.
pub fn detach(log: Option<std::os::fd::OwnedFd>) -> Result<()> {
    traced!("setsid", (), nix::unistd::setsid())?;
    let null = traced!(
        "open",
        "/dev/null",
        nix::fcntl::open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
    )?;
    traced!("dup2", 0, nix::unistd::dup2_stdin(null.as_fd()))?;
    traced!("dup2", 1, nix::unistd::dup2_stdout(null.as_fd()))?;
    let err = log.as_ref().map_or(null.as_fd(), |l| l.as_fd());
    traced!("dup2", 2, nix::unistd::dup2_stderr(err))?;
    traced!("chdir", "/", nix::unistd::chdir("/"))?;
    Ok(())
}

/// Raises the soft fd limit to the hard limit (never above it) and
/// returns the limit in force.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

/// Grows the process's fd table to hold `n` descriptors now, so that it
/// need not grow while requests are served. The kernel grows the table by
/// doubling when an fd beyond it is allocated; in a process whose threads
/// share the table, each growth waits for an RCU grace period
/// (`expand_fdtable` calls `synchronize_rcu`), 10-13 ms measured on this
/// kind of VM, inside whichever request opened the fd. The table never
/// shrinks, so one descriptor duplicated to fd `n - 1` and closed again
/// leaves it grown; done while the process has one thread, it waits for
/// nothing. Kernel memory: 8 bytes per slot. Best effort: returns whether
/// the table holds `n` (false when `n` is above the fd limit).
pub fn reserve_fds(n: usize) -> bool {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let Some(last) = n.checked_sub(1).and_then(|l| i32::try_from(l).ok()) else {
        return false;
    };
    let stderr = std::io::stderr();
    let fd = stderr.as_fd();
    // F_DUPFD gives the lowest free fd at or above `last`: `last` itself,
    // as nothing is open that high yet.
    let res = traced!(
        "fcntl",
        (fd.as_raw_fd(), "F_DUPFD_CLOEXEC", last),
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(last))
    );
    match res {
        Ok(raw) => {
            // SAFETY: `raw` was just returned by F_DUPFD_CLOEXEC and is
            // owned by nothing else; the OwnedFd closes it at once.
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
            true
        }
        Err(_) => false,
    }
}

/// Gives memory the allocators hold but no longer use back to the system:
/// jemalloc's, which serves the Rust heap (`arena.4096.purge`, 4096 being
/// `MALLCTL_ARENAS_ALL`: every arena's unused pages, whichever threads
/// freed into them), and glibc's for what C code allocates
/// (`malloc_trim`). After the kernel forgot many inodes, the nodes' memory
/// is free but stays in the heap otherwise (a stat walk's daemon after
/// `drop_caches`: 18.0 MiB resident without the purge, 11.3 with it).
/// Best effort: a refusal is only traced.
pub fn trim_memory() {
    // SAFETY: mallctl with a NUL-terminated name and no buffers: the call
    // neither reads nor writes a value, it purges the arenas' own pages.
    let r = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    tracing::trace!("mallctl(arena.4096.purge) = {r}");
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Opens (creating, 0600) the daemon's log file for appending.
pub fn open_log(path: &std::path::Path) -> Result<std::os::fd::OwnedFd> {
    traced!(
        "open",
        path,
        nix::fcntl::open(
            path,
            OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600)
        )
    )
}
