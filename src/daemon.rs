//! Running a mount: open the branches, mount, go to the background once the
//! mount serves, run the event loops until the mount goes away.
//!
//! Invariant: the parent process exits 0 only after the kernel's INIT was
//! answered (the mount is live) and the forked daemon said it is ready to
//! serve; on any failure before that, nothing stays mounted and nothing the
//! daemon created stays in the upper.
//! Locks: opening the stack takes the union's `flock`s on its writable
//! branches and workdir (`upper::hold_all`, which may wait up to 30 s for
//! another union to let go); no mutex of its own.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fuser::{Config, Session, SessionACL};
use nix::mount::MsFlags;
use nix::sys::signal::{SigSet, Signal};

use crate::backing::Backings;
use crate::branch::BranchId;
use crate::config::{join_branches, MountConfig, Passthrough, Uring};
use crate::fuse::FuseAdapter;
use crate::live::Opener;
use crate::mode::Mode;
use crate::ops::{CoreOptions, UnionFs};
use crate::stack::BranchStack;
use crate::sys;
use crate::udba::{Udba, Watcher};
use crate::upper::XattrNs;
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

/// The mount's settings for opening branches, now and on live changes.
fn opener(cfg: &MountConfig) -> Opener {
    Opener {
        clone: is_root(),
        format: cfg.options.whiteout,
        ns: if is_root() {
            XattrNs::Trusted
        } else {
            XattrNs::User
        },
        durable: !cfg.options.volatile,
        batch_sync: cfg
            .options
            .batch_sync
            .unwrap_or(cfg.dialect != crate::config::Dialect::Overlay),
        metacopy: cfg
            .options
            .metacopy
            .unwrap_or(cfg.dialect == crate::config::Dialect::Native),
        sparse: cfg.options.sparse,
        native: cfg.dialect == crate::config::Dialect::Native,
        copy_strategy: cfg.options.copyup,
        read_only: cfg.options.read_only,
    }
}

/// Opens the branches (upper first) and the writers of the writable ones,
/// for a union caching at most `cached_fds` backing fds.
fn open_stack(cfg: &MountConfig, opener: &Opener, cached_fds: usize) -> Result<BranchStack> {
    let backings = Backings::new(cached_fds);
    let mut branches = Vec::new();
    let mut writers = Vec::new();
    let upper = cfg
        .upper
        .iter()
        .map(|u| (u, cfg.upper_mode, cfg.workdir.as_deref()));
    let lowers = cfg
        .lowers
        .iter()
        .zip(
            cfg.lower_modes
                .iter()
                .copied()
                .chain(std::iter::repeat(Mode::RO_WH)),
        )
        .map(|(l, m)| (l, m, None));
    let mut opened = Vec::new();
    for (id, (path, mode, workdir)) in upper.chain(lowers).enumerate() {
        let id = u16::try_from(id).context("too many branches")?;
        opened.push((
            opener.branch(BranchId(id), path, mode, &backings)?,
            workdir,
            path,
        ));
    }
    // Every directory the writers will lock, locked first in one order: two
    // unions sharing writable branches in opposite orders must not each
    // hold one and wait for the other.
    let workdirs: Vec<_> = opened
        .iter()
        .filter_map(|(b, w, _)| w.filter(|_| b.mode.writable()))
        .map(|w| {
            sys::fs::open_path_abs(w)
                .map(|fd| (fd, w))
                .with_context(|| format!("cannot open workdir {}", w.display()))
        })
        .collect::<Result<_>>()?;
    let dirs = opened
        .iter()
        .filter(|(b, _, _)| b.mode.writable())
        .map(|(b, _, _)| (b.root(), b.path.as_path()))
        .chain(
            workdirs
                .iter()
                .map(|(fd, w)| (std::os::fd::AsFd::as_fd(fd), *w)),
        );
    let _held =
        crate::upper::hold_all(&backings, dirs).context("cannot lock the writable branches")?;
    for (mut b, workdir, path) in opened {
        if b.mode.writable() {
            writers.push(opener.writer(&mut b, workdir)?);
        } else if cfg.upper.as_ref() == Some(path) {
            // A read-only mount of an upper reads its whiteouts as written.
            let (format, recorded) = crate::live::branch_format(opener.format, &b)?;
            b.char_whiteouts = !(recorded && format == WhiteoutFormat::Aufs);
        }
        branches.push(b);
    }
    // One format is written: a second writable branch must agree.
    if let Some(f) = writers.first().map(|w| w.format) {
        if let Some(w) = writers.iter().find(|w| w.format != f) {
            let p = branches
                .iter()
                .find(|b| b.id == w.branch)
                .map(|b| b.path.display().to_string());
            bail!(
                "branch {} holds {} whiteouts, the union writes {}: give whiteout= to choose",
                p.unwrap_or_default(),
                w.format,
                f
            );
        }
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

/// Mounts and serves `cfg`. Returns when the mount is gone (foreground);
/// in the background, the parent exits 0 once the forked daemon is ready to
/// serve (its code locked in memory, its control and signal threads
/// running), or unmounts and exits 1 if the daemon ended before that.
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

/// The fd table the daemon reserves at start: room for its fd cache and
/// the files, listings and branches beside it (half the fd limit, see
/// `run_mount`), up to 16,384 slots (128 KiB of kernel memory). A daemon
/// that holds more grows its table beyond that, a grace period per
/// doubling, once.
fn reserved_fds(cached_fds: usize) -> usize {
    cached_fds.saturating_mul(2).min(16_384)
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
    let opener = opener(cfg);
    let mut stack = open_stack(cfg, &opener, cached_fds)?;
    if cfg.options.udba.unwrap_or_default() == Udba::None {
        // Read-only branches do not change behind the union: lookups in
        // deep stacks may skip the layers a directory listing rules out.
        stack = stack.with_layer_index_from(crate::stack::INDEXED_LAYERS);
    }
    // What the union writes must stay deletable in its format.
    let name_max = stack
        .writer()
        .map_or(crate::whiteout::NAME_MAX, |u| u.format.name_max());
    let core = UnionFs::new(
        stack,
        CoreOptions {
            name_max,
            statfs: cfg.options.statfs.unwrap_or_default(),
            create: cfg.options.create.unwrap_or_default(),
            cpup: cfg.options.cpup.unwrap_or_default(),
            prefetch: cfg.options.prefetch.unwrap_or(true),
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
    .with_udba(udba, watcher.clone())
    .with_readdirplus(cfg.options.readdirplus.unwrap_or_default());
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
    fconf.busy_poll = match cfg.options.spin.unwrap_or_default() {
        crate::config::Spin::Auto => Some(fuser::BusyPoll::Adaptive(crate::config::AUTO_SPIN)),
        crate::config::Spin::Fixed(d) if d.is_zero() => None,
        crate::config::Spin::Fixed(d) => Some(fuser::BusyPoll::Fixed(d)),
    };
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
    // Bound before the mount command returns, so `unionfs branch` works
    // right after it; served from a thread started after the fork.
    let control = match crate::control::Server::bind(&mnt) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(
                "no control socket for {} (branch changes refused): {e}",
                mnt.display()
            );
            None
        }
    };
    tracing::info!(
        "mounted {} (upper {}) on {}",
        join_branches(&cfg.lowers),
        cfg.upper
            .as_ref()
            .map_or("-".into(), |u| u.display().to_string()),
        mnt.display()
    );
    let mut daemon_ready = None;
    if !cfg.foreground {
        // Opened before the fork, so a bad path fails the mount command.
        let log = match &cfg.options.log {
            Some(p) => Some(
                sys::process::open_log(std::path::Path::new(p))
                    .with_context(|| format!("cannot open the log file {p}"))?,
            ),
            None => None,
        };
        let (wait, ready) = sys::process::ready_pipe().context("cannot make the readiness pipe")?;
        match sys::process::fork().context("cannot fork the daemon")? {
            // Exit without running destructors: the daemon owns the mount
            // now. Not before it is ready: its code locked in memory, its
            // control socket and signal handling running (a program that
            // measures or controls the daemon right after `mount` returns
            // finds it as it stays).
            sys::process::Forked::Parent(_) => {
                drop(ready);
                if sys::process::wait_ready(wait) {
                    std::process::exit(0);
                }
                // Nothing stays mounted: a mount no daemon serves answers
                // every access with ENOTCONN.
                undo_mount(&mnt);
                let log = cfg
                    .options
                    .log
                    .as_deref()
                    .map_or(String::new(), |p| format!(" (its log: {p})"));
                eprintln!(
                    "unionfs: the daemon of {} ended before it was ready{log}; unmounted",
                    mnt.display()
                );
                std::process::exit(1);
            }
            sys::process::Forked::Child => {
                drop(wait);
                sys::process::detach(log).context("cannot detach the daemon")?;
                daemon_ready = Some(ready);
            }
        }
    }
    // In the serving process, before its threads start: a table grown
    // later would make requests wait (`sys::process::reserve_fds`).
    if !sys::process::reserve_fds(reserved_fds(cached_fds)) {
        tracing::debug!("the fd table grows as it fills (fd limit below the reservation)");
    }
    // In the serving process (a lock does not survive the fork): the
    // daemon's code stays in memory, so a request never waits on the disk
    // for it (sys::resident).
    sys::resident::lock_code();
    spawn_signal_unmounter(&mnt);
    let socket = control.as_ref().map(|c| c.path().to_path_buf());
    if let Some(c) = control {
        let live = crate::live::LiveBranches {
            fs: Arc::clone(&core),
            mountpoint: mnt.clone(),
            opener,
        };
        c.spawn(Arc::new(live))
            .context("cannot start the control thread")?;
    }
    if let Some(w) = &watcher {
        // After the fork (threads do not survive it), with the signal mask
        // set. Events since the root's watch (before the fork) are queued.
        w.spawn()
            .context("udba=notify: cannot start the watcher thread")?;
    }
    if let Some(r) = daemon_ready {
        r.tell();
    }
    let served = session.run().context("FUSE session failed");
    // Copy-ups not yet renamed into the upper: published before the daemon
    // exits (the next mount, or overlayfs, reads them from there).
    if let Err(e) = core.publish_pending() {
        tracing::error!("copy-ups left unpublished at unmount: {e}");
    }
    // Partially copied-up files: synced, or filled in overlay format.
    core.finish_partials();
    if let Some(p) = socket {
        let _ = std::fs::remove_file(p);
    }
    served
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

/// Detaches the mount at `mnt` (lazily: nothing may be using it, but it
/// must not stay) after its daemon failed; best effort.
fn undo_mount(mnt: &Path) {
    if is_root() {
        let _ = sys::mount::umount(mnt, true);
    } else {
        let _ = std::process::Command::new("fusermount3")
            .arg("-uz")
            .arg(mnt)
            .status();
    }
}

/// `unionfs umount MNT`.
pub fn run_umount(mnt: &Path, lazy: bool) -> Result<()> {
    // The kernel answers the unmount before the daemon has ended: it still
    // publishes its pending copy-ups into the upper (`batch_sync=on`). So
    // unless the unmount is lazy (the daemon then serves on while files
    // are open), the daemon is asked to publish them, and this returns
    // once it has: as with kernel overlayfs, the upper is complete when
    // umount returns. (A daemon gone already published them first.)
    let sock = if lazy {
        None
    } else {
        crate::control::socket_of(mnt)
    };
    if is_root() {
        sys::mount::umount(mnt, lazy)
            .with_context(|| format!("cannot unmount {}", mnt.display()))?;
    } else {
        let st = std::process::Command::new("fusermount3")
            .arg(if lazy { "-uz" } else { "-u" })
            .arg(mnt)
            .status()
            .context("cannot run fusermount3")?;
        anyhow::ensure!(st.success(), "cannot unmount {}", mnt.display());
    }
    if let Some(sock) = sock {
        match crate::control::request_at(mnt, &sock, &crate::control::Request::Flush) {
            Ok(_) | Err(crate::control::ClientError::NoDaemon(_)) => {}
            Err(crate::control::ClientError::Refused(r)) => {
                anyhow::bail!("{} is unmounted, but {}", mnt.display(), r.msg)
            }
        }
    }
    Ok(())
}
