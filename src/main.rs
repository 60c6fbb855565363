//! The `unionfs` binary: parse, validate, run; one line on failure.

use std::process::ExitCode;

use unionfs::cli::{self, Command};
use unionfs::{daemon, layer};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // mount(8) -f: pretend, as helpers must.
    if cli::is_fake_helper_call(&args) {
        return ExitCode::SUCCESS;
    }
    let cli = match cli::parse(args) {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and errors to stderr.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let res = match cli.command {
        Command::Mount(m) => match m.into_config() {
            Ok(cfg) => daemon::run_mount(cfg),
            Err(e) => Err(e.into()),
        },
        Command::Umount { mountpoint, lazy } => daemon::run_umount(&mountpoint, lazy),
        Command::Diff {
            upper,
            lowers,
            json,
        } => layer::run_diff(&upper, lowers.as_deref(), json).map_err(Into::into),
        Command::Branch { action } => match cli::run_branch(action) {
            Ok(out) => {
                print!("{out}");
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!(e)),
        },
        Command::Generate { what } => cli::generate(&what).map_err(Into::into),
        Command::Export(a) => {
            layer::run_export(&a.upper, &a.out, a.lowers.as_deref(), a.mtime).map_err(Into::into)
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unionfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
