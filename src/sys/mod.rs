//! Every syscall the filesystem makes, and every `unsafe` block of the crate.
//!
//! Invariant: callers outside this module never touch raw pointers or
//! unchecked fds; every wrapper returns `Result<_, Error>` carrying the raw
//! errno, and logs one `trace!` line `op(args) = result` so that
//! `RUST_LOG=unionfs::sys=trace` reads like strace of the branches.
//! Takes no locks.

pub mod fs;
pub mod mount;
pub mod process;
pub mod xattr;

/// Logs one syscall and converts its errno into the crate error.
macro_rules! traced {
    ($op:literal, $args:expr, $res:expr) => {{
        let res = $res;
        match &res {
            Ok(_) => tracing::trace!("{}({:?}) = ok", $op, $args),
            Err(e) => tracing::trace!("{}({:?}) = {}", $op, $args, e),
        }
        res.map_err(|e| $crate::error::Error::sys($op, e))
    }};
}
pub(crate) use traced;
