//! Which writable branch a write goes to when there are several: AUFS's
//! create policies (`create=tdp|rr|mfs[:SEC]|mfsrr:LOW[:SEC]|pmfs[:SEC]|
//! pmfsrr:LOW[:SEC]`) and copy-up policies (`cpup=tdp|bup|bu`), as aufs.5
//! "Policies to Select One among Multiple Writable Branches" defines them.
//!
//! Invariant: a choice is made over one branch-stack snapshot, by
//! position from the top, and always honours what the merged view needs,
//! whatever the policy says: a new name goes to a writable branch at or
//! above every branch that would hide it (a whiteout of the name, or the
//! parent's opaque layer), and a copy-up goes to a writable branch above
//! its source. `None` means no writable branch qualifies (EROFS).
//! Locks: the round-robin counter is an atomic; the free-space cache is
//! one `Mutex` held only to read or store a (time, choice) pair, never
//! across a statfs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// AUFS's default interval between free-space checks (`mfs` without `:SEC`).
pub const MFS_DEFAULT: Duration = Duration::from_secs(30);
/// AUFS's upper bound for that interval.
pub const MFS_MAX: Duration = Duration::from_secs(3600);

/// `create=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CreatePolicy {
    /// Top-down-parent: the topmost branch holding the parent directory,
    /// or, when that one is read-only, the nearest writable one above it.
    #[default]
    Tdp,
    /// Round robin over the writable branches (mkdir does not advance it).
    Rr,
    /// Most free space, re-checked every interval.
    Mfs(Duration),
    /// Most free space, or round robin when it has less than LOW bytes.
    MfsRr(u64, Duration),
    /// Most free space among the writable branches holding the parent.
    Pmfs(Duration),
    /// As `pmfs`, unless all of those have less than LOW bytes: then `mfs`.
    PmfsRr(u64, Duration),
}

/// `cpup=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyUpPolicy {
    /// Top-down-parent (as `create=tdp`, among branches above the source).
    #[default]
    Tdp,
    /// Bottom-up-parent: the nearest writable branch above the source that
    /// holds the parent; else `bu`.
    Bup,
    /// Bottom-up: the nearest writable branch above the source.
    Bu,
}

fn secs(s: &str) -> Option<Duration> {
    let n: u64 = s.parse().ok()?;
    let d = Duration::from_secs(n);
    (d <= MFS_MAX).then_some(d)
}

impl CreatePolicy {
    /// Parses the value of `create=` (`tdp`, `top-down-parent`, `rr`,
    /// `round-robin`, `mfs[:SEC]`, `most-free-space[:SEC]`,
    /// `mfsrr:LOW[:SEC]`, `pmfs[:SEC]`, `pmfsrr:LOW[:SEC]`).
    pub fn parse(v: &str) -> Option<CreatePolicy> {
        let mut parts = v.split(':');
        let name = parts.next()?;
        let args: Vec<&str> = parts.collect();
        let interval = |a: Option<&&str>| match a {
            None => Some(MFS_DEFAULT),
            Some(s) => secs(s),
        };
        let low = |a: Option<&&str>| a.and_then(|s| s.parse::<u64>().ok());
        match (name, args.len()) {
            ("tdp" | "top-down-parent", 0) => Some(CreatePolicy::Tdp),
            ("rr" | "round-robin", 0) => Some(CreatePolicy::Rr),
            ("mfs" | "most-free-space", 0 | 1) => interval(args.first()).map(CreatePolicy::Mfs),
            ("pmfs", 0 | 1) => interval(args.first()).map(CreatePolicy::Pmfs),
            ("mfsrr", 1 | 2) => Some(CreatePolicy::MfsRr(
                low(args.first())?,
                interval(args.get(1))?,
            )),
            ("pmfsrr", 1 | 2) => Some(CreatePolicy::PmfsRr(
                low(args.first())?,
                interval(args.get(1))?,
            )),
            _ => None,
        }
    }
}

impl CopyUpPolicy {
    /// Parses the value of `cpup=` / `copyup_policy=`.
    pub fn parse(v: &str) -> Option<CopyUpPolicy> {
        match v {
            "tdp" | "top-down-parent" => Some(CopyUpPolicy::Tdp),
            "bup" | "bottom-up-parent" => Some(CopyUpPolicy::Bup),
            "bu" | "bottom-up" => Some(CopyUpPolicy::Bu),
            _ => None,
        }
    }
}

/// What a choice needs to know about one branch, by position from the top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The union may write it.
    pub writable: bool,
    /// It holds the parent directory as part of the merged view.
    pub has_parent: bool,
}

/// The state a union keeps for its policies: the round-robin counter and
/// the last most-free-space choice.
#[derive(Debug, Default)]
pub struct PolicyState {
    rr: AtomicUsize,
    mfs: parking_lot::Mutex<Option<(Instant, u64, usize)>>,
}

/// Free bytes of the branch at a position (statfs); `None` when unknown.
pub trait FreeSpace {
    /// Free bytes available to the union in the branch at `pos`.
    fn free(&self, pos: usize) -> Option<u64>;
}

impl<F: Fn(usize) -> Option<u64>> FreeSpace for F {
    fn free(&self, pos: usize) -> Option<u64> {
        self(pos)
    }
}

impl PolicyState {
    /// Where a new object goes. `slots` is the stack top first; `limit` is
    /// the lowest position the object may live at to be seen (the topmost
    /// branch holding a whiteout of the name, or the parent's opaque
    /// layer, or the bottom); `generation` identifies the stack, so a
    /// remembered most-free-space choice never outlives its stack;
    /// `is_dir`: mkdir, which does not advance round robin.
    pub fn create(
        &self,
        policy: CreatePolicy,
        slots: &[Slot],
        limit: usize,
        generation: u64,
        is_dir: bool,
        free: &dyn FreeSpace,
    ) -> Option<usize> {
        let limit = limit.min(slots.len().checked_sub(1)?);
        let writable: Vec<usize> = (0..=limit).filter(|&p| slots[p].writable).collect();
        if writable.is_empty() {
            return None;
        }
        match policy {
            CreatePolicy::Tdp => tdp(slots, limit),
            CreatePolicy::Rr => Some(self.round_robin(&writable, is_dir)),
            CreatePolicy::Mfs(every) => self.most_free(&writable, every, generation, free),
            CreatePolicy::MfsRr(low, every) => {
                let p = self.most_free(&writable, every, generation, free)?;
                if free.free(p).is_some_and(|f| f < low) {
                    Some(self.round_robin(&writable, is_dir))
                } else {
                    Some(p)
                }
            }
            CreatePolicy::Pmfs(_) | CreatePolicy::PmfsRr(..) => {
                let with_parent: Vec<usize> = writable
                    .iter()
                    .copied()
                    .filter(|&p| slots[p].has_parent)
                    .collect();
                if with_parent.is_empty() {
                    return tdp(slots, limit);
                }
                let best = best_free(&with_parent, free);
                match (policy, best) {
                    (CreatePolicy::PmfsRr(low, _), Some(b))
                        if free.free(b).is_some_and(|f| f < low) =>
                    {
                        best_free(&writable, free).or(Some(b))
                    }
                    (_, Some(b)) => Some(b),
                    (_, None) => tdp(slots, limit),
                }
            }
        }
    }

    fn round_robin(&self, writable: &[usize], is_dir: bool) -> usize {
        let n = if is_dir {
            self.rr.load(Ordering::Relaxed)
        } else {
            self.rr.fetch_add(1, Ordering::Relaxed)
        };
        writable[n % writable.len()]
    }

    fn most_free(
        &self,
        writable: &[usize],
        every: Duration,
        generation: u64,
        free: &dyn FreeSpace,
    ) -> Option<usize> {
        if let Some((at, g, p)) = *self.mfs.lock() {
            if g == generation && at.elapsed() < every && writable.contains(&p) {
                return Some(p);
            }
        }
        let p = best_free(writable, free)?;
        *self.mfs.lock() = Some((Instant::now(), generation, p));
        Some(p)
    }
}

/// Top-down-parent among positions `0..=limit`: the topmost branch
/// holding the parent; if it is read-only, the nearest writable above it
/// (AUFS's internal "bottom-up" copy-up of the parent).
fn tdp(slots: &[Slot], limit: usize) -> Option<usize> {
    let top_parent = (0..=limit).find(|&p| slots[p].has_parent).unwrap_or(limit);
    (0..=top_parent).rev().find(|&p| slots[p].writable)
}

/// The position with the most free space (the topmost among equals).
fn best_free(positions: &[usize], free: &dyn FreeSpace) -> Option<usize> {
    let mut best: Option<(u64, usize)> = None;
    for &p in positions {
        let f = free.free(p).unwrap_or(0);
        if best.is_none_or(|(bf, _)| f > bf) {
            best = Some((f, p));
        }
    }
    best.map(|(_, p)| p)
}

/// Where a copy-up of an object whose topmost instance is at position
/// `source` goes: always a writable branch above it.
pub fn copy_up(policy: CopyUpPolicy, slots: &[Slot], source: usize) -> Option<usize> {
    let above = source.min(slots.len());
    let nearest = (0..above).rev().find(|&p| slots[p].writable);
    match policy {
        CopyUpPolicy::Bu => nearest,
        CopyUpPolicy::Bup => (0..above)
            .rev()
            .find(|&p| slots[p].writable && slots[p].has_parent)
            .or(nearest),
        CopyUpPolicy::Tdp => match above.checked_sub(1) {
            Some(limit) => tdp(&slots[..above], limit),
            None => None,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn slots(spec: &str) -> Vec<Slot> {
        // One word per branch: w/r (writable or not), P when it holds the parent.
        spec.split_whitespace()
            .map(|w| Slot {
                writable: w.starts_with('w'),
                has_parent: w.ends_with('P'),
            })
            .collect()
    }

    fn none(_: usize) -> Option<u64> {
        None
    }

    #[test]
    fn policy_words_parse_as_aufs_spells_them() {
        assert_eq!(CreatePolicy::parse("tdp"), Some(CreatePolicy::Tdp));
        assert_eq!(CreatePolicy::parse("round-robin"), Some(CreatePolicy::Rr));
        assert_eq!(
            CreatePolicy::parse("mfs"),
            Some(CreatePolicy::Mfs(MFS_DEFAULT))
        );
        assert_eq!(
            CreatePolicy::parse("mfs:5"),
            Some(CreatePolicy::Mfs(Duration::from_secs(5)))
        );
        assert_eq!(
            CreatePolicy::parse("mfsrr:1048576"),
            Some(CreatePolicy::MfsRr(1 << 20, MFS_DEFAULT))
        );
        assert_eq!(
            CreatePolicy::parse("pmfs:0"),
            Some(CreatePolicy::Pmfs(Duration::ZERO))
        );
        for bad in [
            "",
            "mfsrr",
            "mfs:x",
            "mfs:99999",
            "rr:1",
            "tdp:1",
            "lfs",
            "pmfsrr:x",
        ] {
            assert_eq!(CreatePolicy::parse(bad), None, "{bad}");
        }
        assert_eq!(CopyUpPolicy::parse("bup"), Some(CopyUpPolicy::Bup));
        assert_eq!(CopyUpPolicy::parse("x"), None);
    }

    #[test]
    fn tdp_takes_the_topmost_parent_or_the_nearest_writable_above_it() {
        let st = PolicyState::default();
        let c = |s: &str, limit| st.create(CreatePolicy::Tdp, &slots(s), limit, 1, false, &none);
        assert_eq!(c("w wP r", 9), Some(1));
        assert_eq!(c("wP wP r", 9), Some(0));
        assert_eq!(
            c("w rP w", 9),
            Some(0),
            "parent in a read-only branch: copy it up"
        );
        assert_eq!(c("r rP w", 9), None, "nothing writable above the parent");
        assert_eq!(c("w w rP", 9), Some(1), "nearest writable above the parent");
        assert_eq!(
            c("w wP", 0),
            Some(0),
            "a whiteout or opaque at 0 forbids branch 1"
        );
        assert_eq!(c("r w", 0), None);
    }

    #[test]
    fn round_robin_spreads_files_and_keeps_directories_together() {
        let st = PolicyState::default();
        let s = slots("wP r wP wP");
        let picks: Vec<_> = (0..6)
            .map(|_| st.create(CreatePolicy::Rr, &s, 9, 1, false, &none).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 2, 3, 0, 2, 3]);
        let dirs: Vec<_> = (0..3)
            .map(|_| st.create(CreatePolicy::Rr, &s, 9, 1, true, &none).unwrap())
            .collect();
        assert_eq!(dirs, vec![0, 0, 0]);
        assert_eq!(st.create(CreatePolicy::Rr, &s, 1, 1, false, &none), Some(0));
    }

    #[test]
    fn most_free_space_is_remembered_for_its_interval_and_its_stack() {
        let st = PolicyState::default();
        let s = slots("w w w");
        let free = |p: usize| Some([10u64, 30, 20][p]);
        let mfs = CreatePolicy::Mfs(Duration::from_secs(60));
        assert_eq!(st.create(mfs, &s, 9, 1, false, &free), Some(1));
        let changed = |p: usize| Some([50u64, 30, 20][p]);
        assert_eq!(st.create(mfs, &s, 9, 1, false, &changed), Some(1), "cached");
        assert_eq!(
            st.create(mfs, &s, 9, 2, false, &changed),
            Some(0),
            "new stack"
        );
        let now = CreatePolicy::Mfs(Duration::ZERO);
        assert_eq!(st.create(now, &s, 9, 2, false, &free), Some(1));
        // mfsrr: the best has less than LOW: round robin instead.
        let low = CreatePolicy::MfsRr(100, Duration::ZERO);
        let rr: Vec<_> = (0..3)
            .map(|_| st.create(low, &s, 9, 2, false, &free).unwrap())
            .collect();
        assert_eq!(rr, vec![0, 1, 2]);
        assert_eq!(
            st.create(
                CreatePolicy::MfsRr(5, Duration::ZERO),
                &s,
                9,
                2,
                false,
                &free
            ),
            Some(1)
        );
    }

    #[test]
    fn pmfs_prefers_branches_with_the_parent() {
        let st = PolicyState::default();
        let free = |p: usize| Some([10u64, 30, 20, 99][p]);
        let s = slots("wP w wP r");
        assert_eq!(
            st.create(CreatePolicy::Pmfs(Duration::ZERO), &s, 9, 1, false, &free),
            Some(2)
        );
        let s = slots("w w w rP");
        assert_eq!(
            st.create(CreatePolicy::Pmfs(Duration::ZERO), &s, 9, 1, false, &free),
            Some(2),
            "no writable parent: tdp"
        );
        let s = slots("wP w wP r");
        assert_eq!(
            st.create(
                CreatePolicy::PmfsRr(25, Duration::ZERO),
                &s,
                9,
                1,
                false,
                &free
            ),
            Some(1),
            "parents all below LOW: the most free anywhere"
        );
    }

    #[test]
    fn copy_up_goes_above_the_source() {
        let s = slots("w wP r rP");
        assert_eq!(copy_up(CopyUpPolicy::Bu, &s, 3), Some(1));
        assert_eq!(copy_up(CopyUpPolicy::Bup, &s, 3), Some(1));
        assert_eq!(copy_up(CopyUpPolicy::Tdp, &s, 3), Some(1));
        let s = slots("wP w r rP");
        assert_eq!(copy_up(CopyUpPolicy::Tdp, &s, 3), Some(0));
        assert_eq!(copy_up(CopyUpPolicy::Bup, &s, 3), Some(0));
        assert_eq!(copy_up(CopyUpPolicy::Bu, &s, 3), Some(1));
        assert_eq!(
            copy_up(CopyUpPolicy::Bu, &s, 0),
            None,
            "nothing above the top"
        );
        assert_eq!(copy_up(CopyUpPolicy::Tdp, &slots("r r"), 1), None);
    }
}
