//! Running a mount: open the branches, mount, go to the background once the
//! mount serves, run the event loops until the mount goes away.
//!
//! Invariant: the parent process exits 0 only after the kernel's INIT was
//! answered (the mount is live); on any failure before that, nothing stays
//! mounted and nothing the daemon created stays in the upper.
//! Takes no locks.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fuser::{Config, Session, SessionACL};
use nix::mount::MsFlags;
use nix::sys::signal::{SigSet, Signal};

use crate::backing::Backings;
use crate::branch::{Branch, BranchId, BranchMode};
use crate::config::{join_branches, MountConfig, Passthrough, Uring};
use crate::fuse::FuseAdapter;
use crate::ops::{CoreOptions, UnionFs};
use crate::stack::BranchStack;
use crate::sys;
use crate::udba::{Udba, Watcher};
use crate::upper::{Upper, XattrNs};
use crate::whiteout::{self, WhiteoutFormat};

/// Default kernel cache lifetime: the union invalidates what it changes
/// itself, and lower branches are trusted not to change under it
/// (`udba=none`; `udba=notify` invalidates what changes in them).
pub const DEFAULT_TTL: Duration = Duration::from_secs(86_400);

/// The kernel cache lifetime for `udba`, unless `ttl=` says otherwise:
/// `reval` caches nothing, so every access reaches the daemon.
fn default_ttl(udba: Udba) -> Duration {
    match udba {
        Udba::None | Udba::Notify => DEFAULT_TTL,
        Udba::Reval => Duration::ZERO,
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Sets up logging: `-d` logs every request, `RUST_LOG` works too.
pub fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_log::LogTracer::init();
    // Colours only on a terminal: a daemon's stderr is usually a log file.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Makes the staging directory inside the upper when no workdir is given;
/// returns whether it was created by us (to remove it on failure).
fn prepare_staging(cfg: &MountConfig) -> Result<Option<std::path::PathBuf>> {
    let (Some(upper), None) = (&cfg.upper, &cfg.workdir) else {
        return Ok(None);
    };
    let staging = upper.join(whiteout::STAGING_NAME);
    let root = sys::fs::open_path_abs(upper)?;
    let before = sys::fs::fstat(std::os::fd::AsFd::as_fd(&root))?;
    match std::fs::create_dir(&staging) {
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))?;
            // Mounting is not a change of the upper root: keep its times.
            sys::fs::utimes_fd(
                std::os::fd::AsFd::as_fd(&root),
                sys::fs::SetTime::At(before.st_atime, before.st_atime_nsec),
                sys::fs::SetTime::At(before.st_mtime, before.st_mtime_nsec),
            )?;
            Ok(Some(staging))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", staging.display())),
    }
}

/// The whiteout format of the upper, and whether it is (to be) recorded on
/// it: what the upper recorded; else the option, recorded; else AUFS,
/// recorded only on an empty upper — an unrecorded upper with content came
/// from another tool, so its char 0:0 devices stay whiteouts. A recorded
/// format that contradicts the option is an error: one upper never mixes.
fn upper_format(cfg: &MountConfig, upper: &Branch) -> Result<(WhiteoutFormat, bool)> {
    let recorded = crate::upper::recorded_format(upper.root())
        .with_context(|| format!("cannot read upper branch {}", upper.path.display()))?;
    match (recorded, cfg.options.whiteout) {
        (Some(r), Some(o)) if r != o => anyhow::bail!(
            "upper branch {} holds {} whiteouts; it cannot be mounted with whiteout={}",
            upper.path.display(),
            r,
            o
        ),
        (Some(r), _) => Ok((r, true)),
        (None, Some(o)) => Ok((o, true)),
        (None, None) => {
            let empty = std::fs::read_dir(&upper.path)
                .with_context(|| format!("cannot read upper branch {}", upper.path.display()))?
                .filter_map(|e| e.ok())
                .all(|e| e.file_name() == whiteout::STAGING_NAME);
            Ok((WhiteoutFormat::default(), empty))
        }
    }
}

/// Opens the branches (upper first) and the upper's staging area (its
/// writer), for a union caching at most `cached_fds` backing fds.
fn open_stack(cfg: &MountConfig, cached_fds: usize) -> Result<BranchStack> {
    let clone = is_root();
    let backings = Backings::new(cached_fds);
    let mut branches = Vec::new();
    let mut id = 0u16;
    let mut writers = Vec::new();
    if let Some(u) = &cfg.upper {
        let mode = if cfg.options.read_only {
            BranchMode::ReadOnly
        } else {
            BranchMode::ReadWrite
        };
        // The upper is opened directly, not as a clone: copy-up renames
        // between it and the workdir, which must be on one mount.
        let mut b = Branch::open(BranchId(id), u, mode, false, &backings)
            .with_context(|| format!("cannot open upper branch {}", u.display()))?;
        let (format, recorded) = upper_format(cfg, &b)?;
        // In an upper recorded as AUFS format a char 0:0 device is a user's device.
        b.char_whiteouts = !(recorded && format == WhiteoutFormat::Aufs);
        if mode == BranchMode::ReadWrite {
            let ns = if is_root() {
                XattrNs::Trusted
            } else {
                XattrNs::User
            };
            let mut up = Upper::open(&b, cfg.workdir.as_deref(), format, recorded, ns)
                .with_context(|| format!("cannot prepare the workdir of {}", u.display()))?;
            up.durable = !cfg.options.volatile;
            up.metacopy = cfg
                .options
                .metacopy
                .unwrap_or(cfg.dialect == crate::config::Dialect::Native);
            up.copy_strategy = cfg.options.copyup;
            writers.push(up);
        }
        branches.push(b);
        id += 1;
    }
    for l in &cfg.lowers {
        branches.push(
            Branch::open(BranchId(id), l, BranchMode::ReadOnly, clone, &backings)
                .with_context(|| format!("cannot open lower branch {}", l.display()))?,
        );
        id += 1;
    }
    Ok(BranchStack::new(branches, writers, backings))
}

fn mount_flags(cfg: &MountConfig) -> MsFlags {
    let mut f = MsFlags::empty();
    for w in &cfg.options.flags {
        match w.as_str() {
            "nosuid" => f |= MsFlags::MS_NOSUID,
            "nodev" => f |= MsFlags::MS_NODEV,
            "noexec" => f |= MsFlags::MS_NOEXEC,
            "noatime" => f |= MsFlags::MS_NOATIME,
            "sync" => f |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => f |= MsFlags::MS_DIRSYNC,
            "norelatime" => f &= !MsFlags::MS_RELATIME,
            "relatime" => f |= MsFlags::MS_RELATIME,
            _ => {}
        }
    }
    if cfg.upper.is_none() || cfg.options.read_only {
        f |= MsFlags::MS_RDONLY;
    }
    f
}

fn source_name(cfg: &MountConfig) -> String {
    cfg.options
        .fsname
        .clone()
        .unwrap_or_else(|| "unionfs".into())
}

/// Mounts and serves `cfg`. Returns when the mount is gone (foreground) or,
/// in the parent, as soon as it is live (background).
pub fn run_mount(cfg: MountConfig) -> Result<()> {
    init_logging(cfg.debug);
    for w in &cfg.options.ignored {
        tracing::warn!("ignoring mount option '{w}'");
        if matches!(
            cfg.dialect,
            crate::config::Dialect::Overlay | crate::config::Dialect::Aufs
        ) {
            eprintln!("unionfs: warning: ignoring mount option '{w}'");
        }
    }
    let nofile = sys::process::raise_nofile();
    // Half the fd limit for cached backing fds; the rest for open files,
    // directory listings and branches.
    let cached_fds = usize::try_from(nofile / 2)
        .unwrap_or(4096)
        .clamp(64, 65_536);
    // Modes of created objects are exactly what the caller asked for (the
    // kernel applied the caller's umask already).
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let created = prepare_staging(&cfg)?;
    let res = mount_and_serve(&cfg, cached_fds);
    if res.is_err() {
        if let Some(s) = created {
            let _ = std::fs::remove_dir(s);
        }
    }
    res
}

/// The fuse module parameter that lets a daemon use io_uring.
const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Settles `uring=`: `on` turns the module parameter on (root only) or
/// fails here, before anything is mounted.
fn uring_mode(mode: Uring, root: bool) -> Result<Uring> {
    if mode != Uring::On {
        return Ok(mode);
    }
    let now = std::fs::read_to_string(ENABLE_URING).with_context(|| {
        format!("uring=on: this kernel has no FUSE over io_uring ({ENABLE_URING})")
    })?;
    if now.trim() != "Y" {
        if !root {
            bail!("uring=on: FUSE over io_uring is off; as root: echo Y > {ENABLE_URING}");
        }
        std::fs::write(ENABLE_URING, "Y")
            .with_context(|| format!("uring=on: cannot turn on {ENABLE_URING}"))?;
        tracing::info!("turned on FUSE over io_uring ({ENABLE_URING})");
    }
    Ok(mode)
}

fn mount_and_serve(cfg: &MountConfig, cached_fds: usize) -> Result<()> {
    let stack = open_stack(cfg, cached_fds)?;
    // What the union writes must stay deletable in its format.
    let name_max = stack
        .writer()
        .map_or(crate::whiteout::NAME_MAX, |u| u.format.name_max());
    let core = UnionFs::new(
        stack,
        CoreOptions {
            name_max,
            statfs: cfg.options.statfs.unwrap_or_default(),
        },
    )
    .context("cannot read the branch roots")?;
    let core = Arc::new(core);
    let udba = cfg.options.udba.unwrap_or_default();
    let watcher = match udba {
        Udba::Notify => {
            Some(Watcher::new(Arc::clone(&core)).context("udba=notify: cannot start inotify")?)
        }
        Udba::None | Udba::Reval => None,
    };
    let root = is_root();
    // Registering a backing file needs CAP_SYS_ADMIN.
    let passthrough = if root {
        cfg.options.passthrough.unwrap_or_default()
    } else {
        Passthrough::Off
    };
    let fs = FuseAdapter::new(
        Arc::clone(&core),
        cfg.options.ttl.unwrap_or_else(|| default_ttl(udba)),
        passthrough,
    )
    .with_uring(uring_mode(cfg.options.uring.unwrap_or_default(), root)?)
    .with_udba(udba, watcher.clone());
    let allow_other = cfg.options.allow_other.unwrap_or(root);
    let default_permissions = cfg.options.default_permissions.unwrap_or(root);
    let threads = cfg
        .options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    // With passthrough=all a writer may wait for a reader's RELEASE, which
    // another event loop must be free to take.
    let threads = if passthrough == Passthrough::All {
        threads.max(2)
    } else {
        threads
    };
    let acl = if allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let mut fconf = Config::default();
    fconf.acl = acl;
    fconf.n_threads = Some(threads);
    fconf.clone_fd = true;
    // Two ring threads per CPU: a request that waits (a writer waiting for
    // a reader's RELEASE, a long copy-up) does not hold up its CPU's queue.
    fconf.uring_threads_per_queue = Some(2);
    fconf.busy_poll = cfg.options.spin.filter(|d| !d.is_zero());
    let mnt = cfg.mountpoint.clone();
    let session = if root {
        let mut data = Vec::new();
        if allow_other {
            data.push("allow_other");
        }
        if default_permissions {
            data.push("default_permissions");
        }
        let dev =
            sys::mount::fuse_mount(&mnt, &source_name(cfg), &data.join(","), mount_flags(cfg))
                .with_context(|| format!("cannot mount on {}", mnt.display()))?;
        match Session::from_fd(fs, dev, acl, fconf) {
            Ok(s) => s,
            Err(e) => {
                let _ = sys::mount::umount(&mnt, true);
                return Err(e).context("FUSE handshake failed");
            }
        }
    } else {
        let mut data = vec![
            format!("fsname={}", source_name(cfg)),
            "subtype=unionfs".to_string(),
        ];
        if default_permissions {
            data.push("default_permissions".into());
        }
        if allow_other {
            data.push("allow_other".into());
        }
        if mount_flags(cfg).contains(MsFlags::MS_RDONLY) {
            data.push("ro".into());
        }
        let dev = sys::mount::fusermount(&mnt, &data.join(","))
            .with_context(|| format!("cannot mount on {} (through fusermount3)", mnt.display()))?;
        Session::from_fd(fs, dev, acl, fconf).context("FUSE handshake failed")?
    };
    core.set_invalidator(Box::new(crate::fuse::KernelInvalidator(session.notifier())));
    if let Some(w) = &watcher {
        // The kernel holds the root from the start; watched before the
        // mount command returns, so no change after it is missed (the
        // inotify instance and its watches survive the fork).
        w.watch(crate::inode::ROOT_INO);
    }
    tracing::info!(
        "mounted {} (upper {}) on {}",
        join_branches(&cfg.lowers),
        cfg.upper
            .as_ref()
            .map_or("-".into(), |u| u.display().to_string()),
        mnt.display()
    );
    if !cfg.foreground {
        // Opened before the fork, so a bad path fails the mount command.
        let log = match &cfg.options.log {
            Some(p) => Some(
                sys::process::open_log(std::path::Path::new(p))
                    .with_context(|| format!("cannot open the log file {p}"))?,
            ),
            None => None,
        };
        match sys::process::fork().context("cannot fork the daemon")? {
            // Exit without running destructors: the daemon owns the mount now.
            sys::process::Forked::Parent(_) => std::process::exit(0),
            sys::process::Forked::Child => {
                sys::process::detach(log).context("cannot detach the daemon")?;
            }
        }
    }
    spawn_signal_unmounter(&mnt);
    if let Some(w) = &watcher {
        // After the fork (threads do not survive it), with the signal mask
        // set. Events since the root's watch (before the fork) are queued.
        w.spawn()
            .context("udba=notify: cannot start the watcher thread")?;
    }
    session.run().context("FUSE session failed")?;
    Ok(())
}

/// On SIGINT/SIGTERM/SIGHUP, detach the mount so the event loops end and
/// the daemon exits cleanly instead of leaving a dead mount behind.
fn spawn_signal_unmounter(mnt: &Path) {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    // Block in this thread before the event loops are spawned, so every
    // thread inherits the mask and only the waiter below sees the signals.
    if set.thread_block().is_err() {
        return;
    }
    let mnt = mnt.to_path_buf();
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                tracing::info!("{sig:?}: unmounting {}", mnt.display());
                if sys::mount::umount(&mnt, true).is_err() {
                    let _ = std::process::Command::new("fusermount3")
                        .arg("-uz")
                        .arg(&mnt)
                        .status();
                }
            }
        });
}

/// `unionfs umount MNT`.
pub fn run_umount(mnt: &Path, lazy: bool) -> Result<()> {
    if is_root() {
        sys::mount::umount(mnt, lazy).with_context(|| format!("cannot unmount {}", mnt.display()))
    } else {
        let st = std::process::Command::new("fusermount3")
            .arg(if lazy { "-uz" } else { "-u" })
            .arg(mnt)
            .status()
            .context("cannot run fusermount3")?;
        anyhow::ensure!(st.success(), "cannot unmount {}", mnt.display());
        Ok(())
    }
}
