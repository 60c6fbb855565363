//! From command-line words to a validated `MountConfig`.
//!
//! Invariant: a `MountConfig` only exists for a mount that can be attempted:
//! every branch exists and is a directory, no directory is used twice, no
//! branch or the mount point is nested inside another on the same mount,
//! and the mount point is a free directory. Option parsing is pure; only
//! `MountConfig::validate` looks at the filesystem. Takes no locks.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mode::Mode;
use crate::upper::Strategy;
use crate::whiteout::WhiteoutFormat;

/// A configuration error: one line for the user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No lower branch was given.
    #[error("no lower branch given (usage: unionfs mount LOWER1[:LOWER2...] [UPPER] MNT)")]
    NoLower,
    /// Wrong number of positional arguments.
    #[error("{0}")]
    Usage(String),
    /// Unknown `-o` key in the native dialect.
    #[error("unknown mount option '{0}' (see unionfs mount --help)")]
    UnknownOption(String),
    /// A `-o` value that does not parse.
    #[error("bad value for mount option '{key}': '{value}'")]
    BadValue {
        /// The option.
        key: String,
        /// Its value.
        value: String,
    },
    /// A path does not exist.
    #[error("{role} {path}: no such directory")]
    Missing {
        /// What the path was for.
        role: &'static str,
        /// The path.
        path: String,
    },
    /// A path is not a directory.
    #[error("{role} {path} is not a directory")]
    NotDir {
        /// What the path was for.
        role: &'static str,
        /// The path.
        path: String,
    },
    /// Some other error reading a path.
    #[error("{role} {path}: {err}")]
    Io {
        /// What the path was for.
        role: &'static str,
        /// The path.
        path: String,
        /// The error.
        err: String,
    },
    /// One directory given twice.
    #[error("{a} and {b} are the same directory")]
    Duplicate {
        /// First use.
        a: String,
        /// Second use.
        b: String,
    },
    /// One path nested inside another.
    #[error("{inner_role} {inner} is inside {outer_role} {outer}")]
    Nested {
        /// The inner path's role.
        inner_role: &'static str,
        /// The inner path.
        inner: String,
        /// The outer path's role.
        outer_role: &'static str,
        /// The outer path.
        outer: String,
    },
    /// A branch mode word that no union dialect knows.
    #[error("unknown branch mode '{mode}' in '{branch}' (expected rw, ro, rr or nfsro; ro may take +wh)")]
    BadMode {
        /// The mode as written.
        mode: String,
        /// The branch item it was written in.
        branch: String,
    },
    /// The mount point is in use.
    #[error("mount point {0} is already a mount point")]
    Busy(String),
    /// The workdir is on another filesystem than the upper.
    #[error("workdir {workdir} is not on the same filesystem as upper {upper}")]
    WorkdirDevice {
        /// The workdir.
        workdir: String,
        /// The upper.
        upper: String,
    },
}

/// Which command-line dialect the options came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `unionfs mount LOWERS [UPPER] MNT -o ...`: unknown keys are errors.
    Native,
    /// `-o lowerdir=...,upperdir=...,workdir=...` (fuse-overlayfs, podman):
    /// unknown keys are warned about and ignored.
    Overlay,
    /// AUFS `-o br=/u=rw:/a=ro+wh` (also `br:` and unionfs 1.x `dirs=`):
    /// AUFS tuning keys it does not implement (`xino=`, `create=`...) are
    /// warned about and ignored; `udba=` and `sum` are real options.
    Aufs,
    /// unionfs-fuse `unionfs [-o cow] /u=RW:/a=RO MNT`: branches with modes
    /// as the first positional; unknown keys are errors.
    UnionfsFuse,
}

/// One branch of a specification like `/u=rw:/a=ro+wh:/b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchSpec {
    /// The directory.
    pub path: PathBuf,
    /// Its mode; `None` when the user wrote none.
    pub mode: Option<Mode>,
}

/// Parses one mode word such as `ro+wh` or `RW`. unionfs-fuse's `RO`
/// reads whiteouts (its own, in the writable branch's hidden tree) in every
/// branch, so in that dialect `RO` is `ro+wh`.
fn parse_mode(word: &str, item: &str, dialect: Dialect) -> Result<Mode, ConfigError> {
    let mode = Mode::parse(word).ok_or_else(|| ConfigError::BadMode {
        mode: word.to_string(),
        branch: item.to_string(),
    })?;
    if dialect == Dialect::UnionfsFuse && !mode.writable() {
        return Ok(Mode { wh: true, ..mode });
    }
    Ok(mode)
}

/// Splits a branch specification with modes (`/u=rw:/a=ro+wh:/b=RO`) at
/// unescaped `:`; an unescaped `=` starts the mode word. `\:`, `\=` and
/// `\\` are a literal colon, equals sign and backslash.
pub fn split_branch_specs(s: &str, dialect: Dialect) -> Result<Vec<BranchSpec>, ConfigError> {
    // Items at unescaped ':' (escapes kept for the second pass).
    let mut items: Vec<Vec<u8>> = vec![Vec::new()];
    let mut bytes = s.as_bytes().iter();
    while let Some(&b) = bytes.next() {
        let cur = items.last_mut().ok_or(ConfigError::NoLower)?;
        match b {
            b'\\' => {
                cur.push(b);
                if let Some(&n) = bytes.next() {
                    cur.push(n);
                }
            }
            b':' => items.push(Vec::new()),
            _ => cur.push(b),
        }
    }
    let mut out = Vec::new();
    for item in items.iter().filter(|i| !i.is_empty()) {
        let shown = String::from_utf8_lossy(item).into_owned();
        let mut path = Vec::new();
        let mut mode: Option<Vec<u8>> = None;
        let mut it = item.iter();
        while let Some(&b) = it.next() {
            if b == b'=' && mode.is_none() {
                mode = Some(Vec::new());
                continue;
            }
            let c = if b == b'\\' {
                it.next().copied().unwrap_or(b)
            } else {
                b
            };
            mode.as_mut().unwrap_or(&mut path).push(c);
        }
        if path.is_empty() {
            return Err(ConfigError::Usage(format!(
                "branch '{shown}' names no directory"
            )));
        }
        let mode = match mode {
            Some(m) => Some(parse_mode(&String::from_utf8_lossy(&m), &shown, dialect)?),
            None => None,
        };
        out.push(BranchSpec {
            path: PathBuf::from(OsString::from_vec(path)),
            mode,
        });
    }
    Ok(out)
}

/// True when a positional branch list carries modes (an unescaped `=`).
pub fn has_modes(s: &str) -> bool {
    let mut escaped = false;
    for b in s.bytes() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'=' => return true,
            _ => {}
        }
    }
    false
}

/// Turns branches with modes into (lowers topmost first with their
/// modes, upper). A branch without a mode is `ro+wh`, except the first one
/// when `first_rw` (the AUFS and unionfs 1.x rule; unionfs-fuse makes every
/// unmarked branch read-only). The upper is the first branch when it is
/// writable; further `rw` branches are writable lowers (AUFS's several
/// writable branches).
#[allow(clippy::type_complexity)]
pub fn specs_to_branches(
    specs: &[BranchSpec],
    first_rw: bool,
) -> Result<(Vec<(PathBuf, Mode)>, Option<(PathBuf, Mode)>), ConfigError> {
    let mut upper = None;
    let mut lowers = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let mode = s.mode.unwrap_or(if i == 0 && first_rw {
            Mode::RW
        } else {
            Mode::RO_WH
        });
        if i == 0 && mode.writable() {
            upper = Some((s.path.clone(), mode));
        } else {
            lowers.push((s.path.clone(), mode));
        }
    }
    Ok((lowers, upper))
}

/// Which opened files the kernel reads and writes directly (FUSE
/// passthrough, kernel >= 6.9, root only) instead of through the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Passthrough {
    /// Every file goes through the daemon.
    Off,
    /// Files whose data is on the upper branch (created or copied up): their
    /// data never moves again. Lower files use the page cache.
    Upper,
    /// Lower files too (the default: native read speed). The kernel pins a
    /// passthrough node to its backing file until every opener closes it;
    /// a writer of a lower file held open for reading is moved to a fresh
    /// node for the copied-up file (see `fuse::FuseAdapter::reroute`).
    #[default]
    All,
}

/// `readdirplus=`: which entries of a READDIRPLUS get attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReaddirPlus {
    /// Directories always, other entries for requesters that stat them.
    #[default]
    Auto,
    /// Every entry.
    All,
}

/// Whether requests come through FUSE over io_uring (kernel >= 6.14, fuse
/// module parameter `enable_uring`) instead of reads of /dev/fuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Uring {
    /// When the kernel offers it (the parameter is on).
    #[default]
    Auto,
    /// Always: as root, turn the module parameter on if it is off; fail
    /// the mount if the kernel cannot do it.
    On,
    /// Never.
    Off,
}

/// How an event loop busy-polls for the next request after an answer
/// (`spin=`; ARCHITECTURE.md, "Transport").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spin {
    /// `spin=auto`: for up to `AUTO_SPIN`, while it pays (the window
    /// shrinks to none when requests stop coming, and there is no polling
    /// for a while after requests from callers running in parallel, nor in
    /// a loop that gets only requests no caller waits for), and on
    /// /dev/fuse only (`vendor/fuser/src/spin.rs`).
    #[default]
    Auto,
    /// `spin=USEC`: always this long; `spin=0`: never.
    Fixed(Duration),
}

/// The most an event loop polls under `spin=auto`. Measured on a 2-CPU VM
/// (docs/BENCHMARKS.md, session 15): 30 µs takes most of what polling
/// gains on serial work (warm walks, `rm -rf`), 15 µs less, and 200 µs
/// competes with the caller for the CPU.
pub const AUTO_SPIN: Duration = Duration::from_micros(30);

/// Options given with `-o`, parsed but not yet checked against the disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountOptions {
    /// `lowerdir=` (overlay dialect).
    pub lowerdir: Option<String>,
    /// `br=` / `br:` (AUFS) or `dirs=` (unionfs 1.x): branches with modes.
    pub br: Option<String>,
    /// `upperdir=`.
    pub upperdir: Option<String>,
    /// `workdir=`.
    pub workdir: Option<String>,
    /// `log=FILE`: where the daemon's log goes once it runs in the
    /// background (appended; default: nowhere, stderr is /dev/null).
    pub log: Option<String>,
    /// `ro`: mount read-only even with an upper.
    pub read_only: bool,
    /// `allow_other` / `noallow_other`; `None` = default (on as root).
    pub allow_other: Option<bool>,
    /// `default_permissions` / `nodefault_permissions`; `None` = on as root.
    pub default_permissions: Option<bool>,
    /// `ttl=SECONDS` for kernel entry/attr caching.
    pub ttl: Option<Duration>,
    /// `threads=N` FUSE event loops.
    pub threads: Option<usize>,
    /// `spin=auto|USEC`: how each event loop busy-polls for the next
    /// request before it sleeps; `None`: the default (`Spin::Auto`).
    pub spin: Option<Spin>,
    /// `fsname=` shown in /proc/mounts.
    pub fsname: Option<String>,
    /// `whiteout=aufs|overlay`.
    pub whiteout: Option<WhiteoutFormat>,
    /// `volatile`: copy-up does not wait for the disk (podman passes it for
    /// throw-away containers, as for overlayfs).
    pub volatile: bool,
    /// `batch_sync=on|off`: a durable copy-up is synced with a whole burst
    /// of others and named in the upper a few ms later (`publish.rs`),
    /// served from the workdir meanwhile — so the upper directory lags the
    /// view until the daemon has exited, which a FUSE unmount does not
    /// wait for. Default on, except in the overlay dialect, whose users
    /// (podman) read the upper right after unmounting: there each copy-up
    /// is synced and named before the write that caused it goes on.
    pub batch_sync: Option<bool>,
    /// `metacopy=on|off`: chmod/chown/utimens/setxattr of a lower file
    /// copy its metadata only. Default on, except in the overlay dialect,
    /// whose users (podman) read the upper directly, as with overlayfs.
    pub metacopy: Option<bool>,
    /// `sparse=on|off`: opening a big lower file for writing copies no
    /// data; the upper holds what is written and an extent map the rest
    /// (`sparse.rs`). Default: on in the native dialect with AUFS-format
    /// whiteouts; off in the overlay dialect (whose users read the upper
    /// directly) and in overlay format (an upper kernel overlayfs may mount
    /// after a crash, before unionfs fills what it left partial).
    pub sparse: Option<bool>,
    /// `copyup=auto|reflink|copy_file_range|readwrite`: force one way of
    /// copying data (benchmarks; filesystems with a broken one). `None` = auto.
    pub copyup: Option<Strategy>,
    /// `passthrough=off|upper|all`.
    pub passthrough: Option<Passthrough>,
    /// `create=` (AUFS): where new objects go among several writable branches.
    pub create: Option<crate::policy::CreatePolicy>,
    /// `cpup=` / `copyup_policy=` (AUFS): where copy-ups go among them.
    pub cpup: Option<crate::policy::CopyUpPolicy>,
    /// `uring=auto|on|off`.
    pub uring: Option<Uring>,
    /// `prefetch=on|off`: a listing has its subdirectories read ahead by
    /// a thread of the union's (`prefetch.rs`); `None` = on.
    pub prefetch: Option<bool>,
    /// `readdirplus=auto|all`: which entries of a listing carry attributes
    /// (`fuse::rdplus`). `None` = `auto`.
    pub readdirplus: Option<ReaddirPlus>,
    /// `udba=none|reval|notify` (AUFS): how changes made directly in a
    /// branch are noticed. `None` = `none`.
    pub udba: Option<crate::udba::Udba>,
    /// `sum` / `nosum` (AUFS): statfs of all branches added up, or the
    /// upper's (default).
    pub statfs: Option<crate::ops::StatfsMode>,
    /// Mount flags: `nosuid`, `nodev`, `noexec`, `noatime`...
    pub flags: Vec<String>,
    /// Keys that were ignored (overlay dialect, fstab noise), for a warning.
    pub ignored: Vec<String>,
}

/// Splits an `-o` string at commas, honouring double quotes (podman passes
/// `context="a,b"`) and dropping empty items (podman passes `,,volatile`).
pub fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Splits a branch list at `:`; `\:` is a literal colon and `\\` a backslash.
pub fn split_branches(s: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut bytes = s.as_bytes().iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&n) => cur.push(n),
                None => cur.push(b'\\'),
            },
            b':' => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(OsString::from_vec(std::mem::take(&mut cur))));
                }
            }
            _ => cur.push(b),
        }
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(OsString::from_vec(cur)));
    }
    out
}

/// Options accepted and ignored in every dialect: fstab/mount(8) words.
const FSTAB_NOISE: [&str; 10] = [
    "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail", "nonempty", "rw",
];
/// Kernel mount flags passed through.
const FLAG_WORDS: [&str; 12] = [
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "sync",
    "dirsync",
];

/// The value of option `key` given as one of `words`.
fn choice<T: Copy>(key: &str, value: Option<&str>, words: &[(&str, T)]) -> Result<T, ConfigError> {
    let v = value.unwrap_or_default();
    words
        .iter()
        .find(|(w, _)| *w == v)
        .map(|(_, t)| *t)
        .ok_or_else(|| ConfigError::BadValue {
            key: key.to_string(),
            value: v.to_string(),
        })
}

/// Parses `-o` items.
pub fn parse_options(items: &[String], dialect: Dialect) -> Result<MountOptions, ConfigError> {
    let mut o = MountOptions::default();
    for item in items {
        // AUFS spells it `br:/u=rw:/a=ro` as well as `br=...`.
        if let Some(v) = item.strip_prefix("br:") {
            o.br = Some(v.to_string());
            continue;
        }
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item.as_str(), None),
        };
        let need = |v: Option<&str>| -> Result<String, ConfigError> {
            v.map(str::to_string).ok_or_else(|| ConfigError::BadValue {
                key: key.to_string(),
                value: String::new(),
            })
        };
        let bad = |v: &str| ConfigError::BadValue {
            key: key.to_string(),
            value: v.to_string(),
        };
        // A whole number within `range`.
        let number = |range: std::ops::RangeInclusive<u64>| -> Result<u64, ConfigError> {
            let v = need(value)?;
            v.parse()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| bad(&v))
        };
        match key {
            "lowerdir" => o.lowerdir = Some(need(value)?),
            "br" | "dirs" => o.br = Some(need(value)?),
            // unionfs-fuse: copy-on-write (always on here) and hiding its
            // own `.unionfs/` tree (always hidden here).
            "cow" | "hide_meta_files" if value.is_none() => {}
            "upperdir" => o.upperdir = Some(need(value)?),
            "workdir" => o.workdir = Some(need(value)?),
            "log" => o.log = Some(need(value)?),
            "ro" => o.read_only = true,
            "volatile" => o.volatile = true,
            "allow_other" => o.allow_other = Some(true),
            "noallow_other" => o.allow_other = Some(false),
            "default_permissions" => o.default_permissions = Some(true),
            "nodefault_permissions" => o.default_permissions = Some(false),
            "ttl" => {
                let v = need(value)?;
                let secs: f64 = v.parse().map_err(|_| bad(&v))?;
                if !(0.0..=1e9).contains(&secs) {
                    return Err(bad(&v));
                }
                o.ttl = Some(Duration::from_secs_f64(secs));
            }
            "threads" => o.threads = Some(number(1..=64)? as usize),
            "spin" => {
                o.spin = Some(match value {
                    Some("auto") => Spin::Auto,
                    _ => Spin::Fixed(Duration::from_micros(number(0..=100_000)?)),
                })
            }
            "fsname" => o.fsname = Some(need(value)?),
            "whiteout" => {
                o.whiteout = Some(choice(
                    key,
                    value,
                    &[
                        ("aufs", WhiteoutFormat::Aufs),
                        ("overlay", WhiteoutFormat::Overlay),
                    ],
                )?)
            }
            "metacopy" => o.metacopy = Some(choice(key, value, &[("on", true), ("off", false)])?),
            "batch_sync" => {
                o.batch_sync = Some(choice(key, value, &[("on", true), ("off", false)])?)
            }
            "sparse" => o.sparse = Some(choice(key, value, &[("on", true), ("off", false)])?),
            "copyup" => {
                o.copyup = choice(
                    key,
                    value,
                    &[
                        ("auto", None),
                        ("reflink", Some(Strategy::Reflink)),
                        ("copy_file_range", Some(Strategy::CopyFileRange)),
                        ("readwrite", Some(Strategy::ReadWrite)),
                    ],
                )?
            }
            "create" | "create_policy" => {
                let v = need(value)?;
                o.create = Some(crate::policy::CreatePolicy::parse(&v).ok_or_else(|| bad(&v))?);
            }
            "cpup" | "copyup_policy" => {
                let v = need(value)?;
                o.cpup = Some(crate::policy::CopyUpPolicy::parse(&v).ok_or_else(|| bad(&v))?);
            }
            "passthrough" => {
                o.passthrough = Some(choice(
                    key,
                    value,
                    &[
                        ("off", Passthrough::Off),
                        ("upper", Passthrough::Upper),
                        ("all", Passthrough::All),
                    ],
                )?)
            }
            "prefetch" => o.prefetch = Some(choice(key, value, &[("on", true), ("off", false)])?),
            "readdirplus" => {
                o.readdirplus = Some(choice(
                    key,
                    value,
                    &[("auto", ReaddirPlus::Auto), ("all", ReaddirPlus::All)],
                )?)
            }
            "uring" => {
                o.uring = Some(choice(
                    key,
                    value,
                    &[
                        ("auto", Uring::Auto),
                        ("on", Uring::On),
                        ("off", Uring::Off),
                    ],
                )?)
            }
            "udba" => {
                o.udba = Some(choice(
                    key,
                    value,
                    &[
                        ("none", crate::udba::Udba::None),
                        ("reval", crate::udba::Udba::Reval),
                        ("notify", crate::udba::Udba::Notify),
                    ],
                )?)
            }
            "sum" if value.is_none() => o.statfs = Some(crate::ops::StatfsMode::Sum),
            "nosum" if value.is_none() => o.statfs = Some(crate::ops::StatfsMode::Upper),
            k if value.is_none() && FLAG_WORDS.contains(&k) => o.flags.push(k.to_string()),
            k if value.is_none() && FSTAB_NOISE.contains(&k) => o.ignored.push(k.to_string()),
            // fstab options for other programs (systemd's x-systemd.*, comments).
            k if k.starts_with("x-") || k == "comment" => o.ignored.push(item.clone()),
            _ => match dialect {
                Dialect::Overlay | Dialect::Aufs => o.ignored.push(item.clone()),
                Dialect::Native | Dialect::UnionfsFuse => {
                    return Err(ConfigError::UnknownOption(item.clone()))
                }
            },
        }
    }
    Ok(o)
}

/// A mount the daemon can attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountConfig {
    /// Lower branches, topmost first, canonical.
    pub lowers: Vec<PathBuf>,
    /// The mode of each lower (`ro+wh` unless given; `rw` makes it a
    /// writable lower).
    pub lower_modes: Vec<Mode>,
    /// The upper's mode (`rw` or `rw+nolwh`).
    pub upper_mode: Mode,
    /// The writable upper, canonical; `None` = read-only union.
    pub upper: Option<PathBuf>,
    /// Staging directory for atomic copy-up; `None` = inside the upper.
    pub workdir: Option<PathBuf>,
    /// Where to mount, canonical.
    pub mountpoint: PathBuf,
    /// Parsed `-o` options.
    pub options: MountOptions,
    /// The dialect the command came in.
    pub dialect: Dialect,
    /// Stay in the foreground.
    pub foreground: bool,
    /// Log every request.
    pub debug: bool,
}

/// (mount id, is the path the root of a mount) from statx.
pub type MountId = (u64, bool);

/// What validation needs to know about a path on disk.
#[derive(Debug, Clone, Copy)]
struct Ident {
    dev: u64,
    ino: u64,
    mount: MountId,
}

fn ident(role: &'static str, p: &Path) -> Result<(PathBuf, Ident), ConfigError> {
    let shown = p.display().to_string();
    let md = std::fs::metadata(p).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => ConfigError::Missing {
            role,
            path: shown.clone(),
        },
        Some(libc::ENOTDIR) => ConfigError::NotDir {
            role,
            path: shown.clone(),
        },
        _ => ConfigError::Io {
            role,
            path: shown.clone(),
            err: e.to_string(),
        },
    })?;
    if !md.is_dir() {
        return Err(ConfigError::NotDir { role, path: shown });
    }
    let canon = std::fs::canonicalize(p).map_err(|e| ConfigError::Io {
        role,
        path: shown.clone(),
        err: e.to_string(),
    })?;
    let mount = crate::sys::fs::mount_id(&canon).map_err(|e| ConfigError::Io {
        role,
        path: shown,
        err: e.to_string(),
    })?;
    Ok((
        canon,
        Ident {
            dev: md.dev(),
            ino: md.ino(),
            mount,
        },
    ))
}

/// True when `inner` lies strictly below `outer` without crossing a mount
/// (the same rule overlayfs applies to overlapping layers).
fn nested(inner: &(PathBuf, Ident), outer: &(PathBuf, Ident)) -> bool {
    inner.0 != outer.0 && inner.0.starts_with(&outer.0) && inner.1.mount.0 == outer.1.mount.0
}

impl MountConfig {
    /// Builds and checks a mount from its parts; nothing is created.
    #[allow(clippy::too_many_arguments)]
    pub fn validate(
        lowers: &[PathBuf],
        upper: Option<&Path>,
        workdir: Option<&Path>,
        mountpoint: &Path,
        options: MountOptions,
        dialect: Dialect,
        foreground: bool,
        debug: bool,
    ) -> Result<MountConfig, ConfigError> {
        if lowers.is_empty() {
            return Err(ConfigError::NoLower);
        }
        let lows = lowers
            .iter()
            .map(|l| ident("lower branch", l))
            .collect::<Result<Vec<_>, _>>()?;
        let up = upper.map(|u| ident("upper branch", u)).transpose()?;
        let work = workdir.map(|w| ident("workdir", w)).transpose()?;
        let mnt = ident("mount point", mountpoint)?;

        // The same directory twice.
        let mut named: Vec<(&'static str, &(PathBuf, Ident))> =
            lows.iter().map(|l| ("lower branch", l)).collect();
        if let Some(u) = &up {
            named.push(("upper branch", u));
        }
        if let Some(w) = &work {
            named.push(("workdir", w));
        }
        for (i, (_, a)) in named.iter().enumerate() {
            for (_, b) in &named[i + 1..] {
                if a.1.dev == b.1.dev && a.1.ino == b.1.ino {
                    return Err(ConfigError::Duplicate {
                        a: a.0.display().to_string(),
                        b: b.0.display().to_string(),
                    });
                }
            }
        }
        if mnt.1.mount.1 {
            return Err(ConfigError::Busy(mnt.0.display().to_string()));
        }
        // Nesting: anything written (upper, workdir) or the mount point inside
        // a branch; any branch inside the mount point.
        let nest =
            |ir: &'static str, i: &(PathBuf, Ident), or: &'static str, o: &(PathBuf, Ident)| {
                if nested(i, o) || (i.0 == o.0 && ir == "mount point") {
                    Err(ConfigError::Nested {
                        inner_role: ir,
                        inner: i.0.display().to_string(),
                        outer_role: or,
                        outer: o.0.display().to_string(),
                    })
                } else {
                    Ok(())
                }
            };
        for (role, p) in &named {
            nest("mount point", &mnt, role, p)?;
            if *role != "mount point" && p.0.starts_with(&mnt.0) {
                return Err(ConfigError::Nested {
                    inner_role: role,
                    inner: p.0.display().to_string(),
                    outer_role: "mount point",
                    outer: mnt.0.display().to_string(),
                });
            }
        }
        for l in &lows {
            if let Some(u) = &up {
                nest("upper branch", u, "lower branch", l)?;
            }
            if let Some(w) = &work {
                nest("workdir", w, "lower branch", l)?;
            }
        }
        if let (Some(u), Some(w)) = (&up, &work) {
            nest("workdir", w, "upper branch", u)?;
            nest("upper branch", u, "workdir", w)?;
            if u.1.dev != w.1.dev {
                return Err(ConfigError::WorkdirDevice {
                    workdir: w.0.display().to_string(),
                    upper: u.0.display().to_string(),
                });
            }
        }
        Ok(MountConfig {
            lower_modes: vec![Mode::RO_WH; lows.len()],
            upper_mode: Mode::RW,
            lowers: lows.into_iter().map(|l| l.0).collect(),
            upper: up.map(|u| u.0),
            workdir: work.map(|w| w.0),
            mountpoint: mnt.0,
            options,
            dialect,
            foreground,
            debug,
        })
    }
}

impl MountConfig {
    /// Gives the branches the modes of a branch list (one per lower, in
    /// order, and the upper's).
    pub fn with_modes(mut self, lowers: Vec<Mode>, upper: Mode) -> Result<Self, ConfigError> {
        if lowers.len() != self.lowers.len() || !upper.writable() {
            return Err(ConfigError::Usage(
                "branch modes do not match the branches".into(),
            ));
        }
        if self.options.read_only && lowers.iter().any(|m| m.writable()) {
            return Err(ConfigError::Usage(
                "a read-only mount (-o ro) cannot have rw branches".into(),
            ));
        }
        self.lower_modes = lowers;
        self.upper_mode = upper;
        Ok(self)
    }

    /// Whether any branch is writable.
    pub fn writable(&self) -> bool {
        !self.options.read_only
            && (self.upper.is_some() || self.lower_modes.iter().any(|m| m.writable()))
    }
}

/// Displays a path list the way users type it.
pub fn join_branches(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| {
            String::from_utf8_lossy(p.as_os_str().as_bytes())
                .replace('\\', "\\\\")
                .replace(':', "\\:")
        })
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_max_leaves_room_for_the_written_whiteouts() {
        assert_eq!(WhiteoutFormat::Aufs.name_max(), 251);
        assert_eq!(WhiteoutFormat::Overlay.name_max(), 255);
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn splits_podman_option_strings() {
        assert_eq!(
            split_options("lowerdir=l/A:l/B,upperdir=/g/diff,workdir=/g/work,,volatile,"),
            v(&[
                "lowerdir=l/A:l/B",
                "upperdir=/g/diff",
                "workdir=/g/work",
                "volatile"
            ])
        );
        assert_eq!(
            split_options("context=\"system_u:object_r:c:s0:c1,c2\",ro"),
            v(&["context=\"system_u:object_r:c:s0:c1,c2\"", "ro"])
        );
        assert!(split_options("").is_empty());
    }

    #[test]
    fn splits_branches_with_escapes() {
        assert_eq!(
            split_branches("/a:/b\\:c:/d"),
            vec![
                PathBuf::from("/a"),
                PathBuf::from("/b:c"),
                PathBuf::from("/d")
            ]
        );
        assert_eq!(
            split_branches("/a\\\\:/b"),
            vec![PathBuf::from("/a\\"), PathBuf::from("/b")]
        );
        assert_eq!(split_branches("::/x::"), vec![PathBuf::from("/x")]);
        assert_eq!(join_branches(&split_branches("/b\\:c:/d")), "/b\\:c:/d");
    }

    #[test]
    fn native_dialect_rejects_unknown_keys() {
        assert_eq!(
            parse_options(&v(&["bogus=1"]), Dialect::Native),
            Err(ConfigError::UnknownOption("bogus=1".into()))
        );
        let o = parse_options(
            &v(&["bogus=1", "volatile", "xattr_permissions=2"]),
            Dialect::Overlay,
        )
        .unwrap_or_default();
        assert_eq!(o.ignored, v(&["bogus=1", "xattr_permissions=2"]));
        assert!(o.volatile);
    }

    #[test]
    fn parses_known_keys() {
        let o = parse_options(
            &v(&[
                "lowerdir=/a:/b",
                "upperdir=/u",
                "workdir=/w",
                "ro",
                "allow_other",
                "nodefault_permissions",
                "ttl=2.5",
                "threads=4",
                "spin=500",
                "fsname=x",
                "whiteout=overlay",
                "passthrough=all",
                "uring=on",
                "readdirplus=all",
                "prefetch=off",
                "metacopy=off",
                "batch_sync=off",
                "copyup=readwrite",
                "nosuid",
                "noauto",
                "_netdev",
                "x-systemd.requires=/srv",
            ]),
            Dialect::Native,
        );
        let Ok(o) = o else { unreachable!("{o:?}") };
        assert_eq!(o.lowerdir.as_deref(), Some("/a:/b"));
        assert_eq!(o.upperdir.as_deref(), Some("/u"));
        assert_eq!(o.workdir.as_deref(), Some("/w"));
        assert!(o.read_only);
        assert_eq!(o.allow_other, Some(true));
        assert_eq!(o.default_permissions, Some(false));
        assert_eq!(o.ttl, Some(Duration::from_millis(2500)));
        assert_eq!(o.threads, Some(4));
        assert_eq!(o.spin, Some(Spin::Fixed(Duration::from_micros(500))));
        assert_eq!(o.whiteout, Some(WhiteoutFormat::Overlay));
        assert_eq!(o.passthrough, Some(Passthrough::All));
        assert_eq!(o.uring, Some(Uring::On));
        assert_eq!(o.readdirplus, Some(ReaddirPlus::All));
        assert_eq!(o.prefetch, Some(false));
        assert_eq!(o.metacopy, Some(false));
        assert_eq!(o.batch_sync, Some(false));
        assert_eq!(o.copyup, Some(Strategy::ReadWrite));
        assert_eq!(o.flags, v(&["nosuid"]));
        assert_eq!(
            o.ignored,
            v(&["noauto", "_netdev", "x-systemd.requires=/srv"])
        );
    }

    #[test]
    fn spin_is_auto_by_default_or_a_fixed_time() {
        let parse = |items: &[&str]| {
            let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
            parse_options(&items, Dialect::Native).map(|o| o.spin)
        };
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&["spin=auto"]), Ok(Some(Spin::Auto)));
        assert_eq!(parse(&["spin=0"]), Ok(Some(Spin::Fixed(Duration::ZERO))));
        assert_eq!(
            parse(&["spin=200"]),
            Ok(Some(Spin::Fixed(Duration::from_micros(200))))
        );
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "ttl=x",
            "ttl=-1",
            "threads=0",
            "spin=-1",
            "spin=100001",
            "spin=fast",
            "threads=a",
            "whiteout=zfs",
            "passthrough=yes",
            "uring=yes",
            "readdirplus=some",
            "prefetch=yes",
            "metacopy=1",
            "copyup=fast",
            "ttl",
        ] {
            assert!(
                matches!(
                    parse_options(&v(&[bad]), Dialect::Native),
                    Err(ConfigError::BadValue { .. })
                ),
                "{bad}"
            );
        }
    }

    fn spec(p: &str, m: Option<&str>) -> BranchSpec {
        BranchSpec {
            path: PathBuf::from(p),
            mode: m.and_then(Mode::parse),
        }
    }

    #[test]
    fn branch_specs_of_every_dialect() {
        assert_eq!(
            split_branch_specs("/u=rw:/a=ro+wh:/b=ro", Dialect::Aufs),
            Ok(vec![
                spec("/u", Some("rw")),
                spec("/a", Some("ro+wh")),
                spec("/b", Some("ro"))
            ])
        );
        // unionfs-fuse's RO branches read whiteouts.
        assert_eq!(
            split_branch_specs("/u=RW:/a=RO", Dialect::UnionfsFuse),
            Ok(vec![spec("/u", Some("rw")), spec("/a", Some("ro+wh"))])
        );
        assert_eq!(
            split_branch_specs("/u:/a=rr:/n=nfsro:/w=rw+nolwh:/x\\=y\\:z", Dialect::Aufs),
            Ok(vec![
                spec("/u", None),
                spec("/a", Some("rr")),
                spec("/n", Some("ro")),
                spec("/w", Some("rw+nolwh")),
                spec("/x=y:z", None)
            ])
        );
        assert!(has_modes("/u=RW:/a"));
        assert!(!has_modes("/u\\=RW:/a"));
        assert!(!has_modes("/u:/a"));
    }

    #[test]
    fn unknown_mode_words_are_one_clear_error() {
        for (s, mode) in [
            ("/u=rw:/a=readonly", "readonly"),
            ("/u=rw+wh", "rw+wh"),
            ("/a=ro+bogus", "ro+bogus"),
            ("/a=", ""),
        ] {
            let e = split_branch_specs(s, Dialect::Aufs);
            assert!(
                matches!(&e, Err(ConfigError::BadMode { mode: m, .. }) if m == mode),
                "{s}: {e:?}"
            );
            let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                msg.contains("unknown branch mode") && !msg.contains('\n'),
                "{msg}"
            );
        }
        assert!(matches!(
            split_branch_specs("=rw:/a", Dialect::Aufs),
            Err(ConfigError::Usage(_))
        ));
    }

    #[test]
    fn the_first_writable_branch_is_the_upper_and_later_ones_writable_lowers() {
        let m = |w: &str| Mode::parse(w).unwrap_or(Mode::RW);
        let specs = [
            spec("/u", Some("rw")),
            spec("/a", Some("ro")),
            spec("/b", None),
        ];
        assert_eq!(
            specs_to_branches(&specs, false),
            Ok((
                vec![("/a".into(), m("ro")), ("/b".into(), m("ro+wh"))],
                Some(("/u".into(), m("rw")))
            ))
        );
        // AUFS: an unmarked first branch is rw; unionfs-fuse: ro.
        let unmarked = [spec("/u", None), spec("/a", None)];
        assert_eq!(
            specs_to_branches(&unmarked, true),
            Ok((
                vec![("/a".into(), m("ro+wh"))],
                Some(("/u".into(), m("rw")))
            ))
        );
        assert_eq!(
            specs_to_branches(&unmarked, false),
            Ok((
                vec![("/u".into(), m("ro+wh")), ("/a".into(), m("ro+wh"))],
                None
            ))
        );
        let late = [spec("/a", Some("ro")), spec("/u", Some("rw+nolwh"))];
        assert_eq!(
            specs_to_branches(&late, false),
            Ok((
                vec![("/a".into(), m("ro")), ("/u".into(), m("rw+nolwh"))],
                None
            ))
        );
    }

    #[test]
    fn udba_and_sum_in_every_dialect() {
        use crate::ops::StatfsMode;
        use crate::udba::Udba;
        for d in [
            Dialect::Native,
            Dialect::Overlay,
            Dialect::Aufs,
            Dialect::UnionfsFuse,
        ] {
            for (w, u) in [
                ("udba=none", Udba::None),
                ("udba=reval", Udba::Reval),
                ("udba=notify", Udba::Notify),
            ] {
                let o = parse_options(&v(&[w]), d);
                assert_eq!(o.map(|o| (o.udba, o.ignored)), Ok((Some(u), vec![])), "{w}");
            }
            let o = parse_options(&v(&["sum"]), d).map(|o| o.statfs);
            assert_eq!(o, Ok(Some(StatfsMode::Sum)));
            let o = parse_options(&v(&["sum", "nosum"]), d).map(|o| o.statfs);
            assert_eq!(o, Ok(Some(StatfsMode::Upper)));
            assert_eq!(
                parse_options(&v(&["udba=inotify"]), d),
                Err(ConfigError::BadValue {
                    key: "udba".into(),
                    value: "inotify".into()
                })
            );
            assert_eq!(parse_options(&v(&[]), d).map(|o| o.udba), Ok(None));
        }
    }

    #[test]
    fn aufs_and_unionfs_fuse_option_words() {
        for item in ["br=/u=rw:/a=ro", "br:/u=rw:/a=ro", "dirs=/u=rw:/a=ro"] {
            let o = parse_options(&v(&[item]), Dialect::Aufs);
            assert_eq!(o.map(|o| o.br), Ok(Some("/u=rw:/a=ro".into())), "{item}");
        }
        let o = parse_options(&v(&["br=/u", "udba=reval", "xino=/tmp/x"]), Dialect::Aufs);
        assert_eq!(o.map(|o| o.ignored), Ok(v(&["xino=/tmp/x"])));
        assert!(parse_options(&v(&["cow", "hide_meta_files"]), Dialect::UnionfsFuse).is_ok());
        assert_eq!(
            parse_options(&v(&["max_files=4"]), Dialect::UnionfsFuse),
            Err(ConfigError::UnknownOption("max_files=4".into()))
        );
    }
}
