//! The system calls that set up a container root, behind a trait so the
//! exact sequence can be recorded and checked in unit tests.
//!
//! Invariant: `Linux` is the only implementation that touches the system
//! and the only place in this crate with `unsafe`; `Recorder` only records.
//! Takes no locks (the recorder's log sits behind a `RefCell`, one thread).

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// Result of a setup step: the errno and what was being done.
pub type SysResult<T> = Result<T, SysError>;

/// A failed setup syscall.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{what}: {errno}")]
pub struct SysError {
    /// The step, with its arguments.
    pub what: String,
    /// The errno.
    pub errno: nix::errno::Errno,
}

fn ctx<T>(what: impl FnOnce() -> String, r: nix::Result<T>) -> SysResult<T> {
    r.map_err(|errno| SysError {
        what: what(),
        errno,
    })
}

fn io_ctx(what: String, e: &std::io::Error) -> SysError {
    SysError {
        what,
        errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// The syscalls container setup needs.
pub trait Syscall {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()>;
    /// umount2(2).
    fn umount(&self, target: &Path, flags: MntFlags) -> SysResult<()>;
    /// mkdir -p.
    fn mkdir_all(&self, path: &Path, mode: u32) -> SysResult<()>;
    /// Creates an empty regular file if missing (a bind-mount target).
    fn touch(&self, path: &Path) -> SysResult<()>;
    /// symlink(2); an existing link is left alone.
    fn symlink(&self, target: &str, link: &Path) -> SysResult<()>;
    /// pivot_root(2).
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> SysResult<()>;
    /// unshare(2).
    fn unshare(&self, flags: CloneFlags) -> SysResult<()>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> SysResult<()>;
    /// Brings the loopback interface up (in the current network namespace).
    fn loopback_up(&self) -> SysResult<()>;
}

/// The real thing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Linux;

impl Syscall for Linux {
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()> {
        ctx(
            || {
                format!(
                    "mount {source:?} on {} ({fstype:?}, {flags:?})",
                    target.display()
                )
            },
            nix::mount::mount(source, target, fstype, flags, data),
        )
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> SysResult<()> {
        ctx(
            || format!("umount {}", target.display()),
            nix::mount::umount2(target, flags),
        )
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> SysResult<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| io_ctx(format!("mkdir {}", path.display()), &e))
    }

    fn touch(&self, path: &Path) -> SysResult<()> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(|_| ())
            .map_err(|e| io_ctx(format!("create {}", path.display()), &e))
    }

    fn symlink(&self, target: &str, link: &Path) -> SysResult<()> {
        match std::os::unix::fs::symlink(target, link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_ctx(format!("symlink {}", link.display()), &e)),
        }
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()> {
        ctx(
            || format!("pivot_root {}", new_root.display()),
            nix::unistd::pivot_root(new_root, put_old),
        )
    }

    fn chdir(&self, path: &Path) -> SysResult<()> {
        ctx(
            || format!("chdir {}", path.display()),
            nix::unistd::chdir(path),
        )
    }

    fn unshare(&self, flags: CloneFlags) -> SysResult<()> {
        ctx(|| format!("unshare {flags:?}"), nix::sched::unshare(flags))
    }

    fn sethostname(&self, name: &str) -> SysResult<()> {
        ctx(
            || format!("sethostname {name}"),
            nix::unistd::sethostname(name),
        )
    }

    fn loopback_up(&self) -> SysResult<()> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        let sock = ctx(
            || "socket for lo".to_string(),
            socket(
                AddressFamily::Inet,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                None,
            ),
        )?;
        // SAFETY: ifreq is plain data; zeroed is a valid value for it.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        // SAFETY: fd is an open socket; req is a valid ifreq naming "lo".
        let r = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) };
        if r < 0 {
            return Err(SysError {
                what: "SIOCGIFFLAGS lo".into(),
                errno: nix::errno::Errno::last(),
            });
        }
        // SAFETY: the union member written by SIOCGIFFLAGS is ifru_flags.
        unsafe {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        }
        // SAFETY: as above, with the updated flags.
        let r = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) };
        if r < 0 {
            return Err(SysError {
                what: "SIOCSIFFLAGS lo".into(),
                errno: nix::errno::Errno::last(),
            });
        }
        Ok(())
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// mount(source, target, fstype, flags, data).
    Mount(
        Option<String>,
        PathBuf,
        Option<String>,
        MsFlags,
        Option<String>,
    ),
    /// umount2.
    Umount(PathBuf, MntFlags),
    /// mkdir -p.
    Mkdir(PathBuf),
    /// touch.
    Touch(PathBuf),
    /// symlink(target, link).
    Symlink(String, PathBuf),
    /// pivot_root.
    PivotRoot(PathBuf, PathBuf),
    /// chdir.
    Chdir(PathBuf),
    /// unshare.
    Unshare(CloneFlags),
    /// sethostname.
    Hostname(String),
    /// lo up.
    LoopbackUp,
}

/// A double that records every call and succeeds.
#[derive(Debug, Default)]
pub struct Recorder {
    /// The calls, in order.
    pub calls: RefCell<Vec<Call>>,
}

impl Recorder {
    fn push(&self, c: Call) -> SysResult<()> {
        self.calls.borrow_mut().push(c);
        Ok(())
    }
}

impl Syscall for Recorder {
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()> {
        self.push(Call::Mount(
            source.map(str::to_string),
            target.to_path_buf(),
            fstype.map(str::to_string),
            flags,
            data.map(str::to_string),
        ))
    }
    fn umount(&self, target: &Path, flags: MntFlags) -> SysResult<()> {
        self.push(Call::Umount(target.to_path_buf(), flags))
    }
    fn mkdir_all(&self, path: &Path, _mode: u32) -> SysResult<()> {
        self.push(Call::Mkdir(path.to_path_buf()))
    }
    fn touch(&self, path: &Path) -> SysResult<()> {
        self.push(Call::Touch(path.to_path_buf()))
    }
    fn symlink(&self, target: &str, link: &Path) -> SysResult<()> {
        self.push(Call::Symlink(target.to_string(), link.to_path_buf()))
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()> {
        self.push(Call::PivotRoot(
            new_root.to_path_buf(),
            put_old.to_path_buf(),
        ))
    }
    fn chdir(&self, path: &Path) -> SysResult<()> {
        self.push(Call::Chdir(path.to_path_buf()))
    }
    fn unshare(&self, flags: CloneFlags) -> SysResult<()> {
        self.push(Call::Unshare(flags))
    }
    fn sethostname(&self, name: &str) -> SysResult<()> {
        self.push(Call::Hostname(name.to_string()))
    }
    fn loopback_up(&self) -> SysResult<()> {
        self.push(Call::LoopbackUp)
    }
}

/// fork(2). Call only while the process has one thread.
pub fn fork() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: the launcher and its init are single-threaded when they fork,
    // so the child cannot inherit a lock held by another thread.
    unsafe { nix::unistd::fork() }
}

/// Leaves the process at once with `code`, without running destructors
/// or atexit handlers (for a forked child whose exec failed).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// sigwaitinfo(2): takes one of the (blocked) signals in `set`.
pub fn sigwaitinfo(set: &nix::sys::signal::SigSet) -> nix::Result<libc::siginfo_t> {
    let raw: &libc::sigset_t = set.as_ref();
    // SAFETY: siginfo_t is plain data, so zeroed is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: raw points to a valid sigset; info is a valid out pointer.
    let r = unsafe { libc::sigwaitinfo(raw, &mut info) };
    if r < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(info)
    }
}
