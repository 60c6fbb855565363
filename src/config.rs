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
}

/// The format whiteouts and opaque markers are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutFormat {
    /// `.wh.<name>` files and `.wh..wh..opq` (no privilege needed; an OCI layer as is).
    #[default]
    Aufs,
    /// char 0:0 devices and `*.overlay.opaque=y` (kernel overlayfs can mount it).
    Overlay,
}

impl WhiteoutFormat {
    /// The NAME_MAX of a union writing this format: names longer than it
    /// are neither created nor found. AUFS whiteouts prefix a name with
    /// `.wh.`, so every name the union creates must leave room for it.
    pub fn name_max(self) -> usize {
        match self {
            WhiteoutFormat::Aufs => crate::whiteout::AUFS_NAME_MAX,
            WhiteoutFormat::Overlay => crate::whiteout::NAME_MAX,
        }
    }
}

impl std::fmt::Display for WhiteoutFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WhiteoutFormat::Aufs => "aufs",
            WhiteoutFormat::Overlay => "overlay",
        })
    }
}

/// Which opened files the kernel reads and writes directly (FUSE
/// passthrough, kernel >= 6.9, root only) instead of through the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Passthrough {
    /// Every file goes through the daemon.
    Off,
    /// Files whose data is on the upper branch (created or copied up): their
    /// data never moves again. Lower files use the page cache.
    #[default]
    Upper,
    /// Lower files too. The kernel pins a passthrough file to its backing
    /// file until every opener closes it, so a lower file held open for
    /// reading cannot be opened for writing meanwhile (ETXTBSY).
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

/// Options given with `-o`, parsed but not yet checked against the disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountOptions {
    /// `lowerdir=` (overlay dialect).
    pub lowerdir: Option<String>,
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
    /// `spin=USEC`: each event loop busy-polls this long for the next
    /// request before it sleeps. `None` or zero: it sleeps at once.
    pub spin: Option<Duration>,
    /// `fsname=` shown in /proc/mounts.
    pub fsname: Option<String>,
    /// `whiteout=aufs|overlay`.
    pub whiteout: Option<WhiteoutFormat>,
    /// `volatile`: copy-up does not wait for the disk (podman passes it for
    /// throw-away containers, as for overlayfs).
    pub volatile: bool,
    /// `metacopy=on|off`: chmod/chown/utimens/setxattr of a lower file
    /// copy its metadata only. Default on, except in the overlay dialect,
    /// whose users (podman) read the upper directly, as with overlayfs.
    pub metacopy: Option<bool>,
    /// `copyup=auto|reflink|copy_file_range|readwrite`: force one way of
    /// copying data (benchmarks; filesystems with a broken one). `None` = auto.
    pub copyup: Option<crate::copy_up::Strategy>,
    /// `passthrough=off|upper|all`.
    pub passthrough: Option<Passthrough>,
    /// `uring=auto|on|off`.
    pub uring: Option<Uring>,
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
            "spin" => o.spin = Some(Duration::from_micros(number(0..=100_000)?)),
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
            "copyup" => {
                o.copyup = choice(
                    key,
                    value,
                    &[
                        ("auto", None),
                        ("reflink", Some(crate::copy_up::Strategy::Reflink)),
                        (
                            "copy_file_range",
                            Some(crate::copy_up::Strategy::CopyFileRange),
                        ),
                        ("readwrite", Some(crate::copy_up::Strategy::ReadWrite)),
                    ],
                )?
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
            k if value.is_none() && FLAG_WORDS.contains(&k) => o.flags.push(k.to_string()),
            k if value.is_none() && FSTAB_NOISE.contains(&k) => o.ignored.push(k.to_string()),
            _ => match dialect {
                Dialect::Overlay => o.ignored.push(item.clone()),
                Dialect::Native => return Err(ConfigError::UnknownOption(item.clone())),
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
                "metacopy=off",
                "copyup=readwrite",
                "nosuid",
                "noauto",
                "_netdev",
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
        assert_eq!(o.spin, Some(Duration::from_micros(500)));
        assert_eq!(o.whiteout, Some(WhiteoutFormat::Overlay));
        assert_eq!(o.passthrough, Some(Passthrough::All));
        assert_eq!(o.uring, Some(Uring::On));
        assert_eq!(o.metacopy, Some(false));
        assert_eq!(o.copyup, Some(crate::copy_up::Strategy::ReadWrite));
        assert_eq!(o.flags, v(&["nosuid"]));
        assert_eq!(o.ignored, v(&["noauto", "_netdev"]));
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
}
