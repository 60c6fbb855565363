//! The union filesystem core: plain Rust operations returning `Result`,
//! called by the FUSE adapter (`fuse.rs`) and by tests and benches
//! directly. Nothing here knows about fuser's replies.
//!
//! Invariant: every operation loads the branch stack once at its start
//! (`self.stack.load_full()`, one `Arc<BranchStack>` snapshot: branches and
//! their writers together) and hands that snapshot down to everything it
//! calls; nothing loads it again mid-operation, so a stack replaced
//! meanwhile (`replace_stack`) is seen by the next operation, never by half
//! of this one. It works on node state snapshots too, so no lock is held
//! across a syscall on a branch.
//! Locks: the stack load is lock-free (`ArcSwap`); then see `inode` (table
//! shard, then node state) and `handle`. `replace_stack` takes `replacing`
//! (never on a request path) so that replacements are ordered.

mod attr;
mod branches;
mod copyup;
mod dir;
mod file;
mod namei;
mod target;
mod udba;
mod write;
mod xattr;

use std::ffi::{OsStr, OsString};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::stat::FileStat;

pub use attr::{SetAttr, StatFs, StatfsMode};
pub use file::Opened;
pub use write::{NewObject, RenameHow};

use crate::error::Result;
use crate::handle::HandleTable;
use crate::inode::{Ino, InodeTable, Kind, NodeState};
use crate::lookup;
use crate::stack::BranchStack;

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
    /// What statfs reports: the upper's, or the sum over the branches.
    pub statfs: StatfsMode,
    /// `create=`: where new objects go among several writable branches.
    pub create: crate::policy::CreatePolicy,
    /// `cpup=`: where copy-ups go among them.
    pub cpup: crate::policy::CopyUpPolicy,
    /// `prefetch=`: listings read their subdirectories ahead (`prefetch.rs`).
    pub prefetch: bool,
}

impl Default for CoreOptions {
    fn default() -> Self {
        CoreOptions {
            name_max: crate::whiteout::NAME_MAX,
            statfs: StatfsMode::default(),
            create: crate::policy::CreatePolicy::default(),
            cpup: crate::policy::CopyUpPolicy::default(),
            prefetch: true,
        }
    }
}

/// The union filesystem.
#[derive(Debug)]
pub struct UnionFs {
    /// The current branch stack (branches and writers); replaced whole.
    stack: arc_swap::ArcSwap<BranchStack>,
    /// Orders stack replacements (generation = previous + 1).
    replacing: parking_lot::Mutex<()>,
    /// This union's fd cache and xattr generation (shared with its
    /// branches and backing objects; never with another union).
    backings: Arc<crate::backing::Backings>,
    inodes: InodeTable,
    handles: HandleTable,
    opts: CoreOptions,
    copy_locks: Box<[parking_lot::Mutex<()>]>,
    /// Striped by (parent, name): held while a copy-up places an object
    /// under a name and while a removal or rename changes what the upper
    /// holds under it (`name_lock`).
    name_locks: Box<[parking_lot::Mutex<()>]>,
    /// Nodes freed by FORGET so far (to return heap memory now and then).
    freed_nodes: std::sync::atomic::AtomicU64,
    invalidator: std::sync::OnceLock<Box<dyn Invalidate>>,
    /// Branch faults seen, so each is logged once (`faults`).
    faults: crate::faults::FaultLog,
    /// Taken shared by every operation that opens a file handle, and
    /// exclusively by a branch change while it checks that no handle is
    /// open in a branch it removes and swaps the stack (`branches`).
    gate: parking_lot::RwLock<()>,
    /// Round robin and most-free-space state of the create policy.
    policy: crate::policy::PolicyState,
    /// Partially copied-up files (`sparse.rs`).
    partials: crate::sparse::Partials,
    /// Whole-file copy-ups staged but not yet renamed into the upper, and
    /// the thread that publishes them (`publish.rs`).
    publisher: crate::publish::Publisher,
    prefetch: crate::prefetch::Prefetcher,
}

/// Tells the kernel that what it cached about an inode is stale, for the
/// changes the union makes without the kernel asking (copy-up turning a
/// directory into a merged one changes its attributes), and for changes
/// made directly in a branch (`udba=notify`).
pub trait Invalidate: Send + Sync + std::fmt::Debug {
    /// Drops the kernel's cached attributes of `ino` (safe inside a request).
    fn attributes(&self, ino: Ino);
    /// Makes the kernel revalidate its cached entry (or negative entry)
    /// `name` in directory `parent` at its next use. Takes the directory's
    /// lock in the kernel: never call it from inside a request.
    fn entry(&self, parent: Ino, name: &std::ffi::OsStr);
    /// Drops everything the kernel cached about `ino`: attributes, data
    /// pages, a directory's cached listing. Takes page locks in the
    /// kernel: never call it from inside a request.
    fn inode(&self, ino: Ino);
    /// Makes the kernel revalidate every entry it holds, negative ones
    /// included, at its next use; false when the kernel cannot (before
    /// Linux 6.16), and then the caller names the entries one by one.
    fn all_entries(&self) -> bool;
    /// Drops the kernel's cached name `name` in directory `parent` (the
    /// next path walk through it looks it up again) — soon, not before it
    /// returns: the kernel may need requests answered first, so this one
    /// may be called from inside a request.
    fn drop_entry_soon(&self, parent: Ino, name: &std::ffi::OsStr);
}

/// The stripe of `name_locks` for `name` in directory `parent`.
fn name_stripe(parent: Ino, name: &OsStr) -> usize {
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    h.write_u64(parent.0);
    h.write(std::os::unix::ffi::OsStrExt::as_bytes(name));
    (h.finish() % NAME_LOCKS as u64) as usize
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = u32::try_from(nsecs.clamp(0, 999_999_999)).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nsecs)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nsecs)
    }
}

/// Stripes of `UnionFs::name_locks`.
const NAME_LOCKS: usize = 64;

impl UnionFs {
    /// The lock of name `name` in directory `parent`; see `copyup.rs`. The
    /// kernel serialises namespace changes within one directory, but not a
    /// copy-up (an open for writing, a chmod) with them.
    pub(super) fn name_lock(&self, parent: Ino, name: &OsStr) -> parking_lot::MutexGuard<'_, ()> {
        self.name_locks[name_stripe(parent, name)].lock()
    }

    /// The locks of two names, taken in stripe order (one, if they share
    /// a stripe), so two renames never wait for each other crosswise.
    pub(super) fn name_locks(
        &self,
        a: (Ino, &OsStr),
        b: (Ino, &OsStr),
    ) -> (
        parking_lot::MutexGuard<'_, ()>,
        Option<parking_lot::MutexGuard<'_, ()>>,
    ) {
        let (i, j) = (name_stripe(a.0, a.1), name_stripe(b.0, b.1));
        let (lo, hi) = (i.min(j), i.max(j));
        let first = self.name_locks[lo].lock();
        let second = (hi != lo).then(|| self.name_locks[hi].lock());
        (first, second)
    }

    /// Builds the union over `stack` (its branches and writers).
    pub fn new(stack: BranchStack, opts: CoreOptions) -> Result<Self> {
        let prefetch = crate::prefetch::Prefetcher::new(opts.prefetch);
        let (root, _) = lookup::root(&stack)?;
        let inodes = InodeTable::default();
        inodes.insert_root(root);
        Ok(UnionFs {
            backings: Arc::clone(stack.backings()),
            stack: arc_swap::ArcSwap::from_pointee(stack),
            replacing: parking_lot::Mutex::new(()),
            inodes,
            handles: HandleTable::default(),
            opts,
            freed_nodes: std::sync::atomic::AtomicU64::new(0),
            copy_locks: (0..copyup::COPY_LOCKS)
                .map(|_| parking_lot::Mutex::new(()))
                .collect(),
            name_locks: (0..NAME_LOCKS)
                .map(|_| parking_lot::Mutex::new(()))
                .collect(),
            invalidator: std::sync::OnceLock::new(),
            faults: crate::faults::FaultLog::default(),
            gate: parking_lot::RwLock::new(()),
            policy: crate::policy::PolicyState::default(),
            partials: crate::sparse::Partials::default(),
            publisher: crate::publish::Publisher::default(),
            prefetch,
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

    /// After object `st_ino` changed through one of its names (a link
    /// count, a ctime): when it was retired (`retire`), the kernel may hold
    /// two inodes for it — the retired node, which that name may still
    /// lead to and whose attributes are never cached, and the current one,
    /// whose attributes are — so the current one is told. An object never
    /// retired is one node, which the kernel updates itself.
    fn object_changed(&self, st_ino: Ino) {
        self.tell_current_node(st_ino, st_ino);
    }

    /// After an object changed through node `ino` (setattr, an xattr, a
    /// writer's handle): when `ino` is a retired node, the object's current
    /// node is told (see `object_changed`); through the current node, the
    /// kernel updates it itself.
    pub fn changed_through(&self, ino: Ino) {
        if let Ok(node) = self.inodes.get(ino) {
            self.tell_current_node(node.st_ino, ino);
        }
    }

    /// Drops the kernel's cached attributes of object `st_ino`'s current
    /// node, unless that is `via` (the node the change went through).
    fn tell_current_node(&self, st_ino: Ino, via: Ino) {
        let current = self.inodes.node_id(st_ino);
        if current != via {
            self.invalidate_attributes(current);
        }
    }

    /// The current branch stack snapshot.
    pub fn stack(&self) -> Arc<BranchStack> {
        self.stack.load_full()
    }

    /// Replaces the branch stack with `new`, one generation above the
    /// current one and keeping its device numbering (`BranchStack::succeed`);
    /// returns the stack replaced. Operations already running finish on
    /// the snapshot they loaded; nodes keep the generation they were
    /// resolved with (`NodeState::generation`). `new`'s branches must have
    /// been opened with this union's backing state (`UnionFs::backings`).
    pub fn replace_stack(&self, new: BranchStack) -> Result<Arc<BranchStack>> {
        let _order = self.replacing.lock();
        let old = self.stack.load_full();
        let new = Arc::new(new.succeed(&old)?);
        self.stack.store(new);
        Ok(old)
    }

    /// This union's backing state, to open branches for `replace_stack` with.
    pub fn backings(&self) -> &Arc<crate::backing::Backings> {
        &self.backings
    }

    /// Number of backing fds this union's cache holds right now.
    pub fn cached_fds(&self) -> usize {
        self.backings.cached_fds()
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
    fn recorded_nlink(&self, stack: &BranchStack, state: &NodeState, st: &FileStat) -> Option<u32> {
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        let upper = stack.writer()?;
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
    fn shift_nlink(&self, stack: &BranchStack, state: &NodeState, by: i64) -> Result<()> {
        let (Some(upper), Some(top)) = (stack.writer(), state.layers.first()) else {
            return Ok(());
        };
        if top.branch != upper.branch || by == 0 {
            return Ok(());
        }
        upper.shift_nlink_offset(std::os::fd::AsFd::as_fd(&*top.fd()?), by)
    }

    /// The union attributes of node `ino` whose topmost instance has `st`.
    fn attr_of(&self, stack: &BranchStack, ino: Ino, st: &FileStat, state: &NodeState) -> Attr {
        let kind = Kind::from_mode(st.st_mode);
        // Counting a merged directory's subdirectories across branches is
        // costly; like overlayfs we report 1 ("unknown") for merged dirs.
        let nlink = if kind == Kind::Dir && state.is_merged() {
            1
        } else if let Some(n) = self.recorded_nlink(stack, state, st) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    //! Replacing the branch stack, on temp dirs (no mount, no privilege).

    use std::ffi::OsStr;
    use std::path::Path;

    use super::*;
    use crate::backing::Backings;
    use crate::branch::{Branch, BranchId};
    use crate::error::Error;
    use crate::inode::ROOT_INO;
    use crate::mode::Mode;
    use crate::upper::{Upper, XattrNs};
    use crate::whiteout::WhiteoutFormat;

    /// The upper branch `dir/upper` (AUFS format, workdir `dir/work`) and
    /// its writer, opened with `backings`.
    fn upper_at(dir: &Path, backings: &Arc<Backings>) -> (Branch, Upper) {
        let ub = Branch::open(BranchId(0), &dir.join("upper"), Mode::RW, false, backings).unwrap();
        let up = Upper::open(
            &ub,
            Some(&dir.join("work")),
            WhiteoutFormat::Aufs,
            true,
            XattrNs::User,
        )
        .unwrap();
        (ub, up)
    }

    /// Upper (with its writer) over one lower, opened with `backings`.
    fn open(dir: &Path, backings: &Arc<Backings>) -> BranchStack {
        let (ub, up) = upper_at(dir, backings);
        let lb = Branch::open(
            BranchId(1),
            &dir.join("lower"),
            Mode::RO_WH,
            false,
            backings,
        )
        .unwrap();
        BranchStack::new(vec![ub, lb], vec![up], Arc::clone(backings))
    }

    /// Upper over `n` read-only (`ro+wh`) lowers `dir/l0` (topmost) to
    /// `dir/l{n-1}`, with a layer index (as the daemon under `udba=none`);
    /// lower `rw` (if any) is writable instead.
    fn deep(dir: &Path, n: u16, rw: Option<u16>, backings: &Arc<Backings>) -> BranchStack {
        let (ub, up) = upper_at(dir, backings);
        let mut branches = vec![ub];
        for i in 0..n {
            let mode = if rw == Some(i) { Mode::RW } else { Mode::RO_WH };
            let path = dir.join(format!("l{i}"));
            branches.push(Branch::open(BranchId(i + 1), &path, mode, false, backings).unwrap());
        }
        let writers = vec![Arc::new(up)];
        BranchStack::with_shared(branches, writers, Arc::clone(backings)).with_layer_index()
    }

    #[test]
    fn the_daemon_indexes_only_stacks_of_four_read_only_branches_or_more() {
        let td = tempfile::tempdir().unwrap();
        let dir = td.path();
        deep_dirs(dir, 5);
        let backings = crate::backing::Backings::new(64);
        let from = crate::stack::INDEXED_LAYERS;
        let shallow = deep(dir, 3, None, &backings).with_layer_index_from(from);
        let l1 = shallow.get(BranchId(1)).unwrap();
        assert!(shallow.layer_index(l1).is_none(), "3 read-only branches");
        let deeper = deep(dir, 5, None, &backings).with_layer_index_from(from);
        let l1 = deeper.get(BranchId(1)).unwrap();
        assert!(deeper.layer_index(l1).is_some(), "5 read-only branches");
        // a view keeps the rule: from l2 down, 4 read-only branches are left
        let view = deep(dir, 5, Some(1), &backings)
            .with_layer_index_from(from)
            .view_from(BranchId(2))
            .unwrap();
        let l3 = view.get(BranchId(3)).unwrap();
        assert!(
            view.layer_index(l3).is_none(),
            "3 read-only below the view's writer"
        );
    }

    /// Lowers of `deep`: directory `d` in each of `n` layers.
    fn deep_dirs(dir: &Path, n: u16) {
        for d in ["upper", "work"] {
            std::fs::create_dir(dir.join(d)).unwrap();
        }
        for i in 0..n {
            std::fs::create_dir_all(dir.join(format!("l{i}/d"))).unwrap();
        }
    }

    /// Looks `name` up in `parent` and forgets it again (as the kernel
    /// would, in time): Ok(true) found, Ok(false) ENOENT.
    fn found(fs: &UnionFs, parent: Ino, name: &str) -> bool {
        match fs.lookup(parent, OsStr::new(name)) {
            Ok(e) => {
                fs.forget(e.attr.ino, 1);
                true
            }
            Err(e) if e.errno() == nix::errno::Errno::ENOENT => false,
            Err(e) => panic!("{name}: {e:?}"),
        }
    }

    /// Lists directory `ino` through a handle, as `readdir(3)` would.
    fn list(fs: &UnionFs, ino: Ino) -> Vec<std::ffi::OsString> {
        let fh = fs.opendir(ino).unwrap();
        let mut names = Vec::new();
        fs.readdir(ino, fh, 0, |e| {
            names.push(e.name.clone());
            false
        })
        .unwrap();
        fs.releasedir(fh);
        names
    }

    /// A deep stack's lookups are answered from the layer index once a
    /// directory is listed (by lookups or by readdir), and the index never
    /// hides a name: one only the bottom layer holds, one whited out in a
    /// middle layer (AUFS `.wh.`), one under an opaque middle layer.
    #[test]
    fn deep_stack_index_finds_what_probes_find() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let n = 12;
        deep_dirs(dir, n);
        let put = |p: &str| {
            let p = dir.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        };
        put("l11/d/bottom");
        put("l9/d/gone");
        put("l5/d/.wh.gone");
        put("l6/d/mid");
        put("l8/d/.wh.mid"); // below mid: hides nothing above it
        put("l4/d/o/.wh..wh..opq");
        put("l3/d/o/seen");
        put("l10/d/o/hidden");
        put("l11/e/bottom");
        put("l2/e/.wh.bottom2");
        put("l11/e/bottom2");
        let fs = UnionFs::new(
            deep(dir, n, None, &Backings::new(64)),
            CoreOptions::default(),
        )
        .unwrap();
        let d = fs.lookup(ROOT_INO, OsStr::new("d")).unwrap().attr.ino;
        // The first lookups in d probe; a later one lists d's 12 layers.
        for round in 0..4 {
            assert!(found(&fs, d, "bottom"), "round {round}");
            assert!(!found(&fs, d, "gone"), "round {round}");
            assert!(found(&fs, d, "mid"), "round {round}");
            assert!(!found(&fs, d, "nothing"), "round {round}");
        }
        let o = fs.lookup(d, OsStr::new("o")).unwrap().attr.ino;
        for round in 0..4 {
            assert!(found(&fs, o, "seen"), "round {round}");
            assert!(!found(&fs, o, "hidden"), "round {round}");
        }
        // e is listed by readdir first.
        let e = fs.lookup(ROOT_INO, OsStr::new("e")).unwrap().attr.ino;
        let mut names = list(&fs, e);
        names.sort();
        assert_eq!(names, [".", "..", "bottom"]);
        assert!(found(&fs, e, "bottom"));
        assert!(!found(&fs, e, "bottom2"));

        // The index is consulted: a name put in a lower behind the union's
        // back after d and e were listed is not seen (udba=none), where a
        // probe would see it. (So the assertions above can fail.)
        put("l11/d/late");
        put("l11/e/late");
        assert!(!found(&fs, d, "late"));
        assert!(!found(&fs, e, "late"));
    }

    /// A branch change starts an empty index, which waits for the requests
    /// on the older stack: a name written into a branch while it was
    /// writable, or by a request that began on an older stack, is found.
    #[test]
    fn a_branch_change_never_answers_from_an_older_listing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let n = 10;
        deep_dirs(dir, n);
        std::fs::write(dir.join("l9/d/bottom"), b"x").unwrap();
        let fs = UnionFs::new(
            deep(dir, n, None, &Backings::new(64)),
            CoreOptions::default(),
        )
        .unwrap();
        let d = fs.lookup(ROOT_INO, OsStr::new("d")).unwrap().attr.ino;
        let listed = |fs: &UnionFs| {
            for _ in 0..4 {
                assert!(found(fs, d, "bottom"));
                assert!(!found(fs, d, "nothing"));
            }
            list(fs, d);
        };
        listed(&fs);

        // `branch mod l8=rw`: never indexed while writable; what is written
        // there then is found after `branch mod l8=ro`.
        fs.change_branches(deep(dir, n, Some(8), fs.backings()), &[])
            .unwrap();
        let stack = fs.stack();
        let l8 = stack.get(BranchId(9)).unwrap();
        assert!(stack.layer_index(l8).is_none(), "a writable branch");
        drop(stack);
        listed(&fs);
        std::fs::write(dir.join("l8/d/while_rw"), b"x").unwrap();
        fs.change_branches(deep(dir, n, None, fs.backings()), &[])
            .unwrap();
        for _ in 0..4 {
            assert!(found(&fs, d, "while_rw"));
        }

        // A request still running on the replaced stack (`held`) may still
        // write into a branch it had writable: the new index neither takes
        // listings nor answers until that stack is gone.
        fs.change_branches(deep(dir, n, Some(7), fs.backings()), &[])
            .unwrap();
        let held = fs.stack();
        fs.change_branches(deep(dir, n, None, fs.backings()), &[])
            .unwrap();
        let l7 = fs.stack();
        assert!(l7.layer_index(l7.get(BranchId(8)).unwrap()).is_none());
        drop(l7);
        listed(&fs);
        std::fs::write(dir.join("l7/d/late_write"), b"x").unwrap();
        drop(held);
        let l7 = fs.stack();
        assert!(l7.layer_index(l7.get(BranchId(8)).unwrap()).is_some());
        drop(l7);
        for _ in 0..4 {
            assert!(found(&fs, d, "late_write"));
        }
        listed(&fs);
        assert!(found(&fs, d, "late_write"));
    }

    fn generation_of(fs: &UnionFs, ino: Ino) -> u64 {
        fs.inodes.get(ino).unwrap().snapshot().generation
    }

    #[test]
    fn a_replaced_stack_is_one_generation_up_and_serves_the_next_operation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for d in ["lower", "upper", "work"] {
            std::fs::create_dir(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("lower/f"), b"f").unwrap();
        std::fs::write(dir.join("lower/g"), b"g").unwrap();
        let opts = CoreOptions {
            name_max: WhiteoutFormat::Aufs.name_max(),
            ..CoreOptions::default()
        };
        let fs = UnionFs::new(open(dir, &Backings::new(64)), opts).unwrap();
        let first = fs.stack();
        assert_eq!(first.generation(), 0);
        let f = fs.lookup(ROOT_INO, OsStr::new("f")).unwrap().attr.ino;
        assert_eq!(generation_of(&fs, f), 0);

        let replaced = fs.replace_stack(open(dir, fs.backings())).unwrap();
        assert!(
            Arc::ptr_eq(&replaced, &first),
            "returns the stack it replaced"
        );
        assert_eq!(fs.stack().generation(), 1);
        // The old snapshot is untouched for whoever still holds it.
        assert_eq!(first.generation(), 0);

        // The next lookups resolve in the new stack; the device numbering
        // is kept, so inode numbers do not change.
        let again = fs.lookup(ROOT_INO, OsStr::new("f")).unwrap().attr.ino;
        assert_eq!(again, f);
        assert_eq!(generation_of(&fs, f), 1);
        let g = fs.lookup(ROOT_INO, OsStr::new("g")).unwrap().attr.ino;
        assert_eq!(generation_of(&fs, g), 1);

        // Writes go through the new stack's writer.
        let caller = Caller {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            pid: 0,
        };
        fs.create_object(ROOT_INO, OsStr::new("new"), NewObject::Dir, 0o755, caller)
            .unwrap();
        assert!(dir.join("upper/new").is_dir());
        fs.unlink(ROOT_INO, OsStr::new("g")).unwrap();
        assert!(dir.join("upper/.wh.g").exists());

        // A stack whose branches were opened for another union's backing
        // state is refused, and the union keeps its stack.
        // (On a directory of its own: two unions may not write one upper.)
        let other = tempfile::tempdir().unwrap();
        for d in ["lower", "upper", "work"] {
            std::fs::create_dir(other.path().join(d)).unwrap();
        }
        let foreign = open(other.path(), &Backings::new(64));
        assert_eq!(fs.replace_stack(foreign).err(), Some(Error::Invalid));
        assert_eq!(fs.stack().generation(), 1);
    }

    /// Records what the union asks the kernel to forget; `epoch` says
    /// whether it offers FUSE_NOTIFY_INC_EPOCH.
    #[derive(Debug, Default)]
    struct Recorder {
        epoch: bool,
        entries: parking_lot::Mutex<Vec<(Ino, std::ffi::OsString)>>,
        inodes: parking_lot::Mutex<Vec<Ino>>,
    }

    impl Invalidate for Arc<Recorder> {
        fn attributes(&self, ino: Ino) {
            self.inodes.lock().push(ino);
        }
        fn entry(&self, parent: Ino, name: &OsStr) {
            self.entries.lock().push((parent, name.to_os_string()));
        }
        fn inode(&self, ino: Ino) {
            self.inodes.lock().push(ino);
        }
        fn all_entries(&self) -> bool {
            self.epoch
        }
        fn drop_entry_soon(&self, parent: Ino, name: &OsStr) {
            self.entry(parent, name);
        }
    }

    #[test]
    fn a_branch_change_is_refused_while_a_file_of_a_removed_branch_is_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for d in ["lower", "upper", "work", "extra"] {
            std::fs::create_dir(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("lower/f"), b"f").unwrap();
        std::fs::create_dir(dir.join("lower/d")).unwrap();
        std::fs::write(dir.join("extra/new"), b"n").unwrap();
        std::fs::create_dir(dir.join("extra/d")).unwrap();
        std::fs::write(dir.join("extra/d/x"), b"x").unwrap();
        let fs = UnionFs::new(open(dir, &Backings::new(64)), CoreOptions::default()).unwrap();
        let rec = Arc::new(Recorder::default());
        fs.set_invalidator(Box::new(Arc::clone(&rec)));
        let f = fs.lookup(ROOT_INO, OsStr::new("f")).unwrap().attr.ino;
        let d = fs.lookup(ROOT_INO, OsStr::new("d")).unwrap().attr.ino;
        assert!(fs.lookup(ROOT_INO, OsStr::new("new")).is_err());

        // Add `extra` at the bottom: with no epoch, every name the
        // directories the kernel holds now show is revalidated one by one,
        // the new ones (cached as absent) too.
        let with_extra = |fs: &UnionFs| {
            let mut s = open(dir, fs.backings());
            let eb = Branch::open(
                BranchId(2),
                &dir.join("extra"),
                Mode::RO_WH,
                false,
                fs.backings(),
            )
            .unwrap();
            let (branches, writers) = (
                s.iter().cloned().chain([eb]).collect(),
                vec![s.shared_writer(BranchId(0)).unwrap()],
            );
            s = BranchStack::with_shared(branches, writers, Arc::clone(fs.backings()));
            s
        };
        fs.change_branches(with_extra(&fs), &[]).unwrap();
        let named = rec.entries.lock().clone();
        for (p, n) in [
            (ROOT_INO, "f"),
            (ROOT_INO, "d"),
            (ROOT_INO, "new"),
            (d, "x"),
        ] {
            assert!(
                named.iter().any(|(pp, nn)| *pp == p && nn == n),
                "{n} in {p:?} not revalidated: {named:?}"
            );
        }
        assert!(
            rec.inodes.lock().contains(&d),
            "the listing of d is dropped"
        );
        assert!(fs.lookup(ROOT_INO, OsStr::new("new")).is_ok());
        assert!(
            fs.lookup(d, OsStr::new("x")).is_ok(),
            "d re-resolved with extra"
        );

        // A file of extra open: removing extra is EBUSY, and nothing changes.
        let new = fs.lookup(ROOT_INO, OsStr::new("new")).unwrap().attr.ino;
        let o = fs.open(new, libc::O_RDONLY).unwrap();
        let gen = fs.stack().generation();
        let without = open(dir, fs.backings());
        assert_eq!(
            fs.change_branches(without, &[BranchId(2)]).err(),
            Some(Error::BranchBusy)
        );
        assert_eq!(fs.stack().generation(), gen);
        fs.release(o.fh);
        assert!(fs.getattr(f).is_ok());
        fs.change_branches(open(dir, fs.backings()), &[BranchId(2)])
            .unwrap();
        assert!(fs.lookup(ROOT_INO, OsStr::new("new")).is_err());
        assert!(
            fs.lookup(d, OsStr::new("x")).is_err(),
            "d re-resolved without extra"
        );
    }

    /// A listing without its files' attributes looks up its directories
    /// only: the files get no node (no inode of theirs is read), and their
    /// names, types and inode numbers are what a full listing gives.
    #[test]
    fn a_names_only_listing_looks_up_directories_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for d in ["lower/d", "upper", "work"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("lower/f"), b"f").unwrap();
        std::os::unix::fs::symlink("f", dir.join("lower/l")).unwrap();
        let fs = UnionFs::new(open(dir, &Backings::new(64)), CoreOptions::default()).unwrap();
        let listed = |non_dirs: bool| {
            let mut out = Vec::new();
            fs.readdirplus(ROOT_INO, dir::NO_HANDLE, 0, non_dirs, |e, entry| {
                if let Some(entry) = entry {
                    assert_eq!(entry.attr.ino, e.ino, "{:?}", e.name);
                }
                out.push((e.name.clone(), e.ino, e.kind, entry.is_some()));
                false
            })
            .unwrap();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        };
        let before = fs.inodes.len();
        let names = listed(false);
        assert_eq!(fs.inodes.len(), before + 1, "only `d` got a node");
        // as the kernel would, in time (a node it holds is not looked up again)
        let d = names.iter().find(|e| e.0 == "d").map(|e| e.1).unwrap();
        fs.forget(d, 1);
        let full = listed(true);
        assert_eq!(fs.inodes.len(), before + 3);
        let strip = |v: &[(std::ffi::OsString, Ino, Kind, bool)]| {
            v.iter()
                .map(|(n, i, k, _)| (n.clone(), *i, *k))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&names), strip(&full));
        let with_attrs = |v: &[(std::ffi::OsString, Ino, Kind, bool)]| {
            v.iter()
                .filter(|e| e.3)
                .map(|e| e.0.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(with_attrs(&names), ["d"], "dots go by name: never linked");
        assert_eq!(with_attrs(&full), ["d", "f", "l"]);
    }

    /// Non-directories whose node the kernel holds are not looked up again
    /// by a listing (their one lookup is still the only one: one forget
    /// frees them); directories are, as a walk enters them.
    #[test]
    fn a_listing_does_not_look_up_the_files_the_kernel_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for d in ["lower/d", "upper", "work"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("lower/f"), b"f").unwrap();
        std::fs::write(dir.join("lower/g"), b"g").unwrap();
        let fs = UnionFs::new(open(dir, &Backings::new(64)), CoreOptions::default()).unwrap();
        let f = fs.lookup(ROOT_INO, OsStr::new("f")).unwrap().attr.ino;
        let d = fs.lookup(ROOT_INO, OsStr::new("d")).unwrap().attr.ino;
        let mut looked_up = Vec::new();
        fs.readdirplus(ROOT_INO, dir::NO_HANDLE, 0, true, |e, entry| {
            if entry.is_some() {
                looked_up.push(e.name.clone());
            }
            false
        })
        .unwrap();
        looked_up.sort();
        assert_eq!(looked_up, ["d", "g"], "f is held already");
        let before = fs.inodes.len();
        fs.forget(f, 1);
        assert_eq!(fs.inodes.len(), before - 1, "f: held once, still");
        fs.forget(d, 1);
        assert_eq!(fs.inodes.len(), before - 1, "d: looked up again");
    }
}
