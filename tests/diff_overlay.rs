//! Differential tests: the same lower branches mounted by kernel overlayfs and by unionfs
//! must look the same to a user (types, modes, owners, sizes of non-directories, contents,
//! mtimes, symlink targets, user xattrs, nlink incl. 1 for merged directories, and the
//! same hard-link partition of st_ino). Only the overlay formats the kernel understands are
//! used: char 0:0 whiteouts, trusted.overlay.opaque=y/x, xattr whiteouts and
//! trusted.overlay.redirect (mounted with redirect_dir=on).
//!
//! Harness self-check: `UNIONFS_TEST_SUT=overlay cargo test --test diff_overlay` replaces
//! unionfs with a second kernel overlay mount, so every test must pass; the test
//! `harness_kernel_overlay_twice` does the same for two fixtures in every run.
//!
//! One known kernel quirk is normalised on the KERNEL side only: in a directory that is not
//! merged (it exists in one layer), overlayfs readdir lists whiteouts although lookup says
//! ENOENT. Such "listed but ENOENT" entries are dropped from the kernel's snapshot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// The system under test: unionfs (default) or the kernel overlay (harness self-check).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sut {
    Unionfs,
    /// kernel overlayfs mounted with these options
    KernelOverlay(&'static str),
}

fn sut_from_env() -> Sut {
    match std::env::var("UNIONFS_TEST_SUT").as_deref() {
        Ok("overlay") => Sut::KernelOverlay(KERNEL_OPTS),
        _ => Sut::Unionfs,
    }
}

const KERNEL_OPTS: &str = "redirect_dir=on,index=on";

/// Drops entries that readdir listed but lstat could not find (ENOENT): the kernel
/// overlayfs quirk described at the top. Returns the dropped paths.
fn normalize_kernel(s: &mut Snapshot) -> Vec<PathBuf> {
    let gone: Vec<PathBuf> = s
        .iter()
        .filter(|(_, e)| e.kind == Kind::Missing("ENOENT".to_string()))
        .map(|(p, _)| p.clone())
        .collect();
    for p in &gone {
        s.remove(p);
    }
    gone
}

/// Snapshot of one fresh mount of `lowers` (with its own empty upper and workdir).
fn mounted_snapshot(s: &Scratch, tag: &str, lowers: &[&Path], sut: Sut) -> Snapshot {
    let upper = s.dir(&format!("{tag}-upper"));
    let work = s.dir(&format!("{tag}-work"));
    let mnt = s.dir(&format!("{tag}-mnt"));
    // the roots of the views come from the uppers: make them look alike
    fix_times(&upper, 1_600_000_000);
    let m = match sut {
        Sut::KernelOverlay(opts) => Mount::overlay(lowers, Some((&upper, &work)), &mnt, opts),
        Sut::Unionfs => Mount::unionfs(lowers, Some(&upper), &mnt),
    };
    let mut snap = snapshot(&m.mnt);
    m.unmount();
    if matches!(sut, Sut::KernelOverlay(_)) {
        let dropped = normalize_kernel(&mut snap);
        if !dropped.is_empty() {
            eprintln!(
                "{tag}: dropped {} kernel readdir-only whiteouts",
                dropped.len()
            );
        }
    }
    snap
}

/// Mounts `lowers` with the kernel overlay and with the system under test and compares.
/// Returns the kernel's view for additional assertions.
fn compare_with_kernel(s: &Scratch, lowers: &[&Path], sut: Sut) -> Snapshot {
    let before = snapshot_all(lowers);
    let kernel = mounted_snapshot(s, "kernel", lowers, Sut::KernelOverlay(KERNEL_OPTS));
    let theirs = mounted_snapshot(s, "sut", lowers, sut);
    assert_unchanged(&before);
    let cmp = Cmp {
        root_mtime: false,
        ..Cmp::VIEW
    };
    assert_tree_eq(
        &format!("{sut:?} view differs from kernel overlayfs (expected = kernel)"),
        &kernel,
        &theirs,
        cmp,
    );
    assert_no_problems(
        &format!("{sut:?} st_ino rules (reference: kernel overlay hard-link partition)"),
        &ino_problems(&kernel, &theirs),
    );
    kernel
}

fn can_run(sut: Sut) -> bool {
    match sut {
        Sut::KernelOverlay(_) => can_mount_overlay(),
        Sut::Unionfs => can_mount_fuse(),
    }
}

// ---------------------------------------------------------------------------------------
// Hand-made fixture with every kernel format
// ---------------------------------------------------------------------------------------

fn c(branch: &str, path: &str) -> Vec<u8> {
    format!("{branch}:{path}\n").into_bytes()
}

fn build_kernel_fixture(l1: &Path, l2: &Path, l3: &Path) {
    // 1. char 0:0 whiteout of a file and of a directory
    file(l3, "a", &c("l3", "a"), 0o644);
    wh_chardev(l2, "a");
    file(l3, "gone/deep/f", &c("l3", "gone"), 0o644);
    wh_chardev(l1, "gone");
    // 2. hard-linked whiteouts (the kernel shares one inode)
    file(l2, "w1", &c("l2", "w1"), 0o644);
    file(l3, "w2", &c("l3", "w2"), 0o644);
    wh_chardev(l1, "w1");
    hardlink(l1, "w1", "w2");
    // 3. opaque=y: /opq holds only b (the case fuse-overlayfs gets wrong)
    file(l3, "opq/a", &c("l3", "opq/a"), 0o644);
    file(l2, "opq/b", &c("l2", "opq/b"), 0o644);
    opaque_xattr(l2, "opq", "trusted.overlay.opaque", b"y");
    file(l1, "opq/c", &c("l1", "opq/c"), 0o644); // merges with l2's opaque opq
                                                 // 4. opaque=x is not opaque; its xattr whiteouts hide names below
    file(l2, "xd/p", &c("l2", "xd/p"), 0o644);
    file(l3, "xd/q", &c("l3", "xd/q"), 0o644);
    mkdir(l1, "xd", 0o755);
    wh_xattr(l1, "xd/p", Ns::Trusted);
    file(l1, "xd/r", &c("l1", "xd/r"), 0o644);
    // 5. absolute redirect (dir moved) with the whiteout a kernel rename leaves
    file(l2, "orig/f", &c("l2", "orig/f"), 0o644);
    file(l2, "orig/sub/g", &c("l2", "orig/sub/g"), 0o644);
    file(l1, "moved/mine", &c("l1", "moved/mine"), 0o644);
    redirect(l1, "moved", "/orig");
    wh_chardev(l1, "orig");
    file(l3, "elsewhere/deep/k", &c("l3", "elsewhere/deep/k"), 0o644);
    mkdir(l1, "to/here", 0o755);
    redirect(l1, "to/here", "/elsewhere/deep");
    wh_chardev(l1, "elsewhere/deep");
    // 6. relative redirect (renamed in place)
    file(l3, "p/src/h", &c("l3", "p/src/h"), 0o644);
    file(l3, "p/stay", &c("l3", "p/stay"), 0o644);
    file(l2, "p/ren/own", &c("l2", "p/ren/own"), 0o644);
    redirect(l2, "p/ren", "src");
    wh_chardev(l2, "p/src");
    // 7. dir over file, file over dir
    file(l3, "t", &c("l3", "t"), 0o644);
    file(l2, "t/inner", &c("l2", "t/inner"), 0o644);
    file(l3, "u2/z", &c("l3", "u2/z"), 0o644);
    file(l1, "u2", &c("l1", "u2"), 0o644);
    // 8. dir over file over dir: the file ends the search
    file(l3, "v/bottom", &c("l3", "v/bottom"), 0o644);
    file(l2, "v", &c("l2", "v"), 0o644);
    file(l1, "v/top", &c("l1", "v/top"), 0o644);
    // 9. three-level merge with distinct modes/owners per layer
    for (l, tag, mode) in [(l1, "l1", 0o750), (l2, "l2", 0o705), (l3, "l3", 0o777)] {
        file(l, &format!("m/n/o/{tag}"), &c(tag, "m/n/o"), 0o644);
        file(l, &format!("m/{tag}"), &c(tag, "m"), 0o644);
        fs::set_permissions(
            at(l, "m/n"),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap();
    }
    chown(l1, "m", 1000, 1001);
    set_xattr(l1, "m", "user.merged", b"top");
    set_xattr(l2, "m", "user.merged", b"middle");
    // 10. hard links
    file(l2, "hl/a", &c("l2", "hl/a"), 0o640);
    hardlink(l2, "hl/a", "hl/b");
    file(l3, "hl/c", &c("l3", "hl/c"), 0o644);
    hardlink(l3, "hl/c", "top-c");
    // 11. special files, symlinks, modes, owners, xattrs
    fifo(l1, "fifo", 0o640);
    socket(l2, "sock");
    chardev(l3, "null", 1, 3, 0o666);
    blockdev(l3, "blk", 7, 200, 0o660);
    symlink(l1, "ln-abs", "/etc/passwd");
    symlink(l2, "ln-rel", "m/n/o");
    symlink(l3, "ln-dangling", "nowhere");
    file(l3, "suid", &c("l3", "suid"), 0o4755);
    file(l3, "sgid", &c("l3", "sgid"), 0o2711);
    mkdir(l3, "sticky", 0o1777);
    file(l2, "owned", &c("l2", "owned"), 0o600);
    chown(l2, "owned", 65534, 65534);
    chown(l1, "ln-abs", 1000, 1000);
    file(l2, "xa", &c("l2", "xa"), 0o644);
    set_xattr(l2, "xa", "user.one", b"1");
    set_xattr(l2, "xa", "user.two", b"");
    set_xattr(l2, "xa", "trusted.overlay.origin", b"hidden");
    // 12. a whiteout of a name that exists nowhere, in a merged dir
    wh_chardev(l1, "m/never-existed");
    // 13. a directory of one layer containing whiteouts (the kernel quirk)
    file(l1, "solo/f", &c("l1", "solo/f"), 0o644);
    wh_chardev(l1, "solo/wh");
    // 14. an empty file
    file(l2, "empty", b"", 0o644);
    fix_times(l1, 1_400_000_000);
    fix_times(l2, 1_300_000_000);
    fix_times(l3, 1_200_000_000);
}

fn handmade(sut: Sut, tag: &str) {
    if !can_run(sut) {
        return;
    }
    let s = Scratch::new(tag);
    let (l1, l2, l3) = (s.dir("l1"), s.dir("l2"), s.dir("l3"));
    build_kernel_fixture(&l1, &l2, &l3);
    let k = compare_with_kernel(&s, &[&l1, &l2, &l3], sut);
    // the fixture means what it is meant to mean (checks the harness, not the SUT)
    assert_eq!(children(&k, "/opq"), ["b", "c"]);
    assert_eq!(children(&k, "/xd"), ["q", "r"]);
    assert_eq!(children(&k, "/moved"), ["f", "mine", "sub"]);
    assert_eq!(children(&k, "/to/here"), ["k"]);
    assert_eq!(children(&k, "/p"), ["ren", "stay"]);
    assert_eq!(children(&k, "/p/ren"), ["h", "own"]);
    assert_eq!(children(&k, "/t"), ["inner"]);
    assert_eq!(children(&k, "/v"), ["top"]);
    assert_eq!(children(&k, "/m/n/o"), ["l1", "l2", "l3"]);
    assert_eq!(children(&k, "/solo"), ["f"]);
    for gone in [
        "/a",
        "/gone",
        "/w1",
        "/w2",
        "/orig",
        "/elsewhere/deep",
        "/p/src",
    ] {
        assert!(
            !k.contains_key(Path::new(gone)),
            "{gone} visible in the kernel view"
        );
    }
    assert_eq!(k[Path::new("/u2")].kind, Kind::File);
    assert_eq!(k[Path::new("/m")].nlink, 1, "merged dir nlink");
    assert_eq!(k[Path::new("/t")].nlink, 2, "dir over a file is not merged");
    assert_eq!(k[Path::new("/opq")].nlink, 1, "opq merges l1 and l2");
    assert_eq!(k[Path::new("/hl/a")].ino, k[Path::new("/hl/b")].ino);
    assert_eq!(
        k[Path::new("/xa")].xattrs,
        Ok(vec![
            ("user.one".to_string(), b"1".to_vec()),
            ("user.two".to_string(), Vec::new())
        ])
    );
}

#[test]
fn handmade_formats_vs_kernel_overlay() {
    handmade(sut_from_env(), "diff-handmade");
}

/// A merged directory big enough that unionfs reads its layers in parallel
/// (`readdir::PARALLEL_LISTING_BYTES`, 64 KiB of directory): names only
/// below, only above, in both, whited out (char 0:0) and re-created above a
/// whiteout of a lower name, plus an opaque subdirectory. Built on tmpfs,
/// whose directory size is 20 bytes per entry.
#[test]
fn big_merged_directory_vs_kernel_overlay() {
    let sut = sut_from_env();
    if !can_run(sut) || !can_mount_overlay() {
        return;
    }
    let s = Scratch::new_in("diff-bigdir", Path::new("/dev/shm"));
    let (l1, l2) = (s.dir("l1"), s.dir("l2"));
    for i in 0..2400 {
        let below = format!("d/n{i:05}");
        file(&l2, &below, &c("l2", &below), 0o644);
        let above = format!("d/n{:05}", i + 1200);
        match i % 6 {
            // every sixth lower name is whited out instead
            0 => {
                wh_chardev(&l1, &below);
            }
            _ => {
                file(&l1, &above, &c("l1", &above), 0o600);
            }
        }
    }
    file(&l2, "d/sub/hidden", b"below", 0o644);
    file(&l1, "d/sub/shown", b"above", 0o644);
    set_xattr(&l1, "d/sub", "trusted.overlay.opaque", b"y");
    let bytes =
        fs::metadata(l1.join("d")).unwrap().len() + fs::metadata(l2.join("d")).unwrap().len();
    assert!(
        bytes >= 64 * 1024,
        "only {bytes} bytes of directory: the parallel path is not taken"
    );
    let kernel = compare_with_kernel(&s, &[&l1, &l2], sut);
    let listed = kernel
        .keys()
        .filter(|p| p.parent() == Some(Path::new("/d")))
        .count();
    assert!(listed > 3000, "only {listed} entries in d");
}

// ---------------------------------------------------------------------------------------
// Generated trees
// ---------------------------------------------------------------------------------------

const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "h"];
const OWNERS: &[(u32, u32)] = &[(0, 0), (0, 0), (1000, 1000), (65534, 65534), (1, 2)];
const FILE_MODES: &[u32] = &[
    0o644, 0o644, 0o600, 0o755, 0o4755, 0o2755, 0o444, 0o640, 0o000,
];
const DIR_MODES: &[u32] = &[0o755, 0o755, 0o750, 0o700, 0o775, 0o1777, 0o555];
const LINK_TARGETS: &[&str] = &[
    "a",
    "../b",
    "/etc/passwd",
    "c/d/e",
    "nonexistent",
    ".",
    "..",
    "a/../b",
];

struct LayerGen<'a> {
    rng: &'a mut Rng,
    root: PathBuf,
    tag: String,
    budget: usize,
    /// regular files created (hard link candidates)
    files: Vec<String>,
    /// char 0:0 whiteouts created (hard link candidates)
    whiteouts: Vec<String>,
    /// directories created, with their opaque=y flag
    dirs: Vec<(String, bool)>,
}

impl LayerGen<'_> {
    fn owner(&mut self, rel: &str) {
        if self.rng.chance(20) {
            let (u, g) = *self.rng.pick(OWNERS);
            chown(&self.root, rel, u, g);
        }
    }

    fn make_file(&mut self, rel: &str) {
        let len = match self.rng.below(100) {
            0..=69 => self.rng.below(65) as usize,
            70..=94 => 65 + self.rng.below(2000) as usize,
            _ => 2000 + self.rng.below(20_000) as usize,
        };
        let mut content = format!("{}:{rel}:", self.tag).into_bytes();
        content.extend(self.rng.bytes(len));
        let mode = *self.rng.pick(FILE_MODES);
        file(&self.root, rel, &content, mode);
        self.owner(rel);
        if self.rng.chance(10) {
            let n = self.rng.below(40) as usize;
            let v = self.rng.bytes(n);
            set_xattr(&self.root, rel, &format!("user.k{}", self.rng.below(3)), &v);
        }
        self.files.push(rel.to_string());
    }

    fn gen_dir(&mut self, rel: &str, depth: u32, opaque_y: bool) {
        // wide near the root so that paths collide across layers, thinner further down
        let n = match depth {
            0 => NAMES.len(),
            1 | 2 => 3 + self.rng.below(6) as usize,
            _ => self.rng.below(5) as usize,
        };
        let dir_pct = [75, 45, 35, 25, 0][depth.min(4) as usize];
        let mut names = NAMES.to_vec();
        self.rng.shuffle(&mut names);
        let mut has_xwh = false;
        for name in names.into_iter().take(n) {
            if self.budget == 0 && depth > 0 {
                break;
            }
            self.budget = self.budget.saturating_sub(1);
            let p = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let r = self.rng.below(100);
            if r < dir_pct && depth < 4 {
                let mode = *self.rng.pick(DIR_MODES);
                // children are created first, the mode is applied at the end
                mkdir(&self.root, &p, 0o755);
                let opq = self.rng.chance(15);
                if opq {
                    set_xattr(&self.root, &p, "trusted.overlay.opaque", b"y");
                }
                if self.rng.chance(10) {
                    set_xattr(&self.root, &p, "user.d", self.tag.clone().as_bytes());
                }
                self.dirs.push((p.clone(), opq));
                self.gen_dir(&p, depth + 1, opq);
                self.owner(&p);
                fs::set_permissions(
                    at(&self.root, &p),
                    std::os::unix::fs::PermissionsExt::from_mode(mode),
                )
                .unwrap();
                continue;
            }
            match self.rng.below(100) {
                0..=44 => self.make_file(&p),
                45..=56 => {
                    let t = *self.rng.pick(LINK_TARGETS);
                    symlink(&self.root, &p, t);
                    self.owner(&p);
                }
                57..=64 => {
                    if self.files.is_empty() {
                        self.make_file(&p);
                    } else {
                        let src = self.rng.pick(&self.files).clone();
                        hardlink(&self.root, &src, &p);
                    }
                }
                65..=69 => {
                    fifo(&self.root, &p, *self.rng.pick(&[0o644, 0o600, 0o666]));
                    self.owner(&p);
                }
                70..=85 => {
                    if !self.whiteouts.is_empty() && self.rng.chance(30) {
                        let src = self.rng.pick(&self.whiteouts).clone();
                        hardlink(&self.root, &src, &p);
                    } else {
                        wh_chardev(&self.root, &p);
                        self.whiteouts.push(p.clone());
                    }
                }
                86..=95 if depth > 0 && !opaque_y => {
                    wh_xattr_unmarked(&self.root, &p, Ns::Trusted);
                    has_xwh = true;
                }
                86..=95 => {
                    wh_chardev(&self.root, &p);
                    self.whiteouts.push(p.clone());
                }
                _ => self.make_file(&p),
            }
        }
        if has_xwh {
            set_xattr(&self.root, rel, "trusted.overlay.opaque", b"x");
        }
    }
}

fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/"))
}

fn parent_of(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(d, _)| d)
}

/// Generates three lowers from `seed`: ~220 entries each over a small name pool (so paths
/// collide across layers: merges, whiteouts that hide something, type changes), with
/// nested dirs, files, symlinks, hard links, fifos, char 0:0 and xattr whiteouts, opaque
/// dirs and a few redirects (each with the whiteout a kernel rename leaves at its source,
/// and never two views of one directory).
fn build_random_lowers(seed: u64, lowers: &[PathBuf]) {
    let mut rng = Rng::new(seed);
    let mut all_dirs: Vec<Vec<(String, bool)>> = Vec::new();
    for (i, root) in lowers.iter().enumerate() {
        let mut g = LayerGen {
            rng: &mut rng,
            root: root.clone(),
            tag: format!("l{}", i + 1),
            budget: 220,
            files: Vec::new(),
            whiteouts: Vec::new(),
            dirs: Vec::new(),
        };
        g.gen_dir("", 0, false);
        all_dirs.push(g.dirs);
    }
    // redirects from layer i to directories of layers below it
    let mut used: Vec<String> = Vec::new();
    let mut made_total = 0;
    for i in 0..lowers.len() - 1 {
        let li = &lowers[i];
        let mut made = 0;
        for _ in 0..60 {
            if made == 2 || all_dirs[i].is_empty() {
                break;
            }
            let (p, p_opaque) = rng.pick(&all_dirs[i]).clone();
            let j = i + 1 + rng.below((lowers.len() - i - 1) as u64) as usize;
            if p_opaque || all_dirs[j].is_empty() {
                continue;
            }
            let (t, _) = rng.pick(&all_dirs[j]).clone();
            if related(&p, &t) || used.iter().any(|u| related(u, &p) || related(u, &t)) {
                continue;
            }
            if fs::symlink_metadata(at(li, &t)).is_ok() {
                continue; // the whiteout for the source needs the name free in layer i
            }
            let tp = parent_of(&t);
            if !tp.is_empty() && !fs::symlink_metadata(at(li, tp)).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let value = if parent_of(&p) == tp {
                t.rsplit('/').next().unwrap_or(&t).to_string()
            } else {
                format!("/{t}")
            };
            redirect(li, &p, &value);
            wh_chardev(li, &t);
            used.push(p);
            used.push(t);
            made += 1;
            made_total += 1;
        }
    }
    eprintln!("seed {seed}: {made_total} redirects");
    for (i, root) in lowers.iter().enumerate() {
        fix_times(root, 1_000_000_000 + 100_000_000 * i as i64);
    }
}

fn random(seed: u64, sut: Sut, tag: &str) {
    if !can_run(sut) {
        return;
    }
    let s = Scratch::new(tag);
    let lowers = vec![s.dir("l1"), s.dir("l2"), s.dir("l3")];
    build_random_lowers(seed, &lowers);
    let refs: Vec<&Path> = lowers.iter().map(|p| p.as_path()).collect();
    let raw: usize = refs.iter().map(|r| snapshot(r).len()).sum();
    let k = compare_with_kernel(&s, &refs, sut);
    let merged = k.values().filter(|e| e.is_dir() && e.nlink == 1).count();
    let linked = k.values().filter(|e| !e.is_dir() && e.nlink > 1).count();
    let count = |kind: Kind| k.values().filter(|e| e.kind == kind).count();
    eprintln!(
        "seed {seed}: {raw} entries in the lowers, {} in the view: {} dirs ({merged} merged), \
         {} files ({linked} hard-linked non-dirs), {} symlinks, {} fifos",
        k.len(),
        count(Kind::Dir),
        count(Kind::File),
        count(Kind::Symlink),
        count(Kind::Fifo)
    );
    // the generated tree must exercise what it is meant to
    assert!(
        k.len() > 150,
        "the generated view is too small to be a useful test"
    );
    assert!(merged >= 5, "too few merged directories");
    assert!(linked >= 2, "too few hard links");
}

#[test]
fn random_tree_seed_1_vs_kernel_overlay() {
    random(1, sut_from_env(), "diff-rand1");
}

#[test]
fn random_tree_seed_2_vs_kernel_overlay() {
    random(2, sut_from_env(), "diff-rand2");
}

#[test]
fn random_tree_seed_3_vs_kernel_overlay() {
    random(3, sut_from_env(), "diff-rand3");
}

#[test]
fn random_tree_generation_is_deterministic() {
    // no mount needed: the same seed gives the same trees (names, types, contents, modes)
    let s = Scratch::new("diff-determinism");
    let a = vec![s.dir("a1"), s.dir("a2"), s.dir("a3")];
    let b = vec![s.dir("b1"), s.dir("b2"), s.dir("b3")];
    if !nix::unistd::geteuid().is_root() {
        skip_or_fail("needs root (trusted xattrs, mknod, chown)");
        return;
    }
    build_random_lowers(7, &a);
    build_random_lowers(7, &b);
    for (x, y) in a.iter().zip(&b) {
        let cmp = Cmp {
            ctime: false,
            ino: false,
            dev: false,
            ..Cmp::EXACT
        };
        let sx = snapshot(x);
        let sy = snapshot(y);
        assert_tree_eq("same seed, different tree", &sx, &sy, cmp);
    }
}

#[test]
fn diff_reports_differences() {
    // the comparison itself can fail: a changed mode, content, missing and extra entries
    let s = Scratch::new("diff-self");
    let a = s.dir("a");
    file(&a, "f", b"one", 0o644);
    file(&a, "g", b"same", 0o644);
    mkdir(&a, "d", 0o755);
    let before = snapshot(&a);
    fs::write(a.join("f"), b"two").unwrap();
    fs::set_permissions(
        a.join("g"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    fs::remove_dir(a.join("d")).unwrap();
    file(&a, "new", b"", 0o644);
    let after = snapshot(&a);
    let d = diff(&before, &after, Cmp::VIEW);
    let text = d.join("\n");
    assert!(text.contains("DIFFERS /f  content"), "{text}");
    assert!(
        text.contains("DIFFERS /g  mode: expected 0644, got 0600"),
        "{text}"
    );
    assert!(text.contains("MISSING /d"), "{text}");
    assert!(text.contains("EXTRA   /new"), "{text}");
    let r = std::panic::catch_unwind(|| assert_tree_eq("x", &before, &after, Cmp::VIEW));
    assert!(r.is_err(), "assert_tree_eq must panic on differences");
    // st_ino partition checks
    let mut shared = after.clone();
    let ino_f = shared[Path::new("/f")].ino;
    shared.get_mut(Path::new("/g")).unwrap().ino = ino_f;
    assert!(!ino_problems(&after, &shared).is_empty());
    assert!(!ino_self_problems(&shared).is_empty());
    assert!(ino_problems(&after, &after).is_empty());
    assert!(ino_self_problems(&after).is_empty());
}

// ---------------------------------------------------------------------------------------
// Harness self-check and a real root filesystem
// ---------------------------------------------------------------------------------------

#[test]
fn harness_kernel_overlay_twice() {
    handmade(Sut::KernelOverlay(KERNEL_OPTS), "diff-harness-handmade");
    random(1, Sut::KernelOverlay(KERNEL_OPTS), "diff-harness-rand1");
}

#[test]
fn harness_detects_a_different_view() {
    // the same lowers mounted without following redirects must NOT compare equal
    if !can_mount_overlay() {
        return;
    }
    let s = Scratch::new("diff-harness-negative");
    let (l1, l2, l3) = (s.dir("l1"), s.dir("l2"), s.dir("l3"));
    build_kernel_fixture(&l1, &l2, &l3);
    let lowers: [&Path; 3] = [&l1, &l2, &l3];
    let good = mounted_snapshot(&s, "good", &lowers, Sut::KernelOverlay(KERNEL_OPTS));
    let other = mounted_snapshot(
        &s,
        "nofollow",
        &lowers,
        Sut::KernelOverlay("redirect_dir=nofollow"),
    );
    let cmp = Cmp {
        root_mtime: false,
        ..Cmp::VIEW
    };
    let d = diff(&good, &other, cmp).join("\n");
    assert!(d.contains("MISSING /moved/f"), "{d}");
    assert!(d.contains("MISSING /p/ren/h"), "{d}");
    assert!(d.contains("MISSING /to/here/k"), "{d}");
    assert!(
        d.contains("DIFFERS /to/here  nlink: expected 1, got 2"),
        "{d}"
    );
}

#[test]
fn real_rootfs_vs_kernel_overlay() {
    let Some(root) = std::env::var_os("UNIONFS_TEST_ROOTFS") else {
        skip_or_fail("UNIONFS_TEST_ROOTFS is not set (scripts/debian-rootfs.sh)");
        return;
    };
    let sut = sut_from_env();
    if !can_run(sut) {
        return;
    }
    let root = PathBuf::from(root)
        .canonicalize()
        .expect("UNIONFS_TEST_ROOTFS must exist");
    // upper, workdir and mountpoint must not be inside the lower on the same filesystem
    let tmp = std::env::temp_dir().canonicalize().unwrap();
    let parent = if tmp.starts_with(&root) {
        PathBuf::from("/dev/shm")
    } else {
        tmp
    };
    let s = Scratch::new_in("diff-rootfs", &parent);
    let k = compare_with_kernel(&s, &[&root], sut);
    eprintln!("rootfs {}: {} entries compared", root.display(), k.len());
}
