//! unionfs-run: run a command in a container whose root is a union of
//! read-only image branches and one writable upper.
//!
//! Order of work (`run`): create and limit the cgroup; mount the union (its
//! FUSE daemon stays in the host's namespaces, out of the container's
//! reach); enter a new pid namespace and fork init, which joins the cgroup,
//! unshares mount/uts/ipc/net/cgroup namespaces, sets up /proc, /dev, /sys,
//! pivots into the union and runs the command. Teardown always happens:
//! kill what is left, unmount, remove the cgroup, remove the upper with --rm.

pub mod capabilities;
pub mod cgroup;
pub mod commit;
pub mod confine;
pub mod container;
pub mod image;
pub mod masks;
pub mod ns;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod store;
#[allow(unsafe_code)]
pub mod sys;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::ForkResult;

use crate::cgroup::{Cgroup, Layout};
use crate::container::{Proc, Record};
use crate::process::EXIT_LAUNCHER;
use crate::spec::ContainerSpec;

/// A launcher failure: one line, exit status 125.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LaunchError(pub String);

fn fail(msg: impl Into<String>) -> LaunchError {
    LaunchError(msg.into())
}

/// Where containers keep their state: on tmpfs, so that with the host's
/// `/` as the image the upper is not inside its own lower; per user when
/// not root.
pub fn state_root() -> PathBuf {
    std::env::var_os("UNIONFS_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let uid = nix::unistd::geteuid();
            if uid.is_root() {
                PathBuf::from("/dev/shm/unionfs-run")
            } else {
                PathBuf::from(format!("/dev/shm/unionfs-run-{uid}"))
            }
        })
}

/// Fails with one line unless this user may create user namespaces.
fn probe_user_namespaces() -> Result<(), LaunchError> {
    match sys::fork().map_err(|e| fail(format!("cannot fork: {e}")))? {
        ForkResult::Child => {
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
            sys::exit_now(if ok { 0 } else { 1 })
        }
        ForkResult::Parent { child } => match nix::sys::wait::waitpid(child, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
            _ => Err(fail(format!(
                "not root, and user namespaces are not available to uid {}: run as root, or enable them (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone)",
                nix::unistd::getuid()
            ))),
        },
    }
}

/// The `unionfs` binary: next to this one, else on PATH.
pub fn unionfs_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("unionfs")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("unionfs"))
}

/// Where a container's image came from, for its record (`ps`, `commit`),
/// and how it runs.
#[derive(Debug, Default)]
pub struct Origin {
    /// Detached (`-d`): once the container is about to start, stdout and
    /// stderr go to /dev/null and a byte is written here (see `detach`).
    pub detach: Option<std::os::fd::OwnedFd>,
    /// The image as given on the command line.
    pub image: String,
    /// The stored image's id, when run from an image.
    pub image_id: Option<String>,
    /// The store holding it.
    pub store: Option<PathBuf>,
}

/// Everything to undo, undone on drop in reverse order of creation.
#[derive(Debug, Default)]
struct Teardown {
    rootless: bool,
    cgroup: Option<Cgroup>,
    mountpoint: Option<PathBuf>,
    state: Option<PathBuf>,
    upper: Option<PathBuf>,
    remove_upper: bool,
    /// The container's record, kept (with its exit status) without --rm.
    record: Option<Record>,
    exit: Option<i32>,
}

impl Teardown {
    /// Writes the record as things stand now: what a later cleanup undoes
    /// if this launcher is killed.
    fn save(&mut self) {
        let (Some(r), Some(dir)) = (self.record.as_mut(), self.state.as_ref()) else {
            return;
        };
        r.mountpoint = self.mountpoint.clone();
        if let Some(cg) = &self.cgroup {
            r.cgroups = cg.dirs.clone();
            r.cgroup_parents = cg.parents.clone();
        }
        let _ = r.save(dir);
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
        if let Some(m) = self.mountpoint.take() {
            crate::container::unmount(&m, self.rootless);
        }
        if let Some(mut cg) = self.cgroup.take() {
            cg.remove();
        }
        if self.remove_upper {
            if let Some(u) = self.upper.take() {
                let _ = std::fs::remove_dir_all(u);
            }
        }
        if let Some(s) = self.state.take() {
            let _ = std::fs::remove_dir(s.join("root"));
            match self.record.take() {
                // Kept: `ps` shows it ended, `rm` removes it.
                Some(mut r) if !r.remove => {
                    r.mountpoint = None;
                    r.cgroups.clear();
                    r.cgroup_parents.clear();
                    r.exit = Some(self.exit.unwrap_or(EXIT_LAUNCHER));
                    let _ = r.save(&s);
                }
                _ => {
                    let _ = std::fs::remove_file(s.join(container::RECORD));
                    let _ = std::fs::remove_dir(&s);
                }
            }
        }
    }
}

/// A branch list as `unionfs mount` and `--lowers` read it (`\:` escapes).
pub(crate) fn join_branches(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| {
            p.to_string_lossy()
                .replace('\\', "\\\\")
                .replace(':', "\\:")
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs the container; returns the exit status for the launcher.
pub fn run(spec: &ContainerSpec) -> i32 {
    run_from(spec, Origin::default())
}

/// Runs the container of an image from `origin`; returns the exit status.
pub fn run_from(spec: &ContainerSpec, mut origin: Origin) -> i32 {
    match run_inner(spec, &mut origin) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("unionfs-run: {e}");
            EXIT_LAUNCHER
        }
    }
}

/// Detached, before the container's first process is forked: the
/// launcher's setup is done and its errors reported; from here on its
/// output (and the container's, which inherits it) goes to /dev/null.
fn detach_output(ready: &Option<std::os::fd::OwnedFd>) {
    if ready.is_none() {
        return;
    }
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

/// Detached, once init is recorded: tells the waiting `unionfs-run -d`
/// that the container started (so `ps` and `stop` see its init).
fn report_started(ready: Option<std::os::fd::OwnedFd>) {
    if let Some(fd) = ready {
        let _ = std::fs::File::from(fd).write_all(b"r");
    }
}

fn run_inner(spec: &ContainerSpec, origin: &mut Origin) -> Result<i32, LaunchError> {
    let rootless = !nix::unistd::geteuid().is_root();
    if rootless {
        probe_user_namespaces()?;
    }
    // Signals are taken synchronously from the start, so a Ctrl-C during
    // setup still ends in a clean teardown.
    let set = process::block_signals().map_err(|e| fail(format!("cannot block signals: {e}")))?;
    let mut td = Teardown::default();
    let state = state_root().join(&spec.name);
    {
        use std::os::unix::fs::DirBuilderExt;
        // No group or other write whatever the umask (container.rs trusts
        // records only under such a root).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(state_root())
            .map_err(|e| fail(format!("cannot create {}: {e}", state_root().display())))?;
    }
    if !container::trusted(&state_root()) {
        // Someone else made it (it sits in world-writable /dev/shm when
        // rootless): they could swap our state, upper included.
        return Err(fail(format!(
            "the state directory {} belongs to another user or is writable by others",
            state_root().display()
        )));
    }
    // As podman does after a crash: whatever a killed launcher left (its
    // mount, cgroups, --rm upper) is undone before a new container starts,
    // so a name it held is free again. Only records whose launcher is
    // gone are touched (container.rs).
    for line in container::cleanup(&state_root()) {
        eprintln!("unionfs-run: {line}");
    }
    match std::fs::create_dir(&state) {
        Ok(()) => {
            td.state = Some(state.clone());
            // Only the launcher's user may enter: the upper holds whatever
            // the container made, device nodes and set-uid files included,
            // on a host file system that allows them.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| fail(format!("cannot restrict {}: {e}", state.display())))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(fail(format!(
                "a container named {} exists (or its state is left in {})",
                spec.name,
                state.display()
            )))
        }
        Err(e) => return Err(fail(format!("cannot create {}: {e}", state.display()))),
    }
    let root = state.join("root");
    std::fs::create_dir(&root)
        .map_err(|e| fail(format!("cannot create {}: {e}", root.display())))?;
    let upper = match &spec.upper {
        Some(u) => {
            std::fs::create_dir_all(u)
                .map_err(|e| fail(format!("cannot create upper {}: {e}", u.display())))?;
            u.clone()
        }
        None => {
            let u = state.join("upper");
            std::fs::create_dir(&u)
                .map_err(|e| fail(format!("cannot create {}: {e}", u.display())))?;
            u
        }
    };
    td.upper = Some(upper.clone());
    td.remove_upper = spec.remove;
    let launcher = Proc::me().ok_or_else(|| fail("cannot read /proc/self/stat"))?;
    td.record = Some(Record {
        name: spec.name.clone(),
        image: if origin.image.is_empty() && spec.layers.is_empty() {
            "/".to_string()
        } else if origin.image.is_empty() {
            join_branches(&spec.layers)
        } else {
            origin.image.clone()
        },
        image_id: origin.image_id.clone(),
        store: origin.store.clone(),
        branches: spec.layers.clone(),
        command: spec.argv.clone(),
        upper: upper.clone(),
        upper_owned: spec.upper.is_none(),
        remove: spec.remove,
        rootless,
        launcher,
        init: None,
        mountpoint: None,
        cgroups: Vec::new(),
        cgroup_parents: Vec::new(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        exit: None,
        note: None,
    });
    td.save();

    // Built before any container process exists, so a filter that cannot
    // be built is a launcher error.
    let plan = confine::Plan::new(&spec.security).map_err(|e| fail(e.to_string()))?;

    // Without limits or a device list there is nothing for a cgroup to do:
    // the pid namespace already ends every process of the container with
    // its init. Rootless, the devices cgroup is out of reach and not needed:
    // a user namespace cannot make device nodes, and its mounts are nodev.
    let layout = Layout::detect();
    let devices = spec.security.devices() && !rootless;
    if cgroup::needed(&layout, &spec.limits, devices) {
        let cg = Cgroup::create(
            &layout,
            &format!("unionfs-run-{}", spec.name),
            &spec.limits,
            devices,
        )
        .map_err(|e| {
            if rootless {
                fail(format!(
                    "resource limits need root or a delegated cgroup ({e})"
                ))
            } else {
                fail(e.to_string())
            }
        })?;
        td.cgroup = Some(cg);
        td.save();
    }

    if let Some(arch) = &spec.image_arch {
        store::config::check_architecture(arch, Path::new("/proc/sys/fs/binfmt_misc"))
            .map_err(fail)?;
    }

    let layers = if spec.layers.is_empty() {
        vec![PathBuf::from("/")]
    } else {
        spec.layers.clone()
    };
    let out = Command::new(unionfs_binary())
        .arg("mount")
        .arg(join_branches(&layers))
        .arg(&upper)
        .arg(&root)
        .output()
        .map_err(|e| fail(format!("cannot run {}: {e}", unionfs_binary().display())))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let line = msg
            .lines()
            .last()
            .unwrap_or("unionfs mount failed")
            .trim_start_matches("unionfs: ");
        return Err(fail(format!("cannot mount the container root: {line}")));
    }
    td.mountpoint = Some(root.clone());
    td.rootless = rootless;
    td.save();

    if !spec.layers.is_empty() {
        image::check_runnable(
            &root,
            &spec.argv[0],
            &process::PATH.split(':').collect::<Vec<_>>(),
            Path::new("/proc/sys/fs/binfmt_misc"),
        )
        .map_err(fail)?;
    }

    // The image's User names an account of the image: look it up in the
    // union itself, where the image's own /etc/passwd is.
    let resolved;
    let spec = match (&spec.user, &spec.image_user) {
        (None, Some(u)) => {
            let mut s = spec.clone();
            s.user = Some(store::config::lookup_user(&root, u).map_err(fail)?);
            resolved = s;
            &resolved
        }
        _ => spec,
    };

    if rootless {
        detach_output(&origin.detach);
        let me = nix::unistd::getpid();
        let relay = match sys::fork().map_err(|e| fail(format!("cannot fork: {e}")))? {
            ForkResult::Child => {
                std::mem::forget(td);
                let (uid, gid) = (
                    nix::unistd::getuid().as_raw(),
                    nix::unistd::getgid().as_raw(),
                );
                process::rootless_relay(spec, &root, &plan, uid, gid, me)
            }
            ForkResult::Parent { child } => child,
        };
        if let Some(cg) = &td.cgroup {
            let _ = cg.join(relay.as_raw());
        }
        if let Some(r) = td.record.as_mut() {
            r.init = Proc::of(relay.as_raw());
        }
        td.save();
        report_started(origin.detach.take());
        let code = process::wait_forwarding(relay, &set);
        if spec.upper.is_none() && !spec.remove {
            eprintln!("unionfs-run: changes kept in {}", upper.display());
        }
        td.exit = Some(code);
        drop(td);
        return Ok(code);
    }
    nix::sched::unshare(ns::launcher_namespaces())
        .map_err(|e| fail(format!("cannot create a pid namespace: {e}")))?;
    detach_output(&origin.detach);
    let (go_rd, go_wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail(format!("pipe: {e}")))?;
    let init = match sys::fork().map_err(|e| fail(format!("cannot fork: {e}")))? {
        ForkResult::Child => {
            drop(go_wr);
            // Nothing of the launcher's teardown belongs to init.
            std::mem::forget(td);
            process::init(spec, &root, &plan, go_rd)
        }
        ForkResult::Parent { child } => child,
    };
    drop(go_rd);
    if let Some(cg) = &td.cgroup {
        if let Err(e) = cg.join(init.as_raw()) {
            let _ = nix::sys::signal::kill(init, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(init, None);
            return Err(fail(e.to_string()));
        }
    }
    if let Some(r) = td.record.as_mut() {
        r.init = Proc::of(init.as_raw());
    }
    td.save();
    // Kept open until init has ended: init checks after setting its
    // parent-death signal that this end is still open, i.e. that the
    // launcher had not died before (process::init).
    let mut go = std::fs::File::from(go_wr);
    let _ = go.write_all(b"g");
    report_started(origin.detach.take());
    let code = process::wait_forwarding(init, &set);
    drop(go);
    if spec.upper.is_none() && !spec.remove {
        eprintln!("unionfs-run: changes kept in {}", upper.display());
    }
    td.exit = Some(code);
    drop(td);
    Ok(code)
}
