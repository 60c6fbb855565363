//! Copy-up: building a copy of a lower object in the workdir.
//!
//! Invariant: a staged copy is complete (data, owner, xattrs, mode, times,
//! recorded inode number) before anyone can see it; the caller moves it
//! into the upper with one rename. Data is shared by reflink where the
//! filesystem can, else copied with `copy_file_range` over the data
//! extents only (holes stay holes), else read and written.
//! Takes no locks (callers serialise copy-ups of one object).

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::FileStat;
use nix::unistd::Whence;

use crate::error::{Error, Result};
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

fn read_write(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, mut off: u64, end: u64) -> Result<()> {
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
    Ok(())
}

/// The data extents of `fd` as (start, end) pairs, via SEEK_DATA/SEEK_HOLE
/// (one extent covering everything where the filesystem cannot tell).
pub fn data_extents(fd: BorrowedFd<'_>, size: u64) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut off = 0u64;
    let size_i = i64::try_from(size).map_err(|_| Error::Invalid)?;
    while off < size {
        let o = i64::try_from(off).map_err(|_| Error::Invalid)?;
        let data = match sys::fs::lseek(fd, o, Whence::SeekData) {
            Ok(d) => d,
            Err(e) if e.errno() == Errno::ENXIO => break,
            Err(e) if e.errno() == Errno::EINVAL => {
                out.push((off, size));
                break;
            }
            Err(e) => return Err(e),
        };
        let hole = sys::fs::lseek(fd, data, Whence::SeekHole)
            .unwrap_or(size_i)
            .min(size_i);
        let (d, h) = (data.unsigned_abs(), hole.unsigned_abs());
        if h <= d {
            break;
        }
        out.push((d, h));
        off = h;
    }
    Ok(out)
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
    if size > 0 && matches!(only, None | Some(Strategy::Reflink)) {
        match sys::fs::ficlone(dst, src) {
            Ok(()) => return Ok(Strategy::Reflink),
            Err(e) if only.is_some() => return Err(e),
            Err(_) => {}
        }
    }
    let mut strategy = match only {
        Some(Strategy::ReadWrite) => Strategy::ReadWrite,
        _ => Strategy::CopyFileRange,
    };
    for (start, end) in data_extents(src, size)? {
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
            read_write(src, dst, off, end)?;
        }
    }
    // Trailing holes (and empty files) get their size here.
    sys::fs::ftruncate(dst, size)?;
    Ok(strategy)
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
    let kind = Kind::from_mode(st.st_mode);
    let tmp = upper.temp_name();
    let work = upper.work.as_fd();
    let made = (|| -> Result<OwnedFd> {
        match kind {
            Kind::Dir => sys::fs::mkdir_at(work, &tmp, 0o700)?,
            Kind::File => {
                let out = sys::fs::create_at(work, &tmp, OFlag::O_WRONLY, 0o600)?;
                if data == CopyUpData::Meta {
                    sys::fs::ftruncate(out.as_fd(), u64::try_from(st.st_size).unwrap_or(0))?;
                    upper.set_metacopy(out.as_fd())?;
                } else if data == CopyUpData::Sparse {
                    let size = u64::try_from(st.st_size).unwrap_or(0);
                    sys::fs::ftruncate(out.as_fd(), size)?;
                    upper.set_partial(out.as_fd(), size, &crate::sparse::boot_id())?;
                } else if data == CopyUpData::Full {
                    let size = u64::try_from(st.st_size).unwrap_or(0);
                    let input =
                        sys::fs::reopen(data_src.as_fd(), OFlag::O_RDONLY | OFlag::O_NOATIME)
                            .or_else(|_| sys::fs::reopen(data_src.as_fd(), OFlag::O_RDONLY))?;
                    let how =
                        copy_data_with(input.as_fd(), out.as_fd(), size, upper.copy_strategy)?;
                    if !unsynced {
                        sync_copy(upper, out.as_fd(), how)?;
                    }
                }
            }
            Kind::Symlink => {
                let target = sys::fs::readlink(src.as_fd())?;
                sys::fs::symlink_at(&target, work, &tmp)?;
            }
            Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                sys::fs::mknod_at(work, &tmp, st.st_mode, st.st_rdev)?
            }
        }
        let fd = sys::fs::open_path_at(work, &tmp)?;
        copy_meta(src.as_fd(), st, fd.as_fd(), kind)?;
        upper.record_ino(fd.as_fd(), ino)?;
        Ok(fd)
    })();
    match made {
        Ok(fd) => Ok((tmp, fd)),
        Err(e) => {
            upper.discard(&tmp);
            Err(e)
        }
    }
}
