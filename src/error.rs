//! The one error type of the filesystem core.
//!
//! Invariant: every variant maps to exactly one errno ([`Error::errno`] has no
//! catch-all arm), and syscall failures keep their raw errno end to end — they
//! are never routed through `io::ErrorKind`, which would lose EXDEV, ENOTEMPTY
//! and friends. One exception, a union rule: a branch's ENOTCONN (a FUSE or
//! network lower whose server is gone) reaches the caller as EIO, because
//! from the union ENOTCONN would say that the *union's* daemon is gone, and
//! tools act on that (remount, give up on the mount).
//!
//! Where the union itself decides an outcome (the merged view is not
//! empty, the name exists in the merged view, ...) the error is a variant
//! of its own, never a `Sys` with a made-up syscall: a log then tells a
//! branch's answer from a union rule, and the faults log (`faults`) never
//! mistakes a rule for a failing branch. Such a variant may share its errno
//! with a kernel answer (or with another rule): the variant, not the errno,
//! says who decided. Takes no locks.

use nix::errno::Errno;

/// Result of every core operation.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong in a core operation; `errno()` is what the caller sees.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A syscall on a branch failed; its errno is passed through unchanged.
    #[error("{op}: {errno}")]
    Sys {
        /// The syscall wrapper that failed.
        op: &'static str,
        /// The raw errno it returned.
        errno: Errno,
    },
    /// The name does not exist in the merged view (absent or whited out).
    #[error("no such file or directory")]
    NotFound,
    /// The inode number is not (or no longer) known to the inode table.
    #[error("stale inode")]
    StaleInode,
    /// The file handle is not open.
    #[error("bad file handle")]
    BadHandle,
    /// The operation needs a directory.
    #[error("not a directory")]
    NotDir,
    /// The operation does not apply to a directory.
    #[error("is a directory")]
    IsDir,
    /// The mount has no writable upper branch.
    #[error("read-only union")]
    ReadOnly,
    /// The name or object is reserved for the union's own bookkeeping:
    /// `.wh.*` names, and char 0:0 devices where they are the written
    /// whiteout format (overlayfs refuses such a mknod with EPERM too).
    #[error("union rule: name or object is reserved for the union's bookkeeping")]
    Reserved,
    /// A union rule on name length: the name is longer than the union's
    /// NAME_MAX (to create, or to look up where no branch holds it), or a
    /// lower name whose whiteout would not fit cannot be deleted.
    #[error("union rule: name too long for the union (NAME_MAX, or no room for its whiteout)")]
    NameTooLong,
    /// The extended attribute does not exist (or is private to the union).
    #[error("no such attribute")]
    NoXattr,
    /// The caller's buffer is too small.
    #[error("result too large for the buffer")]
    Range,
    /// An argument is invalid for this object.
    #[error("invalid argument")]
    Invalid,
    /// The caller lacks permission.
    #[error("permission denied")]
    Access,
    /// The union does not support this operation.
    #[error("operation not supported")]
    NotSupported,
    /// The file is pinned to a lower branch by readers the kernel serves
    /// directly (`passthrough=all`), and the writer cannot be moved to a new
    /// node (a reopen through /proc/PID/fd), so it cannot be written now.
    #[error("file busy")]
    Busy,
    /// A metadata-only file (`*.metacopy`) has no file with its data in
    /// the layers below: the union cannot serve it (overlayfs: EIO).
    #[error("metadata-only file without data below it")]
    MetacopyWithoutData,
    /// A union rule: the directory is not empty in the merged view (an
    /// rmdir, or a rename over it), though its upper instance may be.
    #[error("union rule: directory not empty in the merged view")]
    NotEmpty,
    /// A union rule: the name exists in the merged view (a rename with
    /// RENAME_NOREPLACE over it, or an object to be placed where the upper
    /// holds something other than a whiteout).
    #[error("union rule: name exists in the merged view")]
    Exists,
    /// A union rule: a branch cannot be removed while a file in it is open
    /// through the union (AUFS's `del` gives EBUSY too).
    #[error("union rule: the branch has files open through the union")]
    BranchBusy,
    /// A union rule: a writable branch or workdir is another union's (a
    /// daemon still running, say one finishing an unmount): two writers
    /// would clear each other's staged copies (overlayfs refuses an upper
    /// or workdir in use with EBUSY too).
    #[error("union rule: the branch or its workdir is in use by another union")]
    BranchInUse,
    /// A union rule: a directory cannot be hard-linked (link(2)'s EPERM).
    #[error("union rule: a directory cannot be hard-linked")]
    LinkDir,
    /// A union rule: an unnamed file (O_TMPFILE, not linked yet) lives in
    /// the writable branch it was made in; it cannot be copied up to a
    /// higher one (a link whose name only a higher branch may hold: EXDEV,
    /// as link(2) across filesystems).
    #[error("union rule: an unnamed (O_TMPFILE) file cannot move to another branch")]
    Unnamed,
    /// Redirects in the branches lead a lookup through more layers than
    /// one lookup may probe (hostile or corrupt layers).
    #[error("redirects lead too far")]
    RedirectsTooDeep,
}

impl Error {
    /// The errno reported to the kernel for this error.
    pub fn errno(&self) -> Errno {
        match self {
            // The union is connected; its branch is not (see the module doc).
            Error::Sys {
                errno: Errno::ENOTCONN,
                ..
            } => Errno::EIO,
            Error::Sys { errno, .. } => *errno,
            Error::NotFound => Errno::ENOENT,
            Error::StaleInode => Errno::ESTALE,
            Error::BadHandle => Errno::EBADF,
            Error::NotDir => Errno::ENOTDIR,
            Error::IsDir => Errno::EISDIR,
            Error::ReadOnly => Errno::EROFS,
            Error::Reserved => Errno::EPERM,
            Error::NameTooLong => Errno::ENAMETOOLONG,
            Error::NoXattr => Errno::ENODATA,
            Error::Range => Errno::ERANGE,
            Error::Invalid => Errno::EINVAL,
            Error::Access => Errno::EACCES,
            Error::NotSupported => Errno::EOPNOTSUPP,
            Error::Busy => Errno::ETXTBSY,
            Error::BranchBusy => Errno::EBUSY,
            Error::BranchInUse => Errno::EBUSY,
            Error::MetacopyWithoutData => Errno::EIO,
            Error::RedirectsTooDeep => Errno::ELOOP,
            Error::NotEmpty => Errno::ENOTEMPTY,
            Error::Exists => Errno::EEXIST,
            Error::LinkDir => Errno::EPERM,
            Error::Unnamed => Errno::EXDEV,
        }
    }

    /// Wraps a raw errno from the syscall wrapper `op`.
    pub fn sys(op: &'static str, errno: Errno) -> Self {
        Error::Sys { op, errno }
    }

    /// True when this error means "the name is not there".
    pub fn is_not_found(&self) -> bool {
        self.errno() == Errno::ENOENT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table_is_one_to_one() {
        let all = [
            Error::NotFound,
            Error::StaleInode,
            Error::BadHandle,
            Error::NotDir,
            Error::IsDir,
            Error::ReadOnly,
            Error::Reserved,
            Error::NameTooLong,
            Error::NoXattr,
            Error::Range,
            Error::Invalid,
            Error::Access,
            Error::NotSupported,
            Error::Busy,
            Error::BranchBusy,
            Error::MetacopyWithoutData,
            Error::RedirectsTooDeep,
            Error::NotEmpty,
            Error::Exists,
        ];
        let mut seen = std::collections::HashSet::new();
        // Rules sharing an errno with another variant on purpose: link(2)
        // of a directory is EPERM, as a reserved name is.
        assert_eq!(Error::LinkDir.errno(), Error::Reserved.errno());
        // A branch in use elsewhere is EBUSY, as a busy branch is.
        assert_eq!(Error::BranchInUse.errno(), Error::BranchBusy.errno());
        for e in &all {
            assert!(
                seen.insert(e.errno() as i32),
                "{e:?} shares errno {}",
                e.errno()
            );
        }
        assert_eq!(Error::sys("openat", Errno::EXDEV).errno(), Errno::EXDEV);
        // A lower whose server is gone is an I/O error of the union.
        assert_eq!(Error::sys("pread", Errno::ENOTCONN).errno(), Errno::EIO);
        assert!(Error::sys("x", Errno::ENOENT).is_not_found());
    }

    /// A union rule says so, and is not dressed as a syscall's failure.
    #[test]
    fn union_rules_name_themselves() {
        for e in [
            Error::NotEmpty,
            Error::Exists,
            Error::LinkDir,
            Error::NameTooLong,
            Error::Reserved,
            Error::BranchInUse,
            Error::Unnamed,
        ] {
            assert!(e.to_string().starts_with("union rule: "), "{e}");
        }
        assert_eq!(Error::Unnamed.errno(), Errno::EXDEV);
        assert_eq!(Error::NotEmpty.errno(), Errno::ENOTEMPTY);
        assert_eq!(Error::Exists.errno(), Errno::EEXIST);
        assert_eq!(Error::LinkDir.errno(), Errno::EPERM);
    }
}
