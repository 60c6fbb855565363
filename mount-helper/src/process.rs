//! Processes: the container's init (pid 1 of its pid namespace: set up the
//! root, start the command, reap zombies, forward signals, return the
//! command's status) and the launcher's own wait for it.
//!
//! Invariant: the forwarded signals are blocked in the launcher and in init
//! and taken with `sigwaitinfo`, so none is lost or acted on twice: only
//! signals sent by a process (si_code <= 0) are forwarded; those the
//! terminal sends reach the command directly. The command starts with an
//! empty signal mask. Exit statuses: the command's code, 128+n for signal
//! n, 126 not executable, 127 not found, 125 for the launcher's failure.
//! Takes no locks.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::confine::Plan;
use crate::spec::ContainerSpec;
use crate::sys::{self, SysResult, Syscall};

/// Exit status for the launcher's own failure.
pub const EXIT_LAUNCHER: i32 = 125;
/// Exit status when the command cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit status when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Signals forwarded to the command.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The search path inside the container.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The signals the launcher and init take synchronously.
pub fn waited_signals() -> SigSet {
    let mut s = SigSet::empty();
    s.add(Signal::SIGCHLD);
    for sig in FORWARDED {
        s.add(sig);
    }
    s
}

/// The shell-style status of a wait result.
pub fn status_code(ws: WaitStatus) -> Option<i32> {
    match ws {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    }
}

/// Waits for `child`, forwarding signals sent to us; returns its status.
pub fn wait_forwarding(child: Pid, set: &SigSet) -> i32 {
    loop {
        // Reap first: the child may be gone before we wait for a signal.
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(ws) => {
                if let Some(c) = status_code(ws) {
                    return c;
                }
            }
            Err(Errno::ECHILD) => return EXIT_LAUNCHER,
            Err(_) => {}
        }
        let Ok(info) = sigwaitinfo(set) else {
            continue;
        };
        if info.si_signo == libc::SIGCHLD {
            continue;
        }
        if info.si_code <= 0 {
            if let Ok(sig) = Signal::try_from(info.si_signo) {
                let _ = kill(child, sig);
            }
        }
    }
}

fn sigwaitinfo(set: &SigSet) -> nix::Result<libc::siginfo_t> {
    sys::sigwaitinfo(set)
}

/// The environment of the command.
pub fn command_env(spec: &ContainerSpec) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), PATH.into()),
        ("HOSTNAME".into(), spec.hostname.clone()),
        (
            "HOME".into(),
            if spec.user.is_some_and(|(u, _)| u != 0) {
                "/".into()
            } else {
                "/root".into()
            },
        ),
        ("container".into(), "unionfs-run".into()),
    ];
    if let Ok(t) = std::env::var("TERM") {
        env.push(("TERM".into(), t));
    }
    for (k, v) in &spec.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// Finds `argv0` along the container's PATH (inside the new root).
pub fn resolve(argv0: &str, path: &str) -> Result<PathBuf, i32> {
    if argv0.contains('/') {
        return Ok(PathBuf::from(argv0));
    }
    let mut denied = false;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(argv0);
        match nix::unistd::access(&p, nix::unistd::AccessFlags::X_OK) {
            Ok(()) if !p.is_dir() => return Ok(p),
            Err(Errno::EACCES) => denied = true,
            _ => {}
        }
    }
    Err(if denied {
        EXIT_NOT_EXECUTABLE
    } else {
        EXIT_NOT_FOUND
    })
}

fn exec_error_code(e: Errno) -> i32 {
    match e {
        Errno::ENOENT | Errno::ENOTDIR => EXIT_NOT_FOUND,
        _ => EXIT_NOT_EXECUTABLE,
    }
}

/// Runs in the forked command process: drop privileges, exec. Never returns.
fn exec_command(spec: &ContainerSpec, env: &[(String, String)], err_pipe: OwnedFd) -> ! {
    let fail = |code: i32, errno: Errno| -> ! {
        let mut f =
            std::fs::File::from(err_pipe.try_clone().unwrap_or_else(|_| sys::exit_now(code)));
        let _ = f.write_all(&[code as u8, (errno as i32).to_le_bytes()[0]]);
        sys::exit_now(code)
    };
    let _ = SigSet::empty().thread_set_mask();
    if let Some((uid, gid)) = spec.user {
        let g = nix::unistd::Gid::from_raw(gid);
        if let Err(e) = nix::unistd::setgroups(&[g])
            .and_then(|_| nix::unistd::setgid(g))
            .and_then(|_| nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)))
        {
            fail(EXIT_LAUNCHER, e);
        }
    }
    let path = match resolve(&spec.argv[0], PATH) {
        Ok(p) => p,
        Err(code) => fail(code, Errno::ENOENT),
    };
    let Ok(cpath) = CString::new(path.as_os_str().as_bytes()) else {
        fail(EXIT_NOT_FOUND, Errno::EINVAL)
    };
    let args: Vec<CString> = spec
        .argv
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let envs: Vec<CString> = env
        .iter()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();
    let e = nix::unistd::execve(&cpath, &args, &envs)
        .err()
        .unwrap_or(Errno::EINVAL);
    fail(exec_error_code(e), e)
}

/// Everything init does to itself between joining its cgroup and starting
/// the command, in this order: the namespaces, the mounts and pivot_root
/// (`rootfs`), then the confinement (`confine`: masks, no_new_privs,
/// seccomp, capabilities). The command, forked after, inherits all of it.
pub fn setup(sys: &dyn Syscall, spec: &ContainerSpec, root: &Path, plan: &Plan) -> SysResult<()> {
    sys.unshare(crate::ns::init_namespaces(spec.net))?;
    crate::rootfs::enter(sys, root, &spec.hostname, spec.net, &spec.security)?;
    crate::confine::apply(sys, plan)
}

/// The container's init: pid 1 of the new pid namespace. Sets up the root
/// at `root`, runs the command, and exits with its status. Never returns.
pub fn init(spec: &ContainerSpec, root: &Path, plan: &Plan, go: OwnedFd) -> ! {
    // The container dies with its launcher (SIGKILL included): nothing
    // would reap, forward to or tear down an orphan; the kernel then ends
    // the whole pid namespace with init.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() {
        sys::exit_now(EXIT_LAUNCHER);
    }
    // Wait until the launcher has put us in the cgroup.
    let mut b = [0u8; 1];
    let mut go = std::fs::File::from(go);
    if go.read_exact(&mut b).is_err() {
        sys::exit_now(EXIT_LAUNCHER);
    }
    // The launcher keeps its end open while it lives: end of file now
    // means it died before the death signal was set, which then never comes.
    if launcher_gone(&go) {
        sys::exit_now(EXIT_LAUNCHER);
    }
    drop(go);
    // Nothing the launcher's caller left open reaches the command.
    if let Err(e) = sys::cloexec_from(3) {
        eprintln!("unionfs-run: cannot mark inherited fds close-on-exec: {e}");
        sys::exit_now(EXIT_LAUNCHER);
    }
    let set = waited_signals();
    if let Err(e) = setup(&sys::Linux, spec, root, plan) {
        eprintln!("unionfs-run: cannot set up the container: {e}");
        sys::exit_now(EXIT_LAUNCHER);
    }
    if let Some(w) = &spec.workdir {
        // As docker does, a missing working directory is made.
        let _ = std::fs::create_dir_all(w);
        if let Err(e) = nix::unistd::chdir(w) {
            eprintln!("unionfs-run: working directory {}: {e}", w.display());
            sys::exit_now(EXIT_LAUNCHER);
        }
    }
    let env = command_env(spec);
    let Ok((rd, wr)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        sys::exit_now(EXIT_LAUNCHER);
    };
    let cmd = match sys::fork() {
        Ok(ForkResult::Child) => {
            drop(rd);
            exec_command(spec, &env, wr)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            eprintln!("unionfs-run: cannot start the command: {e}");
            sys::exit_now(EXIT_LAUNCHER);
        }
    };
    drop(wr);
    // The pipe closes on a successful exec; bytes mean exec failed.
    let mut why = [0u8; 2];
    let mut rd = std::fs::File::from(rd);
    if rd.read_exact(&mut why).is_ok() {
        let _ = waitpid(cmd, None);
        let code = i32::from(why[0]);
        let what = if code == EXIT_NOT_FOUND {
            "command not found"
        } else {
            "command cannot be executed"
        };
        eprintln!("unionfs-run: {}: {what}", spec.argv[0]);
        sys::exit_now(code);
    }
    // pid 1 duties: reap every child, forward signals, exit with the
    // command's status (the kernel then ends the rest of the namespace).
    loop {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) => {
                    if ws.pid() == Some(cmd) {
                        if let Some(c) = status_code(ws) {
                            sys::exit_now(c);
                        }
                    }
                }
            }
        }
        let Ok(info) = sigwaitinfo(&set) else {
            continue;
        };
        if info.si_signo != libc::SIGCHLD && info.si_code <= 0 {
            if let Ok(sig) = Signal::try_from(info.si_signo) {
                let _ = kill(cmd, sig);
            }
        }
    }
}

/// Whether the writer of the pipe `go` has closed it (end of file), read
/// without blocking.
fn launcher_gone(go: &std::fs::File) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if fcntl(go, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    matches!(nix::unistd::read(go, &mut b), Ok(0))
}

/// Maps the caller to root in a new user namespace (rootless).
pub fn enter_user_namespace(uid: u32, gid: u32) -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(|e| {
        format!("user namespaces are not available to uid {uid} ({e}); run as root, or enable them (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone)")
    })?;
    let w = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(|e| format!("cannot write /proc/self/{file}: {e}"))
    };
    w("setgroups", "deny".into())?;
    w("uid_map", format!("0 {uid} 1"))?;
    w("gid_map", format!("0 {gid} 1"))
}

/// Rootless: a relay process enters a user namespace (caller -> root),
/// then a pid namespace, and forks init; it forwards signals to init and
/// exits with its status. Never returns.
pub fn rootless_relay(
    spec: &ContainerSpec,
    root: &Path,
    plan: &Plan,
    uid: u32,
    gid: u32,
    launcher: Pid,
) -> ! {
    let set = waited_signals();
    // Dies with the launcher (and init with it, see `init`); a launcher
    // already gone shows as another parent.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err()
        || nix::unistd::getppid() != launcher
    {
        sys::exit_now(EXIT_LAUNCHER);
    }
    if let Err(e) = enter_user_namespace(uid, gid).and_then(|()| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
            .map_err(|e| format!("cannot create a pid namespace: {e}"))
    }) {
        eprintln!("unionfs-run: {e}");
        sys::exit_now(EXIT_LAUNCHER);
    }
    let Ok((go_rd, go_wr)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        sys::exit_now(EXIT_LAUNCHER);
    };
    let init_pid = match sys::fork() {
        Ok(ForkResult::Child) => {
            drop(go_wr);
            init(spec, root, plan, go_rd)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            eprintln!("unionfs-run: cannot fork: {e}");
            sys::exit_now(EXIT_LAUNCHER);
        }
    };
    drop(go_rd);
    // Open until init ends (see `init`).
    let mut go = std::fs::File::from(go_wr);
    let _ = go.write_all(b"g");
    let code = wait_forwarding(init_pid, &set);
    drop(go);
    sys::exit_now(code)
}

/// Blocks the waited signals in this thread (and so in children forked after).
pub fn block_signals() -> nix::Result<SigSet> {
    let set = waited_signals();
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use nix::mount::MsFlags;

    use super::*;

    #[test]
    fn statuses() {
        let p = Pid::from_raw(1);
        assert_eq!(status_code(WaitStatus::Exited(p, 3)), Some(3));
        assert_eq!(
            status_code(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(status_code(WaitStatus::StillAlive), None);
        assert_eq!(exec_error_code(Errno::ENOENT), 127);
        assert_eq!(exec_error_code(Errno::EACCES), 126);
        assert_eq!(exec_error_code(Errno::ENOEXEC), 126);
    }

    /// The whole recorded sequence of a default container: namespaces,
    /// mounts, pivot_root, then masks, seccomp and capabilities, last.
    #[test]
    fn setup_sequence_confines_after_pivot_root() {
        use crate::sys::{Call, Recorder};
        let spec = crate::spec::RawSpec {
            argv: vec!["true".into()],
            security_opt: vec!["no-new-privileges".into()],
            ..crate::spec::RawSpec::default()
        }
        .validate("box".into())
        .unwrap_or_else(|e| unreachable!("{e}"));
        let plan = Plan::new(&spec.security).unwrap_or_else(|e| unreachable!("{e}"));
        let r = Recorder::default();
        setup(&r, &spec, Path::new("/run/c/root"), &plan).unwrap_or_else(|e| unreachable!("{e}"));
        let calls = r.calls.into_inner();
        let pos = |f: &dyn Fn(&Call) -> bool| calls.iter().position(f);
        let unshare = pos(&|c| matches!(c, Call::Unshare(_)));
        let pivot = pos(&|c| matches!(c, Call::PivotRoot(..)));
        let detach = pos(&|c| matches!(c, Call::Umount(p, _) if p == Path::new(".")));
        let not_dumpable = pos(&|c| *c == Call::NotDumpable);
        assert!(detach < not_dumpable, "init is hidden once in its root");
        let first_mask = pos(&|c| {
            matches!(c, Call::Mount(Some(s), p, ..)
            if s == "/dev/null" && p.starts_with("/proc"))
        });
        let sysctl_ro = pos(&|c| {
            matches!(c, Call::Mount(None, p, None, f, None)
            if p == Path::new("/proc/sys") && f.contains(MsFlags::MS_RDONLY))
        });
        let nnp = pos(&|c| *c == Call::NoNewPrivs);
        let seccomp: Vec<usize> = calls
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c, Call::Seccomp(_)))
            .map(|(i, _)| i)
            .collect();
        let first_cap = pos(&|c| matches!(c, Call::DropBounding(_)));
        let set_caps = pos(&|c| matches!(c, Call::SetCaps(_)));
        assert_eq!(unshare, Some(0));
        for (a, b, what) in [
            (pivot, detach, "pivot_root, then detach the old root"),
            (detach, first_mask, "masks after the pivot"),
            (first_mask, sysctl_ro, "read-only paths after the masks"),
            (sysctl_ro, nnp, "no_new_privs after the mounts"),
            (nnp, seccomp.first().copied(), "seccomp after no_new_privs"),
            (
                seccomp.last().copied(),
                first_cap,
                "capabilities after seccomp",
            ),
            (first_cap, set_caps, "bounding set before the others"),
        ] {
            assert!(a.is_some() && b.is_some() && a < b, "{what}: {calls:?}");
        }
        assert_eq!(seccomp.len(), 2, "allow-list, then the ENOSYS filter");
        assert_eq!(calls.last(), Some(&Call::ClearAmbient));
        // Nothing mounts after the confinement starts.
        assert!(!calls[nnp.unwrap_or(0)..]
            .iter()
            .any(|c| matches!(c, Call::Mount(..) | Call::Umount(..) | Call::Unshare(_))));
    }

    #[test]
    fn resolve_along_path() {
        assert_eq!(resolve("/x/y", PATH), Ok(PathBuf::from("/x/y")));
        assert_eq!(resolve("sh", "/bin:/usr/bin"), Ok(PathBuf::from("/bin/sh")));
        assert_eq!(resolve("no-such-command-here", "/bin"), Err(127));
    }
}
