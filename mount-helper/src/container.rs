//! Container records: what the launcher owns, written down so that a
//! launcher killed with SIGKILL leaves enough to undo its work, and so
//! that `ps`, `stop`, `rm` and `commit` can find a container started in
//! another terminal.
//!
//! Invariant: a container is the directory `<state root>/<name>/` holding
//! `container.json` (a [`Record`]). Ownership is that record and nothing
//! else: a directory without one (a container still starting, or state of
//! an older launcher) is never touched, and no name pattern makes anything
//! ours. A record is *live* while its launcher — pid and start time, so a
//! reused pid is not mistaken for it — still runs; only the resources a
//! record names, of a record whose launcher is gone, are ever cleaned up.
//! Records are written whole (temp file + rename). Cleanup runs under an
//! exclusive flock on the state root directory, so two launchers
//! starting at once do not undo the same container twice; the launchers of
//! running containers never take it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;

/// The record's file name inside a container's state directory.
pub const RECORD: &str = "container.json";

/// A process, named so that a reused pid is not taken for it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proc {
    /// The pid, in the launcher's (the host's) pid namespace.
    pub pid: i32,
    /// Start time in clock ticks after boot (/proc/PID/stat field 22).
    pub start: u64,
}

/// Fields 3 (state) and 22 (start time) of /proc/PID/stat text.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name (field 2) may hold spaces and ')': split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((state, f.nth(18)?.parse().ok()?))
}

impl Proc {
    /// The process `pid` as it is now, if it exists and is not a zombie
    /// (a killed launcher's init waits as one for the host's init to reap it).
    pub fn of(pid: i32) -> Option<Proc> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (state, start) = parse_stat(&stat)?;
        (state != 'Z' && state != 'X').then_some(Proc { pid, start })
    }

    /// This process.
    pub fn me() -> Option<Proc> {
        Proc::of(std::process::id() as i32)
    }

    /// Whether this very process still runs (a zombie does not).
    pub fn alive(&self) -> bool {
        Proc::of(self.pid).is_some_and(|p| p.start == self.start)
    }

    /// Sends `sig` if this is still the same process.
    pub fn signal(&self, sig: Signal) -> bool {
        self.alive() && kill(Pid::from_raw(self.pid), sig).is_ok()
    }

    /// Waits up to `d` for the process to be gone.
    pub fn wait_gone(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        while self.alive() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

/// Everything a container owns, as its launcher wrote it down.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The container's name (its state directory's).
    pub name: String,
    /// The image as given (`oci:...`, `docker-archive:...`, directories, or `/`).
    pub image: String,
    /// The stored image's id (config digest) when run from an image.
    pub image_id: Option<String>,
    /// The image store the image is in.
    pub store: Option<PathBuf>,
    /// The lower branches, topmost first.
    pub branches: Vec<PathBuf>,
    /// The command.
    pub command: Vec<String>,
    /// The writable branch.
    pub upper: PathBuf,
    /// Whether the upper is the fresh one in the state directory.
    pub upper_owned: bool,
    /// Started with `--rm`: upper and record go with the container.
    pub remove: bool,
    /// Started without root (mounts are undone with `unionfs umount`).
    pub rootless: bool,
    /// The launcher.
    pub launcher: Proc,
    /// The container's top process (init; rootless: the relay to it).
    pub init: Option<Proc>,
    /// The union's mountpoint, once mounted.
    pub mountpoint: Option<PathBuf>,
    /// cgroup directories created for it.
    pub cgroups: Vec<PathBuf>,
    /// Shared cgroup parents, removed when empty.
    pub cgroup_parents: Vec<PathBuf>,
    /// Seconds since the epoch at creation.
    pub created: u64,
    /// The exit status, once it ended.
    pub exit: Option<i32>,
    /// Why it ended, when not by itself (e.g. "launcher killed").
    pub note: Option<String>,
}

/// What `ps` says of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Its launcher runs.
    Running,
    /// It ended (with this status) and was torn down.
    Exited(i32),
    /// Its launcher was killed; not cleaned up yet.
    Dead,
}

impl Record {
    /// The state directory of container `name`.
    pub fn dir(root: &Path, name: &str) -> PathBuf {
        root.join(name)
    }

    /// Reads the record of the container in `dir`, if this user owns it
    /// and no one else can write it (see `trusted`).
    pub fn load(dir: &Path) -> Option<Record> {
        if !dir.parent().is_some_and(trusted) || !trusted(dir) || !trusted(&dir.join(RECORD)) {
            return None;
        }
        let text = std::fs::read(dir.join(RECORD)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes the record into `dir`, whole.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!(".{RECORD}.{}", std::process::id()));
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            // 0600 whatever the umask: only a record no one else can write is trusted.
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&text)?;
        }
        std::fs::rename(&tmp, dir.join(RECORD))
    }

    /// Running, exited, or dead (launcher gone without teardown).
    pub fn status(&self) -> Status {
        if self.launcher.alive() {
            Status::Running
        } else if let (Some(c), None) = (self.exit, &self.mountpoint) {
            Status::Exited(c)
        } else {
            Status::Dead
        }
    }
}

/// Whether `p` (not followed if a symlink) is owned by this user and
/// writable by no one else: a record is acted on (its upper removed, its
/// processes killed) only if nobody else could have written it — the
/// rootless state root sits in world-writable /dev/shm, where another user
/// could have made it first and planted records naming our files.
pub fn trusted(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p)
        .is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o022 == 0)
}

/// Every container record under `root` this user owns, sorted by creation.
pub fn list(root: &Path) -> Vec<(PathBuf, Record)> {
    if !trusted(root) {
        return Vec::new();
    }
    let mut v: Vec<(PathBuf, Record)> = std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let p = e.path();
                    if !trusted(&p) || !trusted(&p.join(RECORD)) {
                        return None;
                    }
                    Record::load(&p).map(|r| (p, r))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| (a.1.created, &a.1.name).cmp(&(b.1.created, &b.1.name)));
    v
}

/// Whether `path` is a mountpoint now.
fn mounted(path: &Path) -> bool {
    let want = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want)
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts the union at `m` with `unionfs umount`, which returns once
/// every copy-up is in the upper (a plain unmount is answered before the
/// daemon has published its last ones, and the upper is read next: `diff`,
/// `commit`); if that fails (busy), detaches it lazily.
pub fn unmount(m: &Path, rootless: bool) {
    let umount = |lazy: bool| {
        let mut c = std::process::Command::new(crate::unionfs_binary());
        c.arg("umount");
        if lazy {
            c.arg("-l");
        }
        c.arg(m)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if umount(false) || !mounted(m) {
        return;
    }
    if rootless {
        umount(true);
    } else {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Holds an exclusive flock on the state root directory itself (no lock
/// file: the root holds container directories only).
fn cleanup_lock(root: &Path) -> Option<Flock<File>> {
    std::fs::create_dir_all(root).ok()?;
    let f = File::open(root).ok()?;
    Flock::lock(f, FlockArg::LockExclusive).ok()
}

/// Undoes what a dead launcher left of the container in `dir`: its
/// processes (by recorded pid and start time, and its cgroups), its mount,
/// its cgroups, and — with `--rm` — its upper and state; without `--rm`
/// the upper and the record stay, marked ended. Returns what was done.
fn clean_one(dir: &Path, mut r: Record) -> String {
    if let Some(init) = r.init {
        // Only ours if it is the very process the launcher started.
        if init.signal(Signal::SIGKILL) {
            init.wait_gone(Duration::from_secs(5));
        }
    }
    let mut cg = Cgroup {
        dirs: r.cgroups.clone(),
        parents: r.cgroup_parents.clone(),
    };
    cg.kill_all();
    if let Some(m) = &r.mountpoint {
        if mounted(m) {
            unmount(m, r.rootless);
        }
    }
    cg.remove();
    if r.mountpoint.as_ref().is_some_and(|m| mounted(m)) {
        // Never delete under a mount still in place.
        return format!("{}: still mounted, left as it is", r.name);
    }
    let _ = std::fs::remove_dir(dir.join("root"));
    if r.remove {
        let _ = std::fs::remove_dir_all(&r.upper);
        let _ = std::fs::remove_dir_all(dir);
        format!("{}: removed (killed launcher, --rm)", r.name)
    } else {
        r.mountpoint = None;
        r.init = None;
        r.cgroups.clear();
        r.cgroup_parents.clear();
        r.exit.get_or_insert(137);
        r.note = Some("launcher killed".into());
        let _ = r.save(dir);
        format!(
            "{}: cleaned up (killed launcher); upper kept in {}",
            r.name,
            r.upper.display()
        )
    }
}

/// Cleans up every container under `root` whose launcher is gone without
/// its teardown. Returns one line per container cleaned.
pub fn cleanup(root: &Path) -> Vec<String> {
    let Some(_lock) = cleanup_lock(root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (dir, r) in list(root) {
        if r.status() == Status::Dead {
            out.push(clean_one(&dir, r));
        }
    }
    out
}

/// Stops the running container `name`: SIGTERM to its init, SIGKILL after
/// `timeout`, then waits for its launcher's teardown (or does it, if the
/// launcher is gone).
pub fn stop(root: &Path, name: &str, timeout: Duration) -> Result<String, String> {
    let dir = Record::dir(root, name);
    let Some(r) = Record::load(&dir) else {
        return Err(format!("no container named {name}"));
    };
    match r.status() {
        Status::Exited(_) => return Ok(format!("{name}: not running")),
        Status::Dead => {
            let _lock = cleanup_lock(root);
            return Ok(clean_one(&dir, r));
        }
        Status::Running => {}
    }
    // A launcher between start and fork has no init yet: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut r = r;
    while r.init.is_none() && r.launcher.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        r = Record::load(&dir).unwrap_or(r);
    }
    if let Some(init) = r.init {
        if init.signal(Signal::SIGTERM) && !init.wait_gone(timeout) {
            init.signal(Signal::SIGKILL);
            init.wait_gone(Duration::from_secs(10));
        }
    } else if r.launcher.alive() {
        // No container process yet: end the launcher, its teardown runs.
        r.launcher.signal(Signal::SIGTERM);
    }
    if !r.launcher.wait_gone(Duration::from_secs(30)) {
        return Err(format!(
            "{name}: the launcher (pid {}) did not finish its teardown",
            r.launcher.pid
        ));
    }
    if let Some(r) = Record::load(&dir) {
        if r.status() == Status::Dead {
            let _lock = cleanup_lock(root);
            clean_one(&dir, r);
        }
    }
    Ok(name.to_string())
}

/// Removes the stopped container `name`: its record, and its upper when it
/// is the fresh one in the state directory (an upper given with `--upper`
/// is the user's, and stays).
pub fn remove(root: &Path, name: &str) -> Result<String, String> {
    let dir = Record::dir(root, name);
    let Some(r) = Record::load(&dir) else {
        return Err(format!("no container named {name}"));
    };
    match r.status() {
        Status::Running => return Err(format!("{name} is running: stop it first")),
        Status::Dead => {
            let _lock = cleanup_lock(root);
            clean_one(&dir, r.clone());
        }
        Status::Exited(_) => {}
    }
    if r.upper_owned {
        let _ = std::fs::remove_dir_all(dir.join("upper"));
    }
    let _ = std::fs::remove_file(dir.join(RECORD));
    let _ = std::fs::remove_dir(dir.join("root"));
    std::fs::remove_dir(&dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat =
            "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_is_not() {
        let me = Proc::me().unwrap_or_else(|| unreachable!("no /proc/self"));
        assert!(me.alive());
        let other = Proc {
            start: me.start + 1,
            ..me
        };
        assert!(!other.alive(), "a reused pid is another process");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\"), "/x\\");
    }

    #[test]
    fn records_without_a_launcher_are_dead_and_others_are_left_alone() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let me = Proc::me().unwrap_or_else(|| unreachable!("no /proc/self"));
        let base = Record {
            name: "live".into(),
            image: "/".into(),
            image_id: None,
            store: None,
            branches: vec![PathBuf::from("/")],
            command: vec!["true".into()],
            upper: t.path().join("live/upper"),
            upper_owned: true,
            remove: true,
            rootless: false,
            launcher: me,
            init: None,
            mountpoint: None,
            cgroups: vec![],
            cgroup_parents: vec![],
            created: 1,
            exit: None,
            note: None,
        };
        let mk = |r: &Record| {
            let d = t.path().join(&r.name);
            std::fs::create_dir_all(d.join("upper")).unwrap_or_default();
            r.save(&d).unwrap_or_default();
        };
        mk(&base);
        let dead_rm = Record {
            name: "dead-rm".into(),
            upper: t.path().join("dead-rm/upper"),
            launcher: Proc {
                start: me.start + 1,
                ..me
            },
            ..base.clone()
        };
        mk(&dead_rm);
        let dead_kept = Record {
            name: "dead-kept".into(),
            upper: t.path().join("dead-kept/upper"),
            remove: false,
            ..dead_rm.clone()
        };
        mk(&dead_kept);
        // No record: not ours.
        std::fs::create_dir_all(t.path().join("foreign/upper")).unwrap_or_default();
        // A record others could have written: not ours either.
        let planted = Record {
            name: "planted".into(),
            upper: t.path().join("planted/upper"),
            ..dead_rm.clone()
        };
        mk(&planted);
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(
                t.path().join("planted"),
                std::fs::Permissions::from_mode(0o777),
            );
        }
        let lines = cleanup(t.path());
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(t.path().join("live/upper").exists());
        assert!(t.path().join("foreign/upper").exists());
        assert!(t.path().join("planted/upper").exists());
        assert!(!t.path().join("dead-rm").exists());
        assert!(t.path().join("dead-kept/upper").exists());
        let kept = Record::load(&t.path().join("dead-kept"));
        assert_eq!(kept.map(|r| r.status()), Some(Status::Exited(137)));
    }
}
