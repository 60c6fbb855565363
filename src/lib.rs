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
