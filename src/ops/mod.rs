//! The union filesystem core: plain Rust operations returning `Result`,
//! called by the FUSE adapter (`fuse.rs`) and by tests and benches
//! directly. Nothing here knows about fuser's replies.
//!
//! Invariant: every operation works on an `Arc<BranchStack>` snapshot and on
//! node state snapshots, so no lock is held across a syscall on a branch.
//! Locks: see `inode` (table shard, then node state) and `handle`.

mod attr;
mod copyup;
mod dir;
mod file;
mod namei;
mod write;
mod xattr;

use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::stat::FileStat;

pub use attr::{SetAttr, StatFs};
pub use file::Opened;
pub use write::{NewObject, RenameHow};

use crate::branch::BranchStack;
use crate::error::Result;
use crate::handle::HandleTable;
use crate::inode::{Ino, InodeTable, Kind, NodeState};
use crate::lookup;
use crate::upper::Upper;

/// Attributes of a node as the union reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Union inode number.
    pub ino: Ino,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Access time.
    pub atime: SystemTime,
    /// Modification time.
    pub mtime: SystemTime,
    /// Status change time.
    pub ctime: SystemTime,
    /// Type.
    pub kind: Kind,
    /// Permission bits (incl. suid/sgid/sticky).
    pub perm: u16,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number for device nodes.
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

/// A lookup result handed to the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The object's attributes (its `st_ino` included).
    pub attr: Attr,
    /// The FUSE node id the kernel is to know it by (usually `attr.ino`;
    /// see `inode` on retired nodes).
    pub node: Ino,
}

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Process id.
    pub pid: u32,
}

/// One entry of a directory read.
#[derive(Debug, Clone)]
pub struct DirEntryOut {
    /// Name.
    pub name: OsString,
    /// Inode number.
    pub ino: Ino,
    /// Type.
    pub kind: Kind,
    /// Offset of the entry after this one.
    pub next_offset: u64,
}

/// Options of the core that do not come from the branches.
#[derive(Debug, Clone)]
pub struct CoreOptions {
    /// The union's NAME_MAX: reported in statfs; longer names are never
    /// created and, where no branch holds them, looked up as ENAMETOOLONG.
    pub name_max: usize,
}

/// The union filesystem.
#[derive(Debug)]
pub struct UnionFs {
    stack: Arc<BranchStack>,
    upper: Option<Upper>,
    inodes: InodeTable,
    handles: HandleTable,
    opts: CoreOptions,
    copy_locks: Box<[parking_lot::Mutex<()>]>,
    /// Nodes freed by FORGET so far (to return heap memory now and then).
    freed_nodes: std::sync::atomic::AtomicU64,
    invalidator: std::sync::OnceLock<Box<dyn Invalidate>>,
    /// Branch faults seen, so each is logged once (`faults`).
    faults: crate::faults::FaultLog,
}

/// Tells the kernel that what it cached about an inode is stale, for the
/// changes the union makes without the kernel asking (copy-up turning a
/// directory into a merged one changes its attributes).
pub trait Invalidate: Send + Sync + std::fmt::Debug {
    /// Drops the kernel's cached attributes of `ino`.
    fn attributes(&self, ino: Ino);

    /// Drops the kernel's cached name `name` in directory `parent` (the
    /// next path walk through it looks it up again) — soon, not before it
    /// returns: the kernel may need requests answered first.
    fn entry(&self, parent: Ino, name: &std::ffi::OsStr);
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = u32::try_from(nsecs.clamp(0, 999_999_999)).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nsecs)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nsecs)
    }
}

impl UnionFs {
    /// Builds the union over `stack`.
    pub fn new(stack: Arc<BranchStack>, upper: Option<Upper>, opts: CoreOptions) -> Result<Self> {
        let (root, _) = lookup::root(&stack)?;
        let inodes = InodeTable::default();
        inodes.insert_root(root);
        Ok(UnionFs {
            stack,
            upper,
            inodes,
            handles: HandleTable::default(),
            opts,
            freed_nodes: std::sync::atomic::AtomicU64::new(0),
            copy_locks: (0..copyup::COPY_LOCKS)
                .map(|_| parking_lot::Mutex::new(()))
                .collect(),
            invalidator: std::sync::OnceLock::new(),
            faults: crate::faults::FaultLog::default(),
        })
    }

    /// Installs the kernel invalidation channel (once, after mounting).
    pub fn set_invalidator(&self, inv: Box<dyn Invalidate>) {
        let _ = self.invalidator.set(inv);
    }

    /// Reports that request `op` about inode `ino` failed with `e`: a
    /// branch fault (EIO, ESTALE, ...) is logged once per distinct fault,
    /// with the union path of the object; anything else is not logged.
    pub fn note_failure(&self, op: &'static str, ino: Ino, e: &crate::error::Error) {
        use crate::faults::Noted;
        let key = crate::faults::fault_key(op, ino.0, e);
        match self.faults.note(key.as_ref()) {
            Noted::NotAFault | Noted::Repeat | Noted::Overflow { first: false } => {}
            Noted::New => {
                let path = self
                    .inodes
                    .path_of(ino)
                    .map_or_else(|_| "?".to_string(), |p| format!("/{}", p.display()));
                tracing::warn!(
                    "branch fault: {op} of {path} (inode {}): {e}; \
                     repeats of this fault are not logged",
                    ino.0
                );
            }
            Noted::Overflow { first: true } => tracing::warn!(
                "branch fault: {op} of inode {}: {e}; {} distinct faults seen, \
                 further new faults are not logged",
                ino.0,
                crate::faults::MAX_KEYS
            ),
        }
    }

    /// The table of branch faults seen (tests, diagnostics).
    pub fn faults(&self) -> &crate::faults::FaultLog {
        &self.faults
    }

    /// Drops the kernel's cached attributes of `ino`, if we can talk to it.
    fn invalidate_attributes(&self, ino: Ino) {
        if let Some(inv) = self.invalidator.get() {
            inv.attributes(ino);
        }
    }

    /// The branch stack.
    pub fn stack(&self) -> &Arc<BranchStack> {
        &self.stack
    }

    /// Number of inodes the kernel currently holds.
    pub fn live_inodes(&self) -> usize {
        self.inodes.len()
    }

    /// Number of open handles.
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    /// The union link count recorded on an upper copy of a hard-linked
    /// lower file (its own count also counts the index entry).
    fn recorded_nlink(&self, state: &NodeState, st: &FileStat) -> Option<u32> {
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        let upper = self.upper.as_ref()?;
        let top = state.layers.first().filter(|l| l.branch == upper.branch)?;
        // Only files of the index have a recorded count; they are linked
        // there, so an upper name of one has a count of two or more.
        if st.st_nlink < 2 && !top.indexed {
            return None;
        }
        let fd = top.fd().ok()?;
        let n = crate::upper::nlink_offset(std::os::fd::AsFd::as_fd(&*fd))?;
        u32::try_from((i64::try_from(st.st_nlink).ok()? + n).max(0)).ok()
    }

    /// Shifts the recorded link-count offset of an upper file, if it has one.
    fn shift_nlink(&self, state: &NodeState, by: i64) -> Result<()> {
        let (Some(upper), Some(top)) = (&self.upper, state.layers.first()) else {
            return Ok(());
        };
        if top.branch != upper.branch || by == 0 {
            return Ok(());
        }
        upper.shift_nlink_offset(std::os::fd::AsFd::as_fd(&*top.fd()?), by)
    }

    /// The union attributes of node `ino` whose topmost instance has `st`.
    fn attr_of(&self, ino: Ino, st: &FileStat, state: &NodeState) -> Attr {
        let kind = Kind::from_mode(st.st_mode);
        // Counting a merged directory's subdirectories across branches is
        // costly; like overlayfs we report 1 ("unknown") for merged dirs.
        let nlink = if kind == Kind::Dir && state.is_merged() {
            1
        } else if let Some(n) = self.recorded_nlink(state, st) {
            n
        } else {
            u32::try_from(st.st_nlink).unwrap_or(u32::MAX)
        };
        // A metadata-only copy occupies what its data below occupies.
        let blocks = match state.data() {
            Ok(d) if state.is_metacopy() => d
                .fd()
                .and_then(|fd| crate::sys::fs::fstat(std::os::fd::AsFd::as_fd(&*fd)))
                .map_or(st.st_blocks, |s| s.st_blocks),
            _ => st.st_blocks,
        };
        Attr {
            ino,
            size: u64::try_from(st.st_size).unwrap_or(0),
            blocks: u64::try_from(blocks).unwrap_or(0),
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            kind,
            perm: (st.st_mode & 0o7777) as u16,
            nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: u32::try_from(st.st_rdev).unwrap_or(0),
            blksize: u32::try_from(st.st_blksize).unwrap_or(4096),
        }
    }
}
