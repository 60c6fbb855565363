//! Criterion benches of the union algorithms, each next to a baseline in
//! the same group:
//!
//! - `merged readdir 3x10k`: merged readdir of three 10,000-entry layers
//!   with 1,000 whiteouts (`readdir::merge`) vs a plain `BTreeMap` merge
//!   that ignores whiteouts.
//! - `lookup through N branches` (N = 1, 5, 20 read-only branches, the
//!   name only in the bottom one): `UnionFs::lookup` (+ `forget`, so the
//!   inode table stays one node) vs a naive union's raw `openat` chain
//!   (`open_path_at` in each branch directory top-down until found, then
//!   `fstat`), and vs one `openat`+`fstat` in the bottom branch alone (the
//!   floor: no union at all).
//! - `copy-up by size` (4 KiB, 1 MiB, 64 MiB, and a 1 GiB sparse file with
//!   three 4 KiB data extents): `copy_up::copy_data` (the data part:
//!   extents by SEEK_DATA/SEEK_HOLE, reflink else `copy_file_range`,
//!   holes kept) and `copy_up::stage` (the whole staging of a copy-up into
//!   the workdir of a real `Upper`: create, data, owner, xattrs, mode,
//!   times, recorded inode number; `durable` off so that neither side
//!   fsyncs) vs `std::fs::copy` of the same file. `std::fs::copy` also
//!   uses `copy_file_range` on Linux, but over the whole length: it does not
//!   keep holes, so the sparse copy comes out 1 GiB dense.
//! - `inode table 10k remember+get+forget per thread` (1 and 2 threads,
//!   each on its own inode numbers): `inode::InodeTable` (a `DashMap`) vs a
//!   `Mutex<HashMap<u64, Arc<node>>>` doing the same work on a node of the
//!   same shape (kind, atomic lookup count, `RwLock<NodeState>`).
//!
//! Everything is on the tempdir's filesystem (`$TMPDIR`, else `/tmp`).
//! Run with `cargo bench --bench union` (about 3.5 minutes on 2 cores, a
//! good part of it plotting; `-- --noplot` skips that). Filter with e.g.
//! `cargo bench --bench union -- 'copy-up'` (each group's fixtures are
//! still built: the copy-up sources, 64 MiB and 1 GiB sparse, included).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::hash_map::Entry as HashEntry;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode,
};
use nix::sys::stat::FileStat;
use unionfs::backing::{Backings, DEFAULT_CACHED_FDS};
use unionfs::branch::{Branch, BranchId};
use unionfs::copy_up::{copy_data, stage, CopyUpData};
use unionfs::inode::{Ino, InodeTable, Kind, Layer, NodeState, ROOT_INO};
use unionfs::mode::Mode;
use unionfs::ops::{CoreOptions, UnionFs};
use unionfs::readdir::{merge, LayerEntry};
use unionfs::stack::BranchStack;
use unionfs::sys::fs::data_extents;
use unionfs::sys::fs::{fstat, open_path_abs, open_path_at};
use unionfs::upper::{Upper, XattrNs};
use unionfs::whiteout::WhiteoutFormat;

// ---------------------------------------------------------------------------
// Merged readdir.

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
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
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

// ---------------------------------------------------------------------------
// Lookup through deep branch stacks.

/// A naive union's lookup: `openat` in each branch directory, top-down,
/// until one has the name; then `fstat` it.
fn openat_chain(dirs: &[File], name: &OsStr) -> FileStat {
    for d in dirs {
        match open_path_at(d.as_fd(), name) {
            Ok(fd) => return fstat(fd.as_fd()).unwrap(),
            Err(e) if e.is_not_found() => {}
            Err(e) => panic!("openat: {e}"),
        }
    }
    panic!("{name:?} in no branch")
}

fn bench_lookup(c: &mut Criterion) {
    let name = OsStr::new("deep");
    let mut g = c.benchmark_group("lookup through N branches");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for n in [1u16, 5, 20] {
        let dir = tempfile::tempdir().unwrap();
        let mut branches = Vec::new();
        let mut dirs = Vec::new();
        let backings = Backings::new(DEFAULT_CACHED_FDS);
        for i in 0..n {
            let p = dir.path().join(format!("b{i}"));
            std::fs::create_dir(&p).unwrap();
            if i == n - 1 {
                std::fs::write(p.join("deep"), b"x").unwrap();
            }
            branches.push(Branch::open(BranchId(i), &p, Mode::RO_WH, false, &backings).unwrap());
            dirs.push(File::open(&p).unwrap());
        }
        let stack = BranchStack::new(branches, Vec::new(), backings);
        let fs = UnionFs::new(
            stack,
            CoreOptions {
                name_max: 255,
                ..CoreOptions::default()
            },
        )
        .unwrap();
        let root = ROOT_INO;
        g.bench_with_input(BenchmarkId::new("UnionFs::lookup", n), &n, |b, _| {
            b.iter(|| {
                let e = fs.lookup(root, black_box(name)).unwrap();
                fs.forget(e.attr.ino, 1);
                black_box(e)
            })
        });
        g.bench_with_input(BenchmarkId::new("baseline openat chain", n), &n, |b, _| {
            b.iter(|| black_box(openat_chain(&dirs, black_box(name))))
        });
        let bottom = dirs.last().unwrap();
        g.bench_with_input(
            BenchmarkId::new("baseline openat+fstat in bottom branch", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let fd = open_path_at(bottom.as_fd(), black_box(name)).unwrap();
                    black_box(fstat(fd.as_fd()).unwrap())
                })
            },
        );
    }
    g.finish();
}

/// GETATTR of a directory merged from two branches: what a warm walk asks
/// once per directory (the kernel marks a directory's atime stale after
/// each listing), against the `fstat` it comes down to.
fn bench_getattr(c: &mut Criterion) {
    let mut g = c.benchmark_group("getattr of a merged directory");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let backings = Backings::new(DEFAULT_CACHED_FDS);
    let mut branches = Vec::new();
    for i in 0..2u16 {
        let p = dir.path().join(format!("b{i}"));
        std::fs::create_dir_all(p.join("d")).unwrap();
        branches.push(Branch::open(BranchId(i), &p, Mode::RO_WH, false, &backings).unwrap());
    }
    let stack = BranchStack::new(branches, Vec::new(), backings);
    let fs = UnionFs::new(
        stack,
        CoreOptions {
            name_max: 255,
            prefetch: false,
            ..CoreOptions::default()
        },
    )
    .unwrap();
    let d = fs.lookup(ROOT_INO, OsStr::new("d")).unwrap().attr.ino;
    g.bench_function("UnionFs::getattr", |b| {
        b.iter(|| black_box(fs.getattr(black_box(d)).unwrap()))
    });
    let top = open_path_abs(&dir.path().join("b0/d")).unwrap();
    g.bench_function("baseline fstat", |b| {
        b.iter(|| black_box(fstat(black_box(top.as_fd())).unwrap()))
    });
    g.finish();
}

// ---------------------------------------------------------------------------
// Copy-up by size.

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Removes its file when dropped. Routines return one, and criterion drops
/// a routine's outputs after it stops the clock: the unlink is not timed.
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).unwrap();
    }
}

/// Discards a staged copy when dropped (untimed, as `Unlink`).
struct Discard<'a> {
    upper: &'a Upper,
    tmp: OsString,
    _fd: OwnedFd,
}

impl Drop for Discard<'_> {
    fn drop(&mut self) {
        self.upper.discard(&self.tmp);
    }
}

/// Writes `len` bytes of non-zero data (no holes) to `path`.
fn dense_file(path: &Path, len: u64) {
    let mut f = File::create(path).unwrap();
    let chunk: Vec<u8> = (0..MIB.min(len)).map(|i| (i % 251 + 1) as u8).collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64);
        f.write_all(&chunk[..n as usize]).unwrap();
        left -= n;
    }
}

/// A 1 GiB file with 4 KiB of data at its start, middle and end; holes between.
fn sparse_file(path: &Path) {
    let f = File::create(path).unwrap();
    f.set_len(GIB).unwrap();
    let data = vec![0x5au8; 4 * KIB as usize];
    for off in [0, GIB / 2, GIB - 4 * KIB] {
        f.write_all_at(&data, off).unwrap();
    }
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// The union's data copy, timed from opening the source to closing the
/// copy, as `std::fs::copy` is.
/// Benches a path-to-path copy of `src`, timed up to the closed copy; the
/// copy is removed untimed (`Unlink`).
fn path_copy(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    label: &str,
    src: &Path,
    fresh: &dyn Fn() -> PathBuf,
    copy: fn(&Path, &Path),
) {
    g.bench_with_input(BenchmarkId::new(name, label), src, |b, src| {
        b.iter_batched(
            fresh,
            |dst| {
                copy(src, &dst);
                Unlink(dst)
            },
            BatchSize::PerIteration,
        )
    });
}

fn copy_with_copy_data(src: &Path, dst: &Path) {
    let input = File::open(src).unwrap();
    let size = input.metadata().unwrap().len();
    let out = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .unwrap();
    copy_data(input.as_fd(), out.as_fd(), size).unwrap();
}

fn bench_copy_up(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower");
    let out = dir.path().join("out");
    let upper_dir = dir.path().join("upper");
    for d in [&lower, &out, &upper_dir] {
        std::fs::create_dir(d).unwrap();
    }
    let upper_branch = Branch::open(
        BranchId(0),
        &upper_dir,
        Mode::RW,
        false,
        &Backings::new(DEFAULT_CACHED_FDS),
    )
    .unwrap();
    let mut upper = Upper::open(
        &upper_branch,
        None,
        WhiteoutFormat::Aufs,
        false,
        XattrNs::User,
    )
    .unwrap();
    // Neither `copy_data` nor `std::fs::copy` syncs; the union's default
    // (durable) copy-up adds an fdatasync before the rename.
    upper.durable = false;
    let upper = upper;
    let seq = AtomicU64::new(0);
    let fresh = || out.join(format!("c{}", seq.fetch_add(1, Ordering::Relaxed)));

    // (label, size, sparse, samples, measurement seconds for the union's
    // side, for the baseline). Flat sampling throughout: every sample the
    // same number of iterations, at least one, so a big copy runs about a
    // dozen times (warm-up included), not the 55 of linear sampling. Wall
    // time exceeds the measurement time by the untimed unlinks. The
    // baseline's 1 GiB sparse copy writes 1 GiB (about 0.4 s here, the
    // first one several seconds).
    let cases = [
        ("4KiB", 4 * KIB, false, 30, 2, 2),
        ("1MiB", MIB, false, 30, 2, 2),
        ("64MiB", 64 * MIB, false, 10, 3, 3),
        ("1GiB-sparse", GIB, true, 10, 2, 4),
    ];
    let mut g = c.benchmark_group("copy-up by size");
    for (label, size, sparse, samples, secs, base_secs) in cases {
        let src = lower.join(label);
        if sparse {
            sparse_file(&src);
        } else {
            dense_file(&src, size);
        }
        // What is measured is what is meant: the source has the intended
        // extents, and the union's copy keeps its holes.
        {
            let f = File::open(&src).unwrap();
            let extents = data_extents(f.as_fd(), size).unwrap();
            assert_eq!(extents.len(), if sparse { 3 } else { 1 }, "{extents:?}");
            let probe = fresh();
            copy_with_copy_data(&src, &probe);
            assert_eq!(std::fs::metadata(&probe).unwrap().len(), size);
            if sparse {
                assert!(allocated(&probe) < MIB, "copy_data filled holes");
            }
            std::fs::remove_file(&probe).unwrap();
        }
        let src_path_fd =
            open_path_at(open_path_abs(&lower).unwrap().as_fd(), label.as_ref()).unwrap();
        let st = fstat(src_path_fd.as_fd()).unwrap();

        g.sample_size(samples)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500));
        g.measurement_time(Duration::from_secs(secs));

        // All three are timed from the source (an open O_PATH fd for
        // `stage`, which the union holds from the lookup; a path for the
        // others) to a complete, closed copy; creating the copy is timed,
        // removing it is not (see `Unlink`).
        path_copy(&mut g, "copy_up::copy_data", label, &src, &fresh, |s, d| {
            copy_with_copy_data(s, d)
        });
        let ino = AtomicU64::new(1000);
        g.bench_with_input(BenchmarkId::new("copy_up::stage", label), &st, |b, st| {
            b.iter_batched(
                || ino.fetch_add(1, Ordering::Relaxed),
                |ino| {
                    let (tmp, fd) = stage(
                        &upper,
                        &src_path_fd,
                        &src_path_fd,
                        st,
                        CopyUpData::Full,
                        ino,
                        false,
                    )
                    .unwrap();
                    Discard {
                        upper: &upper,
                        tmp,
                        _fd: fd,
                    }
                },
                BatchSize::PerIteration,
            )
        });
        // Note: std::fs::copy does not keep holes (copy_file_range over the
        // whole length), so for the sparse case it writes 1 GiB of zeros.
        g.measurement_time(Duration::from_secs(base_secs));
        path_copy(
            &mut g,
            "baseline std::fs::copy",
            label,
            &src,
            &fresh,
            |s, d| {
                std::fs::copy(s, d).unwrap();
            },
        );
        std::fs::remove_file(&src).unwrap();
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// Inode table under concurrency.

/// Inode numbers each thread remembers, gets and forgets per iteration.
const OPS: u64 = 10_000;

/// The baseline's node: the same shape as `inode::Node`.
struct BaseNode {
    kind: Kind,
    lookups: AtomicU64,
    state: parking_lot::RwLock<NodeState>,
}

/// `InodeTable`'s operations over one `Mutex<HashMap>`.
#[derive(Default)]
struct MutexTable {
    nodes: Mutex<HashMap<u64, Arc<BaseNode>>>,
}

impl MutexTable {
    fn remember(&self, ino: u64, kind: Kind, state: NodeState) -> Arc<BaseNode> {
        let mut m = self.nodes.lock().unwrap();
        match m.entry(ino) {
            HashEntry::Occupied(e) => {
                let node = Arc::clone(e.get());
                node.lookups.fetch_add(1, Ordering::Relaxed);
                drop(m);
                *node.state.write() = state;
                node
            }
            HashEntry::Vacant(e) => {
                let node = Arc::new(BaseNode {
                    kind,
                    lookups: AtomicU64::new(1),
                    state: parking_lot::RwLock::new(state),
                });
                e.insert(Arc::clone(&node));
                node
            }
        }
    }

    fn get(&self, ino: u64) -> Option<Arc<BaseNode>> {
        self.nodes.lock().unwrap().get(&ino).cloned()
    }

    fn forget(&self, ino: u64, n: u64) {
        let mut m = self.nodes.lock().unwrap();
        if let HashEntry::Occupied(e) = m.entry(ino) {
            let before = e.get().lookups.fetch_sub(n, Ordering::Relaxed);
            if before <= n {
                e.remove();
            }
        }
    }
}

/// Runs `work(thread index)` on `threads` scoped threads and waits for them.
fn on_threads(threads: u64, work: impl Fn(u64) + Sync) {
    std::thread::scope(|s| {
        for t in 0..threads {
            let work = &work;
            s.spawn(move || work(t));
        }
    });
}

fn bench_inode_table(c: &mut Criterion) {
    // A realistic node state: one layer on a real branch object.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let branch = Branch::open(
        BranchId(0),
        dir.path(),
        Mode::RO_WH,
        false,
        &Backings::new(DEFAULT_CACHED_FDS),
    )
    .unwrap();
    let fd = open_path_at(branch.root(), OsStr::new("f")).unwrap();
    let state = NodeState {
        parent: ROOT_INO,
        name: "f".into(),
        layers: vec![Layer::new(&branch, fd, PathBuf::from("f"))],
        generation: 0,
    };
    let root_state = NodeState {
        parent: ROOT_INO,
        name: OsString::new(),
        layers: Vec::new(),
        generation: 0,
    };

    let mut g = c.benchmark_group(format!(
        "inode table {}k remember+get+forget per thread",
        OPS / 1000
    ));
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for threads in [1u64, 2] {
        // Thread t works on inode numbers [base(t), base(t) + OPS): each
        // remembered (the table grows to OPS nodes per thread), got, then
        // forgotten (the table is back to the root).
        let base = |t: u64| 2 + t * OPS;
        let table = InodeTable::default();
        table.insert_root(root_state.clone());
        g.bench_with_input(
            BenchmarkId::new("InodeTable", threads),
            &threads,
            |b, &n| {
                b.iter(|| {
                    on_threads(n, |t| {
                        let inos = base(t)..base(t) + OPS;
                        for i in inos.clone() {
                            black_box(table.remember(Ino(i), Kind::File, state.clone()));
                        }
                        for i in inos.clone() {
                            black_box(table.get(Ino(i)).unwrap());
                        }
                        for i in inos {
                            table.forget(Ino(i), 1);
                        }
                    })
                })
            },
        );
        assert_eq!(table.len(), 1);
        let base_table = MutexTable::default();
        g.bench_with_input(
            BenchmarkId::new("baseline Mutex<HashMap>", threads),
            &threads,
            |b, &n| {
                b.iter(|| {
                    on_threads(n, |t| {
                        let inos = base(t)..base(t) + OPS;
                        for i in inos.clone() {
                            black_box(base_table.remember(i, Kind::File, state.clone()));
                        }
                        for i in inos.clone() {
                            let node = base_table.get(i).unwrap();
                            black_box((node.kind, &node));
                        }
                        for i in inos {
                            base_table.forget(i, 1);
                        }
                    })
                })
            },
        );
        assert!(base_table.nodes.lock().unwrap().is_empty());
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_merge,
    bench_getattr,
    bench_lookup,
    bench_copy_up,
    bench_inode_table
);
criterion_main!(benches);
