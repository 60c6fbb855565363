//! The command line: clap definitions and the dispatch of the dialects.
//!
//! Invariant: every way of invoking the binary (`unionfs mount ...`,
//! `unionfs -o lowerdir=... MNT` as podman and fuse-overlayfs users do,
//! `unionfs umount MNT`) ends in one validated `MountConfig` or one clear
//! error line. Takes no locks.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigError, Dialect, MountConfig};

/// unionfs — merge read-only lower directories under one writable upper.
#[derive(Debug, Parser)]
#[command(
    name = "unionfs",
    version,
    about = "A union filesystem on FUSE: read-only lower branches merged under one writable upper",
    long_about = "A union filesystem on FUSE. The topmost branch wins; deleting a lower object \
writes a whiteout; the first write to a lower object copies it up.\n\n\
Examples:\n  unionfs mount /img/layer2:/img/layer1 /data/upper /mnt\n  \
unionfs mount /srv/ro /mnt                       (read-only union)\n  \
unionfs -o lowerdir=/a:/b,upperdir=/u,workdir=/w /mnt   (overlay/podman dialect)\n  \
unionfs umount /mnt"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a union (the default when the first argument is an option).
    #[command(long_about = "Mount a union.\n\n\
  unionfs mount LOWER1[:LOWER2...] [UPPER] MNT [-o OPTS]\n\
  unionfs mount -o lowerdir=LOWER1:LOWER2,upperdir=UPPER,workdir=WORK MNT\n\n\
The leftmost lower is the topmost. Write \\: for a colon inside a path. Without an \
UPPER (or with UPPER '-') the union is read-only.\n\n\
Options (-o, comma-separated, may repeat):\n  \
lowerdir=, upperdir=, workdir=   branches, overlay style\n  \
ro                        read-only even with an upper\n  \
allow_other, noallow_other, default_permissions, nodefault_permissions\n                            \
(both on by default as root)\n  \
ttl=SECONDS               kernel cache lifetime of names and attributes (default 86400)\n  \
threads=N                 FUSE event loops (default: number of CPUs)\n  \
fsname=NAME               source shown in /proc/mounts\n  \
whiteout=aufs|overlay     format of whiteouts written (default aufs)\n  \
metacopy=on|off           metadata changes of a lower file copy no data until a write\n                            \
(default on; off in the overlay dialect)\n  \
copyup=auto|reflink|copy_file_range|readwrite   force one way of copying data up\n  \
passthrough=off|upper|all kernel-direct file I/O (root, kernel >= 6.9); upper (default):\n                            \
files in the upper; all: lower files too (ETXTBSY on writes while read)\n  \
nosuid, nodev, noexec, noatime, ...  mount flags\n\n\
Unknown options are an error, except in the overlay dialect (-o lowerdir=...), where \
they are warned about and ignored, as podman needs.\n\n\
Without -f the command returns once the mount is live and serving, leaving the \
daemon in the background; it exits when the mount is unmounted.")]
    Mount(MountArgs),
    /// Unmount a union (as `umount MNT` or `fusermount3 -u MNT` would).
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
        /// Detach now even if busy (lazy unmount).
        #[arg(short = 'l', long)]
        lazy: bool,
    },
}

/// Arguments of `unionfs mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// LOWERS [UPPER] MNT — or only MNT with -o lowerdir=...
    #[arg(value_name = "BRANCHES... MNT", num_args = 1..=3, required = true)]
    pub args: Vec<OsString>,
    /// Mount options, comma-separated (see above).
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
    /// Stay in the foreground.
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Log every request to stderr (implies -f, as with libfuse).
    #[arg(short = 'd', long)]
    pub debug: bool,
}

/// Words that start a subcommand or a top-level flag.
const TOP_LEVEL: [&str; 7] = ["mount", "umount", "help", "--help", "-h", "--version", "-V"];

/// Parses argv; the overlay dialect (`unionfs -o ... MNT`) is `mount`.
pub fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let mut args = args;
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    if args.len() > 1 && !TOP_LEVEL.contains(&first) {
        args.insert(1, OsString::from("mount"));
    }
    Cli::try_parse_from(args)
}

impl MountArgs {
    /// Turns the arguments into a validated mount.
    pub fn into_config(self) -> Result<MountConfig, ConfigError> {
        let items: Vec<String> = self
            .options
            .iter()
            .flat_map(|o| config::split_options(o))
            .collect();
        let overlay = items.iter().any(|i| i.starts_with("lowerdir="));
        let dialect = if overlay {
            Dialect::Overlay
        } else {
            Dialect::Native
        };
        let opts = config::parse_options(&items, dialect)?;
        let pos: Vec<PathBuf> = self.args.into_iter().map(PathBuf::from).collect();
        let (lowers, upper, mnt) = match (dialect, pos.as_slice()) {
            (Dialect::Overlay, [mnt]) => (
                config::split_branches(opts.lowerdir.as_deref().unwrap_or("")),
                opts.upperdir.as_ref().map(PathBuf::from),
                mnt.clone(),
            ),
            (Dialect::Overlay, _) => {
                return Err(ConfigError::Usage(
                    "with -o lowerdir=... give only the mount point".into(),
                ))
            }
            (Dialect::Native, [lowers, mnt]) => (
                config::split_branches(&lowers.to_string_lossy()),
                opts.upperdir.as_ref().map(PathBuf::from),
                mnt.clone(),
            ),
            (Dialect::Native, [lowers, upper, mnt]) => (
                config::split_branches(&lowers.to_string_lossy()),
                (upper.as_os_str() != "-").then(|| upper.clone()),
                mnt.clone(),
            ),
            (Dialect::Native, _) => {
                return Err(ConfigError::Usage(
                    "usage: unionfs mount LOWER1[:LOWER2...] [UPPER] MNT [-o OPTS]".into(),
                ))
            }
        };
        let lowers = if dialect == Dialect::Overlay {
            resolve_relative(lowers)
        } else {
            lowers
        };
        let workdir = opts.workdir.as_ref().map(PathBuf::from);
        MountConfig::validate(
            &lowers,
            upper.as_deref(),
            workdir.as_deref(),
            &mnt,
            opts,
            dialect,
            self.foreground || self.debug,
            self.debug,
        )
    }
}

/// Relative lowerdirs (podman passes `l/ID`) are resolved against the cwd.
fn resolve_relative(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_default();
    paths
        .into_iter()
        .map(|p| if p.is_relative() { cwd.join(p) } else { p })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn overlay_dialect_without_subcommand() {
        let cli = parse(argv(&[
            "unionfs",
            "-o",
            "lowerdir=/a,upperdir=/u,workdir=/w",
            "/m",
        ]));
        let Ok(Cli {
            command: Command::Mount(m),
        }) = cli
        else {
            unreachable!("{cli:?}")
        };
        assert_eq!(m.args, argv(&["/m"]));
        assert_eq!(
            m.options,
            vec!["lowerdir=/a,upperdir=/u,workdir=/w".to_string()]
        );
    }

    #[test]
    fn native_positionals_and_flags() {
        let cli = parse(argv(&[
            "unionfs", "mount", "/a:/b", "/u", "/m", "-f", "-o", "ro",
        ]));
        let Ok(Cli {
            command: Command::Mount(m),
        }) = cli
        else {
            unreachable!("{cli:?}")
        };
        assert_eq!(m.args, argv(&["/a:/b", "/u", "/m"]));
        assert!(m.foreground);
        assert!(!m.debug);
    }

    #[test]
    fn version_and_umount() {
        assert!(matches!(
            parse(argv(&["unionfs", "--version"])).map_err(|e| e.kind()),
            Err(clap::error::ErrorKind::DisplayVersion)
        ));
        assert!(matches!(
            parse(argv(&["unionfs", "umount", "/m"])),
            Ok(Cli {
                command: Command::Umount { .. }
            })
        ));
    }

    #[test]
    fn unknown_native_option_is_an_error_before_touching_disk() {
        let m = MountArgs {
            args: argv(&["/nonexistent-a", "/nonexistent-m"]),
            options: vec!["bogus".into()],
            foreground: false,
            debug: false,
        };
        assert_eq!(
            m.into_config(),
            Err(ConfigError::UnknownOption("bogus".into()))
        );
    }
}
