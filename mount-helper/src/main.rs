//! The `unionfs-run` binary: parse, validate, run; exit with the command's status.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use unionfs_run::spec::RawSpec;
use unionfs_run::store;

/// Run a command in a container whose root is a union of image branches.
#[derive(Debug, Parser)]
#[command(
    name = "unionfs-run",
    version,
    about = "Run a command in a container whose root is a unionfs union of image branches",
    long_about = "Run a command in a container whose root is a unionfs union: read-only image \
branches (default: this machine's own /) under a writable upper.\n\n\
Examples:\n  unionfs-run --rm -- sh -c 'apt-get remove -y nano; ls /usr/bin | wc -l'\n  \
unionfs-run --image /img/app:/img/base --memory 256M --pids 128 -- /app/server\n\n\
Images: --image oci:DIR[:TAG] (an OCI image layout, as `podman save --format oci-dir` or \
`skopeo copy ... oci:DIR` write it) or --image docker-archive:FILE.tar[:NAME] (`podman save \
--format docker-archive`, `docker save`). Each layer is unpacked once, verified, into the image \
store ($UNIONFS_RUN_STORE, default /var/lib/unionfs-run as root) and used as a branch; the \
image's Env, Entrypoint/Cmd, WorkingDir and User apply unless the command line says otherwise. \
`unionfs-run images` lists the store, `unionfs-run rmi NAME|ID` removes an image.\n\n\
Exit status: the command's; 128+n when it is killed by signal n; 126 when it cannot \
be executed; 127 when it is not found; 125 when unionfs-run itself fails.",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    sub: Option<Sub>,
    /// Image branches, topmost first (colon-separated, may repeat), or an
    /// image: oci:DIR[:TAG] or docker-archive:FILE[:NAME]; default: the host's /.
    #[arg(long, value_name = "DIR[:DIR...]|oci:DIR[:TAG]|docker-archive:FILE")]
    image: Vec<String>,
    /// The writable branch (default: a fresh one, kept unless --rm).
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    /// Remove the upper when the container exits.
    #[arg(long)]
    rm: bool,
    /// Run in the background: print the container's name once it has
    /// started and exit 0 (its output goes to /dev/null); `ps`, `stop`.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Memory limit (e.g. 256M, 1G).
    #[arg(long)]
    memory: Option<String>,
    /// Maximum number of processes.
    #[arg(long)]
    pids: Option<String>,
    /// CPU quota in CPUs (e.g. 0.5).
    #[arg(long)]
    cpus: Option<String>,
    /// Hostname inside (default: the container's name).
    #[arg(long)]
    hostname: Option<String>,
    /// Network: none (only lo) or host.
    #[arg(long, value_name = "none|host")]
    net: Option<String>,
    /// Environment variable for the command.
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside.
    #[arg(short = 'w', long)]
    workdir: Option<PathBuf>,
    /// Run as UID[:GID].
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Container name (cgroup and state directory).
    #[arg(long)]
    name: Option<String>,
    /// Give the container every capability, no seccomp filter, no masked
    /// /proc paths, a writable /sys and every device (as docker's).
    #[arg(long)]
    privileged: bool,
    /// Add a capability to docker's default 14 (NAME, CAP_NAME or ALL).
    #[arg(long, value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability from the default set (NAME, CAP_NAME or ALL).
    #[arg(long, value_name = "CAP")]
    cap_drop: Vec<String>,
    /// seccomp=unconfined (no seccomp filter) or no-new-privileges.
    #[arg(long, value_name = "OPT")]
    security_opt: Vec<String>,
    /// Undo what killed launchers left (mounts, cgroups, --rm uppers and
    /// state of containers whose launcher is gone), then exit. Also done
    /// at the start of every run.
    #[arg(long)]
    cleanup: bool,
    /// A hugetlb limit, PAGESIZE=LIMIT (e.g. 2MB=64M).
    #[arg(long, value_name = "PAGESIZE=LIMIT", hide = true)]
    hugetlb: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Image store and container commands.
#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// List containers: running ones, and those kept (started without --rm).
    Ps {
        /// Show whole image names and commands.
        #[arg(long)]
        no_trunc: bool,
    },
    /// Stop running containers: SIGTERM to the container's init, SIGKILL
    /// after the timeout; the launcher then tears the container down.
    Stop {
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = 10, value_name = "SECS")]
        time: u64,
        /// Container names.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Write a stopped container (started without --rm, from an image or
    /// image directories) as an OCI image layout: its image's layers, then
    /// its upper as one more layer, tagged TAG (default latest) in DIR.
    Commit {
        /// The container.
        #[arg(value_name = "NAME")]
        name: String,
        /// Where: an OCI layout directory (made, or added to), and the tag.
        #[arg(value_name = "oci:DIR[:TAG]")]
        target: String,
    },
    /// Remove stopped containers: the record and the upper the launcher
    /// made (an upper given with --upper stays).
    Rm {
        /// Container names.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// List the images in the store: name, id, size, layers.
    Images {
        /// Show whole digests.
        #[arg(long)]
        no_trunc: bool,
    },
    /// Write the man pages (`man DIR`) or shell completions
    /// (`completions SHELL`) — used by scripts/install.sh.
    #[command(hide = true)]
    Generate {
        /// What to write.
        #[command(subcommand)]
        what: Generate,
    },
    /// Remove images (and the layers no other image uses).
    Rmi {
        /// Names (NAME:TAG) or ids (sha256:HEX, or a prefix of HEX).
        #[arg(required = true, value_name = "NAME|ID")]
        images: Vec<String>,
    },
}

/// What `unionfs-run generate` writes.
#[derive(Debug, clap::Subcommand)]
enum Generate {
    /// Man pages: unionfs-run.1 and one per subcommand, into DIR.
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

fn generate(what: &Generate) -> std::io::Result<()> {
    use clap::CommandFactory;
    let mut cmd = Args::command();
    match what {
        Generate::Man { dir } => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(cmd, dir)
        }
        Generate::Completions { shell } => {
            // (into a buffer: clap_complete panics on a failed write)
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "unionfs-run", &mut out);
            std::io::Write::write_all(&mut std::io::stdout(), &out)
        }
    }
}

fn human(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn container_command(sub: Sub) -> ExitCode {
    let root = unionfs_run::state_root();
    let mut code = ExitCode::SUCCESS;
    match sub {
        Sub::Ps { no_trunc } => {
            use unionfs_run::container::{list, Status};
            let cut = |s: &str, n: usize| -> String {
                if no_trunc || s.chars().count() <= n {
                    s.to_string()
                } else {
                    let mut t: String = s.chars().take(n - 3).collect();
                    t.push_str("...");
                    t
                }
            };
            println!(
                "{:<20} {:<32} {:<20} {:<14} {:>8}  UPPER",
                "NAME", "IMAGE", "COMMAND", "STATUS", "PID"
            );
            for (_, r) in list(&root) {
                let (status, pid) = match r.status() {
                    Status::Running => (
                        "Running".to_string(),
                        r.init.map_or("-".to_string(), |p| p.pid.to_string()),
                    ),
                    Status::Exited(c) => (format!("Exited ({c})"), "-".to_string()),
                    Status::Dead => ("Dead".to_string(), "-".to_string()),
                };
                println!(
                    "{:<20} {:<32} {:<20} {:<14} {:>8}  {}",
                    r.name,
                    cut(&r.image, 32),
                    cut(&r.command.join(" "), 20),
                    status,
                    pid,
                    r.upper.display()
                );
            }
        }
        Sub::Stop { time, names } => {
            for n in names {
                match unionfs_run::container::stop(&root, &n, std::time::Duration::from_secs(time))
                {
                    Ok(l) => println!("{l}"),
                    Err(e) => {
                        eprintln!("unionfs-run: {e}");
                        code = ExitCode::from(125);
                    }
                }
            }
        }
        Sub::Rm { names } => {
            for n in names {
                match unionfs_run::container::remove(&root, &n) {
                    Ok(l) => println!("{l}"),
                    Err(e) => {
                        eprintln!("unionfs-run: {e}");
                        code = ExitCode::from(125);
                    }
                }
            }
        }
        Sub::Commit { name, target } => match unionfs_run::commit::commit(&root, &name, &target) {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(e) => {
                eprintln!("unionfs-run: {e}");
                code = ExitCode::from(125);
            }
        },
        Sub::Generate { what } => {
            if let Err(e) = generate(&what) {
                eprintln!("unionfs-run: {e}");
                code = ExitCode::from(125);
            }
        }
        other => return store_command(other),
    }
    code
}

fn store_command(sub: Sub) -> ExitCode {
    let store = match store::Store::open(&store::default_root()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("unionfs-run: {e}");
            return ExitCode::from(125);
        }
    };
    match sub {
        Sub::Images { no_trunc } => match store.list() {
            Ok(list) => {
                println!("{:<40} {:<19} {:>10} {:>6}", "NAME", "ID", "SIZE", "LAYERS");
                for img in list {
                    let id = if no_trunc {
                        img.id.clone()
                    } else {
                        img.id.chars().take(19).collect()
                    };
                    let names = if img.names.is_empty() {
                        vec!["<none>".to_string()]
                    } else {
                        img.names.clone()
                    };
                    for n in names {
                        println!(
                            "{n:<40} {id:<19} {:>10} {:>6}",
                            human(img.size()),
                            img.layers.len()
                        );
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("unionfs-run: {e}");
                ExitCode::from(125)
            }
        },
        Sub::Rmi { images } => {
            let mut code = ExitCode::SUCCESS;
            for i in images {
                match store.remove(&i) {
                    Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
                    Err(e) => {
                        eprintln!("unionfs-run: {e}");
                        code = ExitCode::from(125);
                    }
                }
            }
            code
        }
        Sub::Ps { .. }
        | Sub::Stop { .. }
        | Sub::Rm { .. }
        | Sub::Commit { .. }
        | Sub::Generate { .. } => container_command(sub),
    }
}

enum Detached {
    /// In the caller: the status to exit with (0: started).
    Parent(u8),
    /// In the launcher that goes on: where to say "started".
    Child(std::os::fd::OwnedFd),
}

/// `-d`: forks the launcher off into its own session. The caller relays
/// the launcher's stderr (its one-line error, if any) until the launcher
/// reports the container started (a byte on `ready`) or exits.
fn detach_launcher() -> Detached {
    use std::io::{Read, Write};
    let pipes = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .and_then(|e| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map(|r| (e, r)));
    let Ok(((err_rd, err_wr), (ready_rd, ready_wr))) = pipes else {
        eprintln!("unionfs-run: cannot make a pipe");
        return Detached::Parent(125);
    };
    match unionfs_run::sys::fork() {
        Err(e) => {
            eprintln!("unionfs-run: cannot fork: {e}");
            Detached::Parent(125)
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop((err_rd, ready_rd));
            let _ = nix::unistd::setsid();
            if let Ok(null) = std::fs::File::open("/dev/null") {
                let _ = nix::unistd::dup2_stdin(&null);
                let _ = nix::unistd::dup2_stdout(&null);
            }
            let _ = nix::unistd::dup2_stderr(&err_wr);
            drop(err_wr);
            Detached::Child(ready_wr)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop((err_wr, ready_wr));
            let mut text = Vec::new();
            let _ = std::fs::File::from(err_rd).read_to_end(&mut text);
            let _ = std::io::stderr().write_all(&text);
            let mut b = [0u8; 1];
            if std::fs::File::from(ready_rd).read_exact(&mut b).is_ok() {
                return Detached::Parent(0);
            }
            let code = match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => u8::try_from(c).unwrap_or(125),
                _ => 125,
            };
            if text.is_empty() {
                // Its output already went to /dev/null.
                eprintln!("unionfs-run: the container did not start (exit status {code})");
            }
            Detached::Parent(if code == 0 { 125 } else { code })
        }
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 125 } else { 0 });
        }
    };
    if let Some(sub) = args.sub {
        return container_command(sub);
    }
    if args.cleanup {
        for line in unionfs_run::container::cleanup(&unionfs_run::state_root()) {
            println!("{line}");
        }
        return ExitCode::SUCCESS;
    }
    // Image references become the image's layer branches, in place.
    let mut image = Vec::new();
    let mut settings = None;
    // Lives until the container has ended: its image cannot be removed meanwhile.
    let mut in_use = None;
    let mut origin = unionfs_run::Origin {
        image: args.image.join(":"),
        ..Default::default()
    };
    for v in args.image {
        let Some(r) = store::source::ImageRef::parse(&v) else {
            image.push(v);
            continue;
        };
        if settings.is_some() {
            eprintln!("unionfs-run: only one --image may name an image ({v})");
            return ExitCode::from(125);
        }
        let resolved = match store::resolve(&r) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("unionfs-run: {e}");
                return ExitCode::from(125);
            }
        };
        let mut list = Vec::new();
        for b in &resolved.branches {
            let s = b.to_string_lossy();
            if s.contains(':') {
                eprintln!(
                    "unionfs-run: the image store path {} must not contain ':'",
                    b.display()
                );
                return ExitCode::from(125);
            }
            list.push(s.into_owned());
        }
        image.push(list.join(":"));
        settings = Some(resolved.settings);
        in_use = Some(resolved.in_use);
        origin.image_id = Some(resolved.id);
        origin.store = Some(resolved.store);
    }
    let raw = RawSpec {
        image,
        image_config: settings,
        upper: args.upper,
        remove: args.rm,
        memory: args.memory,
        pids: args.pids,
        cpus: args.cpus,
        hostname: args.hostname,
        net: args.net,
        env: args.env,
        workdir: args.workdir,
        user: args.user,
        name: args.name,
        privileged: args.privileged,
        cap_add: args.cap_add,
        cap_drop: args.cap_drop,
        security_opt: args.security_opt,
        hugetlb: args.hugetlb,
        argv: args.command,
    };
    let default_name = format!(
        "c{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let spec = match raw.validate(default_name) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("unionfs-run: {e}");
            return ExitCode::from(125);
        }
    };
    if args.detach {
        match detach_launcher() {
            Detached::Parent(code) => {
                if code == 0 {
                    println!("{}", spec.name);
                }
                return ExitCode::from(code);
            }
            Detached::Child(ready) => origin.detach = Some(ready),
        }
    }
    let code = ExitCode::from(u8::try_from(unionfs_run::run_from(&spec, origin)).unwrap_or(125));
    drop(in_use);
    code
}
