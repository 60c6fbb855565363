//! cgroup v2 limit files, and enabling controllers from the top down.
//!
//! Invariant: `cgroup.subtree_control` is written only in the hierarchy's
//! root (exempt from the no-internal-process rule) or in a cgroup whose
//! `cgroup.procs` is empty; a cgroup that holds processes is refused with
//! a clear error instead of the kernel's EBUSY. Takes no locks.

use std::path::Path;

use super::{write, CgroupError};
use crate::spec::Limits;

/// CFS period used for `--cpus` (100 ms, the kernel default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The parent of every container's cgroup, directly under the root of the
/// unified hierarchy (as docker's `/docker`, podman's `machine.slice`).
/// It never holds a process itself, so controllers can be enabled in it.
pub const PARENT: &str = "unionfs-run";

fn enabled(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.subtree_control"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Enables `controllers` for the children of `dir` (those not enabled
/// yet). `is_root`: `dir` is the hierarchy's root.
pub fn enable(dir: &Path, is_root: bool, controllers: &[&str]) -> Result<(), CgroupError> {
    let have = enabled(dir);
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !have.iter().any(|h| h == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if !procs.trim().is_empty() {
            return Err(CgroupError {
                path: dir.display().to_string(),
                err: std::io::Error::other(
                    "holds processes, so no controller can be enabled below it (cgroup v2 no-internal-process rule)",
                ),
            });
        }
    }
    write(&dir.join("cgroup.subtree_control"), &missing.join(" "))
}

/// Writes the limits of controller `c` into cgroup directory `dir`.
pub fn limit(dir: &Path, c: &str, l: &Limits) -> Result<(), CgroupError> {
    match c {
        "memory" => {
            if let Some(m) = l.memory {
                write(&dir.join("memory.max"), &m.to_string())?;
                // No escape into swap (where swap accounting exists).
                let _ = write(&dir.join("memory.swap.max"), "0");
            }
        }
        "pids" => {
            if let Some(p) = l.pids {
                write(&dir.join("pids.max"), &p.to_string())?;
            }
        }
        "cpu" => {
            if let Some(micros) = l.cpu_micros {
                let quota = micros * CPU_PERIOD_US / 1_000_000;
                write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
            }
        }
        "hugetlb" => {
            if let Some((page, bytes)) = &l.hugetlb {
                write(&dir.join(format!("hugetlb.{page}.max")), &bytes.to_string())?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enable_writes_only_what_is_missing() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let d = t.path();
        std::fs::write(d.join("cgroup.subtree_control"), "memory").unwrap_or_default();
        enable(d, false, &["memory", "pids"]).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            std::fs::read_to_string(d.join("cgroup.subtree_control")).unwrap_or_default(),
            "+pids"
        );
    }

    #[test]
    fn a_cgroup_with_processes_is_never_written() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let d = t.path();
        std::fs::write(d.join("cgroup.procs"), "1234\n").unwrap_or_default();
        let e = enable(d, false, &["pids"]).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("no-internal-process")));
        assert!(!d.join("cgroup.subtree_control").exists());
        // The root is exempt from the rule.
        enable(d, true, &["pids"]).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            std::fs::read_to_string(d.join("cgroup.subtree_control")).unwrap_or_default(),
            "+pids"
        );
    }

    #[test]
    fn hugetlb_limit_file() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let l = Limits {
            hugetlb: Some(("2MB".into(), 4 << 20)),
            ..Limits::default()
        };
        limit(t.path(), "hugetlb", &l).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            std::fs::read_to_string(t.path().join("hugetlb.2MB.max")).unwrap_or_default(),
            (4u64 << 20).to_string()
        );
    }
}
