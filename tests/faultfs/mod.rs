//! faultfs: a read-only FUSE file system that serves a directory tree and
//! fails the requests it is told to fail — a lower branch that goes bad on
//! command, for the failing-branch tests (`tests/failing_branches.rs`;
//! `examples/faultfs.rs` runs it stand-alone).
//!
//! A fault is `(FaultOp, name)`: every `FaultOp` request about an object
//! whose file name is `name` (any directory) fails with the fault's errno.
//! Faults can be added and removed while mounted ([`Faults`]). Every
//! request is counted per op ([`Faults::hits`]), so a test can show the
//! union asked many times while logging once.
//!
//! Nothing is cached by the kernel (entries and attributes have TTL 0,
//! files are opened with direct I/O), so a fault added later is met by the
//! next request. Invariant: the node table maps a FUSE node id (the source
//! object's st_ino; the root is 1) to the source path it was looked up by.
//! Locks: the node table's `RwLock` and the fault list's `Mutex`, each held
//! for a map operation only, never across a syscall on the source.

#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};

/// Requests a fault can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOp {
    Lookup,
    Getattr,
    Open,
    Read,
    Readdir,
    Getxattr,
    Listxattr,
}

/// The faults in force, and the requests seen.
#[derive(Debug, Default)]
pub struct Faults {
    list: Mutex<Vec<(FaultOp, OsString, i32)>>,
    hits: Mutex<HashMap<(FaultOp, OsString), u64>>,
}

impl Faults {
    /// Fails `op` on objects named `name` with `errno` from now on.
    pub fn add(&self, op: FaultOp, name: &str, errno: i32) {
        self.list
            .lock()
            .unwrap()
            .push((op, OsString::from(name), errno));
    }

    /// Stops failing `op` on `name`.
    pub fn remove(&self, op: FaultOp, name: &str) {
        self.list
            .lock()
            .unwrap()
            .retain(|(o, n, _)| !(*o == op && n == name));
    }

    /// How many `op` requests about objects named `name` arrived.
    pub fn hits(&self, op: FaultOp, name: &str) -> u64 {
        self.hits
            .lock()
            .unwrap()
            .get(&(op, OsString::from(name)))
            .copied()
            .unwrap_or(0)
    }

    /// Counts the request; returns the errno to fail it with, if any.
    fn check(&self, op: FaultOp, path: &Path) -> Option<i32> {
        let name = path.file_name().unwrap_or_default().to_os_string();
        *self
            .hits
            .lock()
            .unwrap()
            .entry((op, name.clone()))
            .or_default() += 1;
        self.list
            .lock()
            .unwrap()
            .iter()
            .find(|(o, n, _)| *o == op && *n == name)
            .map(|(_, _, e)| *e)
    }
}

pub struct FaultFs {
    root: PathBuf,
    root_ino: u64,
    nodes: RwLock<HashMap<u64, PathBuf>>,
    open: RwLock<HashMap<u64, Arc<File>>>,
    next_fh: AtomicU64,
    faults: Arc<Faults>,
}

fn kind_of(ft: std::fs::FileType) -> FileType {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_fifo() {
        FileType::NamedPipe
    } else if ft.is_socket() {
        FileType::Socket
    } else if ft.is_char_device() {
        FileType::CharDevice
    } else if ft.is_block_device() {
        FileType::BlockDevice
    } else {
        FileType::RegularFile
    }
}

fn time(s: i64, ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl FaultFs {
    pub fn new(root: &Path, faults: Arc<Faults>) -> std::io::Result<FaultFs> {
        let m = std::fs::symlink_metadata(root)?;
        let mut nodes = HashMap::new();
        nodes.insert(1, root.to_path_buf());
        Ok(FaultFs {
            root: root.to_path_buf(),
            root_ino: m.ino(),
            nodes: RwLock::new(nodes),
            open: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            faults,
        })
    }

    fn node_id(&self, m: &std::fs::Metadata) -> u64 {
        if m.ino() == self.root_ino {
            1
        } else {
            m.ino()
        }
    }

    fn attr(&self, m: &std::fs::Metadata) -> FileAttr {
        FileAttr {
            ino: INodeNo(self.node_id(m)),
            size: m.size(),
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: time(m.ctime(), m.ctime_nsec()),
            kind: kind_of(m.file_type()),
            perm: (m.mode() & 0o7777) as u16,
            nlink: u32::try_from(m.nlink()).unwrap_or(u32::MAX),
            uid: m.uid(),
            gid: m.gid(),
            rdev: u32::try_from(m.rdev()).unwrap_or(0),
            blksize: 4096,
            flags: 0,
        }
    }

    fn path(&self, i: INodeNo) -> Result<PathBuf, Errno> {
        self.nodes
            .read()
            .unwrap()
            .get(&i.0)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    /// The path of node `i`, unless `op` is to fail on it.
    fn checked(&self, op: FaultOp, i: INodeNo) -> Result<PathBuf, Errno> {
        let p = self.path(i)?;
        match self.faults.check(op, &p) {
            Some(e) => Err(Errno::from_i32(e)),
            None => Ok(p),
        }
    }
}

const TTL: Duration = Duration::ZERO;

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let p = match self.path(parent) {
            Ok(p) => p.join(name),
            Err(e) => return reply.error(e),
        };
        if let Some(e) = self.faults.check(FaultOp::Lookup, &p) {
            return reply.error(Errno::from_i32(e));
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) => {
                self.nodes.write().unwrap().insert(self.node_id(&m), p);
                reply.entry(&TTL, &self.attr(&m), Generation(0))
            }
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, i: INodeNo, _h: Option<FileHandle>, reply: ReplyAttr) {
        match self
            .checked(FaultOp::Getattr, i)
            .and_then(|p| std::fs::symlink_metadata(p).map_err(|e| io_errno(&e)))
        {
            Ok(m) => reply.attr(&TTL, &self.attr(&m)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        match self
            .path(i)
            .and_then(|p| std::fs::read_link(p).map_err(|e| io_errno(&e)))
        {
            Ok(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self
            .checked(FaultOp::Open, i)
            .and_then(|p| File::open(p).map_err(|e| io_errno(&e)))
        {
            Ok(f) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.open.write().unwrap().insert(fh, Arc::new(f));
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        i: INodeNo,
        h: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if let Err(e) = self.checked(FaultOp::Read, i) {
            return reply.error(e);
        }
        let Some(f) = self.open.read().unwrap().get(&h.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        match f.read_at(&mut buf, offset) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _i: INodeNo,
        h: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.open.write().unwrap().remove(&h.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        i: INodeNo,
        _h: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let p = match self.checked(FaultOp::Readdir, i) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let rd = match std::fs::read_dir(&p) {
            Ok(rd) => rd,
            Err(e) => return reply.error(io_errno(&e)),
        };
        let mut entries: Vec<(u64, FileType, OsString)> = vec![
            (i.0, FileType::Directory, ".".into()),
            (1, FileType::Directory, "..".into()),
        ];
        for e in rd.flatten() {
            if let Ok(m) = e.metadata() {
                entries.push((self.node_id(&m), kind_of(m.file_type()), e.file_name()));
            }
        }
        for (k, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (k + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _i: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 20, 1 << 19, 1 << 19, 1 << 16, 1 << 15, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, _n: &OsStr, _s: u32, reply: ReplyXattr) {
        match self.checked(FaultOp::Getxattr, i) {
            Ok(_) => reply.error(Errno::ENODATA),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        match self.checked(FaultOp::Listxattr, i) {
            Ok(_) if size == 0 => reply.size(0),
            Ok(_) => reply.data(&[]),
            Err(e) => reply.error(e),
        }
    }
}

/// Mounts faultfs over `source` at `mnt` in this process (serving on a
/// background thread); dropping the session unmounts it. Root may use it
/// (`allow_other`), which the union daemon needs.
pub fn spawn(
    source: &Path,
    mnt: &Path,
    faults: Arc<Faults>,
) -> std::io::Result<fuser::BackgroundSession> {
    let mut conf = fuser::Config::default();
    conf.mount_options = vec![
        fuser::MountOption::FSName("faultfs".into()),
        fuser::MountOption::RO,
    ];
    conf.acl = fuser::SessionACL::All;
    fuser::spawn_mount(FaultFs::new(source, faults)?, mnt, &conf)
}
