//! corewalk: what the union's core costs per name, without FUSE.
//!
//! `corewalk DIR [ROUNDS]` opens DIR as the one read-only branch of a union
//! (no upper, no read-ahead thread) and times, in one process, ROUNDS times
//! each (default 3; the first on a fresh union, as a fresh mount is):
//!
//! - `readdirplus walk`: `UnionFs::readdirplus` of every directory, full
//!   answers, going down into the subdirectories, as a stat walk through a
//!   mount has the daemon do (every node forgotten after the round);
//! - `lookups`: `UnionFs::lookup` of every name, directory by directory, as
//!   a first `git status` has it do for its `lstat`s;
//! - `syscalls`: what those lookups cannot do without — one `fstatat` per
//!   name relative to its open directory, and a `listxattrat` for each
//!   regular file a lookup reads the metacopy marker of (`lookup.rs`,
//!   `may_be_metacopy`: not empty, and sparse or within one block).
//!
//! A round through a mount costs this plus the FUSE round trips, which
//! `examples/floorfs.rs` measures; the difference between `lookups` and
//! `syscalls` is the union's own bookkeeping. The page cache should be warm
//! (walk DIR once first) so that the rows compare CPU, not the disk.
//! docs/BENCHMARKS.md, session 16, has figures.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use unionfs::backing::{Backings, DEFAULT_CACHED_FDS};
use unionfs::branch::{Branch, BranchId};
use unionfs::handle::Fh;
use unionfs::inode::{Ino, Kind, ROOT_INO};
use unionfs::mode::Mode;
use unionfs::ops::{CoreOptions, UnionFs};
use unionfs::stack::BranchStack;

/// The directories of the tree (relative paths, parents first) and the
/// names in each.
type Tree = Vec<(PathBuf, Vec<OsString>)>;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), rounds) = (args.next(), args.next()) else {
        eprintln!("usage: corewalk DIR [ROUNDS]");
        return ExitCode::from(2);
    };
    let rounds = match rounds.map(|r| r.to_string_lossy().parse::<u32>()) {
        None => 3,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("corewalk: ROUNDS must be a positive number");
            return ExitCode::from(2);
        }
    };
    match run(Path::new(&dir), rounds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corewalk: {}: {e}", Path::new(&dir).display());
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &Path, rounds: u32) -> Result<(), Box<dyn std::error::Error>> {
    let tree = tree(dir)?;
    let names: usize = tree.iter().map(|(_, v)| v.len()).sum();
    println!(
        "{}: {} directories, {names} names",
        dir.display(),
        tree.len()
    );
    let fs = union_of(dir)?;
    for round in 1..=rounds {
        let t = Instant::now();
        let mut held = Vec::new();
        let n = walk(&fs, ROOT_INO, &mut held)?;
        report("readdirplus walk", round, n, t.elapsed());
        for ino in held {
            fs.forget(ino, 1);
        }
    }
    let fs = union_of(dir)?;
    for round in 1..=rounds {
        let t = Instant::now();
        let held = lookups(&fs, &tree)?;
        report("lookups", round, held.len(), t.elapsed());
        for ino in held {
            fs.forget(ino, 1);
        }
    }
    let dirs = tree
        .iter()
        .map(|(rel, v)| Ok((File::open(dir.join(rel))?, v)))
        .collect::<std::io::Result<Vec<_>>>()?;
    for round in 1..=rounds {
        let t = Instant::now();
        let mut n = 0;
        for (d, v) in &dirs {
            for name in v.iter() {
                let st = nix::sys::stat::fstatat(
                    d,
                    name.as_os_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                let allocated = st.st_blocks.saturating_mul(512);
                let small = allocated < st.st_size || allocated <= st.st_blksize.max(4096);
                if (st.st_mode & libc::S_IFMT) == libc::S_IFREG && st.st_size > 0 && small {
                    // Absent xattrs are no error here; only the call's cost counts.
                    let _ = unionfs::sys::xattr::list_at(d.as_fd(), name);
                }
                n += 1;
            }
        }
        report("syscalls", round, n, t.elapsed());
    }
    Ok(())
}

/// A union of `dir` alone, read-only, without the read-ahead thread.
fn union_of(dir: &Path) -> Result<UnionFs, Box<dyn std::error::Error>> {
    let backings = Backings::new(DEFAULT_CACHED_FDS);
    let branch = Branch::open(BranchId(0), dir, Mode::RO_WH, false, &backings)?;
    let stack = BranchStack::new(vec![branch], Vec::new(), backings);
    Ok(UnionFs::new(
        stack,
        CoreOptions {
            name_max: 255,
            prefetch: false,
            ..CoreOptions::default()
        },
    )?)
}

fn tree(dir: &Path) -> std::io::Result<Tree> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir.join(&rel))? {
            let e = e?;
            if e.file_type()?.is_dir() {
                todo.push(rel.join(e.file_name()));
            }
            names.push(e.file_name());
        }
        out.push((rel, names));
    }
    Ok(out)
}

/// Readdirplus of `ino` and, depth first, of its subdirectories; the
/// number of entries answered. The nodes looked up go to `held`.
fn walk(fs: &UnionFs, ino: Ino, held: &mut Vec<Ino>) -> Result<usize, Box<dyn std::error::Error>> {
    let mut n = 0;
    let mut dirs = Vec::new();
    fs.readdirplus(ino, Fh(0), 0, true, |_, entry| {
        n += 1;
        if let Some(e) = entry {
            held.push(e.attr.ino);
            if e.attr.kind == Kind::Dir {
                dirs.push(e.attr.ino);
            }
        }
        false
    })?;
    for d in dirs {
        n += walk(fs, d, held)?;
    }
    Ok(n)
}

/// `lookup` of every name of `tree`, parents first; the nodes looked up.
fn lookups(fs: &UnionFs, tree: &Tree) -> Result<Vec<Ino>, Box<dyn std::error::Error>> {
    let mut held = Vec::new();
    // (the tree lists each directory after its parent)
    let mut dirs: HashMap<PathBuf, Ino> = HashMap::from([(PathBuf::new(), ROOT_INO)]);
    for (rel, names) in tree {
        let parent = *dirs.get(rel).ok_or("a directory before its parent")?;
        for name in names {
            let e = fs.lookup(parent, name)?;
            held.push(e.attr.ino);
            if e.attr.kind == Kind::Dir {
                dirs.insert(rel.join(name), e.attr.ino);
            }
        }
    }
    Ok(held)
}

fn report(what: &str, round: u32, n: usize, dt: Duration) {
    let per = dt.as_secs_f64() * 1e6 / n.max(1) as f64;
    println!(
        "{what:17} round {round}: {n} names in {:6.1} ms ({per:.2} µs a name)",
        dt.as_secs_f64() * 1e3
    );
}
