//! The FUSE adapter: the only module that speaks fuser. Each method
//! converts arguments, calls the core (`ops`), and replies.
//!
//! Invariant: no union logic lives here, and no request path can panic
//! (a panicking daemon hangs every process using the mount). The kernel's
//! per-inode I/O mode (passthrough or page cache) is FUSE business and is
//! mirrored in `iomode`, whose locks are its own; the adapter takes none.
//! So is the VFS's one retry of an open that failed with ESTALE, which
//! `reroute` uses to move a writer off a node pinned to a lower file.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

mod iomode;
pub mod rdplus;

use iomode::{Grant, IoModes};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle,
    FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

use crate::config::{Passthrough, Uring};
use crate::error::Error;
use crate::handle::Fh;
use crate::inode::{Ino, Kind};
use crate::ops::{Attr, Caller, Entry, NewObject, Opened, RenameHow, SetAttr, UnionFs};
use crate::sys::fs::SetTime;
use crate::udba::{Udba, Watcher};

/// Attribute invalidation through fuser's notification channel.
#[derive(Debug)]
pub struct KernelInvalidator(pub fuser::Notifier);

impl crate::ops::Invalidate for KernelInvalidator {
    fn attributes(&self, ino: Ino) {
        // A negative offset drops attributes only: no page locks are taken,
        // so this is safe from inside a request handler.
        let _ = self.0.inval_inode(INodeNo(ino.0), -1, 0);
    }

    fn entry(&self, parent: Ino, name: &OsStr) {
        // Expire, not drop: dropping a dentry detaches what is mounted on
        // or below it (a container's /proc, /dev on a union directory),
        // also for the events of the union's own writes, which change no
        // node. Expired, the entry is revalidated by a LOOKUP at its next
        // use and only dropped when the name now leads elsewhere.
        // ENOENT: the kernel had nothing cached there; nothing to do.
        let _ = self.0.expire_entry(INodeNo(parent.0), name);
    }

    fn inode(&self, ino: Ino) {
        // Offset 0, length 0: attributes and every cached page, which for
        // a directory is its cached listing.
        let _ = self.0.inval_inode(INodeNo(ino.0), 0, 0);
    }

    fn all_entries(&self) -> bool {
        self.0.inc_epoch().is_ok()
    }

    fn drop_entry_soon(&self, parent: Ino, name: &OsStr) {
        // The kernel takes the parent's inode lock for this, which a lookup
        // waiting for one of our event loops may hold: sent from a thread of
        // its own, so no event loop ever waits for it.
        let notifier = self.0.clone();
        let name = name.to_os_string();
        let sent = std::thread::Builder::new()
            .name("inval-entry".into())
            .spawn(move || {
                let _ = notifier.inval_entry(INodeNo(parent.0), &name);
            });
        if let Err(e) = sent {
            tracing::debug!("no thread to drop a kernel name: {e}");
        }
    }
}

/// Above this much page cache of a file, its copy-up open keeps the cache
/// (cached I/O) instead of switching to passthrough (which drops it).
const KEEP_CACHE_ABOVE: u64 = 64 << 20;

/// How long a writer waits for the RELEASE of a lower file's last
/// passthrough reader before it gets ETXTBSY.
const PIN_GRACE: Duration = Duration::from_millis(200);

/// Where `FuseAdapter::reroute` sends an open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Served by this node.
    Here,
    /// Answered ESTALE, to be retried through a fresh lookup.
    Stale,
    /// The retry of an ESTALE came back to this node: served by it.
    CameBack,
}

/// fuser's view of the union.
#[derive(Debug)]
pub struct FuseAdapter {
    fs: Arc<UnionFs>,
    ttl: Duration,
    /// Passthrough as asked for, and as the kernel agreed to at init.
    passthrough: Passthrough,
    /// Ask for FUSE over io_uring at init; `Uring::On` fails the mount
    /// when the kernel does not offer it.
    uring: Uring,
    io: IoModes<BackingId>,
    /// How changes made directly in a branch are noticed (`udba=`).
    udba: Udba,
    /// Under `udba=notify`: watches the directories the kernel looked up.
    watcher: Option<Arc<Watcher>>,
    /// Which listings carry their files' attributes (`readdirplus=`).
    habits: rdplus::Habits,
}

impl FuseAdapter {
    /// Wraps the core; `ttl` is how long the kernel may cache names and
    /// attributes; `passthrough` which files the kernel may read and write
    /// directly (needs root and kernel support, else off).
    pub fn new(fs: Arc<UnionFs>, ttl: Duration, passthrough: Passthrough) -> Self {
        FuseAdapter {
            fs,
            ttl,
            passthrough,
            uring: Uring::Off,
            io: IoModes::default(),
            udba: Udba::None,
            watcher: None,
            habits: rdplus::Habits::new(crate::config::ReaddirPlus::default()),
        }
    }

    /// Sets `readdirplus=` (see `rdplus`).
    pub fn with_readdirplus(mut self, mode: crate::config::ReaddirPlus) -> Self {
        self.habits = rdplus::Habits::new(mode);
        self
    }

    /// Sets `udba=`: under `reval` (give a TTL of 0 with it) directories
    /// are opened by the daemon, so the kernel caches no listing; under
    /// `notify`, `watcher` is told of every directory the kernel looks up
    /// and forgets.
    pub fn with_udba(mut self, udba: Udba, watcher: Option<Arc<Watcher>>) -> Self {
        self.udba = udba;
        self.watcher = watcher;
        self
    }

    /// Under `udba=notify`: the kernel now holds `e`; watch it if it is a
    /// directory.
    fn watch(&self, e: &Entry) {
        if let (Some(w), Kind::Dir) = (&self.watcher, e.attr.kind) {
            w.watch(e.node);
        }
    }

    /// Requests FUSE over io_uring (see [`Uring`]).
    pub fn with_uring(mut self, uring: Uring) -> Self {
        self.uring = uring;
        self
    }

    /// Chooses the kernel's I/O mode for a new handle, and whether a cached
    /// one keeps the page cache (returned in `keep_cache`); `register` makes
    /// a backing id of the handle's fd. On error the handle is closed again.
    fn grant(
        &self,
        i: u64,
        mut o: Opened,
        writing: bool,
        register: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<BackingId>,
    ) -> Result<(Opened, Grant<BackingId>), Error> {
        // A file the kernel caches a lot of, rightly (read through the page
        // cache, e.g. from below, and written only through it since), stays
        // on the page cache: passthrough would make the kernel drop it.
        let keep_big_cache = self.io.big_valid_cache(i, KEEP_CACHE_ABOVE);
        o.keep_cache |= keep_big_cache;
        // A retired node no reader pins to its lower file any more is
        // served through the page cache: its writers' writes come to the
        // daemon, whose core tells the object's current node of each one
        // (`UnionFs::changed_through`); through passthrough they would change the file unseen
        // while the other names' nodes keep their cached size. (Readers too:
        // a passthrough backing on the upper file would be shared by every
        // later writer of the node.) A node still pinned keeps its lower
        // backing for its readers, and its writers are moved (`reroute`).
        let retired = self.fs.is_retired(ino(INodeNo(i)));
        let want = !keep_big_cache
            && !retired
            && o.passthrough_ok
            && match self.passthrough {
                Passthrough::Off => false,
                Passthrough::Upper => o.on_upper,
                Passthrough::All => true,
            };
        let res = self.io.grant(i, o.fh.0, want, o.on_upper, writing, || {
            self.fs
                .with_fd(o.fh, register)
                .unwrap_or_else(|e| Err(std::io::Error::from_raw_os_error(e.errno() as i32)))
        });
        if res.is_err() {
            self.fs.release(o.fh);
        }
        res.map(|g| (o, g))
    }

    /// Moves an open of node `i` off the lower file the kernel pinned it to,
    /// when it must not be served from there: a writer (or truncate) of it,
    /// or any opener of it once it was retired (it would read old data).
    /// The node is retired (`UnionFs::retire`: copy-up, fresh node id for
    /// the object, its name dropped from the kernel's cache) and the caller
    /// answers ESTALE: the VFS retries an open (and a truncate(2)) once
    /// with LOOKUP_REVAL, whose lookup reaches the new, unpinned node — the
    /// user never sees the ESTALE. A retry that comes back to the same node
    /// walked no name (/proc/PID/fd/N): it is served here as before
    /// (readers from the lower file, a writer ETXTBSY). A retired node no
    /// reader pins any more is served here too (another name of a
    /// hard-linked file can still lead to it): what changes through it is
    /// told to the object's current node (`UnionFs::changed_through`).
    fn reroute(&self, i: INodeNo, writing: bool, pid: u32) -> Result<Route, Error> {
        // Taken by every open: only the caller's next one can be the retry.
        let retry = self.io.take_estale(i.0, pid);
        if !self.io.pinned_to_lower(i.0) {
            return Ok(Route::Here);
        }
        let retired = self.fs.is_retired(ino(i));
        if !writing && !retired {
            return Ok(Route::Here);
        }
        if retry {
            tracing::debug!("node {i}: the retry of pid {pid} came back; served as it is");
            return Ok(Route::CameBack);
        }
        if !retired {
            self.fs.retire(ino(i))?;
        }
        self.io.note_estale(i.0, pid);
        tracing::debug!("node {i}: pid {pid} told ESTALE (writing: {writing}, retired: {retired})");
        Ok(Route::Stale)
    }

    /// Refuses to change the data of a node whose readers the kernel serves
    /// straight from a lower file (they would not see the change).
    /// The kernel sends RELEASE after close(2) returned, so a reader that
    /// just closed may still count: wait a moment for it.
    fn check_not_pinned(&self, i: INodeNo) -> Result<(), Error> {
        if !self.io.wait_unpinned(i.0, PIN_GRACE) {
            return Err(Error::Busy);
        }
        Ok(())
    }
}

impl FuseAdapter {
    /// Answers a CREATE or TMPFILE with the new file `e` and its open
    /// handle `h`, in the I/O mode `grant` chooses.
    fn reply_created(&self, e: Entry, h: crate::handle::Fh, reply: ReplyCreate) {
        let o = Opened {
            fh: h,
            keep_cache: false,
            on_upper: true,
            passthrough_ok: true,
        };
        let reply = reply.with_node(INodeNo(e.node.0));
        match self.grant(e.node.0, o, true, |fd| reply.open_backing(fd)) {
            Ok((_, Grant::Passthrough(b))) => reply.created_passthrough(
                &self.ttl,
                &file_attr(&e.attr),
                Generation(0),
                FileHandle(h.0),
                FopenFlags::empty(),
                &b,
            ),
            Ok((_, Grant::Cached)) => reply.created(
                &self.ttl,
                &file_attr(&e.attr),
                Generation(0),
                FileHandle(h.0),
                FopenFlags::empty(),
            ),
            Err(err) => {
                // The reply would have carried the new node's lookup: with
                // an error the kernel takes none, so the node gives it back
                // (for an unnamed file, that frees its space).
                self.fs.forget(e.node, 1);
                reply.error(errno(&err))
            }
        }
    }

    /// The errno for a failed request `op` about inode `i`, after telling
    /// the core (which logs branch faults once each).
    fn fail(&self, op: &'static str, i: INodeNo, e: &Error) -> Errno {
        self.fs.note_failure(op, ino(i), e);
        errno(e)
    }
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno() as i32)
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// Attributes of a negative entry (only its node id 0 matters).
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn ino(i: INodeNo) -> Ino {
    Ino(i.0)
}

fn fh(h: FileHandle) -> Fh {
    Fh(h.0)
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                i64::from(d.subsec_nanos()),
            ),
            Err(e) => {
                // Before the epoch: whole seconds down, nanoseconds up.
                let d = e.duration();
                let mut secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                let mut nanos = i64::from(d.subsec_nanos());
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                SetTime::At(secs, nanos)
            }
        },
    }
}

impl FuseAdapter {
    /// mknod/mkdir/symlink: create, then reply with the new entry.
    fn create_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        what: NewObject<'_>,
        mode: u32,
        reply: ReplyEntry,
    ) {
        let res = self
            .fs
            .create_object(ino(parent), name, what, mode, caller(req))
            .map(|(e, _)| e);
        self.reply_entry(reply, res);
    }

    fn reply_entry(&self, reply: ReplyEntry, res: Result<Entry, Error>) {
        match res {
            Ok(e) => {
                self.watch(&e);
                reply.with_node(INodeNo(e.node.0)).entry(
                    &self.ttl,
                    &file_attr(&e.attr),
                    Generation(0),
                )
            }
            Err(e) => reply.error(errno(&e)),
        }
    }
}

fn reply_empty(reply: ReplyEmpty, res: Result<(), Error>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Replies to an xattr request: the size when `size` is 0, else the data.
fn reply_xattr(reply: ReplyXattr, size: u32, data: Result<Vec<u8>, Error>) {
    match data {
        Ok(v) if size == 0 => reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX)),
        Ok(v) if v.len() > size as usize => reply.error(errno(&Error::Range)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(&e)),
    }
}

impl Filesystem for FuseAdapter {
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
        ] {
            // A capability the kernel lacks is simply not used.
            let _ = config.add_capabilities(cap);
        }
        if self.udba != Udba::None {
            // A lower file's content may change behind the union: the kernel
            // drops its cached pages when it sees a new mtime (it already
            // does on a new size), on a revalidating lookup (reval) or the
            // lookup after an invalidated entry (notify).
            let _ = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA);
        }
        let _ = config.set_max_readahead(1 << 20);
        if self.uring != Uring::Off {
            // Each ring entry has a payload buffer of max_write bytes; the
            // kernel sends at most max_pages (here 1 MiB) anyway.
            let _ = config.set_max_write(1 << 20);
            if config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_err()
            {
                if self.uring == Uring::On {
                    return Err(std::io::Error::other(
                        "the kernel does not offer FUSE over io_uring",
                    ));
                }
                tracing::debug!("no FUSE over io_uring: requests come through /dev/fuse");
            }
        }
        // Backing files must sit on a non-stacked filesystem (depth 0), so
        // the union itself can still be stacked under overlayfs.
        if self.passthrough != Passthrough::Off
            && (config
                .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
                .is_err()
                || config.set_max_stack_depth(1).is_err())
        {
            tracing::info!(
                "the kernel offers no FUSE passthrough: all I/O goes through the daemon"
            );
            self.passthrough = Passthrough::Off;
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(ino(parent), name) {
            Ok(e) => {
                self.watch(&e);
                self.habits.looked_up(req.pid(), e.attr.kind == Kind::Dir);
                reply.with_node(INodeNo(e.node.0)).entry(
                    &self.ttl,
                    &file_attr(&e.attr),
                    Generation(0),
                )
            }
            // A negative entry (node id 0) the kernel may cache: a name only
            // appears through the kernel (create, rename, link), which
            // replaces the negative dentry itself — or directly in a
            // branch, which `udba=` (TTL 0 or an invalidation) is about.
            Err(e) if e.is_not_found() => {
                reply.entry_with_ttls(&Duration::ZERO, &self.ttl, &negative_attr(), Generation(0))
            }
            Err(e) => reply.error(self.fail("lookup", parent, &e)),
        }
    }

    fn forget(&self, _req: &Request, i: INodeNo, nlookup: u64) {
        self.io.forget(i.0);
        self.fs.forget(ino(i), nlookup);
        if let Some(w) = &self.watcher {
            w.forget(ino(i));
        }
    }

    fn getattr(&self, _req: &Request, i: INodeNo, h: Option<FileHandle>, reply: ReplyAttr) {
        // A retired node (`reroute`) stands for the copied-up object, which
        // changes through the new node, unseen here: its readers' handles
        // are still on the lower file, so it is answered from the object,
        // and never cached.
        let retired = self.fs.is_retired(ino(i));
        let res = match h {
            Some(h) if !retired => self
                .fs
                .getattr_fh(ino(i), fh(h))
                .or_else(|_| self.fs.getattr(ino(i))),
            _ => self.fs.getattr(ino(i)),
        };
        let ttl = if retired { Duration::ZERO } else { self.ttl };
        match res {
            Ok(a) => reply.attr(&ttl, &file_attr(&a)),
            Err(e) => reply.error(self.fail("getattr", i, &e)),
        }
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino(i)) {
            Ok(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
            Err(e) => reply.error(self.fail("readlink", i, &e)),
        }
    }

    fn open(&self, req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let came_back = match self.reroute(i, writing, req.pid()) {
            Ok(Route::Stale) => return reply.error(Errno::ESTALE),
            Ok(r) => r == Route::CameBack,
            Err(e) => return reply.error(self.fail("open", i, &e)),
        };
        let res = if writing {
            self.check_not_pinned(i)
        } else {
            Ok(())
        };
        let res = res
            .and_then(|()| self.fs.open(ino(i), flags.0))
            .and_then(|o| self.grant(i.0, o, writing, |fd| reply.open_backing(fd)));
        // A reader pinned the node to its lower file meanwhile.
        let res = match res {
            Err(Error::Busy) if writing && !came_back => {
                match self.reroute(i, writing, req.pid()) {
                    Ok(Route::Stale) => return reply.error(Errno::ESTALE),
                    _ => Err(Error::Busy),
                }
            }
            res => res,
        };
        match res {
            Ok((o, Grant::Passthrough(b))) => {
                reply.opened_passthrough(FileHandle(o.fh.0), FopenFlags::empty(), &b)
            }
            Ok((o, Grant::Cached)) => {
                let f = if o.keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(o.fh.0), f)
            }
            Err(e) => reply.error(self.fail("open", i, &e)),
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
        match self.fs.read(fh(h), offset, size) {
            Ok(d) => {
                self.io.note_read(i.0, d.len());
                reply.data(&d)
            }
            Err(e) => reply.error(self.fail("read", i, &e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _i: INodeNo,
        _h: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close(2): data is written through, and POSIX
        // locks are the kernel's (no getlk/setlk here). ENOSYS makes the
        // kernel stop sending FLUSH — one round trip less per close.
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
        self.io.release(h.0);
        self.fs.release(fh(h));
        reply.ok();
    }

    fn opendir(&self, _req: &Request, i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.udba == Udba::Reval {
            // A handle of our own and no FOPEN_CACHE_DIR: the kernel keeps
            // no listing, and each opendir snapshots the branches anew.
            match self.fs.opendir(ino(i)) {
                Ok(fh) => reply.opened(FileHandle(fh.0), FopenFlags::empty()),
                Err(e) => reply.error(self.fail("opendir", i, &e)),
            }
            return;
        }
        // ENOSYS puts the kernel in no-opendir mode: it stops sending
        // OPENDIR/RELEASEDIR (two round trips per directory walked) and
        // opens directories with FOPEN_KEEP_CACHE|FOPEN_CACHE_DIR itself —
        // safe, as a listing only changes through the kernel (which then
        // drops its cache) or with the directory's mtime (which it compares).
        // Listings are then kept per directory (see `UnionFs::readdir`).
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        i: INodeNo,
        h: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let res = self.fs.readdir(ino(i), fh(h), offset, |e| {
            reply.add(INodeNo(e.ino.0), e.next_offset, file_type(e.kind), &e.name)
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("readdir", i, &e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        i: INodeNo,
        h: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.ttl;
        let non_dirs = self.habits.non_dirs(req.pid());
        let res = self
            .fs
            .readdirplus(ino(i), fh(h), offset, non_dirs, |e, entry| match entry {
                Some(entry) => {
                    let full = reply.add(
                        INodeNo(entry.node.0),
                        e.next_offset,
                        &e.name,
                        &ttl,
                        &file_attr(&entry.attr),
                        Generation(0),
                    );
                    // An entry that did not fit is undone (not held by the kernel).
                    if !full {
                        self.watch(entry);
                    }
                    full
                }
                // Node id 0: a name and type without attributes, which the
                // kernel lists and does not link (`fuse_direntplus_link`).
                None => reply.add(
                    INodeNo(0),
                    e.next_offset,
                    &e.name,
                    &ttl,
                    &FileAttr {
                        ino: INodeNo(e.ino.0),
                        kind: file_type(e.kind),
                        ..negative_attr()
                    },
                    Generation(0),
                ),
            });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("readdirplus", i, &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _i: INodeNo,
        h: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh(h));
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _i: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let res = self.fs.getxattr(ino(i), name);
        if let Err(e) = &res {
            self.fs.note_failure("getxattr", ino(i), e);
        }
        reply_xattr(reply, size, res);
    }

    fn listxattr(&self, _req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        let res = self.fs.listxattr(ino(i));
        if let Err(e) = &res {
            self.fs.note_failure("listxattr", ino(i), e);
        }
        reply_xattr(reply, size, res);
    }

    fn access(&self, req: &Request, i: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.access(ino(i), mask.bits() as u32, caller(req)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _i: INodeNo,
        h: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.fs.lseek(fh(h), offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        h: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            fh: h.map(fh),
        };
        // (A truncate through an open file, ftruncate(2), is not retried by
        // the VFS on ESTALE: its handle decides where it goes.)
        let res = if size.is_some() && h.is_none() {
            match self.reroute(i, true, req.pid()) {
                Ok(Route::Stale) => return reply.error(Errno::ESTALE),
                Ok(_) => self.check_not_pinned(i),
                Err(e) => Err(e),
            }
        } else {
            Ok(())
        };
        match res.and_then(|()| self.fs.setattr(ino(i), set)) {
            // A retired node's attributes are never cached (`getattr`).
            Ok(a) if self.fs.is_retired(ino(i)) => reply.attr(&Duration::ZERO, &file_attr(&a)),
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
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
        let what = NewObject::Node {
            rdev: u64::from(rdev),
        };
        self.create_entry(req, parent, name, what, mode & !umask, reply);
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
        self.create_entry(req, parent, name, NewObject::Dir, mode & !umask, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let what = NewObject::Symlink {
            target: target.as_os_str(),
        };
        self.create_entry(req, parent, link_name, what, 0o777, reply);
    }

    fn link(
        &self,
        _req: &Request,
        i: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.reply_entry(reply, self.fs.link(ino(i), ino(newparent), newname));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.unlink(ino(parent), name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.rmdir(ino(parent), name));
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
        let how = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameHow::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameHow::NoReplace
        } else if flags.is_empty() {
            RenameHow::Replace
        } else {
            // RENAME_WHITEOUT is for filesystems stacked on us, not users.
            reply.error(errno(&Error::Invalid));
            return;
        };
        reply_empty(
            reply,
            self.fs
                .rename(ino(parent), name, ino(newparent), newname, how),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.fs.create_object(
            ino(parent),
            name,
            NewObject::File { flags },
            libc::S_IFREG | (mode & !umask & 0o7777),
            caller(req),
        ) {
            Ok((e, Some(h))) => self.reply_created(e, h, reply),
            Ok((e, None)) => {
                self.fs.forget(e.node, 1);
                reply.error(errno(&Error::Invalid))
            }
            Err(e) => reply.error(self.fail("create", parent, &e)),
        }
    }

    fn tmpfile(
        &self,
        req: &Request,
        parent: INodeNo,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.fs.create_tmpfile(
            ino(parent),
            flags,
            libc::S_IFREG | (mode & !umask & 0o7777),
            caller(req),
        ) {
            Ok((e, h)) => self.reply_created(e, h, reply),
            Err(e) => reply.error(self.fail("tmpfile", parent, &e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        i: INodeNo,
        h: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(fh(h), offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(self.fail("write", i, &e)),
        }
    }

    fn fsync(&self, _req: &Request, _i: INodeNo, h: FileHandle, datasync: bool, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.fsync(fh(h), datasync));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        i: INodeNo,
        _h: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fsyncdir(ino(i), datasync));
    }

    fn setxattr(
        &self,
        _req: &Request,
        i: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.setxattr(ino(i), name, value, flags));
    }

    fn removexattr(&self, _req: &Request, i: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.removexattr(ino(i), name));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _i: INodeNo,
        h: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fallocate(fh(h), offset, length, mode));
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self
            .fs
            .copy_file_range(fh(fh_in), offset_in, fh(fh_out), offset_out, len)
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
