//! cgroup v2 limit files. Takes no locks.

use std::path::Path;

use super::{write, CgroupError};
use crate::spec::Limits;

/// CFS period used for `--cpus` (100 ms, the kernel default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Enables controllers for the children of `parent`.
pub fn enable(parent: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    if controllers.is_empty() {
        return Ok(());
    }
    let v: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    write(&parent.join("cgroup.subtree_control"), &v.join(" "))
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
        _ => {}
    }
    Ok(())
}
