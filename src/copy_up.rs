//! Copy-up: building a copy of a lower object in the workdir.
//!
//! Invariant: a staged copy is complete (data, owner, xattrs, mode, times,
//! recorded inode number) before anyone can see it; the caller moves it
//! into the upper with one rename. Data is shared by reflink where the
//! filesystem can, else copied with `copy_file_range` over the data
//! extents only (holes stay holes), else read and written. A regular
//! file is staged in an empty file the upper made ahead
//! (`Upper::staged_file`), through fds opened once: its data, owner,
//! xattrs, mode and times go through the open source and copy, not
//! through `/proc/self/fd` paths.
//! Takes no locks (callers serialise copy-ups of one object).

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::FileStat;

use crate::error::Result;
use crate::inode::Kind;
use crate::sys;
use crate::sys::fs::SetTime;
use crate::upper::{Strategy, Upper};
use crate::whiteout;

/// How much of a regular file's data a copy-up takes along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyUpData {
    /// All of it.
    Full,
    /// None: the file is about to be truncated to zero anyway.
    Empty,
    /// None yet: only metadata changes. A regular file becomes a
    /// metadata-only copy (its size, no blocks, a metacopy marker) whose
    /// data stays in the lower until it is opened for writing.
    Meta,
    /// None yet, for writing: a partial file (`sparse.rs`), its size, no
    /// blocks, the union's metacopy marker and an extent map saying all
    /// its data is below; writes then fill it in where they land.
    Sparse,
}

impl CopyUpData {
    /// Copies no data now (the object keeps a layer with its data below).
    pub fn is_deferred(self) -> bool {
        matches!(self, CopyUpData::Meta | CopyUpData::Sparse)
    }
}

const CHUNK: usize = 1 << 20;

/// Copies `[off, end)` by pread/pwrite; returns where it stopped (`end`,
/// or earlier at the source's end of file).
fn read_write(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, mut off: u64, end: u64) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    while off < end {
        let want = usize::try_from(end - off).unwrap_or(CHUNK).min(CHUNK);
        let n = sys::fs::pread(src, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += sys::fs::pwrite(dst, &buf[done..n], off + done as u64)?;
        }
        off += n as u64;
    }
    Ok(off)
}

/// Copies all data of `src` into the empty file `dst`, keeping holes.
pub fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64) -> Result<Strategy> {
    copy_data_with(src, dst, size, None)
}

/// `copy_data`, with the strategy forced (`only`, for benchmarks and
/// filesystems with a broken one) or chosen: the first that works.
pub fn copy_data_with(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    size: u64,
    only: Option<Strategy>,
) -> Result<Strategy> {
    let hints = CopyHints {
        only,
        try_clone: true,
        dense: false,
    };
    copy_data_hinted(src, dst, size, hints).map(|(how, _)| how)
}

/// What a caller knows that spares `copy_data_hinted` syscalls.
#[derive(Debug, Clone, Copy)]
struct CopyHints {
    /// The one strategy allowed, if any.
    only: Option<Strategy>,
    /// FICLONE may work here (false once the upper refused it for good).
    try_clone: bool,
    /// The source has no holes (its blocks cover its size): one extent,
    /// no SEEK_DATA/SEEK_HOLE walk. (Wrong only for a file with blocks
    /// allocated past its end, whose holes are then copied as zeros: the
    /// same bytes.)
    dense: bool,
}

/// `copy_data_with`, given `hints`. Also says whether FICLONE was refused
/// by the filesystem itself (EOPNOTSUPP: it cannot clone at all).
fn copy_data_hinted(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    size: u64,
    hints: CopyHints,
) -> Result<(Strategy, bool)> {
    let only = hints.only;
    let mut no_clone = false;
    if size > 0 && hints.try_clone && matches!(only, None | Some(Strategy::Reflink)) {
        match sys::fs::ficlone(dst, src) {
            Ok(()) => return Ok((Strategy::Reflink, false)),
            Err(e) if only.is_some() => return Err(e),
            Err(e) => no_clone = e.errno() == Errno::EOPNOTSUPP,
        }
    }
    let mut strategy = match only {
        Some(Strategy::ReadWrite) => Strategy::ReadWrite,
        _ => Strategy::CopyFileRange,
    };
    let extents = if hints.dense {
        if size > 0 {
            vec![(0, size)]
        } else {
            Vec::new()
        }
    } else {
        sys::fs::data_extents(src, size)?
    };
    // Where the copied bytes end, when they reach the last extent's end.
    let mut tail = 0u64;
    for (start, end) in extents {
        let mut off = start;
        while off < end && strategy == Strategy::CopyFileRange {
            let want = usize::try_from(end - off)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            match sys::fs::copy_file_range(src, off, dst, off, want) {
                Ok(0) => break,
                Ok(n) => off += n as u64,
                Err(e)
                    if only.is_none()
                        && matches!(
                            e.errno(),
                            Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP
                        ) =>
                {
                    strategy = Strategy::ReadWrite
                }
                Err(e) => return Err(e),
            }
        }
        if off < end {
            off = read_write(src, dst, off, end)?;
        }
        tail = off;
    }
    // Trailing holes (and a source shorter than `size`) get their size
    // here; a copy that wrote up to `size` has it already.
    if tail != size {
        sys::fs::ftruncate(dst, size)?;
    }
    Ok((strategy, no_clone))
}

/// Makes copied data durable before the copy can appear (unless the mount
/// is `volatile`). A reflink copied nothing: the shared extents were
/// written back by the clone itself, and the filesystems that clone (xfs,
/// btrfs) commit the clone before the rename that shows the copy, so only
/// copied bytes need the sync.
pub fn sync_copy(upper: &Upper, out: BorrowedFd<'_>, how: Strategy) -> Result<()> {
    if upper.durable && how != Strategy::Reflink {
        sys::fs::fsync(out, true)?;
    }
    Ok(())
}

/// Copies every non-private xattr of `src` to `dst`.
pub fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Result<()> {
    for name in sys::xattr::list(src)? {
        if whiteout::is_private_xattr(&name) {
            continue;
        }
        if let Some(v) = sys::xattr::get(src, &name)? {
            match sys::xattr::set(dst, &name, &v, 0) {
                Ok(()) => {}
                // user.* on symlinks/devices, or a namespace the upper's
                // filesystem lacks: the kernel skips these as well.
                Err(e) if matches!(e.errno(), Errno::EPERM | Errno::EOPNOTSUPP) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Owner, xattrs, mode and times of `src` (stat `st`) onto `dst`, in the
/// order that keeps each: chown before the xattrs (chown drops
/// security.capability) and before the mode (it drops suid/sgid), times last.
pub fn copy_meta(
    src: BorrowedFd<'_>,
    st: &FileStat,
    dst: BorrowedFd<'_>,
    kind: Kind,
) -> Result<()> {
    match sys::fs::chown_fd(dst, Some(st.st_uid), Some(st.st_gid)) {
        Ok(()) => {}
        // An unprivileged daemon cannot give files away: the copy keeps
        // the daemon's owner (as fuse-overlayfs does without xattr_permissions).
        Err(e) if e.errno() == Errno::EPERM && !nix::unistd::geteuid().is_root() => {}
        Err(e) => return Err(e),
    }
    copy_xattrs(src, dst)?;
    if kind != Kind::Symlink {
        sys::fs::chmod_fd(dst, st.st_mode & 0o7777)?;
    }
    sys::fs::utimes_fd(
        dst,
        SetTime::At(st.st_atime, st.st_atime_nsec),
        SetTime::At(st.st_mtime, st.st_mtime_nsec),
    )
}

/// Builds a copy of the object behind O_PATH `src` (stat `st`) in the
/// workdir, recording union inode number `ino` on it; a regular file's data
/// comes from `data_src` (`src` itself, unless `src` is a metadata-only
/// copy). Returns its temp name and an O_PATH fd. Directories are copied
/// without their entries. `unsynced`: the copied data is not synced here
/// (the caller publishes the copy only after a sync: `publish.rs`).
pub fn stage(
    upper: &Upper,
    src: &OwnedFd,
    data_src: &OwnedFd,
    st: &FileStat,
    data: CopyUpData,
    ino: u64,
    unsynced: bool,
) -> Result<(OsString, OwnedFd)> {
    let how = if unsynced {
        Publish::Later(None)
    } else {
        Publish::Synced
    };
    stage_as(upper, src, data_src, st, data, ino, how).map(|s| (s.tmp, s.fd))
}

/// When a staged copy may take its name (`stage_as`).
#[derive(Debug, Clone, Copy)]
pub enum Publish<'a> {
    /// Its data is synced here (durable mounts), so it may at once.
    Synced,
    /// After a sync made by the caller (`publish.rs`); with a path, the
    /// copy is marked pending for that upper path
    /// (`Upper::set_pending`), so a killed daemon's successor publishes it.
    Later(Option<&'a Path>),
}

/// A staged copy (`stage_as`).
#[derive(Debug)]
pub struct Staged {
    /// Its name in the workdir.
    pub tmp: OsString,
    /// An O_PATH fd of it.
    pub fd: OwnedFd,
    /// For a regular file: whether a listing of the copy, made after
    /// everything was set on it, showed visible (non-private) xattrs. It
    /// began in xattr generation `xattr_generation` of the caller's
    /// choosing (read before the call), so the caller may record it on
    /// the copy's backing object (`Backing::note_xattrs`): the kernel asks
    /// for `security.capability` before the first write.
    pub visible_xattrs: Option<bool>,
}

/// `stage`, saying when the copy may be published; returns what it learnt
/// of the copy's xattrs too.
#[allow(clippy::too_many_arguments)] // `stage`'s, and when to publish
pub fn stage_as(
    upper: &Upper,
    src: &OwnedFd,
    data_src: &OwnedFd,
    st: &FileStat,
    data: CopyUpData,
    ino: u64,
    publish: Publish<'_>,
) -> Result<Staged> {
    let kind = Kind::from_mode(st.st_mode);
    if kind == Kind::File {
        return stage_file(upper, src, data_src, st, data, ino, publish);
    }
    let tmp = upper.temp_name();
    let work = upper.work.as_fd();
    let made = (|| -> Result<OwnedFd> {
        match kind {
            Kind::Dir => sys::fs::mkdir_at(work, &tmp, 0o700)?,
            Kind::Symlink => {
                let target = sys::fs::readlink(src.as_fd())?;
                sys::fs::symlink_at(&target, work, &tmp)?;
            }
            Kind::File | Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                sys::fs::mknod_at(work, &tmp, st.st_mode, st.st_rdev)?
            }
        }
        let fd = sys::fs::open_path_at(work, &tmp)?;
        copy_meta(src.as_fd(), st, fd.as_fd(), kind)?;
        upper.record_ino(fd.as_fd(), ino)?;
        Ok(fd)
    })();
    match made {
        Ok(fd) => Ok(Staged {
            tmp,
            fd,
            visible_xattrs: None,
        }),
        Err(e) => {
            upper.discard(&tmp);
            Err(e)
        }
    }
}

/// `stage_as` of a regular file. The copy is an empty file the upper made
/// ahead (`Upper::staged_file`), filled and given its metadata through
/// the fds its data goes through (no `/proc/self/fd` path for them), and
/// listed once at the end (`Staged::visible_xattrs`).
fn stage_file(
    upper: &Upper,
    src: &OwnedFd,
    data_src: &OwnedFd,
    st: &FileStat,
    data: CopyUpData,
    ino: u64,
    publish: Publish<'_>,
) -> Result<Staged> {
    let (tmp, out) = upper.staged_file()?;
    let made = (|| -> Result<(OwnedFd, bool)> {
        let size = u64::try_from(st.st_size).unwrap_or(0);
        // `src` is the data's own object unless it is a metadata-only copy.
        let one_object = src.as_raw_fd() == data_src.as_raw_fd();
        let mut input = None;
        match data {
            CopyUpData::Meta => {
                sys::fs::ftruncate(out.as_fd(), size)?;
                upper.set_metacopy(out.as_fd())?;
            }
            CopyUpData::Sparse => {
                sys::fs::ftruncate(out.as_fd(), size)?;
                upper.set_partial(out.as_fd(), size, &crate::sparse::boot_id())?;
            }
            CopyUpData::Full => {
                let i = sys::fs::reopen(data_src.as_fd(), OFlag::O_RDONLY | OFlag::O_NOATIME)
                    .or_else(|_| sys::fs::reopen(data_src.as_fd(), OFlag::O_RDONLY))?;
                let hints = CopyHints {
                    only: upper.copy_strategy,
                    try_clone: upper.may_clone(),
                    dense: one_object
                        && u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512) >= size,
                };
                let (how, no_clone) = copy_data_hinted(i.as_fd(), out.as_fd(), size, hints)?;
                if no_clone {
                    upper.clone_refused();
                }
                if matches!(publish, Publish::Synced) {
                    sync_copy(upper, out.as_fd(), how)?;
                }
                input = Some(i);
            }
            CopyUpData::Empty => {}
        }
        match sys::fs::chown_fd(out.as_fd(), Some(st.st_uid), Some(st.st_gid)) {
            Ok(()) => {}
            // As in `copy_meta`: an unprivileged daemon keeps its owner.
            Err(e) if e.errno() == Errno::EPERM && !nix::unistd::geteuid().is_root() => {}
            Err(e) => return Err(e),
        }
        // The xattrs of `src`, read through the open source where that
        // is the same object.
        let names = match (&input, one_object) {
            (Some(i), true) => sys::fdxattr::list(i.as_fd())?,
            _ => sys::xattr::list(src.as_fd())?,
        };
        for name in names {
            if whiteout::is_private_xattr(&name) {
                continue;
            }
            let value = match (&input, one_object) {
                (Some(i), true) => sys::fdxattr::get(i.as_fd(), &name)?,
                _ => sys::xattr::get(src.as_fd(), &name)?,
            };
            if let Some(v) = value {
                match sys::fdxattr::set(out.as_fd(), &name, &v, 0) {
                    Ok(()) => {}
                    // As in `copy_xattrs`.
                    Err(e) if matches!(e.errno(), Errno::EPERM | Errno::EOPNOTSUPP) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        sys::fs::chmod_fd(out.as_fd(), st.st_mode & 0o7777)?;
        sys::fs::utimes_fd(
            out.as_fd(),
            SetTime::At(st.st_atime, st.st_atime_nsec),
            SetTime::At(st.st_mtime, st.st_mtime_nsec),
        )?;
        upper.record_ino_open(out.as_fd(), ino)?;
        if let Publish::Later(Some(target)) = publish {
            upper.set_pending_open(out.as_fd(), target)?;
        }
        // Last, so the listing sees everything set on the copy (a security
        // module's label too).
        let visible = sys::fdxattr::list(out.as_fd())?
            .iter()
            .any(|n| !whiteout::is_private_xattr(n));
        Ok((sys::fs::open_path_at(upper.work.as_fd(), &tmp)?, visible))
    })();
    match made {
        Ok((fd, visible)) => Ok(Staged {
            tmp,
            fd,
            visible_xattrs: Some(visible),
        }),
        Err(e) => {
            upper.discard(&tmp);
            Err(e)
        }
    }
}
