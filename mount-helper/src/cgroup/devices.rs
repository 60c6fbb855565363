//! The device allow-list of a container, on the cgroup v1 `devices`
//! controller: docker's default list.
//!
//! Invariant: a container's devices cgroup is written "deny all" first and
//! then only the allow-list, before any process joins it, so no process of
//! the container ever sees a wider list. On a pure cgroup v2 host there is
//! no such file (the kernel wants a BPF_CGROUP_DEVICE program, which this
//! launcher does not load); there the `nodev` mounts of `rootfs` are what
//! keeps a made device node from being opened (docs/SECURITY.md).
//! Takes no locks.

use std::path::Path;

use super::{write, CgroupError};

/// docker's default rules: any node may be made (`m`), and only these may
/// be read or written: null, zero, full, random, urandom, tty, console,
/// ptmx, the pts, and tun.
pub const ALLOW: [&str; 12] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

/// Writes the allow-list into the v1 devices cgroup `dir`.
pub fn limit_v1(dir: &Path) -> Result<(), CgroupError> {
    write(&dir.join("devices.deny"), "a")?;
    for rule in ALLOW {
        write(&dir.join("devices.allow"), rule)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_all_then_allow_the_list() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        limit_v1(t.path()).unwrap_or_else(|e| unreachable!("{e}"));
        // A plain file keeps the last write: the last rule of the list.
        assert_eq!(
            std::fs::read_to_string(t.path().join("devices.deny")).unwrap_or_default(),
            "a"
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("devices.allow")).unwrap_or_default(),
            "c 10:200 rwm"
        );
        // No block device is readable or writable: only `m` for blocks.
        assert!(ALLOW
            .iter()
            .filter(|r| r.starts_with('b'))
            .all(|r| *r == "b *:* m"));
    }
}
