//! Direct branch access (AUFS `udba=`): what the union does about a branch
//! changed behind its back, and the inotify watcher of `udba=notify`.
//!
//! Invariant: under `notify`, every directory the kernel holds (looked up
//! and not yet forgotten) has a watch on each of its branch instances in
//! branches that may change, up to `MAX_WATCHES` watched branch
//! directories; an event on one makes the kernel revalidate the entry
//! named and forget the directory's listing when names came or went
//! (`UnionFs::branch_changed`), and again
//! `REPEAT` later, in case an answer read from the branch before the change
//! reached the kernel after the first invalidation. A directory
//! beyond the bound is not watched (one warning): changes there are seen
//! when the kernel's caches expire, as under `none`.
//!
//! Why inotify and not fanotify: fanotify with FAN_REPORT_DFID_NAME could
//! mark whole filesystems with one mark, but it reports every change on
//! those filesystems (a branch is usually a directory of a bigger one, so
//! most events would be for others), needs CAP_SYS_ADMIN (the union also
//! runs unprivileged), and reports file handles that have to be mapped
//! back to union nodes. inotify watches exactly the directories the kernel
//! caches, by inode (so a change made through any mount of the branch is
//! seen), works without privilege, and its cost is bounded by the number
//! of cached directories. Its limit — one watch per directory — is the
//! bound above (and the system's `fs.inotify.max_user_watches`).
//!
//! The union's own writes to the upper also raise events. They make the
//! kernel revalidate an entry it has just learnt (one more lookup later),
//! never a wrong answer: an invalidation only ever makes the kernel ask
//! again, and an expired entry that still leads to the same inode stays,
//! with anything mounted on it.
//!
//! A branch instance a directory gains later through the union itself (an
//! upper copy of a lower directory, made when something is created in it)
//! is watched from the directory's next lookup on.
//!
//! Locks: the watch table's mutex, held for table updates and the
//! `inotify_add_watch`/`rm_watch` calls that go with them (never while the
//! kernel is told of a change: that takes the directory's lock in the
//! kernel, which a request in flight may hold). The inode table's shard
//! lock may be taken under it (`is_live`), never the other way round.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::inotify::AddWatchFlags;
use parking_lot::Mutex;

use crate::error::Result;
use crate::inode::Ino;
use crate::ops::UnionFs;
use crate::sys::notify::{Inotify, InotifyEvent, WatchDescriptor};

/// `udba=`: how changes made directly in a branch are noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Udba {
    /// Trust the caches (kernel entries and attributes live for `ttl`, a
    /// day by default): a branch changed behind the mount may not be seen
    /// until the kernel forgets; and in a stack of 4 or more read-only
    /// branches the union's layer index
    /// (`layer_index.rs`) remembers the names of the read-only branch
    /// directories it listed, so a name added to one of those is not seen
    /// until the union lists that directory again or the branch stack
    /// changes. The fastest; the default, as in overlayfs, where changing a
    /// lower under a mount is undefined.
    #[default]
    None,
    /// Revalidate on every access: the kernel caches nothing (TTL 0, no
    /// cached listings), so each access makes the daemon walk the branches
    /// again. AUFS's default; every stat costs a round trip or two.
    Reval,
    /// Watch the branch directories the kernel caches (inotify) and make
    /// the kernel forget what changed; caches keep their long TTL.
    Notify,
}

/// At most this many branch directories are watched at once (inotify's
/// own default per user is 8192 on older kernels, more on newer ones).
pub const MAX_WATCHES: usize = 8192;

/// How long after an invalidation it is made again (see `Watcher::run`).
const REPEAT: Duration = Duration::from_millis(100);

/// What the kernel is told of.
#[derive(Debug)]
enum Change {
    /// Directory `dir`'s entry `name` changed (`None`: the directory
    /// itself).
    Entry {
        dir: Ino,
        name: Option<OsString>,
        /// Names came or went (the listing changed), not only an object.
        names: bool,
        /// The entry is a directory.
        is_dir: bool,
    },
    /// Events were lost: everything may have changed.
    All,
}

#[derive(Debug, Default)]
struct Watches {
    /// Watched branch directory -> union directories made of it.
    by_wd: HashMap<WatchDescriptor, HashSet<Ino>>,
    /// Union directory -> its watched branch directories.
    by_ino: HashMap<Ino, Vec<WatchDescriptor>>,
    /// The bound was met once (warned).
    full: bool,
}

/// The watcher of `udba=notify`.
#[derive(Debug)]
pub struct Watcher {
    fs: Arc<UnionFs>,
    inotify: Inotify,
    table: Mutex<Watches>,
}

impl Watcher {
    /// A watcher for `fs`, watching nothing yet.
    pub fn new(fs: Arc<UnionFs>) -> Result<Arc<Watcher>> {
        Ok(Arc::new(Watcher {
            fs,
            inotify: Inotify::new()?,
            table: Mutex::new(Watches::default()),
        }))
    }

    /// Number of watched branch directories.
    pub fn watched(&self) -> usize {
        self.table.lock().by_wd.len()
    }

    /// Watches the branch instances of union directory `ino` (after the
    /// kernel looked it up); instances it no longer has are let go. Called
    /// on every lookup of a directory: cheap next to the lookup, which the
    /// kernel rarely repeats under the long TTL of this mode.
    pub fn watch(&self, ino: Ino) {
        let dirs = match self.fs.watchable_dirs(ino) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!("udba: cannot watch inode {}: {e}", ino.0);
                return;
            }
        };
        let mut t = self.table.lock();
        // Forgotten meanwhile: `forget` saw it live or runs after us.
        if !self.fs.is_live(ino) {
            return;
        }
        let mut now = Vec::with_capacity(dirs.len());
        for fd in &dirs {
            let wd = match self.inotify.watch_dir(std::os::fd::AsFd::as_fd(&**fd)) {
                Ok(wd) => wd,
                Err(e) => {
                    if !t.full {
                        t.full = true;
                        tracing::warn!(
                            "udba=notify: cannot watch a branch directory ({e}): \
                             changes there are seen only when caches expire"
                        );
                    }
                    continue;
                }
            };
            if !t.by_wd.contains_key(&wd) && t.by_wd.len() >= MAX_WATCHES {
                let _ = self.inotify.unwatch(wd);
                if !t.full {
                    t.full = true;
                    tracing::warn!(
                        "udba=notify: {MAX_WATCHES} branch directories watched; \
                         changes in further ones are seen only when caches expire"
                    );
                }
                continue;
            }
            t.by_wd.entry(wd).or_default().insert(ino);
            now.push(wd);
        }
        let before = t.by_ino.insert(ino, now.clone()).unwrap_or_default();
        for wd in before.into_iter().filter(|wd| !now.contains(wd)) {
            self.drop_use(&mut t, wd, ino);
        }
    }

    /// Lets go of union directory `ino`'s watches once the kernel forgot it.
    pub fn forget(&self, ino: Ino) {
        let mut t = self.table.lock();
        if self.fs.is_live(ino) {
            return;
        }
        for wd in t.by_ino.remove(&ino).unwrap_or_default() {
            self.drop_use(&mut t, wd, ino);
        }
    }

    /// `ino` no longer uses watch `wd`; the last user removes it.
    fn drop_use(&self, t: &mut Watches, wd: WatchDescriptor, ino: Ino) {
        if let Some(users) = t.by_wd.get_mut(&wd) {
            users.remove(&ino);
            if users.is_empty() {
                t.by_wd.remove(&wd);
                let _ = self.inotify.unwatch(wd);
            }
        }
    }

    /// Starts the thread that reads events and tells the kernel (after
    /// the daemon forked: threads do not survive a fork).
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<()> {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("udba-notify".into())
            .spawn(move || me.run())
            .map(|_| ())
    }

    fn run(&self) {
        // Every invalidation is made twice, the second time `REPEAT`
        // later: a lookup or listing that read the branch just before the
        // change may reach the kernel just after the first one, which
        // would then cache the old state for a day.
        let mut again: VecDeque<(Instant, Change)> = VecDeque::new();
        loop {
            let timeout = again
                .front()
                .map(|(t, _)| (*t + REPEAT).saturating_duration_since(Instant::now()));
            let ready = match self.inotify.wait(timeout) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("udba=notify: waiting for events failed ({e}); watching stops");
                    return;
                }
            };
            if ready {
                match self.inotify.read() {
                    Ok(events) => {
                        let now = Instant::now();
                        for c in self.changes(events) {
                            self.apply(&c);
                            again.push_back((now, c));
                        }
                    }
                    Err(e) if e.errno() == nix::errno::Errno::EINTR => {}
                    Err(e) => {
                        tracing::warn!("udba=notify: reading events failed ({e}); watching stops");
                        return;
                    }
                }
            }
            let now = Instant::now();
            while again.front().is_some_and(|(t, _)| *t + REPEAT <= now) {
                if let Some((_, c)) = again.pop_front() {
                    self.apply(&c);
                }
            }
        }
    }

    fn apply(&self, c: &Change) {
        match c {
            Change::Entry {
                dir,
                name,
                names,
                is_dir,
            } => {
                tracing::debug!("udba=notify: inode {} entry {:?} changed", dir.0, name);
                self.fs
                    .branch_changed(*dir, name.as_deref(), *names, *is_dir);
            }
            Change::All => self.fs.branches_changed(),
        }
    }

    /// Turns a batch of events into changes to tell the kernel of, each
    /// (directory, name) once per batch.
    fn changes(&self, events: Vec<InotifyEvent>) -> Vec<Change> {
        let mut todo: Vec<Change> = Vec::new();
        let mut seen: HashSet<(Ino, Option<OsString>, bool, bool)> = HashSet::new();
        let name_events = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO;
        let mut t = self.table.lock();
        for ev in events {
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                tracing::debug!("udba=notify: event queue overflowed; forgetting all");
                return vec![Change::All];
            }
            if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                // The kernel dropped the watch (directory removed).
                for ino in t.by_wd.remove(&ev.wd).unwrap_or_default() {
                    if let Some(wds) = t.by_ino.get_mut(&ino) {
                        wds.retain(|w| *w != ev.wd);
                    }
                }
                continue;
            }
            // A file written or chmod-ed leaves the listing as it is: only
            // its entry goes (the union's own writes to the upper are
            // mostly these, so they cost the kernel no listing).
            let names = ev.mask.intersects(name_events);
            let is_dir = ev.mask.contains(AddWatchFlags::IN_ISDIR);
            if let Some(users) = t.by_wd.get(&ev.wd) {
                for ino in users {
                    if seen.insert((*ino, ev.name.clone(), names, is_dir)) {
                        todo.push(Change::Entry {
                            dir: *ino,
                            name: ev.name.clone(),
                            names,
                            is_dir,
                        });
                    }
                }
            }
        }
        todo
    }
}
