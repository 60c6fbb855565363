//! faultfs: a read-only FUSE file system serving a directory tree that
//! fails the requests it is told to — a lower branch going bad, for trying
//! the union's behaviour by hand. The implementation is the one the
//! failing-branch tests mount in-process (`tests/faultfs/mod.rs`).
//!
//! `faultfs SOURCE MOUNTPOINT [OP:NAME[:ERRNO]]...` serves SOURCE at
//! MOUNTPOINT (as root, open to all users) until unmounted; each OP request
//! (lookup, getattr, open, read, readdir, getxattr, listxattr) about an
//! object whose file name is NAME fails with ERRNO (a number, default EIO).
//! Example: `faultfs /srv/tree /mnt/bad read:disk.img readdir:logs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/faultfs/mod.rs"]
mod faultfs;

use std::path::PathBuf;
use std::sync::Arc;

use faultfs::{FaultOp, Faults};

const USAGE: &str = "usage: faultfs SOURCE MOUNTPOINT [OP:NAME[:ERRNO]]...";

fn op_of(s: &str) -> Option<FaultOp> {
    Some(match s {
        "lookup" => FaultOp::Lookup,
        "getattr" => FaultOp::Getattr,
        "open" => FaultOp::Open,
        "read" => FaultOp::Read,
        "readdir" => FaultOp::Readdir,
        "getxattr" => FaultOp::Getxattr,
        "listxattr" => FaultOp::Listxattr,
        _ => return None,
    })
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(source), Some(mnt)) = (args.first(), args.get(1)) else {
        eprintln!("{USAGE}");
        return std::process::ExitCode::from(2);
    };
    let faults = Arc::new(Faults::default());
    for spec in &args[2..] {
        let mut parts = spec.splitn(3, ':');
        let (Some(op), Some(name)) = (parts.next().and_then(op_of), parts.next()) else {
            eprintln!("faultfs: bad fault {spec:?}\n{USAGE}");
            return std::process::ExitCode::from(2);
        };
        let errno = parts.next().map_or(Some(libc::EIO), |e| e.parse().ok());
        let Some(errno) = errno else {
            eprintln!("faultfs: bad errno in {spec:?}");
            return std::process::ExitCode::from(2);
        };
        faults.add(op, name, errno);
    }
    let session = match faultfs::spawn(&PathBuf::from(source), &PathBuf::from(mnt), faults) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("faultfs: cannot mount {mnt}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match session.join() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faultfs: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
