//! floorfs: the FUSE floor of the benchmarks.
//!
//! A file system that answers every metadata request from memory — no
//! branches, no whiteouts, no xattrs, no syscall — over the same fuser, the
//! same kernel settings (TTLs, negative entries, readdirplus, no-opendir
//! with the kernel's directory cache, FLUSH off, passthrough for file data)
//! and the same transports as unionfs. Whatever a workload costs on it is
//! what the FUSE protocol and this machine's round trips cost; the
//! difference to unionfs is unionfs's own work. `scripts/bench-peers.sh`
//! runs it as the "FUSE floor" column. It is a measuring instrument, not a
//! file system to keep data in: created files live in unnamed tmpfs files
//! and are gone at unmount.
//!
//! `floorfs SOURCE MOUNTPOINT [DATADIR] [uring] [spin=USEC]`: mirrors the metadata of the tree at
//! SOURCE (read once at start; file data is read from SOURCE through
//! passthrough, so SOURCE's files must not change) and serves it until
//! unmounted. Mirrored files are read-only (EROFS when opened for writing);
//! anything created in the mount is writable, its data in unnamed files in
//! DATADIR (default /dev/shm; give a directory on the file system a union's
//! upper would be on, to compare like for like). Needs root (passthrough).
//!
//! Invariant: a node lives as long as the mount (FORGET is ignored), so an
//! inode number is never reused. Locks: one `RwLock` over the node table,
//! held for the table work of one request only (never across a syscall
//! except `fstat` of a created file's tmpfs data).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use parking_lot::RwLock;

/// As unionfs's default: the kernel may cache names and attributes a day.
const TTL: Duration = Duration::from_secs(86_400);

/// Where a regular file's data is.
#[derive(Clone)]
enum Data {
    /// The mirrored source file (opened per open, read-only).
    Source(PathBuf),
    /// An unnamed tmpfs file, for files created in the mount.
    Tmp(Arc<File>),
}

struct Node {
    attr: FileAttr,
    /// Symlink target.
    target: Option<OsString>,
    data: Option<Data>,
    /// Directories: entries by cookie (the readdir offset), and cookies by
    /// name; cookies only grow, so an offset stays valid across changes.
    entries: BTreeMap<u64, (OsString, u64)>,
    names: HashMap<OsString, u64>,
    next_cookie: u64,
}

impl Node {
    fn new(attr: FileAttr) -> Self {
        Node {
            attr,
            target: None,
            data: None,
            entries: BTreeMap::new(),
            names: HashMap::new(),
            next_cookie: 1,
        }
    }

    fn add(&mut self, name: OsString, ino: u64) {
        let c = self.next_cookie;
        self.next_cookie += 1;
        self.names.insert(name.clone(), c);
        self.entries.insert(c, (name, ino));
    }

    fn remove(&mut self, name: &OsStr) -> Option<u64> {
        let c = self.names.remove(name)?;
        self.entries.remove(&c).map(|(_, ino)| ino)
    }

    fn child(&self, name: &OsStr) -> Option<u64> {
        let c = self.names.get(name)?;
        self.entries.get(c).map(|(_, ino)| *ino)
    }
}

enum Handle {
    /// READ/WRITE come to the daemon, for this file.
    Daemon(Arc<File>),
    /// The kernel reads and writes the backing file of this node itself.
    Passthrough(u64),
}

struct FloorFs {
    nodes: RwLock<HashMap<u64, Node>>,
    next_ino: AtomicU64,
    /// Open handles: the file for READ/WRITE when the kernel refuses
    /// passthrough, else its backing id, which must stay registered until
    /// RELEASE (the kernel takes it up after the reply, in the opener).
    open: RwLock<HashMap<u64, Handle>>,
    /// One backing id per node with passthrough handles (the kernel takes
    /// one backing file per inode), with the number of those handles.
    backings: parking_lot::Mutex<HashMap<u64, (Arc<BackingId>, usize)>>,
    next_fh: AtomicU64,
    /// A tmpfs directory for the data of created files.
    tmp_dir: PathBuf,
    uring: bool,
    /// The source root's metadata, the filler of negative entries.
    root_meta: std::fs::Metadata,
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

fn kind_of_mode(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let d = Duration::new(secs.unsigned_abs(), u32::try_from(nsecs).unwrap_or(0));
    if secs >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

fn attr_of(ino: u64, m: &std::fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
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
        blksize: u32::try_from(m.blksize()).unwrap_or(4096),
        flags: 0,
    }
}

fn set_time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::Now => SystemTime::now(),
        TimeOrNow::SpecificTime(t) => t,
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl FloorFs {
    /// Mirrors the tree at `source` (one file system; hard links stay
    /// links). Node ids are the source's inode numbers, so `st_ino` is
    /// what a tool saw on the source (git's index compares it); the root
    /// is node 1, and created objects are numbered above the largest.
    fn mirror(source: &Path, tmp_dir: PathBuf, uring: bool) -> std::io::Result<Self> {
        let mut nodes = HashMap::new();
        let root_meta = std::fs::symlink_metadata(source)?;
        nodes.insert(1, Node::new(attr_of(1, &root_meta)));
        let mut max = 1u64;
        let mut stack = vec![(source.to_path_buf(), 1u64)];
        while let Some((dir, dino)) = stack.pop() {
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                let path = e.path();
                let m = std::fs::symlink_metadata(&path)?;
                if m.dev() != root_meta.dev() || m.ino() <= 1 || m.ino() == root_meta.ino() {
                    return Err(std::io::Error::other(format!(
                        "{}: another file system, or an inode number floorfs cannot use",
                        path.display()
                    )));
                }
                let ino = m.ino();
                max = max.max(ino);
                if let std::collections::hash_map::Entry::Vacant(v) = nodes.entry(ino) {
                    let mut n = Node::new(attr_of(ino, &m));
                    if m.file_type().is_symlink() {
                        n.target = Some(std::fs::read_link(&path)?.into_os_string());
                    } else if m.is_file() {
                        n.data = Some(Data::Source(path.clone()));
                    } else if m.is_dir() {
                        stack.push((path.clone(), ino));
                    }
                    v.insert(n);
                }
                if let Some(d) = nodes.get_mut(&dino) {
                    d.add(e.file_name(), ino);
                }
            }
        }
        let next = max + 1;
        Ok(FloorFs {
            nodes: RwLock::new(nodes),
            next_ino: AtomicU64::new(next),
            open: RwLock::new(HashMap::new()),
            backings: parking_lot::Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            tmp_dir,
            uring,
            root_meta,
        })
    }

    /// The attributes of node `ino`, with a created file's size and blocks
    /// from its tmpfs data (passthrough writes never reach this daemon).
    fn attr(&self, n: &Node) -> FileAttr {
        let mut a = n.attr;
        if let Some(Data::Tmp(f)) = &n.data {
            if let Ok(m) = f.metadata() {
                a.size = m.size();
                a.blocks = m.blocks();
            }
        }
        a
    }

    fn new_ino(&self) -> u64 {
        self.next_ino.fetch_add(1, Ordering::Relaxed)
    }

    fn new_attr(&self, req: &Request, kind: FileType, perm: u32, rdev: u32) -> FileAttr {
        let now = SystemTime::now();
        FileAttr {
            ino: INodeNo(self.new_ino()),
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm: (perm & 0o7777) as u16,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: req.uid(),
            gid: req.gid(),
            rdev,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Links the new node `n` into `parent` as `name`.
    fn insert(&self, parent: INodeNo, name: &OsStr, n: Node) -> Result<FileAttr, Errno> {
        let mut nodes = self.nodes.write();
        let p = nodes.get_mut(&parent.0).ok_or(Errno::ENOENT)?;
        if p.attr.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if p.child(name).is_some() {
            return Err(Errno::EEXIST);
        }
        let ino = n.attr.ino.0;
        p.add(name.to_os_string(), ino);
        let now = SystemTime::now();
        p.attr.mtime = now;
        p.attr.ctime = now;
        if n.attr.kind == FileType::Directory {
            p.attr.nlink += 1;
        }
        let a = self.attr(&n);
        nodes.insert(ino, n);
        Ok(a)
    }

    /// Unlinks `parent/name`; `dir` says which kind rmdir/unlink expects.
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut nodes = self.nodes.write();
        let ino = nodes
            .get(&parent.0)
            .and_then(|p| p.child(name))
            .ok_or(Errno::ENOENT)?;
        let n = nodes.get(&ino).ok_or(Errno::ENOENT)?;
        match (n.attr.kind == FileType::Directory, dir) {
            (true, false) => return Err(Errno::EISDIR),
            (false, true) => return Err(Errno::ENOTDIR),
            (true, true) if !n.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        if let Some(n) = nodes.get_mut(&ino) {
            n.attr.nlink = n.attr.nlink.saturating_sub(if dir { 2 } else { 1 });
            n.attr.ctime = SystemTime::now();
        }
        if let Some(p) = nodes.get_mut(&parent.0) {
            p.remove(name);
            p.attr.mtime = SystemTime::now();
            if dir {
                p.attr.nlink -= 1;
            }
        }
        Ok(())
    }

    /// A new handle of node `ino` opened as `file`: passthrough with the
    /// node's backing id (made by `register` for the first handle), or,
    /// when the kernel refuses it, READ/WRITE through the daemon.
    fn new_handle(
        &self,
        ino: u64,
        file: File,
        register: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<BackingId>,
    ) -> (u64, Option<Arc<BackingId>>) {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut backings = self.backings.lock();
        let backing = match backings.get_mut(&ino) {
            Some((b, n)) => {
                *n += 1;
                Some(Arc::clone(b))
            }
            None => register(file.as_fd()).ok().map(|b| {
                let b = Arc::new(b);
                backings.insert(ino, (Arc::clone(&b), 1));
                b
            }),
        };
        drop(backings);
        let h = match &backing {
            Some(_) => Handle::Passthrough(ino),
            None => Handle::Daemon(Arc::new(file)),
        };
        self.open.write().insert(fh, h);
        (fh, backing)
    }

    fn reopen(f: &File) -> std::io::Result<File> {
        f.try_clone()
    }
}

impl Filesystem for FloorFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_PASSTHROUGH,
        ] {
            let _ = config.add_capabilities(cap);
        }
        let _ = config.set_max_stack_depth(1);
        let _ = config.set_max_readahead(1 << 20);
        if self.uring {
            let _ = config.set_max_write(1 << 20);
            config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .map_err(|_| std::io::Error::other("no FUSE over io_uring"))?;
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let nodes = self.nodes.read();
        let found = nodes
            .get(&parent.0)
            .and_then(|p| p.child(name))
            .and_then(|i| nodes.get(&i));
        match found {
            Some(n) => reply.entry(&TTL, &self.attr(n), Generation(0)),
            None => {
                // A negative entry the kernel may cache, as unionfs answers
                // (only its node id 0 matters).
                let mut a = attr_of(0, &self.root_meta);
                a.ino = INodeNo(0);
                reply.entry_with_ttls(&Duration::ZERO, &TTL, &a, Generation(0))
            }
        }
    }

    fn getattr(&self, _req: &Request, i: INodeNo, _h: Option<FileHandle>, reply: ReplyAttr) {
        match self.nodes.read().get(&i.0) {
            Some(n) => reply.attr(&TTL, &self.attr(n)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        match self.nodes.read().get(&i.0).and_then(|n| n.target.clone()) {
            Some(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
            None => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let data = self.nodes.read().get(&i.0).and_then(|n| n.data.clone());
        let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let file = match data {
            Some(Data::Source(_)) if writing || flags.0 & libc::O_TRUNC != 0 => {
                return reply.error(Errno::EROFS)
            }
            Some(Data::Source(p)) => File::open(p),
            Some(Data::Tmp(f)) => {
                if flags.0 & libc::O_TRUNC != 0 {
                    let _ = f.set_len(0);
                }
                Self::reopen(&f)
            }
            None => return reply.error(Errno::EISDIR),
        };
        let file = match file {
            Ok(f) => f,
            Err(e) => return reply.error(io_errno(&e)),
        };
        match self.new_handle(i.0, file, |fd| reply.open_backing(fd)) {
            (fh, Some(b)) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b),
            (fh, None) => reply.opened(FileHandle(fh), FopenFlags::empty()),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _i: INodeNo,
        h: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let f = match self.open.read().get(&h.0) {
            Some(Handle::Daemon(f)) => Arc::clone(f),
            _ => return reply.error(Errno::EBADF),
        };
        let mut buf = vec![0u8; size as usize];
        match f.read_at(&mut buf, offset) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _i: INodeNo,
        h: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let f = match self.open.read().get(&h.0) {
            Some(Handle::Daemon(f)) => Arc::clone(f),
            _ => return reply.error(Errno::EBADF),
        };
        match f.write_at(data, offset) {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn flush(&self, _: &Request, _: INodeNo, _: FileHandle, _: LockOwner, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _i: INodeNo,
        h: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(Handle::Passthrough(ino)) = self.open.write().remove(&h.0) {
            let mut backings = self.backings.lock();
            if let Some((_, n)) = backings.get_mut(&ino) {
                *n -= 1;
                if *n == 0 {
                    backings.remove(&ino);
                }
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        i: INodeNo,
        _h: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let nodes = self.nodes.read();
        let Some(d) = nodes.get(&i.0) else {
            return reply.error(Errno::ENOENT);
        };
        for (c, (name, ino)) in d.entries.range(offset + 1..) {
            let kind = nodes
                .get(ino)
                .map_or(FileType::RegularFile, |n| n.attr.kind);
            if reply.add(INodeNo(*ino), *c, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        i: INodeNo,
        _h: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let nodes = self.nodes.read();
        let Some(d) = nodes.get(&i.0) else {
            return reply.error(Errno::ENOENT);
        };
        for (c, (name, ino)) in d.entries.range(offset + 1..) {
            let Some(n) = nodes.get(ino) else { continue };
            if reply.add(INodeNo(*ino), *c, name, &TTL, &self.attr(n), Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _i: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, _i: INodeNo, _n: &OsStr, _s: u32, reply: ReplyXattr) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _i: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _h: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut nodes = self.nodes.write();
        let Some(n) = nodes.get_mut(&i.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(s) = size {
            match &n.data {
                Some(Data::Tmp(f)) => {
                    if let Err(e) = f.set_len(s) {
                        return reply.error(io_errno(&e));
                    }
                }
                Some(Data::Source(_)) => return reply.error(Errno::EROFS),
                None => return reply.error(Errno::EISDIR),
            }
        }
        if let Some(m) = mode {
            n.attr.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            n.attr.uid = u;
        }
        if let Some(g) = gid {
            n.attr.gid = g;
        }
        if let Some(t) = atime {
            n.attr.atime = set_time(t);
        }
        if let Some(t) = mtime {
            n.attr.mtime = set_time(t);
        }
        n.attr.ctime = SystemTime::now();
        reply.attr(&TTL, &self.attr(n));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let n = Node::new(self.new_attr(req, kind_of_mode(mode), mode & !umask, rdev));
        match self.insert(parent, name, n) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let n = Node::new(self.new_attr(req, FileType::Directory, mode & !umask, 0));
        match self.insert(parent, name, n) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let mut n = Node::new(self.new_attr(req, FileType::Symlink, 0o777, 0));
        n.attr.size = target.as_os_str().len() as u64;
        n.target = Some(target.as_os_str().to_os_string());
        match self.insert(parent, link_name, n) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        i: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut nodes = self.nodes.write();
        if !nodes.contains_key(&i.0) {
            return reply.error(Errno::ENOENT);
        }
        let Some(p) = nodes.get_mut(&newparent.0) else {
            return reply.error(Errno::ENOENT);
        };
        if p.child(newname).is_some() {
            return reply.error(Errno::EEXIST);
        }
        p.add(newname.to_os_string(), i.0);
        match nodes.get_mut(&i.0) {
            Some(n) => {
                n.attr.nlink += 1;
                n.attr.ctime = SystemTime::now();
                reply.entry(&TTL, &self.attr(n), Generation(0))
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let mut nodes = self.nodes.write();
        let Some(ino) = nodes.get(&parent.0).and_then(|p| p.child(name)) else {
            return reply.error(Errno::ENOENT);
        };
        let is_dir = |nodes: &HashMap<u64, Node>, i: u64| {
            nodes
                .get(&i)
                .is_some_and(|n| n.attr.kind == FileType::Directory)
        };
        if let Some(old) = nodes.get(&newparent.0).and_then(|p| p.child(newname)) {
            if old == ino {
                return reply.ok();
            }
            let old_dir = is_dir(&nodes, old);
            if old_dir != is_dir(&nodes, ino) {
                return reply.error(if old_dir {
                    Errno::EISDIR
                } else {
                    Errno::ENOTDIR
                });
            }
            if old_dir && nodes.get(&old).is_some_and(|n| !n.entries.is_empty()) {
                return reply.error(Errno::ENOTEMPTY);
            }
            // The replaced object loses its name (a directory all its links).
            if let Some(n) = nodes.get_mut(&old) {
                n.attr.nlink = if old_dir {
                    0
                } else {
                    n.attr.nlink.saturating_sub(1)
                };
            }
            if let Some(p) = nodes.get_mut(&newparent.0) {
                p.remove(newname);
                if old_dir {
                    p.attr.nlink -= 1;
                }
            }
        }
        let moved_dir = is_dir(&nodes, ino);
        if let Some(p) = nodes.get_mut(&parent.0) {
            p.remove(name);
            if moved_dir {
                p.attr.nlink -= 1;
            }
        }
        if let Some(p) = nodes.get_mut(&newparent.0) {
            p.add(newname.to_os_string(), ino);
            if moved_dir {
                p.attr.nlink += 1;
            }
        }
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let file = match nix::fcntl::open(
            &self.tmp_dir,
            nix::fcntl::OFlag::O_TMPFILE | nix::fcntl::OFlag::O_RDWR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => File::from(fd),
            Err(e) => return reply.error(Errno::from_i32(e as i32)),
        };
        let data = Arc::new(file);
        let handle_file = match Self::reopen(&data) {
            Ok(f) => f,
            Err(e) => return reply.error(io_errno(&e)),
        };
        let mut n = Node::new(self.new_attr(req, FileType::RegularFile, mode & !umask, 0));
        n.data = Some(Data::Tmp(Arc::clone(&data)));
        let a = match self.insert(parent, name, n) {
            Ok(a) => a,
            Err(e) => return reply.error(e),
        };
        let file = handle_file;
        match self.new_handle(a.ino.0, file, |fd| reply.open_backing(fd)) {
            (fh, Some(b)) => reply.created_passthrough(
                &TTL,
                &a,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
                &b,
            ),
            (fh, None) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty())
            }
        }
    }

    fn fsync(&self, _: &Request, _: INodeNo, _: FileHandle, _: bool, reply: ReplyEmpty) {
        reply.ok();
    }
}

fn main() -> std::process::ExitCode {
    const USAGE: &str = "usage: floorfs SOURCE MOUNTPOINT [DATADIR] [uring] [spin=USEC]";
    let (mut uring, mut spin, mut paths) = (false, None, Vec::new());
    for a in std::env::args_os().skip(1) {
        match a.to_str() {
            Some("uring") => uring = true,
            Some(s) if s.starts_with("spin=") => match s["spin=".len()..].parse::<u64>() {
                Ok(us) => spin = Some(Duration::from_micros(us)).filter(|d| !d.is_zero()),
                Err(_) => {
                    eprintln!("{USAGE}");
                    return std::process::ExitCode::from(2);
                }
            },
            _ => paths.push(PathBuf::from(a)),
        }
    }
    let (source, mnt, tmp_dir) = match paths.as_slice() {
        [s, m] => (s.clone(), m.clone(), PathBuf::from("/dev/shm")),
        [s, m, d] => (s.clone(), m.clone(), d.clone()),
        _ => {
            eprintln!("{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let fs = match FloorFs::mirror(&source, tmp_dir, uring) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("floorfs: cannot read {}: {e}", source.display());
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut conf = Config::default();
    conf.mount_options = vec![
        MountOption::FSName("floorfs".into()),
        MountOption::DefaultPermissions,
    ];
    conf.acl = SessionACL::All;
    conf.n_threads = Some(std::thread::available_parallelism().map_or(2, |n| n.get()));
    conf.clone_fd = true;
    conf.uring_threads_per_queue = Some(2);
    conf.busy_poll = spin.map(fuser::BusyPoll::Fixed);
    if let Err(e) = fuser::mount(fs, &mnt, &conf) {
        eprintln!("floorfs: cannot serve {}: {e}", mnt.display());
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
