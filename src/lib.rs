//! unionfs: a union filesystem on FUSE.
//!
//! Read-only lower branches merged under one writable upper, AUFS style:
//! the topmost branch wins, deletions are whiteouts, directories replaced
//! wholesale are opaque. See docs/ARCHITECTURE.md for the layering; in short,
//! `cli`/`config` -> `daemon` -> `fuse` (the only fuser-aware module) ->
//! `ops` (the core, returning `Result`) -> `lookup`/`readdir` -> `inode`,
//! `handle`, `whiteout`, `branch` -> `sys` (every syscall and `unsafe`).

pub mod backing;
pub mod branch;
pub mod cli;
pub mod config;
pub mod copy_up;
pub mod daemon;
pub mod error;
pub mod faults;
pub mod fuse;
pub mod handle;
pub mod inode;
pub mod layer;
pub mod lookup;
pub mod ops;
pub mod readdir;
#[allow(unsafe_code)]
pub mod sys;
pub mod udba;
pub mod upper;
pub mod whiteout;
