//! Criterion benches of the union algorithms, each next to a baseline:
//! - merged readdir of three 10,000-entry layers with 1,000 whiteouts
//!   (`readdir::merge`) vs a plain `BTreeMap` merge that ignores whiteouts;
//! - a lookup through a stack of five branches (`UnionFs::lookup`, the
//!   name in the bottom branch) vs a raw `openat`+`fstat` in that branch.
//!
//! Run with `cargo bench --bench union`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use unionfs::branch::{Branch, BranchId, BranchMode, BranchStack};
use unionfs::inode::{Ino, Kind};
use unionfs::ops::{CoreOptions, UnionFs};
use unionfs::readdir::{merge, LayerEntry};

fn layers() -> Vec<Vec<LayerEntry>> {
    (0..3u64)
        .map(|l| {
            let mut v: Vec<LayerEntry> = (0..10_000u64)
                .map(|i| LayerEntry::Object {
                    name: format!("entry-{}", i * 3 + l).into(),
                    kind: Kind::File,
                    ino: l * 100_000 + i,
                })
                .collect();
            if l < 2 {
                v.extend(
                    (0..500u64).map(|i| LayerEntry::Whiteout(format!("entry-{}", i * 7).into())),
                );
            }
            v
        })
        .collect()
}

fn bench_merge(c: &mut Criterion) {
    let ls = layers();
    let mut g = c.benchmark_group("merged readdir 3x10k");
    g.bench_function("readdir::merge", |b| {
        b.iter(|| black_box(merge(black_box(&ls))))
    });
    g.bench_function("baseline BTreeMap merge", |b| {
        b.iter(|| {
            let mut m = BTreeMap::new();
            for l in black_box(&ls) {
                for e in l {
                    if let LayerEntry::Object { name, ino, .. } = e {
                        m.entry(name.clone()).or_insert(*ino);
                    }
                }
            }
            black_box(m)
        })
    });
    g.finish();
}

fn bench_lookup(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut branches = Vec::new();
    for i in 0..5u16 {
        let p = dir.path().join(format!("b{i}"));
        std::fs::create_dir(&p).unwrap();
        if i == 4 {
            std::fs::write(p.join("deep"), b"x").unwrap();
        }
        branches.push(Branch::open(BranchId(i), &p, BranchMode::ReadOnly, false).unwrap());
    }
    let bottom = dir.path().join("b4");
    let stack = Arc::new(BranchStack::new(branches));
    let fs = UnionFs::new(stack, None, CoreOptions { name_max: 255 }).unwrap();
    let root = Ino(1);
    let mut g = c.benchmark_group("lookup through 5 branches");
    g.bench_function("UnionFs::lookup", |b| {
        b.iter(|| {
            let e = fs.lookup(root, OsStr::new("deep")).unwrap();
            fs.forget(e.attr.ino, 1);
            black_box(e)
        })
    });
    let bfd = std::fs::File::open(&bottom).unwrap();
    g.bench_function("baseline openat+fstat in one branch", |b| {
        b.iter(|| {
            let fd = unionfs::sys::fs::open_path_at(bfd.as_fd(), OsStr::new("deep")).unwrap();
            black_box(unionfs::sys::fs::fstat(fd.as_fd()).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_merge, bench_lookup);
criterion_main!(benches);
