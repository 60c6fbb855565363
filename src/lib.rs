//! unionfs: a union filesystem on FUSE.
pub fn placeholder() {}
