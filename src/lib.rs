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

/// The allocator of every binary linking this crate: jemalloc. A lookup
/// makes a dozen small allocations that live as long as the kernel holds
/// the node, and glibc's malloc served most of them from its slow path
/// (`_int_malloc`, 9% of a lookup's time). `examples/corewalk.rs` on the
/// bench image, medians of 12 rounds: lookups 44.5 → 41.0 ms, readdirplus
/// walk 53.1 → 49.3 ms. Its arenas are shared by the threads, so the
/// memory of nodes looked up on one event loop and forgotten on another
/// goes back from either (`sys::process::trim_memory`); mimalloc, as fast
/// here, keeps a page with the thread that allocated it, and an idle loop
/// kept a walk's memory after the kernel forgot it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
