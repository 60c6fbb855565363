//! Turning a mounted union into the container's root: private propagation,
//! fresh /proc, a minimal /dev, read-only /sys, hostname, loopback, then
//! pivot_root into it with the old root detached.
//!
//! Invariant: runs in the container's init after it unshared its mount
//! namespace, so nothing here is visible on the host; the order of calls is
//! fixed and checked by a unit test against the recording double.
//! Takes no locks.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::spec::{Net, Security};
use crate::sys::{SysResult, Syscall};

/// Device nodes bind-mounted from the host.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Sets up the mounts under `root` (the union's mount point) and enters it.
/// Unless `sec` is privileged, the root and /dev are `nodev`: a device node
/// the container makes (CAP_MKNOD is a default) cannot be opened, whatever
/// the cgroup version; only the bind-mounted allow-list and devpts work.
pub fn enter(
    sys: &dyn Syscall,
    root: &Path,
    hostname: &str,
    net: Net,
    sec: &Security,
) -> SysResult<()> {
    let at = |p: &str| -> PathBuf { root.join(p) };
    // Nothing we mount from here on may propagate back to the host.
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    // A bind of the root onto itself is a mount of this namespace's own:
    // pivot_root refuses mounts inherited from a more privileged namespace
    // (rootless), and it costs nothing as root.
    let root_str = root.to_string_lossy();
    sys.mount(
        Some(&root_str),
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let nodev = if sec.devices() {
        MsFlags::MS_NODEV
    } else {
        MsFlags::empty()
    };
    if sec.devices() {
        // Repeat the flags the mount has: a user namespace locks them.
        let have = sys.mount_flags(root)?;
        sys.mount(
            None,
            root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV | have,
            None,
        )?;
    }

    sys.mkdir_all(&at("proc"), 0o555)?;
    sys.mount(
        Some("proc"),
        &at("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;

    sys.mkdir_all(&at("dev"), 0o755)?;
    sys.mount(
        Some("tmpfs"),
        &at("dev"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | nodev,
        Some("mode=755,size=65536k"),
    )?;
    for d in DEVICES {
        let target = at("dev").join(d);
        sys.touch(&target)?;
        sys.mount(
            Some(&format!("/dev/{d}")),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    sys.mkdir_all(&at("dev/pts"), 0o755)?;
    sys.mount(
        Some("devpts"),
        &at("dev/pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    sys.symlink("pts/ptmx", &at("dev/ptmx"))?;
    sys.mkdir_all(&at("dev/shm"), 0o1777)?;
    sys.mount(
        Some("shm"),
        &at("dev/shm"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
    ] {
        sys.symlink(target, &at(link))?;
    }

    sys.mkdir_all(&at("sys"), 0o555)?;
    // Read-only unless privileged (as docker has it).
    let ro = MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC
        | if sec.privileged {
            MsFlags::empty()
        } else {
            MsFlags::MS_RDONLY
        };
    if let Err(e) = sys.mount(Some("sysfs"), &at("sys"), Some("sysfs"), ro, None) {
        // Without owning the network namespace (rootless with --net host)
        // sysfs cannot be mounted: bind the host's, read-only.
        if e.errno != nix::errno::Errno::EPERM {
            return Err(e);
        }
        sys.mount(
            Some("/sys"),
            &at("sys"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        sys.mount(
            None,
            &at("sys"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro,
            None,
        )?;
    }

    sys.sethostname(hostname)?;
    if net == Net::None {
        sys.loopback_up()?;
    }

    // pivot_root(".", ".") stacks the old root on the new one; detaching
    // it leaves the union alone at "/".
    sys.chdir(root)?;
    sys.pivot_root(Path::new("."), Path::new("."))?;
    sys.umount(Path::new("."), MntFlags::MNT_DETACH)?;
    sys.chdir(Path::new("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, Recorder};

    #[test]
    fn mount_sequence_is_fixed() {
        let r = Recorder::default();
        let root = Path::new("/run/c/root");
        enter(&r, root, "box", Net::None, &Security::default())
            .unwrap_or_else(|e| unreachable!("{e}"));
        let calls = r.calls.into_inner();
        // Propagation is made private before anything is mounted.
        assert!(matches!(&calls[0], Call::Mount(None, p, None, f, None)
            if p == Path::new("/") && f.contains(MsFlags::MS_PRIVATE | MsFlags::MS_REC)));
        let mount_targets: Vec<_> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount(_, t, ty, _, _) => Some((t.clone(), ty.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            mount_targets[1],
            (root.to_path_buf(), None),
            "self-bind first"
        );
        assert_eq!(
            mount_targets[2],
            (root.to_path_buf(), None),
            "nodev remount"
        );
        assert!(matches!(&calls[2], Call::Mount(None, _, None, f, None)
            if f.contains(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NODEV)));
        assert_eq!(mount_targets[3], (root.join("proc"), Some("proc".into())));
        assert_eq!(mount_targets[4], (root.join("dev"), Some("tmpfs".into())));
        // /dev is nodev: nodes made there cannot be opened; the bound
        // devices are mounts of their own and keep working.
        assert!(calls
            .iter()
            .any(|c| matches!(c, Call::Mount(_, t, Some(ty), f, _)
            if t == &root.join("dev") && ty == "tmpfs" && f.contains(MsFlags::MS_NODEV))));
        assert!(mount_targets.contains(&(root.join("dev/pts"), Some("devpts".into()))));
        assert!(mount_targets.contains(&(root.join("dev/shm"), Some("tmpfs".into()))));
        for d in DEVICES {
            assert!(
                mount_targets.contains(&(root.join("dev").join(d), None)),
                "{d}"
            );
        }
        // /sys is read-only.
        assert!(calls
            .iter()
            .any(|c| matches!(c, Call::Mount(_, t, Some(ty), f, _)
            if t == &root.join("sys") && ty == "sysfs" && f.contains(MsFlags::MS_RDONLY))));
        // devpts is a new instance, not the host's.
        assert!(calls
            .iter()
            .any(|c| matches!(c, Call::Mount(_, t, _, _, Some(d))
            if t == &root.join("dev/pts") && d.contains("newinstance"))));
        // The tail: hostname, lo, then pivot and detach the old root.
        let n = calls.len();
        assert_eq!(
            calls[n - 6..].to_vec(),
            vec![
                Call::Hostname("box".into()),
                Call::LoopbackUp,
                Call::Chdir(root.to_path_buf()),
                Call::PivotRoot(".".into(), ".".into()),
                Call::Umount(".".into(), MntFlags::MNT_DETACH),
                Call::Chdir("/".into()),
            ]
        );
    }

    #[test]
    fn host_network_keeps_lo_alone() {
        let r = Recorder::default();
        enter(&r, Path::new("/r"), "h", Net::Host, &Security::default())
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(!r.calls.into_inner().contains(&Call::LoopbackUp));
    }

    #[test]
    fn privileged_keeps_devices_and_a_writable_sys() {
        let r = Recorder::default();
        let sec = Security {
            privileged: true,
            ..Security::default()
        };
        enter(&r, Path::new("/r"), "h", Net::None, &sec).unwrap_or_else(|e| unreachable!("{e}"));
        let calls = r.calls.into_inner();
        assert!(!calls.iter().any(|c| matches!(c, Call::Mount(_, _, _, f, _)
            if f.contains(MsFlags::MS_REMOUNT))));
        assert!(calls
            .iter()
            .any(|c| matches!(c, Call::Mount(_, t, Some(ty), f, _)
            if t == Path::new("/r/dev") && ty == "tmpfs" && !f.contains(MsFlags::MS_NODEV))));
        assert!(calls
            .iter()
            .any(|c| matches!(c, Call::Mount(_, t, Some(ty), f, _)
            if t == Path::new("/r/sys") && ty == "sysfs" && !f.contains(MsFlags::MS_RDONLY))));
    }

    #[test]
    fn nodev_remount_repeats_the_mounts_own_flags() {
        let r = Recorder {
            flags: Some(MsFlags::MS_NOSUID | MsFlags::MS_NODEV),
            ..Recorder::default()
        };
        enter(&r, Path::new("/r"), "h", Net::None, &Security::default())
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(
            matches!(&r.calls.borrow()[2], Call::Mount(None, t, None, f, None)
            if t == Path::new("/r") && f.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_REMOUNT))
        );
    }
}
