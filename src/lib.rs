//! unionfs: a union filesystem on FUSE.
//!
//! Read-only lower branches merged under one writable upper, AUFS style:
//! the topmost branch wins, deletions are whiteouts, directories replaced
//! wholesale are opaque. See docs/ARCHITECTURE.md for the layering; in short,
//! `cli`/`config` -> `daemon` -> `fuse` (the only fuser-aware module) ->
//! `ops` (the core, returning `Result`) -> `copy_up`/`lookup`/`readdir` ->
//! `stack` (the swappable branch snapshot) -> `upper` -> `inode`, `handle`
//! -> `branch`, `backing`, `whiteout` -> `sys` (every syscall and `unsafe`).
//! Imports point down only (no cycles); all state is per `UnionFs`.

pub mod backing;
pub mod branch;
pub mod cli;
pub mod config;
pub mod control;
pub mod copy_up;
pub mod daemon;
pub mod error;
pub mod faults;
pub mod fuse;
pub mod handle;
pub mod inode;
pub mod layer;
pub mod layer_index;
pub mod live;
pub mod lookup;
pub mod mode;
pub mod ops;
pub mod policy;
pub mod prefetch;
pub mod publish;
pub mod readdir;
pub mod sparse;
pub mod stack;
#[allow(unsafe_code)]
pub mod sys;
pub mod udba;
pub mod upper;
pub mod whiteout;

/// The allocator of every binary linking this crate: mimalloc, version 2,
/// without transparent huge pages. A lookup makes a dozen small
/// allocations that live as long as the kernel holds the node, and
/// glibc's malloc served most of them from its slow path (9% of a
/// lookup's time). `examples/corewalk.rs` on the bench image, medians of
/// 12 rounds: lookups 45.0 → 41.0 ms, readdirplus walk 54.5 → 51.1 ms; a
/// first `git status` cost the daemon 75 instead of 85 ms of CPU
/// (`scripts/fuse-opcount.py`, 6 runs). Its memory after a stat walk:
/// 18.2–18.6 MiB resident against glibc's 17.4. mimalloc 3 (the crate's
/// default) and huge pages held 25–34 MiB before the first request and
/// 36–59 MiB after the walk: they are off. Memory freed when the kernel
/// forgets nodes goes back at `sys::process::trim_memory`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
