//! Every syscall the filesystem makes, and every `unsafe` block of the crate.
//!
//! Invariant: callers outside this module never touch raw pointers or
//! unchecked fds; every wrapper returns `Result<_, Error>` carrying the raw
//! errno, and logs one `trace!` line `op(args) = result` so that
//! `RUST_LOG=unionfs::sys=trace` reads like strace of the branches.
//! Takes no locks.

pub mod ahead;
pub mod ctl;
pub mod fdxattr;
pub mod fs;
pub mod mount;
pub mod notify;
pub mod process;
pub mod resident;
pub mod tmpfile;
pub mod xattr;

/// Whether this target numbers new syscalls as x86_64 and the generic
/// table (arm64, riscv64, loongarch64) do: the same number everywhere.
const UNIFIED_SYSCALL_NUMBERS: bool = cfg!(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "loongarch64"
));

/// A syscall newer than some kernels this runs on, with an older way to do
/// the same. It is used until it proves unusable — ENOSYS, an errno the
/// caller names as "not supported", or EPERM from a seccomp filter that
/// does not know it (container runtimes' default profiles), told apart from
/// a real EPERM by the old way succeeding — and then never again.
pub(crate) struct NewCall {
    nr: libc::c_long,
    usable: std::sync::atomic::AtomicBool,
}

impl NewCall {
    /// The call numbered `nr` (on targets with unified numbers; elsewhere
    /// the old way is always taken).
    pub(crate) const fn new(nr: libc::c_long) -> Self {
        NewCall {
            nr,
            usable: std::sync::atomic::AtomicBool::new(UNIFIED_SYSCALL_NUMBERS),
        }
    }

    /// `new(nr)` while the call is usable, else (or when it turns out not
    /// to be) `old()`.
    pub(crate) fn run<T>(
        &self,
        unsupported: &[nix::errno::Errno],
        new: impl FnOnce(libc::c_long) -> std::result::Result<T, nix::errno::Errno>,
        old: impl FnOnce() -> std::result::Result<T, nix::errno::Errno>,
    ) -> std::result::Result<T, nix::errno::Errno> {
        use nix::errno::Errno;
        use std::sync::atomic::Ordering;
        let mut refused = false;
        if self.usable.load(Ordering::Relaxed) {
            match new(self.nr) {
                Err(e) if e == Errno::ENOSYS || unsupported.contains(&e) => {
                    self.usable.store(false, Ordering::Relaxed)
                }
                Err(Errno::EPERM) => refused = true,
                r => return r,
            }
        }
        let r = old();
        if refused && !matches!(r, Err(Errno::EPERM)) {
            self.usable.store(false, Ordering::Relaxed);
        }
        r
    }

    /// Whether the call is still tried (tests).
    #[cfg(test)]
    pub(crate) fn usable(&self) -> bool {
        self.usable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes the call tried again, or not (tests).
    #[cfg(test)]
    pub(crate) fn set_usable(&self, on: bool) {
        self.usable.store(on, std::sync::atomic::Ordering::Relaxed)
    }
}

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
