//! The container's cgroup: one per controller hierarchy, decided per
//! controller as runc does — cgroup v1 where a v1 hierarchy carries the
//! controller, else the unified (v2) hierarchy — so pure v1, pure v2 and
//! hybrid hosts (v1 controllers plus a cgroup2 mount with only hugetlb, as
//! here) all work. In a v1 hierarchy the container's cgroup is a child of
//! the launcher's own; in the unified one it is `<root>/unionfs-run/<name>`,
//! controllers enabled from the root down, since v2 refuses controllers
//! below a cgroup that holds processes (the launcher's own usually does).
//!
//! Invariant: every directory this module creates is listed in the
//! returned `Cgroup` and removed by `Cgroup::remove` (the shared v2 parent
//! only once no container uses it); limit files are only written under the
//! paths of a `Layout`, so tests point it at a temp dir. Takes no locks.

pub mod devices;
pub mod v1;
pub mod v2;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::spec::Limits;

/// Controllers the launcher limits.
pub const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "hugetlb"];

/// Where each controller lives on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// v1 controllers: controller -> directory of the launcher's own cgroup
    /// in that hierarchy (the parent of the container's). `devices` too.
    pub v1: BTreeMap<String, PathBuf>,
    /// The unified hierarchy: its root directory, and the controllers the
    /// root offers.
    pub v2: Option<(PathBuf, Vec<String>)>,
}

/// A line of /proc/self/mountinfo that mounts a cgroup filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    root: String,
    point: PathBuf,
    v2: bool,
    controllers: Vec<String>,
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let (root, point) = (pre[3], pre[4]);
        match post[0] {
            "cgroup2" => out.push(CgroupMount {
                root: root.to_string(),
                point: PathBuf::from(point),
                v2: true,
                controllers: Vec::new(),
            }),
            "cgroup" => out.push(CgroupMount {
                root: root.to_string(),
                point: PathBuf::from(point),
                v2: false,
                controllers: post[2].split(',').map(str::to_string).collect(),
            }),
            _ => {}
        }
    }
    out
}

/// /proc/self/cgroup: hierarchy controllers ("" for v2) -> path.
fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?;
            let path = it.next()?;
            let ctrls = if ctrls.is_empty() {
                Vec::new()
            } else {
                ctrls.split(',').map(str::to_string).collect()
            };
            Some((ctrls, path.to_string()))
        })
        .collect()
}

fn under_mount(m: &CgroupMount, path: &str) -> PathBuf {
    let rel = path.strip_prefix(m.root.as_str()).unwrap_or(path);
    m.point.join(rel.trim_start_matches('/'))
}

impl Layout {
    /// Reads the host's layout from mountinfo and /proc/self/cgroup text.
    pub fn from_texts(
        mountinfo: &str,
        proc_cgroup: &str,
        read: impl Fn(&Path) -> Option<String>,
    ) -> Layout {
        let mounts = parse_mountinfo(mountinfo);
        let mine = parse_proc_cgroup(proc_cgroup);
        let mut layout = Layout::default();
        for c in CONTROLLERS.into_iter().chain(["devices"]) {
            let Some(m) = mounts
                .iter()
                .find(|m| !m.v2 && m.controllers.iter().any(|x| x == c))
            else {
                continue;
            };
            let Some((_, path)) = mine.iter().find(|(ctrls, _)| ctrls.iter().any(|x| x == c))
            else {
                continue;
            };
            layout.v1.insert(c.to_string(), under_mount(m, path));
        }
        if let Some(m) = mounts.iter().find(|m| m.v2) {
            let dir = m.point.clone();
            let offered = read(&dir.join("cgroup.controllers"))
                .map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default();
            layout.v2 = Some((dir, offered));
        }
        layout
    }

    /// The host's layout.
    pub fn detect() -> Layout {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let pc = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Layout::from_texts(&mi, &pc, |p| std::fs::read_to_string(p).ok())
    }

    /// Which version handles controller `c` here, if any.
    pub fn version_of(&self, c: &str) -> Option<u8> {
        if self.v1.contains_key(c) {
            Some(1)
        } else if self
            .v2
            .as_ref()
            .is_some_and(|(_, offered)| offered.iter().any(|x| x == c))
        {
            Some(2)
        } else {
            None
        }
    }
}

/// Whether `limits` asks anything of controller `c`. Only those hierarchies
/// get a cgroup: each migration into a v1 hierarchy waits for an RCU grace
/// period, which is most of a container's start time.
fn limited(c: &str, limits: &Limits) -> bool {
    match c {
        "memory" => limits.memory.is_some(),
        "pids" => limits.pids.is_some(),
        "cpu" => limits.cpu_micros.is_some(),
        "hugetlb" => limits.hugetlb.is_some(),
        _ => false,
    }
}

/// A cgroup error, with the file involved.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {err}")]
pub struct CgroupError {
    /// The file or directory.
    pub path: String,
    /// What happened.
    pub err: std::io::Error,
}

pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|err| CgroupError {
        path: path.display().to_string(),
        err,
    })
}

pub(crate) fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(CgroupError {
            path: path.display().to_string(),
            err,
        }),
    }
}

/// The container's cgroup directories (one per hierarchy used).
#[derive(Debug, Default)]
pub struct Cgroup {
    /// Every directory created, to join and to remove.
    pub dirs: Vec<PathBuf>,
    /// Shared parents, removed after `dirs` when no other container uses them.
    pub parents: Vec<PathBuf>,
}

/// Whether a cgroup is needed at all: limits, or the device allow-list
/// (v1 devices hierarchy, or a device program in the unified one).
pub fn needed(layout: &Layout, limits: &Limits, devices: bool) -> bool {
    *limits != Limits::default()
        || (devices && (layout.v1.contains_key("devices") || layout.v2.is_some()))
}

impl Cgroup {
    /// Creates `name` under each hierarchy that carries a controller we use
    /// (and the v1 devices one when `devices`) and writes the limits and
    /// the device allow-list. On error, removes what it created.
    pub fn create(
        layout: &Layout,
        name: &str,
        limits: &Limits,
        devices: bool,
    ) -> Result<Cgroup, CgroupError> {
        let mut cg = Cgroup::default();
        let res = (|| {
            let mut v1_done: Vec<PathBuf> = Vec::new();
            if devices {
                if let Some(parent) = layout.v1.get("devices") {
                    let dir = parent.join(name);
                    mkdir(&dir)?;
                    cg.dirs.push(dir.clone());
                    v1_done.push(dir.clone());
                    devices::limit_v1(&dir)?;
                }
            }
            for c in CONTROLLERS
                .into_iter()
                .filter(|c| limited(c, limits) && layout.version_of(c) == Some(1))
            {
                if let Some(parent) = layout.v1.get(c) {
                    let dir = parent.join(name);
                    if !v1_done.contains(&dir) {
                        mkdir(&dir)?;
                        cg.dirs.push(dir.clone());
                        v1_done.push(dir.clone());
                    }
                    v1::limit(&dir, c, limits)?;
                }
            }
            let v2_ctrls: Vec<&str> = CONTROLLERS
                .into_iter()
                .filter(|c| limited(c, limits) && layout.version_of(c) == Some(2))
                .collect();
            if let Some((root, _)) = &layout.v2 {
                // Device programs need no controller: every container gets
                // a v2 cgroup for one. Where a v1 devices hierarchy holds
                // the list already, a kernel without cgroup BPF is no error.
                if !v2_ctrls.is_empty() || devices {
                    let dir = create_v2(root, name, &v2_ctrls, &mut cg)?;
                    for c in &v2_ctrls {
                        v2::limit(&dir, c, limits)?;
                    }
                    if devices {
                        if let Err(e) = devices::attach_v2(&dir) {
                            if !layout.v1.contains_key("devices") {
                                return Err(e);
                            }
                        }
                    }
                }
            }
            Ok(())
        })();
        match res {
            Ok(()) => Ok(cg),
            Err(e) => {
                cg.remove();
                Err(e)
            }
        }
    }

    /// Moves process `pid` into every directory of the cgroup.
    pub fn join(&self, pid: i32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Kills whatever still runs in the cgroup.
    pub fn kill_all(&self) {
        for d in &self.dirs {
            if d.join("cgroup.kill").exists() {
                let _ = std::fs::write(d.join("cgroup.kill"), "1");
                continue;
            }
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }

    /// Removes the directories (retrying while the last tasks exit), then
    /// the shared parents if no other container is in them.
    pub fn remove(&mut self) {
        for d in self.dirs.drain(..).rev() {
            for _ in 0..200 {
                match std::fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        }
        for p in self.parents.drain(..).rev() {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// Makes `<root>/unionfs-run/<name>` with `ctrls` enabled from the root
/// down; returns the container's directory. Another launcher may remove
/// the shared parent between our mkdir and our child's (it was empty to
/// it): then the whole walk is done again.
fn create_v2(
    root: &Path,
    name: &str,
    ctrls: &[&str],
    cg: &mut Cgroup,
) -> Result<PathBuf, CgroupError> {
    let parent = root.join(v2::PARENT);
    let dir = parent.join(name);
    cg.parents.push(parent.clone());
    let mut tries = 0;
    loop {
        tries += 1;
        let res = (|| {
            // The mount's root is the hierarchy's root unless a cgroup
            // namespace put it lower (only non-root cgroups have a type).
            v2::enable(root, !root.join("cgroup.type").exists(), ctrls)?;
            mkdir(&parent)?;
            v2::enable(&parent, false, ctrls)?;
            match std::fs::create_dir(&dir) {
                Ok(()) => Ok(()),
                Err(err) => Err(CgroupError {
                    path: dir.display().to_string(),
                    err,
                }),
            }
        })();
        match res {
            Ok(()) => break,
            Err(e) if tries < 3 && e.err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    cg.dirs.push(dir.clone());
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_PROC: &str = "8:pids:/\n4:memory:/sandbox/abc\n1:cpu:/\n0::/\n";

    #[test]
    fn hybrid_host_uses_v1_for_each_controller() {
        let l = Layout::from_texts(HYBRID_MOUNTINFO, HYBRID_PROC, |_| Some("hugetlb".into()));
        assert_eq!(l.version_of("memory"), Some(1));
        assert_eq!(l.version_of("pids"), Some(1));
        assert_eq!(l.version_of("cpu"), Some(1));
        assert_eq!(
            l.v1["memory"],
            PathBuf::from("/sys/fs/cgroup/memory/sandbox/abc")
        );
        assert_eq!(l.v1["pids"], PathBuf::from("/sys/fs/cgroup/pids/"));
        assert_eq!(l.version_of("hugetlb"), Some(2));
    }

    #[test]
    fn pure_v2_host() {
        let mi = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let l = Layout::from_texts(mi, "0::/user.slice\n", |p| {
            // The root's controllers: containers live below the root.
            assert_eq!(p, Path::new("/sys/fs/cgroup/cgroup.controllers"));
            Some("cpuset cpu io memory pids hugetlb".into())
        });
        assert!(l.v1.is_empty());
        for c in CONTROLLERS {
            assert_eq!(l.version_of(c), Some(2), "{c}");
        }
    }

    fn limits() -> Limits {
        Limits {
            memory: Some(256 << 20),
            pids: Some(128),
            cpu_micros: Some(500_000),
            hugetlb: None,
        }
    }

    #[test]
    fn v1_limits_are_written_and_removed() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let mut layout = Layout::default();
        for c in CONTROLLERS {
            let d = t.path().join(c);
            std::fs::create_dir(&d).unwrap_or_else(|e| unreachable!("{e}"));
            layout.v1.insert(c.to_string(), d);
        }
        let mut cg = Cgroup::create(&layout, "box", &limits(), false)
            .unwrap_or_else(|e| unreachable!("{e}"));
        let read = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap_or_default();
        assert_eq!(
            read("memory/box/memory.limit_in_bytes"),
            (256u64 << 20).to_string()
        );
        assert_eq!(read("pids/box/pids.max"), "128");
        assert_eq!(read("cpu/box/cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu/box/cpu.cfs_quota_us"), "50000");
        assert_eq!(cg.dirs.len(), 3);
        // Only what is limited gets a cgroup.
        let only_pids = Limits {
            pids: Some(5),
            ..Limits::default()
        };
        let cg2 = Cgroup::create(&layout, "box2", &only_pids, false)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(cg2.dirs, vec![t.path().join("pids/box2")]);
        // Plain directories in a temp dir hold the files we wrote: remove them
        // as the kernel would on rmdir of a cgroup.
        for d in &cg.dirs {
            for e in std::fs::read_dir(d).unwrap_or_else(|e| unreachable!("{e}")) {
                let _ = std::fs::remove_file(e.map(|e| e.path()).unwrap_or_default());
            }
        }
        cg.remove();
        assert!(!t.path().join("memory/box").exists());
    }

    fn pure_v2(root: &Path) -> Layout {
        Layout {
            v1: BTreeMap::new(),
            v2: Some((
                root.to_path_buf(),
                CONTROLLERS.iter().map(|s| s.to_string()).collect(),
            )),
        }
    }

    #[test]
    fn v2_limits_live_under_a_dedicated_parent_enabled_top_down() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        // The launcher's own cgroup (and the root) hold processes.
        std::fs::write(t.path().join("cgroup.procs"), "1\n77\n").unwrap_or_default();
        let mut cg = Cgroup::create(&pure_v2(t.path()), "box", &limits(), false)
            .unwrap_or_else(|e| unreachable!("{e}"));
        let read = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap_or_default();
        assert_eq!(read("cgroup.subtree_control"), "+memory +pids +cpu");
        assert_eq!(
            read("unionfs-run/cgroup.subtree_control"),
            "+memory +pids +cpu"
        );
        assert_eq!(
            read("unionfs-run/box/memory.max"),
            (256u64 << 20).to_string()
        );
        assert_eq!(read("unionfs-run/box/memory.swap.max"), "0");
        assert_eq!(read("unionfs-run/box/pids.max"), "128");
        assert_eq!(read("unionfs-run/box/cpu.max"), "50000 100000");
        assert_eq!(cg.dirs, vec![t.path().join("unionfs-run/box")]);
        // No devices file on v2 (see devices.rs).
        assert!(!t.path().join("unionfs-run/box/devices.deny").exists());
        // Where no device program can be attached (a plain directory is no
        // cgroup), a pure v2 host refuses to run instead of running open.
        let e = Cgroup::create(&pure_v2(t.path()), "box2", &Limits::default(), true);
        assert!(e.is_err_and(|e| e.to_string().contains("device program")));
        assert!(!t.path().join("unionfs-run/box2").exists());
        for d in &cg.dirs {
            for e in std::fs::read_dir(d).unwrap_or_else(|e| unreachable!("{e}")) {
                let _ = std::fs::remove_file(e.map(|e| e.path()).unwrap_or_default());
            }
        }
        let _ = std::fs::remove_file(t.path().join("unionfs-run/cgroup.subtree_control"));
        cg.remove();
        assert!(
            !t.path().join("unionfs-run").exists(),
            "an unused parent goes"
        );
    }

    #[test]
    fn v2_root_of_a_cgroup_namespace_is_not_the_root() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        // A namespace root (it has a type) that holds the launcher.
        std::fs::write(t.path().join("cgroup.type"), "domain\n").unwrap_or_default();
        std::fs::write(t.path().join("cgroup.procs"), "1\n").unwrap_or_default();
        let only_pids = Limits {
            pids: Some(5),
            ..Limits::default()
        };
        let e = Cgroup::create(&pure_v2(t.path()), "box", &only_pids, false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no-internal-process"), "{e}");
        assert!(!t.path().join("cgroup.subtree_control").exists());
    }

    #[test]
    fn v2_refuses_a_parent_that_holds_processes() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let parent = t.path().join(v2::PARENT);
        std::fs::create_dir(&parent).unwrap_or_default();
        std::fs::write(parent.join("cgroup.procs"), "4242\n").unwrap_or_default();
        let only_pids = Limits {
            pids: Some(5),
            ..Limits::default()
        };
        let e = Cgroup::create(&pure_v2(t.path()), "box", &only_pids, false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no-internal-process"), "{e}");
        assert!(!parent.join("cgroup.subtree_control").exists());
        assert!(!parent.join("box").exists());
    }

    #[test]
    fn devices_cgroup_only_where_v1_has_one() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let mut layout = Layout::default();
        assert!(!needed(&layout, &Limits::default(), true));
        layout.v1.insert("devices".into(), t.path().to_path_buf());
        assert!(needed(&layout, &Limits::default(), true));
        assert!(!needed(&layout, &Limits::default(), false));
        let cg = Cgroup::create(&layout, "box", &Limits::default(), true)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(cg.dirs, vec![t.path().join("box")]);
        assert_eq!(
            std::fs::read_to_string(t.path().join("box/devices.deny")).unwrap_or_default(),
            "a"
        );
    }
}
