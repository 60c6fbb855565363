//! Masked and read-only paths of /proc and /sys, as runc's default spec
//! (the one docker and podman hand it) has them.
//!
//! Invariant: runs in the container's mount namespace after pivot_root,
//! while the process still has CAP_SYS_ADMIN; afterwards every masked file
//! reads as /dev/null, every masked directory is an empty read-only tmpfs,
//! and every read-only path is a read-only bind of itself. Paths this
//! kernel does not have are skipped. Takes no locks.

use std::path::Path;

use nix::mount::MsFlags;

use crate::sys::{Kind, SysResult, Syscall};

/// Hidden: kernel memory, keyrings of other containers, timers and
/// interrupts that leak what the host runs, firmware tables, the RAPL
/// power meters (PLATYPUS side channel).
pub const MASKED: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Visible but read-only: the host's sysctls (kernel.core_pattern runs a
/// program as host root), sysrq, irq affinity, bus and fs knobs.
pub const READ_ONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Masks `MASKED`, then makes `READ_ONLY` read-only.
pub fn apply(sys: &dyn Syscall) -> SysResult<()> {
    for p in MASKED {
        mask(sys, Path::new(p))?;
    }
    for p in READ_ONLY {
        read_only(sys, Path::new(p))?;
    }
    Ok(())
}

fn mask(sys: &dyn Syscall, p: &Path) -> SysResult<()> {
    match sys.kind(p)? {
        None => Ok(()),
        Some(Kind::Dir) => sys.mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=0,mode=555"),
        ),
        Some(Kind::File) => sys.mount(Some("/dev/null"), p, None, MsFlags::MS_BIND, None),
    }
}

fn read_only(sys: &dyn Syscall, p: &Path) -> SysResult<()> {
    if sys.kind(p)?.is_none() {
        return Ok(());
    }
    let src = p.to_string_lossy();
    sys.mount(
        Some(&src),
        p,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    sys.mount(
        None,
        p,
        None,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None,
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::sys::{Call, Recorder};

    #[test]
    fn files_get_dev_null_dirs_an_empty_read_only_tmpfs() {
        let r = Recorder {
            dirs: vec![PathBuf::from("/proc/acpi"), PathBuf::from("/sys/firmware")],
            missing: vec![PathBuf::from("/proc/timer_stats")],
            ..Recorder::default()
        };
        apply(&r).unwrap_or_else(|e| unreachable!("{e}"));
        let calls = r.calls.into_inner();
        let on = |t: &str| -> Vec<&Call> {
            calls
                .iter()
                .filter(|c| matches!(c, Call::Mount(_, p, _, _, _) if p == Path::new(t)))
                .collect()
        };
        assert!(matches!(on("/proc/kcore")[..],
            [Call::Mount(Some(s), _, None, f, None)] if s == "/dev/null" && *f == MsFlags::MS_BIND));
        assert!(matches!(on("/proc/keys")[..], [Call::Mount(Some(s), ..)] if s == "/dev/null"));
        assert!(matches!(on("/proc/acpi")[..],
            [Call::Mount(_, _, Some(t), f, _)] if t == "tmpfs" && f.contains(MsFlags::MS_RDONLY)));
        assert!(
            on("/proc/timer_stats").is_empty(),
            "missing paths are skipped"
        );
        for p in READ_ONLY {
            let c = on(p);
            assert_eq!(c.len(), 2, "{p}");
            assert!(
                matches!(c[1], Call::Mount(None, _, None, f, None)
                if f.contains(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY)),
                "{p}: {c:?}"
            );
        }
        // Masks first: a read-only /proc/sys bind must not hide a mask.
        let first_ro = calls
            .iter()
            .position(|c| matches!(c, Call::Mount(_, p, ..) if p == Path::new("/proc/bus")));
        let last_mask = calls.iter().rposition(
            |c| matches!(c, Call::Mount(Some(s), ..) if s == "/dev/null" || s == "tmpfs"),
        );
        assert!(last_mask < first_ro);
    }

    #[test]
    fn runc_defaults_are_all_there() {
        for p in [
            "/proc/kcore",
            "/proc/keys",
            "/proc/timer_list",
            "/proc/sched_debug",
            "/proc/acpi",
            "/proc/scsi",
            "/sys/firmware",
            "/proc/latency_stats",
        ] {
            assert!(MASKED.contains(&p), "{p}");
        }
        assert!(READ_ONLY.contains(&"/proc/sys"));
        assert!(READ_ONLY.contains(&"/proc/sysrq-trigger"));
    }
}
