//! cgroup v1 limit files. Takes no locks.

use std::path::Path;

use super::{write, CgroupError};
use crate::spec::Limits;

/// CFS period used for `--cpus` (100 ms, the kernel default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Writes the limits of controller `c` into cgroup directory `dir`.
pub fn limit(dir: &Path, c: &str, l: &Limits) -> Result<(), CgroupError> {
    match c {
        "memory" => {
            if let Some(m) = l.memory {
                write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                // No escape into swap, where the kernel allows setting it.
                let sw = dir.join("memory.memsw.limit_in_bytes");
                if sw.exists() {
                    let _ = write(&sw, &m.to_string());
                }
            }
        }
        "pids" => {
            if let Some(p) = l.pids {
                write(&dir.join("pids.max"), &p.to_string())?;
            }
        }
        "cpu" => {
            if let Some(micros) = l.cpu_micros {
                write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                let quota = micros * CPU_PERIOD_US / 1_000_000;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        "hugetlb" => {
            if let Some((page, bytes)) = &l.hugetlb {
                write(
                    &dir.join(format!("hugetlb.{page}.limit_in_bytes")),
                    &bytes.to_string(),
                )?;
            }
        }
        _ => {}
    }
    Ok(())
}
