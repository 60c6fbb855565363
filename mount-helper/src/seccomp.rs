//! The container's seccomp filter: docker's default profile (an allow-list;
//! every other system call fails with EPERM; architecture checked), with
//! its capability-dependent rules, built by `seccompiler` and loaded by
//! `Syscall::load_seccomp`.
//!
//! Invariant: `programs` is the only place that decides which system calls
//! a container may make. Its first program allows exactly the profile's
//! calls for the kept capabilities; its second, loaded after it, answers
//! ENOSYS (not EPERM) for `clone3` without CAP_SYS_ADMIN and for numbers
//! newer than the profile knows, so C libraries fall back to the calls
//! they had before, as they do under docker. The kernel runs both and
//! keeps the most restrictive answer (the later filter on a tie).
//! A call from another ABI (i386 on x86_64) kills the process: stricter
//! than docker, which allows the 32-bit ABI with the same list. Also
//! stricter: `ioctl` is refused for TIOCSTI and TIOCLINUX, since the
//! command shares the caller's terminal (docs/SECURITY.md).
//! Takes no locks.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::capabilities::Capability;

/// A filter that cannot be built (a bug, or an unsupported architecture).
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// No profile for this machine.
    #[error("no seccomp profile for {0} (only x86_64 and aarch64); run with --security-opt seccomp=unconfined")]
    Arch(String),
    /// seccompiler refused the rules.
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
}

/// Calls allowed whatever the capabilities: docker's unconditional list
/// (ptrace and process_vm_* included: kernels since 4.8 check them against
/// the pid namespace and capabilities; io_uring left out, as moby has done
/// since 25.0: its rings run calls this filter never sees), and the calls
/// later moby releases added (fchmodat2, cachestat, map_shadow_stack, the
/// futex2 calls).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const ALWAYS: &[i64] = &[
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_adjtimex,
    libc::SYS_bind,
    libc::SYS_brk,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_chdir,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_getres,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_connect,
    libc::SYS_copy_file_range,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fadvise64,
    libc::SYS_fallocate,
    libc::SYS_fanotify_mark,
    libc::SYS_fchdir,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
    libc::SYS_flock,
    libc::SYS_fremovexattr,
    libc::SYS_fsetxattr,
    libc::SYS_fstat,
    libc::SYS_fstatfs,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_futex,
    libc::SYS_futex_waitv,
    libc::SYS_get_robust_list,
    libc::SYS_getcpu,
    libc::SYS_getcwd,
    libc::SYS_getdents64,
    libc::SYS_getegid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getgroups,
    libc::SYS_getitimer,
    libc::SYS_getpeername,
    libc::SYS_getpgid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getpriority,
    libc::SYS_getrandom,
    libc::SYS_getresgid,
    libc::SYS_getresuid,
    libc::SYS_getrlimit,
    libc::SYS_getrusage,
    libc::SYS_getsid,
    libc::SYS_getsockname,
    libc::SYS_getsockopt,
    libc::SYS_gettid,
    libc::SYS_gettimeofday,
    libc::SYS_getuid,
    libc::SYS_getxattr,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_rm_watch,
    libc::SYS_io_cancel,
    libc::SYS_io_destroy,
    libc::SYS_io_getevents,
    libc::SYS_io_setup,
    libc::SYS_io_submit,
    libc::SYS_ioprio_get,
    libc::SYS_ioprio_set,
    libc::SYS_kill,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_restrict_self,
    libc::SYS_lgetxattr,
    libc::SYS_linkat,
    libc::SYS_listen,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_lremovexattr,
    libc::SYS_lseek,
    libc::SYS_lsetxattr,
    libc::SYS_madvise,
    libc::SYS_membarrier,
    libc::SYS_memfd_create,
    libc::SYS_memfd_secret,
    libc::SYS_mincore,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_mlockall,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mq_getsetattr,
    libc::SYS_mq_notify,
    libc::SYS_mq_open,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_unlink,
    libc::SYS_mremap,
    libc::SYS_msgctl,
    libc::SYS_msgget,
    libc::SYS_msgrcv,
    libc::SYS_msgsnd,
    libc::SYS_msync,
    libc::SYS_munlock,
    libc::SYS_munlockall,
    libc::SYS_munmap,
    libc::SYS_name_to_handle_at,
    libc::SYS_nanosleep,
    libc::SYS_newfstatat,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_pipe2,
    libc::SYS_pkey_alloc,
    libc::SYS_pkey_free,
    libc::SYS_pkey_mprotect,
    libc::SYS_ppoll,
    libc::SYS_prctl,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_prlimit64,
    libc::SYS_process_mrelease,
    libc::SYS_pselect6,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_read,
    libc::SYS_readahead,
    libc::SYS_readlinkat,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmmsg,
    libc::SYS_recvmsg,
    libc::SYS_remap_file_pages,
    libc::SYS_removexattr,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigpending,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_getattr,
    libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_rr_get_interval,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_setattr,
    libc::SYS_sched_setparam,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_yield,
    libc::SYS_seccomp,
    libc::SYS_semctl,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_sendfile,
    libc::SYS_sendmmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_set_robust_list,
    libc::SYS_set_tid_address,
    libc::SYS_setfsgid,
    libc::SYS_setfsuid,
    libc::SYS_setgid,
    libc::SYS_setgroups,
    libc::SYS_setitimer,
    libc::SYS_setpgid,
    libc::SYS_setpriority,
    libc::SYS_setregid,
    libc::SYS_setresgid,
    libc::SYS_setresuid,
    libc::SYS_setreuid,
    libc::SYS_setrlimit,
    libc::SYS_setsid,
    libc::SYS_setsockopt,
    libc::SYS_setuid,
    libc::SYS_setxattr,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_shmdt,
    libc::SYS_shmget,
    libc::SYS_shutdown,
    libc::SYS_sigaltstack,
    libc::SYS_signalfd4,
    libc::SYS_socketpair,
    libc::SYS_splice,
    libc::SYS_statfs,
    libc::SYS_statx,
    libc::SYS_symlinkat,
    libc::SYS_sync,
    libc::SYS_sync_file_range,
    libc::SYS_syncfs,
    libc::SYS_sysinfo,
    libc::SYS_tee,
    libc::SYS_tgkill,
    libc::SYS_timer_create,
    libc::SYS_timer_delete,
    libc::SYS_timer_getoverrun,
    libc::SYS_timer_gettime,
    libc::SYS_timer_settime,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_gettime,
    libc::SYS_timerfd_settime,
    libc::SYS_times,
    libc::SYS_tkill,
    libc::SYS_truncate,
    libc::SYS_umask,
    libc::SYS_uname,
    libc::SYS_unlinkat,
    libc::SYS_utimensat,
    libc::SYS_vmsplice,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    NR_CACHESTAT,
    NR_FCHMODAT2,
    NR_MAP_SHADOW_STACK,
    NR_FUTEX_WAKE,
    NR_FUTEX_WAIT,
    NR_FUTEX_REQUEUE,
];

/// The older calls x86_64 keeps (aarch64 has only their *at forms), and
/// x86_64's own (arch_prctl, modify_ldt).
#[cfg(target_arch = "x86_64")]
const ARCH_ONLY: &[i64] = &[
    libc::SYS_access,
    libc::SYS_alarm,
    libc::SYS_chmod,
    libc::SYS_chown,
    libc::SYS_creat,
    libc::SYS_dup2,
    libc::SYS_epoll_create,
    libc::SYS_epoll_ctl_old,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_wait_old,
    libc::SYS_eventfd,
    libc::SYS_fork,
    libc::SYS_futimesat,
    libc::SYS_get_thread_area,
    libc::SYS_getdents,
    libc::SYS_getpgrp,
    libc::SYS_inotify_init,
    libc::SYS_lchown,
    libc::SYS_link,
    libc::SYS_lstat,
    libc::SYS_mkdir,
    libc::SYS_mknod,
    libc::SYS_open,
    libc::SYS_pause,
    libc::SYS_pipe,
    libc::SYS_poll,
    libc::SYS_readlink,
    libc::SYS_rename,
    libc::SYS_rmdir,
    libc::SYS_select,
    libc::SYS_set_thread_area,
    libc::SYS_signalfd,
    libc::SYS_stat,
    libc::SYS_symlink,
    libc::SYS_time,
    libc::SYS_unlink,
    libc::SYS_utime,
    libc::SYS_utimes,
    libc::SYS_vfork,
    libc::SYS_arch_prctl,
    libc::SYS_modify_ldt,
    333, // io_pgetevents
];
#[cfg(target_arch = "aarch64")]
const ARCH_ONLY: &[i64] = &[292]; // io_pgetevents
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ALWAYS: &[i64] = &[];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH_ONLY: &[i64] = &[];

// Calls newer than the libc crate's tables: one number on every
// architecture since Linux 5.1 unified the numbering.
const NR_CACHESTAT: i64 = 451;
const NR_FCHMODAT2: i64 = 452;
const NR_MAP_SHADOW_STACK: i64 = 453;
const NR_FUTEX_WAKE: i64 = 454;
const NR_FUTEX_WAIT: i64 = 455;
const NR_FUTEX_REQUEUE: i64 = 456;
/// The first number this profile does not know; from here up to
/// `UNKNOWN_END` calls fail with ENOSYS, as runc does past its table.
pub const UNKNOWN_START: i64 = 457;
/// The end (exclusive) of the ENOSYS range (x32's calls start at 512 | 0x40000000).
pub const UNKNOWN_END: i64 = 512;

/// Calls docker allows only with a capability, as (capability, calls).
fn by_capability() -> Vec<(Capability, Vec<i64>)> {
    use Capability as C;
    let mut v = vec![
        (
            C::CAP_SYS_ADMIN,
            vec![
                libc::SYS_bpf,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_fanotify_init,
                libc::SYS_fsconfig,
                libc::SYS_fsmount,
                libc::SYS_fsopen,
                libc::SYS_fspick,
                libc::SYS_lookup_dcookie,
                libc::SYS_mount,
                libc::SYS_mount_setattr,
                libc::SYS_move_mount,
                libc::SYS_open_tree,
                libc::SYS_perf_event_open,
                libc::SYS_quotactl,
                libc::SYS_quotactl_fd,
                libc::SYS_setdomainname,
                libc::SYS_sethostname,
                libc::SYS_setns,
                libc::SYS_syslog,
                libc::SYS_umount2,
                libc::SYS_unshare,
            ],
        ),
        (C::CAP_DAC_READ_SEARCH, vec![libc::SYS_open_by_handle_at]),
        (C::CAP_SYS_BOOT, vec![libc::SYS_reboot]),
        (C::CAP_SYS_CHROOT, vec![libc::SYS_chroot]),
        (
            C::CAP_SYS_MODULE,
            vec![
                libc::SYS_delete_module,
                libc::SYS_init_module,
                libc::SYS_finit_module,
            ],
        ),
        (C::CAP_SYS_PACCT, vec![libc::SYS_acct]),
        (
            C::CAP_SYS_PTRACE,
            vec![
                libc::SYS_kcmp,
                libc::SYS_pidfd_getfd,
                libc::SYS_process_madvise,
            ],
        ),
        (
            C::CAP_SYS_TIME,
            vec![libc::SYS_settimeofday, libc::SYS_clock_settime],
        ),
        (C::CAP_SYS_TTY_CONFIG, vec![libc::SYS_vhangup]),
        (
            C::CAP_SYS_NICE,
            vec![
                libc::SYS_get_mempolicy,
                libc::SYS_mbind,
                libc::SYS_set_mempolicy,
                libc::SYS_set_mempolicy_home_node,
            ],
        ),
        (C::CAP_SYSLOG, vec![libc::SYS_syslog]),
        (C::CAP_BPF, vec![libc::SYS_bpf]),
        (C::CAP_PERFMON, vec![libc::SYS_perf_event_open]),
    ];
    #[cfg(target_arch = "x86_64")]
    v.push((C::CAP_SYS_RAWIO, vec![libc::SYS_iopl, libc::SYS_ioperm]));
    v
}

/// The namespace flags docker refuses to `clone` without CAP_SYS_ADMIN.
pub const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// `personality(2)` values docker allows: PER_LINUX, PER_LINUX32,
/// UNAME26, PER_LINUX32|UNAME26, and the query 0xffffffff.
pub const PERSONALITIES: [u64; 5] = [0, 8, 0x20000, 0x20008, 0xffff_ffff];

/// AF_VSOCK: the one socket family docker refuses.
pub const AF_VSOCK: u64 = 40;

/// ioctls refused on every fd: TIOCSTI pushes input into a terminal and
/// TIOCLINUX can paste into a virtual console. The command shares the
/// caller's terminal (there is no pty of its own, and docker's setsid would
/// cost an interactive shell its job control), so either would type
/// commands into the caller's shell once the container exits.
#[allow(clippy::unnecessary_cast)] // an Ioctl is not a u64 on every libc
pub const REFUSED_IOCTLS: [u64; 2] = [libc::TIOCSTI as u64, libc::TIOCLINUX as u64];

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    v: u64,
) -> Result<SeccompRule, SeccompError> {
    Ok(SeccompRule::new(vec![SeccompCondition::new(
        arg, len, op, v,
    )?])?)
}

/// The allow-list for a container keeping `caps`: call number -> rules
/// (an empty list allows the call whatever its arguments; otherwise one
/// matching rule allows it).
pub fn allow_rules(caps: &[Capability]) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in ALWAYS.iter().chain(ARCH_ONLY) {
        rules.insert(*nr, Vec::new());
    }
    for (cap, calls) in by_capability() {
        if caps.contains(&cap) {
            for nr in calls {
                rules.insert(nr, Vec::new());
            }
        }
    }
    let mut conditional = |nr: i64, rule: SeccompRule| {
        // A call already allowed outright stays so.
        match rules.entry(nr) {
            Entry::Vacant(e) => {
                e.insert(vec![rule]);
            }
            Entry::Occupied(mut e) => {
                if !e.get().is_empty() {
                    e.get_mut().push(rule);
                }
            }
        }
    };
    // Threads and fork, but no new namespaces, without CAP_SYS_ADMIN.
    conditional(
        libc::SYS_clone,
        cond(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(CLONE_NAMESPACES),
            0,
        )?,
    );
    let ioctl: Result<Vec<SeccompCondition>, SeccompError> = REFUSED_IOCTLS
        .iter()
        .map(|&cmd| {
            Ok(SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                cmd,
            )?)
        })
        .collect();
    conditional(libc::SYS_ioctl, SeccompRule::new(ioctl?)?);
    conditional(
        libc::SYS_socket,
        cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, AF_VSOCK)?,
    );
    for p in PERSONALITIES {
        conditional(
            libc::SYS_personality,
            cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, p)?,
        );
    }
    Ok(rules)
}

/// Calls that fail with ENOSYS: `clone3` without CAP_SYS_ADMIN (its flags
/// are behind a pointer a filter cannot read, so glibc is sent back to
/// `clone`), and the numbers this profile does not know.
pub fn enosys_calls(caps: &[Capability]) -> Vec<i64> {
    let mut v: Vec<i64> = (UNKNOWN_START..UNKNOWN_END).collect();
    if !caps.contains(&Capability::CAP_SYS_ADMIN) {
        v.push(libc::SYS_clone3);
    }
    v.sort_unstable();
    v
}

/// This machine's architecture, as seccompiler names it.
pub fn host_arch() -> Result<TargetArch, SeccompError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        other => Err(SeccompError::Arch(other.to_string())),
    }
}

/// The two programs to load, in order, for a container keeping `caps`.
pub fn programs(caps: &[Capability]) -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = host_arch()?;
    let allow = SeccompFilter::new(
        allow_rules(caps)?,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )?;
    let enosys = SeccompFilter::new(
        enosys_calls(caps)
            .into_iter()
            .map(|nr| (nr, Vec::new()))
            .collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok(vec![
        BpfProgram::try_from(allow)?,
        BpfProgram::try_from(enosys)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::{self, DEFAULT};
    use crate::sys::{self, Syscall};

    fn default_caps() -> Vec<Capability> {
        capabilities::sorted(DEFAULT)
    }

    #[test]
    fn default_profile_refuses_what_docker_refuses() {
        let rules = allow_rules(&default_caps()).unwrap_or_else(|e| unreachable!("{e}"));
        for nr in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_pivot_root,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_bpf,
            libc::SYS_kexec_load,
            libc::SYS_kexec_file_load,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
            libc::SYS_reboot,
            libc::SYS_swapon,
            libc::SYS_swapoff,
            libc::SYS_open_by_handle_at,
            libc::SYS_perf_event_open,
            libc::SYS_fsopen,
            libc::SYS_open_tree,
            libc::SYS_move_mount,
            libc::SYS_clone3,
            libc::SYS_userfaultfd,
            libc::SYS_settimeofday,
            libc::SYS_acct,
            libc::SYS_kcmp,
            libc::SYS_syslog,
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ] {
            assert!(!rules.contains_key(&nr), "{nr} allowed");
        }
        // Allowed outright.
        for nr in [
            libc::SYS_read,
            libc::SYS_execve,
            libc::SYS_ptrace,
            libc::SYS_mknodat,
            libc::SYS_chroot,
            NR_FCHMODAT2,
        ] {
            assert_eq!(rules.get(&nr).map(Vec::len), Some(0), "{nr}");
        }
        // Allowed with arguments checked.
        assert_eq!(rules.get(&libc::SYS_ioctl).map(Vec::len), Some(1));
        assert_eq!(rules.get(&libc::SYS_clone).map(Vec::len), Some(1));
        assert_eq!(rules.get(&libc::SYS_socket).map(Vec::len), Some(1));
        assert_eq!(rules.get(&libc::SYS_personality).map(Vec::len), Some(5));
        assert!(enosys_calls(&default_caps()).contains(&libc::SYS_clone3));
    }

    #[test]
    fn capabilities_open_their_calls() {
        let mut caps = default_caps();
        caps.push(Capability::CAP_SYS_ADMIN);
        caps.push(Capability::CAP_SYS_PTRACE);
        let rules = allow_rules(&caps).unwrap_or_else(|e| unreachable!("{e}"));
        for nr in [
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_clone3,
            libc::SYS_kcmp,
        ] {
            assert_eq!(rules.get(&nr).map(Vec::len), Some(0), "{nr}");
        }
        // clone is allowed outright, not only without namespace flags.
        assert_eq!(rules.get(&libc::SYS_clone).map(Vec::len), Some(0));
        assert!(!enosys_calls(&caps).contains(&libc::SYS_clone3));
        // Still refused: no capability opens these in docker's profile.
        for nr in [libc::SYS_pivot_root, libc::SYS_keyctl, libc::SYS_kexec_load] {
            assert!(!rules.contains_key(&nr), "{nr}");
        }
        let chroot_dropped: Vec<Capability> = default_caps()
            .into_iter()
            .filter(|c| *c != Capability::CAP_SYS_CHROOT)
            .collect();
        let rules = allow_rules(&chroot_dropped).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(!rules.contains_key(&libc::SYS_chroot));
    }

    #[test]
    fn programs_build_for_this_machine() {
        let p = programs(&default_caps()).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(p.len(), 2);
        // Within the kernel's 4096-instruction limit per program.
        assert!(
            p.iter().all(|p| !p.is_empty() && p.len() < 4096),
            "{}",
            p[0].len()
        );
        let all = programs(&capabilities::all()).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(all[0].len() > p[0].len());
    }

    /// Loads the default filter in a child process and checks what the
    /// kernel answers.
    #[test]
    fn the_loaded_filter_answers_eperm_and_enosys() {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        let progs = programs(&default_caps()).unwrap_or_else(|e| unreachable!("{e}"));
        let linux = sys::Linux;
        match sys::fork() {
            Ok(nix::unistd::ForkResult::Child) => {
                // no_new_privs: the test may run without CAP_SYS_ADMIN.
                let loaded = linux.set_no_new_privs().is_ok()
                    && progs.iter().all(|p| linux.load_seccomp(p).is_ok());
                if !loaded {
                    sys::exit_now(10);
                }
                let e = |r: nix::Result<()>| r.err();
                let checks = [
                    e(nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS))
                        == Some(nix::errno::Errno::EPERM),
                    e(nix::mount::umount2("/", nix::mount::MntFlags::MNT_DETACH))
                        == Some(nix::errno::Errno::EPERM),
                    socket(
                        AddressFamily::Vsock,
                        SockType::Stream,
                        SockFlag::empty(),
                        None,
                    )
                    .err()
                        == Some(nix::errno::Errno::EPERM),
                    socket(
                        AddressFamily::Unix,
                        SockType::Stream,
                        SockFlag::empty(),
                        None,
                    )
                    .is_ok(),
                    nix::unistd::getpid().as_raw() > 0,
                    std::fs::metadata("/").is_ok(),
                ];
                let failed = checks.iter().position(|ok| !ok);
                sys::exit_now(failed.map_or(0, |i| 20 + i as i32))
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let st = nix::sys::wait::waitpid(child, None);
                assert!(
                    matches!(st, Ok(nix::sys::wait::WaitStatus::Exited(_, 0))),
                    "{st:?} (10: load failed, 20+i: check i failed)"
                );
            }
            Err(e) => unreachable!("fork: {e}"),
        }
    }
}
