//! The `unionfs-run` binary: parse, validate, run; exit with the command's status.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use unionfs_run::spec::RawSpec;

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
Exit status: the command's; 128+n when it is killed by signal n; 126 when it cannot \
be executed; 127 when it is not found; 125 when unionfs-run itself fails."
)]
struct Args {
    /// Image branches, topmost first (colon-separated, may repeat); default: the host's /.
    #[arg(long, value_name = "DIR[:DIR...]")]
    image: Vec<String>,
    /// The writable branch (default: a fresh one, kept unless --rm).
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    /// Remove the upper when the container exits.
    #[arg(long)]
    rm: bool,
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
    /// A hugetlb limit, PAGESIZE=LIMIT (e.g. 2MB=64M).
    #[arg(long, value_name = "PAGESIZE=LIMIT", hide = true)]
    hugetlb: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 125 } else { 0 });
        }
    };
    let raw = RawSpec {
        image: args.image,
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
    ExitCode::from(u8::try_from(unionfs_run::run(&spec)).unwrap_or(125))
}
