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
use crate::mode::Mode;

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
  unionfs mount -o lowerdir=LOWER1:LOWER2,upperdir=UPPER,workdir=WORK MNT\n\
  unionfs mount -o br=/u=rw:/a=ro+wh:/b=ro [none] MNT     (AUFS; also br:... and dirs=...)\n\
  unionfs mount /u=RW:/a=RO MNT [-o cow]                 (unionfs-fuse)\n\n\
The leftmost lower is the topmost. In branch lists with modes (AUFS's: rw, rw+nolwh, \
ro, ro+wh, rr, rr+wh; also nfsro, RW, RO, any case) an unmarked branch is ro+wh, except \
the first one of an AUFS br= list (rw). ro and rr read no whiteouts (aufs.5); +wh \
makes them read them; rr promises the branch never changes; rw writes whiteouts as \
hard links to .wh..wh.aufs, rw+nolwh as files of their own. Several rw branches \
may be given: new objects go where create= says, copy-ups where cpup= says. \
Branches can be added, removed and changed on the live mount: see `unionfs branch`. \
Write \\= for an equals sign inside such a path. Write \\: for a colon inside a path. Without an \
UPPER (or with UPPER '-') the union is read-only.\n\n\
Options (-o, comma-separated, may repeat):\n  \
lowerdir=, upperdir=, workdir=   branches, overlay style\n  \
ro                        read-only even with an upper\n  \
allow_other, noallow_other, default_permissions, nodefault_permissions\n                            \
(both on by default as root)\n  \
ttl=SECONDS               kernel cache lifetime of names and attributes (default 86400;\n                            \
0 with udba=reval)\n  \
udba=none|reval|notify    changes made directly in a branch: none (default) trusts the\n                            \
caches (a change may stay unseen for ttl); reval revalidates every\n                            \
access; notify watches looked-up directories (inotify) and drops\n                            \
what changed\n  \
create=tdp|rr|mfs[:SEC]|mfsrr:LOW[:SEC]|pmfs[:SEC]|pmfsrr:LOW[:SEC]\n                            \
where new objects go among several rw branches (default tdp)\n  \
cpup=tdp|bup|bu           where copy-ups go among them (default tdp)\n  \
sum, nosum                statfs: sum over the branches' filesystems, each counted once;\n                            \
nosum (default): the upper's\n  \
threads=N                 FUSE event loops (default: number of CPUs)\n  \
log=FILE                  where the daemon's warnings go in the background (default: nowhere)\n  \
fsname=NAME               source shown in /proc/mounts\n  \
whiteout=aufs|overlay     format of whiteouts written (default aufs)\n  \
metacopy=on|off           metadata changes of a lower file copy no data until a write\n                            \
(default on; off in the overlay dialect)\n  \
sparse=on|off             a write to a big lower file copies only what it writes\n                            \
(default on; off in the overlay dialect and with whiteout=overlay)\n  \
copyup=auto|reflink|copy_file_range|readwrite   force one way of copying data up\n  \
passthrough=off|upper|all kernel-direct file I/O (root, kernel >= 6.9); all (default):\n                            \
every file (a reader keeps the lower file across a copy-up); upper: upper files only\n  \
nosuid, nodev, noexec, noatime, ...  mount flags\n\n\
Unknown options are an error, except in the overlay dialect (-o lowerdir=...), where \
they are warned about and ignored, as podman needs.\n\n\
Without -f the command returns once the mount is live and serving, leaving the \
daemon in the background; it exits when the mount is unmounted.")]
    Mount(MountArgs),
    /// Unmount a union (as `umount MNT` or `fusermount3 -u MNT` would), and
    /// return once every copy-up is in the upper (they do not wait).
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
        /// Detach now even if busy (lazy unmount).
        #[arg(short = 'l', long)]
        lazy: bool,
    },
    /// What an upper changed, as `docker diff` prints it.
    #[command(long_about = "What an upper changed, as `docker diff` prints it: \
`A /path` added, `C /path` changed (an upper object over a lower one, or a directory \
whose content changed), `D /path` deleted (a whiteout in any format, or lower entries \
hidden by an opaque directory), sorted by path.\n\n\
With --lowers, A and C are decided by whether the lowers hold the path. Without, \
only the upper's own markers tell (whiteouts are D; copied-up objects, which carry \
an origin xattr, and directories holding whiteouts are C; the rest is A).\n\n\
  unionfs diff /var/lib/c1/upper --lowers /img/app:/img/debian\n  \
unionfs diff /var/lib/c1/upper --json")]
    Diff {
        /// The upper branch (not mounted).
        upper: PathBuf,
        /// The lowers it was mounted on, topmost first.
        #[arg(long, value_name = "L1:L2")]
        lowers: Option<String>,
        /// A JSON array of {"kind":"A|C|D","path":"/..."}.
        #[arg(long)]
        json: bool,
    },
    /// Write an upper as an OCI image layer tar (deterministic; digests on stderr).
    #[command(long_about = "Write an upper as an OCI image layer: whiteouts in the \
OCI form (.wh.NAME, DIR/.wh..wh..opq) whatever format the upper was written in, hard \
links, xattrs (PAX SCHILY.xattr.*, union-private ones dropped), devices, fifos, \
symlinks. Entries in sorted order, owners and modes as on disk, mtimes in whole \
seconds (clamped by --mtime / SOURCE_DATE_EPOCH), no atime/ctime: the same upper \
gives the same bytes. The compression follows the name (.tar, .tar.gz, .tar.zst). \
Prints `diff_id sha256:...` (uncompressed) and `digest sha256:...` (as written) on \
stderr.\n\n\
Metadata-only (metacopy) files and renamed (redirected) directories need --lowers: \
their data and content are read from the lowers (a renamed directory is written \
opaque with its full merged content); without --lowers the export is refused.\n\n\
  unionfs export /var/lib/c1/upper layer.tar.gz --lowers /img/app:/img/debian")]
    Export(ExportArgs),
    /// Change the branches of a mounted union: add, del, mod, list.
    #[command(
        long_about = "Change the branches of a mounted union without unmounting it, \
as AUFS's `mount -o remount,add:N:DIR=MODE,del:DIR,mod:DIR=MODE` does (that form works too, \
through the mount helper). Positions count from 0 at the top. Modes: rw, rw+nolwh, ro, \
ro+wh, rr, rr+wh (see MODES in `unionfs mount --help`). A branch with open files cannot \
be deleted (EBUSY). The change is atomic: a request sees the old stack or the new one, \
and the kernel's caches are dropped at once.\n\n\
  unionfs branch list /mnt\n  \
unionfs branch add /mnt --at 1 /img/patch=ro+wh\n  \
unionfs branch mod /mnt /img/patch=rr\n  \
unionfs branch del /mnt /img/patch"
    )]
    Branch {
        /// What to change.
        #[command(subcommand)]
        action: BranchAction,
    },
    /// Write the man pages or shell completions (used by scripts/install.sh).
    #[command(hide = true)]
    Generate {
        /// What to write.
        #[command(subcommand)]
        what: Generate,
    },
}

/// `unionfs branch` actions.
#[derive(Debug, Subcommand)]
pub enum BranchAction {
    /// Print the branches, topmost first: `INDEX PATH=MODE`.
    List {
        /// The union's mount point.
        mountpoint: PathBuf,
    },
    /// Add DIR[=MODE] (default: the bottom, ro+wh).
    Add {
        /// The union's mount point.
        mountpoint: PathBuf,
        /// The branch, with an optional mode: /img/layer=ro+wh.
        branch: OsString,
        /// Position from the top (0: above every branch).
        #[arg(long, value_name = "N")]
        at: Option<usize>,
    },
    /// Remove the branch DIR.
    Del {
        /// The union's mount point.
        mountpoint: PathBuf,
        /// The branch directory.
        branch: PathBuf,
    },
    /// Change the mode of a branch: DIR=MODE.
    Mod {
        /// The union's mount point.
        mountpoint: PathBuf,
        /// The branch and its new mode: /img/layer=rr.
        branch: OsString,
    },
    /// AUFS remount options (add:N:DIR[=MODE], ins:, append:, prepend:,
    /// del:DIR, mod:DIR=MODE), as the mount helper passes them.
    #[command(hide = true)]
    Remount {
        /// The union's mount point.
        mountpoint: PathBuf,
        /// The comma-separated option list.
        options: String,
    },
}

/// The requests an AUFS remount option list makes, in order; other
/// options (mount flags mount(8) repeats from /proc/mounts) are skipped
/// and returned.
pub fn remount_requests(
    options: &str,
) -> Result<(Vec<crate::control::Request>, Vec<String>), String> {
    use crate::control::{split_dir_mode, Request};
    let mut reqs = Vec::new();
    let mut skipped = Vec::new();
    for item in config::split_options(options) {
        let dir_mode = |s: &str| split_dir_mode(std::ffi::OsStr::new(s));
        let (verb, rest) = item.split_once(':').unwrap_or((item.as_str(), ""));
        let req = match verb {
            "add" | "ins" => {
                let (n, dir) = rest
                    .split_once(':')
                    .ok_or_else(|| format!("'{item}': expected {verb}:INDEX:DIR[=MODE]"))?;
                let at = n
                    .parse::<usize>()
                    .map_err(|_| format!("'{item}': '{n}' is not a branch index"))?;
                let (path, mode) = dir_mode(dir)?;
                Request::Add {
                    at: Some(at),
                    path,
                    mode,
                }
            }
            "append" | "prepend" => {
                let (path, mode) = dir_mode(rest)?;
                Request::Add {
                    at: (verb == "prepend").then_some(0),
                    path,
                    mode,
                }
            }
            "del" => Request::Del {
                path: PathBuf::from(rest),
            },
            "mod" => match dir_mode(rest)? {
                (path, Some(mode)) => Request::Mod { path, mode },
                (_, None) => return Err(format!("'{item}': expected mod:DIR=MODE")),
            },
            _ => {
                skipped.push(item.clone());
                continue;
            }
        };
        if rest.is_empty() {
            return Err(format!("'{item}' names no directory"));
        }
        reqs.push(req);
    }
    Ok((reqs, skipped))
}

/// Runs `unionfs branch ...`; what to print.
pub fn run_branch(action: BranchAction) -> Result<String, String> {
    use crate::control::{request, split_dir_mode, ClientError, Request};
    let abs = |p: PathBuf| -> Result<PathBuf, String> {
        std::fs::canonicalize(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let send = |mnt: &std::path::Path, r: &Request| {
        request(mnt, r).map_err(|e| match e {
            ClientError::NoDaemon(m) => m,
            ClientError::Refused(r) => format!("{} ({})", r.msg, r.errno.desc()),
        })
    };
    match action {
        BranchAction::List { mountpoint } => {
            let recs = send(&mountpoint, &Request::List)?;
            let mut out = String::new();
            for (i, pair) in recs.chunks(2).enumerate() {
                if let [mode, path] = pair {
                    out.push_str(&format!(
                        "{i} {}={}\n",
                        String::from_utf8_lossy(path),
                        String::from_utf8_lossy(mode)
                    ));
                }
            }
            Ok(out)
        }
        BranchAction::Add {
            mountpoint,
            branch,
            at,
        } => {
            let (path, mode) = split_dir_mode(&branch)?;
            send(
                &mountpoint,
                &Request::Add {
                    at,
                    path: abs(path)?,
                    mode,
                },
            )
            .map(|_| String::new())
        }
        BranchAction::Del { mountpoint, branch } => {
            send(&mountpoint, &Request::Del { path: abs(branch)? }).map(|_| String::new())
        }
        BranchAction::Mod { mountpoint, branch } => match split_dir_mode(&branch)? {
            (path, Some(mode)) => send(
                &mountpoint,
                &Request::Mod {
                    path: abs(path)?,
                    mode,
                },
            )
            .map(|_| String::new()),
            (_, None) => Err(format!("'{}': expected DIR=MODE", branch.to_string_lossy())),
        },
        BranchAction::Remount {
            mountpoint,
            options,
        } => {
            let (reqs, _skipped) = remount_requests(&options)?;
            for r in reqs {
                let r = match r {
                    Request::Add { at, path, mode } => Request::Add {
                        at,
                        path: abs(path)?,
                        mode,
                    },
                    Request::Del { path } => Request::Del { path: abs(path)? },
                    Request::Mod { path, mode } => Request::Mod {
                        path: abs(path)?,
                        mode,
                    },
                    r @ (Request::List | Request::Flush) => r,
                };
                send(&mountpoint, &r)?;
            }
            Ok(String::new())
        }
    }
}

/// What `unionfs generate` writes.
#[derive(Debug, Subcommand)]
pub enum Generate {
    /// Man pages: unionfs.1 and one per subcommand, into DIR.
    Man {
        /// Where to write them.
        dir: PathBuf,
    },
    /// Completions for SHELL (bash, zsh, fish, elvish, powershell), on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Writes what `what` asks for.
pub fn generate(what: &Generate) -> std::io::Result<()> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    match what {
        Generate::Man { dir } => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(cmd, dir)
        }
        Generate::Completions { shell } => {
            let mut cmd = cmd;
            // (into a buffer: clap_complete panics on a failed write)
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "unionfs", &mut out);
            std::io::Write::write_all(&mut std::io::stdout(), &out)
        }
    }
}

/// Arguments of `unionfs export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The upper branch (not mounted).
    pub upper: PathBuf,
    /// The layer to write: NAME.tar, NAME.tar.gz, NAME.tar.zst, or - for stdout (plain tar).
    pub out: PathBuf,
    /// The lowers the upper was mounted on (topmost first), for the data of
    /// metadata-only files and the content of renamed directories.
    #[arg(long, value_name = "L1:L2")]
    pub lowers: Option<String>,
    /// Clamp every mtime to at most SECONDS since the epoch (as
    /// SOURCE_DATE_EPOCH does; also read from that variable).
    #[arg(long, value_name = "SECONDS", env = "SOURCE_DATE_EPOCH")]
    pub mtime: Option<u64>,
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
const TOP_LEVEL: [&str; 11] = [
    "mount",
    "branch",
    "umount",
    "diff",
    "export",
    "generate",
    "help",
    "--help",
    "-h",
    "--version",
    "-V",
];

/// Names under which the binary is the mount(8) helper (installed as
/// links to it): `mount -t fuse.unionfs` runs `/sbin/mount.fuse.unionfs`,
/// `mount -t unionfs` runs `/sbin/mount.unionfs`.
pub const HELPER_NAMES: [&str; 2] = ["mount.fuse.unionfs", "mount.unionfs"];

/// True when argv[0] names the mount(8) helper.
pub fn is_helper(args: &[OsString]) -> bool {
    args.first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| HELPER_NAMES.iter().any(|h| n == *h))
}

/// True for a helper call in mount(8)'s fake mode (`-f`): nothing to do.
pub fn is_fake_helper_call(args: &[OsString]) -> bool {
    if !is_helper(args) {
        return false;
    }
    let mut it = args.iter().skip(1).filter_map(|a| a.to_str());
    while let Some(s) = it.next() {
        if s == "-o" || s == "-t" {
            it.next();
        } else if s.len() > 1
            && s.starts_with('-')
            && s[1..].chars().all(|c| "sfnvrw".contains(c))
            && s.contains('f')
        {
            return true;
        }
    }
    false
}

/// The `unionfs mount` argv for a mount(8) helper call
/// `mount.fuse.unionfs SOURCE MNT [-sfnvrw] [-t TYPE] [-o OPTS]`.
///
/// SOURCE is the branch list as `unionfs mount` takes it (`L1:L2` with
/// `-o upperdir=U`, or `/u=RW:/a=RO`), or a label (`none`, `unionfs`) when
/// the options name the branches (`lowerdir=`, `br=`, `dirs=`).
pub fn helper_argv(args: &[OsString]) -> Result<Vec<OsString>, String> {
    let usage = "usage: mount.fuse.unionfs SOURCE MOUNTPOINT [-o OPTIONS]";
    let mut pos: Vec<OsString> = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "-o" {
            let v = it
                .next()
                .ok_or_else(|| format!("-o needs a value; {usage}"))?;
            opts.push(v.to_string_lossy().into_owned());
        } else if let Some(v) = s.strip_prefix("-o") {
            opts.push(v.to_string());
        } else if s == "-t" {
            // The type mount(8) resolved us by; nothing to choose.
            it.next();
        } else if s == "-N" || s.starts_with("--") {
            return Err(format!("unsupported helper argument '{s}'; {usage}"));
        } else if s.len() > 1 && s.starts_with('-') {
            if !s[1..].chars().all(|c| "sfnvrw".contains(c)) {
                return Err(format!("unknown helper flag '{s}'; {usage}"));
            }
            if s.contains('r') {
                opts.push("ro".into());
            }
        } else {
            pos.push(a.clone());
        }
    }
    let [source, mnt] = <[OsString; 2]>::try_from(pos).map_err(|_| usage.to_string())?;
    let items: Vec<String> = opts.iter().flat_map(|o| config::split_options(o)).collect();
    // `mount -o remount,add:1:/d=ro MNT`: the kernel passes nothing of a
    // FUSE remount to the daemon, but mount(8) runs this helper, which
    // hands the branch changes to the daemon's control channel.
    if items.iter().any(|i| i == "remount") {
        return Ok(vec![
            "unionfs".into(),
            "branch".into(),
            "remount".into(),
            mnt,
            items.join(",").into(),
        ]);
    }
    let mut out: Vec<OsString> = vec!["unionfs".into(), "mount".into()];
    if !items.iter().any(|i| i.starts_with("lowerdir=")) {
        out.push(source);
    }
    out.push(mnt);
    if !items.is_empty() {
        out.push("-o".into());
        out.push(items.join(",").into());
    }
    Ok(out)
}

/// A branch list with modes as (lowers, upper, (lower modes, upper mode)).
#[allow(clippy::type_complexity)]
fn moded(
    list: &str,
    dialect: Dialect,
    first_rw: bool,
) -> Result<(Vec<PathBuf>, Option<PathBuf>, (Vec<Mode>, Mode)), ConfigError> {
    let specs = config::split_branch_specs(list, dialect)?;
    let (lowers, upper) = config::specs_to_branches(&specs, first_rw)?;
    let modes = (
        lowers.iter().map(|l| l.1).collect(),
        upper.as_ref().map_or(Mode::RW, |u| u.1),
    );
    Ok((
        lowers.into_iter().map(|l| l.0).collect(),
        upper.map(|u| u.0),
        modes,
    ))
}

/// Parses argv; the overlay dialect (`unionfs -o ... MNT`) is `mount`;
/// called by a helper name, argv is read as mount(8) passes it.
pub fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let mut args = args;
    if is_helper(&args) {
        let argv = helper_argv(&args)
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, e + "\n"))?;
        return Cli::try_parse_from(argv);
    }
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
        let pos: Vec<PathBuf> = self.args.into_iter().map(PathBuf::from).collect();
        let dialect = if items.iter().any(|i| i.starts_with("lowerdir=")) {
            Dialect::Overlay
        } else if items
            .iter()
            .any(|i| i.starts_with("br=") || i.starts_with("br:") || i.starts_with("dirs="))
        {
            Dialect::Aufs
        } else if pos.len() == 2 && config::has_modes(&pos[0].to_string_lossy()) {
            Dialect::UnionfsFuse
        } else {
            Dialect::Native
        };
        let opts = config::parse_options(&items, dialect)?;
        let mut modes: Option<(Vec<Mode>, Mode)> = None;
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
            // `mount -t aufs -o br=... none MNT`: the source is a label.
            (Dialect::Aufs, [mnt] | [_, mnt]) => {
                let (lowers, upper, m) = moded(opts.br.as_deref().unwrap_or(""), dialect, true)?;
                modes = Some(m);
                (lowers, upper, mnt.clone())
            }
            (Dialect::Aufs, _) => return Err(ConfigError::Usage(
                "with -o br=... give only the mount point (or a source label and the mount point)"
                    .into(),
            )),
            (Dialect::UnionfsFuse, [branches, mnt]) => {
                let (lowers, upper, m) = moded(&branches.to_string_lossy(), dialect, false)?;
                modes = Some(m);
                (lowers, upper, mnt.clone())
            }
            (Dialect::Native, [lowers, mnt]) => (
                config::split_branches(&lowers.to_string_lossy()),
                opts.upperdir.as_ref().map(PathBuf::from),
                mnt.clone(),
            ),
            (Dialect::Native | Dialect::UnionfsFuse, [lowers, upper, mnt]) => {
                if config::has_modes(&lowers.to_string_lossy()) {
                    return Err(ConfigError::Usage(
                        "branches with modes (/u=RW:/a=RO) take no separate UPPER: give BRANCHES MNT"
                            .into(),
                    ));
                }
                (
                    config::split_branches(&lowers.to_string_lossy()),
                    (upper.as_os_str() != "-").then(|| upper.clone()),
                    mnt.clone(),
                )
            }
            (Dialect::Native | Dialect::UnionfsFuse, _) => {
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
        let cfg = MountConfig::validate(
            &lowers,
            upper.as_deref(),
            workdir.as_deref(),
            &mnt,
            opts,
            dialect,
            self.foreground || self.debug,
            self.debug,
        )?;
        match modes {
            Some((lower, upper)) => cfg.with_modes(lower, upper),
            None => Ok(cfg),
        }
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
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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

    fn config_of(args: &[&str], options: &[&str]) -> Result<MountConfig, ConfigError> {
        MountArgs {
            args: argv(args),
            options: options.iter().map(|s| s.to_string()).collect(),
            foreground: false,
            debug: false,
        }
        .into_config()
    }

    #[test]
    fn every_dialect_gives_the_same_mount() {
        let Ok(td) = tempfile::tempdir() else {
            unreachable!("tempdir")
        };
        let d = |n: &str| {
            let p = td.path().join(n);
            let _ = std::fs::create_dir(&p);
            p.canonicalize().unwrap_or(p).display().to_string()
        };
        let (u, a, b, m) = (d("u"), d("a"), d("b"), d("m"));
        let native = config_of(&[&format!("{a}:{b}"), &u, &m], &[]);
        let Ok(native) = native else {
            unreachable!("{native:?}")
        };
        let same = |c: Result<MountConfig, ConfigError>, what: &str| {
            let Ok(c) = c else {
                unreachable!("{what}: {c:?}")
            };
            assert_eq!(
                (&c.lowers, &c.upper, &c.mountpoint),
                (&native.lowers, &native.upper, &native.mountpoint),
                "{what}"
            );
            c.dialect
        };
        let br = format!("br={u}=rw:{a}=ro+wh:{b}=ro");
        assert_eq!(same(config_of(&[&m], &[&br]), "aufs br="), Dialect::Aufs);
        let brc = format!("br:{u}=rw:{a}=ro:{b}");
        assert_eq!(
            same(config_of(&["none", &m], &[&brc]), "aufs br:"),
            Dialect::Aufs
        );
        let dirs = format!("dirs={u}=rw:{a}=ro:{b}=ro");
        assert_eq!(
            same(config_of(&["unionfs", &m], &[&dirs]), "dirs="),
            Dialect::Aufs
        );
        let uf = format!("{u}=RW:{a}=RO:{b}=RO");
        assert_eq!(
            same(config_of(&[&uf, &m], &["cow"]), "unionfs-fuse"),
            Dialect::UnionfsFuse
        );
        let ov = format!("lowerdir={a}:{b},upperdir={u}");
        assert_eq!(same(config_of(&[&m], &[&ov]), "overlay"), Dialect::Overlay);
        // mount(8) helper form: SOURCE = lowers, upper as an option.
        let up = format!("upperdir={u}");
        assert_eq!(
            same(
                config_of(&[&format!("{a}:{b}"), &m], &[&up, "noauto"]),
                "fstab"
            ),
            Dialect::Native
        );
        // A read-only AUFS union (no rw branch).
        let ro = config_of(&[&m], &[&format!("br={a}=ro:{b}=rr")]);
        assert!(matches!(ro, Ok(c) if c.upper.is_none() && c.lowers.len() == 2));
    }

    #[test]
    fn unknown_mode_word_in_any_dialect() {
        for (args, opts) in [
            (vec!["/u=RW:/a=RX", "/m"], vec![]),
            (vec!["/m"], vec!["br=/u=rw:/a=ro+wx"]),
            (vec!["none", "/m"], vec!["dirs=/u=wr"]),
        ] {
            let r = config_of(&args, &opts);
            assert!(
                matches!(r, Err(ConfigError::BadMode { .. })),
                "{args:?} {opts:?}: {r:?}"
            );
        }
    }

    #[test]
    fn mount_helper_argv() {
        let h = |a: &[&str]| helper_argv(&argv(a));
        assert_eq!(
            h(&[
                "/sbin/mount.fuse.unionfs",
                "/a:/b",
                "/m",
                "-o",
                "rw,upperdir=/u,_netdev"
            ]),
            Ok(argv(&[
                "unionfs",
                "mount",
                "/a:/b",
                "/m",
                "-o",
                "rw,upperdir=/u,_netdev"
            ]))
        );
        assert_eq!(
            h(&[
                "mount.unionfs",
                "none",
                "/m",
                "-n",
                "-olowerdir=/a,upperdir=/u",
                "-t",
                "unionfs"
            ]),
            Ok(argv(&[
                "unionfs",
                "mount",
                "/m",
                "-o",
                "lowerdir=/a,upperdir=/u"
            ]))
        );
        assert_eq!(
            h(&[
                "mount.fuse.unionfs",
                "none",
                "/m",
                "-sv",
                "-o",
                "br=/u=rw:/a=ro",
                "-r"
            ]),
            Ok(argv(&[
                "unionfs",
                "mount",
                "none",
                "/m",
                "-o",
                "br=/u=rw:/a=ro,ro"
            ]))
        );
        assert_eq!(
            h(&["mount.fuse.unionfs", "/u=RW:/a=RO", "/m"]),
            Ok(argv(&["unionfs", "mount", "/u=RW:/a=RO", "/m"]))
        );
        for bad in [
            vec!["mount.fuse.unionfs", "/a"],
            vec!["mount.fuse.unionfs", "/a", "/m", "/x"],
            vec!["mount.fuse.unionfs", "/a", "/m", "-x"],
            vec!["mount.fuse.unionfs", "/a", "/m", "-N", "1"],
            vec!["mount.fuse.unionfs", "/a", "/m", "-o"],
        ] {
            assert!(h(&bad).is_err(), "{bad:?}");
        }
        assert!(is_helper(&argv(&["/usr/sbin/mount.fuse.unionfs"])));
        assert!(!is_helper(&argv(&["unionfs"])));
        assert!(is_fake_helper_call(&argv(&[
            "mount.fuse.unionfs",
            "s",
            "/m",
            "-fv"
        ])));
        assert!(!is_fake_helper_call(&argv(&["unionfs", "s", "/m", "-f"])));
        assert!(!is_fake_helper_call(&argv(&[
            "mount.fuse.unionfs",
            "s",
            "/m",
            "-o",
            "-f"
        ])));
        let cli = parse(argv(&[
            "mount.fuse.unionfs",
            "/a",
            "/m",
            "-o",
            "upperdir=/u",
        ]));
        assert!(
            matches!(
                cli,
                Ok(Cli {
                    command: Command::Mount(_)
                })
            ),
            "{cli:?}"
        );
    }

    #[test]
    fn aufs_remount_options_become_branch_requests_in_order() {
        use crate::control::Request;
        use crate::mode::Mode;
        let (reqs, skipped) = remount_requests(
            "rw,remount,add:1:/a=ro+wh,del:/b,mod:/c=rr,append:/d,prepend:/e=rw,ins:0:/f,user_id=0",
        )
        .unwrap();
        assert_eq!(skipped, vec!["rw", "remount", "user_id=0"]);
        assert_eq!(
            reqs,
            vec![
                Request::Add {
                    at: Some(1),
                    path: "/a".into(),
                    mode: Mode::parse("ro+wh")
                },
                Request::Del { path: "/b".into() },
                Request::Mod {
                    path: "/c".into(),
                    mode: Mode::parse("rr").unwrap()
                },
                Request::Add {
                    at: None,
                    path: "/d".into(),
                    mode: None
                },
                Request::Add {
                    at: Some(0),
                    path: "/e".into(),
                    mode: Some(Mode::RW)
                },
                Request::Add {
                    at: Some(0),
                    path: "/f".into(),
                    mode: None
                },
            ]
        );
        for bad in [
            "add:/a",
            "add:x:/a",
            "mod:/c",
            "mod:/c=rx",
            "del:",
            "add:1:/a=bogus",
        ] {
            assert!(remount_requests(bad).is_err(), "{bad}");
        }
        let argv = helper_argv(&argv(&[
            "/sbin/mount.fuse.unionfs",
            "none",
            "/mnt",
            "-o",
            "rw,remount,add:1:/x",
        ]))
        .unwrap();
        assert_eq!(
            argv,
            super::tests::argv(&[
                "unionfs",
                "branch",
                "remount",
                "/mnt",
                "rw,remount,add:1:/x"
            ])
        );
    }
}
