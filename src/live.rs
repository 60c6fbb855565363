//! Opening branches with the mount's settings — at mount time and when a
//! branch is added or its mode changed on a live mount — and the control
//! channel's `UnionControl` over a running union.
//!
//! Invariant: every branch change builds a whole new `BranchStack` from
//! clones of the branches it keeps (same ids, same fds) plus the branches
//! it opens, and installs it with one `UnionFs::replace_stack`: a request
//! sees the old stack or the new one, never a mix. A branch with open
//! files is never removed (EBUSY), and the kernel is told to forget what it
//! cached before the change is reported done.
//! Locks: changes are serialised by the control channel's single thread
//! and by `UnionFs::replace_stack`'s own order lock; `UnionFs::change_branches`
//! holds the union's handle gate while it checks for open files and swaps.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use nix::errno::Errno;

use crate::backing::Backings;
use crate::branch::{Branch, BranchId};
use crate::control::{Listed, Refused, UnionControl};
use crate::mode::Mode;
use crate::ops::UnionFs;
use crate::stack::BranchStack;
use crate::upper::{Strategy, Upper, XattrNs};
use crate::whiteout::{self, WhiteoutFormat};

/// The mount's settings for opening branches and their writers.
#[derive(Debug, Clone)]
pub struct Opener {
    /// Lowers are seen through detached mount clones (root only).
    pub clone: bool,
    /// `whiteout=` as given.
    pub format: Option<WhiteoutFormat>,
    /// Namespace of the union's own xattrs.
    pub ns: XattrNs,
    /// Copy-ups reach the disk before they appear (not `volatile`).
    pub durable: bool,
    /// Durable copy-ups are synced in bursts (`batch_sync=`).
    pub batch_sync: bool,
    /// Metadata-only copy-up.
    pub metacopy: bool,
    /// Sparse copy-up of big files: `sparse=` as given, else the dialect's
    /// default (see `writer`).
    pub sparse: Option<bool>,
    /// The native dialect (whose defaults are unionfs's own).
    pub native: bool,
    /// `copyup=`.
    pub copy_strategy: Option<Strategy>,
    /// `-o ro`: no branch is written, whatever its mode.
    pub read_only: bool,
}

/// The whiteout format of writable branch `b`, and whether it is (to be)
/// recorded on it: what the branch recorded; else the option, recorded;
/// else AUFS, recorded only on an empty branch — an unrecorded branch with
/// content came from another tool, so its char 0:0 devices stay
/// whiteouts. A recorded format that contradicts the option is an error:
/// one branch never mixes.
pub fn branch_format(opt: Option<WhiteoutFormat>, b: &Branch) -> Result<(WhiteoutFormat, bool)> {
    let recorded = crate::upper::recorded_format(b.root())
        .with_context(|| format!("cannot read branch {}", b.path.display()))?;
    match (recorded, opt) {
        (Some(r), Some(o)) if r != o => anyhow::bail!(
            "branch {} holds {} whiteouts; it cannot be mounted with whiteout={}",
            b.path.display(),
            r,
            o
        ),
        (Some(r), _) => Ok((r, true)),
        (None, Some(o)) => Ok((o, true)),
        (None, None) => {
            let empty = std::fs::read_dir(&b.path)
                .with_context(|| format!("cannot read branch {}", b.path.display()))?
                .filter_map(|e| e.ok())
                .all(|e| e.file_name() == whiteout::STAGING_NAME);
            Ok((WhiteoutFormat::default(), empty))
        }
    }
}

impl Opener {
    /// Opens branch `path` as `mode` (writable branches directly, as their
    /// writer renames between its staging area and the branch; read-only
    /// ones through a mount clone where possible).
    pub fn branch(
        &self,
        id: BranchId,
        path: &Path,
        mode: Mode,
        backings: &Arc<Backings>,
    ) -> Result<Branch> {
        let mode = self.effective(mode);
        let clone = self.clone && !mode.writable();
        Branch::open(id, path, mode, clone, backings)
            .with_context(|| format!("cannot open branch {}", path.display()))
    }

    /// `mode` as this mount may use it (`-o ro` writes nothing).
    pub fn effective(&self, mode: Mode) -> Mode {
        if self.read_only && mode.writable() {
            Mode {
                perm: crate::mode::Perm::Ro,
                wh: true,
                nolwh: false,
            }
        } else {
            mode
        }
    }

    /// The writer of writable branch `b` (staging in `workdir`, else inside
    /// the branch), and the format it writes; marks how `b` reads its own
    /// char 0:0 devices.
    pub fn writer(&self, b: &mut Branch, workdir: Option<&Path>) -> Result<Upper> {
        let (format, recorded) = branch_format(self.format, b)?;
        // In a branch recorded as AUFS format a char 0:0 device is a user's device.
        b.char_whiteouts = !(recorded && format == WhiteoutFormat::Aufs);
        let mut up = Upper::open(b, workdir, format, recorded, self.ns)
            .with_context(|| format!("cannot prepare the staging area of {}", b.path.display()))?;
        up.durable = self.durable;
        up.batch_sync = self.batch_sync;
        up.metacopy = self.metacopy;
        // By default only in AUFS format: an overlay-format upper is meant
        // for kernel overlayfs too, which would read a partial file left by
        // a crash (before the next unionfs mount fills it) as holes.
        up.sparse = self
            .sparse
            .unwrap_or(self.native && format == WhiteoutFormat::Aufs);
        up.copy_strategy = self.copy_strategy;
        up.link_whiteouts
            .store(!b.mode.nolwh, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = up.prepare_whiteout_base() {
            // A full branch, say: its whiteouts are files of their own.
            tracing::warn!(
                "cannot make the whiteout base of {}: {e}; whiteouts there are separate files",
                b.path.display()
            );
        }
        Ok(up)
    }
}

/// The control channel's view of a running union.
#[derive(Debug)]
pub struct LiveBranches {
    /// The union.
    pub fs: Arc<UnionFs>,
    /// Where it is mounted (a branch inside it would be the union itself).
    pub mountpoint: PathBuf,
    /// How to open what is added.
    pub opener: Opener,
}

/// The same directory: device and inode.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => a == b,
    }
}

fn refused(errno: Errno, e: impl std::fmt::Display) -> Refused {
    Refused::new(errno, e.to_string())
}

impl LiveBranches {
    /// The branches of `stack` as (branch clone, writer) pairs, topmost first.
    fn kept(&self, stack: &BranchStack) -> Vec<(Branch, Option<Arc<Upper>>)> {
        stack
            .iter()
            .map(|b| (b.clone(), stack.shared_writer(b.id)))
            .collect()
    }

    fn position_of(&self, stack: &BranchStack, path: &Path) -> Result<usize, Refused> {
        stack
            .iter()
            .position(|b| same_dir(&b.path, path))
            .ok_or_else(|| {
                Refused::new(
                    Errno::ENOENT,
                    format!("{} is not a branch of this union", path.display()),
                )
            })
    }

    /// Opens `path` as `mode` for the stack, with a writer if writable.
    fn open(
        &self,
        id: BranchId,
        path: &Path,
        mode: Mode,
    ) -> Result<(Branch, Option<Arc<Upper>>), Refused> {
        let mut b = self
            .opener
            .branch(id, path, mode, self.fs.backings())
            .map_err(|e| refused(Errno::EINVAL, format!("{e:#}")))?;
        let w = if b.mode.writable() {
            Some(Arc::new(self.opener.writer(&mut b, None).map_err(|e| {
                // A rule of the union's (a branch in use elsewhere, EBUSY)
                // or the upper's answer keeps its errno.
                let errno = e
                    .chain()
                    .find_map(|c| c.downcast_ref::<crate::error::Error>())
                    .map_or(Errno::EINVAL, |e| e.errno());
                refused(errno, format!("{e:#}"))
            })?))
        } else {
            None
        };
        Ok((b, w))
    }

    /// Installs `parts` (topmost first) as the union's new stack.
    fn install(
        &self,
        parts: Vec<(Branch, Option<Arc<Upper>>)>,
        gone: &[BranchId],
    ) -> Result<(), Refused> {
        let stack = self.fs.stack();
        let (branches, writers): (Vec<Branch>, Vec<Option<Arc<Upper>>>) = parts.into_iter().unzip();
        if branches.is_empty() {
            return Err(Refused::new(
                Errno::EINVAL,
                "a union needs at least one branch",
            ));
        }
        let next = BranchStack::with_shared(
            branches,
            writers.into_iter().flatten().collect(),
            Arc::clone(stack.backings()),
        );
        self.fs
            .change_branches(next, gone)
            .map_err(|e| match e.errno() {
                Errno::EBUSY => Refused::new(
                    Errno::EBUSY,
                    "the branch is busy: files in it are open through the union",
                ),
                n => refused(n, e),
            })
    }
}

impl UnionControl for LiveBranches {
    fn list(&self) -> Vec<Listed> {
        self.fs
            .stack()
            .iter()
            .map(|b| Listed {
                path: b.path.clone(),
                mode: b.mode,
            })
            .collect()
    }

    fn add(&self, at: Option<usize>, path: &Path, mode: Option<Mode>) -> Result<(), Refused> {
        let stack = self.fs.stack();
        let mut parts = self.kept(&stack);
        let at = at.unwrap_or(parts.len());
        if at > parts.len() {
            return Err(Refused::new(
                Errno::EINVAL,
                format!("no position {at}: the union has {} branches", parts.len()),
            ));
        }
        let canon = std::fs::canonicalize(path)
            .map_err(|e| refused(Errno::ENOENT, format!("{}: {e}", path.display())))?;
        if !canon.is_dir() {
            return Err(Refused::new(
                Errno::ENOTDIR,
                format!("{} is not a directory", canon.display()),
            ));
        }
        if canon.starts_with(&self.mountpoint) {
            return Err(Refused::new(
                Errno::EINVAL,
                format!("{} is inside the union's mount point", canon.display()),
            ));
        }
        let mode = mode.unwrap_or(Mode::RO_WH);
        for (b, w) in &parts {
            if same_dir(&b.path, &canon) {
                return Err(Refused::new(
                    Errno::EEXIST,
                    format!("{} is a branch already", canon.display()),
                ));
            }
            // The mount-time rule: what is written never overlaps another
            // branch; read-only branches may nest (`/` and `/img`).
            let nested = canon.starts_with(&b.path) || b.path.starts_with(&canon);
            if nested && (mode.writable() || w.is_some()) {
                return Err(Refused::new(
                    Errno::EINVAL,
                    format!(
                        "{} overlaps writable branch {}",
                        canon.display(),
                        b.path.display()
                    ),
                ));
            }
        }
        let id = stack
            .iter()
            .map(|b| b.id.0)
            .max()
            .map_or(0, |m| m.wrapping_add(1));
        if stack.iter().any(|b| b.id.0 == id) {
            return Err(Refused::new(Errno::ENOSPC, "no branch id left"));
        }
        let part = self.open(BranchId(id), &canon, mode)?;
        parts.insert(at, part);
        self.install(parts, &[])
    }

    fn flush(&self) -> Result<(), Refused> {
        self.fs
            .publish_pending()
            .map_err(|e| refused(e.errno(), format!("copy-ups not yet in the upper: {e}")))
    }

    fn del(&self, path: &Path) -> Result<(), Refused> {
        let stack = self.fs.stack();
        let pos = self.position_of(&stack, path)?;
        let mut parts = self.kept(&stack);
        let (gone, _) = parts.remove(pos);
        self.install(parts, &[gone.id])
    }

    fn modify(&self, path: &Path, mode: Mode) -> Result<(), Refused> {
        let stack = self.fs.stack();
        let pos = self.position_of(&stack, path)?;
        let mut parts = self.kept(&stack);
        let (old, old_writer) = parts.remove(pos);
        let part = if mode.writable() && old_writer.is_some() {
            let mut b = old;
            b.mode = self.opener.effective(mode);
            if let Some(w) = &old_writer {
                w.link_whiteouts
                    .store(!mode.nolwh, std::sync::atomic::Ordering::Relaxed);
                w.prepare_whiteout_base()
                    .map_err(|e| refused(e.errno(), format!("{}: {e}", b.path.display())))?;
            }
            (b, old_writer)
        } else if mode.writable() {
            self.open(old.id, &PathBuf::from(&old.path), mode)?
        } else {
            let mut b = old;
            b.mode = mode;
            (b, None)
        };
        parts.insert(pos, part);
        self.install(parts, &[])
    }
}
