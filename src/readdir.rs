//! Merged directory listings.
//!
//! Invariant: `merge` is pure — given each layer's classified entries
//! (topmost first, already cut at the first opaque layer) it lists each
//! visible name once, topmost instance winning, with whiteouts hiding names
//! only in the layers below the one holding them. `list_layer` turns one
//! branch directory into classified entries. Takes no locks; a big
//! merged directory's layers are listed on a few scoped threads (at most
//! `MAX_LISTING_THREADS`), and a big layer's entries whose type getdents
//! does not settle (character devices that may be whiteouts) are stat'ed
//! by one more while its listing goes on (`read_and_stat`).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::path::Path;

use nix::dir::Type;

use crate::branch::Branch;
use crate::error::Result;
use crate::inode::{Kind, Layer, MergedEntry};
use crate::stack::BranchStack;
use crate::sys;
use crate::whiteout::{self, NameClass};

/// One name of one branch directory, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerEntry {
    /// A real object.
    Object {
        /// Its name.
        name: OsString,
        /// Its type.
        kind: Kind,
        /// The union inode number of this instance.
        ino: u64,
    },
    /// A whiteout of `name` for the layers below.
    Whiteout(OsString),
}

/// Merges the layers of one directory, topmost first.
pub fn merge(layers: &[Vec<LayerEntry>]) -> Vec<MergedEntry> {
    let mut decided: HashSet<&OsStr> = HashSet::new();
    let mut out = Vec::new();
    for layer in layers {
        for e in layer {
            if let LayerEntry::Object { name, kind, ino } = e {
                if decided.insert(name.as_os_str()) {
                    out.push(MergedEntry {
                        name: name.clone(),
                        kind: *kind,
                        ino: *ino,
                    });
                }
            }
        }
        // Whiteouts hide names of the layers below only.
        for e in layer {
            if let LayerEntry::Whiteout(name) = e {
                decided.insert(name.as_os_str());
            }
        }
    }
    out
}

fn kind_of_type(t: Type) -> Option<Kind> {
    Some(match t {
        Type::Directory => Kind::Dir,
        Type::File => Kind::File,
        Type::Symlink => Kind::Symlink,
        Type::Fifo => Kind::Fifo,
        Type::Socket => Kind::Socket,
        Type::BlockDevice => Kind::BlockDev,
        // Character devices may be whiteouts: look at rdev.
        Type::CharacterDevice => return None,
    })
}

/// The classified listings of every layer of a directory at union path
/// `path`, topmost first — including, at their place in the stack, the
/// unionfs-fuse whiteouts of branches that hide entries of `path` without
/// having the directory themselves.
pub fn layer_listings(
    stack: &BranchStack,
    layers: &[Layer],
    path: &Path,
) -> Result<Vec<Vec<LayerEntry>>> {
    enum Job<'a> {
        Sealed,
        List(&'a Branch, &'a Layer),
        Hidden(&'a std::os::fd::OwnedFd),
    }
    let mut jobs = Vec::with_capacity(layers.len());
    let mut next = layers.iter().peekable();
    for b in stack.iter() {
        let Some(l) = next.peek() else {
            break;
        };
        if l.branch == b.id {
            jobs.push(if l.sealed {
                Job::Sealed
            } else {
                Job::List(b, l)
            });
            next.next();
        } else if let Some(hidden) = &b.hidden {
            jobs.push(Job::Hidden(hidden));
        }
    }
    let run = |job: &Job<'_>| match job {
        Job::Sealed => Ok(Vec::new()),
        Job::List(b, l) => list_layer(stack, b, l, &l.path),
        Job::Hidden(hidden) => hidden_whiteouts(hidden, path),
    };
    let listed: Vec<&Layer> = jobs
        .iter()
        .filter_map(|j| match j {
            Job::List(_, l) => Some(*l),
            _ => None,
        })
        .collect();
    if listed.len() < 2 || dir_bytes(&listed) < PARALLEL_LISTING_BYTES {
        return jobs.iter().map(run).collect();
    }
    // Big merged directory: every layer's listing is independent,
    // mostly cold-disk work (getdents, a stat per possible whiteout), so
    // the layers are read at once, by a few threads (a thread per layer
    // would cost more than the listing in a deep stack: 127 spawns per
    // directory of 128 lowers); the result keeps the stack's order.
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, MAX_LISTING_THREADS)
        .min(jobs.len());
    // Worker k lists jobs k, k + workers, ...; worker 0 is this thread.
    let share = |k: usize| jobs.iter().enumerate().skip(k).step_by(workers);
    std::thread::scope(|s| {
        let mut rest = Vec::with_capacity(workers - 1);
        for k in 1..workers {
            let spawned = std::thread::Builder::new()
                .name("readdir".into())
                .spawn_scoped(s, move || {
                    share(k).map(|(i, j)| (i, run(j))).collect::<Vec<_>>()
                });
            // No thread to be had: that share is read here, in turn.
            rest.push((k, spawned));
        }
        let mut slots: Vec<Option<Result<Vec<LayerEntry>>>> = jobs.iter().map(|_| None).collect();
        for (i, j) in share(0) {
            slots[i] = Some(run(j));
        }
        for (k, r) in rest {
            let done = match r {
                Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                Err(_) => share(k).map(|(i, j)| (i, run(j))).collect(),
            };
            for (i, r) in done {
                slots[i] = Some(r);
            }
        }
        slots
            .into_iter()
            .zip(&jobs)
            .map(|(slot, job)| slot.unwrap_or_else(|| run(job)))
            .collect()
    })
}

/// At most this many threads read one merged directory.
const MAX_LISTING_THREADS: usize = 8;

/// Merged directories whose layers hold at least this many bytes of
/// directory (ext4: ~1,000 entries per 32 KiB) are read layer-parallel;
/// below it a thread costs more than it saves.
const PARALLEL_LISTING_BYTES: i64 = 64 * 1024;

/// The directory sizes of `layers`, summed (0 for any that cannot be read:
/// the listing itself will report that).
fn dir_bytes(layers: &[&Layer]) -> i64 {
    layers
        .iter()
        .filter_map(|l| sys::fs::fstat(l.fd().ok()?.as_fd()).ok())
        .map(|st| st.st_size)
        .sum()
}

/// Classifies every entry of one branch's instance of a directory at
/// union path `path`.
pub fn list_layer(
    stack: &BranchStack,
    branch: &Branch,
    layer: &Layer,
    path: &Path,
) -> Result<Vec<LayerEntry>> {
    // Before the listing: an index that settles during it may not take it.
    let index = stack.layer_index(branch);
    let dir = layer.fd()?;
    let may_be_xwhiteout =
        |known: Option<Kind>| layer.xwhiteouts && matches!(known, None | Some(Kind::File));
    // An entry whose type getdents does not settle is stat'ed by name: one
    // fstatat, where opening the entry took three (a merged directory can
    // hold many whiteouts, which are character devices).
    let wants_stat = |known: Option<Kind>| known.is_none() || may_be_xwhiteout(known);
    let needs_stat = |r: &sys::fs::RawDirEntry| {
        matches!(whiteout::classify_name(&r.name), NameClass::Plain)
            && wants_stat(r.kind.and_then(kind_of_type))
    };
    let (raw, mut stats) = read_and_stat(dir.as_fd(), needs_stat)?;
    if let Some(ix) = index {
        // Every name, as listed: later lookups here skip this layer for
        // names it does not hold.
        ix.insert(
            branch.id,
            &layer.path,
            raw.iter().map(|r| r.name.as_os_str()),
        );
    }
    let at_root = path.as_os_str().is_empty();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        match whiteout::classify_name(&r.name) {
            NameClass::Whiteout(target) => {
                // Reserved everywhere; hides something only where honoured.
                if branch.whiteouts() {
                    out.push(LayerEntry::Whiteout(target.to_os_string()));
                }
                continue;
            }
            NameClass::OpaqueMarker | NameClass::Internal => continue,
            NameClass::Plain => {}
        }
        if at_root && branch.hidden.is_some() && crate::lookup::is_unionfs_fuse_dir(&r.name) {
            continue;
        }
        let known = r.kind.and_then(kind_of_type);
        // `needs_stat` asked for the stat of every plain entry of unknown
        // kind (or possibly an xattr whiteout); should one be missing all
        // the same, it is made here rather than the entry dropped.
        let stat = match stats.get_mut(i).and_then(Option::take) {
            None if wants_stat(known) => Some(sys::fs::stat_at(dir.as_fd(), &r.name)),
            stat => stat,
        };
        let kind = match (known, stat) {
            (_, Some(stat)) => {
                let st = match stat {
                    Ok(st) => st,
                    // Gone since getdents: not part of this snapshot.
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                };
                if branch.char_whiteouts() && whiteout::is_char_whiteout(st.st_mode, st.st_rdev) {
                    out.push(LayerEntry::Whiteout(r.name));
                    continue;
                }
                if may_be_xwhiteout(known)
                    && crate::lookup::is_xattr_whiteout_at(dir.as_fd(), &r.name, &st)?
                {
                    out.push(LayerEntry::Whiteout(r.name));
                    continue;
                }
                Kind::from_mode(st.st_mode)
            }
            (Some(k), None) => k,
            // A stat was made above for every entry of unknown kind.
            (None, None) => continue,
        };
        let recorded = if layer.impure {
            recorded_ino_at(layer, &r.name)?
        } else {
            None
        };
        out.push(LayerEntry::Object {
            ino: recorded.unwrap_or_else(|| stack.fold_ino(branch.dev, r.ino)),
            name: r.name,
            kind,
        });
    }
    if let Some(hidden) = branch.hidden.as_ref().filter(|_| branch.whiteouts()) {
        out.extend(hidden_whiteouts(hidden, path)?);
    }
    Ok(out)
}

/// An entry's `fstatat`, by name.
type EntryStat = Result<nix::sys::stat::FileStat>;

/// The entries of branch directory `dir`, and for each one `needs_stat`
/// picks its `fstatat` (indexes match; `None` for the others). Once
/// `HELPER_AFTER` entries need one, they are stat'ed by a helper thread
/// while the next `getdents` batches are read: a layer of 1,000
/// character-device whiteouts among 6,000 entries took its listing's time
/// again in stats after it (cold: 6.6 + 10 ms), now mostly beside it. A
/// listing with fewer makes its stats itself, after it (a thread costs
/// more than a few stats), and one with none — the common case: d_type
/// settles every kind — costs nothing more than its `getdents`.
fn read_and_stat(
    dir: std::os::fd::BorrowedFd<'_>,
    needs_stat: impl Fn(&sys::fs::RawDirEntry) -> bool,
) -> Result<(Vec<sys::fs::RawDirEntry>, Vec<Option<EntryStat>>)> {
    read_and_stat_in(dir, needs_stat, HELPER_AFTER)
}

/// Entries to stat in one listing from which a helper thread makes them.
const HELPER_AFTER: usize = 64;

/// `read_and_stat`, the helper started once `helper_after` entries need a
/// stat (`usize::MAX`: never).
fn read_and_stat_in(
    dir: std::os::fd::BorrowedFd<'_>,
    needs_stat: impl Fn(&sys::fs::RawDirEntry) -> bool,
    helper_after: usize,
) -> Result<(Vec<sys::fs::RawDirEntry>, Vec<Option<EntryStat>>)> {
    let stat = |name: &OsStr| sys::fs::stat_at(dir, name);
    let mut raw = Vec::new();
    std::thread::scope(|s| {
        type Helper<'s> = (
            std::sync::mpsc::Sender<(usize, OsString)>,
            std::thread::ScopedJoinHandle<'s, Vec<(usize, EntryStat)>>,
        );
        // `None` until started; `Some(None)`: no thread to be had.
        let mut helper: Option<Option<Helper<'_>>> = None;
        // Stats not (yet) handed to the helper: made here after the listing.
        let mut pending: Vec<(usize, OsString)> = Vec::new();
        let mut seen = 0usize;
        let listed = sys::fs::read_dir_batches(
            dir,
            |batch| {
                for r in batch {
                    let i = seen;
                    seen += 1;
                    if !needs_stat(r) {
                        continue;
                    }
                    pending.push((i, r.name.clone()));
                    if helper.is_none() && pending.len() >= helper_after {
                        let (tx, rx) = std::sync::mpsc::channel::<(usize, OsString)>();
                        helper = Some(
                            std::thread::Builder::new()
                                .name("readdir-stat".into())
                                .spawn_scoped(s, move || {
                                    rx.into_iter()
                                        .map(|(i, name)| (i, stat(&name)))
                                        .collect::<Vec<_>>()
                                })
                                .ok()
                                .map(|join| (tx, join)),
                        );
                    }
                    if let Some(Some((tx, _))) = &helper {
                        let mut jobs = std::mem::take(&mut pending).into_iter();
                        for job in jobs.by_ref() {
                            if let Err(e) = tx.send(job) {
                                // The helper is gone: this one and the rest here.
                                pending.push(e.0);
                                break;
                            }
                        }
                        pending.extend(jobs);
                    }
                }
            },
            &mut raw,
        );
        let mut stats: Vec<Option<EntryStat>> = raw.iter().map(|_| None).collect();
        if let Some(Some((tx, join))) = helper {
            drop(tx);
            for (i, st) in join.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                if let Some(slot) = stats.get_mut(i) {
                    *slot = Some(st);
                }
            }
        }
        for (i, name) in pending {
            if let Some(slot) = stats.get_mut(i) {
                *slot = Some(stat(&name));
            }
        }
        listed?;
        Ok((raw, stats))
    })
}

/// The union inode number recorded on entry `name` of an impure layer.
fn recorded_ino_at(layer: &Layer, name: &OsStr) -> Result<Option<u64>> {
    for x in whiteout::INO_XATTRS {
        match sys::xattr::get_u64_at(layer.fd()?.as_fd(), name, OsStr::new(x)) {
            Ok(Some(v)) => return Ok(Some(v)),
            Ok(None) => {}
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// unionfs-fuse whiteouts recorded for the entries of directory `path`.
pub fn hidden_whiteouts(hidden: &std::os::fd::OwnedFd, path: &Path) -> Result<Vec<LayerEntry>> {
    let dir = if path.as_os_str().is_empty() {
        sys::fs::dup(hidden.as_fd())
    } else {
        sys::fs::open_path_beneath(hidden.as_fd(), path)
    };
    let dir = match dir {
        Ok(d) => d,
        Err(e) if e.is_not_found() || e.errno() == nix::errno::Errno::ENOTDIR => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    Ok(sys::fs::read_dir(dir.as_fd())?
        .into_iter()
        .filter_map(|r| whiteout::strip_hidden(&r.name).map(|n| LayerEntry::Whiteout(n.into())))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn obj(name: &str, ino: u64) -> LayerEntry {
        LayerEntry::Object {
            name: name.into(),
            kind: Kind::File,
            ino,
        }
    }
    fn wh(name: &str) -> LayerEntry {
        LayerEntry::Whiteout(name.into())
    }
    fn names(m: &[MergedEntry]) -> Vec<(&str, u64)> {
        m.iter()
            .map(|e| (e.name.to_str().unwrap_or("?"), e.ino))
            .collect()
    }

    #[test]
    fn topmost_wins_and_names_are_listed_once() {
        let m = merge(&[
            vec![obj("a", 1), obj("b", 2)],
            vec![obj("b", 20), obj("c", 30)],
            vec![obj("c", 300), obj("d", 400)],
        ]);
        assert_eq!(names(&m), vec![("a", 1), ("b", 2), ("c", 30), ("d", 400)]);
    }

    #[test]
    fn whiteouts_hide_only_below() {
        let m = merge(&[
            vec![obj("x", 1), wh("x"), wh("y")],
            vec![obj("y", 2), obj("z", 3), wh("z")],
            vec![obj("z", 4), obj("w", 5)],
        ]);
        // x: object and whiteout in one layer -> visible; y hidden by the layer above;
        // z visible from layer 1, its whiteout hides only layer 2's z.
        assert_eq!(names(&m), vec![("x", 1), ("z", 3), ("w", 5)]);
    }

    /// The helper thread's stats are the ones the listing would make
    /// itself, each at its entry's index, in a directory big enough for
    /// several `getdents` batches.
    #[test]
    fn stats_beside_the_listing_match_stats_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..3000 {
            let p = tmp.path().join(format!("entry-with-a-longish-name-{i:05}"));
            if i % 7 == 0 {
                std::fs::create_dir(&p).unwrap();
            } else {
                std::fs::write(&p, vec![b'x'; i % 13]).unwrap();
            }
        }
        let dir = sys::fs::open_path_abs(tmp.path()).unwrap();
        let pick = |r: &sys::fs::RawDirEntry| r.name.as_encoded_bytes().ends_with(b"3");
        let (raw_a, stats_a) = read_and_stat_in(dir.as_fd(), pick, usize::MAX).unwrap();
        let (raw_b, stats_b) = read_and_stat_in(dir.as_fd(), pick, 1).unwrap();
        let names =
            |raw: &[sys::fs::RawDirEntry]| raw.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&raw_a), names(&raw_b));
        assert_eq!(raw_a.len(), 3000);
        let sizes = |st: &[Option<EntryStat>]| {
            st.iter()
                .map(|s| {
                    s.as_ref()
                        .map(|r| r.as_ref().map(|st| (st.st_ino, st.st_size)).ok())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(&stats_a), sizes(&stats_b));
        assert_eq!(stats_b.iter().filter(|s| s.is_some()).count(), 300);
        for (r, st) in raw_b.iter().zip(&stats_b) {
            if let Some(Ok(st)) = st {
                assert_eq!(st.st_ino, r.ino, "{:?}: the stat of another entry", r.name);
            }
        }
    }

    #[test]
    fn empty_layers() {
        assert!(merge(&[]).is_empty());
        assert!(merge(&[vec![], vec![wh("a")]]).is_empty());
    }
}
