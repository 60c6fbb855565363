//! File operations of the read path: open, read, lseek, release.

use std::os::fd::AsFd;

use nix::fcntl::OFlag;
use nix::unistd::Whence;

use super::UnionFs;
use crate::branch::BranchMode;
use crate::error::{Error, Result};
use crate::handle::{Fh, FileHandle, Handle};
use crate::inode::{Ino, Kind};
use crate::sys;

/// How the kernel may cache an opened file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    /// The data cannot change behind the kernel's back (a lower file): keep
    /// the page cache across opens.
    Keep,
    /// Revalidate on open.
    Revalidate,
}

/// Flags the union passes through to the backing open.
fn passthrough_flags(flags: i32) -> OFlag {
    let f = OFlag::from_bits_truncate(flags);
    (f & (OFlag::O_NOATIME | OFlag::O_DIRECT | OFlag::O_NONBLOCK)) | OFlag::O_RDONLY
}

impl UnionFs {
    /// Opens `ino` with open(2) `flags`.
    pub fn open(&self, ino: Ino, flags: i32) -> Result<(Fh, CachePolicy)> {
        let node = self.inodes.get(ino)?;
        if node.kind == Kind::Dir {
            return Err(Error::IsDir);
        }
        let acc = flags & libc::O_ACCMODE;
        if acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            // Writing needs the write path (copy-up); until then the union is
            // read-only to open(2).
            return Err(Error::ReadOnly);
        }
        let state = node.snapshot();
        let top = state.top()?;
        let fd = sys::fs::reopen(top.fd.as_fd(), passthrough_flags(flags))?;
        let policy = match self.stack.get(top.branch).map(|b| b.mode) {
            Some(BranchMode::ReadOnly) => CachePolicy::Keep,
            _ => CachePolicy::Revalidate,
        };
        let fh = self.handles.insert(Handle::File(FileHandle {
            ino,
            branch: top.branch,
            fd,
        }));
        Ok((fh, policy))
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&self, fh: Fh, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.handles.file(fh)?;
        let Handle::File(f) = &*h else {
            return Err(Error::IsDir);
        };
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        // Short reads happen only at EOF for regular files; keep reading
        // otherwise so the kernel gets what it asked for.
        while done < buf.len() {
            let n = sys::fs::pread(f.fd.as_fd(), &mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// `lseek` on an open file (SEEK_DATA / SEEK_HOLE included).
    pub fn lseek(&self, fh: Fh, offset: i64, whence: i32) -> Result<i64> {
        let h = self.handles.file(fh)?;
        let Handle::File(f) = &*h else {
            return Err(Error::IsDir);
        };
        let whence = match whence {
            libc::SEEK_SET => Whence::SeekSet,
            libc::SEEK_CUR => Whence::SeekCur,
            libc::SEEK_END => Whence::SeekEnd,
            libc::SEEK_DATA => Whence::SeekData,
            libc::SEEK_HOLE => Whence::SeekHole,
            _ => return Err(Error::Invalid),
        };
        sys::fs::lseek(f.fd.as_fd(), offset, whence)
    }

    /// Closes a file handle.
    pub fn release(&self, fh: Fh) {
        self.handles.remove(fh);
    }
}
