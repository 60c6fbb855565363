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
    /// What is at `path`: `None` when nothing is.
    fn kind(&self, path: &Path) -> SysResult<Option<Kind>>;
    /// The per-mount flags (MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC...)
    /// of the mount holding `path`: a remount must repeat the ones a user
    /// namespace locked.
    fn mount_flags(&self, path: &Path) -> SysResult<MsFlags>;
    /// prctl(PR_SET_NO_NEW_PRIVS, 1).
    fn set_no_new_privs(&self) -> SysResult<()>;
    /// prctl(PR_SET_DUMPABLE, 0): /proc/PID of this process (exe, mem,
    /// root, fd) and ptrace are closed to processes without
    /// CAP_SYS_PTRACE. An exec resets it, so the command is unaffected.
    fn set_not_dumpable(&self) -> SysResult<()>;
    /// seccomp(SECCOMP_SET_MODE_FILTER) with this program (no flags, so
    /// it does not set no_new_privs by itself).
    fn load_seccomp(&self, program: &[seccompiler::sock_filter]) -> SysResult<()>;
    /// prctl(PR_CAPBSET_DROP, cap).
    fn drop_bounding(&self, cap: caps::Capability) -> SysResult<()>;
    /// Sets the inheritable, effective and permitted sets to `keep`.
    fn set_caps(&self, keep: &[caps::Capability]) -> SysResult<()>;
    /// prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL).
    fn clear_ambient(&self) -> SysResult<()>;
}

/// What a path names, for choosing how to mask it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// Anything else.
    File,
}

fn caps_ctx(what: String, e: caps::errors::CapsError) -> SysError {
    // The caps crate keeps only the text; the errno is still the last one.
    let errno = match nix::errno::Errno::last() {
        nix::errno::Errno::UnknownErrno => nix::errno::Errno::EPERM,
        e => e,
    };
    SysError {
        what: format!("{what} ({e})"),
        errno,
    }
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
        // A mount point an image has as a symlink (`proc -> /proc`) would
        // send the mount wherever it points, outside the container's root,
        // and leave a loop inside: it is replaced by a directory.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(path)
                .map_err(|e| io_ctx(format!("replace symlink {}", path.display()), &e))?;
        }
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

    fn kind(&self, path: &Path) -> SysResult<Option<Kind>> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(Some(Kind::Dir)),
            Ok(_) => Ok(Some(Kind::File)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_ctx(format!("stat {}", path.display()), &e)),
        }
    }

    fn mount_flags(&self, path: &Path) -> SysResult<MsFlags> {
        use nix::sys::statvfs::FsFlags;
        let st = ctx(
            || format!("statvfs {}", path.display()),
            nix::sys::statvfs::statvfs(path),
        )?;
        let f = st.flags();
        let mut m = MsFlags::empty();
        for (fs, ms) in [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f.contains(fs) {
                m |= ms;
            }
        }
        Ok(m)
    }

    fn set_not_dumpable(&self) -> SysResult<()> {
        ctx(
            || "prctl(PR_SET_DUMPABLE, 0)".to_string(),
            nix::sys::prctl::set_dumpable(false),
        )
    }

    fn set_no_new_privs(&self) -> SysResult<()> {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if r != 0 {
            return Err(SysError {
                what: "prctl(PR_SET_NO_NEW_PRIVS)".into(),
                errno: nix::errno::Errno::last(),
            });
        }
        Ok(())
    }

    fn load_seccomp(&self, program: &[seccompiler::sock_filter]) -> SysResult<()> {
        let len = u16::try_from(program.len()).map_err(|_| SysError {
            what: format!("seccomp filter of {} instructions", program.len()),
            errno: nix::errno::Errno::E2BIG,
        })?;
        // seccompiler's sock_filter has the kernel's layout (code, jt, jf, k).
        let prog = libc::sock_fprog {
            len,
            filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut(),
        };
        // SAFETY: prog points to `len` valid instructions that outlive the
        // call; the kernel copies them and keeps no pointer.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(SysError {
                what: format!("seccomp(SET_MODE_FILTER, {len} instructions)"),
                errno: nix::errno::Errno::last(),
            });
        }
        Ok(())
    }

    fn drop_bounding(&self, cap: caps::Capability) -> SysResult<()> {
        // SAFETY: PR_CAPBSET_DROP takes integer arguments only.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_DROP,
                libc::c_ulong::from(cap.index()),
                0,
                0,
                0,
            )
        };
        match nix::errno::Errno::result(r) {
            Ok(_) => Ok(()),
            // Newer than this kernel (past cap_last_cap): nothing to drop.
            Err(nix::errno::Errno::EINVAL) => Ok(()),
            Err(errno) => Err(SysError {
                what: format!("drop {cap} from the bounding set"),
                errno,
            }),
        }
    }

    fn set_caps(&self, keep: &[caps::Capability]) -> SysResult<()> {
        let set: caps::CapsHashSet = keep.iter().copied().collect();
        // Inheritable first (it may not exceed permitted), then effective,
        // then permitted (effective may not exceed it).
        for cs in [
            caps::CapSet::Inheritable,
            caps::CapSet::Effective,
            caps::CapSet::Permitted,
        ] {
            caps::set(None, cs, &set)
                .map_err(|e| caps_ctx(format!("set {cs:?} capabilities"), e))?;
        }
        Ok(())
    }

    fn clear_ambient(&self) -> SysResult<()> {
        caps::clear(None, caps::CapSet::Ambient)
            .map_err(|e| caps_ctx("clear the ambient capabilities".into(), e))
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
    /// no_new_privs set.
    NoNewPrivs,
    /// Made not dumpable.
    NotDumpable,
    /// A seccomp program of this many instructions loaded.
    Seccomp(usize),
    /// A capability dropped from the bounding set.
    DropBounding(caps::Capability),
    /// Inheritable, effective and permitted set to these.
    SetCaps(Vec<caps::Capability>),
    /// Ambient set cleared.
    ClearAmbient,
}

/// A double that records every call and succeeds. Queries are not
/// recorded: `kind` answers `Dir` for `dirs`, nothing for `missing`, and
/// `File` otherwise; `mount_flags` answers `flags`.
#[derive(Debug, Default)]
pub struct Recorder {
    /// The calls, in order.
    pub calls: RefCell<Vec<Call>>,
    /// Paths `kind` calls directories.
    pub dirs: Vec<PathBuf>,
    /// Paths `kind` says do not exist.
    pub missing: Vec<PathBuf>,
    /// What `mount_flags` answers (none by default).
    pub flags: Option<MsFlags>,
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
    fn kind(&self, path: &Path) -> SysResult<Option<Kind>> {
        Ok(if self.missing.iter().any(|p| p == path) {
            None
        } else if self.dirs.iter().any(|p| p == path) {
            Some(Kind::Dir)
        } else {
            Some(Kind::File)
        })
    }
    fn mount_flags(&self, _path: &Path) -> SysResult<MsFlags> {
        Ok(self.flags.unwrap_or(MsFlags::empty()))
    }
    fn set_no_new_privs(&self) -> SysResult<()> {
        self.push(Call::NoNewPrivs)
    }
    fn set_not_dumpable(&self) -> SysResult<()> {
        self.push(Call::NotDumpable)
    }
    fn load_seccomp(&self, program: &[seccompiler::sock_filter]) -> SysResult<()> {
        self.push(Call::Seccomp(program.len()))
    }
    fn drop_bounding(&self, cap: caps::Capability) -> SysResult<()> {
        self.push(Call::DropBounding(cap))
    }
    fn set_caps(&self, keep: &[caps::Capability]) -> SysResult<()> {
        self.push(Call::SetCaps(keep.to_vec()))
    }
    fn clear_ambient(&self) -> SysResult<()> {
        self.push(Call::ClearAmbient)
    }
}

/// The part of `union bpf_attr` BPF_PROG_LOAD reads (the kernel zeroes
/// what a shorter attr leaves out).
#[repr(C)]
#[derive(Default)]
struct BpfProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// The part of `union bpf_attr` BPF_PROG_ATTACH reads.
#[repr(C)]
#[derive(Default)]
struct BpfProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// Loads a BPF_PROG_TYPE_CGROUP_DEVICE program (`insns`: 8-byte eBPF
/// instructions) and returns its fd.
pub fn bpf_load_device_program(insns: &[u8]) -> nix::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if insns.is_empty() || insns.len() % 8 != 0 {
        return Err(nix::errno::Errno::EINVAL);
    }
    let license = c"Apache-2.0";
    let attr = BpfProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(insns.len() / 8).map_err(|_| nix::errno::Errno::E2BIG)?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..BpfProgLoad::default()
    };
    // SAFETY: attr is a valid BPF_PROG_LOAD attr of the size passed; the
    // instruction and license buffers outlive the call, and the kernel
    // copies them.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const BpfProgLoad,
            std::mem::size_of::<BpfProgLoad>(),
        )
    };
    if fd < 0 {
        return Err(nix::errno::Errno::last());
    }
    let fd = i32::try_from(fd).map_err(|_| nix::errno::Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd, owned by no one else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Attaches device program `prog` to the v2 cgroup directory `cgroup`
/// (BPF_F_ALLOW_MULTI: programs of the ancestors still run, and all must
/// allow).
pub fn bpf_attach_device_program(
    cgroup: std::os::fd::BorrowedFd<'_>,
    prog: std::os::fd::BorrowedFd<'_>,
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = BpfProgAttach {
        target_fd: u32::try_from(cgroup.as_raw_fd()).map_err(|_| nix::errno::Errno::EBADF)?,
        attach_bpf_fd: u32::try_from(prog.as_raw_fd()).map_err(|_| nix::errno::Errno::EBADF)?,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    // SAFETY: attr is a valid BPF_PROG_ATTACH attr of the size passed,
    // naming two open fds.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const BpfProgAttach,
            std::mem::size_of::<BpfProgAttach>(),
        )
    };
    if r < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// Marks every fd from `first` up close-on-exec (close_range with
/// CLOSE_RANGE_CLOEXEC): fds the launcher's caller left open must not
/// reach the container's command (an fd of a host directory is a way out
/// of any root). The fds stay valid here, so nothing owning one is hurt.
pub fn cloexec_from(first: u32) -> nix::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on
    // open fds; it closes none and takes no pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
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

/// lsetxattr(2) on the entry `name` of the directory `dir`: the entry
/// itself, never what a symlink there points to. The path goes through
/// /proc/self/fd, so no path outside `dir` is looked up.
pub fn lsetxattr_at(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    key: &std::ffi::OsStr,
    value: &[u8],
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.as_bytes());
    let path = std::ffi::CString::new(path).map_err(|_| nix::errno::Errno::EINVAL)?;
    let key = std::ffi::CString::new(key.as_bytes()).map_err(|_| nix::errno::Errno::EINVAL)?;
    // SAFETY: path and key are NUL-terminated strings that outlive the
    // call; value points to value.len() readable bytes.
    let r = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_mount_point_becomes_a_directory() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap_or_else(|e| unreachable!("{e}"));
        let link = t.path().join("proc");
        std::os::unix::fs::symlink(&outside, &link).unwrap_or_else(|e| unreachable!("{e}"));
        Linux
            .mkdir_all(&link, 0o555)
            .unwrap_or_else(|e| unreachable!("{e}"));
        let m = std::fs::symlink_metadata(&link).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(m.is_dir() && !m.file_type().is_symlink());
        assert!(outside.is_dir(), "the link's target is left alone");
        // An existing directory stays as it is.
        Linux
            .mkdir_all(&link, 0o555)
            .unwrap_or_else(|e| unreachable!("{e}"));
    }
}
